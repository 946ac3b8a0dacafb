//! The state every request and the test handle share.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::auth::{Credentials, TokenStore};
use super::faults::FaultInjector;
use super::fleet::Fleet;
use super::limiter::RateLimiter;
use super::options::{Envelope, FieldCase, SimulatorOptions};
use super::recorder::Recorder;

/// One simulated tenant. Each part has its own lock, held only for synchronous bookkeeping,
/// never across an await.
#[derive(Debug)]
pub(super) struct Shared {
    pub bound: SocketAddr,
    pub tenant_id: String,
    pub client_id: String,
    pub page_size: usize,
    pub field_case: FieldCase,
    pub envelope: Envelope,
    fleet: Mutex<Fleet>,
    pub limiter: Mutex<RateLimiter>,
    pub tokens: Mutex<TokenStore>,
    pub faults: Mutex<FaultInjector>,
    pub latency: Mutex<Duration>,
    pub recorder: Mutex<Recorder>,
}

impl Shared {
    pub fn new(options: &SimulatorOptions, bound: SocketAddr) -> Self {
        let credentials = Credentials {
            tenant_id: options.tenant_id.clone(),
            client_id: options.client_id.clone(),
            client_secret: options.client_secret.clone(),
        };
        Self {
            bound,
            tenant_id: options.tenant_id.clone(),
            client_id: options.client_id.clone(),
            page_size: options.page_size.max(1),
            field_case: options.field_case,
            envelope: options.by_id_envelope,
            fleet: Mutex::new(Fleet::new(options)),
            limiter: Mutex::new(RateLimiter::new(&options.windows)),
            tokens: Mutex::new(TokenStore::new(credentials, options.token_lifetime)),
            // A seed of its own, so changing fault rates does not change the fleet.
            faults: Mutex::new(FaultInjector::new(options.faults(), options.seed ^ 0xFA17_FA17)),
            latency: Mutex::new(options.latency),
            recorder: Mutex::new(Recorder::default()),
        }
    }

    /// The fleet as of `now`: every read or change goes through here, so no one sees or edits
    /// a state that evolution periods already due would overwrite.
    pub fn fleet_at(&self, now: Instant) -> MutexGuard<'_, Fleet> {
        let mut fleet = lock(&self.fleet);
        fleet.catch_up(now);
        fleet
    }
}

/// Every tenant one simulator serves (`--tenants`), as Defender's partner model has them: one
/// host and app registration, and per tenant a token, a fleet and rate windows of its own.
#[derive(Debug)]
pub(super) struct Hosted {
    /// In `--tenants` order; never empty. The first also records requests that reach no
    /// tenant (unknown paths, unknown tokens), so a one-tenant simulator records everything.
    pub tenants: Vec<Arc<Shared>>,
}

impl Hosted {
    pub fn new(options: &SimulatorOptions, bound: SocketAddr) -> Self {
        let tenants =
            options.tenant_options().iter().map(|tenant| Arc::new(Shared::new(tenant, bound))).collect();
        Self { tenants }
    }

    /// The tenant with this ID; Entra compares tenant IDs without regard to case.
    pub fn by_tenant_id(&self, tenant_id: &str) -> Option<&Arc<Shared>> {
        self.tenants.iter().find(|tenant| tenant.tenant_id.eq_ignore_ascii_case(tenant_id))
    }

    /// The tenant whose token `authorization` (the header's value) bears, as the real service
    /// reads the token's `tid` claim; `None` for a token no tenant issued or one expired.
    pub fn by_token(&self, authorization: Option<&str>, now: Instant) -> Option<&Arc<Shared>> {
        self.tenants.iter().find(|tenant| lock(&tenant.tokens).authorizes(authorization, now))
    }

    /// The first tenant: the one a single-tenant simulator has.
    pub fn first(&self) -> &Arc<Shared> {
        &self.tenants[0]
    }
}

/// Locks `part`, shrugging off poisoning: the state stays consistent because no code panics
/// while holding a lock, and a panicking test must not take the server down with it.
pub(super) fn lock<T>(part: &Mutex<T>) -> MutexGuard<'_, T> {
    part.lock().unwrap_or_else(PoisonError::into_inner)
}
