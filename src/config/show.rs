//! The effective configuration as TOML, for `check-config`, with secrets hidden.
//!
//! Written by hand rather than serialized: the `toml` crate's serializer would be a new
//! dependency, and the output wants defaults filled in, secrets replaced and comments.

use std::fmt::Write as _;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Serialize;

use super::url::{REDACTED, redact_url};
use super::{Settings, TenantSettings};

impl Settings {
    /// The effective configuration as TOML, for `check-config`: defaults filled in, the
    /// database password and the client secret shown as `[redacted]`. Agent IDs from
    /// `ids_file` are counted, not listed, so the output stays loadable. Every `[[tenants]]`
    /// entry is shown with the shared defaults applied, and where its secret comes from.
    pub fn redacted(&self) -> String {
        let defender = &self.defender;
        let mut defender_entries = vec![
            ("cloud", Some(toml_value(&defender.cloud))),
            ("api_base_url", Some(toml_value(&defender.api_base_url))),
            ("token_url", Some(toml_value(&defender.token_url))),
            ("scope", Some(toml_value(&defender.scope))),
            ("tenant_id", Some(toml_value(&defender.tenant_id))),
            ("client_id", Some(toml_value(&defender.client_id))),
            ("client_secret_file", defender.client_secret_file.as_ref().map(toml_value)),
            ("request_timeout", Some(toml_duration(defender.request_timeout))),
            ("fetch_mode", Some(toml_value(&defender.fetch_mode))),
            ("max_retries", Some(defender.max_retries.to_string())),
            ("allow_insecure_http", Some(defender.allow_insecure_http.to_string())),
        ];
        if defender.has_env_secret() {
            defender_entries.push(("client_secret", Some(toml_value(REDACTED))));
        }
        let agents = &self.agents;
        let inline_ids = agents.inline_ids();

        let mut out = String::new();
        write_section(&mut out, "defender", &defender_entries);
        write_section(
            &mut out,
            "rate_limit",
            &[
                ("windows", Some(toml_windows(&self.rate_limit.windows))),
                ("max_in_flight", Some(self.rate_limit.max_in_flight.to_string())),
            ],
        );
        write_section(
            &mut out,
            "agents",
            &[
                ("ids", Some(toml_value(inline_ids))),
                ("ids_file", agents.ids_file.as_ref().map(toml_value)),
                ("track_all", Some(agents.track_all.to_string())),
            ],
        );
        let _ =
            writeln!(out, "# {} agent IDs in effect, {} of them inline", agents.ids.len(), inline_ids.len());
        write_section(&mut out, "schedule", &[("cron", Some(toml_value(&self.schedule.cron)))]);
        write_section(
            &mut out,
            "database",
            &[
                ("url", Some(toml_value(&redact_url(self.database.url.expose_secret())))),
                ("max_connections", Some(self.database.max_connections.to_string())),
            ],
        );
        write_section(
            &mut out,
            "stale",
            &[
                ("after", Some(toml_duration(self.stale.after))),
                ("mass_missing_guard", Some(self.stale.mass_missing_guard.to_string())),
            ],
        );
        write_section(
            &mut out,
            "alerts",
            &[
                (
                    "webhook_url",
                    Some(toml_value(&self.alerts.webhook_url.as_deref().map(redact_url).unwrap_or_default())),
                ),
                ("format", Some(toml_value(&self.alerts.format))),
                ("repeat_interval", Some(toml_duration(self.alerts.repeat_interval))),
                ("max_batch", Some(self.alerts.max_batch.to_string())),
            ],
        );
        let listen = self.http.listen.map(|address| address.to_string()).unwrap_or_default();
        write_section(
            &mut out,
            "http",
            &[
                ("listen", Some(toml_value(&listen))),
                ("agent_series", Some(toml_value(&self.http.agent_series))),
            ],
        );
        write_section(
            &mut out,
            "log",
            &[("format", Some(toml_value(&self.log.format))), ("level", Some(toml_value(&self.log.level)))],
        );
        let retention = &self.retention;
        let mut retention_entries: Vec<(&str, Option<String>)> = retention
            .entries()
            .iter()
            .map(|(key, keep)| (*key, Some(toml_value(&keep.to_string()))))
            .collect();
        retention_entries.push(("every", Some(toml_duration(retention.every))));
        write_section(&mut out, "retention", &retention_entries);
        let _ = writeln!(
            out,
            "# api_calls (the budget ledger) keeps {}: the longest rate window plus {}",
            humantime::format_duration(super::retention::ledger_keep(&self.all_windows())),
            humantime::format_duration(super::retention::LEDGER_MARGIN)
        );
        for tenant in self.tenants() {
            write_tenant(&mut out, tenant);
        }
        out
    }
}

/// Writes a `[[tenants]]` entry with every key in effect, the shared defaults applied, so
/// the operator sees what each tenant really uses; nothing for the tenant of a configuration
/// without `[[tenants]]`, which the shared sections already show.
fn write_tenant(out: &mut String, tenant: &TenantSettings) {
    let defender = &tenant.defender;
    let Some((credential, shared_file)) = defender.own_secret_ways() else { return };
    let agents = &tenant.agents;
    let inline_ids = agents.inline_ids();
    let entries = [
        ("name", Some(toml_value(&*tenant.name))),
        ("tenant_id", Some(toml_value(&defender.tenant_id))),
        ("ids", Some(toml_value(inline_ids))),
        ("ids_file", agents.ids_file.as_ref().map(toml_value)),
        ("track_all", Some(agents.track_all.to_string())),
        ("client_id", Some(toml_value(&defender.client_id))),
        ("client_secret_file", defender.client_secret_file.as_ref().map(toml_value)),
        ("cloud", Some(toml_value(&defender.cloud))),
        ("api_base_url", Some(toml_value(&defender.api_base_url))),
        ("token_url", Some(toml_value(&defender.token_url))),
        ("scope", Some(toml_value(&defender.scope))),
        ("fetch_mode", Some(toml_value(&defender.fetch_mode))),
        ("windows", Some(toml_windows(&tenant.rate_limit.windows))),
        ("max_in_flight", Some(tenant.rate_limit.max_in_flight.to_string())),
    ];
    write_section(out, "[tenants]", &entries);
    if defender.client_secret_file.is_none() {
        let shared = match shared_file {
            Some(file) => format!("[defender]'s client_secret_file {}", file.display()),
            None => {
                "the shared secret (credential client_secret or SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET)"
                    .to_owned()
            }
        };
        let _ = writeln!(out, "# secret: the systemd credential {credential} if passed, else {shared}");
    }
    let _ = writeln!(out, "# {} agent IDs in effect, {} of them inline", agents.ids.len(), inline_ids.len());
}

/// Rate windows as an inline TOML array.
fn toml_windows(windows: &[crate::rate_window::RateWindow]) -> String {
    let windows: Vec<String> = windows
        .iter()
        .map(|window| format!("{{ calls = {}, per = {} }}", window.calls, toml_duration(window.per)))
        .collect();
    format!("[{}]", windows.join(", "))
}

/// Writes `[name]` and its entries (`[[name]]` for `name` = `[tenants]`); an unset optional
/// key becomes a comment, since TOML has no null.
fn write_section(out: &mut String, name: &str, entries: &[(&str, Option<String>)]) {
    if !out.is_empty() {
        out.push('\n');
    }
    let _ = writeln!(out, "[{name}]");
    for (key, value) in entries {
        let _ = match value {
            Some(value) => writeln!(out, "{key} = {value}"),
            None => writeln!(out, "# {key} is not set"),
        };
    }
}

/// A value in TOML syntax. JSON's strings, numbers, booleans and arrays are valid TOML,
/// except that TOML also wants DEL escaped.
fn toml_value<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value)
        .expect("configured values come from UTF-8 text and always serialize")
        .replace('\u{7f}', "\\u007f")
}

/// A duration in the human-readable form the file uses.
fn toml_duration(duration: Duration) -> String {
    toml_value(&humantime::format_duration(duration).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cloud;

    #[test]
    fn toml_values_escape_what_toml_needs() {
        assert_eq!(toml_value("a\"b\u{7f}"), r#""a\"b\u007f""#);
        assert_eq!(toml_value(&Cloud::GccHigh), "\"gcc-high\"");
        assert_eq!(toml_duration(Duration::from_secs(90)), "\"1m 30s\"");
    }
}
