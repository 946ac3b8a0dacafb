//! What the `stale`, `history` and `check` commands print: each report is `Display` for people (a
//! table) and `Serialize` for `--json`, so the CLI only chooses between the two.

mod check;
mod history;
mod stale;
mod table;

pub use self::check::{CheckReport, check_report};
pub use self::history::{History, RECENT_LAST_SEEN, history_report};
pub use self::stale::{StaleReport, stale_report};
