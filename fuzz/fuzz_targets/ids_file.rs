//! The agent ID file parser (`config::parse_ids_file`) and `AgentId` on any text.
//!
//! Properties: an accepted ID round-trips through `AgentId::parse`, is non-empty, at most
//! 256 bytes, free of whitespace and control characters, and really is on the line its
//! `FILE:LINE` names; every rejected line is reported with a line number inside the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use scan_agent_sync::agent_id::{AgentId, MAX_AGENT_ID_BYTES};
use scan_agent_sync::config::parse_ids_file;

const NAME: &str = "ids.txt";

/// The 1-based line number in a `ids.txt:LINE` place, checked to lie inside the input.
fn line_of(place: &str, lines: &[&str]) -> usize {
    let number: usize = place
        .strip_prefix(&format!("{NAME}:"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("place {place:?} is not {NAME}:LINE"));
    assert!((1..=lines.len()).contains(&number), "line {number} outside 1..={}", lines.len());
    number
}

fn check_id(id: &AgentId) {
    let text = id.as_str();
    assert!(!text.is_empty() && text.len() <= MAX_AGENT_ID_BYTES, "{text:?} has a bad length");
    assert!(
        !text.chars().any(|c| c.is_whitespace() || c.is_control()),
        "{text:?} holds whitespace or a control"
    );
    assert_eq!(AgentId::parse(text).as_ref(), Ok(id), "{text:?} does not round-trip");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(id) = AgentId::parse(text) {
        check_id(&id);
        assert_eq!(id.as_str(), text, "parse must not alter an ID it accepts");
    }
    if let Ok(id) = AgentId::from_api(text) {
        assert_eq!(id.as_str(), text);
        assert!(text.len() <= MAX_AGENT_ID_BYTES && !text.chars().any(char::is_control));
    }
    let lines: Vec<&str> = text.lines().collect();
    match parse_ids_file(text, NAME) {
        Ok(ids) => {
            for (id, place) in &ids {
                check_id(id);
                let line = lines[line_of(place, &lines) - 1];
                assert!(line.contains(id.as_str()), "{id} is not on {place}: {line:?}");
            }
        }
        Err(error) => {
            assert!(!error.problems().is_empty());
            for problem in error.problems() {
                line_of(problem.source.as_deref().expect("a rejected line names its place"), &lines);
            }
        }
    }
});
