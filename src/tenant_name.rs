//! A tenant's name: what its rows, metrics, alerts and logs carry (PRODUCT.md, "Tenants").

use std::fmt;
use std::sync::Arc;

/// The name of the one tenant of a configuration without `[[tenants]]`: it names that
/// tenant's rows, metrics and alerts.
pub const DEFAULT_TENANT: &str = "default";

/// The name of one configured tenant. Shared rather than copied because every statement,
/// alert and log line of the tenant carries it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantName(Arc<str>);

impl std::ops::Deref for TenantName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

/// The tenant of a single-tenant configuration, [`DEFAULT_TENANT`].
impl Default for TenantName {
    fn default() -> Self {
        Self(DEFAULT_TENANT.into())
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The longest tenant name: a DNS label's length, so a name fits in hostnames, metric label
/// values and systemd credential names alike.
pub const MAX_TENANT_NAME_LEN: usize = 63;

impl TenantName {
    /// Checks a configured name: 1 to [`MAX_TENANT_NAME_LEN`] of `[a-z0-9_-]`
    /// (PRODUCT.md, "Tenants"). Kept that narrow because the name ends up in SQL rows,
    /// metric labels, alert labels, log fields and the credential name `client_secret_<name>`,
    /// and every one of them takes these characters unquoted.
    pub fn parse(text: &str) -> Result<TenantName, String> {
        if text.is_empty() {
            return Err("is empty".to_owned());
        }
        if text.len() > MAX_TENANT_NAME_LEN {
            return Err(format!(
                "{text:?} is {} characters long, more than {MAX_TENANT_NAME_LEN}",
                text.len()
            ));
        }
        match text.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-')) {
            Some(bad) => Err(format!("{text:?} contains {bad:?}, which a tenant name may not")),
            None => Ok(TenantName(text.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_lowercase_labels() {
        assert_eq!(TenantName::parse("contoso-eu_2").unwrap().to_string(), "contoso-eu_2");
        assert_eq!(TenantName::parse(DEFAULT_TENANT).unwrap(), TenantName::default());
        assert!(TenantName::parse(&"a".repeat(63)).is_ok());
        for bad in ["", "Contoso", "a b", "a.b", "ä", &"a".repeat(64)] {
            assert!(TenantName::parse(bad).is_err(), "{bad:?}");
        }
    }
}

/// Which of the configured tenants a command covers (`sync --tenant NAME`, `stale --tenant
/// NAME`): every one, or the named ones, each checked against the configuration by
/// `Settings::select_tenants`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TenantSelection(Option<Vec<TenantName>>);

impl TenantSelection {
    /// Every configured tenant: what no `--tenant` flag means.
    pub fn all() -> TenantSelection {
        TenantSelection(None)
    }

    /// Only `names`, which the caller has checked are configured.
    pub fn only(names: Vec<TenantName>) -> TenantSelection {
        TenantSelection(Some(names))
    }

    /// Whether the tenant `name` is selected.
    pub fn includes(&self, name: &str) -> bool {
        self.0.as_ref().is_none_or(|names| names.iter().any(|selected| **selected == *name))
    }

    /// The selected names, or `None` for every tenant: what a statement filtering by the
    /// `tenant` column binds.
    pub fn names(&self) -> Option<&[TenantName]> {
        self.0.as_deref()
    }
}
