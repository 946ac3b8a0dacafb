//! Whole databases on a server, for the demo's own database: the only statements built from
//! a name rather than bound, so the name must be a constant of ours.

use sqlx::PgConnection;

use super::{QueryContext, StoreError};

/// Drops database `name` (ending its sessions) if it exists and creates it empty, through
/// `admin`, a connection to another database of the same server. `name` is `'static` so
/// it comes from the code, never from input: it is spliced into the statements.
pub async fn recreate_database(admin: &mut PgConnection, name: &'static str) -> Result<(), StoreError> {
    debug_assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")))
        .execute(&mut *admin)
        .await
        .during("dropping the previous database")?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut *admin)
        .await
        .during("creating the database (does this user have CREATEDB?)")?;
    Ok(())
}
