//! A database of the benchmark's own on the server of `DATABASE_URL`: created and migrated
//! before the benchmark, dropped after it whatever it returned.

use std::str::FromStr;

use anyhow::Context;
use scan_agent_sync::store::MIGRATOR;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

/// Runs `bench` on a fresh, migrated database named after `prefix` and this process.
pub async fn with_database<T>(
    prefix: &str,
    max_connections: u32,
    bench: impl AsyncFnOnce(PgPool) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let mut admin = PgConnection::connect(&url).await.with_context(|| {
        format!("the benchmark needs PostgreSQL at {url} (DATABASE_URL); start it with `pg_ctlcluster 15 main start`")
    })?;
    let name = format!("{prefix}_{}", std::process::id());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .context("creating the benchmark database")?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .connect_with(PgConnectOptions::from_str(&url)?.database(&name))
        .await
        .context("connecting to the benchmark database")?;
    let result = match MIGRATOR.run(&pool).await {
        Ok(()) => bench(pool.clone()).await,
        Err(e) => Err(e).context("migrating the benchmark database"),
    };
    pool.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE \"{name}\" WITH (FORCE)")))
        .execute(&mut admin)
        .await
        .context("dropping the benchmark database")?;
    result
}
