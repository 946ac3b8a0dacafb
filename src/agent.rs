//! One agent as the API describes it, parsed tolerantly from its JSON payload.
//!
//! The docs print some field names in PascalCase and the service metadata says camelCase,
//! so names are matched case-insensitively; unknown fields are kept in `raw`.

use chrono::{DateTime, Datelike, SubsecRound, Utc};
use serde_json::{Map, Value};

use crate::agent_id::{AgentId, AgentIdError};

/// The descriptive attributes whose every change is kept as a version in history.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attributes {
    pub machine_id: Option<String>,
    pub computer_dns_name: Option<String>,
    pub assigned_application_id: Option<String>,
    pub scanner_software_version: Option<String>,
    pub mde_client_version: Option<String>,
}

impl Attributes {
    /// The attributes by their column names, in a stable order, for diffs and printing.
    pub fn fields(&self) -> [(&'static str, Option<&str>); 5] {
        [
            ("machine_id", self.machine_id.as_deref()),
            ("computer_dns_name", self.computer_dns_name.as_deref()),
            ("assigned_application_id", self.assigned_application_id.as_deref()),
            ("scanner_software_version", self.scanner_software_version.as_deref()),
            ("mde_client_version", self.mde_client_version.as_deref()),
        ]
    }
}

/// An agent as fetched from the API.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    pub id: AgentId,
    pub attributes: Attributes,
    /// Truncated to microseconds, the precision PostgreSQL keeps, so an unchanged value
    /// compares equal to what was stored; the original string stays in `raw`.
    pub last_seen: DateTime<Utc>,
    pub last_command_execution_at: Option<DateTime<Utc>>,
    /// The payload exactly as received.
    pub raw: Value,
}

/// Why one record of a response could not be used; the rest of the response still is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecordError {
    #[error("agent record is not a JSON object")]
    NotAnObject,
    #[error("agent record has no string `id`")]
    MissingId,
    #[error("agent record has an unusable `id`: {0}")]
    BadId(#[from] AgentIdError),
    #[error("agent {id}: required field `{field}` is missing or null")]
    MissingField { id: String, field: &'static str },
    #[error("agent {id}: field `{field}` should be {expected}, got {got}")]
    BadField { id: String, field: &'static str, expected: &'static str, got: String },
}

impl AgentRecord {
    /// Parses one agent object. Field names match case-insensitively; extra fields are ignored
    /// (but kept in `raw`); a missing `lastSeen` fails this record only.
    pub fn from_json(raw: Value) -> Result<Self, RecordError> {
        let object = raw.as_object().ok_or(RecordError::NotAnObject)?;
        let id = match field(object, "id") {
            Some(Value::String(id)) => AgentId::from_api(id)?,
            _ => return Err(RecordError::MissingId),
        };
        let text = |name| optional_string(object, &id, name);
        let attributes = Attributes {
            machine_id: text("machineId")?,
            computer_dns_name: text("computerDnsName")?,
            // GUID-shaped and documented in either case: normalized so a case flip is not a change.
            assigned_application_id: text("assignedApplicationId")?.map(|s| s.to_ascii_lowercase()),
            scanner_software_version: text("scannerSoftwareVersion")?,
            mde_client_version: text("mdeClientVersion")?,
        };
        let last_seen = optional_timestamp(object, &id, "lastSeen")?
            .ok_or_else(|| RecordError::MissingField { id: id.to_string(), field: "lastSeen" })?;
        let last_command_execution_at = optional_timestamp(object, &id, "lastCommandExecutionTimestamp")?;
        Ok(Self { id, attributes, last_seen, last_command_execution_at, raw })
    }
}

/// Looks a field up by name, ignoring ASCII case; an exact match wins over a case-folded one.
fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object
        .get(name)
        .or_else(|| object.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value))
}

fn optional_string(
    object: &Map<String, Value>,
    id: &AgentId,
    name: &'static str,
) -> Result<Option<String>, RecordError> {
    match field(object, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(bad_field(id, name, "a string or null", other)),
    }
}

fn optional_timestamp(
    object: &Map<String, Value>,
    id: &AgentId,
    name: &'static str,
) -> Result<Option<DateTime<Utc>>, RecordError> {
    match field(object, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_timestamp(s)
            .map(Some)
            .ok_or_else(|| bad_field(id, name, "an RFC 3339 timestamp", &Value::String(s.clone()))),
        Some(other) => Err(bad_field(id, name, "an RFC 3339 timestamp", other)),
    }
}

/// RFC 3339 with 0 to 9 fractional digits (the API sends up to 7), truncated to microseconds.
/// A timestamp without an offset is taken as UTC, which is what the API means by it; its year
/// must have RFC 3339's four digits too, since chrono's `%Y` also takes signed and longer
/// years, and one PostgreSQL cannot store (before 4714 BC) would fail the whole batch at
/// apply, not just this record (found by fuzz/agent_record).
fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let parsed = DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
                .map(|t| t.and_utc())
                .map_err(|_| ())
                .and_then(|t| if (0..=9999).contains(&t.year()) { Ok(t) } else { Err(()) })
        })
        .ok()?;
    Some(parsed.trunc_subsecs(6))
}

/// Longest excerpt of an unusable value quoted in an error, in bytes.
const EXCERPT_BYTES: usize = 60;

fn bad_field(id: &AgentId, field: &'static str, expected: &'static str, got: &Value) -> RecordError {
    let mut got = got.to_string();
    if got.len() > EXCERPT_BYTES {
        // Cut at a character boundary: the API's strings are arbitrary UTF-8, and cutting
        // inside a character panics (found by fuzz/agent_record).
        let cut = got.char_indices().map(|(at, _)| at).take_while(|&at| at <= EXCERPT_BYTES).last();
        got.truncate(cut.unwrap_or(0));
        got.push_str("...");
    }
    RecordError::BadField { id: id.to_string(), field, expected, got }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn documented() -> Value {
        json!({
            "id": "47df41a0c-asad-4fd6d3-bbea-a93dbc0bfcaa_4edd75b2407a5b64d704b4e53d74f15",
            "machineId": "4ejh675b240118fbehiuiy5b64d704b4e53d15",
            "lastSeen": "2022-05-08T12:18:41.538203Z",
            "computerDnsName": "TEST_DOMAIN",
            "AssignedApplicationId": "9E0FA0EB-0A51-4357-9C87-C21BFBE07571",
            "ScannerSoftwareVersion": "7.1.1",
            "LastCommandExecutionTimestamp": "2022-05-08T12:18:41.538203Z",
            "mdeClientVersion": "10.8295.22621.1195",
            "somethingNew": {"nested": true}
        })
    }

    #[test]
    fn parses_the_documented_example_in_pascal_case() {
        let agent = AgentRecord::from_json(documented()).unwrap();
        assert_eq!(agent.attributes.scanner_software_version.as_deref(), Some("7.1.1"));
        assert_eq!(
            agent.attributes.assigned_application_id.as_deref(),
            Some("9e0fa0eb-0a51-4357-9c87-c21bfbe07571")
        );
        assert_eq!(agent.last_seen.to_rfc3339(), "2022-05-08T12:18:41.538203+00:00");
        assert!(agent.last_command_execution_at.is_some());
        assert_eq!(agent.raw["somethingNew"]["nested"], json!(true));
    }

    #[test]
    fn camel_case_gives_the_same_record() {
        let mut camel = documented();
        let object = camel.as_object_mut().unwrap();
        for (pascal, camel_name) in [
            ("AssignedApplicationId", "assignedApplicationId"),
            ("ScannerSoftwareVersion", "scannerSoftwareVersion"),
            ("LastCommandExecutionTimestamp", "lastCommandExecutionTimestamp"),
        ] {
            let value = object.remove(pascal).unwrap();
            object.insert(camel_name.into(), value);
        }
        let a = AgentRecord::from_json(documented()).unwrap();
        let b = AgentRecord::from_json(camel).unwrap();
        assert_eq!((a.attributes, a.last_seen), (b.attributes, b.last_seen));
    }

    #[test]
    fn fraction_digits_zero_to_seven() {
        for (text, micros) in [
            ("2022-05-08T12:18:16Z", 0),
            ("2022-05-08T12:18:16.5Z", 500_000),
            ("2022-05-08T12:18:16.8242449Z", 824_244),
        ] {
            let t = parse_timestamp(text).unwrap();
            assert_eq!(t.timestamp_subsec_micros(), micros, "{text}");
        }
    }

    #[test]
    fn years_outside_four_digits_are_refused() {
        // chrono's `%Y` would take these; PostgreSQL cannot store the first.
        for text in ["-9715-05-08T12:18:41.5389", "+12345-05-08T12:18:41", "10000-01-01T00:00:00"] {
            assert_eq!(parse_timestamp(text), None, "{text}");
        }
        assert_eq!(parse_timestamp("0000-01-01T00:00:00").map(|t| t.year()), Some(0));
        assert_eq!(parse_timestamp("9999-12-31T23:59:59").map(|t| t.year()), Some(9999));
    }

    #[test]
    fn numbers_in_raw_survive_a_round_trip() {
        // Without serde_json's `float_roundtrip` this parses to a float whose shortest
        // printing reads back as another float, so `raw` was not the payload as received.
        let text = r#"{"id":"a","lastSeen":"2022-05-08T12:18:41Z","extra":417777777777777.5382}"#;
        let record = AgentRecord::from_json(serde_json::from_str(text).unwrap()).unwrap();
        let again: Value = serde_json::from_str(&record.raw.to_string()).unwrap();
        assert_eq!(again, record.raw);
    }

    #[test]
    fn missing_last_seen_fails_only_this_record() {
        let mut v = documented();
        v.as_object_mut().unwrap().remove("lastSeen");
        let err = AgentRecord::from_json(v).unwrap_err();
        assert!(err.to_string().contains("lastSeen"), "{err}");
    }

    #[test]
    fn a_long_bad_value_is_cut_between_characters() {
        // 60 bytes into `"ééé…"` falls inside a two-byte character.
        let mut v = documented();
        v["lastSeen"] = json!("é".repeat(40));
        let Err(RecordError::BadField { field: "lastSeen", got, .. }) = AgentRecord::from_json(v) else {
            panic!("a lastSeen of 40 × é must be a bad field");
        };
        assert_eq!(got, format!("\"{}...", "é".repeat(29)));
    }

    #[test]
    fn nulls_and_wrong_types() {
        let mut v = documented();
        v["computerDnsName"] = Value::Null;
        assert_eq!(AgentRecord::from_json(v.clone()).unwrap().attributes.computer_dns_name, None);
        v["mdeClientVersion"] = json!(10);
        assert!(matches!(
            AgentRecord::from_json(v),
            Err(RecordError::BadField { field: "mdeClientVersion", .. })
        ));
        assert_eq!(AgentRecord::from_json(json!([1])), Err(RecordError::NotAnObject));
        assert_eq!(AgentRecord::from_json(json!({"lastSeen": "x"})), Err(RecordError::MissingId));
    }
}
