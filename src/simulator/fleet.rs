//! The simulated tenant's scan agents and how they change over time.
//!
//! Evolution is a pure function of the seed and the number of periods elapsed, applied lazily
//! when a request looks at the fleet: two runs with one seed see the same changes, whatever
//! the timing of their requests.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::options::SimulatorOptions;

/// A share this small of each nullable field is null, so clients meet nulls without drowning in them.
const NULL_SHARE: f64 = 0.05;

/// Platforms to fill the `osPlatform` extra field with.
const PLATFORMS: [&str; 4] = ["Windows11", "Windows10", "WindowsServer2022", "Linux"];

/// Scanner versions an agent may start with; upgrades go on from there.
const SCANNER_VERSIONS: [&str; 3] = ["7.0.3", "7.1.1", "7.1.2"];

/// One scan agent as the service knows it.
#[derive(Debug, Clone)]
pub(super) struct Agent {
    pub id: String,
    pub machine_id: Option<String>,
    pub computer_dns_name: Option<String>,
    pub assigned_application_id: Option<String>,
    pub scanner_version: Option<String>,
    pub mde_client_version: Option<String>,
    pub last_seen: DateTime<Utc>,
    pub last_command_at: DateTime<Utc>,
    /// An extra field the docs do not list, so clients prove they tolerate one.
    pub os_platform: &'static str,
    /// Fractional-second digits this agent's timestamps are written with.
    pub fraction_digits: u8,
    /// Which spelling this agent uses when the field case is `mixed`.
    pub pascal_when_mixed: bool,
    /// Whether the service returns it at all: deleted agents answer 404 and leave the list.
    pub present: bool,
    fate: Fate,
}

/// What the passing periods do to an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Reports in every period and may upgrade.
    Live,
    /// Never reports in again, so its `lastSeen` stands still and it goes stale.
    Silent,
    /// Live until this period, then deleted.
    Vanishes { at_period: u64 },
}

/// All agents of the tenant, in the stable order the list endpoint pages through.
#[derive(Debug)]
pub(super) struct Fleet {
    agents: Vec<Agent>,
    index: HashMap<String, usize>,
    /// Random source for new agents, including those tests add later.
    births: StdRng,
    seed: u64,
    org_guid: String,
    fraction_digits: Option<u8>,
    upgrade_share: f64,
    evolve_every: Duration,
    started: Instant,
    started_wall: DateTime<Utc>,
    periods_applied: u64,
}

impl Fleet {
    /// Creates `options.agents` agents, as of now.
    pub fn new(options: &SimulatorOptions) -> Self {
        let mut births = StdRng::seed_from_u64(options.seed);
        let org_guid = guid(&mut births).to_lowercase();
        let mut fleet = Fleet {
            agents: Vec::with_capacity(options.agents),
            index: HashMap::with_capacity(options.agents),
            births,
            seed: options.seed,
            org_guid,
            fraction_digits: options.fraction_digits,
            upgrade_share: options.upgrade_share,
            evolve_every: options.evolve_every,
            started: Instant::now(),
            started_wall: Utc::now(),
            periods_applied: 0,
        };
        for _ in 0..options.agents {
            let machine_id = hex(&mut fleet.births, 40);
            let id = format!("{}_{machine_id}", fleet.org_guid);
            let roll: f64 = fleet.births.random();
            let fate = if roll < options.silent_share {
                Fate::Silent
            } else if roll < options.silent_share + options.deleted_share {
                Fate::Vanishes { at_period: fleet.births.random_range(1..=3) }
            } else {
                Fate::Live
            };
            fleet.insert(id, Some(machine_id), fate);
        }
        fleet
    }

    /// Applies every evolution period that has fully elapsed by `now`.
    pub fn catch_up(&mut self, now: Instant) {
        if self.evolve_every.is_zero() {
            return;
        }
        let elapsed = now.saturating_duration_since(self.started);
        let due = (elapsed.as_nanos() / self.evolve_every.as_nanos()) as u64;
        while self.periods_applied < due {
            self.periods_applied += 1;
            self.evolve(self.periods_applied);
        }
    }

    /// One period: live agents report in shortly before its end, some upgrade, doomed ones vanish.
    fn evolve(&mut self, period: u64) {
        let mut rng = StdRng::seed_from_u64(self.seed ^ period.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let period_end = self.started_wall + self.evolve_every * u32::try_from(period).unwrap_or(u32::MAX);
        // Reporting in the latter half of the period keeps every agent's lastSeen strictly increasing.
        let half_period_ns = (self.evolve_every.as_nanos() / 2).max(1) as u64;
        for agent in self.agents.iter_mut().filter(|a| a.present) {
            match agent.fate {
                Fate::Silent => continue,
                Fate::Vanishes { at_period } if period >= at_period => {
                    agent.present = false;
                    continue;
                }
                Fate::Live | Fate::Vanishes { .. } => {}
            }
            let seen = period_end - Duration::from_nanos(rng.random_range(0..half_period_ns));
            agent.last_seen = seen;
            agent.last_command_at = seen - Duration::from_nanos(rng.random_range(0..half_period_ns));
            if rng.random_bool(self.upgrade_share) {
                agent.scanner_version = agent.scanner_version.as_deref().map(next_minor);
                agent.mde_client_version = agent.mde_client_version.as_deref().map(next_build);
            }
        }
    }

    /// The agent the service would return for `id`, if it has one.
    pub fn get(&self, id: &str) -> Option<&Agent> {
        self.index.get(id).map(|&i| &self.agents[i]).filter(|a| a.present)
    }

    /// Every agent the service currently returns, in list order.
    pub fn present(&self) -> impl Iterator<Item = &Agent> {
        self.agents.iter().filter(|a| a.present)
    }

    /// Every agent ever held, vanished ones included, in list order.
    pub fn all(&self) -> impl Iterator<Item = &Agent> {
        self.agents.iter()
    }

    /// Applies `change` to the agent (deleted or not); false when there is no such agent.
    pub fn modify(&mut self, id: &str, change: impl FnOnce(&mut Agent)) -> bool {
        match self.index.get(id) {
            Some(&i) => {
                change(&mut self.agents[i]);
                true
            }
            None => false,
        }
    }

    /// Adds a live agent with this exact ID (any string, so tests can use awkward ones), or
    /// brings it back if it exists. Added agents never go silent or vanish on their own.
    pub fn add(&mut self, id: &str) {
        if !self.restore(id) {
            let machine_id = hex(&mut self.births, 40);
            self.insert(id.to_owned(), Some(machine_id), Fate::Live);
        }
    }

    /// Brings a deleted agent back for good; false when there is no such agent.
    pub fn restore(&mut self, id: &str) -> bool {
        self.modify(id, |agent| {
            agent.present = true;
            agent.fate = Fate::Live;
        })
    }

    /// Creates an agent with random descriptive fields, seen within the last ten minutes.
    fn insert(&mut self, id: String, machine_id: Option<String>, fate: Fate) {
        let rng = &mut self.births;
        let serial = self.agents.len();
        let last_seen = self.started_wall - Duration::from_nanos(rng.random_range(0..600_000_000_000));
        let agent = Agent {
            machine_id: machine_id.filter(|_| !rng.random_bool(NULL_SHARE)),
            computer_dns_name: nullable(rng, |_| format!("scanner-{serial:04}.corp.contoso.test")),
            assigned_application_id: nullable(rng, guid),
            scanner_version: nullable(rng, |rng| {
                SCANNER_VERSIONS[rng.random_range(0..SCANNER_VERSIONS.len())].to_owned()
            }),
            mde_client_version: nullable(rng, |rng| {
                format!("10.8295.22621.{}", rng.random_range(1000..1300))
            }),
            last_seen,
            last_command_at: last_seen - Duration::from_nanos(rng.random_range(0..60_000_000_000)),
            os_platform: PLATFORMS[rng.random_range(0..PLATFORMS.len())],
            fraction_digits: self.fraction_digits.unwrap_or_else(|| rng.random_range(0..=7)),
            pascal_when_mixed: rng.random(),
            present: true,
            fate,
            id,
        };
        self.index.insert(agent.id.clone(), self.agents.len());
        self.agents.push(agent);
    }
}

/// A value drawn by `value`, or null for a small share of agents.
fn nullable(rng: &mut StdRng, value: impl FnOnce(&mut StdRng) -> String) -> Option<String> {
    if rng.random_bool(NULL_SHARE) { None } else { Some(value(rng)) }
}

/// `len` lowercase hex digits.
pub(super) fn hex(rng: &mut impl Rng, len: usize) -> String {
    (0..len).map(|_| char::from_digit(rng.random_range(0..16), 16).expect("below 16")).collect()
}

/// An uppercase GUID, as the docs print `AssignedApplicationId`.
pub(super) fn guid(rng: &mut impl Rng) -> String {
    let h = hex(rng, 32).to_uppercase();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// `7.1.1` -> `7.2.0`; a version that is not three numbers gets `.1` appended, still a change.
fn next_minor(version: &str) -> String {
    let parts: Vec<u64> = version.split('.').filter_map(|p| p.parse().ok()).collect();
    match parts[..] {
        [major, minor, _] if version.split('.').count() == 3 => format!("{major}.{}.0", minor + 1),
        _ => format!("{version}.1"),
    }
}

/// `10.8295.22621.1195` -> `10.8295.22621.1196`; anything else gets `.1` appended.
fn next_build(version: &str) -> String {
    match version.rsplit_once('.').and_then(|(head, build)| Some((head, build.parse::<u64>().ok()?))) {
        Some((head, build)) => format!("{head}.{}", build + 1),
        None => format!("{version}.1"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(agents: usize) -> SimulatorOptions {
        SimulatorOptions { agents, evolve_every: Duration::from_secs(60), ..SimulatorOptions::default() }
    }

    #[test]
    fn versions_bump_visibly() {
        assert_eq!(next_minor("7.1.1"), "7.2.0");
        assert_eq!(next_minor("7.1"), "7.1.1");
        assert_eq!(next_build("10.8295.22621.1195"), "10.8295.22621.1196");
        assert_eq!(next_build("beta"), "beta.1");
    }

    #[test]
    fn ids_have_the_documented_shape() {
        let fleet = Fleet::new(&options(3));
        for agent in fleet.present() {
            let (org, machine) = agent.id.split_once('_').unwrap();
            assert_eq!(org.len(), 36);
            assert_eq!(machine.len(), 40);
            assert!(machine.chars().all(|c| c.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn one_seed_one_history() {
        let run = || {
            let mut fleet = Fleet::new(&SimulatorOptions { upgrade_share: 0.5, ..options(20) });
            fleet.catch_up(fleet.started + Duration::from_secs(60 * 5));
            fleet.present().map(|a| (a.id.clone(), a.scanner_version.clone())).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn silent_agents_stand_still_and_live_ones_move() {
        let mut fleet =
            Fleet::new(&SimulatorOptions { silent_share: 0.5, deleted_share: 0.0, ..options(20) });
        let before: Vec<_> = fleet.agents.iter().map(|a| a.last_seen).collect();
        fleet.catch_up(fleet.started + Duration::from_secs(60));
        for (agent, before) in fleet.agents.iter().zip(before) {
            assert_eq!(agent.fate == Fate::Silent, agent.last_seen == before, "{agent:?}");
        }
    }
}
