//! The two agent endpoints: the paged list and the by-ID lookup.

use axum::http::StatusCode;
use chrono::Utc;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::options::Envelope;
use super::render::agent_json;
use super::reply::Reply;
use super::state::{Shared, lock};
use super::urlencoded;

/// The list path; the by-ID path is this plus `/{id}`.
pub(super) const AGENTS_PATH: &str = "/api/DeviceAuthenticatedScanAgents";

/// The one query parameter the simulator understands, and only in its own `nextLink`s: the
/// docs list no query options for these endpoints, so clients must send none of their own.
const SKIP_TOKEN: &str = "$skiptoken";

/// `GET /api/DeviceAuthenticatedScanAgents`: one page, and a link to the next if there is one.
pub(super) fn list(sim: &Shared, query: Option<&str>, host: &str, now: Instant) -> Reply {
    let mut skip = 0;
    for (name, value) in urlencoded::pairs(query.unwrap_or_default()) {
        match (name.as_str(), value.parse::<usize>()) {
            (SKIP_TOKEN, Ok(offset)) => skip = offset,
            _ => return unsupported_query(&name),
        }
    }
    let fleet = sim.fleet_at(now);
    let mut present = fleet.present();
    let page: Vec<Value> = present
        .by_ref()
        .skip(skip)
        .take(sim.page_size)
        .map(|agent| Value::Object(agent_json(agent, sim.field_case)))
        .collect();
    lock(&sim.recorder).record_served(Utc::now(), page.iter().cloned());
    let mut body = json!({
        "@odata.context": format!("http://{host}/api/$metadata#DeviceAuthenticatedScanAgents"),
        "value": page,
    });
    if present.next().is_some() {
        let next = skip + sim.page_size;
        body["@odata.nextLink"] = json!(format!("http://{host}{AGENTS_PATH}?{SKIP_TOKEN}={next}"));
    }
    Reply::ok(body)
}

/// `GET /api/DeviceAuthenticatedScanAgents/{id}`, `id` already decoded from its one segment.
pub(super) fn by_id(sim: &Shared, id: &str, query: Option<&str>, host: &str, now: Instant) -> Reply {
    if let Some((name, _)) = urlencoded::pairs(query.unwrap_or_default()).into_iter().next() {
        return unsupported_query(&name);
    }
    let fleet = sim.fleet_at(now);
    let Some(agent) = fleet.get(id) else {
        return Reply::api_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            format!("DeviceAuthenticatedScanAgent {id} was not found"),
        );
    };
    let context = format!("http://{host}/api/$metadata#DeviceAuthenticatedScanAgents/$entity");
    let mut object = agent_json(agent, sim.field_case);
    lock(&sim.recorder).record_served(Utc::now(), [Value::Object(object.clone())]);
    let body = match sim.envelope {
        Envelope::Bare => {
            object.insert("@odata.context".into(), json!(context));
            Value::Object(object)
        }
        Envelope::Wrapped => json!({"@odata.context": context, "value": [object]}),
    };
    Reply::ok(body)
}

/// Refuses query options the docs do not list, so a client that sends them finds out here.
fn unsupported_query(name: &str) -> Reply {
    Reply::api_error(
        StatusCode::BAD_REQUEST,
        "InvalidInput",
        format!("The query option '{name}' is not supported by this endpoint"),
    )
}
