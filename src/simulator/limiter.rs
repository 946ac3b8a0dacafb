//! Enforcement of the rate windows, exactly as sliding windows over accepted requests.
//!
//! Defender does not say whether it counts fixed or sliding windows; sliding is the stricter of
//! the two, so a client that passes here passes there.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::rate_window::RateWindow;

/// The most requests one window ever accepted within any interval of its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowPeak {
    pub window: RateWindow,
    /// Never above `window.calls` while the simulator enforces the window; tests assert on it
    /// to prove a client stayed inside its budget without being throttled.
    pub max_accepted: u32,
}

/// The verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    Accepted,
    /// Refused by `window`; a retry is accepted after `retry_after` if nothing else arrives.
    Throttled {
        window: RateWindow,
        retry_after: Duration,
    },
}

/// One window's accepted arrivals still inside it.
#[derive(Debug)]
struct WindowLedger {
    window: RateWindow,
    accepted: VecDeque<Instant>,
    peak: u32,
}

/// All enforced windows.
#[derive(Debug)]
pub(super) struct RateLimiter {
    ledgers: Vec<WindowLedger>,
}

impl RateLimiter {
    pub fn new(windows: &[RateWindow]) -> Self {
        let ledgers = windows
            .iter()
            .map(|&window| WindowLedger { window, accepted: VecDeque::new(), peak: 0 })
            .collect();
        Self { ledgers }
    }

    /// Accepts a request arriving at `now` unless some window already holds `calls` accepted
    /// requests in the interval of length `per` ending now; refused requests are not counted.
    pub fn admit(&mut self, now: Instant) -> Admission {
        let mut refusal: Option<(RateWindow, Duration)> = None;
        for ledger in &mut self.ledgers {
            let per = ledger.window.per;
            while ledger.accepted.front().is_some_and(|&at| now.saturating_duration_since(at) >= per) {
                ledger.accepted.pop_front();
            }
            let calls = ledger.window.calls as usize;
            if ledger.accepted.len() >= calls {
                // The request becomes acceptable once enough old arrivals leave the interval.
                let freeing = ledger.accepted[ledger.accepted.len() - calls];
                let wait = (freeing + per).saturating_duration_since(now);
                if refusal.is_none_or(|(_, longest)| wait > longest) {
                    refusal = Some((ledger.window, wait));
                }
            }
        }
        if let Some((window, retry_after)) = refusal {
            return Admission::Throttled { window, retry_after };
        }
        for ledger in &mut self.ledgers {
            ledger.accepted.push_back(now);
            ledger.peak = ledger.peak.max(ledger.accepted.len() as u32);
        }
        Admission::Accepted
    }

    pub fn peaks(&self) -> Vec<WindowPeak> {
        self.ledgers.iter().map(|l| WindowPeak { window: l.window, max_accepted: l.peak }).collect()
    }
}

/// A window length as .NET prints a TimeSpan, the way the service's 429 message does:
/// `01:00:00`, `00:01:00`, `1.00:00:00`, `00:00:00.2000000`.
pub(super) fn timespan(per: Duration) -> String {
    let total = per.as_secs();
    let (days, hours, minutes, seconds) = (total / 86_400, total / 3600 % 24, total / 60 % 60, total % 60);
    let mut text = if days > 0 { format!("{days}.") } else { String::new() };
    text.push_str(&format!("{hours:02}:{minutes:02}:{seconds:02}"));
    if per.subsec_nanos() > 0 {
        text.push_str(&format!(".{:07}", per.subsec_nanos() / 100));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(calls: u32, secs: u64) -> RateWindow {
        RateWindow { calls, per: Duration::from_secs(secs) }
    }

    #[test]
    fn refuses_the_call_over_the_quota_until_the_oldest_leaves() {
        let mut limiter = RateLimiter::new(&[window(2, 10)]);
        let start = Instant::now();
        assert_eq!(limiter.admit(start), Admission::Accepted);
        assert_eq!(limiter.admit(start + Duration::from_secs(4)), Admission::Accepted);
        assert_eq!(
            limiter.admit(start + Duration::from_secs(5)),
            Admission::Throttled { window: window(2, 10), retry_after: Duration::from_secs(5) }
        );
        assert_eq!(limiter.admit(start + Duration::from_secs(10)), Admission::Accepted);
        assert_eq!(limiter.peaks()[0].max_accepted, 2);
    }

    #[test]
    fn the_longest_wait_wins_and_refusals_do_not_count() {
        let mut limiter = RateLimiter::new(&[window(2, 1), window(3, 100)]);
        let start = Instant::now();
        for second in 0..3 {
            assert_eq!(limiter.admit(start + Duration::from_secs(second * 2)), Admission::Accepted);
        }
        for _ in 0..5 {
            let verdict = limiter.admit(start + Duration::from_secs(10));
            assert_eq!(
                verdict,
                Admission::Throttled { window: window(3, 100), retry_after: Duration::from_secs(90) }
            );
        }
        assert_eq!(limiter.admit(start + Duration::from_secs(100)), Admission::Accepted);
    }

    #[test]
    fn window_lengths_read_like_the_service() {
        assert_eq!(timespan(Duration::from_secs(3600)), "01:00:00");
        assert_eq!(timespan(Duration::from_secs(60)), "00:01:00");
        assert_eq!(timespan(Duration::from_secs(86_400)), "1.00:00:00");
        assert_eq!(timespan(Duration::from_millis(200)), "00:00:00.2000000");
    }
}
