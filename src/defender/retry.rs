//! When to try again: jittered exponential backoff for failures, the server's `Retry-After`
//! for 429s.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::budget::DEFAULT_RETRY_AFTER;

/// First backoff delay: long enough for a blip to pass, short enough not to slow a cycle.
const MIN_BACKOFF: Duration = Duration::from_millis(200);

/// Backoff never grows beyond this; with jitter a delay is at most twice it.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// No documented rate window is longer than an hour, so a longer `Retry-After` is garbage;
/// obeying it would stall every process sharing the budget for that long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A 429 asks for at least this pause, even if `Retry-After` says 0 or a past date: calling
/// again at once only earns another 429.
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// How one request is retried.
#[derive(Debug, Clone, Copy)]
pub(super) struct RetryPolicy {
    /// Retries after the first try, for transient failures and 429s alike.
    pub max_retries: u32,
    /// The per-request timeout (`defender.request_timeout`), for messages.
    pub timeout: Duration,
    backoff: ExponentialBuilder,
}

impl RetryPolicy {
    pub fn new(max_retries: u32, timeout: Duration) -> Self {
        let backoff = ExponentialBuilder::new()
            .with_jitter()
            .with_min_delay(MIN_BACKOFF)
            .with_max_delay(MAX_BACKOFF)
            .with_max_times(max_retries as usize);
        Self { max_retries, timeout, backoff }
    }

    /// The backoff delays of one request, `max_retries` of them.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + use<> {
        self.backoff.build()
    }
}

/// The pause a 429 asks for: `Retry-After` in seconds or as an HTTP date, else
/// [`DEFAULT_RETRY_AFTER`], within [`MIN_RETRY_AFTER`]..=[`MAX_RETRY_AFTER`].
pub(super) fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Duration {
    let asked =
        headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|text| parse_retry_after(text, now));
    asked.unwrap_or(DEFAULT_RETRY_AFTER).clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER)
}

/// Seconds (fractions tolerated), or an IMF-fixdate such as `Wed, 21 Oct 2015 07:28:00 GMT`,
/// which chrono's RFC 2822 parser reads. The obsolete RFC 850 and asctime forms count as garbled.
fn parse_retry_after(text: &str, now: DateTime<Utc>) -> Option<Duration> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).ok();
    }
    let at = DateTime::parse_from_rfc2822(text).ok()?;
    Some((at.with_timezone(&Utc) - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn after(value: Option<&str>) -> Duration {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z").unwrap().with_timezone(&Utc);
        let mut headers = HeaderMap::new();
        if let Some(value) = value {
            headers.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        }
        retry_after(&headers, now)
    }

    #[test]
    fn seconds_dates_and_garbage() {
        assert_eq!(after(Some("7")), Duration::from_secs(7));
        assert_eq!(after(Some("1.5")), Duration::from_millis(1500));
        assert_eq!(after(Some("Wed, 21 Oct 2015 07:28:42 GMT")), Duration::from_secs(42));
        assert_eq!(after(Some("Wed, 21 Oct 2015 07:00:00 GMT")), MIN_RETRY_AFTER, "past dates");
        assert_eq!(after(Some("0")), MIN_RETRY_AFTER);
        assert_eq!(after(Some("soon")), DEFAULT_RETRY_AFTER);
        assert_eq!(after(Some("-5")), DEFAULT_RETRY_AFTER);
        assert_eq!(after(None), DEFAULT_RETRY_AFTER);
        assert_eq!(after(Some("999999999")), MAX_RETRY_AFTER);
    }

    #[test]
    fn backoff_is_jittered_exponential_and_bounded() {
        let delays: Vec<Duration> = RetryPolicy::new(12, Duration::from_secs(1)).delays().collect();
        assert_eq!(delays.len(), 12);
        assert!(delays[0] >= MIN_BACKOFF && delays[0] < 2 * MIN_BACKOFF, "{delays:?}");
        assert!(delays.iter().all(|d| *d < 2 * MAX_BACKOFF), "{delays:?}");
        assert!(delays[11] >= MAX_BACKOFF, "{delays:?}");
    }
}
