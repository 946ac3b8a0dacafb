//! One rate window: at most `calls` requests in any interval of length `per`.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// A sliding rate window, shared by the budget (which obeys it) and the simulator (which enforces it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateWindow {
    /// Requests allowed in any interval of length `per`.
    pub calls: u32,
    /// The interval length.
    #[serde(with = "humantime_serde")]
    pub per: Duration,
}

impl RateWindow {
    /// Defender's documented limits for the scan-agent endpoints: 100/minute and 1,500/hour.
    pub fn defender_defaults() -> Vec<RateWindow> {
        vec![
            RateWindow { calls: 100, per: Duration::from_secs(60) },
            RateWindow { calls: 1500, per: Duration::from_secs(3600) },
        ]
    }

    /// Parses the compact `CALLS/DURATION` form used on the command line, e.g. `100/1m`.
    pub fn parse_compact(text: &str) -> Result<Self, String> {
        let (calls, per) = text
            .split_once('/')
            .ok_or_else(|| format!("rate window {text:?} is not CALLS/DURATION, e.g. 100/1m"))?;
        let calls: u32 = calls
            .trim()
            .parse()
            .map_err(|_| format!("rate window {text:?}: {calls:?} is not a whole number of calls"))?;
        let per = humantime::parse_duration(per.trim())
            .map_err(|e| format!("rate window {text:?}: {per:?} is not a duration ({e})"))?;
        if calls == 0 || per.is_zero() {
            return Err(format!("rate window {text:?}: calls and duration must both be above zero"));
        }
        Ok(Self { calls, per })
    }

    /// A label for metrics and logs, e.g. `100/1m`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.calls, humantime::format_duration(self.per))
    }

    /// This window's sustained share of `from..to`: the calls that `calls` per `per`, kept up
    /// without a pause, counts from the Unix epoch to `to`, minus those up to `from`, in whole
    /// calls. Counting on one clock rather than rounding each span makes consecutive spans'
    /// shares add up to exactly the rate, with nothing carried from one cycle to the next: a
    /// 10-second schedule under 1,500/1h gets 4 or 5 calls a cycle, 1,500 an hour.
    pub fn share(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> u64 {
        let per = i128::try_from(self.per.as_nanos()).unwrap_or(i128::MAX).max(1);
        let counted = |at: DateTime<Utc>| {
            let since_epoch =
                i128::from(at.timestamp()) * 1_000_000_000 + i128::from(at.timestamp_subsec_nanos());
            (i128::from(self.calls) * since_epoch).div_euclid(per)
        };
        u64::try_from(counted(to) - counted(from)).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_form_round_trips() {
        let w = RateWindow::parse_compact("20/2s").unwrap();
        assert_eq!(w, RateWindow { calls: 20, per: Duration::from_secs(2) });
        assert_eq!(w.label(), "20/2s");
        assert!(RateWindow::parse_compact("0/1m").is_err());
        assert!(RateWindow::parse_compact("10").is_err());
        assert!(RateWindow::parse_compact("10/forever").is_err());
    }

    #[test]
    fn consecutive_shares_add_up_to_the_sustained_rate() {
        let hour = RateWindow { calls: 1500, per: Duration::from_secs(3600) };
        let at = |secs: i64| DateTime::from_timestamp(1_796_000_400 + secs, 0).unwrap();
        assert_eq!(hour.share(at(0), at(900)), 375, "a quarter of an hour on the quarter");
        assert_eq!(hour.share(at(0), at(0)), 0);
        let ten_seconds: Vec<u64> = (0..360).map(|i| hour.share(at(i * 10), at(i * 10 + 10))).collect();
        assert!(ten_seconds.iter().all(|&n| n == 4 || n == 5), "{ten_seconds:?}");
        assert_eq!(ten_seconds.iter().sum::<u64>(), 1500);
        let minute = RateWindow { calls: 100, per: Duration::from_secs(60) };
        assert_eq!(minute.share(at(7), at(67)), 100, "a whole window is its calls wherever it starts");
    }
}
