//! One rate window: at most `calls` requests in any interval of length `per`.

use std::time::Duration;

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
}
