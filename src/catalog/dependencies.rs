//! Declared dependencies and the reads that resolution and reverse lookups need, in batches
//! (one statement per step of a traversal, not one per artifact).

use super::{ARTIFACT_COLUMNS, ArtifactRecord, BATCH_ROWS, Catalog, db_error};
use crate::domain::dependency::Dependency;
use crate::domain::{Artifact, LifecycleState, Result};
use sqlx::AssertSqlSafe;
use std::collections::HashMap;

use super::Tx;

/// One version of an artifact, as resolution weighs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionBrief {
    pub version: String,
    pub state: LifecycleState,
}

/// A declared dependency seen from its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependentRow {
    pub artifact_id: String,
    pub version: String,
    pub target_id: String,
    pub requirement: String,
    pub kind: String,
}

/// Writes a new version's dependencies, in declaration order.
pub(super) async fn write_dependencies(
    tx: &mut Tx,
    artifact_id: &str,
    version: &str,
    dependencies: &[Dependency],
) -> Result<()> {
    for (position, dependency) in dependencies.iter().enumerate() {
        sqlx::query(
            "INSERT INTO dependencies (artifact_id, version, position, target_id, requirement, kind) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(artifact_id)
        .bind(version)
        .bind(position as i64)
        .bind(&dependency.target_id)
        .bind(&dependency.requirement)
        .bind(&dependency.kind)
        .execute(&mut **tx)
        .await
        .map_err(|e| db_error("writing dependencies", e))?;
    }
    Ok(())
}

impl Catalog {
    /// What one version declared, in declaration order.
    pub async fn dependencies_of(&self, artifact_id: &str, version: &str) -> Result<Vec<Dependency>> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT target_id, requirement, kind FROM dependencies \
             WHERE artifact_id = $1 AND version = $2 ORDER BY position",
        )
        .bind(artifact_id)
        .bind(version)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("reading dependencies", e))?;
        Ok(rows
            .into_iter()
            .map(|(target_id, requirement, kind)| Dependency {
                target_id,
                requirement,
                kind,
            })
            .collect())
    }

    /// Every version's dependencies of the given artifacts, by (artifact, version).
    pub async fn dependencies_of_artifacts(
        &self,
        artifact_ids: &[String],
    ) -> Result<HashMap<(String, String), Vec<Dependency>>> {
        let mut found: HashMap<(String, String), Vec<Dependency>> = HashMap::new();
        for batch in artifact_ids.chunks(BATCH_ROWS) {
            let sql = format!(
                "SELECT artifact_id, version, target_id, requirement, kind FROM dependencies \
                 WHERE artifact_id IN ({}) ORDER BY artifact_id, version, position",
                self.dialect.placeholders(1, super::in_list_len(batch.len()))
            );
            let mut query = sqlx::query_as::<_, (String, String, String, String, String)>(AssertSqlSafe(sql));
            for id in super::padded(batch) {
                query = query.bind(id);
            }
            for (artifact_id, version, target_id, requirement, kind) in query
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error("reading dependencies", e))?
            {
                found.entry((artifact_id, version)).or_default().push(Dependency {
                    target_id,
                    requirement,
                    kind,
                });
            }
        }
        Ok(found)
    }

    /// The versions (and their states) of the given artifacts.
    pub async fn version_briefs(
        &self,
        artifact_ids: &[String],
    ) -> Result<HashMap<String, Vec<VersionBrief>>> {
        let mut found: HashMap<String, Vec<VersionBrief>> = HashMap::new();
        for batch in artifact_ids.chunks(BATCH_ROWS) {
            let sql = format!(
                "SELECT artifact_id, version, state FROM versions WHERE artifact_id IN ({}) AND deleted_at IS NULL ORDER BY artifact_id, seq",
                self.dialect.placeholders(1, super::in_list_len(batch.len()))
            );
            let mut query = sqlx::query_as::<_, (String, String, String)>(AssertSqlSafe(sql));
            for id in super::padded(batch) {
                query = query.bind(id);
            }
            for (artifact_id, version, state) in query
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error("reading versions", e))?
            {
                let state = LifecycleState::parse("state", &state)?;
                found
                    .entry(artifact_id)
                    .or_default()
                    .push(VersionBrief { version, state });
            }
        }
        Ok(found)
    }

    /// Artifacts of a tenant (any project) by id: live ones, and deleted ones when asked.
    pub async fn tenant_artifacts(
        &self,
        tenant: &str,
        ids: &[String],
        include_deleted: bool,
    ) -> Result<HashMap<String, Artifact>> {
        let mut found = HashMap::new();
        let live = if include_deleted {
            ""
        } else {
            "AND deleted_at IS NULL"
        };
        for batch in ids.chunks(BATCH_ROWS) {
            let sql = format!(
                "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE tenant = {} {live} AND id IN ({})",
                self.dialect.placeholders(1, 1),
                self.dialect.placeholders(2, super::in_list_len(batch.len()))
            );
            let mut query = sqlx::query_as::<_, ArtifactRecord>(AssertSqlSafe(sql)).bind(tenant);
            for id in super::padded(batch) {
                query = query.bind(id);
            }
            for record in query
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error("reading artifacts", e))?
            {
                let artifact = Artifact::from(record);
                found.insert(artifact.id.to_string(), artifact);
            }
        }
        Ok(found)
    }

    /// Every declared dependency on the given artifacts.
    pub async fn dependents_of(&self, target_ids: &[String]) -> Result<Vec<DependentRow>> {
        let mut rows = Vec::new();
        for batch in target_ids.chunks(BATCH_ROWS) {
            let sql = format!(
                "SELECT d.artifact_id, d.version, d.target_id, d.requirement, d.kind FROM dependencies d \
                 JOIN versions v ON v.artifact_id = d.artifact_id AND v.version = d.version \
                 WHERE d.target_id IN ({}) AND v.deleted_at IS NULL \
                 ORDER BY d.target_id, d.artifact_id, d.version, d.position",
                self.dialect.placeholders(1, super::in_list_len(batch.len()))
            );
            let mut query = sqlx::query_as::<_, (String, String, String, String, String)>(AssertSqlSafe(sql));
            for id in super::padded(batch) {
                query = query.bind(id);
            }
            rows.extend(
                query
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| db_error("reading dependents", e))?
                    .into_iter()
                    .map(
                        |(artifact_id, version, target_id, requirement, kind)| DependentRow {
                            artifact_id,
                            version,
                            target_id,
                            requirement,
                            kind,
                        },
                    ),
            );
        }
        Ok(rows)
    }
}
