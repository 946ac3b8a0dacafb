//! The `[defender]` section: which cloud, which hosts, which app registration, and where its
//! secret lives.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::error::{ConfigError, ConfigProblem};
use super::exposure::read_secret;
use super::url::{PlainHttp, check_http_url};
use super::{Finish, de};

/// The environment variable that may carry the client secret. It is taken out of the
/// environment before the `config` crate sees it, so the secret is never a config key and
/// cannot end up in the redacted output or an "unknown key" message.
pub(crate) const CLIENT_SECRET_VAR: &str = "SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET";

/// Where systemd's `LoadCredential=` puts credentials; the secret is read from
/// `$CREDENTIALS_DIRECTORY/client_secret`.
const CREDENTIALS_DIRECTORY_VAR: &str = "CREDENTIALS_DIRECTORY";

/// How to provide the secret; every "no secret" error repeats it.
const SECRET_FIX: &str = "set defender.client_secret_file to a file holding the secret, \
    or pass it as the systemd credential `client_secret` (LoadCredential=client_secret:PATH), \
    or set SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET";

/// The Microsoft cloud the tenant lives in. It decides the default token host, API host and
/// scope, so operators in government clouds change one key instead of three URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cloud {
    /// Commercial Microsoft 365.
    #[default]
    Commercial,
    /// US Government Community Cloud (commercial login, government API host).
    Gcc,
    /// US Government Community Cloud High.
    GccHigh,
    /// US Department of Defense.
    Dod,
}

impl Cloud {
    /// The Entra ID login host that issues tokens for this cloud.
    fn login_host(self) -> &'static str {
        match self {
            Cloud::Commercial | Cloud::Gcc => "https://login.microsoftonline.com",
            Cloud::GccHigh | Cloud::Dod => "https://login.microsoftonline.us",
        }
    }

    /// The Defender API host for this cloud.
    fn api_base_url(self) -> &'static str {
        match self {
            Cloud::Commercial => "https://api.security.microsoft.com",
            Cloud::Gcc => "https://api-gcc.securitycenter.microsoft.us",
            Cloud::GccHigh | Cloud::Dod => "https://api-gov.securitycenter.microsoft.us",
        }
    }

    /// The OAuth scope: commercial keeps the historical `securitycenter` resource even
    /// though its API host changed; the US Government clouds use their API host.
    fn scope(self) -> String {
        match self {
            Cloud::Commercial => "https://api.securitycenter.microsoft.com/.default".to_owned(),
            _ => format!("{}/.default", self.api_base_url()),
        }
    }
}

/// How a sync cycle asks the API for agents (PRODUCT.md, "Fetch modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FetchMode {
    /// Whichever of the other two needs fewer calls.
    #[default]
    Auto,
    /// One call per configured ID.
    ById,
    /// One call per page of the list endpoint.
    List,
}

/// The Defender API connection, with cloud defaults already applied.
#[derive(Debug, Clone)]
pub struct DefenderSettings {
    /// The cloud whose defaults fill the unset URLs.
    pub cloud: Cloud,
    /// API root without a trailing slash, so callers can append `/api/...`.
    pub api_base_url: String,
    /// Token endpoint with `{tenant_id}` already substituted.
    pub token_url: String,
    /// OAuth scope requested with the client-credentials grant.
    pub scope: String,
    /// Entra tenant ID; empty unless configured, checked by [`Self::require_api_credentials`].
    pub tenant_id: String,
    /// App registration (client) ID; empty unless configured.
    pub client_id: String,
    /// File holding the client secret.
    pub client_secret_file: Option<PathBuf>,
    /// Deadline for one API request.
    pub request_timeout: Duration,
    /// How cycles fetch agents.
    pub fetch_mode: FetchMode,
    /// Retries of one request after transient failures.
    pub max_retries: u32,
    /// Whether the URLs may be plain `http://` to hosts other than loopback.
    pub allow_insecure_http: bool,
    /// `SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET`, captured at load.
    env_secret: Option<SecretString>,
    /// `$CREDENTIALS_DIRECTORY`, captured at load so tests can inject it.
    credentials_directory: Option<PathBuf>,
}

impl DefenderSettings {
    /// Reads the client secret: `client_secret_file`, else `$CREDENTIALS_DIRECTORY/client_secret`,
    /// else `SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET`. Trailing newlines are dropped because
    /// `echo secret > file` adds one.
    ///
    /// Read on demand rather than at load because analysts run read-only commands (`stale`,
    /// `history`) as users who may not read the secret file.
    pub fn client_secret(&self) -> Result<SecretString, ConfigError> {
        if let Some(path) = &self.client_secret_file {
            return read_secret(path).map_err(|error| {
                let problem = ConfigProblem::new(
                    "defender.client_secret_file",
                    format!("cannot use the client secret in {}: {error}", path.display()),
                    format!("{}; or see the other ways: {SECRET_FIX}", error.fix(path)),
                );
                problem.at(path.display()).into()
            });
        }
        if let Some(directory) = &self.credentials_directory {
            let path = directory.join("client_secret");
            match read_secret(&path) {
                Ok(secret) => return Ok(secret),
                // systemd sets the directory for any credential; this one may simply not be among them.
                Err(error) if error.is_not_found() => {}
                Err(error) => {
                    let problem = ConfigProblem::unkeyed(
                        format!("cannot use the systemd credential {}: {error}", path.display()),
                        format!("{}; check LoadCredential=client_secret:PATH in the unit", error.fix(&path)),
                    );
                    return Err(problem.at(path.display()).into());
                }
            }
        }
        match &self.env_secret {
            Some(secret) => Ok(secret.clone()),
            None => Err(ConfigProblem::new(
                "defender.client_secret_file",
                "no client secret is configured",
                SECRET_FIX,
            )
            .into()),
        }
    }

    /// Whether the secret came from `SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET`, so the
    /// redacted configuration can show that one is set.
    pub(crate) fn has_env_secret(&self) -> bool {
        self.env_secret.is_some()
    }

    /// Checks what talking to the API needs beyond a valid file: tenant and client IDs and a
    /// readable secret. Separate from loading so commands that never call the API work
    /// without them.
    pub fn require_api_credentials(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.tenant_id.is_empty() {
            problems.push(ConfigProblem::new(
                "defender.tenant_id",
                "is not set",
                "set it to the Entra tenant (directory) ID of the app registration",
            ));
        }
        if self.client_id.is_empty() {
            problems.push(ConfigProblem::new(
                "defender.client_id",
                "is not set",
                "set it to the application (client) ID of the app registration",
            ));
        }
        if let Err(error) = self.client_secret() {
            problems.extend_from_slice(error.problems());
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::new(problems)) }
    }
}

/// `[defender]` as written; URLs are optional here because their defaults depend on `cloud`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawDefender {
    #[serde(deserialize_with = "de::variant")]
    cloud: Cloud,
    api_base_url: Option<String>,
    token_url: Option<String>,
    scope: Option<String>,
    tenant_id: String,
    client_id: String,
    #[serde(deserialize_with = "de::non_empty")]
    client_secret_file: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    request_timeout: Duration,
    #[serde(deserialize_with = "de::variant")]
    fetch_mode: FetchMode,
    max_retries: u32,
    allow_insecure_http: bool,
}

impl Default for RawDefender {
    fn default() -> Self {
        Self {
            cloud: Cloud::default(),
            api_base_url: None,
            token_url: None,
            scope: None,
            tenant_id: String::new(),
            client_id: String::new(),
            client_secret_file: None,
            request_timeout: Duration::from_secs(30),
            fetch_mode: FetchMode::default(),
            max_retries: 5,
            allow_insecure_http: false,
        }
    }
}

/// Applies the cloud defaults and checks the values.
impl Finish for RawDefender {
    type Output = DefenderSettings;

    fn finish(self, env: &HashMap<String, String>, problems: &mut Vec<ConfigProblem>) -> DefenderSettings {
        let tenant_id = self.tenant_id.trim().to_owned();
        // The tenant ID is pasted into the token URL's path, so it must not be able to change it.
        if !tenant_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
            problems.push(ConfigProblem::new(
                "defender.tenant_id",
                format!("{tenant_id:?} is neither a GUID nor a domain name"),
                "copy the Directory (tenant) ID from the app registration's overview page",
            ));
        }
        let plain_http = if self.allow_insecure_http { PlainHttp::Allowed } else { PlainHttp::LoopbackOnly };
        for (key, value) in
            [("defender.api_base_url", &self.api_base_url), ("defender.token_url", &self.token_url)]
        {
            if let Some(Err(problem)) = value.as_deref().map(|url| check_http_url(url, plain_http)) {
                problems.push(ConfigProblem::new(
                    key,
                    problem,
                    "write an absolute https:// URL such as https://api.security.microsoft.com, or remove the key \
                     to use the cloud's default (plain http:// is accepted for loopback hosts, or anywhere with \
                     defender.allow_insecure_http = true, e.g. behind a TLS-terminating proxy you trust)",
                ));
            }
        }
        if self.scope.as_deref().is_some_and(|scope| scope.trim().is_empty()) {
            problems.push(ConfigProblem::new(
                "defender.scope",
                "is empty",
                "remove the key to use the cloud's default scope",
            ));
        }
        if self.request_timeout.is_zero() {
            problems.push(ConfigProblem::new(
                "defender.request_timeout",
                "is zero, so every request would time out",
                "set a duration such as \"30s\"",
            ));
        }

        let api_base_url = self.api_base_url.unwrap_or_else(|| self.cloud.api_base_url().to_owned());
        let token_url = self
            .token_url
            .unwrap_or_else(|| format!("{}/{{tenant_id}}/oauth2/v2.0/token", self.cloud.login_host()));
        DefenderSettings {
            api_base_url: api_base_url.trim_end_matches('/').to_owned(),
            token_url: token_url.replace("{tenant_id}", &tenant_id),
            scope: self.scope.unwrap_or_else(|| self.cloud.scope()),
            cloud: self.cloud,
            tenant_id,
            client_id: self.client_id.trim().to_owned(),
            client_secret_file: self.client_secret_file,
            request_timeout: self.request_timeout,
            fetch_mode: self.fetch_mode,
            max_retries: self.max_retries,
            allow_insecure_http: self.allow_insecure_http,
            env_secret: env.get(CLIENT_SECRET_VAR).map(|secret| SecretString::from(secret.as_str())),
            credentials_directory: env
                .get(CREDENTIALS_DIRECTORY_VAR)
                .filter(|dir| !dir.is_empty())
                .map(PathBuf::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn government_clouds_share_the_gov_hosts() {
        let mut problems = Vec::new();
        let raw = RawDefender { cloud: Cloud::Dod, tenant_id: "t".into(), ..RawDefender::default() };
        let settings = raw.finish(&HashMap::new(), &mut problems);
        assert!(problems.is_empty());
        assert_eq!(settings.api_base_url, "https://api-gov.securitycenter.microsoft.us");
        assert_eq!(settings.token_url, "https://login.microsoftonline.us/t/oauth2/v2.0/token");
        assert_eq!(settings.scope, "https://api-gov.securitycenter.microsoft.us/.default");
        assert_eq!(Cloud::Gcc.scope(), "https://api-gcc.securitycenter.microsoft.us/.default");
        assert_eq!(Cloud::Gcc.login_host(), "https://login.microsoftonline.com");
    }

    #[test]
    fn tenant_id_cannot_reshape_the_token_url() {
        let mut problems = Vec::new();
        let raw = RawDefender { tenant_id: "a/../b".into(), ..RawDefender::default() };
        raw.finish(&HashMap::new(), &mut problems);
        assert_eq!(problems[0].key.as_deref(), Some("defender.tenant_id"));
    }
}
