//! The Defender client against the bundled simulator (realistic behaviour) and wiremock (exact
//! answer shapes), with the rate budget on real PostgreSQL.

mod support;

use std::time::Duration;

use scan_agent_sync::agent::{AgentRecord, RecordError};
use scan_agent_sync::agent_id::AgentId;
use scan_agent_sync::budget::{Budget, BudgetError};
use scan_agent_sync::config::{DefenderSettings, Settings};
use scan_agent_sync::defender::{ApiError, DefenderClient, TokenFailure, agent_url};
use scan_agent_sync::rate_window::RateWindow;
use scan_agent_sync::simulator::{self, Envelope, Faults, FieldCase, SimulatorHandle, SimulatorOptions};
use scan_agent_sync::store::Store;
use scan_agent_sync::tenant_name::TenantName;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::Instant;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const AGENTS: &str = "/api/DeviceAuthenticatedScanAgents";
const TOKEN_PATH: &str = "/tenant/oauth2/v2.0/token";
/// The access token wiremock hands out; it must never show up in errors or logs.
const WIREMOCK_TOKEN: &str = "eyJ-access-token-never-shown";
/// The simulator's default credentials.
const SIM_CLIENT: &str = "sim-client";
const SIM_SECRET: &str = "sim-secret";

/// Settings pointing at `api` and `token_url`, with fast failure for tests.
fn settings(api: &str, token_url: &str) -> DefenderSettings {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, "[database]\nurl = \"postgres://x@localhost/x\"\n").unwrap();
    let mut defender = Settings::load_with_env(&file, &Default::default()).unwrap().defender;
    defender.api_base_url = api.to_owned();
    defender.token_url = token_url.to_owned();
    defender.client_id = SIM_CLIENT.to_owned();
    defender.request_timeout = Duration::from_secs(5);
    defender.max_retries = 2;
    defender
}

/// A budget that never makes these tests wait, on a fresh database.
async fn roomy_budget() -> Budget {
    budget_with(support::fresh_store().await, RateWindow { calls: 10_000, per: Duration::from_secs(1) })
}

fn budget_with(store: Store, window: RateWindow) -> Budget {
    Budget::new(store.for_tenant(TenantName::default()), &[window], 4)
}

fn client(settings: &DefenderSettings, secret: &str, budget: Budget) -> DefenderClient {
    DefenderClient::new(settings, SecretString::from(secret), budget).unwrap()
}

fn id(text: &str) -> AgentId {
    AgentId::from_api(text).unwrap()
}

/// A small frozen fleet, so every request sees the same agents.
fn sim_options() -> SimulatorOptions {
    SimulatorOptions::frozen(5)
}

async fn sim_client(options: SimulatorOptions) -> (SimulatorHandle, DefenderClient) {
    let sim = simulator::start(options).await.unwrap();
    let client = client(&settings(&sim.base_url(), &sim.token_url()), SIM_SECRET, roomy_budget().await);
    (sim, client)
}

/// A wiremock server whose token endpoint hands out [`WIREMOCK_TOKEN`].
async fn mock_server() -> MockServer {
    let server = MockServer::start().await;
    mount_token(&server).await;
    server
}

async fn mount_token(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "token_type": "Bearer", "expires_in": 3599, "access_token": WIREMOCK_TOKEN
        })))
        .mount(server)
        .await;
}

async fn mock_client(server: &MockServer) -> DefenderClient {
    let settings = settings(&server.uri(), &format!("{}{TOKEN_PATH}", server.uri()));
    client(&settings, SIM_SECRET, roomy_budget().await)
}

/// Answers GETs of `route` with `response`; `times` limits how often, so a later mount can
/// take over (wiremock prefers the earlier mount while it still matches).
async fn answer(server: &MockServer, route: &str, response: ResponseTemplate, times: Option<u64>) {
    let mock = Mock::given(method("GET")).and(path(route)).respond_with(response);
    let mock = match times {
        Some(n) => mock.up_to_n_times(n),
        None => mock,
    };
    mock.mount(server).await;
}

/// Requests wiremock received, (API GETs, token POSTs).
async fn received(server: &MockServer) -> (usize, usize) {
    let requests = server.received_requests().await.unwrap();
    let gets = requests.iter().filter(|r| r.method.as_str() == "GET").count();
    (gets, requests.len() - gets)
}

fn agent(id: &str) -> Value {
    json!({
        "id": id, "machineId": "m1", "lastSeen": "2024-05-08T12:18:41.5382031Z",
        "computerDnsName": "host", "assignedApplicationId": "9E0FA0EB-0A51-4357-9C87-C21BFBE07571",
        "scannerSoftwareVersion": "7.1.1", "lastCommandExecutionTimestamp": "2024-05-08T12:18:41Z",
        "mdeClientVersion": "10.8295"
    })
}

fn by_id_path(agent_id: &str) -> String {
    format!("{AGENTS}/{agent_id}")
}

fn api_error(status: u16, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_json(json!({"error": {"code": code, "message": message, "target": "corr-1234"}}))
}

#[tokio::test]
async fn one_token_serves_many_concurrent_calls() {
    let (sim, client) = sim_client(sim_options()).await;
    let mut calls = JoinSet::new();
    for agent_id in sim.agent_ids() {
        let client = client.clone();
        calls.spawn(async move { client.get_agent(&id(&agent_id), None).await });
    }
    while let Some(result) = calls.join_next().await {
        assert!(result.unwrap().unwrap().is_some());
    }
    let stats = sim.stats();
    assert_eq!((stats.token_requests, stats.by_id_requests), (1, 5));
    assert_eq!(client.counters().requests, 5);
}

#[tokio::test]
async fn short_lived_tokens_are_renewed_before_they_expire() {
    let options = SimulatorOptions { token_lifetime: Duration::from_secs(2), ..sim_options() };
    let (sim, client) = sim_client(options).await;
    let agent_id = id(&sim.agent_ids()[0]);
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < Duration::from_millis(4500) {
        assert!(client.get_agent(&agent_id, None).await.unwrap().is_some());
        calls += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats = sim.stats();
    // Renewed 10% before expiry (at ~1.8 s and ~3.6 s), never per call, never too late.
    assert!((2..=4).contains(&stats.token_requests), "{} tokens for {calls} calls", stats.token_requests);
    assert!(sim.request_log().iter().all(|r| r.status != Some(401)), "a token was used after expiry");
}

#[tokio::test]
async fn a_token_that_expires_while_the_call_waits_for_its_slot_is_renewed_before_it_is_sent() {
    // One call per 3 s and tokens of 2 s: the second call waits out the first's token.
    let options = SimulatorOptions { token_lifetime: Duration::from_secs(2), ..sim_options() };
    let sim = simulator::start(options).await.unwrap();
    let budget =
        budget_with(support::fresh_store().await, RateWindow { calls: 1, per: Duration::from_secs(3) });
    let client = client(&settings(&sim.base_url(), &sim.token_url()), SIM_SECRET, budget);
    let agent_id = id(&sim.agent_ids()[0]);
    for _ in 0..2 {
        assert!(client.get_agent(&agent_id, None).await.unwrap().is_some());
    }
    let statuses: Vec<Option<u16>> = sim.request_log().iter().map(|r| r.status).collect();
    assert!(!statuses.contains(&Some(401)), "a call spent its slot on an expired token: {statuses:?}");
    assert_eq!((sim.stats().by_id_requests, client.counters().requests), (2, 2), "no call wasted");
}

#[tokio::test]
async fn a_refused_token_is_renewed_once_and_the_call_retried() {
    let server = mock_server().await;
    answer(&server, &by_id_path("a1"), api_error(401, "Unauthorized", "expired"), Some(1)).await;
    answer(&server, &by_id_path("a1"), ResponseTemplate::new(200).set_body_json(agent("a1")), None).await;
    let client = mock_client(&server).await;
    assert!(client.get_agent(&id("a1"), None).await.unwrap().is_some());
    assert_eq!(received(&server).await, (2, 2), "two API calls, two tokens");
}

#[tokio::test]
async fn a_second_401_is_unauthorized() {
    let server = mock_server().await;
    answer(&server, &by_id_path("a1"), api_error(401, "Unauthorized", "denied"), None).await;
    let client = mock_client(&server).await;
    let error = client.get_agent(&id("a1"), None).await.unwrap_err();
    assert!(matches!(error, ApiError::Unauthorized { .. }), "{error}");
    assert_eq!(received(&server).await, (2, 2), "one renewal, one retry, no more");
}

#[tokio::test]
async fn bad_request_is_not_retried() {
    let server = mock_server().await;
    answer(&server, &by_id_path("a1"), api_error(400, "InvalidInput", "bad id"), None).await;
    let error = mock_client(&server).await.get_agent(&id("a1"), None).await.unwrap_err();
    assert!(matches!(error, ApiError::BadRequest { .. }), "{error}");
    assert!(error.to_string().contains("corr-1234"), "the correlation id is shown: {error}");
    assert_eq!(received(&server).await.0, 1);
}

#[tokio::test]
async fn another_agents_record_is_refused_not_stored_under_its_id() {
    let server = mock_server().await;
    answer(&server, &by_id_path("a1"), ResponseTemplate::new(200).set_body_json(agent("b2")), None).await;
    let client = mock_client(&server).await;
    let error = client.get_agent(&id("a1"), None).await.unwrap_err();
    assert!(matches!(error, ApiError::Malformed { transient: false, .. }), "{error}");
    assert!(
        error.to_string().contains("asked for agent a1") && error.to_string().contains("agent b2"),
        "{error}"
    );
    assert_eq!(received(&server).await.0, 1, "a wrong record is not retried");
}

#[tokio::test]
async fn forbidden_names_the_missing_permission_and_is_not_retried() {
    let server = mock_server().await;
    answer(&server, &by_id_path("a1"), api_error(403, "Forbidden", "no"), None).await;
    let error = mock_client(&server).await.get_agent(&id("a1"), None).await.unwrap_err();
    assert!(matches!(error, ApiError::Forbidden { .. }), "{error}");
    assert!(error.to_string().contains("Machine.Read.All"), "{error}");
    assert!(error.to_string().contains("admin consent"), "{error}");
    assert_eq!(received(&server).await.0, 1);
}

#[tokio::test]
async fn unknown_and_deleted_agents_are_none() {
    let (sim, client) = sim_client(sim_options()).await;
    assert!(client.get_agent(&id("no-such-agent"), None).await.unwrap().is_none());
    let deleted = sim.agent_ids()[0].clone();
    sim.delete(&deleted);
    assert!(client.get_agent(&id(&deleted), None).await.unwrap().is_none());
    assert_eq!(sim.stats().by_id_requests, 2, "a 404 is an answer, not retried");
}

#[tokio::test]
async fn server_errors_are_retried() {
    let server = mock_server().await;
    answer(&server, &by_id_path("a1"), api_error(500, "InternalServerError", "oops"), Some(1)).await;
    answer(&server, &by_id_path("a1"), ResponseTemplate::new(200).set_body_json(agent("a1")), None).await;
    let client = mock_client(&server).await;
    assert!(client.get_agent(&id("a1"), None).await.unwrap().is_some());
    assert_eq!(received(&server).await.0, 2);
}

#[tokio::test]
async fn timeouts_are_retried() {
    let server = mock_server().await;
    let slow = ResponseTemplate::new(200).set_body_json(agent("a1")).set_delay(Duration::from_secs(3));
    answer(&server, &by_id_path("a1"), slow, Some(1)).await;
    answer(&server, &by_id_path("a1"), ResponseTemplate::new(200).set_body_json(agent("a1")), None).await;
    let mut settings = settings(&server.uri(), &format!("{}{TOKEN_PATH}", server.uri()));
    settings.request_timeout = Duration::from_millis(300);
    let client = client(&settings, SIM_SECRET, roomy_budget().await);
    let started = Instant::now();
    assert!(client.get_agent(&id("a1"), None).await.unwrap().is_some());
    assert!(started.elapsed() < Duration::from_secs(3), "the slow answer was not awaited");
    assert_eq!(received(&server).await.0, 2);
}

#[tokio::test]
async fn malformed_json_is_retried_then_reported() {
    let server = mock_server().await;
    let cut_off = ResponseTemplate::new(200).set_body_raw(r#"{"id": "a1", "lastSe"#, "application/json");
    answer(&server, &by_id_path("a1"), cut_off, None).await;
    let error = mock_client(&server).await.get_agent(&id("a1"), None).await.unwrap_err();
    assert!(matches!(error, ApiError::Malformed { transient: true, .. }), "{error}");
    assert_eq!(received(&server).await.0, 3, "the first try and max_retries = 2 retries");
}

#[tokio::test]
async fn dropped_connections_are_retried_then_reported() {
    let (sim, client) = sim_client(sim_options()).await;
    sim.set_faults(Faults { reset_rate: 1.0, ..Faults::default() });
    let error = client.get_agent(&id(&sim.agent_ids()[0]), None).await.unwrap_err();
    assert!(matches!(error, ApiError::Connect { .. }), "{error}");
    assert_eq!(sim.stats().by_id_requests, 3);
}

/// Each 429 answers with `retry_after`, then the agent is served; returns the elapsed time.
async fn throttled_once(retry_after: &str) -> Duration {
    let server = mock_server().await;
    let throttled = api_error(429, "429", "API calls quota exceeded! maximum allowed 1500 per 01:00:00")
        .insert_header("Retry-After", retry_after);
    answer(&server, &by_id_path("a1"), throttled, Some(1)).await;
    answer(&server, &by_id_path("a1"), ResponseTemplate::new(200).set_body_json(agent("a1")), None).await;
    let pool = support::fresh_pool().await;
    let budget =
        budget_with(Store::from_pool(pool.clone()), RateWindow { calls: 100, per: Duration::from_secs(60) });
    let client =
        client(&settings(&server.uri(), &format!("{}{TOKEN_PATH}", server.uri())), SIM_SECRET, budget);
    let started = Instant::now();
    assert!(client.get_agent(&id("a1"), None).await.unwrap().is_some());
    let elapsed = started.elapsed();
    assert_eq!(received(&server).await.0, 2);
    let counters = client.counters();
    assert_eq!((counters.requests, counters.throttled), (2, 1));
    let statuses: Vec<Option<i16>> =
        sqlx::query_scalar("SELECT status FROM api_calls ORDER BY call_id").fetch_all(&pool).await.unwrap();
    assert_eq!(statuses, [Some(429), Some(200)], "both calls are in the ledger with their answers");
    elapsed
}

#[tokio::test]
async fn a_429_pauses_for_retry_after_seconds() {
    let elapsed = throttled_once("1").await;
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
}

#[tokio::test]
async fn a_429_pauses_until_a_retry_after_date() {
    let at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let elapsed = throttled_once(&at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()).await;
    // The date has whole seconds, so the pause is between 1 and 2 s.
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
}

#[tokio::test]
async fn the_simulators_rate_windows_are_obeyed_through_429s() {
    let options =
        SimulatorOptions { windows: vec![RateWindow::parse_compact("3/1s").unwrap()], ..sim_options() };
    let sim = simulator::start(options).await.unwrap();
    let mut settings = settings(&sim.base_url(), &sim.token_url());
    settings.max_retries = 5;
    let client = client(&settings, SIM_SECRET, roomy_budget().await);
    for agent_id in sim.agent_ids() {
        assert!(client.get_agent(&id(&agent_id), None).await.unwrap().is_some());
    }
    let stats = sim.stats();
    assert!(stats.throttled >= 1, "five calls in a 3/1s window meet a 429");
    assert_eq!(client.counters().throttled, stats.throttled);
}

#[tokio::test]
async fn the_deadline_stops_requests_the_budget_cannot_cover() {
    let (sim, _) = sim_client(sim_options()).await;
    let budget =
        budget_with(support::fresh_store().await, RateWindow { calls: 2, per: Duration::from_secs(10) });
    let client = client(&settings(&sim.base_url(), &sim.token_url()), SIM_SECRET, budget);
    let deadline = Some(Instant::now() + Duration::from_millis(500));
    let ids = sim.agent_ids();
    for agent_id in &ids[..2] {
        assert!(client.get_agent(&id(agent_id), deadline).await.unwrap().is_some());
    }
    let error = client.get_agent(&id(&ids[2]), deadline).await.unwrap_err();
    assert!(matches!(error, ApiError::Budget(BudgetError::Exhausted)), "{error}");
    assert_eq!(client.counters().requests, 2);
}

/// Everything a listing returned, gathered page by page as a cycle takes it.
#[derive(Default)]
struct Listed {
    records: Vec<AgentRecord>,
    bad_records: Vec<RecordError>,
    pages: u32,
    complete: bool,
    error: Option<ApiError>,
}

async fn list_all(client: &DefenderClient) -> Listed {
    list_sending(client, Ahead::No).await
}

/// Whether each next page is requested as soon as a page arrives, as a cycle does while it
/// applies the page ([`Listing::send_ahead`](scan_agent_sync::defender::Listing::send_ahead)).
#[derive(Clone, Copy, PartialEq)]
enum Ahead {
    No,
    Yes,
}

async fn list_sending(client: &DefenderClient, ahead: Ahead) -> Listed {
    let mut listing = client.list(None);
    let mut listed = Listed::default();
    while let Some(page) = listing.next_page().await {
        if ahead == Ahead::Yes {
            listing.send_ahead();
            // The cycle applies the page meanwhile.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match page {
            Ok(page) => {
                listed.records.extend(page.records);
                listed.bad_records.extend(page.bad_records);
            }
            Err(error) => listed.error = Some(error),
        }
    }
    (listed.pages, listed.complete) = (listing.pages(), listing.complete());
    listed
}

#[tokio::test]
async fn paging_gets_every_agent_once() {
    for ahead in [Ahead::No, Ahead::Yes] {
        let (sim, client) = sim_client(SimulatorOptions { agents: 7, page_size: 3, ..sim_options() }).await;
        let outcome = list_sending(&client, ahead).await;
        assert!(outcome.complete && outcome.error.is_none(), "{:?}", outcome.error);
        assert_eq!(outcome.pages, 3);
        let mut got: Vec<String> = outcome.records.iter().map(|r| r.id.to_string()).collect();
        let mut expected = sim.agent_ids();
        got.sort();
        expected.sort();
        assert_eq!(got, expected);
        // Nothing is requested ahead of the last page.
        assert_eq!(sim.stats().list_requests, 3);
        assert_eq!(client.counters().requests, 3);
    }
}

#[tokio::test]
async fn a_flaky_service_still_yields_every_agent() {
    for ahead in [Ahead::No, Ahead::Yes] {
        a_flaky_service_yields_every_agent(ahead).await;
    }
}

/// Requests sent ahead meet the same faults, and are retried by the same policy.
async fn a_flaky_service_yields_every_agent(ahead: Ahead) {
    let options = SimulatorOptions {
        agents: 12,
        page_size: 4,
        error_rate: 0.15,
        malformed_rate: 0.1,
        reset_rate: 0.05,
        ..sim_options()
    };
    let sim = simulator::start(options).await.unwrap();
    let mut settings = settings(&sim.base_url(), &sim.token_url());
    settings.max_retries = 6;
    let client = client(&settings, SIM_SECRET, roomy_budget().await);
    let outcome = list_sending(&client, ahead).await;
    assert!(outcome.complete, "{:?}", outcome.error);
    assert_eq!(outcome.records.len(), 12);
    for agent_id in sim.agent_ids() {
        assert!(client.get_agent(&id(&agent_id), None).await.unwrap().is_some());
    }
    let stats = sim.stats();
    assert!(stats.api_requests > 15, "faults were met and retried: {stats:?}");
    assert_eq!(client.counters().requests, stats.api_requests);
}

#[tokio::test]
async fn a_page_sent_ahead_with_a_refused_token_is_renewed_and_retried_when_read() {
    let server = mock_server().await;
    let first = json!({"value": [agent("a1")], "@odata.nextLink": format!("{}/page-2", server.uri())});
    answer(&server, AGENTS, ResponseTemplate::new(200).set_body_json(first), None).await;
    answer(&server, "/page-2", api_error(401, "Unauthorized", "expired"), Some(1)).await;
    let second = ResponseTemplate::new(200).set_body_json(json!({"value": [agent("a2")]}));
    answer(&server, "/page-2", second, None).await;
    let outcome = list_sending(&mock_client(&server).await, Ahead::Yes).await;
    assert!(outcome.complete, "{:?}", outcome.error);
    assert_eq!(outcome.records.len(), 2);
    assert_eq!(received(&server).await, (3, 2), "the refused page again, with a renewed token");
}

#[tokio::test]
async fn unusable_records_are_set_aside_and_the_rest_kept() {
    let server = mock_server().await;
    let page = json!({
        "@odata.context": "https://elsewhere.example/api/$metadata#DeviceAuthenticatedScanAgents",
        "value": [agent("good-1"), {"id": "no-last-seen"}, 5, agent("good-2")]
    });
    answer(&server, AGENTS, ResponseTemplate::new(200).set_body_json(page), None).await;
    let outcome = list_all(&mock_client(&server).await).await;
    assert!(outcome.complete, "{:?}", outcome.error);
    let ids: Vec<&str> = outcome.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["good-1", "good-2"]);
    assert_eq!(outcome.bad_records.len(), 2);
    assert!(outcome.bad_records[0].to_string().contains("no-last-seen"));
}

#[tokio::test]
async fn a_listing_that_fails_midway_keeps_what_it_got() {
    let server = mock_server().await;
    let first = json!({"value": [agent("a1")], "@odata.nextLink": format!("{}/page-2", server.uri())});
    answer(&server, AGENTS, ResponseTemplate::new(200).set_body_json(first), None).await;
    answer(&server, "/page-2", api_error(403, "Forbidden", "no"), None).await;
    let outcome = list_all(&mock_client(&server).await).await;
    assert!(!outcome.complete);
    assert_eq!((outcome.pages, outcome.records.len()), (1, 1));
    assert!(matches!(outcome.error, Some(ApiError::Forbidden { .. })), "{:?}", outcome.error);
}

#[tokio::test]
async fn next_links_that_loop_or_leave_the_api_stop_the_listing() {
    let server = mock_server().await;
    let looping = json!({"value": [agent("a1")], "@odata.nextLink": format!("{}{AGENTS}", server.uri())});
    answer(&server, AGENTS, ResponseTemplate::new(200).set_body_json(looping), None).await;
    let outcome = list_all(&mock_client(&server).await).await;
    assert!(!outcome.complete && outcome.records.len() == 1);
    assert!(outcome.error.unwrap().to_string().contains("already fetched"));
    assert_eq!(received(&server).await.0, 1);

    let server = mock_server().await;
    let leaving = json!({"value": [], "@odata.nextLink": "http://collector.example/steal"});
    answer(&server, AGENTS, ResponseTemplate::new(200).set_body_json(leaving), None).await;
    let outcome = list_all(&mock_client(&server).await).await;
    assert!(!outcome.complete);
    assert!(outcome.error.unwrap().to_string().contains("leaves the Defender API"));
}

#[tokio::test]
async fn both_casings_and_both_envelopes_give_the_same_agent() {
    let budget = roomy_budget().await;
    let mut seen = Vec::new();
    for (field_case, by_id_envelope) in [
        (FieldCase::Camel, Envelope::Bare),
        (FieldCase::Pascal, Envelope::Wrapped),
        (FieldCase::Mixed, Envelope::Bare),
        (FieldCase::Camel, Envelope::Wrapped),
    ] {
        let sim =
            simulator::start(SimulatorOptions { field_case, by_id_envelope, ..sim_options() }).await.unwrap();
        let client = client(&settings(&sim.base_url(), &sim.token_url()), SIM_SECRET, budget.clone());
        let listed = list_all(&client).await;
        assert!(listed.complete && listed.bad_records.is_empty(), "{field_case:?}: {:?}", listed.bad_records);
        for record in &listed.records {
            let by_id = client.get_agent(&record.id, None).await.unwrap().expect("listed agents exist");
            assert_eq!((&by_id.attributes, by_id.last_seen), (&record.attributes, record.last_seen));
        }
        if field_case == FieldCase::Pascal {
            assert!(listed.records[0].raw.get("ScannerSoftwareVersion").is_some(), "really PascalCase");
        }
        // Timestamps follow each simulator's start time; the rest follows the seed alone.
        seen.push(listed.records.into_iter().map(|r| (r.id, r.attributes)).collect::<Vec<_>>());
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "one seed, one fleet, whatever the spelling");
}

#[tokio::test]
async fn an_id_is_one_encoded_path_segment() {
    let (sim, client) = sim_client(sim_options()).await;
    let tricky = "org/../x?y=1#z w%41ü";
    sim.add_agent(tricky);
    let record = client.get_agent(&id(tricky), None).await.unwrap().expect("the agent is found");
    assert_eq!(record.id.as_str(), tricky);
    let sent = sim.request_log().pop().unwrap().path_and_query;
    assert_eq!(sent, "/api/DeviceAuthenticatedScanAgents/org%2F..%2Fx%3Fy%3D1%23z%20w%2541%C3%BC");

    // However the ID is shaped, the URL's path ends in exactly that one segment.
    for shape in ["../../admin", "..%2F..", "a/b", "?x", "#x"] {
        let url = reqwest::Url::parse(&agent_url("https://api.example", &id(shape))).unwrap();
        let segments: Vec<&str> = url.path_segments().unwrap().collect();
        assert_eq!(segments.len(), 3, "{shape}: {url}");
        assert_eq!(&segments[..2], ["api", "DeviceAuthenticatedScanAgents"]);
        assert!(url.query().is_none() && url.fragment().is_none(), "{shape}: {url}");
    }
    // A segment of only dots is removed by URL normalization even when encoded, so such an
    // ID is refused rather than sent to the list endpoint.
    let dots = reqwest::Url::parse("https://api.example/api/DeviceAuthenticatedScanAgents/%2e%2e").unwrap();
    assert_eq!(dots.path(), "/api/");
    let before = sim.stats().by_id_requests;
    let error = client.get_agent(&id(".."), None).await.unwrap_err();
    assert!(matches!(error, ApiError::UnrequestableId(_)), "{error}");
    assert_eq!(sim.stats().by_id_requests, before);
}

#[tokio::test]
async fn oversized_bodies_are_refused_not_buffered() {
    let server = mock_server().await;
    let huge = json!({"id": "a1", "padding": "x".repeat(2 * 1024 * 1024)});
    answer(&server, &by_id_path("a1"), ResponseTemplate::new(200).set_body_json(huge), None).await;
    let error = mock_client(&server).await.get_agent(&id("a1"), None).await.unwrap_err();
    assert!(matches!(error, ApiError::BodyTooLarge { .. }), "{error}");
    assert_eq!(received(&server).await.0, 1, "not retried");
}

/// A server that answers token POSTs properly and every GET with an endless chunked body,
/// which carries no Content-Length to refuse it by.
async fn endless_body_server() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let n = stream.read(&mut head).await.unwrap_or(0);
                if head[..n].starts_with(b"POST") {
                    let body = json!({"access_token": WIREMOCK_TOKEN, "expires_in": 3599}).to_string();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    return;
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await;
                let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
                while stream.write_all(chunk.as_bytes()).await.is_ok() {}
            });
        }
    });
    base
}

#[tokio::test]
async fn an_endless_body_without_length_is_cut_off_at_the_cap() {
    let base = endless_body_server().await;
    let client = client(&settings(&base, &format!("{base}{TOKEN_PATH}")), SIM_SECRET, roomy_budget().await);
    let error = client.get_agent(&id("a1"), None).await.unwrap_err();
    assert!(matches!(error, ApiError::BodyTooLarge { limit, .. } if limit == 1024 * 1024), "{error}");
    assert_eq!(client.counters().requests, 1);
}

#[tokio::test]
async fn token_refusals_name_the_setting_and_are_not_hammered() {
    let sim = simulator::start(sim_options()).await.unwrap();
    let budget = roomy_budget().await;
    let good = settings(&sim.base_url(), &sim.token_url());
    let wrong_tenant = settings(&sim.base_url(), &sim.token_url().replace("sim-tenant", "other-tenant"));
    let mut wrong_client = good.clone();
    wrong_client.client_id = "other-client".into();
    for (settings, secret, kind, setting) in [
        (&good, "wrong-secret", TokenFailure::BadSecret, "client secret"),
        (&wrong_tenant, SIM_SECRET, TokenFailure::UnknownTenant, "defender.tenant_id"),
        (&wrong_client, SIM_SECRET, TokenFailure::UnknownClient, "defender.client_id"),
    ] {
        let client = client(settings, secret, budget.clone());
        let error = client.check_token().await.unwrap_err();
        assert!(matches!(&error, ApiError::Token { kind: k, .. } if *k == kind), "{error}");
        assert!(error.to_string().contains(setting), "{error}");
        let again = client.get_agent(&id("a1"), None).await.unwrap_err();
        assert_eq!(again.to_string(), error.to_string(), "the refusal is remembered");
    }
    let stats = sim.stats();
    assert_eq!(stats.token_requests, 3, "one request per client: no retries, the refusal remembered");
    assert_eq!(stats.api_requests, 0, "no API call without a token");
}

#[tokio::test]
async fn an_unavailable_token_endpoint_is_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    mount_token(&server).await;
    mock_client(&server).await.check_token().await.unwrap();
    assert_eq!(received(&server).await.1, 2);
}

#[tokio::test]
async fn secrets_never_appear_in_errors_or_logs() {
    let logs = support::Captured::default();
    let _guard = logs.install(tracing::Level::TRACE);

    let mut shown = Vec::new();
    let server = mock_server().await;
    answer(&server, &by_id_path("denied"), api_error(401, "Unauthorized", "denied"), None).await;
    answer(&server, &by_id_path("failing"), api_error(503, "ServiceUnavailable", "later"), None).await;
    let client = mock_client(&server).await;
    for agent_id in ["denied", "failing"] {
        let error = client.get_agent(&id(agent_id), None).await.unwrap_err();
        shown.push(format!("{error} {error:?}"));
    }
    shown.push(format!("{client:?}"));

    let sim = simulator::start(sim_options()).await.unwrap();
    let wrong = client_for_secret(&sim, "wrong-secret-hunter2").await;
    let error = wrong.check_token().await.unwrap_err();
    shown.push(format!("{error} {error:?} {wrong:?}"));

    let logged = logs.text();
    assert!(logged.contains("retrying"), "the capture works: {logged}");
    for text in shown.iter().chain([&logged]) {
        for secret in [WIREMOCK_TOKEN, SIM_SECRET, "wrong-secret-hunter2"] {
            assert!(!text.contains(secret), "{secret:?} leaked into: {text}");
        }
    }
}

async fn client_for_secret(sim: &SimulatorHandle, secret: &str) -> DefenderClient {
    client(&settings(&sim.base_url(), &sim.token_url()), secret, roomy_budget().await)
}
