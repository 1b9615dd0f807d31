//! Retention policies and their runs, legal holds, versions in the trash, and purging.
//! Every change to an artifact's versions locks the artifact's row first (as transitions
//! do), so a policy's action, a caller's delete, an alias move and a new hold on the same
//! artifact apply one at a time, and each re-checks what the previous one committed.

use super::{Catalog, VERSION_COLUMNS, VersionRecord, artifact_not_found, db_error, is_unique_violation};
use crate::domain::event::EventKind;
use crate::domain::retention::{
    ArtifactFacts, CompiledPolicy, Decision, LegalHold, PolicySpec, RetentionPolicy, RetentionRun, TrashItem,
    Verdict, VersionFacts,
};
use crate::domain::{ArtifactVersion, Error, LifecycleState, Result, Scope, Timestamp, Transition};
use serde_json::json;
use sqlx::AssertSqlSafe;
use std::collections::HashMap;

use super::Tx;

const POLICY_COLUMNS: &str =
    "id, tenant, project, name, spec, revision, created_by, created_at, updated_at, last_run_at";

type PolicyRow = (
    String,
    String,
    String,
    String,
    String,
    i64,
    String,
    i64,
    i64,
    Option<i64>,
);

fn policy_from(row: PolicyRow) -> Result<RetentionPolicy> {
    let (id, tenant, project, name, spec, revision, created_by, created_at, updated_at, last_run_at) = row;
    let spec: PolicySpec = serde_json::from_str(&spec)
        .map_err(|e| Error::internal(format!("stored retention policy {id} does not parse: {e}")))?;
    Ok(RetentionPolicy {
        id,
        tenant,
        project,
        name,
        spec,
        revision,
        created_by,
        created_at,
        updated_at,
        last_run_at,
    })
}

fn policy_not_found(scope: &Scope, id: &str) -> Error {
    Error::not_found(format!(
        "retention policy {id:?} not found in tenant {:?} project {:?}",
        scope.tenant, scope.project
    ))
}

/// What a purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub artifacts: u64,
    pub versions: u64,
}

/// Why a version may not leave the live set now, if it may not. Read under the artifact's lock.
async fn refusal_to_remove(
    tx: &mut Tx,
    artifact_id: &str,
    version: &str,
    expected_state: Option<LifecycleState>,
    allow_approved: bool,
) -> Result<Option<String>> {
    let row: Option<(String, Option<i64>)> =
        sqlx::query_as("SELECT state, deleted_at FROM versions WHERE artifact_id = $1 AND version = $2")
            .bind(artifact_id)
            .bind(version)
            .fetch_optional(&mut **tx)
            .await
            .map_err(|e| db_error("reading a version", e))?;
    let Some((state, deleted_at)) = row else {
        return Ok(Some(format!("version {version} no longer exists")));
    };
    if deleted_at.is_some() {
        return Ok(Some(format!("version {version} is already in the trash")));
    }
    let state = LifecycleState::parse("state", &state)?;
    if let Some(expected) = expected_state
        && expected != state
    {
        return Ok(Some(format!("version {version} is now {state}, not {expected}")));
    }
    if state == LifecycleState::Approved && !allow_approved {
        return Ok(Some(format!("version {version} is approved; archive it first")));
    }
    let latest: Option<String> = sqlx::query_scalar("SELECT latest_version FROM artifacts WHERE id = $1")
        .bind(artifact_id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(|e| db_error("reading an artifact", e))?;
    if latest.as_deref() == Some(version) {
        return Ok(Some(format!(
            "version {version} is the artifact's latest; delete the artifact instead"
        )));
    }
    let alias: Option<String> = sqlx::query_scalar(
        "SELECT name FROM aliases WHERE artifact_id = $1 AND version = $2 ORDER BY name LIMIT 1",
    )
    .bind(artifact_id)
    .bind(version)
    .fetch_optional(&mut **tx)
    .await
    .map_err(|e| db_error("reading aliases", e))?;
    if let Some(alias) = alias {
        return Ok(Some(format!(
            "alias {alias:?} points to version {version}; move or delete the alias first"
        )));
    }
    if let Some(hold) = hold_on(tx, artifact_id, Some(version)).await? {
        return Ok(Some(hold));
    }
    Ok(None)
}

/// The legal hold that covers the artifact (or, with `version`, that version), described.
pub(super) async fn hold_on(tx: &mut Tx, artifact_id: &str, version: Option<&str>) -> Result<Option<String>> {
    let held: Option<(String, String)> = sqlx::query_as(
        "SELECT version, reason FROM legal_holds WHERE artifact_id = $1 AND (version = '' OR version = $2 OR $3 = 1) \
         ORDER BY version LIMIT 1",
    )
    .bind(artifact_id)
    .bind(version.unwrap_or(""))
    .bind(i64::from(version.is_none()))
    .fetch_optional(&mut **tx)
    .await
    .map_err(|e| db_error("reading legal holds", e))?;
    Ok(held.map(|(held_version, reason)| {
        let what = if held_version.is_empty() {
            "the artifact".to_owned()
        } else {
            format!("version {held_version}")
        };
        format!("{what} is under a legal hold ({reason})")
    }))
}

/// One live artifact's facts for a policy, read under its lock.
async fn artifact_facts_locked(tx: &mut Tx, artifact_id: &str) -> Result<ArtifactFacts> {
    let (artifact_type, name, latest_version): (String, String, String) =
        sqlx::query_as("SELECT artifact_type, name, latest_version FROM artifacts WHERE id = $1")
            .bind(artifact_id)
            .fetch_one(&mut **tx)
            .await
            .map_err(|e| db_error("reading an artifact", e))?;
    let versions: Vec<(String, i64, String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT version, seq, state, created_at, last_read_at FROM versions WHERE artifact_id = $1 AND deleted_at IS NULL",
    )
    .bind(artifact_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(|e| db_error("reading versions", e))?;
    let aliases: Vec<(String, String)> =
        sqlx::query_as("SELECT version, name FROM aliases WHERE artifact_id = $1 ORDER BY name")
            .bind(artifact_id)
            .fetch_all(&mut **tx)
            .await
            .map_err(|e| db_error("reading aliases", e))?;
    let holds: Vec<String> = sqlx::query_scalar("SELECT version FROM legal_holds WHERE artifact_id = $1")
        .bind(artifact_id)
        .fetch_all(&mut **tx)
        .await
        .map_err(|e| db_error("reading legal holds", e))?;
    let mut facts = ArtifactFacts {
        artifact_id: artifact_id.to_owned(),
        artifact_type,
        name,
        latest_version,
        held: holds.iter().any(String::is_empty),
        versions: Vec::new(),
    };
    for (version, seq, state, created_at, last_read_at) in versions {
        facts.versions.push(VersionFacts {
            aliases: aliases
                .iter()
                .filter(|(target, _)| *target == version)
                .map(|(_, alias)| alias.clone())
                .collect(),
            held: holds.contains(&version),
            version,
            seq,
            state: LifecycleState::parse("state", &state)?,
            created_at,
            last_read_at,
        });
    }
    Ok(facts)
}

impl Catalog {
    /// Begins a transaction holding the row lock of an artifact of the scope, live or in the
    /// trash (SQLite's write lock: a concurrent restore or delete waits for this one).
    async fn lock_any_artifact(&self, scope: &Scope, artifact_id: &str) -> Result<Tx> {
        let mut tx = self.begin_write().await?;
        let in_scope = sqlx::query(
            "UPDATE artifacts SET updated_at = updated_at WHERE id = $1 AND tenant = $2 AND project = $3",
        )
        .bind(artifact_id)
        .bind(&scope.tenant)
        .bind(&scope.project)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("locking an artifact", e))?
        .rows_affected();
        if in_scope == 0 {
            return Err(artifact_not_found(scope, artifact_id));
        }
        Ok(tx)
    }

    // ---- policies ------------------------------------------------------------------------

    pub async fn insert_retention_policy(&self, policy: &RetentionPolicy) -> Result<()> {
        let _turn = self.write_turn().await;
        let spec = serde_json::to_string(&policy.spec).map_err(|e| Error::internal(e.to_string()))?;
        let inserted = sqlx::query(
            "INSERT INTO retention_policies (id, tenant, project, name, spec, revision, created_by, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&policy.id)
        .bind(&policy.tenant)
        .bind(&policy.project)
        .bind(&policy.name)
        .bind(spec)
        .bind(policy.revision)
        .bind(&policy.created_by)
        .bind(policy.created_at)
        .bind(policy.updated_at)
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => Ok(()),
            Err(error) if is_unique_violation(&error) => Err(Error::AlreadyExists(format!(
                "a retention policy named {:?} already exists in project {:?}",
                policy.name, policy.project
            ))),
            Err(error) => Err(db_error("storing a retention policy", error)),
        }
    }

    /// Replaces a policy's name and spec if its revision is still `expected_revision` (when
    /// given); returns the policy as stored.
    pub async fn update_retention_policy(
        &self,
        scope: &Scope,
        id: &str,
        expected_revision: Option<i64>,
        name: &str,
        spec: &PolicySpec,
        now: i64,
    ) -> Result<RetentionPolicy> {
        let _turn = self.write_turn().await;
        let spec_json = serde_json::to_string(spec).map_err(|e| Error::internal(e.to_string()))?;
        let changed = sqlx::query(
            "UPDATE retention_policies SET name = $1, spec = $2, revision = revision + 1, updated_at = $3 \
             WHERE id = $4 AND tenant = $5 AND project = $6 AND ($7 < 0 OR revision = $7)",
        )
        .bind(name)
        .bind(spec_json)
        .bind(now)
        .bind(id)
        .bind(&scope.tenant)
        .bind(&scope.project)
        .bind(expected_revision.unwrap_or(-1))
        .execute(&self.pool)
        .await;
        let changed = match changed {
            Ok(done) => done.rows_affected(),
            Err(error) if is_unique_violation(&error) => {
                return Err(Error::AlreadyExists(format!(
                    "a retention policy named {name:?} already exists in project {:?}",
                    scope.project
                )));
            }
            Err(error) => return Err(db_error("updating a retention policy", error)),
        };
        let current = self
            .retention_policy(scope, id)
            .await?
            .ok_or_else(|| policy_not_found(scope, id))?;
        if changed == 0 {
            return Err(Error::Aborted(format!(
                "retention policy {id:?} is at revision {}, not {} as expected; nothing was changed",
                current.revision,
                expected_revision.unwrap_or_default()
            )));
        }
        Ok(current)
    }

    pub async fn delete_retention_policy(&self, scope: &Scope, id: &str) -> Result<()> {
        let _turn = self.write_turn().await;
        let deleted =
            sqlx::query("DELETE FROM retention_policies WHERE id = $1 AND tenant = $2 AND project = $3")
                .bind(id)
                .bind(&scope.tenant)
                .bind(&scope.project)
                .execute(&self.pool)
                .await
                .map_err(|e| db_error("deleting a retention policy", e))?
                .rows_affected();
        if deleted == 0 {
            return Err(policy_not_found(scope, id));
        }
        Ok(())
    }

    pub async fn retention_policy(&self, scope: &Scope, id: &str) -> Result<Option<RetentionPolicy>> {
        let row: Option<PolicyRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {POLICY_COLUMNS} FROM retention_policies WHERE id = $1 AND tenant = $2 AND project = $3"
        )))
        .bind(id)
        .bind(&scope.tenant)
        .bind(&scope.project)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("reading a retention policy", e))?;
        row.map(policy_from).transpose()
    }

    pub async fn retention_policies(&self, scope: &Scope) -> Result<Vec<RetentionPolicy>> {
        let rows: Vec<PolicyRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {POLICY_COLUMNS} FROM retention_policies WHERE tenant = $1 AND project = $2 ORDER BY name"
        )))
        .bind(&scope.tenant)
        .bind(&scope.project)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing retention policies", e))?;
        rows.into_iter().map(policy_from).collect()
    }

    /// Every policy with a schedule, of every tenant.
    pub async fn scheduled_retention_policies(&self) -> Result<Vec<RetentionPolicy>> {
        let rows: Vec<PolicyRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {POLICY_COLUMNS} FROM retention_policies ORDER BY tenant, project, name"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing retention policies", e))?;
        let policies: Vec<RetentionPolicy> = rows.into_iter().map(policy_from).collect::<Result<_>>()?;
        Ok(policies
            .into_iter()
            .filter(|policy| policy.spec.schedule_seconds > 0)
            .collect())
    }

    /// Keeps a run's report; an execution also records when the policy last ran.
    pub async fn record_retention_run(&self, scope: &Scope, run: &RetentionRun) -> Result<()> {
        let report = serde_json::to_string(run).map_err(|e| Error::internal(e.to_string()))?;
        let mut tx = self.begin_write().await?;
        if !run.dry_run {
            sqlx::query("UPDATE retention_policies SET last_run_at = $1 WHERE id = $2")
                .bind(run.started_at)
                .bind(&run.policy_id)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error("recording a policy's run", e))?;
        }
        sqlx::query(
            "INSERT INTO retention_runs (id, policy_id, tenant, project, policy_revision, trigger, dry_run, started_at, finished_at, report) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&run.id)
        .bind(&run.policy_id)
        .bind(&scope.tenant)
        .bind(&scope.project)
        .bind(run.policy_revision)
        .bind(run.trigger.as_str())
        .bind(i64::from(run.dry_run))
        .bind(run.started_at)
        .bind(run.finished_at)
        .bind(report)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("recording a retention run", e))?;
        tx.commit().await.map_err(|e| db_error("committing", e))
    }

    /// The newest runs of a project's policies (one policy's when `policy_id` is given).
    pub async fn retention_runs(
        &self,
        scope: &Scope,
        policy_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RetentionRun>> {
        let reports: Vec<String> = sqlx::query_scalar(
            "SELECT report FROM retention_runs WHERE tenant = $1 AND project = $2 AND ($3 = '' OR policy_id = $3) \
             ORDER BY started_at DESC, id DESC LIMIT $4",
        )
        .bind(&scope.tenant)
        .bind(&scope.project)
        .bind(policy_id.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing retention runs", e))?;
        reports
            .iter()
            .map(|report| {
                serde_json::from_str(report)
                    .map_err(|e| Error::internal(format!("a stored retention run does not parse: {e}")))
            })
            .collect()
    }

    pub async fn retention_run(&self, scope: &Scope, id: &str) -> Result<Option<RetentionRun>> {
        let report: Option<String> = sqlx::query_scalar(
            "SELECT report FROM retention_runs WHERE id = $1 AND tenant = $2 AND project = $3",
        )
        .bind(id)
        .bind(&scope.tenant)
        .bind(&scope.project)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("reading a retention run", e))?;
        report
            .map(|report| {
                serde_json::from_str(&report)
                    .map_err(|e| Error::internal(format!("a stored retention run does not parse: {e}")))
            })
            .transpose()
    }

    // ---- what policies decide on ---------------------------------------------------------

    /// Live artifacts of a project after `after_id`, `limit` of them, each with its versions
    /// outside the trash, their aliases and holds.
    pub async fn retention_facts(
        &self,
        scope: &Scope,
        after_id: &str,
        limit: u32,
    ) -> Result<Vec<ArtifactFacts>> {
        let artifacts: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT id, artifact_type, name, latest_version FROM artifacts \
             WHERE tenant = $1 AND project = $2 AND deleted_at IS NULL AND id > $3 ORDER BY id LIMIT $4",
        )
        .bind(&scope.tenant)
        .bind(&scope.project)
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing artifacts", e))?;
        let (Some(first), Some(last)) = (artifacts.first(), artifacts.last()) else {
            return Ok(Vec::new());
        };
        let (first, last) = (first.0.clone(), last.0.clone());
        let versions: Vec<(String, String, i64, String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT v.artifact_id, v.version, v.seq, v.state, v.created_at, v.last_read_at FROM versions v \
             JOIN artifacts a ON a.id = v.artifact_id \
             WHERE a.tenant = $1 AND a.project = $2 AND a.deleted_at IS NULL AND v.deleted_at IS NULL \
             AND v.artifact_id >= $3 AND v.artifact_id <= $4",
        )
        .bind(&scope.tenant)
        .bind(&scope.project)
        .bind(&first)
        .bind(&last)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing versions", e))?;
        let aliases: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT al.artifact_id, al.version, al.name FROM aliases al JOIN artifacts a ON a.id = al.artifact_id \
             WHERE a.tenant = $1 AND a.project = $2 AND al.artifact_id >= $3 AND al.artifact_id <= $4 ORDER BY al.name",
        )
        .bind(&scope.tenant)
        .bind(&scope.project)
        .bind(&first)
        .bind(&last)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing aliases", e))?;
        let holds: Vec<(String, String)> = sqlx::query_as(
            "SELECT artifact_id, version FROM legal_holds WHERE tenant = $1 AND project = $2 \
             AND artifact_id >= $3 AND artifact_id <= $4",
        )
        .bind(&scope.tenant)
        .bind(&scope.project)
        .bind(&first)
        .bind(&last)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing legal holds", e))?;
        let mut by_id: HashMap<String, ArtifactFacts> = artifacts
            .into_iter()
            .map(|(artifact_id, artifact_type, name, latest_version)| {
                (
                    artifact_id.clone(),
                    ArtifactFacts {
                        artifact_id,
                        artifact_type,
                        name,
                        latest_version,
                        held: false,
                        versions: Vec::new(),
                    },
                )
            })
            .collect();
        for (artifact_id, version, seq, state, created_at, last_read_at) in versions {
            if let Some(artifact) = by_id.get_mut(&artifact_id) {
                artifact.versions.push(VersionFacts {
                    version,
                    seq,
                    state: LifecycleState::parse("state", &state)?,
                    created_at,
                    last_read_at,
                    aliases: Vec::new(),
                    held: false,
                });
            }
        }
        for (artifact_id, version, name) in aliases {
            if let Some(target) = by_id
                .get_mut(&artifact_id)
                .and_then(|a| a.versions.iter_mut().find(|v| v.version == version))
            {
                target.aliases.push(name);
            }
        }
        for (artifact_id, version) in holds {
            let Some(artifact) = by_id.get_mut(&artifact_id) else {
                continue;
            };
            if version.is_empty() {
                artifact.held = true;
            } else if let Some(target) = artifact.versions.iter_mut().find(|v| v.version == version) {
                target.held = true;
            }
        }
        let mut facts: Vec<ArtifactFacts> = by_id.into_values().collect();
        facts.sort_by(|a, b| a.artifact_id.cmp(&b.artifact_id));
        Ok(facts)
    }

    /// Carries out one decision of a policy if what it was decided on still holds: the
    /// version is still in the state it was decided in, outside the trash, not the latest,
    /// without an alias or a hold. Returns why it was not carried out, if it was not.
    #[allow(clippy::too_many_arguments)]
    pub async fn apply_retention(
        &self,
        scope: &Scope,
        decision: &Decision,
        policy_name: &str,
        policy: &CompiledPolicy,
        planned_at: i64,
        actor: &str,
        now: i64,
    ) -> Result<Option<String>> {
        let expected = LifecycleState::parse("state", &decision.state)?;
        let mut tx = match self.lock_artifact(scope, &decision.artifact_id).await {
            Ok(tx) => tx,
            Err(Error::NotFound(_)) => return Ok(Some("the artifact is no longer live".into())),
            Err(error) => return Err(error),
        };
        // The whole policy again, on the artifact as it is under the lock (a version trashed
        // or read since the plan changes what `keep.latest` or `read_within_days` keep).
        let facts = artifact_facts_locked(&mut tx, &decision.artifact_id).await?;
        let now_decided = policy
            .evaluate(&facts, planned_at)
            .into_iter()
            .find(|d| d.version == decision.version);
        match now_decided {
            None => {
                return Ok(Some(format!(
                    "version {} is no longer outside the trash",
                    decision.version
                )));
            }
            Some(current) if current.verdict != decision.verdict => {
                return Ok(Some(format!(
                    "the policy now keeps version {} ({}: {})",
                    decision.version, current.rule, current.reason
                )));
            }
            Some(_) => {}
        }
        let allow = policy.spec.allow_approved || decision.verdict == Verdict::Archive;
        if let Some(refusal) = refusal_to_remove(
            &mut tx,
            &decision.artifact_id,
            &decision.version,
            Some(expected),
            allow,
        )
        .await?
        {
            return Ok(Some(refusal));
        }
        let reason = format!("retention policy {policy_name:?}: {}", decision.reason);
        match decision.verdict {
            Verdict::Keep => return Ok(Some("kept".into())),
            Verdict::Delete => {
                self.trash_version_locked(
                    &mut tx,
                    scope,
                    &decision.artifact_id,
                    &decision.version,
                    actor,
                    now,
                )
                .await?;
            }
            Verdict::Archive => {
                if !expected.may_move_to(LifecycleState::Archived) {
                    return Ok(Some(format!("{expected} versions cannot be archived")));
                }
                sqlx::query("UPDATE versions SET state = 'archived' WHERE artifact_id = $1 AND version = $2")
                    .bind(&decision.artifact_id)
                    .bind(&decision.version)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| db_error("archiving a version", e))?;
                let transition = Transition {
                    from: Some(expected),
                    to: LifecycleState::Archived,
                    actor: actor.to_owned(),
                    reason: reason.clone(),
                    at: Timestamp(now),
                };
                super::lifecycle::record_transition(
                    &mut tx,
                    &decision.artifact_id,
                    &decision.version,
                    &transition,
                )
                .await?;
                let detail = json!({ "from": expected.as_str(), "to": "archived", "reason": reason });
                self.write_event_with(
                    &mut tx,
                    EventKind::VersionTransitioned,
                    scope,
                    &decision.artifact_id,
                    &decision.version,
                    now,
                    &detail,
                )
                .await?;
            }
        }
        tx.commit().await.map_err(|e| db_error("committing", e))?;
        self.announce_commit();
        Ok(None)
    }

    async fn trash_version_locked(
        &self,
        tx: &mut Tx,
        scope: &Scope,
        artifact_id: &str,
        version: &str,
        actor: &str,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE versions SET deleted_at = $1, deleted_by = $2 WHERE artifact_id = $3 AND version = $4 AND deleted_at IS NULL",
        )
        .bind(now)
        .bind(actor)
        .bind(artifact_id)
        .bind(version)
        .execute(&mut **tx)
        .await
        .map_err(|e| db_error("moving a version to the trash", e))?;
        self.write_event(tx, EventKind::VersionDeleted, scope, artifact_id, version, now)
            .await
    }

    // ---- versions in the trash -----------------------------------------------------------

    /// Moves one version to the trash: never the latest, an approved one, one an alias
    /// points to, or one under a legal hold (the refusal says which).
    pub async fn delete_version(
        &self,
        scope: &Scope,
        artifact_id: &str,
        version: &str,
        actor: &str,
        now: i64,
    ) -> Result<ArtifactVersion> {
        let mut tx = self.lock_artifact(scope, artifact_id).await?;
        let exists: Option<i64> = sqlx::query_scalar(
            "SELECT seq FROM versions WHERE artifact_id = $1 AND version = $2 AND deleted_at IS NULL",
        )
        .bind(artifact_id)
        .bind(version)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| db_error("reading a version", e))?;
        if exists.is_none() {
            return Err(Error::not_found(format!(
                "version {version} of artifact {artifact_id:?} not found (or already in the trash)"
            )));
        }
        if let Some(refusal) = refusal_to_remove(&mut tx, artifact_id, version, None, false).await? {
            return Err(Error::FailedPrecondition(refusal));
        }
        self.trash_version_locked(&mut tx, scope, artifact_id, version, actor, now)
            .await?;
        tx.commit().await.map_err(|e| db_error("committing", e))?;
        self.announce_commit();
        self.version_in_any_state(artifact_id, version)
            .await?
            .ok_or_else(|| Error::internal("deleted version vanished"))
            .map(|(version, _)| version)
    }

    /// Takes a version deleted at or after `deleted_since` back out of the trash.
    pub async fn undelete_version(
        &self,
        scope: &Scope,
        artifact_id: &str,
        version: &str,
        deleted_since: i64,
        now: i64,
    ) -> Result<ArtifactVersion> {
        let mut tx = self.lock_artifact(scope, artifact_id).await?;
        let restored = sqlx::query(
            "UPDATE versions SET deleted_at = NULL, deleted_by = '' \
             WHERE artifact_id = $1 AND version = $2 AND deleted_at IS NOT NULL AND deleted_at >= $3",
        )
        .bind(artifact_id)
        .bind(version)
        .bind(deleted_since)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("restoring a version", e))?
        .rows_affected();
        if restored == 0 {
            let deleted_at: Option<Option<i64>> =
                sqlx::query_scalar("SELECT deleted_at FROM versions WHERE artifact_id = $1 AND version = $2")
                    .bind(artifact_id)
                    .bind(version)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| db_error("reading a version", e))?;
            return Err(match deleted_at {
                None => Error::not_found(format!("version {version} of artifact {artifact_id:?} not found")),
                Some(None) => Error::FailedPrecondition(format!("version {version} is not in the trash")),
                Some(Some(_)) => Error::FailedPrecondition(format!(
                    "version {version} was deleted longer ago than the retention period and can no longer be restored"
                )),
            });
        }
        self.write_event(
            &mut tx,
            EventKind::VersionRestored,
            scope,
            artifact_id,
            version,
            now,
        )
        .await?;
        tx.commit().await.map_err(|e| db_error("committing", e))?;
        self.announce_commit();
        self.version(artifact_id, version)
            .await?
            .ok_or_else(|| Error::internal("restored version vanished"))
    }

    /// A version whether or not it is in the trash, with when it was deleted.
    pub async fn version_in_any_state(
        &self,
        artifact_id: &str,
        version: &str,
    ) -> Result<Option<(ArtifactVersion, Option<i64>)>> {
        let sql = format!("SELECT {VERSION_COLUMNS} FROM versions WHERE artifact_id = $1 AND version = $2");
        let row: Option<VersionRecord> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(artifact_id)
            .bind(version)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("reading a version", e))?;
        let Some(row) = row else { return Ok(None) };
        let deleted_at: Option<i64> =
            sqlx::query_scalar("SELECT deleted_at FROM versions WHERE artifact_id = $1 AND version = $2")
                .bind(artifact_id)
                .bind(version)
                .fetch_one(&self.pool)
                .await
                .map_err(|e| db_error("reading a version", e))?;
        Ok(Some((row.into(), deleted_at)))
    }

    /// A project's trash, most recently deleted first: whole artifacts, and versions of live
    /// artifacts. Continues after `after` = (deleted_at, artifact id, version).
    pub async fn trash(
        &self,
        scope: &Scope,
        after: Option<(i64, String, String)>,
        limit: u32,
    ) -> Result<Vec<TrashItem>> {
        let (after_at, after_id, after_version) = after.unwrap_or((i64::MAX, String::new(), String::new()));
        let rows: Vec<(String, String, String, String, i64, i64, String)> = sqlx::query_as(
            "SELECT * FROM ( \
               SELECT a.id AS artifact_id, a.artifact_type AS artifact_type, a.name AS name, '' AS version, \
                      COALESCE((SELECT v.size FROM versions v WHERE v.artifact_id = a.id AND v.version = a.latest_version), 0) AS size, \
                      a.deleted_at AS deleted_at, a.deleted_by AS deleted_by \
               FROM artifacts a WHERE a.tenant = $1 AND a.project = $2 AND a.deleted_at IS NOT NULL \
               UNION ALL \
               SELECT a.id, a.artifact_type, a.name, v.version, v.size, v.deleted_at, v.deleted_by \
               FROM versions v JOIN artifacts a ON a.id = v.artifact_id \
               WHERE a.tenant = $1 AND a.project = $2 AND a.deleted_at IS NULL AND v.deleted_at IS NOT NULL \
             ) t \
             WHERE t.deleted_at < $3 OR (t.deleted_at = $3 AND (t.artifact_id > $4 OR (t.artifact_id = $4 AND t.version > $5))) \
             ORDER BY t.deleted_at DESC, t.artifact_id, t.version LIMIT $6",
        )
        .bind(&scope.tenant)
        .bind(&scope.project)
        .bind(after_at)
        .bind(&after_id)
        .bind(&after_version)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing the trash", e))?;
        Ok(rows
            .into_iter()
            .map(
                |(artifact_id, artifact_type, name, version, size, deleted_at, deleted_by)| TrashItem {
                    artifact_id,
                    artifact_type,
                    name,
                    version,
                    size: size.max(0) as u64,
                    deleted_at,
                    deleted_by,
                },
            )
            .collect())
    }

    /// Removes for good one artifact in the trash (`version` None) or one version in the
    /// trash, unless a legal hold covers it. Returns false when it is not in the trash.
    pub async fn purge(
        &self,
        scope: &Scope,
        artifact_id: &str,
        version: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        let mut tx = self.lock_any_artifact(scope, artifact_id).await?;
        if let Some(hold) = hold_on(&mut tx, artifact_id, version).await? {
            return Err(Error::FailedPrecondition(format!("not purged: {hold}")));
        }
        // The manifests and extracted documents of what goes, for their shared rows' counts.
        let going: Vec<(Vec<u8>, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT v.manifest, v.extracted_digest FROM versions v JOIN artifacts a ON a.id = v.artifact_id WHERE v.artifact_id = $1 \
             AND ($2 = '' AND a.deleted_at IS NOT NULL OR v.version = $2 AND v.deleted_at IS NOT NULL)",
        )
        .bind(artifact_id)
        .bind(version.unwrap_or(""))
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| db_error("reading the manifests of a purge", e))?;
        let removed = match version {
            None => sqlx::query("DELETE FROM artifacts WHERE id = $1 AND deleted_at IS NOT NULL")
                .bind(artifact_id)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error("purging an artifact", e))?
                .rows_affected(),
            Some(version) => sqlx::query(
                "DELETE FROM versions WHERE artifact_id = $1 AND version = $2 AND deleted_at IS NOT NULL",
            )
            .bind(artifact_id)
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("purging a version", e))?
            .rows_affected(),
        };
        if removed == 0 {
            return Ok(false);
        }
        let (manifests, digests): (Vec<Vec<u8>>, Vec<Option<Vec<u8>>>) = going.into_iter().unzip();
        self.release_manifests(&mut tx, &scope.tenant, &manifests).await?;
        self.release_extracted(&mut tx, &scope.tenant, digests.into_iter().flatten().collect())
            .await?;
        if version.is_none() {
            sqlx::query("DELETE FROM artifact_grants WHERE artifact_id = $1")
                .bind(artifact_id)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error("purging an artifact's grants", e))?;
        }
        let kind = if version.is_some() {
            EventKind::VersionPurged
        } else {
            EventKind::ArtifactPurged
        };
        self.write_event(&mut tx, kind, scope, artifact_id, version.unwrap_or(""), now)
            .await?;
        tx.commit().await.map_err(|e| db_error("committing", e))?;
        self.announce_commit();
        Ok(true)
    }

    /// Purges up to `limit` items deleted before `deleted_before`, skipping held ones.
    pub async fn purge_expired(&self, deleted_before: i64, limit: u32, now: i64) -> Result<Purged> {
        let artifacts: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT id, tenant, project FROM artifacts WHERE deleted_at IS NOT NULL AND deleted_at < $1 \
             AND NOT EXISTS (SELECT 1 FROM legal_holds h WHERE h.artifact_id = artifacts.id) \
             ORDER BY deleted_at LIMIT $2",
        )
        .bind(deleted_before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("finding expired artifacts", e))?;
        let versions: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT v.artifact_id, v.version, a.tenant, a.project FROM versions v JOIN artifacts a ON a.id = v.artifact_id \
             WHERE v.deleted_at IS NOT NULL AND v.deleted_at < $1 AND a.deleted_at IS NULL \
             AND NOT EXISTS (SELECT 1 FROM legal_holds h WHERE h.artifact_id = v.artifact_id AND (h.version = '' OR h.version = v.version)) \
             ORDER BY v.deleted_at LIMIT $2",
        )
        .bind(deleted_before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("finding expired versions", e))?;
        let mut purged = Purged::default();
        for (artifact_id, tenant, project) in artifacts {
            let scope = Scope::new(tenant, project);
            match self.purge(&scope, &artifact_id, None, now).await {
                Ok(true) => purged.artifacts += 1,
                Ok(false) | Err(Error::FailedPrecondition(_)) | Err(Error::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        for (artifact_id, version, tenant, project) in versions {
            let scope = Scope::new(tenant, project);
            match self.purge(&scope, &artifact_id, Some(&version), now).await {
                Ok(true) => purged.versions += 1,
                Ok(false) | Err(Error::FailedPrecondition(_)) | Err(Error::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(purged)
    }

    /// Records a read of a version unless one was recorded since `stale_before`: at most one
    /// write per version per read-tracking interval.
    pub async fn record_read(
        &self,
        artifact_id: &str,
        version: &str,
        now: i64,
        stale_before: i64,
    ) -> Result<()> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "UPDATE versions SET last_read_at = $1 WHERE artifact_id = $2 AND version = $3 \
             AND (last_read_at IS NULL OR last_read_at < $4)",
        )
        .bind(now)
        .bind(artifact_id)
        .bind(version)
        .bind(stale_before)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error("recording a read", e))?;
        Ok(())
    }

    /// When a version was last read, as recorded.
    pub async fn last_read(&self, artifact_id: &str, version: &str) -> Result<Option<i64>> {
        let read: Option<Option<i64>> =
            sqlx::query_scalar("SELECT last_read_at FROM versions WHERE artifact_id = $1 AND version = $2")
                .bind(artifact_id)
                .bind(version)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| db_error("reading a version", e))?;
        Ok(read.flatten())
    }

    // ---- legal holds ---------------------------------------------------------------------

    /// Places (or replaces the reason of) a hold on an artifact, live or in the trash, or on
    /// one of its versions.
    pub async fn set_legal_hold(&self, scope: &Scope, hold: &LegalHold) -> Result<()> {
        let mut tx = self.lock_any_artifact(scope, &hold.artifact_id).await?;
        if !hold.version.is_empty() {
            let exists: Option<i64> =
                sqlx::query_scalar("SELECT seq FROM versions WHERE artifact_id = $1 AND version = $2")
                    .bind(&hold.artifact_id)
                    .bind(&hold.version)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| db_error("reading a version", e))?;
            if exists.is_none() {
                return Err(Error::not_found(format!(
                    "version {} of artifact {:?} not found",
                    hold.version, hold.artifact_id
                )));
            }
        }
        sqlx::query(
            "INSERT INTO legal_holds (artifact_id, version, tenant, project, reason, held_by, held_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (artifact_id, version) DO UPDATE SET reason = excluded.reason, held_by = excluded.held_by, held_at = excluded.held_at",
        )
        .bind(&hold.artifact_id)
        .bind(&hold.version)
        .bind(&scope.tenant)
        .bind(&scope.project)
        .bind(&hold.reason)
        .bind(&hold.held_by)
        .bind(hold.held_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("placing a legal hold", e))?;
        let record = crate::audit::change_record(
            &scope.tenant,
            &scope.project,
            super::change_target(&hold.artifact_id, &hold.version),
            "legal_hold.placed",
            Timestamp(hold.held_at),
        );
        self.append_audit_in(&mut tx, &record).await?;
        tx.commit().await.map_err(|e| db_error("committing", e))
    }

    pub async fn release_legal_hold(
        &self,
        scope: &Scope,
        artifact_id: &str,
        version: &str,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let released = sqlx::query(
            "DELETE FROM legal_holds WHERE artifact_id = $1 AND version = $2 AND tenant = $3 AND project = $4",
        )
        .bind(artifact_id)
        .bind(version)
        .bind(&scope.tenant)
        .bind(&scope.project)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("releasing a legal hold", e))?
        .rows_affected();
        if released == 0 {
            let what = if version.is_empty() {
                format!("artifact {artifact_id:?}")
            } else {
                format!("version {version} of artifact {artifact_id:?}")
            };
            return Err(Error::not_found(format!("no legal hold on {what}")));
        }
        let record = crate::audit::change_record(
            &scope.tenant,
            &scope.project,
            super::change_target(artifact_id, version),
            "legal_hold.released",
            Timestamp(now),
        );
        self.append_audit_in(&mut tx, &record).await?;
        tx.commit().await.map_err(|e| db_error("committing", e))
    }

    pub async fn legal_holds(&self, scope: &Scope) -> Result<Vec<LegalHold>> {
        let rows: Vec<(String, String, String, String, i64)> = sqlx::query_as(
            "SELECT artifact_id, version, reason, held_by, held_at FROM legal_holds \
             WHERE tenant = $1 AND project = $2 ORDER BY artifact_id, version",
        )
        .bind(&scope.tenant)
        .bind(&scope.project)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing legal holds", e))?;
        Ok(rows
            .into_iter()
            .map(|(artifact_id, version, reason, held_by, held_at)| LegalHold {
                artifact_id,
                version,
                reason,
                held_by,
                held_at,
            })
            .collect())
    }
}
