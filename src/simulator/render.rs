//! The wire shape of an agent: field names, timestamp precision and the extra fields.

use chrono::{DateTime, Timelike, Utc};
use serde_json::{Map, Value, json};

use super::fleet::Agent;
use super::options::FieldCase;

/// The agent as the service writes it, with the names the chosen case gives the three fields
/// whose spelling differs between the docs and the metadata.
pub(super) fn agent_json(agent: &Agent, case: FieldCase) -> Map<String, Value> {
    let pascal = match case {
        FieldCase::Camel => false,
        FieldCase::Pascal => true,
        FieldCase::Mixed => agent.pascal_when_mixed,
    };
    let name = |camel: &'static str, pascal_name: &'static str| if pascal { pascal_name } else { camel };
    let digits = agent.fraction_digits;
    let mut object = Map::new();
    object.insert("id".into(), json!(agent.id));
    object.insert("machineId".into(), json!(agent.machine_id));
    object.insert("lastSeen".into(), json!(timestamp(agent.last_seen, digits)));
    object.insert("computerDnsName".into(), json!(agent.computer_dns_name));
    object.insert(
        name("assignedApplicationId", "AssignedApplicationId").into(),
        json!(agent.assigned_application_id),
    );
    object.insert(
        name("scannerSoftwareVersion", "ScannerSoftwareVersion").into(),
        json!(agent.scanner_version),
    );
    object.insert(
        name("lastCommandExecutionTimestamp", "LastCommandExecutionTimestamp").into(),
        json!(timestamp(agent.last_command_at, digits)),
    );
    object.insert("mdeClientVersion".into(), json!(agent.mde_client_version));
    object.insert("osPlatform".into(), json!(agent.os_platform));
    object.insert("onboardingStatus".into(), json!("Onboarded"));
    object
}

/// RFC 3339 UTC with exactly `digits` fractional digits (0 to 7, truncated, as .NET writes
/// them): `2022-05-08T12:18:41Z`, `...41.538203Z`, `...41.5382031Z`.
pub(super) fn timestamp(at: DateTime<Utc>, digits: u8) -> String {
    let seconds = at.format("%Y-%m-%dT%H:%M:%S");
    let digits = u32::from(digits.min(7));
    if digits == 0 {
        return format!("{seconds}Z");
    }
    let fraction = at.nanosecond() % 1_000_000_000 / 10u32.pow(9 - digits);
    format!("{seconds}.{fraction:0width$}Z", width = digits as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_keep_the_asked_digits() {
        let at = DateTime::parse_from_rfc3339("2022-05-08T12:18:41.538203912Z").unwrap().to_utc();
        assert_eq!(timestamp(at, 0), "2022-05-08T12:18:41Z");
        assert_eq!(timestamp(at, 6), "2022-05-08T12:18:41.538203Z");
        assert_eq!(timestamp(at, 7), "2022-05-08T12:18:41.5382039Z");
        let early = DateTime::parse_from_rfc3339("2022-05-08T12:18:41.004Z").unwrap().to_utc();
        assert_eq!(timestamp(early, 3), "2022-05-08T12:18:41.004Z");
    }
}
