//! The agent identifier, validated once at the boundary.
//!
//! Defender IDs are opaque (`{orgGuid}_{machineId}` in examples, one even with a space),
//! so only what would make an ID unusable or dangerous in logs and SQL is rejected.

use std::fmt;

/// Longest accepted ID; Defender IDs are ~80 bytes, so anything near this is a typo or junk.
pub const MAX_AGENT_ID_BYTES: usize = 256;

/// A syntactically valid agent ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct AgentId(String);

/// Why a string is not an agent ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentIdError {
    #[error("agent ID is empty")]
    Empty,
    #[error("agent ID {0:?} is longer than {MAX_AGENT_ID_BYTES} bytes")]
    TooLong(String),
    #[error("agent ID {0:?} contains whitespace; IDs look like `orgGuid_machineId`")]
    Whitespace(String),
    #[error("agent ID {0:?} contains a control character")]
    Control(String),
}

impl AgentId {
    /// Validates a configured ID: non-empty, at most 256 bytes, no whitespace or control characters.
    pub fn parse(raw: &str) -> Result<Self, AgentIdError> {
        if raw.is_empty() {
            return Err(AgentIdError::Empty);
        }
        if raw.len() > MAX_AGENT_ID_BYTES {
            let shown: String = raw.chars().take(40).collect();
            return Err(AgentIdError::TooLong(format!("{shown}...")));
        }
        if raw.chars().any(char::is_control) {
            return Err(AgentIdError::Control(raw.to_owned()));
        }
        if raw.chars().any(char::is_whitespace) {
            return Err(AgentIdError::Whitespace(raw.to_owned()));
        }
        Ok(Self(raw.to_owned()))
    }

    /// Accepts an ID as the API returned it. The API is the authority on its own IDs (its
    /// docs show one with a space), so only emptiness, control characters and length are refused.
    pub fn from_api(raw: &str) -> Result<Self, AgentIdError> {
        if raw.is_empty() {
            return Err(AgentIdError::Empty);
        }
        if raw.len() > MAX_AGENT_ID_BYTES {
            return Err(AgentIdError::TooLong(raw.chars().take(40).collect()));
        }
        if raw.chars().any(char::is_control) {
            return Err(AgentIdError::Control(raw.to_owned()));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The ID as sent to the API and stored in the database.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_documented_shape() {
        let id = AgentId::parse("47df41a0c-asad-4fd6d3-bbea-a93dbc0bfcaa_4edd75b2407a5b64d704b4e53d74f15");
        assert!(id.is_ok());
    }

    #[test]
    fn rejects_each_bad_shape() {
        assert_eq!(AgentId::parse(""), Err(AgentIdError::Empty));
        assert!(matches!(AgentId::parse("a b"), Err(AgentIdError::Whitespace(_))));
        assert!(matches!(AgentId::parse("a\u{7}b"), Err(AgentIdError::Control(_))));
        assert!(matches!(AgentId::parse(&"x".repeat(257)), Err(AgentIdError::TooLong(_))));
        assert!(AgentId::parse(&"x".repeat(256)).is_ok());
    }

    #[test]
    fn api_ids_may_contain_spaces() {
        assert!(AgentId::from_api("org_ machine").is_ok());
        assert!(AgentId::from_api("a\nb").is_err());
    }
}
