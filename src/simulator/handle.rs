//! The running simulator, as tests and the demo see it: addresses, inspection and control.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::faults::Faults;
use super::recorder::{LoggedRequest, ServedAgent, SimStats};
use super::state::{Hosted, Shared, lock};

/// A handle on a running simulator; clones control the same one. It shows and controls one
/// tenant (the first, unless it came from [`Self::tenant`]); stopping it stops them all.
#[derive(Debug, Clone)]
pub struct SimulatorHandle {
    pub(super) sim: Arc<Shared>,
    pub(super) hosted: Arc<Hosted>,
    pub(super) stop: CancellationToken,
    pub(super) server: Arc<Mutex<Option<JoinHandle<std::io::Result<()>>>>>,
}

impl SimulatorHandle {
    /// The bound address, with the real port when port 0 was asked for.
    pub fn addr(&self) -> SocketAddr {
        self.sim.bound
    }

    /// This handle's tenant ID.
    pub fn tenant_id(&self) -> &str {
        &self.sim.tenant_id
    }

    /// A handle on each served tenant, in `--tenants` order (the first is this one's default).
    pub fn tenants(&self) -> Vec<SimulatorHandle> {
        self.hosted.tenants.iter().map(|sim| SimulatorHandle { sim: sim.clone(), ..self.clone() }).collect()
    }

    /// A handle on the served tenant `tenant_id`, if there is one.
    pub fn tenant(&self, tenant_id: &str) -> Option<SimulatorHandle> {
        self.tenants().into_iter().find(|tenant| tenant.tenant_id() == tenant_id)
    }

    /// The `[defender]` section shared by every served tenant (partner model: one app, the
    /// token URL with `{tenant_id}` left for each `[[tenants]]` entry to fill).
    pub fn partner_defender_config(&self) -> String {
        format!(
            "[defender]\napi_base_url = \"{base}\"\ntoken_url = \"{base}/{{tenant_id}}/oauth2/v2.0/token\"\n\
             scope = \"{base}/.default\"\nclient_id = \"{client}\"\n",
            base = self.base_url(),
            client = self.sim.client_id,
        )
    }

    /// The API base URL, to configure as `defender.api_base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.sim.bound)
    }

    /// The token URL with the tenant in it, to configure as `defender.token_url`.
    pub fn token_url(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.base_url(), self.sim.tenant_id)
    }

    /// The `[defender]` section of a scan-agent-sync configuration that talks to this
    /// simulator; the client secret goes in `SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET`.
    pub fn defender_config(&self) -> String {
        format!(
            "[defender]\napi_base_url = \"{base}\"\ntoken_url = \"{token}\"\nscope = \"{base}/.default\"\n\
             tenant_id = \"{tenant}\"\nclient_id = \"{client}\"\n",
            base = self.base_url(),
            token = self.token_url(),
            tenant = self.sim.tenant_id,
            client = self.sim.client_id,
        )
    }

    /// IDs of the agents the service returns now, in list order.
    pub fn agent_ids(&self) -> Vec<String> {
        self.sim.fleet_at(Instant::now()).present().map(|agent| agent.id.clone()).collect()
    }

    /// IDs of every agent the simulator has held, vanished ones included, in list order: unlike
    /// [`SimulatorHandle::agent_ids`], they do not depend on how many periods have evolved.
    pub fn every_agent_id(&self) -> Vec<String> {
        self.sim.fleet_at(Instant::now()).all().map(|agent| agent.id.clone()).collect()
    }

    pub fn stats(&self) -> SimStats {
        let peaks = lock(&self.sim.limiter).peaks();
        lock(&self.sim.recorder).stats(peaks)
    }

    /// Every request so far (the latest 100,000), oldest first.
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        lock(&self.sim.recorder).log()
    }

    /// Every agent object served so far (the latest 100,000), oldest first.
    pub fn served_agents(&self) -> Vec<ServedAgent> {
        lock(&self.sim.recorder).served()
    }

    /// Sets an agent's `ScannerSoftwareVersion`; false when there is no such agent.
    pub fn upgrade(&self, id: &str, version: &str) -> bool {
        self.sim.fleet_at(Instant::now()).modify(id, |agent| agent.scanner_version = Some(version.to_owned()))
    }

    /// Sets an agent's `lastSeen`; false when there is no such agent. The next evolution period
    /// moves it again if the agent is live.
    pub fn set_last_seen(&self, id: &str, at: DateTime<Utc>) -> bool {
        self.sim.fleet_at(Instant::now()).modify(id, |agent| agent.last_seen = at)
    }

    /// Deletes an agent: 404 by ID, absent from the list. False when there is no such agent.
    pub fn delete(&self, id: &str) -> bool {
        self.sim.fleet_at(Instant::now()).modify(id, |agent| agent.present = false)
    }

    /// Brings a deleted agent back as a live one; false when there is no such agent.
    pub fn restore(&self, id: &str) -> bool {
        self.sim.fleet_at(Instant::now()).restore(id)
    }

    /// Adds a live agent with exactly this ID (any string), or restores it if it exists.
    pub fn add_agent(&self, id: &str) {
        self.sim.fleet_at(Instant::now()).add(id);
    }

    /// Replaces the fault shares for the requests that follow.
    pub fn set_faults(&self, faults: Faults) {
        lock(&self.sim.faults).faults = faults;
    }

    /// Replaces the latency added to the API responses that follow.
    pub fn set_latency(&self, latency: Duration) {
        *lock(&self.sim.latency) = latency;
    }

    /// Stops accepting, lets requests in flight finish, and waits until the server has stopped.
    /// Stopping any clone stops them all; a second call returns at once.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        let server = lock(&self.server).take();
        if let Some(server) = server {
            server
                .await
                .context("the simulator's server task panicked")?
                .context("the simulator's server failed")?;
        }
        Ok(())
    }
}
