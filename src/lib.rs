//! scan-agent-sync: a PostgreSQL record of Microsoft Defender authenticated-scan agents,
//! kept within the API's rate budget, with history and stale-agent alerts.

pub mod agent;
pub mod agent_id;
pub mod alerts;
pub mod budget;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod defender;
pub mod demo;
pub mod diff;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod notify;
pub mod rate_window;
pub mod report;
pub mod retention;
pub mod scheduler;
pub mod shutdown;
pub mod simulator;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod tenant_name;
