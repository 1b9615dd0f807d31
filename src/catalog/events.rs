//! The outbox as a change stream: a project's events after a position, the retained range,
//! replicas' positions, and pruning.

use super::{Catalog, db_error};
use crate::domain::event::{ChangeEvent, EventKind};
use crate::domain::{LifecycleState, Result, Scope, Timestamp};

/// The highest position pruning has deleted (a `settings` row).
const PRUNED_THROUGH: &str = "outbox_pruned_through";

#[derive(Debug, sqlx::FromRow)]
struct EventRecord {
    seq: i64,
    event_type: String,
    artifact_id: String,
    version: String,
    created_at: i64,
    detail: String,
    artifact_type: Option<String>,
    name: Option<String>,
    /// Set for an event of an artifact linked into the project read: where it lives.
    home: Option<String>,
}

impl EventRecord {
    /// The event, or `None` for a kind this build does not know.
    fn into_event(self) -> Option<ChangeEvent> {
        let kind = EventKind::from_outbox(&self.event_type)?;
        let detail: serde_json::Value = serde_json::from_str(&self.detail).unwrap_or_default();
        let text = |key: &str| detail.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        let state = |key: &str| text(key).and_then(|s| LifecycleState::parse("state", &s).ok());
        let transition = match (kind, state("from"), state("to")) {
            (EventKind::VersionTransitioned, Some(from), Some(to)) => {
                Some((from, to, text("reason").unwrap_or_default()))
            }
            _ => None,
        };
        let alias = match (kind, text("alias")) {
            (EventKind::AliasMoved, Some(alias)) => Some((alias, text("from"))),
            _ => None,
        };
        let origin_project = match kind {
            EventKind::ArtifactLinked | EventKind::ArtifactUnlinked => text("origin_project"),
            _ => self.home,
        };
        Some(ChangeEvent {
            position: self.seq,
            origin_project,
            kind,
            artifact_id: self.artifact_id,
            artifact_type: self.artifact_type.unwrap_or_default(),
            name: self.name.unwrap_or_default(),
            version: self.version,
            at: Timestamp(self.created_at),
            transition,
            alias,
        })
    }
}

/// One read of a project's events.
#[derive(Debug, Clone)]
pub struct EventBatch {
    pub events: Vec<ChangeEvent>,
    /// The position read up to: the last event's, or the start when there was none.
    pub scanned_to: i64,
    /// The read hit its limit: more may follow at once.
    pub full: bool,
}

/// What the outbox still holds: every event after `pruned_through`, up to `newest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxRange {
    pub pruned_through: i64,
    pub newest: i64,
}

impl Catalog {
    /// A project's events after `after`, in commit order, at most `limit` of them. When the
    /// read is not cut by the limit, `scanned_to` is the whole outbox's newest position as it
    /// was before the read: outbox order is commit order, so no event of the project can
    /// appear below it later. Quiet projects' cursors thus keep up with pruning.
    pub async fn events_after(&self, scope: &Scope, after: i64, limit: u32) -> Result<EventBatch> {
        let newest = self.max_outbox_seq().await?;
        // The project's own events, and those of the artifacts linked into it (which the
        // project shows, and whose changes are written where they live).
        let rows: Vec<EventRecord> = sqlx::query_as(
            "SELECT * FROM ( \
               SELECT o.seq, o.event_type, o.artifact_id, o.version, o.created_at, o.detail, \
                      a.artifact_type, a.name, CAST(NULL AS TEXT) AS home \
               FROM outbox o LEFT JOIN artifacts a ON a.id = o.artifact_id \
               WHERE o.tenant = $1 AND o.project = $2 AND o.seq > $3 \
               UNION ALL \
               SELECT o.seq, o.event_type, o.artifact_id, o.version, o.created_at, o.detail, \
                      a.artifact_type, a.name, o.project AS home \
               FROM artifact_links l JOIN outbox o ON o.artifact_id = l.target_id AND o.seq > $3 \
                    AND o.tenant = l.tenant AND o.project <> l.project \
               LEFT JOIN artifacts a ON a.id = o.artifact_id \
               WHERE l.tenant = $1 AND l.project = $2 \
             ) seen ORDER BY seq LIMIT $4",
        )
        .bind(&scope.tenant)
        .bind(&scope.project)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("reading the change stream", e))?;
        let full = rows.len() >= limit as usize;
        let read_to = rows.last().map_or(after, |row| row.seq);
        let scanned_to = if full { read_to } else { read_to.max(newest) };
        Ok(EventBatch {
            events: rows.into_iter().filter_map(EventRecord::into_event).collect(),
            scanned_to,
            full,
        })
    }

    pub async fn outbox_range(&self) -> Result<OutboxRange> {
        let pruned: Option<String> = sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
            .bind(PRUNED_THROUGH)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("reading the outbox range", e))?;
        let pruned_through = pruned.and_then(|v| v.parse().ok()).unwrap_or(0);
        let newest = self.max_outbox_seq().await?.max(pruned_through);
        Ok(OutboxRange {
            pruned_through,
            newest,
        })
    }

    /// Records how far this replica's search index has followed the outbox.
    pub async fn record_replica_position(&self, replica_id: &str, position: i64, now: i64) -> Result<()> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT INTO replica_positions (replica_id, position, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (replica_id) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
        )
        .bind(replica_id)
        .bind(position)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error("recording a replica's position", e))?;
        Ok(())
    }

    /// Deletes events written before `created_before` that every live replica (one that
    /// recorded its position since `live_since`) has indexed past. The event at a replica's
    /// position stays: its index checks that it is still there. Replicas not heard from
    /// since `live_since` are forgotten (their indexes rebuild when they return); with no
    /// live replica at all nothing is deleted. Returns how many events were deleted.
    pub async fn prune_outbox(&self, created_before: i64, live_since: i64) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM replica_positions WHERE updated_at < $1")
            .bind(live_since)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("forgetting silent replicas", e))?;
        let slowest: Option<i64> = sqlx::query_scalar("SELECT MIN(position) FROM replica_positions")
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| db_error("reading replica positions", e))?;
        // No live replica has said how far it got (every server runs an index that records
        // it within a second of starting): nothing is known to be safe to delete.
        let Some(slowest) = slowest else {
            tx.commit().await.map_err(|e| db_error("committing", e))?;
            return Ok(0);
        };
        let upper: Option<i64> =
            sqlx::query_scalar("SELECT MAX(seq) FROM outbox WHERE created_at < $1 AND seq < $2")
                .bind(created_before)
                .bind(slowest)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| db_error("finding prunable events", e))?;
        let Some(upper) = upper else {
            tx.commit().await.map_err(|e| db_error("committing", e))?;
            return Ok(0);
        };
        let deleted = sqlx::query("DELETE FROM outbox WHERE seq <= $1")
            .bind(upper)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("pruning the outbox", e))?
            .rows_affected();
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(PRUNED_THROUGH)
        .bind(upper.to_string())
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("recording the pruned range", e))?;
        tx.commit().await.map_err(|e| db_error("committing", e))?;
        Ok(deleted)
    }
}
