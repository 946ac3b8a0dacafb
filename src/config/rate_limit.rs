//! `[rate_limit]`: the API budget's windows and how many requests may be in flight.

use std::collections::HashMap;

use serde::Deserialize;

use super::{ConfigProblem, Finish, de};
use crate::rate_window::RateWindow;

/// The API budget: every window holds in any interval of its length.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    /// Sliding windows; all of them apply.
    #[serde(deserialize_with = "de::rate_windows")]
    pub windows: Vec<RateWindow>,
    /// Requests allowed in flight at once.
    pub max_in_flight: usize,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self { windows: RateWindow::defender_defaults(), max_in_flight: 4 }
    }
}

impl Finish for RateLimitSettings {
    type Output = Self;

    fn finish(self, _env: &HashMap<String, String>, problems: &mut Vec<ConfigProblem>) -> Self {
        self.check_at("rate_limit", problems);
        self
    }
}

impl RateLimitSettings {
    /// Checks the values, naming keys below `section`: `rate_limit`, or a `[[tenants]]`
    /// entry such as `tenants[2]`, which writes the same keys.
    pub(super) fn check_at(&self, section: &str, problems: &mut Vec<ConfigProblem>) {
        if self.windows.is_empty() {
            problems.push(ConfigProblem::new(
                &format!("{section}.windows"),
                "is empty, so nothing would bound the API calls",
                "list at least one window, e.g. [ { calls = 100, per = \"1m\" }, { calls = 1500, per = \"1h\" } ]",
            ));
        }
        for (index, window) in self.windows.iter().enumerate() {
            if window.calls == 0 {
                problems.push(ConfigProblem::new(
                    &format!("{section}.windows[{index}].calls"),
                    "is 0, so no call could ever be made",
                    "set it to at least 1",
                ));
            }
            if window.per.is_zero() {
                problems.push(ConfigProblem::new(
                    &format!("{section}.windows[{index}].per"),
                    "is zero, so the window limits nothing",
                    "set a duration such as \"1m\"",
                ));
            }
        }
        if self.max_in_flight == 0 {
            problems.push(ConfigProblem::new(
                &format!("{section}.max_in_flight"),
                "is 0, so no request could ever start",
                "set it to at least 1",
            ));
        }
    }
}
