//! Plain-text tables and the human forms of times they show.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// Columns padded to their widest cell, two spaces apart, headers first.
pub(super) struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(super) fn new(headers: &[&'static str]) -> Self {
        Self { headers: headers.to_vec(), rows: Vec::new() }
    }

    pub(super) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let headers = self.headers.iter().map(|h| h.to_string()).collect::<Vec<_>>();
        for cells in std::iter::once(&headers).chain(&self.rows) {
            let line: Vec<String> =
                cells.iter().zip(&widths).map(|(cell, &w)| format!("{cell:<w$}")).collect();
            writeln!(f, "{}", line.join("  ").trim_end())?;
        }
        Ok(())
    }
}

/// A timestamp to the second, in UTC.
pub(super) fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// An optional timestamp, `-` when absent.
pub(super) fn maybe_when(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "-".to_owned(), when)
}

/// An optional text cell, `-` when absent.
pub(super) fn text(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

/// A duration in its two largest units (`3d 4h`, `12m 5s`): precise enough to act on,
/// short enough for a column.
pub(super) fn human_duration(duration: Duration) -> String {
    const UNITS: [(&str, u64); 4] = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
    let mut rest = duration.as_secs();
    let parts: Vec<String> = UNITS
        .iter()
        .filter_map(|&(unit, secs)| {
            let n = rest / secs;
            rest %= secs;
            (n > 0).then(|| format!("{n}{unit}"))
        })
        .take(2)
        .collect();
    if parts.is_empty() { "0s".to_owned() } else { parts.join(" ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_show_two_largest_units() {
        assert_eq!(human_duration(Duration::from_secs(0)), "0s");
        assert_eq!(human_duration(Duration::from_secs(59)), "59s");
        assert_eq!(human_duration(Duration::from_secs(3 * 86_400 + 4 * 3_600 + 5)), "3d 4h");
        assert_eq!(human_duration(Duration::from_secs(86_400 + 7)), "1d 7s");
    }

    #[test]
    fn columns_align() {
        let mut table = Table::new(&["A", "LONG HEADER"]);
        table.row(vec!["wide cell".into(), "x".into()]);
        assert_eq!(table.to_string(), "A          LONG HEADER\nwide cell  x\n");
    }
}
