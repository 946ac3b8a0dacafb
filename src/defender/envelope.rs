//! Response bodies: read under a size cap, then unwrapped from the API's OData envelopes.
//!
//! Per-record parsing is [`AgentRecord::from_json`]'s job; this module only decides where the
//! records are and whether the body as a whole is usable.

use reqwest::header::HeaderValue;
use serde_json::{Map, Value};

use super::error::ApiError;

/// Reads the whole body of `endpoint`'s answer chunk by chunk, refusing one longer than
/// `limit` as soon as the count passes it (or at once, when `Content-Length` says so), so a
/// broken or hostile upstream cannot exhaust memory; dropping the response closes the
/// connection on the rest.
pub(super) async fn read_capped(
    response: &mut reqwest::Response,
    endpoint: &'static str,
    limit: usize,
    on_transport_error: impl Fn(&reqwest::Error) -> ApiError,
) -> Result<Vec<u8>, ApiError> {
    if response.content_length().is_some_and(|length| length > limit as u64) {
        return Err(ApiError::BodyTooLarge { endpoint, limit });
    }
    // Sized from the announced length (already checked against the cap): growing by
    // doubling would hold up to twice a 5 MB list page while it copies.
    let announced = response.content_length().and_then(|length| usize::try_from(length).ok());
    let mut body = Vec::with_capacity(announced.unwrap_or(0));
    while let Some(chunk) = response.chunk().await.map_err(|e| on_transport_error(&e))? {
        if body.len() + chunk.len() > limit {
            return Err(ApiError::BodyTooLarge { endpoint, limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Nesting serde_json allows before it stops parsing: its default recursion limit of 128,
/// which applies to every `from_slice` and counts the level that trips it, so 127 levels parse.
/// A deeply nested body therefore cannot exhaust the stack; an agent page needs four levels.
const MAX_JSON_DEPTH: usize = 127;

/// Parses a 2xx body of `endpoint` as JSON, whatever its `Content-Type` says: the body decides,
/// so a gateway that relabels good JSON costs nothing. When it does not parse:
/// - under a label that is not JSON, something other than the API answered (a proxy or a
///   captive portal); that would repeat, so it is [`ApiError::NotJson`];
/// - nested deeper than [`MAX_JSON_DEPTH`], it is refused for good: no agent looks like that;
/// - otherwise it was most likely cut off or garbled on the way, and the next try may get it whole.
pub(super) fn parse_json(
    endpoint: &'static str,
    body: &[u8],
    content_type: Option<&HeaderValue>,
) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let label = content_type.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if let Some(label) = label.filter(|label| !label.to_ascii_lowercase().contains("json")) {
            return ApiError::NotJson { endpoint, content_type: label };
        }
        if e.to_string().starts_with("recursion limit exceeded") {
            return ApiError::Malformed {
                what: format!(
                    "the {endpoint} sent JSON nested deeper than {MAX_JSON_DEPTH} levels ({e}); it was refused"
                ),
                transient: false,
            };
        }
        ApiError::Malformed { what: format!("the {endpoint} sent a body that is not valid JSON ({e})"), transient: true }
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

    const ENDPOINT: &str = "test endpoint";

    #[test]
    fn cut_off_json_is_transient() {
        let error = parse_json(ENDPOINT, br#"{"value": [{"id": "a""#, None).unwrap_err();
        assert!(error.is_transient(), "{error}");
        assert!(error.to_string().contains(ENDPOINT), "{error}");
    }

    #[test]
    fn json_is_accepted_under_any_label_and_other_content_is_named() {
        let text = HeaderValue::from_static("text/plain");
        assert_eq!(parse_json(ENDPOINT, br#"{"value": []}"#, Some(&text)).unwrap(), json!({"value": []}));
        let html = HeaderValue::from_static("text/html; charset=utf-8");
        let error = parse_json(ENDPOINT, b"<html>sign in</html>", Some(&html)).unwrap_err();
        assert!(matches!(error, ApiError::NotJson { .. }) && !error.is_transient(), "{error}");
        assert!(error.to_string().contains("text/html") && error.to_string().contains(ENDPOINT), "{error}");
    }

    /// The depth bound holds for the way the client parses (into a `Value`), and a body far
    /// deeper than any stack could recurse through fails cleanly, naming the limit.
    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let within = format!("{}{}", "[".repeat(MAX_JSON_DEPTH), "]".repeat(MAX_JSON_DEPTH));
        assert!(parse_json(ENDPOINT, within.as_bytes(), None).is_ok());
        let one_more = format!("[{within}]");
        assert!(parse_json(ENDPOINT, one_more.as_bytes(), None).is_err());
        let depth = 1_000_000;
        let deep = format!("{}{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
        let error = parse_json(ENDPOINT, deep.as_bytes(), None).unwrap_err();
        assert!(!error.is_transient(), "{error}");
        assert!(error.to_string().contains("nested deeper than 127 levels"), "{error}");
    }
}
