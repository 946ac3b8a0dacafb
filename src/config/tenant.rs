//! One tenant's settings: everything a sync cycle of that tenant needs to reach its API,
//! stay within its budget and choose its agents. Each tenant gets its own syncer, budget
//! and client from these, so tenants stay independent of each other.
//!
//! `[[tenants]]` entries (PRODUCT.md, "Tenants") start from the shared sections: every key
//! an entry does not write takes the value of `[defender]` or `[rate_limit]` as written, and
//! `track_all` that of `[agents]`. An entry's cloud still picks its default hosts and scope
//! unless `[defender]` names them explicitly.
//!
//! Next to `[[tenants]]`, `defender.tenant_id`, `agents.ids` and `agents.ids_file` are
//! errors rather than defaults: a tenant ID or an agent ID belongs to exactly one tenant, so
//! inheriting one would configure it twice. `agents.track_all` stays a default, because
//! tracking every agent of each tenant is a sensible fleet-wide choice.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::agents::{RawAgents, placed_problem};
use super::defender::{DefenderOverrides, RawDefender};
use super::{
    AgentsSettings, Cloud, ConfigProblem, DefenderSettings, FetchMode, RateLimitSettings, Section, de,
};
use crate::agent_id::AgentId;
use crate::rate_window::RateWindow;
use crate::tenant_name::{MAX_TENANT_NAME_LEN, TenantName};

/// One tenant, with the section defaults already applied.
#[derive(Debug, Clone)]
pub struct TenantSettings {
    /// Names the tenant's rows, metrics and alerts.
    pub name: TenantName,
    /// Its Defender connection: cloud, hosts, app registration, secret, fetch mode.
    pub defender: DefenderSettings,
    /// Its API budget: the limits are per app registration and tenant.
    pub rate_limit: RateLimitSettings,
    /// Which of its agents to track.
    pub agents: AgentsSettings,
}

impl TenantSettings {
    /// The one tenant of a configuration without `[[tenants]]`: the `[defender]`,
    /// `[rate_limit]` and `[agents]` sections as written, named [`super::DEFAULT_TENANT`].
    pub(super) fn single(
        defender: &DefenderSettings,
        rate_limit: &RateLimitSettings,
        agents: &AgentsSettings,
    ) -> TenantSettings {
        TenantSettings {
            name: TenantName::default(),
            defender: defender.clone(),
            rate_limit: rate_limit.clone(),
            agents: agents.clone(),
        }
    }

    /// Where this tenant's keys are written, for messages: its `[[tenants]]` entry, or the
    /// shared sections for the tenant of a configuration without `[[tenants]]`.
    pub fn configured_in(&self) -> &'static str {
        if self.defender.own_secret_ways().is_some() { "its [[tenants]] entry" } else { "[agents]" }
    }
}

/// One `[[tenants]]` entry as written; `None` keys take the shared sections' values.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTenant {
    name: String,
    tenant_id: String,
    #[serde(deserialize_with = "de::list")]
    ids: Vec<String>,
    #[serde(deserialize_with = "de::non_empty")]
    ids_file: Option<PathBuf>,
    track_all: Option<bool>,
    #[serde(deserialize_with = "de::non_empty")]
    client_id: Option<String>,
    #[serde(deserialize_with = "de::non_empty")]
    client_secret_file: Option<PathBuf>,
    #[serde(deserialize_with = "de::some_variant")]
    cloud: Option<Cloud>,
    api_base_url: Option<String>,
    token_url: Option<String>,
    scope: Option<String>,
    #[serde(deserialize_with = "de::some_variant")]
    fetch_mode: Option<FetchMode>,
    #[serde(deserialize_with = "de::some_rate_windows")]
    windows: Option<Vec<RateWindow>>,
    max_in_flight: Option<usize>,
}

impl RawTenant {
    /// Whether the entry writes the Defender key `field` itself.
    fn overrides(&self, field: &str) -> bool {
        match field {
            "tenant_id" => true,
            "client_id" => self.client_id.is_some(),
            "cloud" => self.cloud.is_some(),
            "api_base_url" => self.api_base_url.is_some(),
            "token_url" => self.token_url.is_some(),
            "scope" => self.scope.is_some(),
            "fetch_mode" => self.fetch_mode.is_some(),
            _ => false,
        }
    }
}

/// What `[[tenants]]` entries start from: the shared sections, finished, and `[defender]`
/// as written (its URLs get their cloud defaults per tenant).
pub(super) struct Shared<'a> {
    pub(super) defender_raw: &'a RawDefender,
    pub(super) defender: &'a DefenderSettings,
    pub(super) rate_limit: &'a RateLimitSettings,
    pub(super) agents: &'a AgentsSettings,
}

/// The tenants of the configuration: the `[[tenants]]` entries, or without any the one
/// tenant made of the shared sections. Adds every problem, conflicts between entries
/// naming both places, to `problems`.
pub(super) fn tenants(
    entries: Vec<Section<RawTenant>>,
    shared: &Shared<'_>,
    env: &HashMap<String, String>,
    problems: &mut Vec<ConfigProblem>,
) -> Vec<TenantSettings> {
    if entries.is_empty() {
        return vec![TenantSettings::single(shared.defender, shared.rate_limit, shared.agents)];
    }
    let all = match entries.len() {
        1 => "tenants[0]".to_owned(),
        len => format!("tenants[0] to tenants[{}]", len - 1),
    };
    if shared.defender_raw.has_tenant_id() {
        problems.push(ConfigProblem::new(
            "defender.tenant_id",
            format!("is set next to [[tenants]] ({all}), where every tenant names its own tenant_id"),
            "move the ID into the tenant_id of its [[tenants]] entry and remove defender.tenant_id \
             (or remove [[tenants]] to keep the single tenant `default`)",
        ));
    }
    if shared.agents.selects_ids() {
        let key = if shared.agents.inline_ids().is_empty() { "agents.ids_file" } else { "agents.ids" };
        problems.push(ConfigProblem::new(
            key,
            format!("selects agents next to [[tenants]] ({all}), where every agent belongs to one tenant"),
            "move the IDs into the ids or ids_file of their [[tenants]] entry; next to [[tenants]], \
             [agents] may only set track_all, the default of entries that do not set it",
        ));
    }

    let mut tenants = Vec::with_capacity(entries.len());
    let mut names: HashMap<TenantName, usize> = HashMap::new();
    let mut apps: HashMap<(String, String), usize> = HashMap::new();
    let mut owners: HashMap<AgentId, (usize, String)> = HashMap::new();
    for (index, entry) in entries.into_iter().enumerate() {
        let section = format!("tenants[{index}]");
        let raw = match entry.0 {
            Ok(raw) => raw,
            Err(error) => {
                problems.push(ConfigProblem::from_deserialize(Some(&section), error));
                continue;
            }
        };
        let Some(tenant) = tenant(index, raw, shared, env, problems) else { continue };

        if let Some(first) = names.insert(tenant.name.clone(), index) {
            problems.push(ConfigProblem::new(
                &format!("{section}.name"),
                format!("tenant name {:?} is already used by tenants[{first}].name", &*tenant.name),
                "give every [[tenants]] entry its own name",
            ));
        }
        let app = (tenant.defender.tenant_id.to_ascii_lowercase(), tenant.defender.client_id.clone());
        if let Some(first) = apps.insert(app, index) {
            problems.push(ConfigProblem::new(
                &format!("{section}.tenant_id"),
                format!(
                    "tenant_id {:?} with client_id {:?} is already configured at tenants[{first}].tenant_id: \
                     the two entries would share one token and one API budget",
                    tenant.defender.tenant_id, tenant.defender.client_id
                ),
                "remove one of the two entries (merge their agent selections), or give one the client_id \
                 of the other app registration it uses",
            ));
        }
        // Problems reading the file were reported when the selection was finished.
        for (id, place) in tenant.agents.placed_ids().unwrap_or_default() {
            match owners.get(&id) {
                Some((owner, first)) if *owner != index => problems.push(placed_problem(
                    &section,
                    place,
                    format!("agent ID {id} is also configured for tenants[{owner}] at {first}"),
                    "configure every agent ID for one tenant only; an agent belongs to the tenant whose \
                     org GUID its ID starts with",
                )),
                Some(_) => {}
                None => {
                    owners.insert(id, (index, place));
                }
            }
        }
        tenants.push(tenant);
    }
    tenants
}

/// The entry `raw` at `tenants[index]` with the shared sections applied, or `None` when its
/// name is unusable (then nothing of it could be named in rows, metrics and logs).
fn tenant(
    index: usize,
    raw: RawTenant,
    shared: &Shared<'_>,
    env: &HashMap<String, String>,
    problems: &mut Vec<ConfigProblem>,
) -> Option<TenantSettings> {
    let section = format!("tenants[{index}]");
    let name = match TenantName::parse(raw.name.trim()) {
        Ok(name) => Some(name),
        Err(problem) => {
            let problem = if raw.name.is_empty() { "is required".to_owned() } else { problem };
            problems.push(ConfigProblem::new(
                &format!("{section}.name"),
                problem,
                format!(
                    "name the tenant with 1 to {MAX_TENANT_NAME_LEN} of a-z, 0-9, _ and -, e.g. \"contoso\"; \
                     it is shown in tables, metrics, alerts and logs"
                ),
            ));
            None
        }
    };
    if raw.tenant_id.trim().is_empty() {
        problems.push(ConfigProblem::new(
            &format!("{section}.tenant_id"),
            "is required",
            "set it to the customer's Directory (tenant) ID, from the Entra admin center's overview page",
        ));
    }

    let key = |field: &str| {
        if raw.overrides(field) { format!("{section}.{field}") } else { format!("defender.{field}") }
    };
    let overrides = DefenderOverrides {
        client_id: raw.client_id.clone(),
        cloud: raw.cloud,
        api_base_url: raw.api_base_url.clone(),
        token_url: raw.token_url.clone(),
        scope: raw.scope.clone(),
        fetch_mode: raw.fetch_mode,
    };
    let mut own_problems = Vec::new();
    let defender =
        shared.defender_raw.for_tenant(&raw.tenant_id, overrides).finish_keyed(&key, env, &mut own_problems);
    // A problem with an inherited value is the shared section's, already reported once.
    problems.extend(
        own_problems
            .into_iter()
            .filter(|problem| !problem.key.as_deref().is_some_and(|key| key.starts_with("defender."))),
    );

    let rate_limit = RateLimitSettings {
        windows: raw.windows.clone().unwrap_or_else(|| shared.rate_limit.windows.clone()),
        max_in_flight: raw.max_in_flight.unwrap_or(shared.rate_limit.max_in_flight),
    };
    // Only the entry's own values are checked here: inherited ones were checked as `rate_limit`.
    if raw.windows.is_some() || raw.max_in_flight.is_some() {
        let own = RateLimitSettings {
            windows: raw.windows.unwrap_or_else(RateWindow::defender_defaults),
            max_in_flight: raw.max_in_flight.unwrap_or(1),
        };
        own.check_at(&section, problems);
    }
    let track_all = raw.track_all.unwrap_or(shared.agents.track_all);
    let agents = RawAgents::new(raw.ids, raw.ids_file, track_all).finish_at(&section, problems);

    let name = name?;
    let defender = defender.with_own_secret(section, raw.client_secret_file, &name);
    Some(TenantSettings { name, defender, rate_limit, agents })
}

/// Variables that override a key of one `[[tenants]]` entry, by the entry's name rather than
/// its index (which shifts when entries are added): `SCAN_AGENT_SYNC__TENANTS__<NAME>__<KEY>`,
/// e.g. `SCAN_AGENT_SYNC__TENANTS__CONTOSO__CLIENT_SECRET_FILE`.
pub(super) const TENANT_VAR_PREFIX: &str = "SCAN_AGENT_SYNC__TENANTS__";

/// An entry's name alone, to find the entry a variable addresses.
#[derive(Deserialize)]
struct NameOnly {
    #[serde(default)]
    name: String,
}

/// `merged` with the `SCAN_AGENT_SYNC__TENANTS__<NAME>__<KEY>` variables of `env` applied,
/// and which key each of them set (`tenants[2].client_id`), so problems with those values
/// name the variable. A variable naming no configured tenant is an error: its value would
/// otherwise be silently ignored.
pub(super) fn apply_env_overrides(
    merged: ::config::Config,
    env: &HashMap<String, String>,
) -> Result<(::config::Config, Vec<(String, String)>), super::ConfigError> {
    let mut vars: Vec<(&String, &String)> =
        env.iter().filter(|(var, _)| var.starts_with(TENANT_VAR_PREFIX)).collect();
    if vars.is_empty() {
        return Ok((merged, Vec::new()));
    }
    vars.sort();
    let names: Vec<String> = merged
        .get::<Vec<NameOnly>>("tenants")
        .map(|entries| entries.into_iter().map(|entry| entry.name.trim().to_owned()).collect())
        .unwrap_or_default();
    let mut builder = ::config::Config::builder().add_source(merged);
    let mut sources = Vec::new();
    let mut problems = Vec::new();
    for (var, value) in vars {
        let rest = &var[TENANT_VAR_PREFIX.len()..];
        let found = rest.rsplit_once("__").and_then(|(name, key)| {
            let index = names.iter().position(|configured| configured.eq_ignore_ascii_case(name))?;
            Some((index, key.to_ascii_lowercase()))
        });
        let Some((index, key)) = found else {
            let configured = if names.is_empty() { "none".to_owned() } else { names.join(", ") };
            problems.push(
                ConfigProblem::unkeyed(
                    format!("the variable names no configured [[tenants]] entry (configured: {configured})"),
                    "write SCAN_AGENT_SYNC__TENANTS__<NAME>__<KEY> with the name of a [[tenants]] entry, e.g. \
                     SCAN_AGENT_SYNC__TENANTS__CONTOSO__CLIENT_ID, or unset it",
                )
                .at(var),
            );
            continue;
        };
        let path = format!("tenants[{index}].{key}");
        builder = builder.set_override(path.as_str(), value.as_str()).map_err(|error| {
            super::ConfigError::from(ConfigProblem::unkeyed(error.to_string(), "unset the variable").at(var))
        })?;
        sources.push((path, var.clone()));
    }
    if !problems.is_empty() {
        return Err(super::ConfigError::new(problems));
    }
    let merged = builder.build().map_err(|error| {
        super::ConfigError::from(ConfigProblem::unkeyed(
            error.to_string(),
            "unset the variables of [[tenants]] entries",
        ))
    })?;
    Ok((merged, sources))
}
