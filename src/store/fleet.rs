//! `fleet_episodes`: a tenant's whole fleet vanishing from the API at once, and the one
//! `ScanAgentFleetVanished` notification it owes instead of one per agent.
//!
//! The sync cycle decides when a fleet vanished (the mass-missing guard) and when it is back;
//! this module records the episode and queues its notifications in the same transaction,
//! under the alert lock (`alerts::ALERT_LOCK`), so two cycles or two instances never open it twice.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{Postgres, Transaction};

use super::alerts::lock_alerts;
use super::notification::{AlertStatus, FleetEvent};
use super::{QueryContext, Store, StoreError};

/// An open or closed episode as stored.
#[derive(sqlx::FromRow)]
struct EpisodeRow {
    fleet_episode_id: i64,
    started_at: DateTime<Utc>,
    vanishing: i64,
    known: i64,
    detail: String,
}

impl Store {
    /// The start of the tenant's open fleet-vanished episode, if one is open.
    pub async fn open_fleet_vanished(&self, tenant: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        sqlx::query_scalar("SELECT started_at FROM fleet_episodes WHERE tenant = $1 AND resolved_at IS NULL")
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await
            .during("looking for an open fleet-vanished episode")
    }

    /// Opens the tenant's fleet-vanished episode unless one is open, queueing ONE firing
    /// event in the same transaction; returns the episode's start (new or existing).
    /// `vanishing` agents would newly have been marked missing out of `known`; `detail` is
    /// the run's error text (what probably happened).
    pub async fn fleet_vanished(
        &self,
        tenant: &str,
        vanishing: u64,
        known: u64,
        detail: &str,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, StoreError> {
        let mut tx = lock_alerts(self).await?;
        let open: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT started_at FROM fleet_episodes WHERE tenant = $1 AND resolved_at IS NULL",
        )
        .bind(tenant)
        .fetch_optional(&mut *tx)
        .await
        .during("looking for an open fleet-vanished episode")?;
        if let Some(started_at) = open {
            return Ok(started_at);
        }
        let episode_id: i64 = sqlx::query_scalar(
            "INSERT INTO fleet_episodes (tenant, started_at, vanishing, known, detail)
             VALUES ($1, $2, $3, $4, $5) RETURNING fleet_episode_id",
        )
        .bind(tenant)
        .bind(now)
        .bind(signed(vanishing))
        .bind(signed(known))
        .bind(detail)
        .fetch_one(&mut *tx)
        .await
        .during("opening a fleet-vanished episode")?;
        let event = FleetEvent {
            status: AlertStatus::Firing,
            tenant: tenant.to_owned(),
            vanishing,
            known,
            detail: detail.to_owned(),
            fired_at: now,
            resolved_at: None,
        };
        queue(&mut tx, episode_id, &event, now).await?;
        tx.commit().await.during("committing a fleet-vanished episode")?;
        Ok(now)
    }

    /// Resolves the tenant's open fleet-vanished episode, queueing one resolve event; false
    /// when none was open.
    pub async fn fleet_returned(&self, tenant: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut tx = lock_alerts(self).await?;
        let closed: Option<EpisodeRow> = sqlx::query_as(
            "UPDATE fleet_episodes SET resolved_at = greatest($2, started_at)
             WHERE tenant = $1 AND resolved_at IS NULL
             RETURNING fleet_episode_id, started_at, vanishing, known, detail",
        )
        .bind(tenant)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .during("resolving a fleet-vanished episode")?;
        let Some(episode) = closed else { return Ok(false) };
        let event = FleetEvent {
            status: AlertStatus::Resolved,
            tenant: tenant.to_owned(),
            vanishing: unsigned(episode.vanishing),
            known: unsigned(episode.known),
            detail: episode.detail,
            fired_at: episode.started_at,
            resolved_at: Some(now.max(episode.started_at)),
        };
        queue(&mut tx, episode.fleet_episode_id, &event, now).await?;
        tx.commit().await.during("committing a fleet-vanished resolve")?;
        Ok(true)
    }
}

/// Queues `event`. Its ordering key `fleet <tenant>` contains a space, which no agent ID
/// may (`AgentId::parse`), so a fleet's events are ordered among themselves and never wait
/// behind an agent's.
async fn queue(
    tx: &mut Transaction<'static, Postgres>,
    episode_id: i64,
    event: &FleetEvent,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let kind = match event.status {
        AlertStatus::Firing => "firing",
        AlertStatus::Resolved => "resolved",
    };
    sqlx::query(
        "INSERT INTO alert_outbox (fleet_episode_id, agent_id, kind, payload, created_at, next_attempt_at)
         VALUES ($1, 'fleet ' || $2, $3, $4, $5, $5)",
    )
    .bind(episode_id)
    .bind(&event.tenant)
    .bind(kind)
    .bind(Json(event))
    .bind(now)
    .execute(&mut **tx)
    .await
    .during("queueing a fleet-vanished notification")
    .map(drop)
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or_default()
}
