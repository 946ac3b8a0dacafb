//! The Entra ID token endpoint and the bearer tokens it hands out.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use tokio::time::Instant;

use super::fleet::hex;
use super::reply::{Reply, correlation_id};
use super::urlencoded;

/// The credentials the simulated tenant accepts.
#[derive(Debug, Clone)]
pub(super) struct Credentials {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
}

/// Issued tokens and when each expires.
#[derive(Debug)]
pub(super) struct TokenStore {
    credentials: Credentials,
    lifetime: Duration,
    issued: HashMap<String, Instant>,
}

impl TokenStore {
    pub fn new(credentials: Credentials, lifetime: Duration) -> Self {
        Self { credentials, lifetime, issued: HashMap::new() }
    }

    /// Answers `POST /{tenant}/oauth2/v2.0/token` with Entra ID's success or error shapes.
    pub fn token_endpoint(&mut self, tenant: &str, form: &str, now: Instant) -> Reply {
        let field =
            |name: &str| urlencoded::pairs(form).into_iter().find(|(n, _)| n == name).map(|(_, value)| value);
        let expected = &self.credentials;
        if !tenant.eq_ignore_ascii_case(&expected.tenant_id) {
            return unknown_tenant(tenant);
        }
        if field("grant_type").as_deref() != Some("client_credentials") {
            return entra_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                "The app requested an unsupported grant type. Only client_credentials is simulated.".into(),
            );
        }
        if !field("scope").is_some_and(|scope| scope.ends_with("/.default")) {
            return entra_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                1002012,
                "The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier.".into(),
            );
        }
        let client_id = field("client_id").unwrap_or_default();
        if client_id != expected.client_id {
            return entra_error(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                700016,
                format!(
                    "Application with identifier '{client_id}' was not found in the directory '{tenant}'."
                ),
            );
        }
        if field("client_secret").as_deref() != Some(expected.client_secret.as_str()) {
            return entra_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000215,
                format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                ),
            );
        }
        self.issued.retain(|_, expires| *expires > now);
        let token = format!("sim.{}", hex(&mut rand::rng(), 64));
        self.issued.insert(token.clone(), now + self.lifetime);
        Reply::ok(json!({
            "token_type": "Bearer",
            "expires_in": self.lifetime.as_secs(),
            "ext_expires_in": self.lifetime.as_secs(),
            "access_token": token,
        }))
    }

    /// Whether `authorization` (the header's value) carries a token issued here and not expired.
    pub fn authorizes(&self, authorization: Option<&str>, now: Instant) -> bool {
        authorization
            .and_then(|value| value.strip_prefix("Bearer "))
            .and_then(|token| self.issued.get(token.trim()))
            .is_some_and(|expires| *expires > now)
    }
}

/// Entra ID's answer to a token request for a tenant it does not know.
pub(super) fn unknown_tenant(tenant: &str) -> Reply {
    entra_error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        90002,
        format!(
            "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
        ),
    )
}

/// Entra ID's error shape; `error_description` starts with the AADSTS code like the real one.
pub(super) fn entra_error(status: StatusCode, error: &str, code: u32, description: String) -> Reply {
    let body = json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {description}"),
        "error_codes": [code],
        "correlation_id": correlation_id(),
    });
    Reply { status, body, retry_after: None }
}
