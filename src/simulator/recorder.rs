//! What the simulator saw: counters and the request log that tests assert on.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};

use super::limiter::WindowPeak;

/// The request log keeps this many latest entries, so a long `simulate` run stays bounded.
const LOG_CAPACITY: usize = 100_000;

/// Which endpoint a request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointKind {
    Token,
    List,
    ById,
    /// Any path the simulated service does not serve.
    Other,
}

/// One request as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    pub at: DateTime<Utc>,
    pub method: String,
    /// Path and query exactly as received, still percent-encoded, so tests see what the client sent.
    pub path_and_query: String,
    pub kind: EndpointKind,
    /// None when the connection was dropped on purpose without a response.
    pub status: Option<u16>,
}

/// One agent object as an API response carried it, so tests can compare what a client stored
/// with what it was actually served. Recorded when the body is built, including bodies an
/// injected fault then cuts short.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedAgent {
    /// When the response body was built, a moment after its request arrived.
    pub at: DateTime<Utc>,
    /// The agent's JSON object, as sent.
    pub agent: serde_json::Value,
}

/// Counters since start.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SimStats {
    /// Requests to the agent endpoints, whatever their answer (429s and 401s included).
    pub api_requests: u64,
    pub list_requests: u64,
    pub by_id_requests: u64,
    /// Requests to the token endpoint, which do not count against the rate windows.
    pub token_requests: u64,
    /// API requests answered 429.
    pub throttled: u64,
    /// Per enforced window, the most accepted requests seen in any interval of its length.
    pub window_peaks: Vec<WindowPeak>,
}

/// Accumulates the counters and the log.
#[derive(Debug, Default)]
pub(super) struct Recorder {
    stats: SimStats,
    log: VecDeque<LoggedRequest>,
    served: VecDeque<ServedAgent>,
}

impl Recorder {
    pub fn record(&mut self, request: LoggedRequest) {
        let stats = &mut self.stats;
        match request.kind {
            EndpointKind::Token => stats.token_requests += 1,
            EndpointKind::List => stats.list_requests += 1,
            EndpointKind::ById => stats.by_id_requests += 1,
            EndpointKind::Other => {}
        }
        if matches!(request.kind, EndpointKind::List | EndpointKind::ById) {
            stats.api_requests += 1;
            stats.throttled += u64::from(request.status == Some(429));
        }
        if self.log.len() == LOG_CAPACITY {
            self.log.pop_front();
        }
        self.log.push_back(request);
    }

    /// Notes the agent objects one response carries, keeping the latest [`LOG_CAPACITY`].
    pub fn record_served(&mut self, at: DateTime<Utc>, agents: impl IntoIterator<Item = serde_json::Value>) {
        for agent in agents {
            if self.served.len() == LOG_CAPACITY {
                self.served.pop_front();
            }
            self.served.push_back(ServedAgent { at, agent });
        }
    }

    pub fn served(&self) -> Vec<ServedAgent> {
        self.served.iter().cloned().collect()
    }

    /// The counters, with the peaks the limiter measured.
    pub fn stats(&self, window_peaks: Vec<WindowPeak>) -> SimStats {
        SimStats { window_peaks, ..self.stats.clone() }
    }

    pub fn log(&self) -> Vec<LoggedRequest> {
        self.log.iter().cloned().collect()
    }
}
