//! The command line (PRODUCT.md, "Command line"): flags, subcommands and exit codes.
//!
//! One function per command. Each loads what it needs through [`Globals::configure`], so an
//! invalid configuration stops every command the same way, before it starts, with exit
//! code 78.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::agent_id::AgentId;
use crate::config::{ConfigError, LogFormat, LogSettings, Settings, TenantSettings};
use crate::report;
use crate::shutdown::shutdown_signal;
use crate::simulator::{self, SimulatorOptions};
use crate::store::{Store, StoreError};
use crate::sync::{CycleOptions, Syncer, Targets};
use crate::telemetry;

/// EX_CONFIG from sysexits.h: systemd and supervisors read it as "fix the configuration,
/// restarting will not help".
const EX_CONFIG: u8 = 78;

/// Keeps a PostgreSQL copy of Microsoft Defender authenticated-scan agents, within the
/// API's rate budget.
#[derive(Debug, Parser)]
#[command(name = "scan-agent-sync", version, propagate_version = true)]
pub struct Cli {
    /// Flags every command takes.
    #[command(flatten)]
    pub globals: Globals,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes, before or after its name.
#[derive(Debug, Args)]
pub struct Globals {
    /// The configuration file.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "SCAN_AGENT_SYNC_CONFIG",
        hide_env_values = true,
        default_value = "/etc/scan-agent-sync/config.toml"
    )]
    pub config: PathBuf,

    /// Log line format; overrides `log.format`.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,

    /// Log more: each -v moves `log.level` one step louder (info, debug, trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Log less: each -q moves `log.level` one step quieter (warn, error, off).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: migrations, scheduled sync cycles, alerting and HTTP endpoints until
    /// SIGTERM or SIGINT.
    Run,
    /// Run one sync cycle now, then exit (0 all fetched, 2 partial, 1 nothing synced).
    Sync(SyncArgs),
    /// Apply pending database migrations and exit.
    Migrate,
    /// Validate the configuration and print it with secrets hidden (exit 78 when invalid).
    CheckConfig(CheckConfigArgs),
    /// List stale and missing agents.
    Stale(StaleArgs),
    /// Show an agent's version and lastSeen history.
    History(HistoryArgs),
    /// Check the tables' invariants (history and rate-window ledger): one line each, exit 1
    /// when any is violated.
    Check(CheckArgs),
    /// Run the retention job once: create partitions ahead and delete what `[retention]` no
    /// longer keeps (`--dry-run`: say what, change nothing).
    Prune(PruneArgs),
    /// Run the bundled Defender API simulator until SIGINT or SIGTERM.
    Simulate(Box<SimulatorOptions>),
    /// The whole product in one command, against the simulator: no Defender tenant needed.
    Demo,
}

/// Flags of `sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Fetch and print what would change, field by field; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Mark agents missing even when more than stale.mass_missing_guard of the fleet would
    /// vanish at once: for a deliberate decommission.
    #[arg(long)]
    pub accept_mass_missing: bool,
    /// Sync only this tenant (repeatable; default: every configured tenant).
    #[arg(long = "tenant", value_name = "NAME")]
    pub tenants: Vec<String>,
}

/// Flags of `prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Count what would be deleted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Flags of `check-config`.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// Also connect to the database.
    #[arg(long)]
    pub connect: bool,
}

/// Flags of `stale`.
#[derive(Debug, Args)]
pub struct StaleArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only this tenant's agents (repeatable; default: every tenant).
    #[arg(long = "tenant", value_name = "NAME")]
    pub tenants: Vec<String>,
}

/// Flags of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print JSON instead of one line per invariant.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The agent whose history to show.
    #[arg(value_name = "AGENT_ID", value_parser = AgentId::parse)]
    pub agent_id: AgentId,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl Globals {
    /// Loads and validates the configuration, then starts logging as it says (with the
    /// command-line overrides).
    pub fn configure(&self) -> Result<Settings, ConfigError> {
        let settings = Settings::load(&self.config)?;
        self.init_telemetry(&settings.log)?;
        for warning in &settings.warnings {
            tracing::warn!("{warning}");
        }
        Ok(settings)
    }

    /// Starts logging with the defaults, for commands that need no configuration file.
    pub fn configure_without_file(&self) -> Result<(), ConfigError> {
        self.init_telemetry(&LogSettings::default())
    }

    /// Starts logging as `log` says, with `--log-format`, `-v` and `-q` applied on top.
    fn init_telemetry(&self, log: &LogSettings) -> Result<(), ConfigError> {
        let log = LogSettings { format: self.log_format.unwrap_or(log.format), level: log.level.clone() };
        // Clamped first, so the cast cannot wrap; six steps already span every level.
        let verbosity = (i16::from(self.verbose) - i16::from(self.quiet)).clamp(-6, 6) as i8;
        telemetry::init(&log, verbosity)
    }
}

/// Why a command failed, which decides the exit code.
#[derive(Debug)]
pub enum Failure {
    /// The configuration is invalid: exit 78.
    Config(ConfigError),
    /// Anything else: exit 1.
    Other(anyhow::Error),
}

impl From<ConfigError> for Failure {
    fn from(error: ConfigError) -> Self {
        Failure::Config(error)
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        Failure::Other(error.into())
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::Other(error)
    }
}

/// Runs the command and turns its outcome into the exit code, printing any error to stderr.
pub async fn execute(cli: Cli) -> ExitCode {
    let Cli { globals, command } = cli;
    let outcome = match command {
        Command::Run => run(&globals).await,
        Command::Sync(args) => sync(&globals, args).await,
        Command::Migrate => migrate(&globals).await,
        Command::CheckConfig(args) => check_config(&globals, args).await,
        Command::Stale(args) => stale(&globals, args).await,
        Command::History(args) => history(&globals, args).await,
        Command::Check(args) => check(&globals, args).await,
        Command::Prune(args) => prune(&globals, args).await,
        Command::Simulate(options) => simulate(&globals, *options).await,
        Command::Demo => demo(&globals).await,
    };
    match outcome {
        Ok(code) => code,
        Err(Failure::Config(error)) => {
            eprintln!("{error}");
            ExitCode::from(EX_CONFIG)
        }
        Err(Failure::Other(error)) => {
            eprintln!("error: {}", describe(&error));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, skipping causes the message already quotes (our
/// error types often include their source's text).
fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// `run`: the daemon, until SIGTERM or SIGINT.
async fn run(globals: &Globals) -> Result<ExitCode, Failure> {
    let settings = globals.configure()?;
    require_api_credentials(settings.tenants())?;
    crate::daemon::run(settings, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// `sync [--dry-run]`: one cycle now per tenant, the tenants' cycles side by side, each
/// bounded and paced like a scheduled one (no request starts after the next scheduled tick;
/// a by-ID fleet larger than the longest window takes the share of what is left of the
/// interval, `Start::Now`), then a summary per tenant. Exit 0 all fetched, 2 partial, 1
/// nothing.
async fn sync(globals: &Globals, args: SyncArgs) -> Result<ExitCode, Failure> {
    let settings = globals.configure()?;
    let selection = settings.select_tenants(&args.tenants)?;
    let tenants: Vec<&TenantSettings> =
        settings.tenants().iter().filter(|tenant| selection.includes(&tenant.name)).collect();
    require_api_credentials(tenants.iter().copied())?;
    let store = Store::connect(&settings.database.url, settings.database.max_connections).await?;
    if !args.dry_run {
        // A dry run writes nothing but the ledger, so it expects an already migrated schema.
        store.migrate().await?;
    }
    let cancel = tokio_util::sync::CancellationToken::new();
    let options = CycleOptions {
        dry_run: args.dry_run,
        cancel: cancel.clone(),
        accept_mass_missing: args.accept_mass_missing,
        ..CycleOptions::scheduled(&settings.schedule, crate::scheduler::Start::Now)
    };
    let interrupt = tokio::spawn(async move {
        shutdown_signal().await;
        cancel.cancel();
    });
    let mut codes = Vec::new();
    let mut cycles = Vec::new();
    for tenant in tenants {
        let syncer = Syncer::for_tenant(tenant, &settings.stale, store.clone())?;
        let targets = Targets { ids: tenant.agents.ids.clone(), track_all: tenant.agents.track_all };
        if targets.ids.is_empty() && !targets.track_all {
            eprintln!(
                "nothing to sync for tenant {}: ids and ids_file are empty and track_all is false ({})",
                tenant.name,
                tenant.configured_in()
            );
            codes.push(0);
            continue;
        }
        // Every tenant's cycle runs at once, as under the daemon: one tenant's 429 pauses,
        // retries or outage must not hold the others back, nor use up their deadline.
        let options = options.clone();
        cycles.push(tokio::spawn(async move { syncer.run_cycle(&targets, &options).await }));
    }
    // Reports in configuration order; a cycle that could not record itself fails the
    // command once every other cycle has recorded its own.
    let mut failure = None;
    for cycle in cycles {
        match cycle.await.map_err(anyhow::Error::from)? {
            Ok(report) => {
                print!("{report}");
                codes.push(report.exit_code());
            }
            Err(error) => {
                failure.get_or_insert(error);
            }
        }
    }
    interrupt.abort();
    if let Some(error) = failure {
        return Err(anyhow::Error::from(error).into());
    }
    Ok(ExitCode::from(combined_exit_code(&codes)))
}

/// One exit code for several tenants' cycles: 0 when all fetched everything, 1 when none
/// fetched anything, else 2 (partial), as for the agents of one cycle.
fn combined_exit_code(codes: &[u8]) -> u8 {
    if codes.iter().all(|&code| code == 0) {
        0
    } else if codes.iter().all(|&code| code == 1) {
        1
    } else {
        2
    }
}

/// `migrate`: applies pending migrations and lists them.
async fn migrate(globals: &Globals) -> Result<ExitCode, Failure> {
    let settings = globals.configure()?;
    let store = Store::connect(&settings.database.url, settings.database.max_connections).await?;
    let applied = store.migrate().await?;
    if applied.is_empty() {
        println!("database schema is up to date; no migrations to apply");
    }
    for migration in applied {
        println!("applied migration {} ({})", migration.version, migration.description);
    }
    Ok(ExitCode::SUCCESS)
}

/// `check-config [--connect]`: prints the effective configuration with secrets hidden, then
/// checks the API credentials and, with `--connect`, the database. The verdicts are TOML
/// comments, so the output still loads as a configuration file.
async fn check_config(globals: &Globals, args: CheckConfigArgs) -> Result<ExitCode, Failure> {
    let settings = globals.configure()?;
    print!("{}", settings.redacted());
    println!("\n# configuration: OK");
    require_api_credentials(settings.tenants())?;
    for tenant in settings.tenants() {
        println!(
            "# API credentials: OK for tenant {} (tenant_id, client_id and the client secret are set)",
            tenant.name
        );
    }
    if args.connect {
        let store = Store::connect(&settings.database.url, 1).await?;
        println!("# database: OK (connected)");
        // Every tenant is tried, so one wrong secret does not hide the state of the others.
        let mut failed = Vec::new();
        for tenant in settings.tenants() {
            let syncer = Syncer::for_tenant(tenant, &settings.stale, store.clone())?;
            match syncer.client.check_token().await {
                Ok(()) => {
                    println!(
                        "# access token: OK for tenant {} (issued by {})",
                        tenant.name, tenant.defender.token_url
                    )
                }
                Err(error) => {
                    println!("# access token: FAILED for tenant {}: {error}", tenant.name);
                    failed.push(tenant.name.to_string());
                }
            }
        }
        if !failed.is_empty() {
            return Err(anyhow::anyhow!("no access token for tenant(s) {}", failed.join(", ")).into());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks every tenant's API credentials, reporting all that are missing at once.
fn require_api_credentials<'a>(
    tenants: impl IntoIterator<Item = &'a TenantSettings>,
) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    for tenant in tenants {
        if let Err(error) = tenant.defender.require_api_credentials() {
            for problem in error.problems() {
                if !problems.contains(problem) {
                    problems.push(problem.clone());
                }
            }
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(ConfigError::from_problems(problems)) }
}

/// `stale [--json]`: the agents stale now (read-only: needs no client secret).
async fn stale(globals: &Globals, args: StaleArgs) -> Result<ExitCode, Failure> {
    let settings = globals.configure()?;
    let selection = settings.select_tenants(&args.tenants)?;
    let store = Store::connect(&settings.database.url, 1).await?;
    let report = report::stale_report(&store, &selection).await?;
    print_report(&report, args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// `history AGENT_ID [--json]`: versions and recent lastSeen values; exit 1 for an agent
/// never stored.
async fn history(globals: &Globals, args: HistoryArgs) -> Result<ExitCode, Failure> {
    let settings = globals.configure()?;
    let store = Store::connect(&settings.database.url, 1).await?;
    match report::history_report(&store, args.agent_id.as_str()).await? {
        Some(history) => {
            print_report(&history, args.json)?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("agent {} is not in the database (never fetched, or a typo)", args.agent_id);
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `check [--json]`: runs every invariant against the database (read-only: needs no client
/// secret); exit 0 when all hold, 1 when any is violated.
async fn check(globals: &Globals, args: CheckArgs) -> Result<ExitCode, Failure> {
    let settings = globals.configure()?;
    let store = Store::connect(&settings.database.url, 1).await?;
    let report = report::check_report(&store, &settings.rate_limit.windows).await?;
    print_report(&report, args.json)?;
    Ok(if report.all_hold() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `prune [--dry-run]`: the retention job once (read-only with `--dry-run`: needs no
/// client secret). A dry run expects an already migrated schema, as `sync --dry-run` does.
async fn prune(globals: &Globals, args: PruneArgs) -> Result<ExitCode, Failure> {
    let settings = globals.configure()?;
    let store = Store::connect(&settings.database.url, 1).await?;
    if !args.dry_run {
        store.migrate().await?;
    }
    let retention = crate::retention::Retention::from_settings(&settings);
    let outcome = crate::retention::run_once(&store, &retention, args.dry_run).await?;
    print!("{outcome}");
    Ok(ExitCode::SUCCESS)
}

/// Prints a report as a table, or as JSON with `--json`.
fn print_report(report: &(impl std::fmt::Display + serde::Serialize), json: bool) -> Result<(), Failure> {
    if json {
        let text = serde_json::to_string_pretty(report).map_err(anyhow::Error::from)?;
        println!("{text}");
    } else {
        print!("{report}");
    }
    Ok(())
}

/// `simulate`: serves the simulator until SIGINT or SIGTERM. It needs no configuration
/// file: its flags are its configuration.
async fn simulate(globals: &Globals, options: SimulatorOptions) -> Result<ExitCode, Failure> {
    globals.configure_without_file()?;
    simulator::run(options, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// `demo`: the product against the in-process simulator; needs no configuration file.
async fn demo(globals: &Globals) -> Result<ExitCode, Failure> {
    // The demo prints its own story; the service's info lines would drown it (-v shows them).
    globals.init_telemetry(&LogSettings {
        level: "warn,sqlx::query=error".to_owned(),
        ..LogSettings::default()
    })?;
    crate::demo::run().await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn causes_already_quoted_are_not_repeated() {
        let error = anyhow::anyhow!("inner").context("outer: inner").context("top");
        assert_eq!(describe(&error), "top: outer: inner");
    }
}
