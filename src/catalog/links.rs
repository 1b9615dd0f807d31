//! Read-only links: an artifact made visible in another project of its tenant without
//! copying. A link takes the artifact's type and name in the project it is linked into, and
//! that project's own artifacts and links never share one: every transaction that gives a
//! project a type and name holds that name's lock (on Postgres; SQLite serialises writers)
//! before it checks the other table.

use super::Tx;
use super::{
    ARTIFACT_COLUMNS, Catalog, Dialect, SeenArtifactRecord, artifact_not_found, db_error, is_unique_violation,
};
use crate::domain::event::EventKind;
use crate::domain::{Artifact, ArtifactLink, Error, NameHolder, Result, Scope, Timestamp};
use sqlx::{AssertSqlSafe, Row};

/// The artifact columns qualified by the alias `a`, for statements that join links.
pub(super) fn joined_columns() -> String {
    ARTIFACT_COLUMNS
        .split(',')
        .map(|column| format!("a.{}", column.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The advisory lock of one type and name in one project.
fn name_lock(scope: &Scope, artifact_type: &str, name: &str) -> i64 {
    let mut hasher = blake3::Hasher::new();
    for part in [
        "artifact-name",
        &scope.tenant,
        &scope.project,
        artifact_type,
        name,
    ] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    i64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("eight bytes"))
}

impl Catalog {
    /// Holds, until the transaction ends, the right to give `name` of `artifact_type` to an
    /// artifact or a link in `scope`.
    pub(super) async fn lock_name(
        &self,
        tx: &mut Tx,
        scope: &Scope,
        artifact_type: &str,
        name: &str,
    ) -> Result<()> {
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(name_lock(scope, artifact_type, name))
                .execute(&mut **tx)
                .await
                .map_err(|e| db_error("locking an artifact name", e))?;
        }
        Ok(())
    }

    /// What holds a type and name in a project, if anything.
    pub async fn name_holder(
        &self,
        scope: &Scope,
        artifact_type: &str,
        name: &str,
    ) -> Result<Option<NameHolder>> {
        let mut connection = self
            .pool
            .acquire()
            .await
            .map_err(|e| db_error("reading an artifact name", e))?;
        name_holder_on(&mut connection, scope, artifact_type, name).await
    }

    /// The link through which `artifact_id` is visible in `scope`, with the artifact; only
    /// while the artifact is live.
    pub(super) async fn linked_artifact(
        &self,
        scope: &Scope,
        condition: &str,
        binds: &[&str],
    ) -> Result<Option<Artifact>> {
        let sql = format!(
            "SELECT {}, l.project AS link_project, l.linked_by AS link_by, l.linked_at AS link_at \
             FROM artifact_links l JOIN artifacts a ON a.id = l.target_id \
             WHERE l.tenant = $1 AND l.project = $2 AND a.deleted_at IS NULL AND {condition}",
            joined_columns()
        );
        let mut query = sqlx::query_as::<_, SeenArtifactRecord>(AssertSqlSafe(sql))
            .bind(&scope.tenant)
            .bind(&scope.project);
        for value in binds {
            query = query.bind(*value);
        }
        let found = query
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("reading a linked artifact", e))?;
        Ok(found.map(Artifact::from))
    }

    /// A live artifact of `scope` or linked into it.
    pub async fn seen_artifact(&self, scope: &Scope, artifact_id: &str) -> Result<Option<Artifact>> {
        if let Some(own) = self.artifact_by_id(scope, artifact_id, false).await? {
            return Ok(Some(own));
        }
        self.linked_artifact(scope, "l.target_id = $3", &[artifact_id])
            .await
    }

    /// A live artifact by id anywhere in the tenant: for derived data, which follows an
    /// artifact into every project that shows it.
    pub async fn live_artifact(&self, tenant: &str, artifact_id: &str) -> Result<Option<Artifact>> {
        let sql = format!(
            "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE id = $1 AND tenant = $2 AND deleted_at IS NULL"
        );
        let found: Option<super::ArtifactRecord> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(artifact_id)
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("reading an artifact", e))?;
        Ok(found.map(Artifact::from))
    }

    /// Links a live artifact into another project of its tenant.
    pub async fn link_artifact(&self, into: &Scope, origin: &Artifact, actor: &str, now: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        self.lock_name(&mut tx, into, &origin.artifact_type, &origin.name)
            .await?;
        // The insert comes first so that SQLite takes its write lock before reading.
        let inserted = sqlx::query(
            "INSERT INTO artifact_links (tenant, project, artifact_type, name, target_id, linked_by, linked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&into.tenant)
        .bind(&into.project)
        .bind(&origin.artifact_type)
        .bind(&origin.name)
        .bind(origin.id.as_str())
        .bind(actor)
        .bind(now)
        .execute(&mut *tx)
        .await;
        if let Err(error) = inserted {
            drop(tx);
            if !is_unique_violation(&error) {
                return Err(db_error("linking an artifact", error));
            }
            return Err(
                match self
                    .name_holder(into, &origin.artifact_type, &origin.name)
                    .await?
                {
                    Some(NameHolder::Link { artifact_id, .. }) if artifact_id == origin.id.as_str() => {
                        Error::AlreadyExists(format!(
                            "artifact {:?} is already linked into {into}",
                            origin.id.as_str()
                        ))
                    }
                    Some(holder) => holder.conflict(into, &origin.artifact_type, &origin.name),
                    None => Error::Aborted(format!(
                        "a link into {into} changed while artifact {:?} was being linked; retry",
                        origin.id.as_str()
                    )),
                },
            );
        }
        let own = sqlx::query(
            "SELECT deleted_at FROM artifacts WHERE tenant = $1 AND project = $2 AND artifact_type = $3 AND name = $4",
        )
        .bind(&into.tenant)
        .bind(&into.project)
        .bind(&origin.artifact_type)
        .bind(&origin.name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| db_error("checking an artifact name", e))?;
        if let Some(row) = own {
            let deleted: Option<i64> = row
                .try_get(0)
                .map_err(|e| db_error("checking an artifact name", e))?;
            drop(tx);
            let holder = if deleted.is_some() {
                NameHolder::DeletedArtifact
            } else {
                NameHolder::Artifact
            };
            return Err(holder.conflict(into, &origin.artifact_type, &origin.name));
        }
        let live: Option<Option<i64>> = sqlx::query_scalar("SELECT deleted_at FROM artifacts WHERE id = $1")
            .bind(origin.id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| db_error("checking the linked artifact", e))?;
        match live {
            None => return Err(artifact_not_found(&origin.scope, &origin.id)),
            Some(Some(_)) => {
                return Err(Error::FailedPrecondition(format!(
                    "artifact {:?} is deleted; restore it before linking it",
                    origin.id.as_str()
                )));
            }
            Some(None) => {}
        }
        let detail = serde_json::json!({ "origin_project": origin.scope.project });
        self.write_event_with(
            &mut tx,
            EventKind::ArtifactLinked,
            into,
            &origin.id,
            "",
            now,
            &detail,
        )
        .await?;
        tx.commit().await.map_err(|e| db_error("committing", e))?;
        self.announce_commit();
        Ok(())
    }

    /// Removes the link of `artifact_id` into `scope`; the artifact itself is untouched.
    pub async fn unlink_artifact(&self, scope: &Scope, artifact_id: &str, now: i64) -> Result<String> {
        let mut tx = self.begin_write().await?;
        let origin: Option<String> = sqlx::query_scalar(
            "DELETE FROM artifact_links WHERE tenant = $1 AND project = $2 AND target_id = $3 \
             RETURNING (SELECT project FROM artifacts WHERE id = target_id)",
        )
        .bind(&scope.tenant)
        .bind(&scope.project)
        .bind(artifact_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| db_error("unlinking an artifact", e))?;
        let Some(origin) = origin else {
            drop(tx);
            return Err(Error::not_found(format!(
                "artifact {artifact_id:?} is not linked into {scope}"
            )));
        };
        let detail = serde_json::json!({ "origin_project": origin });
        self.write_event_with(
            &mut tx,
            EventKind::ArtifactUnlinked,
            scope,
            artifact_id,
            "",
            now,
            &detail,
        )
        .await?;
        tx.commit().await.map_err(|e| db_error("committing", e))?;
        self.announce_commit();
        Ok(origin)
    }

    /// Every project an artifact is linked into, by project.
    pub async fn links_of(&self, artifact_id: &str) -> Result<Vec<ArtifactLink>> {
        let rows = sqlx::query(
            "SELECT tenant, project, linked_by, linked_at FROM artifact_links WHERE target_id = $1 ORDER BY project",
        )
        .bind(artifact_id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing links", e))?;
        rows.iter()
            .map(|row| {
                Ok(ArtifactLink {
                    scope: Scope::new(row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?),
                    linked_by: row.try_get(2)?,
                    linked_at: Timestamp(row.try_get(3)?),
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(|e| db_error("listing links", e))
    }
}

/// What holds a type and name in a project: its own artifact (live or deleted) or a link.
pub(super) async fn name_holder_on(
    connection: &mut sqlx::AnyConnection,
    scope: &Scope,
    artifact_type: &str,
    name: &str,
) -> Result<Option<NameHolder>> {
    let own: Option<Option<i64>> = sqlx::query_scalar(
        "SELECT deleted_at FROM artifacts WHERE tenant = $1 AND project = $2 AND artifact_type = $3 AND name = $4",
    )
    .bind(&scope.tenant)
    .bind(&scope.project)
    .bind(artifact_type)
    .bind(name)
    .fetch_optional(&mut *connection)
    .await
    .map_err(|e| db_error("reading an artifact name", e))?;
    if let Some(deleted) = own {
        return Ok(Some(if deleted.is_some() {
            NameHolder::DeletedArtifact
        } else {
            NameHolder::Artifact
        }));
    }
    link_holder_on(connection, scope, artifact_type, name).await
}

/// The link that holds a type and name in a project, if one does.
pub(super) async fn link_holder_on(
    connection: &mut sqlx::AnyConnection,
    scope: &Scope,
    artifact_type: &str,
    name: &str,
) -> Result<Option<NameHolder>> {
    let link = sqlx::query(
        "SELECT l.target_id, a.project FROM artifact_links l JOIN artifacts a ON a.id = l.target_id \
         WHERE l.tenant = $1 AND l.project = $2 AND l.artifact_type = $3 AND l.name = $4",
    )
    .bind(&scope.tenant)
    .bind(&scope.project)
    .bind(artifact_type)
    .bind(name)
    .fetch_optional(&mut *connection)
    .await
    .map_err(|e| db_error("reading an artifact name", e))?;
    link.map(|row| {
        Ok(NameHolder::Link {
            artifact_id: row.try_get(0)?,
            origin: Scope::new(scope.tenant.clone(), row.try_get::<String, _>(1)?),
        })
    })
    .transpose()
    .map_err(|e: sqlx::Error| db_error("reading an artifact name", e))
}
