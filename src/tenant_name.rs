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

impl TenantName {
    /// A tenant's `name` as PRODUCT.md allows it: 1 to 63 of `[a-z0-9_-]`, so it can label
    /// rows, metrics and alerts as it is.
    pub fn parse(name: &str) -> Result<TenantName, String> {
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
        if name.is_empty() || name.len() > 63 || !name.chars().all(allowed) {
            return Err(format!("tenant name {name:?} is not 1 to 63 of a-z, 0-9, _ and -"));
        }
        Ok(TenantName(name.into()))
    }
}
