//! A line-based reader of the Prometheus/OpenMetrics text exposition, for the tests that
//! check `/metrics`: strict enough to fail on a malformed line or a family without HELP and
//! TYPE, small enough to need no parser crate.

use std::collections::{BTreeMap, BTreeSet};

/// Label pairs a sample must carry.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// One sample line: `name{labels} value`.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A line-based check of the text exposition: every sample is `name{labels} value`, and
/// every sample belongs to a family announced by both `# HELP` and `# TYPE`.
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut help = BTreeSet::new();
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), Some(_)) => {
                    assert!(help.insert(name.to_owned()), "HELP twice: {line}")
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    assert!(types.insert(name.to_owned(), kind.to_owned()).is_none(), "TYPE twice: {line}")
                }
                (Some("EOF"), None, None) => {}
                _ => panic!("unexpected comment line: {line:?}"),
            }
            continue;
        }
        samples.push(
            parse_sample(line).unwrap_or_else(|| panic!("not a `name{{labels}} value` line: {line:?}")),
        );
    }
    assert!(text.ends_with("# EOF\n"), "an OpenMetrics exposition ends with # EOF");
    for sample in &samples {
        let family = types
            .keys()
            .find(|family| {
                sample.name.strip_prefix(family.as_str()).is_some_and(|suffix| {
                    ["", "_total", "_bucket", "_sum", "_count", "_created"].contains(&suffix)
                })
            })
            .unwrap_or_else(|| panic!("sample {} has no # TYPE", sample.name));
        assert!(help.contains(family), "family {family} has no # HELP");
    }
    samples
}

/// `None` unless the line is `name{labels} value`.
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        return None;
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let close = inner.find('}')?;
        for pair in inner[..close].split(',').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=')?;
            let value = value.strip_prefix('"')?.strip_suffix('"')?;
            labels.insert(key.to_owned(), value.to_owned());
        }
        rest = &inner[close + 1..];
    }
    let value = rest.strip_prefix(' ')?.parse().ok()?;
    Some(Sample { name: name.to_owned(), labels, value })
}

/// The first sample named `name` that carries every pair of `labels`.
pub fn find<'a>(samples: &'a [Sample], name: &str, labels: Labels) -> Option<&'a Sample> {
    samples.iter().find(|s| {
        s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}
