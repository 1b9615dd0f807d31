//! The catalog's implementation of the storage core's replication log.

use super::{Catalog, db_error};
use crate::domain::Result;
use crate::ingest::PackId;
use crate::storage::{ObjectInventory, ObjectMeta, ReplicationItem, ReplicationLog, ReplicationStats, Side};
use async_trait::async_trait;

#[derive(sqlx::FromRow)]
struct ItemRow {
    object_key: String,
    target: String,
    attempts: i64,
    last_error: Option<String>,
    created_at: i64,
    next_attempt_at: i64,
}

impl ItemRow {
    fn into_item(self) -> Option<ReplicationItem> {
        Some(ReplicationItem {
            key: self.object_key,
            target: Side::parse(&self.target)?,
            attempts: self.attempts,
            last_error: self.last_error,
            created_at: self.created_at,
            next_attempt_at: self.next_attempt_at,
        })
    }
}

const ITEM_COLUMNS: &str = "object_key, target, attempts, last_error, created_at, next_attempt_at";

#[async_trait]
impl ReplicationLog for Catalog {
    async fn enqueue(&self, key: &str, target: Side, now: i64) -> Result<()> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT INTO replication_queue (object_key, target, attempts, last_error, created_at, next_attempt_at) \
             VALUES ($1, $2, 0, NULL, $3, $3) ON CONFLICT (object_key, target) DO NOTHING",
        )
        .bind(key)
        .bind(target.as_str())
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error("queueing a replication", e))?;
        Ok(())
    }

    async fn due(&self, now: i64, limit: u32) -> Result<Vec<ReplicationItem>> {
        let sql = format!(
            "SELECT {ITEM_COLUMNS} FROM replication_queue WHERE next_attempt_at <= $1 \
             ORDER BY next_attempt_at, created_at LIMIT $2"
        );
        let rows: Vec<ItemRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("reading the replication queue", e))?;
        Ok(rows.into_iter().filter_map(ItemRow::into_item).collect())
    }

    async fn complete(&self, key: &str, target: Side) -> Result<()> {
        let _turn = self.write_turn().await;
        sqlx::query("DELETE FROM replication_queue WHERE object_key = $1 AND target = $2")
            .bind(key)
            .bind(target.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| db_error("completing a replication", e))?;
        Ok(())
    }

    async fn record_failure(&self, key: &str, target: Side, error: &str, next_attempt_at: i64) -> Result<()> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "UPDATE replication_queue SET attempts = attempts + 1, last_error = $1, next_attempt_at = $2 \
             WHERE object_key = $3 AND target = $4",
        )
        .bind(error)
        .bind(next_attempt_at)
        .bind(key)
        .bind(target.as_str())
        .execute(&self.pool)
        .await
        .map_err(|e| db_error("recording a replication failure", e))?;
        Ok(())
    }

    async fn stats(&self, failing_sample: u32) -> Result<ReplicationStats> {
        let (depth, oldest): (i64, Option<i64>) =
            sqlx::query_as("SELECT COUNT(*), MIN(created_at) FROM replication_queue")
                .fetch_one(&self.pool)
                .await
                .map_err(|e| db_error("measuring the replication queue", e))?;
        let sql = format!(
            "SELECT {ITEM_COLUMNS} FROM replication_queue WHERE attempts > 0 \
             ORDER BY attempts DESC, created_at LIMIT $1"
        );
        let failing: Vec<ItemRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(i64::from(failing_sample))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("listing failing replications", e))?;
        let by_target: Vec<(String, i64)> =
            sqlx::query_as("SELECT target, COUNT(*) FROM replication_queue GROUP BY target")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error("measuring the replication queue", e))?;
        let pending_for = |side: Side| {
            by_target
                .iter()
                .find(|(target, _)| target == side.as_str())
                .map_or(0, |(_, count)| *count as u64)
        };
        Ok(ReplicationStats {
            depth: depth as u64,
            pending_for_primary: pending_for(Side::Primary),
            pending_for_fallback: pending_for(Side::Fallback),
            oldest_created_at: oldest,
            failing: failing.into_iter().filter_map(ItemRow::into_item).collect(),
        })
    }
}

/// Every committed pack must be on both stores; staged and abandoned ones need not be.
#[async_trait]
impl ObjectInventory for Catalog {
    async fn expected_objects(&self, after: &str, limit: u32) -> Result<Vec<ObjectMeta>> {
        // Pack keys sort like their ids (`packs/<first 2 hex>/<64 hex>.pack`), so paging by
        // id pages by key.
        let after_id = after
            .strip_prefix("packs/")
            .and_then(|rest| rest.split('/').nth(1))
            .and_then(|file| file.strip_suffix(".pack"))
            .unwrap_or("");
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT pack_id, size FROM packs WHERE state = 'committed' AND pack_id > $1 ORDER BY pack_id LIMIT $2",
        )
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing committed packs", e))?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, size)| {
                Some(ObjectMeta {
                    key: PackId::from_hex(&id)?.object_key(),
                    size: size as u64,
                })
            })
            .collect())
    }
}
