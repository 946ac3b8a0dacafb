//! Telling systemd (`Type=notify`) how the daemon is doing.
//!
//! Every call is a no-op when `NOTIFY_SOCKET` is unset (run by hand, in tests, under another
//! supervisor). Failures are logged, never returned: a daemon must not stop syncing because
//! the service manager's socket went away.

use std::time::Duration;

use sd_notify::NotifyState;

/// READY=1: start-up (migrations) is done; systemd starts ordering dependents after it.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// WATCHDOG=1: the main loop is alive; send every [`watchdog_interval`].
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// STOPPING=1: shutdown has begun, so a slow stop is not mistaken for a hang.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// STATUS=...: one line shown by `systemctl status`.
pub fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

/// How often to call [`watchdog`]: half of `WatchdogSec=`, as sd_watchdog_enabled(3)
/// recommends, so one late tick does not get the service killed. `None` when systemd
/// expects no pings.
pub fn watchdog_interval() -> Option<Duration> {
    std::env::var_os("NOTIFY_SOCKET")?;
    sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
