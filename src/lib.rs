//! scan-agent-sync: a PostgreSQL record of Microsoft Defender authenticated-scan agents,
//! kept within the API's rate budget, with history and stale-agent alerts.

pub mod agent_id;
pub mod config;
pub mod rate_window;
