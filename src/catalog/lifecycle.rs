//! Lifecycle transitions and aliases. Every change here first locks the artifact's row (an
//! UPDATE that changes nothing but takes the lock, and in SQLite the write lock), so changes
//! to one artifact's versions and aliases, and its deletion, happen one at a time and each
//! reads the state the previous one committed.

use super::{
    AliasRecord, Catalog, TransitionRecord, VERSION_COLUMNS, VersionRecord, artifact_not_found, db_error,
};
use crate::domain::event::EventKind;
use crate::domain::lifecycle::LATEST_APPROVED;
use crate::domain::{
    Alias, ArtifactVersion, Error, LifecycleState, Result, Scope, Timestamp, Transition, VersionRef,
};
use serde_json::json;
use sqlx::AssertSqlSafe;
use std::collections::HashMap;

use super::Tx;

/// Appends one transition to a version's history.
pub(super) async fn record_transition(
    tx: &mut Tx,
    artifact_id: &str,
    version: &str,
    transition: &Transition,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO version_transitions (artifact_id, version, from_state, to_state, actor, reason, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(artifact_id)
    .bind(version)
    .bind(transition.from.map(LifecycleState::as_str))
    .bind(transition.to.as_str())
    .bind(&transition.actor)
    .bind(&transition.reason)
    .bind(transition.at.as_micros())
    .execute(&mut **tx)
    .await
    .map_err(|e| db_error("recording a transition", e))?;
    Ok(())
}

fn version_not_found(artifact_id: &str, version: &str) -> Error {
    Error::not_found(format!("version {version} of artifact {artifact_id:?} not found"))
}

impl Catalog {
    /// Begins a transaction holding the live artifact's row lock; NOT_FOUND when there is no
    /// live artifact with that id in the scope.
    pub(super) async fn lock_artifact(&self, scope: &Scope, artifact_id: &str) -> Result<Tx> {
        let mut tx = self.begin_write().await?;
        let locked = sqlx::query(
            "UPDATE artifacts SET updated_at = updated_at \
             WHERE id = $1 AND tenant = $2 AND project = $3 AND deleted_at IS NULL",
        )
        .bind(artifact_id)
        .bind(&scope.tenant)
        .bind(&scope.project)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("locking an artifact", e))?
        .rows_affected();
        if locked == 0 {
            return Err(artifact_not_found(scope, artifact_id));
        }
        Ok(tx)
    }

    /// Moves a version from its current state to `target` when the table allows it and, if
    /// `expected` is given, only from that state. The refusal names the current state and
    /// where it may go; nothing is written then. An alias or "the latest" is resolved under
    /// the artifact's lock, so a concurrent alias move or new version cannot redirect it.
    #[allow(clippy::too_many_arguments)]
    pub async fn transition(
        &self,
        scope: &Scope,
        artifact_id: &str,
        requested: VersionRef<'_>,
        expected: Option<LifecycleState>,
        target: LifecycleState,
        actor: &str,
        reason: &str,
        now: i64,
    ) -> Result<(ArtifactVersion, Transition)> {
        let mut tx = self.lock_artifact(scope, artifact_id).await?;
        let version = resolve_locked(&mut tx, artifact_id, requested).await?;
        let version = version.as_str();
        let current: Option<String> = sqlx::query_scalar(
            "SELECT state FROM versions WHERE artifact_id = $1 AND version = $2 AND deleted_at IS NULL",
        )
        .bind(artifact_id)
        .bind(version)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| db_error("reading a version's state", e))?;
        let current = current.ok_or_else(|| version_not_found(artifact_id, version))?;
        let current = LifecycleState::parse("state", &current)?;
        let subject = format!("version {version}");
        if let Some(expected) = expected
            && expected != current
        {
            let onward = current
                .allowed_targets()
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Error::FailedPrecondition(format!(
                "{subject} is {current}, not {expected} as expected; from {current} it may move to {onward}"
            )));
        }
        if !current.may_move_to(target) {
            return Err(current.refusal(&subject, target));
        }
        sqlx::query("UPDATE versions SET state = $1 WHERE artifact_id = $2 AND version = $3 AND state = $4")
            .bind(target.as_str())
            .bind(artifact_id)
            .bind(version)
            .bind(current.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("changing a version's state", e))?;
        sqlx::query("UPDATE artifacts SET updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(artifact_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("updating an artifact", e))?;
        let transition = Transition {
            from: Some(current),
            to: target,
            actor: actor.to_owned(),
            reason: reason.to_owned(),
            at: Timestamp(now),
        };
        record_transition(&mut tx, artifact_id, version, &transition).await?;
        let detail = json!({ "from": current.as_str(), "to": target.as_str(), "reason": reason });
        self.write_event_with(
            &mut tx,
            EventKind::VersionTransitioned,
            scope,
            artifact_id,
            version,
            now,
            &detail,
        )
        .await?;
        tx.commit().await.map_err(|e| db_error("committing", e))?;
        self.announce_commit();
        let version = self
            .version(artifact_id, version)
            .await?
            .ok_or_else(|| Error::internal("transitioned version vanished"))?;
        Ok((version, transition))
    }

    /// The transitions of the given versions of an artifact, oldest first per version.
    pub async fn transitions(
        &self,
        artifact_id: &str,
        versions: &[String],
    ) -> Result<HashMap<String, Vec<Transition>>> {
        let mut found: HashMap<String, Vec<Transition>> = HashMap::new();
        for batch in versions.chunks(super::BATCH_ROWS) {
            let sql = format!(
                "SELECT version, from_state, to_state, actor, reason, at FROM version_transitions \
                 WHERE artifact_id = {} AND version IN ({}) ORDER BY id",
                self.dialect.placeholders(1, 1),
                self.dialect.placeholders(2, super::in_list_len(batch.len()))
            );
            let mut query = sqlx::query_as::<_, TransitionRecord>(AssertSqlSafe(sql)).bind(artifact_id);
            for version in super::padded(batch) {
                query = query.bind(version);
            }
            let rows = query
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error("reading transitions", e))?;
            for row in rows {
                found.entry(row.version.clone()).or_default().push(row.into());
            }
        }
        Ok(found)
    }

    /// The highest approved version (versions only ever increase, so the newest).
    pub async fn latest_approved(&self, artifact_id: &str) -> Result<Option<ArtifactVersion>> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM versions WHERE artifact_id = $1 AND state = 'approved' \
             AND deleted_at IS NULL ORDER BY seq DESC LIMIT 1"
        );
        let row: Option<VersionRecord> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(artifact_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("reading the latest approved version", e))?;
        Ok(row.map(Into::into))
    }

    /// The version an alias points at: a set alias, or the maintained `latest-approved`.
    pub async fn alias_target(&self, artifact_id: &str, name: &str) -> Result<Option<String>> {
        if name == LATEST_APPROVED {
            return Ok(self.latest_approved(artifact_id).await?.map(|v| v.version));
        }
        sqlx::query_scalar("SELECT version FROM aliases WHERE artifact_id = $1 AND name = $2")
            .bind(artifact_id)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("reading an alias", e))
    }

    /// An artifact's aliases ordered by name, `latest-approved` among them when a version is
    /// approved.
    pub async fn aliases(&self, artifact_id: &str) -> Result<Vec<Alias>> {
        let rows: Vec<AliasRecord> = sqlx::query_as(
            "SELECT name, version, updated_by, updated_at FROM aliases WHERE artifact_id = $1 ORDER BY name",
        )
        .bind(artifact_id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing aliases", e))?;
        let mut aliases: Vec<Alias> = rows.into_iter().map(Into::into).collect();
        if let Some(approved) = self.latest_approved(artifact_id).await? {
            let at = self
                .transitions(artifact_id, std::slice::from_ref(&approved.version))
                .await?
                .remove(&approved.version)
                .and_then(|history| {
                    history
                        .into_iter()
                        .rev()
                        .find(|t| t.to == LifecycleState::Approved)
                });
            aliases.push(Alias {
                name: LATEST_APPROVED.to_owned(),
                version: approved.version,
                updated_by: at.as_ref().map(|t| t.actor.clone()).unwrap_or_default(),
                updated_at: at.map(|t| t.at).unwrap_or(approved.created_at),
                maintained: true,
            });
            aliases.sort_by(|a, b| a.name.cmp(&b.name));
        }
        Ok(aliases)
    }

    /// Points `name` at `version`. `expected`: `Some("")` when the alias must not exist yet,
    /// `Some(v)` when it must point at `v` now; a mismatch names where it points.
    #[allow(clippy::too_many_arguments)]
    pub async fn set_alias(
        &self,
        scope: &Scope,
        artifact_id: &str,
        name: &str,
        version: &str,
        expected: Option<&str>,
        actor: &str,
        now: i64,
    ) -> Result<Alias> {
        let mut tx = self.lock_artifact(scope, artifact_id).await?;
        let exists: Option<String> = sqlx::query_scalar(
            "SELECT version FROM versions WHERE artifact_id = $1 AND version = $2 AND deleted_at IS NULL",
        )
        .bind(artifact_id)
        .bind(version)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| db_error("reading a version", e))?;
        if exists.is_none() {
            return Err(version_not_found(artifact_id, version));
        }
        let current = current_alias(&mut tx, artifact_id, name).await?;
        check_expected(name, current.as_deref(), expected)?;
        let statement = if current.is_some() {
            "UPDATE aliases SET version = $3, updated_by = $4, updated_at = $5 WHERE artifact_id = $1 AND name = $2"
        } else {
            "INSERT INTO aliases (artifact_id, name, version, updated_by, updated_at) VALUES ($1, $2, $3, $4, $5)"
        };
        sqlx::query(statement)
            .bind(artifact_id)
            .bind(name)
            .bind(version)
            .bind(actor)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("setting an alias", e))?;
        let detail = json!({ "alias": name, "from": current, "to": version });
        self.write_event_with(
            &mut tx,
            EventKind::AliasMoved,
            scope,
            artifact_id,
            version,
            now,
            &detail,
        )
        .await?;
        tx.commit().await.map_err(|e| db_error("committing", e))?;
        self.announce_commit();
        Ok(Alias {
            name: name.to_owned(),
            version: version.to_owned(),
            updated_by: actor.to_owned(),
            updated_at: Timestamp(now),
            maintained: false,
        })
    }

    /// Removes an alias; with `expected`, only while it points there.
    pub async fn delete_alias(
        &self,
        scope: &Scope,
        artifact_id: &str,
        name: &str,
        expected: Option<&str>,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.lock_artifact(scope, artifact_id).await?;
        let Some(current) = current_alias(&mut tx, artifact_id, name).await? else {
            return Err(Error::not_found(format!(
                "artifact {artifact_id:?} has no alias {name:?}"
            )));
        };
        check_expected(name, Some(&current), expected)?;
        sqlx::query("DELETE FROM aliases WHERE artifact_id = $1 AND name = $2")
            .bind(artifact_id)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("deleting an alias", e))?;
        let detail = json!({ "alias": name, "from": current, "to": null });
        self.write_event_with(
            &mut tx,
            EventKind::AliasMoved,
            scope,
            artifact_id,
            "",
            now,
            &detail,
        )
        .await?;
        tx.commit().await.map_err(|e| db_error("committing", e))?;
        self.announce_commit();
        Ok(())
    }
}

/// The version `requested` names, read inside a transaction holding the artifact's lock.
async fn resolve_locked(tx: &mut Tx, artifact_id: &str, requested: VersionRef<'_>) -> Result<String> {
    let found: Option<String> = match requested {
        VersionRef::Version(version) => return Ok(version.to_owned()),
        VersionRef::Latest => sqlx::query_scalar("SELECT latest_version FROM artifacts WHERE id = $1")
            .bind(artifact_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(|e| db_error("reading the latest version", e))?,
        VersionRef::Alias(LATEST_APPROVED) => sqlx::query_scalar(
            "SELECT version FROM versions WHERE artifact_id = $1 AND state = 'approved' AND deleted_at IS NULL ORDER BY seq DESC LIMIT 1",
        )
        .bind(artifact_id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(|e| db_error("reading the latest approved version", e))?,
        VersionRef::Alias(name) => current_alias(tx, artifact_id, name).await?,
    };
    found.ok_or_else(|| match requested {
        VersionRef::Alias(LATEST_APPROVED) => {
            Error::not_found(format!("artifact {artifact_id:?} has no approved version"))
        }
        VersionRef::Alias(name) => {
            Error::not_found(format!("version: artifact {artifact_id:?} has no alias {name:?}"))
        }
        _ => Error::internal(format!("artifact {artifact_id:?} has no latest version")),
    })
}

async fn current_alias(tx: &mut Tx, artifact_id: &str, name: &str) -> Result<Option<String>> {
    sqlx::query_scalar("SELECT version FROM aliases WHERE artifact_id = $1 AND name = $2")
        .bind(artifact_id)
        .bind(name)
        .fetch_optional(&mut **tx)
        .await
        .map_err(|e| db_error("reading an alias", e))
}

fn check_expected(name: &str, current: Option<&str>, expected: Option<&str>) -> Result<()> {
    match (expected, current) {
        (None, _) => Ok(()),
        (Some(""), None) => Ok(()),
        (Some(""), Some(now)) => Err(Error::FailedPrecondition(format!(
            "alias {name:?} exists already and points at {now}; nothing was changed"
        ))),
        (Some(wanted), Some(now)) if wanted == now => Ok(()),
        (Some(wanted), now) => Err(Error::FailedPrecondition(format!(
            "alias {name:?} points at {}, not {wanted}; nothing was changed",
            now.unwrap_or("nothing (it does not exist)")
        ))),
    }
}
