//! Retention policies (managing, evaluating, executing, scheduling), legal holds, versions
//! in the trash and purging. Evaluation and execution share one planner: an execution acts
//! on exactly the plan a dry run at the same moment shows, and each action re-checks under
//! the artifact's lock that what it was decided on still holds.

use super::{
    Actor, Artifacts, Page, decode_token, encode_token, page_size, validate_artifact_id, validate_scope,
};
use crate::catalog::Purged;
use crate::domain::names::{quoted, validate_identifier};
use crate::domain::retention::{
    CompiledPolicy, Decision, LegalHold, MAX_TEXT_LEN, PolicySpec, RetentionPolicy, RetentionRun, RunTrigger,
    Skipped, TrashItem, plan_fingerprint,
};
use crate::domain::{ArtifactVersion, Error, Result, Scope, Timestamp, now_micros};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The lease scheduled policy runs take.
const POLICY_LEASE: &str = "retention policies";
/// Artifacts read per catalog round trip while planning.
const PLAN_BATCH: u32 = 200;
/// Affected versions kept in a run's stored report.
pub const MAX_REPORTED: usize = 10_000;

/// Retention, trash and collection settings (the `[retention]` section).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// How long a deleted artifact or version can be restored; then the purge job removes it.
    pub deleted_retention_seconds: u64,
    /// How often the purge job looks for expired items.
    pub purge_interval_seconds: u64,
    /// Reads of a version are recorded at most once per this interval.
    pub read_tracking_seconds: u64,
    /// How often scheduled policies are checked for being due.
    pub policy_check_seconds: u64,
    /// How often garbage collection runs on its own; 0 only on request.
    pub gc_interval_seconds: u64,
    /// How long a pack stays marked before it may be deleted: longer than the longest
    /// upload and the longest download.
    pub gc_grace_seconds: u64,
    /// Packs whose live bytes are under this percentage of their size are rewritten.
    pub gc_compact_below_percent: u8,
    /// Bytes of packs compaction rewrites in one run at most.
    pub gc_compact_max_bytes: u64,
    /// Packs smaller than this and than half `ingest.pack_target_bytes` (each small upload
    /// writes its own) are merged by compaction once a tenant has two or more; 0 merges none.
    pub gc_merge_below_bytes: u64,
    /// How long a collector's lease lasts without renewal.
    pub lease_seconds: u64,
    /// How far back point-in-time restore reaches. The trash keeps what it deletes at least
    /// this long, and the journal of changes this long.
    pub recovery_window_seconds: u64,
    /// How often backup schedules are checked for being due.
    pub backup_check_seconds: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            deleted_retention_seconds: 30 * 24 * 3600,
            purge_interval_seconds: 300,
            read_tracking_seconds: 3600,
            policy_check_seconds: 60,
            gc_interval_seconds: 6 * 3600,
            gc_grace_seconds: 6 * 3600,
            gc_compact_below_percent: 50,
            gc_compact_max_bytes: 1 << 30,
            gc_merge_below_bytes: 1 << 20,
            lease_seconds: 300,
            recovery_window_seconds: 7 * 24 * 3600,
            backup_check_seconds: 60,
        }
    }
}

/// The longest any retention period or interval may be (beyond it, microseconds overflow).
const MAX_SETTING_SECONDS: u64 = 100 * 366 * 24 * 3600;

impl RetentionSettings {
    /// Refuses settings that would make the collector unsafe or meaningless, naming the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (key, value) in [
            (
                "retention.deleted_retention_seconds",
                self.deleted_retention_seconds,
            ),
            ("retention.purge_interval_seconds", self.purge_interval_seconds),
            ("retention.read_tracking_seconds", self.read_tracking_seconds),
            ("retention.policy_check_seconds", self.policy_check_seconds),
            ("retention.gc_interval_seconds", self.gc_interval_seconds),
            ("retention.gc_grace_seconds", self.gc_grace_seconds),
            ("retention.lease_seconds", self.lease_seconds),
            ("retention.recovery_window_seconds", self.recovery_window_seconds),
            ("retention.backup_check_seconds", self.backup_check_seconds),
        ] {
            if value > MAX_SETTING_SECONDS {
                return Err(format!(
                    "{key}: {value} is over the limit of {MAX_SETTING_SECONDS} (100 years)"
                ));
            }
        }
        if self.gc_grace_seconds == 0 {
            return Err(
                "retention.gc_grace_seconds: 0 would collect the packs of uploads in flight; give at least 1"
                    .to_owned(),
            );
        }
        if self.gc_compact_below_percent > 100 {
            return Err(format!(
                "retention.gc_compact_below_percent: {} is over 100",
                self.gc_compact_below_percent
            ));
        }
        if self.lease_seconds < 2 {
            return Err(format!(
                "retention.lease_seconds: {} is under 2",
                self.lease_seconds
            ));
        }
        Ok(())
    }

    pub fn deleted_retention(&self) -> Duration {
        Duration::from_secs(self.deleted_retention_seconds)
    }
}

/// A policy to create or to replace an existing one with.
#[derive(Debug, Clone)]
pub struct PolicyInput {
    pub name: String,
    pub spec: PolicySpec,
}

fn validate_policy(input: &PolicyInput) -> Result<CompiledPolicy> {
    validate_identifier("name", &input.name)?;
    input.spec.compile()
}

fn validate_version(version: &str) -> Result<()> {
    if version.is_empty() {
        return Err(Error::invalid("version", "is empty; name the version"));
    }
    crate::domain::version::parse_version("version", version).map(|_| ())
}

impl Artifacts {
    pub(super) fn retention(&self) -> &RetentionSettings {
        &self.inner.settings.retention
    }

    // ---- policies ------------------------------------------------------------------------

    pub async fn create_retention_policy(
        &self,
        scope: &Scope,
        input: PolicyInput,
        actor: &Actor,
    ) -> Result<RetentionPolicy> {
        validate_scope(scope)?;
        validate_policy(&input)?;
        let now = now_micros();
        let policy = RetentionPolicy {
            id: uuid::Uuid::now_v7().to_string(),
            tenant: scope.tenant.clone(),
            project: scope.project.clone(),
            name: input.name,
            spec: input.spec,
            revision: 1,
            created_by: actor.clone(),
            created_at: now,
            updated_at: now,
            last_run_at: None,
        };
        self.inner.catalog.insert_retention_policy(&policy).await?;
        Ok(policy)
    }

    pub async fn update_retention_policy(
        &self,
        scope: &Scope,
        id: &str,
        expected_revision: Option<i64>,
        input: PolicyInput,
    ) -> Result<RetentionPolicy> {
        validate_scope(scope)?;
        validate_policy_id(id)?;
        validate_policy(&input)?;
        self.inner
            .catalog
            .update_retention_policy(
                scope,
                id,
                expected_revision,
                &input.name,
                &input.spec,
                now_micros(),
            )
            .await
    }

    pub async fn delete_retention_policy(&self, scope: &Scope, id: &str) -> Result<()> {
        validate_scope(scope)?;
        validate_policy_id(id)?;
        self.inner.catalog.delete_retention_policy(scope, id).await
    }

    pub async fn retention_policy(&self, scope: &Scope, id: &str) -> Result<RetentionPolicy> {
        validate_scope(scope)?;
        validate_policy_id(id)?;
        self.inner
            .catalog
            .retention_policy(scope, id)
            .await?
            .ok_or_else(|| {
                Error::not_found(format!(
                    "retention policy {id:?} not found in project {:?}",
                    scope.project
                ))
            })
    }

    pub async fn retention_policies(&self, scope: &Scope) -> Result<Vec<RetentionPolicy>> {
        validate_scope(scope)?;
        self.inner.catalog.retention_policies(scope).await
    }

    /// Every decision of a policy over its project at `now`, newest version first per artifact.
    async fn plan(&self, policy: &RetentionPolicy, now: i64) -> Result<Vec<Decision>> {
        let compiled = policy.spec.compile()?;
        let scope = Scope::new(policy.tenant.clone(), policy.project.clone());
        let mut decisions = Vec::new();
        let mut after = String::new();
        loop {
            let batch = self
                .inner
                .catalog
                .retention_facts(&scope, &after, PLAN_BATCH)
                .await?;
            let Some(last) = batch.last() else { break };
            after = last.artifact_id.clone();
            for artifact in batch
                .iter()
                .filter(|a| compiled.covers(&a.artifact_type, &a.name))
            {
                decisions.extend(compiled.evaluate(artifact, now));
            }
        }
        Ok(decisions)
    }

    /// Evaluates a policy without acting (a dry run), keeps the report and returns it.
    pub async fn evaluate_retention_policy(&self, scope: &Scope, id: &str) -> Result<RetentionRun> {
        let policy = self.retention_policy(scope, id).await?;
        self.run_policy(&policy, true, None, RunTrigger::Request, "")
            .await
    }

    /// Executes a policy: what a dry run at this moment shows, nothing else. With
    /// `expected_plan` (a dry run's `plan`), refuses to act when the plan is now different.
    pub async fn execute_retention_policy(
        &self,
        scope: &Scope,
        id: &str,
        expected_plan: Option<&str>,
        actor: &Actor,
    ) -> Result<RetentionRun> {
        let policy = self.retention_policy(scope, id).await?;
        self.run_policy(&policy, false, expected_plan, RunTrigger::Request, actor)
            .await
    }

    async fn run_policy(
        &self,
        policy: &RetentionPolicy,
        dry_run: bool,
        expected_plan: Option<&str>,
        trigger: RunTrigger,
        actor: &str,
    ) -> Result<RetentionRun> {
        let scope = Scope::new(policy.tenant.clone(), policy.project.clone());
        let compiled = policy.spec.compile()?;
        let started_at = now_micros();
        let decisions = self.plan(policy, started_at).await?;
        let plan = plan_fingerprint(policy.revision, &decisions);
        if let Some(expected) = expected_plan.filter(|e| !e.is_empty())
            && expected != plan
        {
            return Err(Error::Aborted(format!(
                "expected_plan: the plan is now {plan}, not {expected}; the catalog or the policy changed since the dry run, nothing was done"
            )));
        }
        let examined = decisions.len() as u64;
        let (affected, kept): (Vec<Decision>, Vec<Decision>) =
            decisions.into_iter().partition(Decision::affects);
        let mut applied = 0;
        let mut skipped = Vec::new();
        if !dry_run {
            let actor = if actor.is_empty() {
                format!("retention:{}", policy.name)
            } else {
                actor.to_owned()
            };
            for decision in &affected {
                match self
                    .inner
                    .catalog
                    .apply_retention(
                        &scope,
                        decision,
                        &policy.name,
                        &compiled,
                        started_at,
                        &actor,
                        now_micros(),
                    )
                    .await?
                {
                    None => applied += 1,
                    Some(reason) => skipped.push(Skipped {
                        artifact_id: decision.artifact_id.clone(),
                        version: decision.version.clone(),
                        reason,
                    }),
                }
            }
        }
        let run = RetentionRun {
            id: uuid::Uuid::now_v7().to_string(),
            policy_id: policy.id.clone(),
            policy_name: policy.name.clone(),
            policy_revision: policy.revision,
            trigger,
            dry_run,
            started_at,
            finished_at: now_micros(),
            plan,
            examined,
            affected,
            kept: kept.len() as u64,
            applied,
            skipped,
        };
        let mut stored = run.clone();
        stored.affected.truncate(MAX_REPORTED);
        self.inner.catalog.record_retention_run(&scope, &stored).await?;
        if !dry_run {
            metrics::counter!(crate::telemetry::names::RETENTION_APPLIED_TOTAL).increment(applied);
            tracing::info!(
                policy = %policy.name, tenant = %policy.tenant, project = %policy.project,
                examined, applied, skipped = run.skipped.len(), %trigger,
                "retention policy executed"
            );
        }
        Ok(run)
    }

    pub async fn retention_runs(
        &self,
        scope: &Scope,
        policy_id: &str,
        limit: u32,
    ) -> Result<Vec<RetentionRun>> {
        validate_scope(scope)?;
        if !policy_id.is_empty() {
            validate_policy_id(policy_id)?;
        }
        let limit = page_size(limit);
        self.inner
            .catalog
            .retention_runs(scope, Some(policy_id).filter(|p| !p.is_empty()), limit)
            .await
    }

    pub async fn retention_run(&self, scope: &Scope, run_id: &str) -> Result<RetentionRun> {
        validate_scope(scope)?;
        validate_policy_id(run_id)
            .map_err(|_| Error::invalid("run_id", format!("{} is not a run id (a UUID)", quoted(run_id))))?;
        self.inner
            .catalog
            .retention_run(scope, run_id)
            .await?
            .ok_or_else(|| {
                Error::not_found(format!(
                    "retention run {run_id:?} not found in project {:?}",
                    scope.project
                ))
            })
    }

    /// Executes every scheduled policy that is due at `now`; returns how many ran. One
    /// replica at a time does (a catalog lease), so a policy is not run twice at once.
    pub async fn run_due_policies(&self, now: i64) -> Result<u64> {
        let holder = uuid::Uuid::now_v7().to_string();
        let lease = self.retention().lease_seconds.max(2).saturating_mul(1_000_000) as i64;
        if self
            .inner
            .catalog
            .take_lease(POLICY_LEASE, &holder, now, now.saturating_add(lease))
            .await?
            .is_some()
        {
            return Ok(0);
        }
        let ran = self.run_due_policies_held(now).await;
        if let Err(error) = self.inner.catalog.release_lease(POLICY_LEASE, &holder).await {
            tracing::warn!(%error, "could not release the policy lease; it expires by itself");
        }
        ran
    }

    async fn run_due_policies_held(&self, now: i64) -> Result<u64> {
        let mut ran = 0;
        for policy in self.inner.catalog.scheduled_retention_policies().await? {
            let every = policy.spec.schedule_seconds.saturating_mul(1_000_000);
            let due = policy
                .last_run_at
                .is_none_or(|last| last.saturating_add(every) <= now);
            if !due {
                continue;
            }
            match self
                .run_policy(&policy, false, None, RunTrigger::Schedule, "")
                .await
            {
                Ok(_) => ran += 1,
                Err(error) => tracing::warn!(
                    policy = %policy.name, tenant = %policy.tenant, project = %policy.project, %error,
                    "a scheduled retention policy failed; it runs again at the next check"
                ),
            }
        }
        Ok(ran)
    }

    // ---- legal holds ---------------------------------------------------------------------

    pub async fn set_legal_hold(
        &self,
        scope: &Scope,
        artifact_id: &str,
        version: &str,
        reason: &str,
        actor: &Actor,
    ) -> Result<LegalHold> {
        validate_scope(scope)?;
        validate_artifact_id(artifact_id)?;
        if !version.is_empty() {
            validate_version(version)?;
        }
        if reason.trim().is_empty() {
            return Err(Error::invalid("reason", "is empty; say why the hold is placed"));
        }
        if reason.len() > MAX_TEXT_LEN {
            return Err(Error::invalid(
                "reason",
                format!("is {} bytes; at most {MAX_TEXT_LEN}", reason.len()),
            ));
        }
        let hold = LegalHold {
            artifact_id: artifact_id.to_owned(),
            version: version.to_owned(),
            reason: reason.to_owned(),
            held_by: actor.clone(),
            held_at: now_micros(),
        };
        self.inner.catalog.set_legal_hold(scope, &hold).await?;
        Ok(hold)
    }

    pub async fn release_legal_hold(&self, scope: &Scope, artifact_id: &str, version: &str) -> Result<()> {
        validate_scope(scope)?;
        validate_artifact_id(artifact_id)?;
        if !version.is_empty() {
            validate_version(version)?;
        }
        self.inner
            .catalog
            .release_legal_hold(scope, artifact_id, version, now_micros())
            .await
    }

    pub async fn legal_holds(&self, scope: &Scope) -> Result<Vec<LegalHold>> {
        validate_scope(scope)?;
        self.inner.catalog.legal_holds(scope).await
    }

    // ---- versions and the trash ----------------------------------------------------------

    /// Moves a version to the trash; returns it and the moment it can no longer be restored.
    pub async fn delete_version(
        &self,
        scope: &Scope,
        artifact_id: &str,
        version: &str,
        actor: &Actor,
    ) -> Result<(ArtifactVersion, Timestamp)> {
        validate_scope(scope)?;
        validate_artifact_id(artifact_id)?;
        validate_version(version)?;
        let now = now_micros();
        let deleted = self
            .inner
            .catalog
            .delete_version(scope, artifact_id, version, actor, now)
            .await?;
        Ok((deleted, Timestamp(now + self.retention_micros())))
    }

    pub async fn undelete_version(
        &self,
        scope: &Scope,
        artifact_id: &str,
        version: &str,
    ) -> Result<ArtifactVersion> {
        validate_scope(scope)?;
        validate_artifact_id(artifact_id)?;
        validate_version(version)?;
        let now = now_micros();
        self.inner
            .catalog
            .undelete_version(scope, artifact_id, version, now - self.retention_micros(), now)
            .await
    }

    /// A page of the project's trash, most recently deleted first, each item with the
    /// moment it can no longer be restored.
    pub async fn trash(
        &self,
        scope: &Scope,
        page_token: &str,
        limit: u32,
    ) -> Result<Page<(TrashItem, Timestamp)>> {
        validate_scope(scope)?;
        let limit = page_size(limit);
        let after = if page_token.is_empty() {
            None
        } else {
            let parts = decode_token(page_token, 4)?;
            if parts[0] != "t" {
                return Err(Error::invalid(
                    "page_token",
                    format!("{} is not a trash page token", quoted(page_token)),
                ));
            }
            let at = parts[1].parse::<i64>().map_err(|_| {
                Error::invalid(
                    "page_token",
                    format!("{} is not a trash page token", quoted(page_token)),
                )
            })?;
            Some((at, parts[2].clone(), parts[3].clone()))
        };
        let mut items = self.inner.catalog.trash(scope, after, limit + 1).await?;
        let next_page_token = if items.len() > limit as usize {
            items.truncate(limit as usize);
            let last = items.last().expect("non-empty");
            encode_token(&[
                "t",
                &last.deleted_at.to_string(),
                &last.artifact_id,
                &last.version,
            ])
        } else {
            String::new()
        };
        let retention = self.retention_micros();
        Ok(Page {
            items: items
                .into_iter()
                .map(|item| {
                    let until = Timestamp(item.deleted_at + retention);
                    (item, until)
                })
                .collect(),
            next_page_token,
        })
    }

    /// Removes an artifact (no version) or a version from the trash for good, now.
    pub async fn purge(&self, scope: &Scope, artifact_id: &str, version: &str) -> Result<()> {
        validate_scope(scope)?;
        validate_artifact_id(artifact_id)?;
        if !version.is_empty() {
            validate_version(version)?;
        }
        let version = Some(version).filter(|v| !v.is_empty());
        if self
            .inner
            .catalog
            .purge(scope, artifact_id, version, now_micros())
            .await?
        {
            return Ok(());
        }
        Err(Error::FailedPrecondition(match version {
            None => format!("artifact {artifact_id:?} is not in the trash; delete it first"),
            Some(version) => format!(
                "version {version} of artifact {artifact_id:?} is not in the trash (or its artifact is, whole); delete it first"
            ),
        }))
    }

    /// Purges what has been in the trash longer than the retention period.
    pub async fn purge_expired(&self) -> Result<Purged> {
        let now = now_micros();
        let mut total = Purged::default();
        loop {
            // What the recovery window can still reach stays: a version live at any time in
            // the window keeps its row (and so its content) until the window has passed.
            let keep = self
                .retention_micros()
                .max((self.retention().recovery_window_seconds as i64).saturating_mul(1_000_000));
            let purged = self.inner.catalog.purge_expired(now - keep, 500, now).await?;
            total.artifacts += purged.artifacts;
            total.versions += purged.versions;
            if purged.artifacts + purged.versions == 0 {
                let window = (self.retention().recovery_window_seconds as i64).saturating_mul(1_000_000);
                self.inner.catalog.prune_journal(now - window).await?;
                return Ok(total);
            }
        }
    }

    /// Records that a caller read a version, at most once per read-tracking interval.
    pub async fn note_read(&self, artifact_id: &str, version: &str) {
        let interval = Duration::from_secs(self.retention().read_tracking_seconds);
        if !self.inner.reads.due(artifact_id, version, interval) {
            return;
        }
        let now = now_micros();
        let stale_before = now - interval.as_micros() as i64;
        if let Err(error) = self
            .inner
            .catalog
            .record_read(artifact_id, version, now, stale_before)
            .await
        {
            tracing::debug!(%error, "could not record a read; retention by reads sees it later");
        }
    }
}

fn validate_policy_id(id: &str) -> Result<()> {
    if uuid::Uuid::try_parse(id).is_err() {
        return Err(Error::invalid(
            "policy_id",
            format!("{} is not a policy id (a UUID)", quoted(id)),
        ));
    }
    Ok(())
}

/// Which versions this process recorded a read of recently: spares the catalog a write per
/// download. Bounded: forgotten wholesale when full (a forgotten entry costs one write).
#[derive(Debug, Default)]
pub(crate) struct RecentReads {
    seen: std::sync::Mutex<std::collections::HashMap<(String, String), std::time::Instant>>,
}

const RECENT_READS_LIMIT: usize = 100_000;

impl RecentReads {
    fn due(&self, artifact_id: &str, version: &str, interval: Duration) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (artifact_id.to_owned(), version.to_owned());
        let now = std::time::Instant::now();
        if let Some(at) = seen.get(&key)
            && now.duration_since(*at) < interval
        {
            return false;
        }
        if seen.len() >= RECENT_READS_LIMIT {
            seen.clear();
        }
        seen.insert(key, now);
        true
    }
}
