//! The simulator against a real HTTP client, in-process on port 0.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use reqwest::{Client, StatusCode};
use scan_agent_sync::rate_window::RateWindow;
use scan_agent_sync::simulator::{self, Envelope, FieldCase, SimulatorHandle, SimulatorOptions};
use serde_json::Value;

/// What a careful client encodes in one path segment (RFC 3986), `/` and `%` included.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'/')
    .add(b'%');

/// A small frozen fleet: nothing evolves, nobody goes silent or vanishes unless a test asks.
fn options() -> SimulatorOptions {
    SimulatorOptions::frozen(5)
}

/// A running simulator with a client that already holds a token.
struct Sim {
    handle: SimulatorHandle,
    client: Client,
    token: String,
}

impl Sim {
    async fn start(options: SimulatorOptions) -> Self {
        let handle = simulator::start(options).await.unwrap();
        let client = Client::new();
        let response = token_request(&client, &handle.token_url(), "sim-client", "sim-secret").await;
        assert_eq!(response.status(), StatusCode::OK);
        let token = response.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
        Self { handle, client, token }
    }

    fn agents_url(&self) -> String {
        format!("{}/api/DeviceAuthenticatedScanAgents", self.handle.base_url())
    }

    /// The URL of one agent, its ID encoded as a single path segment.
    fn agent_url(&self, id: &str) -> String {
        format!("{}/{}", self.agents_url(), utf8_percent_encode(id, SEGMENT))
    }

    async fn get(&self, url: &str) -> reqwest::Response {
        self.client.get(url).bearer_auth(&self.token).send().await.unwrap()
    }

    async fn get_json(&self, url: &str) -> (StatusCode, Value) {
        let response = self.get(url).await;
        let status = response.status();
        (status, response.json().await.unwrap())
    }
}

async fn token_request(client: &Client, url: &str, client_id: &str, secret: &str) -> reqwest::Response {
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("client_secret", secret),
        ("scope", "https://api.securitycenter.microsoft.com/.default"),
    ];
    client.post(url).form(&form).send().await.unwrap()
}

/// Asserts the Defender error envelope and returns its code.
fn error_code(body: &Value) -> &str {
    let error = &body["error"];
    assert!(error["message"].is_string(), "{body}");
    assert!(!error["target"].as_str().unwrap().is_empty(), "{body}");
    error["code"].as_str().unwrap()
}

#[tokio::test]
async fn token_endpoint_issues_and_refuses_like_entra_id() {
    let sim = Sim::start(options()).await;
    let ok = token_request(&sim.client, &sim.handle.token_url(), "sim-client", "sim-secret").await;
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert!(body["access_token"].as_str().unwrap().len() > 20);

    let bad_secret = token_request(&sim.client, &sim.handle.token_url(), "sim-client", "wrong").await;
    assert_eq!(bad_secret.status(), StatusCode::UNAUTHORIZED);
    let body: Value = bad_secret.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");
    assert!(body["error_description"].as_str().unwrap().starts_with("AADSTS7000215:"));

    let wrong_tenant = sim.handle.token_url().replace("sim-tenant", "other-tenant");
    let unknown = token_request(&sim.client, &wrong_tenant, "sim-client", "sim-secret").await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");
    assert!(body["error_description"].as_str().unwrap().starts_with("AADSTS90002: Tenant 'other-tenant'"));

    assert_eq!(sim.handle.stats().token_requests, 4);
    assert_eq!(sim.handle.stats().api_requests, 0);
    sim.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn api_calls_need_a_live_token() {
    let sim = Sim::start(SimulatorOptions { token_lifetime: Duration::from_millis(300), ..options() }).await;
    let missing = sim.client.get(sim.agents_url()).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&missing.json().await.unwrap()), "Unauthorized");

    let forged = sim.client.get(sim.agents_url()).bearer_auth("sim.forged").send().await.unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);

    assert_eq!(sim.get(&sim.agents_url()).await.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(sim.get(&sim.agents_url()).await.status(), StatusCode::UNAUTHORIZED, "expired");
}

#[tokio::test]
async fn paging_returns_every_agent_once_through_absolute_next_links() {
    let sim = Sim::start(SimulatorOptions { agents: 25, page_size: 10, ..options() }).await;
    let mut seen = Vec::new();
    let mut url = Some(sim.agents_url());
    while let Some(next) = url {
        let (status, page) = sim.get_json(&next).await;
        assert_eq!(status, StatusCode::OK);
        let host = sim.handle.addr().to_string();
        assert!(page["@odata.context"].as_str().unwrap().contains(&host), "context echoes the host");
        seen.extend(page["value"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap().to_owned()));
        url = page["@odata.nextLink"].as_str().map(str::to_owned);
        if let Some(link) = &url {
            assert!(link.starts_with(&sim.handle.base_url()), "absolute nextLink: {link}");
        }
    }
    assert_eq!(seen, sim.handle.agent_ids());
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 25);
    assert_eq!(sim.handle.stats().list_requests, 3);
}

#[tokio::test]
async fn by_id_envelope_is_bare_or_wrapped() {
    let bare = Sim::start(SimulatorOptions { by_id_envelope: Envelope::Bare, ..options() }).await;
    let id = bare.handle.agent_ids()[0].clone();
    let (status, body) = bare.get_json(&bare.agent_url(&id)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["id"], id.as_str());
    assert!(body["@odata.context"].as_str().unwrap().ends_with("DeviceAuthenticatedScanAgents/$entity"));

    let wrapped = Sim::start(SimulatorOptions { by_id_envelope: Envelope::Wrapped, ..options() }).await;
    let id = wrapped.handle.agent_ids()[0].clone();
    let (_, body) = wrapped.get_json(&wrapped.agent_url(&id)).await;
    assert!(body["@odata.context"].as_str().unwrap().ends_with("/$entity"));
    assert_eq!(body["value"].as_array().unwrap().len(), 1);
    assert_eq!(body["value"][0]["id"], id.as_str());
}

#[tokio::test]
async fn field_case_and_fraction_digits_follow_the_options() {
    let check = |case: FieldCase, expected: [&'static str; 3], absent: &'static str| async move {
        let sim =
            Sim::start(SimulatorOptions { field_case: case, fraction_digits: Some(7), ..options() }).await;
        let (_, page) = sim.get_json(&sim.agents_url()).await;
        for agent in page["value"].as_array().unwrap() {
            let agent = agent.as_object().unwrap();
            for field in expected {
                assert!(agent.contains_key(field), "{field} in {agent:?}");
            }
            assert!(!agent.contains_key(absent));
            assert!(agent.contains_key("osPlatform"), "an extra field the docs do not list");
            let last_seen = agent["lastSeen"].as_str().unwrap();
            let fraction = last_seen.split_once('.').unwrap().1;
            assert_eq!(fraction.len(), "1234567Z".len(), "{last_seen}");
        }
    };
    check(
        FieldCase::Pascal,
        ["AssignedApplicationId", "ScannerSoftwareVersion", "LastCommandExecutionTimestamp"],
        "scannerSoftwareVersion",
    )
    .await;
    check(
        FieldCase::Camel,
        ["assignedApplicationId", "scannerSoftwareVersion", "lastCommandExecutionTimestamp"],
        "ScannerSoftwareVersion",
    )
    .await;
}

#[tokio::test]
async fn mixed_case_spells_the_fields_both_ways_in_one_response() {
    let sim = Sim::start(SimulatorOptions { field_case: FieldCase::Mixed, agents: 20, ..options() }).await;
    let (_, page) = sim.get_json(&sim.agents_url()).await;
    let agents = page["value"].as_array().unwrap();
    let pascal = agents.iter().filter(|a| a.get("LastCommandExecutionTimestamp").is_some()).count();
    let camel = agents.iter().filter(|a| a.get("lastCommandExecutionTimestamp").is_some()).count();
    assert!(pascal > 0 && camel > 0 && pascal + camel == 20, "{pascal} pascal, {camel} camel");
}

#[tokio::test]
async fn an_encoded_id_is_one_segment_and_logged_raw() {
    let sim = Sim::start(options()).await;
    let awkward = "org_ machine/../x?y#z";
    sim.handle.add_agent(awkward);
    let (status, body) = sim.get_json(&sim.agent_url(awkward)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["id"], awkward);
    let logged = sim.handle.request_log().last().unwrap().path_and_query.clone();
    assert_eq!(logged, "/api/DeviceAuthenticatedScanAgents/org_%20machine%2F..%2Fx%3Fy%23z");
}

#[tokio::test]
async fn unknown_and_deleted_agents_answer_the_documented_404() {
    let sim = Sim::start(options()).await;
    let (status, body) = sim.get_json(&sim.agent_url("no-such-agent")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "ResourceNotFound");

    let id = sim.handle.agent_ids()[1].clone();
    assert!(sim.handle.delete(&id));
    assert_eq!(sim.get(&sim.agent_url(&id)).await.status(), StatusCode::NOT_FOUND);
    let (_, page) = sim.get_json(&sim.agents_url()).await;
    let listed: Vec<&str> =
        page["value"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(listed.len(), 4);
    assert!(!listed.contains(&id.as_str()));

    assert!(sim.handle.restore(&id));
    assert_eq!(sim.get(&sim.agent_url(&id)).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn query_options_the_docs_do_not_list_are_refused() {
    let sim = Sim::start(options()).await;
    let (status, body) = sim.get_json(&format!("{}?$top=1", sim.agents_url())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "InvalidInput");
}

#[tokio::test]
async fn a_rate_window_throttles_the_call_over_quota_until_it_frees() {
    let window = RateWindow { calls: 5, per: Duration::from_secs(1) };
    let sim = Sim::start(SimulatorOptions { windows: vec![window], ..options() }).await;
    for _ in 0..5 {
        assert_eq!(sim.get(&sim.agents_url()).await.status(), StatusCode::OK);
    }
    let throttled = sim.get(&sim.agents_url()).await;
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = throttled.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(retry_after, 1);
    let body: Value = throttled.json().await.unwrap();
    assert_eq!(error_code(&body), "429");
    assert_eq!(body["error"]["message"], "API calls quota exceeded! maximum allowed 5 per 00:00:01");

    // Token calls are outside the budget.
    let token = token_request(&sim.client, &sim.handle.token_url(), "sim-client", "sim-secret").await;
    assert_eq!(token.status(), StatusCode::OK);

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(sim.get(&sim.agents_url()).await.status(), StatusCode::OK);
    let stats = sim.handle.stats();
    assert_eq!(stats.throttled, 1);
    assert_eq!(stats.api_requests, 7);
    assert_eq!(stats.window_peaks.len(), 1);
    assert_eq!(stats.window_peaks[0].window, window);
    assert_eq!(stats.window_peaks[0].max_accepted, 5);
}

#[tokio::test]
async fn injected_faults_look_like_upstream_failures() {
    let sim = Sim::start(SimulatorOptions { error_rate: 1.0, ..options() }).await;
    let (status, body) = sim.get_json(&sim.agents_url()).await;
    assert!(status == StatusCode::INTERNAL_SERVER_ERROR || status == StatusCode::SERVICE_UNAVAILABLE);
    assert!(["InternalServerError", "ServiceUnavailable"].contains(&error_code(&body)));

    sim.handle.set_faults(simulator::Faults { malformed_rate: 1.0, ..Default::default() });
    let garbled = sim.get(&sim.agents_url()).await;
    assert_eq!(garbled.status(), StatusCode::OK);
    assert!(serde_json::from_slice::<Value>(&garbled.bytes().await.unwrap()).is_err());

    sim.handle.set_faults(simulator::Faults { reset_rate: 1.0, ..Default::default() });
    assert!(sim.client.get(sim.agents_url()).bearer_auth(&sim.token).send().await.is_err());
    assert_eq!(sim.handle.request_log().last().unwrap().status, None);

    sim.handle.set_faults(simulator::Faults::default());
    sim.handle.set_latency(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(sim.get(&sim.agents_url()).await.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn the_fleet_reports_in_and_upgrades_every_period() {
    let evolving = SimulatorOptions {
        evolve_every: Duration::from_millis(200),
        upgrade_share: 1.0,
        fraction_digits: Some(7),
        agents: 20,
        ..options()
    };
    let sim = Sim::start(evolving.clone()).await;
    let (_, before) = sim.get_json(&sim.agents_url()).await;
    tokio::time::sleep(Duration::from_millis(450)).await;
    let (_, after) = sim.get_json(&sim.agents_url()).await;
    let pairs = before["value"].as_array().unwrap().iter().zip(after["value"].as_array().unwrap());
    let mut upgraded = 0;
    for (old, new) in pairs {
        assert_eq!(old["id"], new["id"]);
        assert!(new["lastSeen"].as_str().unwrap() > old["lastSeen"].as_str().unwrap(), "{old} -> {new}");
        if let (Some(old_version), Some(new_version)) =
            (old["scannerSoftwareVersion"].as_str(), new["scannerSoftwareVersion"].as_str())
        {
            assert_ne!(old_version, new_version);
            upgraded += 1;
        }
    }
    assert!(upgraded > 0);

    let silent = Sim::start(SimulatorOptions { silent_share: 1.0, ..evolving.clone() }).await;
    let (_, before) = silent.get_json(&silent.agents_url()).await;
    tokio::time::sleep(Duration::from_millis(450)).await;
    let (_, after) = silent.get_json(&silent.agents_url()).await;
    assert_eq!(before, after, "silent agents never report in");

    let doomed = Sim::start(SimulatorOptions { deleted_share: 1.0, ..evolving }).await;
    let id = doomed.handle.agent_ids()[0].clone();
    tokio::time::sleep(Duration::from_millis(650)).await;
    assert!(doomed.handle.agent_ids().is_empty(), "every agent vanishes within three periods");
    assert_eq!(doomed.get(&doomed.agent_url(&id)).await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn run_serves_until_its_shutdown_future_completes() {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(simulator::run(options(), async move {
        let _ = stopped.await;
    }));
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
}

/// A token for `tenant` from its own token URL, with the one app registration all share.
async fn tenant_token(client: &Client, tenant: &SimulatorHandle) -> String {
    let response = token_request(client, &tenant.token_url(), "sim-client", "sim-secret").await;
    assert_eq!(response.status(), StatusCode::OK, "token for {}", tenant.tenant_id());
    response.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
}

/// The agent IDs one list page shows to the bearer of `token`.
async fn listed_ids(client: &Client, url: &str, token: &str) -> Vec<String> {
    let response = client.get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["value"].as_array().unwrap().iter().map(|agent| agent["id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn two_tenants_each_token_sees_only_its_own_fleet() {
    let sim = Sim::start(SimulatorOptions { tenants: 2, ..options() }).await;
    let tenants = sim.handle.tenants();
    let ids: Vec<&str> = tenants.iter().map(SimulatorHandle::tenant_id).collect();
    assert_eq!(ids, ["sim-tenant", "sim-tenant-2"], "the first tenant is the single-tenant one");

    let mut fleets = Vec::new();
    for tenant in &tenants {
        let token = tenant_token(&sim.client, tenant).await;
        let listed = listed_ids(&sim.client, &sim.agents_url(), &token).await;
        assert_eq!(listed, tenant.agent_ids(), "{} lists its own fleet", tenant.tenant_id());
        assert_eq!(listed.len(), 5);
        fleets.push((token, listed));
    }
    let first: HashSet<&String> = fleets[0].1.iter().collect();
    assert!(fleets[1].1.iter().all(|id| !first.contains(id)), "agent IDs are distinct per tenant");

    // One tenant's agent is unknown to the other's token, as another tenant's device would be.
    let (second_token, second_fleet) = &fleets[1];
    let url = sim.agent_url(&fleets[0].1[0]);
    let foreign = sim.client.get(&url).bearer_auth(second_token).send().await.unwrap();
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);
    let own = sim.client.get(sim.agent_url(&second_fleet[0])).bearer_auth(second_token).send().await.unwrap();
    assert_eq!(own.status(), StatusCode::OK);

    let unknown = sim.handle.token_url().replace("sim-tenant", "sim-tenant-3");
    let refused = token_request(&sim.client, &unknown, "sim-client", "sim-secret").await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let body: Value = refused.json().await.unwrap();
    assert!(body["error_description"].as_str().unwrap().starts_with("AADSTS90002: Tenant 'sim-tenant-3'"));
    let calls = (tenants[0].stats().api_requests, tenants[1].stats().api_requests);
    assert_eq!(calls, (1, 3), "each tenant records its own calls");
    sim.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn one_tenants_exhausted_window_does_not_throttle_another() {
    let window = RateWindow { calls: 3, per: Duration::from_secs(30) };
    let sim = Sim::start(SimulatorOptions { tenants: 2, windows: vec![window], ..options() }).await;
    let tenants = sim.handle.tenants();
    let busy = tenant_token(&sim.client, &tenants[0]).await;
    let quiet = tenant_token(&sim.client, &tenants[1]).await;
    let call = |token: &str| sim.client.get(sim.agents_url()).bearer_auth(token.to_owned()).send();

    for _ in 0..3 {
        assert_eq!(call(&busy).await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(call(&busy).await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
    for _ in 0..3 {
        assert_eq!(
            call(&quiet).await.unwrap().status(),
            StatusCode::OK,
            "the other tenant has its own budget"
        );
    }
    assert_eq!(call(&quiet).await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS, "and its own limit");

    let (busy_stats, quiet_stats) = (tenants[0].stats(), tenants[1].stats());
    assert_eq!((busy_stats.throttled, quiet_stats.throttled), (1, 1));
    assert_eq!(busy_stats.window_peaks[0].max_accepted, 3);
    assert_eq!(quiet_stats.window_peaks[0].max_accepted, 3);
    sim.handle.shutdown().await.unwrap();
}
