//! The simulator's knobs: the flags of `scan-agent-sync simulate`, also built directly by tests.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use super::faults::Faults;
use crate::rate_window::RateWindow;

/// How the three fields the docs print in PascalCase are spelled in responses.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldCase {
    /// `assignedApplicationId` etc., as the service metadata says.
    Camel,
    /// `AssignedApplicationId`, `ScannerSoftwareVersion`, `LastCommandExecutionTimestamp`, as the docs print them.
    Pascal,
    /// Each agent picks one of the two, so one response can hold both spellings.
    Mixed,
}

/// How the by-ID endpoint wraps its single agent.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    /// A bare `$entity` object, like other endpoints of the same API family.
    Bare,
    /// `{"@odata.context": ".../$entity", "value": [agent]}`, like the by-ID docs example.
    Wrapped,
}

/// Everything that makes one simulated tenant behave like another.
///
/// The defaults are those of the real service where the docs state them (rate windows, token
/// lifetime), so `scan-agent-sync simulate` with no flags is a well-behaved Defender.
#[derive(clap::Args, Debug, Clone)]
pub struct SimulatorOptions {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Number of scan agents in the simulated tenant.
    #[arg(long, default_value_t = 50)]
    pub agents: usize,

    /// Tenant ID expected in the token URL path.
    #[arg(long, default_value = "sim-tenant")]
    pub tenant_id: String,

    /// Number of tenants served on this one host, as in Defender's partner model: one app
    /// registration (the same client ID and secret), a token per tenant from
    /// `/{tenant}/oauth2/v2.0/token`, and per tenant its own fleet of `--agents` agents (IDs
    /// distinct per tenant) and its own rate windows. The first tenant is `--tenant-id`, the
    /// others `--tenant-id` with `-2`, `-3`... appended.
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub tenants: usize,

    /// Client (application) ID the token endpoint accepts.
    #[arg(long, default_value = "sim-client")]
    pub client_id: String,

    /// Client secret the token endpoint accepts.
    #[arg(long, default_value = "sim-secret")]
    pub client_secret: String,

    /// How long an issued access token stays valid (Entra ID says 3599s).
    #[arg(long, default_value = "3599s", value_parser = humantime::parse_duration)]
    pub token_lifetime: Duration,

    /// Agents per page of the list endpoint; further pages are linked by `@odata.nextLink`.
    #[arg(long, default_value_t = 100, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub page_size: usize,

    /// A rate window enforced over all API calls, as CALLS/DURATION; repeat for several.
    /// The default is Defender's documented 100/1m and 1500/1h.
    #[arg(long = "window", value_parser = RateWindow::parse_compact, default_values = ["100/1m", "1500/1h"])]
    pub windows: Vec<RateWindow>,

    /// Spelling of the fields the docs print in PascalCase.
    #[arg(long, value_enum, default_value = "camel")]
    pub field_case: FieldCase,

    /// Shape of by-ID responses: a bare object or a one-element `value` array.
    #[arg(long, value_enum, default_value = "bare")]
    pub by_id_envelope: Envelope,

    /// Fractional-second digits (0 to 7) in timestamps; unset, each agent gets its own.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=7))]
    pub fraction_digits: Option<u8>,

    /// Delay added to every API response, to exercise timeouts and in-flight limits.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub latency: Duration,

    /// Share (0 to 1) of API calls answered 500 or 503 with the documented error body.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    pub error_rate: f64,

    /// Share (0 to 1) of API calls answered 200 with truncated JSON.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    pub malformed_rate: f64,

    /// Share (0 to 1) of API calls whose connection is dropped without any response.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    pub reset_rate: f64,

    /// Share (0 to 1) of API calls answered 429 with `Retry-After: 1` whatever the rate windows
    /// say, as when another client of the same app registration spends the budget.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    pub throttle_rate: f64,

    /// Share (0 to 1) of API calls answered 200 with a JSON page padded to tens of megabytes.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    pub oversized_rate: f64,

    /// Share (0 to 1) of API calls answered 200 with an HTML page, as a proxy or captive portal does.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    pub wrong_content_type_rate: f64,

    /// Share (0 to 1) of token requests answered 503.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    pub token_error_rate: f64,

    /// Share (0 to 1) of token requests refused 401 `invalid_client`, as for an expired secret.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    pub token_refusal_rate: f64,

    /// Period of the fleet's life: each period live agents report in and some upgrade; 0 freezes the fleet.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub evolve_every: Duration,

    /// Share (0 to 1) of live agents that upgrade their scanner and MDE client each period.
    #[arg(long, default_value_t = 0.1, value_parser = parse_share)]
    pub upgrade_share: f64,

    /// Share (0 to 1) of agents that never report in again, so they go stale.
    #[arg(long, default_value_t = 0.1, value_parser = parse_share)]
    pub silent_share: f64,

    /// Share (0 to 1) of agents that disappear (404, absent from the list) within a few periods.
    #[arg(long, default_value_t = 0.05, value_parser = parse_share)]
    pub deleted_share: f64,

    /// Seed of every random choice, so two runs with one seed serve the same fleet.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl Default for SimulatorOptions {
    /// The same values as the command line's defaults: clap is their single source.
    fn default() -> Self {
        Flags::try_parse_from(["simulate"]).expect("the simulator's flag defaults parse").options
    }
}

impl SimulatorOptions {
    /// `agents` agents that never change unless a test changes them (no evolution, nobody
    /// silent or deleted), on a free loopback port: what tests and benchmarks start from.
    pub fn frozen(agents: usize) -> Self {
        SimulatorOptions {
            listen: "127.0.0.1:0".parse().expect("a literal address"),
            agents,
            evolve_every: Duration::ZERO,
            silent_share: 0.0,
            deleted_share: 0.0,
            ..SimulatorOptions::default()
        }
    }

    /// Each served tenant's options (see `tenants`): the first tenant is these options
    /// unchanged, so a one-tenant simulator is what it always was; the others get their own
    /// tenant ID and seed, hence their own agent IDs.
    pub fn tenant_options(&self) -> Vec<SimulatorOptions> {
        (0..self.tenants.max(1))
            .map(|index| match index {
                0 => self.clone(),
                _ => SimulatorOptions {
                    tenant_id: format!("{}-{}", self.tenant_id, index + 1),
                    seed: self.seed.wrapping_add((index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                    ..self.clone()
                },
            })
            .collect()
    }

    /// The fault shares the simulator starts with; [`super::SimulatorHandle::set_faults`]
    /// replaces them while it runs.
    pub fn faults(&self) -> Faults {
        Faults {
            error_rate: self.error_rate,
            malformed_rate: self.malformed_rate,
            reset_rate: self.reset_rate,
            throttle_rate: self.throttle_rate,
            oversized_rate: self.oversized_rate,
            wrong_content_type_rate: self.wrong_content_type_rate,
            token_error_rate: self.token_error_rate,
            token_refusal_rate: self.token_refusal_rate,
        }
    }
}

/// The flag group as a command of its own, so it can be parsed without the real CLI.
#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    options: SimulatorOptions,
}

/// Parses a probability, refusing values a share cannot take.
fn parse_share(text: &str) -> Result<f64, String> {
    let share: f64 = text.trim().parse().map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=1.0).contains(&share) { Ok(share) } else { Err(format!("{text:?} is not between 0 and 1")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_defenders() {
        let options = SimulatorOptions::default();
        assert_eq!(options.windows, RateWindow::defender_defaults());
        assert_eq!(options.token_lifetime, Duration::from_secs(3599));
        assert_eq!(options.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(options.fraction_digits, None);
    }

    #[test]
    fn flags_parse_and_repeat() {
        use clap::CommandFactory;
        Flags::command().debug_assert();
        let args = ["simulate", "--window", "5/1s", "--window", "10/1m", "--fraction-digits", "3"];
        let options =
            Flags::try_parse_from(args.into_iter().chain(["--field-case", "pascal"])).unwrap().options;
        assert_eq!(options.windows.len(), 2, "given windows replace the defaults");
        assert_eq!(options.fraction_digits, Some(3));
        assert_eq!(options.field_case, FieldCase::Pascal);
        assert!(Flags::try_parse_from(["simulate", "--fraction-digits", "8"]).is_err());
        assert!(Flags::try_parse_from(["simulate", "--page-size", "0"]).is_err());
    }

    #[test]
    fn each_tenant_gets_its_own_id_and_seed_and_the_first_is_unchanged() {
        let options = Flags::try_parse_from(["simulate", "--tenants", "3"]).unwrap().options;
        let tenants = options.tenant_options();
        let ids: Vec<&str> = tenants.iter().map(|tenant| tenant.tenant_id.as_str()).collect();
        assert_eq!(ids, ["sim-tenant", "sim-tenant-2", "sim-tenant-3"]);
        assert_eq!(tenants[0].seed, options.seed);
        assert!(tenants[1].seed != tenants[0].seed && tenants[2].seed != tenants[1].seed);
        assert_eq!(SimulatorOptions::default().tenant_options().len(), 1);
        assert!(Flags::try_parse_from(["simulate", "--tenants", "0"]).is_err());
    }

    #[test]
    fn fault_flags_become_the_starting_faults() {
        let args =
            ["simulate", "--throttle-rate", "0.5", "--token-refusal-rate", "1", "--oversized-rate", "0.1"];
        let faults = Flags::try_parse_from(args).unwrap().options.faults();
        let expected =
            Faults { throttle_rate: 0.5, token_refusal_rate: 1.0, oversized_rate: 0.1, ..Faults::default() };
        assert_eq!(faults, expected);
        assert_eq!(SimulatorOptions::default().faults(), Faults::default());
    }

    #[test]
    fn shares_outside_zero_to_one_are_refused() {
        assert_eq!(parse_share("0.25"), Ok(0.25));
        assert!(parse_share("1.5").is_err());
        assert!(parse_share("-0.1").is_err());
        assert!(parse_share("lots").is_err());
    }
}
