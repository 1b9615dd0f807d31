//! Workflow runs: what runs read (recorded inputs) and produced (versions naming the run).

use super::{Catalog, db_error};
use crate::domain::Result;
use crate::domain::run::InputSource;

/// A version a run read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInputRecord {
    pub artifact_id: String,
    pub version: String,
    pub how: String,
    pub at: i64,
}

impl Catalog {
    /// Records that a run read a version; recording it again changes nothing.
    pub async fn record_run_input(
        &self,
        tenant: &str,
        run_id: &str,
        artifact_id: &str,
        version: &str,
        how: InputSource,
        at: i64,
    ) -> Result<()> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT INTO run_inputs (tenant, run_id, artifact_id, version, how, recorded_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant, run_id, artifact_id, version) DO NOTHING",
        )
        .bind(tenant)
        .bind(run_id)
        .bind(artifact_id)
        .bind(version)
        .bind(how.as_str())
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error("recording a run's input", e))?;
        Ok(())
    }

    /// What a run of the tenant read, in the order it was recorded.
    pub async fn run_inputs(&self, tenant: &str, run_id: &str) -> Result<Vec<RunInputRecord>> {
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT artifact_id, version, how, recorded_at FROM run_inputs \
             WHERE tenant = $1 AND run_id = $2 ORDER BY recorded_at, artifact_id, version",
        )
        .bind(tenant)
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("reading a run's inputs", e))?;
        Ok(rows
            .into_iter()
            .map(|(artifact_id, version, how, at)| RunInputRecord {
                artifact_id,
                version,
                how,
                at,
            })
            .collect())
    }

    /// What the latest other run that read `artifact_id` read next: the artifacts it
    /// recorded from then on, in order, each once, at most `limit` (the artifact itself left
    /// out). What a run of the same workflow is likely to read next.
    pub async fn read_next_by_previous_run(
        &self,
        tenant: &str,
        run_id: &str,
        artifact_id: &str,
        limit: usize,
    ) -> Result<Vec<String>> {
        let previous: Option<(String, i64)> = sqlx::query_as(
            "SELECT run_id, recorded_at FROM run_inputs \
             WHERE tenant = $1 AND artifact_id = $2 AND run_id <> $3 \
             ORDER BY recorded_at DESC LIMIT 1",
        )
        .bind(tenant)
        .bind(artifact_id)
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("finding an earlier run's read", e))?;
        let Some((previous, at)) = previous else {
            return Ok(Vec::new());
        };
        let later: Vec<(String,)> = sqlx::query_as(
            "SELECT artifact_id FROM run_inputs \
             WHERE tenant = $1 AND run_id = $2 AND recorded_at >= $3 AND artifact_id <> $4 \
             ORDER BY recorded_at, artifact_id LIMIT $5",
        )
        .bind(tenant)
        .bind(&previous)
        .bind(at)
        .bind(artifact_id)
        .bind((limit * 4) as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("reading an earlier run's reads", e))?;
        let mut next: Vec<String> = Vec::new();
        for (id,) in later {
            if !next.contains(&id) {
                next.push(id);
            }
            if next.len() == limit {
                break;
            }
        }
        Ok(next)
    }

    /// The versions of the tenant a run produced, as (artifact id, version), oldest first.
    pub async fn run_outputs(&self, tenant: &str, run_id: &str) -> Result<Vec<(String, String)>> {
        sqlx::query_as(
            "SELECT v.artifact_id, v.version FROM versions v JOIN artifacts a ON a.id = v.artifact_id \
             WHERE a.tenant = $1 AND v.run_id = $2 ORDER BY v.created_at, v.artifact_id",
        )
        .bind(tenant)
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("reading a run's outputs", e))
    }
}
