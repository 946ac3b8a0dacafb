//! Response bodies: read under a size cap, then unwrapped from the API's OData envelopes.
//!
//! Per-record parsing is [`AgentRecord::from_json`]'s job; this module only decides where the
//! records are and whether the body as a whole is usable.

use serde_json::{Map, Value};

use super::error::ApiError;

/// Reads the whole body, refusing (without buffering it) one longer than `limit`, so a broken
/// or hostile upstream cannot exhaust memory. JSON depth is bounded by serde_json's
/// recursion limit (128), so a deeply nested body cannot exhaust the stack either.
pub(super) async fn read_capped(
    response: &mut reqwest::Response,
    limit: usize,
    on_transport_error: impl Fn(&reqwest::Error) -> ApiError,
) -> Result<Vec<u8>, ApiError> {
    if response.content_length().is_some_and(|length| length > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| on_transport_error(&e))? {
        if body.len() + chunk.len() > limit {
            return Err(ApiError::BodyTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Parses a 2xx body as JSON. A syntax error is taken as transient: the body was most likely
/// cut off or garbled on the way, and the next try may get it whole.
pub(super) fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::Malformed {
        what: format!("the body is not valid JSON ({e})"),
        transient: true,
    })
}

/// A well-formed answer of the wrong shape: repeating the request would only repeat it.
fn shape(what: impl Into<String>) -> ApiError {
    ApiError::Malformed { what: what.into(), transient: false }
}

/// The one agent of a by-ID answer: a bare object, or `value` with one element (the docs show
/// both; zero elements means not found).
pub(super) fn single_agent(body: Value) -> Result<Option<Value>, ApiError> {
    let Value::Object(mut object) = body else {
        return Err(shape("the by-ID answer is not a JSON object"));
    };
    match object.remove("value") {
        // An agent has no `value` field, so its presence marks the envelope.
        None => Ok(Some(Value::Object(object))),
        Some(Value::Array(mut items)) => match items.len() {
            0 => Ok(None),
            1 => Ok(items.pop()),
            n => Err(shape(format!("the by-ID answer's `value` holds {n} agents instead of one"))),
        },
        Some(_) => Err(shape("the by-ID answer's `value` is not an array")),
    }
}

/// One page of the list endpoint.
#[derive(Debug)]
pub(super) struct Page {
    pub items: Vec<Value>,
    /// The next page's absolute URL, when there is one.
    pub next_link: Option<String>,
}

/// Unwraps `{"value": [...], "@odata.nextLink": "..."}`. `@odata.context` is ignored: it
/// echoes whatever host was called, so it proves nothing.
pub(super) fn page(body: Value) -> Result<Page, ApiError> {
    let Value::Object(mut object) = body else {
        return Err(shape("a list page is not a JSON object"));
    };
    let items = match object.remove("value") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err(shape("a list page's `value` is not an array")),
        None => return Err(shape("a list page has no `value` array")),
    };
    Ok(Page { items, next_link: next_link(&object)? })
}

fn next_link(object: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    match object.get("@odata.nextLink") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(link)) if !link.is_empty() => Ok(Some(link.clone())),
        Some(other) => Err(shape(format!("a list page's `@odata.nextLink` is not a URL: {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn by_id_accepts_both_envelopes() {
        let agent = json!({"id": "a", "lastSeen": "2024-01-01T00:00:00Z"});
        assert_eq!(single_agent(agent.clone()).unwrap(), Some(agent.clone()));
        let wrapped = json!({"@odata.context": "x/$entity", "value": [agent.clone()]});
        assert_eq!(single_agent(wrapped).unwrap(), Some(agent.clone()));
        assert_eq!(single_agent(json!({"value": []})).unwrap(), None);
        let two = single_agent(json!({"value": [agent.clone(), agent]})).unwrap_err();
        assert!(matches!(two, ApiError::Malformed { transient: false, .. }), "{two}");
        assert!(single_agent(json!([1])).is_err());
        assert!(single_agent(json!({"value": 3})).is_err());
    }

    #[test]
    fn pages_need_a_value_array_and_may_link_on() {
        let page = page(json!({"value": [1, 2], "@odata.nextLink": "https://h/next"})).unwrap();
        assert_eq!((page.items.len(), page.next_link.as_deref()), (2, Some("https://h/next")));
        assert!(super::page(json!({"value": []})).unwrap().next_link.is_none());
        assert!(super::page(json!({"items": []})).is_err());
        assert!(super::page(json!({"value": [], "@odata.nextLink": 5})).is_err());
    }

    #[test]
    fn cut_off_json_is_transient() {
        let error = parse_json(br#"{"value": [{"id": "a""#).unwrap_err();
        assert!(error.is_transient(), "{error}");
    }
}
