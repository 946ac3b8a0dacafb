//! scan-agent-sync: a PostgreSQL record of Microsoft Defender authenticated-scan agents,
//! kept within the API's rate budget, with history and stale-agent alerts.

pub mod agent;
pub mod agent_id;
pub mod alerts;
pub mod budget;
pub mod config;
pub mod diff;
pub mod rate_window;
pub mod report;
pub mod simulator;
pub mod store;
