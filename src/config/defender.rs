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

/// How to provide the shared secret; every "no secret" error repeats it.
const SECRET_FIX: &str = "set defender.client_secret_file to a file holding the secret, \
    or pass it as the systemd credential `client_secret` (LoadCredential=client_secret:PATH), \
    or set SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET";

/// The key of the shared secret file.
const SHARED_SECRET_KEY: &str = "defender.client_secret_file";

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
    /// A `[[tenants]]` entry's own ways to its secret, consulted before the shared ones;
    /// `None` for the tenant of a configuration without `[[tenants]]`.
    own_secret: Option<OwnSecret>,
}

/// Where a `[[tenants]]` entry's secret may come from before the shared one of
/// `[defender]`: an MSSP's customers may each consent a different app registration.
#[derive(Debug, Clone)]
struct OwnSecret {
    /// The entry's place, e.g. `tenants[2]`, for errors.
    section: String,
    /// The systemd credential `client_secret_<name>`.
    credential: String,
    /// `[defender].client_secret_file`, consulted after the two own ways.
    shared_file: Option<PathBuf>,
}

impl DefenderSettings {
    /// Reads the client secret: `client_secret_file`, else `$CREDENTIALS_DIRECTORY/client_secret`,
    /// else `SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET`. A `[[tenants]]` entry first tries its
    /// own `client_secret_file`, then the credential `client_secret_<name>`, then those shared
    /// ways (with `[defender].client_secret_file` as the file). Trailing newlines are dropped
    /// because `echo secret > file` adds one.
    ///
    /// Read on demand rather than at load because analysts run read-only commands (`stale`,
    /// `history`) as users who may not read the secret file.
    pub fn client_secret(&self) -> Result<SecretString, ConfigError> {
        let fix = self.secret_fix();
        let (own_file_key, shared_file) = match &self.own_secret {
            Some(own) => (format!("{}.client_secret_file", own.section), own.shared_file.as_ref()),
            None => (SHARED_SECRET_KEY.to_owned(), None),
        };
        let own_file_key = own_file_key.as_str();
        if let Some(path) = &self.client_secret_file {
            return read_secret_file(own_file_key, path, &fix);
        }
        if let Some(own) = &self.own_secret
            && let Some(secret) = self.read_credential(&own.credential)?
        {
            return Ok(secret);
        }
        if let Some(path) = shared_file {
            return read_secret_file(SHARED_SECRET_KEY, path, &fix);
        }
        if let Some(secret) = self.read_credential("client_secret")? {
            return Ok(secret);
        }
        match &self.env_secret {
            Some(secret) => Ok(secret.clone()),
            None => Err(ConfigProblem::new(own_file_key, "no client secret is configured", fix).into()),
        }
    }

    /// The systemd credential `name`, or `None` when systemd passed no such credential.
    fn read_credential(&self, name: &str) -> Result<Option<SecretString>, ConfigError> {
        let Some(directory) = &self.credentials_directory else { return Ok(None) };
        let path = directory.join(name);
        match read_secret(&path) {
            Ok(secret) => Ok(Some(secret)),
            // systemd sets the directory for any credential; this one may simply not be among them.
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => {
                let problem = ConfigProblem::unkeyed(
                    format!("cannot use the systemd credential {}: {error}", path.display()),
                    format!("{}; check LoadCredential={name}:PATH in the unit", error.fix(&path)),
                );
                Err(problem.at(path.display()).into())
            }
        }
    }

    /// Every way to provide this tenant's secret, in the order they are tried.
    fn secret_fix(&self) -> String {
        match &self.own_secret {
            Some(own) => format!(
                "set {}.client_secret_file to a file holding the secret, or pass it as the systemd \
                 credential `{1}` (LoadCredential={1}:PATH), or provide the secret shared by all tenants: \
                 {SECRET_FIX}",
                own.section, own.credential
            ),
            None => SECRET_FIX.to_owned(),
        }
    }

    /// For a `[[tenants]]` entry, the systemd credential it tries after its own file, and
    /// the shared `[defender]` file it falls back to; for the redacted configuration.
    pub(crate) fn own_secret_ways(&self) -> Option<(&str, Option<&PathBuf>)> {
        self.own_secret.as_ref().map(|own| (own.credential.as_str(), own.shared_file.as_ref()))
    }

    /// Gives the `[[tenants]]` entry at `section` (e.g. `tenants[2]`) its own ways to the
    /// secret (see [`Self::client_secret`]): `file`, then the credential
    /// `client_secret_<tenant>`, then the shared ways, `[defender]`'s file first.
    pub(super) fn with_own_secret(mut self, section: String, file: Option<PathBuf>, tenant: &str) -> Self {
        let shared_file = std::mem::replace(&mut self.client_secret_file, file);
        self.own_secret =
            Some(OwnSecret { section, credential: format!("client_secret_{tenant}"), shared_file });
        self
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
            let fix = match &self.own_secret {
                Some(own) => format!(
                    "set defender.client_id (shared by all tenants) or {}.client_id to the application \
                     (client) ID of the app registration",
                    own.section
                ),
                None => "set it to the application (client) ID of the app registration".to_owned(),
            };
            problems.push(ConfigProblem::new("defender.client_id", "is not set", fix));
        }
        if let Err(error) = self.client_secret() {
            problems.extend_from_slice(error.problems());
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::new(problems)) }
    }
}

/// Reads the secret file `path` configured at `key`.
fn read_secret_file(key: &str, path: &std::path::Path, fix: &str) -> Result<SecretString, ConfigError> {
    read_secret(path).map_err(|error| {
        let problem = ConfigProblem::new(
            key,
            format!("cannot use the client secret in {}: {error}", path.display()),
            format!("{}; or see the other ways: {fix}", error.fix(path)),
        );
        problem.at(path.display()).into()
    })
}

/// `[defender]` as written; URLs are optional here because their defaults depend on `cloud`.
#[derive(Debug, Clone, Deserialize)]
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

/// What a `[[tenants]]` entry may set of the Defender connection; unset keys keep the value
/// of `[defender]` as written (before its cloud defaults, so a tenant's `cloud` still picks
/// its hosts unless `[defender]` names them explicitly).
#[derive(Debug, Default)]
pub(super) struct DefenderOverrides {
    pub(super) client_id: Option<String>,
    pub(super) cloud: Option<Cloud>,
    pub(super) api_base_url: Option<String>,
    pub(super) token_url: Option<String>,
    pub(super) scope: Option<String>,
    pub(super) fetch_mode: Option<FetchMode>,
}

impl RawDefender {
    /// `[defender]` as a tenant sees it: its own `tenant_id` and `overrides` on top.
    pub(super) fn for_tenant(&self, tenant_id: &str, overrides: DefenderOverrides) -> RawDefender {
        let this = self.clone();
        RawDefender {
            tenant_id: tenant_id.to_owned(),
            client_id: overrides.client_id.unwrap_or(this.client_id),
            cloud: overrides.cloud.unwrap_or(this.cloud),
            api_base_url: overrides.api_base_url.or(this.api_base_url),
            token_url: overrides.token_url.or(this.token_url),
            scope: overrides.scope.or(this.scope),
            fetch_mode: overrides.fetch_mode.unwrap_or(this.fetch_mode),
            ..this
        }
    }

    /// Whether `tenant_id` is set, which `[[tenants]]` forbids.
    pub(super) fn has_tenant_id(&self) -> bool {
        !self.tenant_id.trim().is_empty()
    }

    /// Applies the cloud defaults and checks the values, naming a problem's key with
    /// `key(field)`: `defender.FIELD`, or `tenants[N].FIELD` for a tenant's own value.
    pub(super) fn finish_keyed(
        self,
        key: &dyn Fn(&str) -> String,
        env: &HashMap<String, String>,
        problems: &mut Vec<ConfigProblem>,
    ) -> DefenderSettings {
        let tenant_id = self.tenant_id.trim().to_owned();
        // The tenant ID is pasted into the token URL's path, so it must not be able to change it.
        if !tenant_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
            problems.push(ConfigProblem::new(
                &key("tenant_id"),
                format!("{tenant_id:?} is neither a GUID nor a domain name"),
                "copy the Directory (tenant) ID from the app registration's overview page",
            ));
        }
        let plain_http = if self.allow_insecure_http { PlainHttp::Allowed } else { PlainHttp::LoopbackOnly };
        for (field, value) in [("api_base_url", &self.api_base_url), ("token_url", &self.token_url)] {
            if let Some(Err(problem)) = value.as_deref().map(|url| check_http_url(url, plain_http)) {
                problems.push(ConfigProblem::new(
                    &key(field),
                    problem,
                    "write an absolute https:// URL such as https://api.security.microsoft.com, or remove the key \
                     to use the cloud's default (plain http:// is accepted for loopback hosts, or anywhere with \
                     defender.allow_insecure_http = true, e.g. behind a TLS-terminating proxy you trust)",
                ));
            }
        }
        if self.scope.as_deref().is_some_and(|scope| scope.trim().is_empty()) {
            problems.push(ConfigProblem::new(
                &key("scope"),
                "is empty",
                "remove the key to use the cloud's default scope",
            ));
        }
        if self.request_timeout.is_zero() {
            problems.push(ConfigProblem::new(
                &key("request_timeout"),
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
            own_secret: None,
        }
    }
}

/// Applies the cloud defaults and checks the values.
impl Finish for RawDefender {
    type Output = DefenderSettings;

    fn finish(self, env: &HashMap<String, String>, problems: &mut Vec<ConfigProblem>) -> DefenderSettings {
        self.finish_keyed(&|field| format!("defender.{field}"), env, problems)
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
