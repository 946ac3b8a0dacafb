//! `AgentRecord::from_json` on any JSON the API could send.
//!
//! Beyond "does not panic", every accepted record must be one the rest of the service can
//! rely on: the payload kept byte-for-byte in `raw`, an ID the store accepts, timestamps
//! truncated to PostgreSQL's microseconds and inside its `timestamptz` range (an out-of-range
//! value would fail the whole batch's transaction, not just this agent), the application ID
//! lower-cased, and parsing the stored `raw` again giving the same record.

#![no_main]

use libfuzzer_sys::fuzz_target;
use scan_agent_sync::agent::AgentRecord;
use scan_agent_sync::agent_id::MAX_AGENT_ID_BYTES;
use serde_json::Value;

/// The earliest `timestamptz` PostgreSQL stores: 4714-11-24 BC, year -4713 in ISO numbering.
/// (Its latest, 294276 AD, is beyond what chrono represents.)
fn postgres_min() -> chrono::DateTime<chrono::Utc> {
    chrono::NaiveDate::from_ymd_opt(-4713, 11, 24).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc()
}

fn check_timestamp(name: &str, t: chrono::DateTime<chrono::Utc>) {
    assert_eq!(t.timestamp_subsec_nanos() % 1000, 0, "{name} {t} is not truncated to microseconds");
    assert!(t >= postgres_min(), "{name} {t} is before PostgreSQL's earliest timestamptz");
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    let record = match AgentRecord::from_json(value.clone()) {
        Ok(record) => record,
        Err(error) => {
            // Errors end up in logs and run rows: they must render, and stay short.
            let text = error.to_string();
            assert!(!text.is_empty());
            return;
        }
    };
    assert_eq!(record.raw, value, "raw must be the payload as received");
    let id = record.id.as_str();
    assert!(!id.is_empty() && id.len() <= MAX_AGENT_ID_BYTES, "id {id:?} has a bad length");
    assert!(!id.chars().any(char::is_control), "id {id:?} holds a control character");
    check_timestamp("lastSeen", record.last_seen);
    if let Some(t) = record.last_command_execution_at {
        check_timestamp("lastCommandExecutionTimestamp", t);
    }
    if let Some(app) = &record.attributes.assigned_application_id {
        assert_eq!(app, &app.to_ascii_lowercase(), "assignedApplicationId is not lower-cased");
    }
    let stored = serde_json::to_vec(&record.raw).expect("a parsed Value serializes");
    let again = AgentRecord::from_json(serde_json::from_slice(&stored).expect("serialized JSON parses"));
    assert_eq!(again.as_ref(), Ok(&record), "re-parsing raw gave a different record");
});
