//! Backups, restores, point-in-time recovery and disaster recovery.
//!
//! A backup exports the catalog's state in scope ([`Catalog::export`], one snapshot), writes
//! one object per project under `backups/{tenant}/{project}/`, on each store of a failover
//! pair separately, reads every copy back against its hash, makes sure every pack it needs
//! is on both stores (copying what the fallback lacks), and only then records itself with
//! pins on those packs, so garbage collection keeps them. Nothing is listed until all of
//! that has succeeded.
//!
//! A restore decodes every object it needs before it writes anything (a damaged object is
//! DATA_LOSS and nothing changes), checks that the packs are there, plans every artifact
//! (refusing, before any write, to change existing artifacts without `overwrite`), then
//! applies each artifact's plan in one transaction.
//!
//! Point-in-time restore builds the same images from the catalog: versions and packs never
//! change, lifecycle history is in the transitions, and everything else an artifact's
//! journal records with each change. The trash purge waits out the recovery window, so
//! every version live at a time in the window still has its row and content.

use super::{Artifacts, Page, decode_token, encode_token, page_size, validate_artifact_id, validate_scope};
use crate::catalog::{BackupRow, Content, Export, Locate, RestoreArtifact, ScheduleRow};
use crate::domain::backup::{
    self, ArtifactImage, Backup, BackupBody, BackupKind, BackupObject, BackupSchedule, BackupSummary,
    RestoreStep, StepKind, image_at,
};
use crate::domain::names::validate_identifier;
use crate::domain::{Error, Result, Scope, Timestamp, now_micros};
use crate::ingest::PackId;
use crate::storage::{DynBlobStore, FailoverStore, GetOptions, Side, StoreError};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

const SCHEDULE_LEASE: &str = "backup schedules";

/// What a long backup or restore is doing, for the caller to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupProgress {
    pub phase: &'static str,
    pub done: u64,
    pub total: u64,
    pub detail: String,
}

/// Where progress goes; the call does not wait on it.
pub type Progress<'a> = &'a (dyn Fn(BackupProgress) + Send + Sync);

fn report(progress: Progress<'_>, phase: &'static str, done: u64, total: u64, detail: impl Into<String>) {
    progress(BackupProgress {
        phase,
        done,
        total,
        detail: detail.into(),
    });
}

/// What a restore restores.
#[derive(Debug, Clone)]
pub enum RestoreSource {
    Backup {
        backup_id: String,
        /// One artifact of the backup; all when `None`.
        artifact_id: Option<String>,
    },
    PointInTime {
        /// One artifact of the project; all when `None`.
        artifact_id: Option<String>,
        at: Timestamp,
    },
}

/// Where a restore writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreTarget {
    SamePlace,
    NewProject(String),
    NewArtifact { project: String, name: String },
}

#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub scope: Scope,
    pub source: RestoreSource,
    pub target: RestoreTarget,
    pub overwrite: bool,
    pub dry_run: bool,
    pub actor: String,
}

/// One artifact's part of a restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredArtifact {
    pub source_id: String,
    pub artifact_id: String,
    pub artifact_type: String,
    pub name: String,
    pub steps: Vec<RestoreStep>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    pub dry_run: bool,
    pub as_of: Timestamp,
    pub artifacts: Vec<RestoredArtifact>,
    pub versions: u64,
}

/// What a disaster-recovery restore found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DrReport {
    pub backups_found: u64,
    pub backups_restored: u64,
    pub artifacts: u64,
    pub versions: u64,
    pub packs_copied: u64,
    pub problems: Vec<String>,
}

fn backup_of(row: BackupRow) -> Result<Backup> {
    let summary: BackupSummary = serde_json::from_str(&row.summary)
        .map_err(|e| Error::DataLoss(format!("the record of backup {} does not parse: {e}", row.id)))?;
    Ok(Backup {
        kind: BackupKind::parse(&row.kind).ok_or_else(|| {
            Error::DataLoss(format!("backup {} has an unknown kind {:?}", row.id, row.kind))
        })?,
        id: row.id,
        tenant: row.tenant,
        project: row.project,
        artifact_id: row.artifact_id,
        trigger: row.trigger,
        created_by: row.created_by,
        created_at: Timestamp(row.created_at),
        summary,
    })
}

fn schedule_of(row: ScheduleRow) -> BackupSchedule {
    BackupSchedule {
        tenant: row.tenant,
        project: row.project,
        interval_seconds: row.interval_seconds.max(0) as u64,
        keep: row.keep.clamp(0, i64::from(u32::MAX)) as u32,
        updated_by: row.updated_by,
        updated_at: Timestamp(row.updated_at),
        last_run_at: row.last_run_at.map(Timestamp),
    }
}

fn store_error(what: &str, error: StoreError) -> Error {
    match error {
        StoreError::NotFound { .. } => Error::not_found(format!("{what}: {error}")),
        StoreError::Corrupt { .. } => Error::DataLoss(format!("{what}: {error}")),
        error if error.is_retryable() => Error::Unavailable(format!("{what}: {error}")),
        error => Error::Internal(format!("{what}: {error}")),
    }
}

fn pack_key(pack_id: &str) -> Result<String> {
    PackId::from_hex(pack_id)
        .map(|id| id.object_key())
        .ok_or_else(|| {
            Error::DataLoss(format!(
                "the backup names a pack {pack_id:?} that is not a pack id"
            ))
        })
}

fn validate_backup_id(id: &str) -> Result<()> {
    if uuid::Uuid::try_parse(id).is_err() {
        return Err(Error::invalid(
            "backup_id",
            format!("{} is not a backup id (a UUID)", crate::domain::names::quoted(id)),
        ));
    }
    Ok(())
}

/// An object's bytes as a store returns them, read back whole.
async fn read_object(store: &DynBlobStore, key: &str) -> Result<Bytes> {
    store
        .get(key, GetOptions::default())
        .await
        .map_err(|error| match error {
            StoreError::NotFound { .. } => {
                Error::DataLoss(format!("backup object {key} is missing from the store"))
            }
            other => store_error(&format!("reading {key}"), other),
        })
}

impl Artifacts {
    /// The stores a backup's objects are written to, each by name: both sides of a
    /// failover pair, or the one store.
    fn backup_stores(&self) -> Vec<(String, DynBlobStore)> {
        match self.failover() {
            Some(pair) => vec![
                ("primary".to_owned(), pair.side_store(Side::Primary)),
                ("fallback".to_owned(), pair.side_store(Side::Fallback)),
            ],
            None => vec![("store".to_owned(), self.inner.store.clone())],
        }
    }

    fn failover(&self) -> Option<Arc<FailoverStore>> {
        self.inner.failover.get().cloned()
    }

    /// The recovery window now: the earliest time point-in-time restore reaches.
    pub async fn recovery_window(&self) -> Result<(Timestamp, u64)> {
        let seconds = self.retention().recovery_window_seconds;
        let since = self.inner.catalog.journal_since().await?;
        let earliest = (now_micros() - (seconds as i64).saturating_mul(1_000_000)).max(since);
        Ok((Timestamp(earliest), seconds))
    }

    // ---- taking backups ----------------------------------------------------------------------

    /// Takes a backup of a tenant (`project` empty), a project, or one artifact.
    pub async fn create_backup(
        &self,
        tenant: &str,
        project: &str,
        artifact_id: &str,
        trigger: &str,
        actor: &str,
        progress: Progress<'_>,
    ) -> Result<Backup> {
        validate_identifier("tenant", tenant)?;
        let kind = match (project.is_empty(), artifact_id.is_empty()) {
            (true, true) => BackupKind::Tenant,
            (false, true) => BackupKind::Project,
            (false, false) => BackupKind::Artifact,
            (true, false) => {
                return Err(Error::invalid("project", "is required to back up one artifact"));
            }
        };
        if !project.is_empty() {
            validate_identifier("project", project)?;
        }
        let catalog = &self.inner.catalog;
        // The artifacts to export, by project.
        let mut by_project: BTreeMap<String, Vec<String>> = BTreeMap::new();
        match kind {
            BackupKind::Artifact => {
                validate_artifact_id(artifact_id)?;
                let scope = Scope::new(tenant, project);
                if catalog.artifact_by_id(&scope, artifact_id, true).await?.is_none() {
                    return Err(Error::not_found(format!(
                        "artifact {artifact_id:?} not found in {tenant}/{project}"
                    )));
                }
                by_project.insert(project.to_owned(), vec![artifact_id.to_owned()]);
            }
            BackupKind::Project => {
                by_project.insert(
                    project.to_owned(),
                    catalog.artifact_ids(tenant, Some(project)).await?,
                );
            }
            BackupKind::Tenant => {
                for project in catalog.projects_of(tenant).await? {
                    let ids = catalog.artifact_ids(tenant, Some(&project)).await?;
                    by_project.insert(project, ids);
                }
            }
        }
        let id = uuid::Uuid::now_v7().to_string();
        let created_at = now_micros();
        let secret = blake3::Hash::from_bytes(self.inner.secret()).to_hex().to_string();
        let mut summary = BackupSummary::default();
        let mut pins: BTreeSet<String> = BTreeSet::new();
        let mut packs: BTreeMap<String, i64> = BTreeMap::new();
        let mut sealed_keys: BTreeSet<String> = BTreeSet::new();
        let mut written: Vec<String> = Vec::new();
        let total = by_project.len() as u64;
        let result: Result<()> = async {
            for (done, (project, ids)) in by_project.iter().enumerate() {
                report(
                    progress,
                    "exporting",
                    done as u64,
                    total,
                    format!("project {project}"),
                );
                let export = catalog.export(tenant, ids).await?;
                summary.artifacts += export.artifacts.len() as u64;
                let body = BackupBody {
                    format: backup::FORMAT,
                    backup_id: id.clone(),
                    kind,
                    trigger: trigger.to_owned(),
                    tenant: tenant.to_owned(),
                    project: project.clone(),
                    artifact_id: artifact_id.to_owned(),
                    created_by: actor.to_owned(),
                    created_at,
                    service_secret: secret.clone(),
                    artifacts: export.artifacts,
                    chunks: export.chunks,
                    packs: export.packs,
                    tenant_keys: export.tenant_keys,
                };
                sealed_keys.extend(
                    body.tenant_keys
                        .iter()
                        .filter(|key| key.wrapped.is_some())
                        .map(|key| key.key_id.clone()),
                );
                summary.versions += body.versions();
                summary.logical_bytes += body.logical_bytes();
                for pack in &body.packs {
                    pins.insert(pack.pack_id.clone());
                    packs.insert(pack.pack_id.clone(), pack.size);
                }
                let bytes = Bytes::from(backup::encode(&body)?);
                let key = backup::object_key(tenant, project, &id);
                report(progress, "writing", done as u64, total, key.clone());
                written.push(key.clone());
                let verified_on = self.write_verified(&key, bytes.clone()).await?;
                summary.objects.push(BackupObject {
                    key,
                    project: project.clone(),
                    size: bytes.len() as u64,
                    blake3: blake3::hash(&bytes).to_hex().to_string(),
                    verified_on,
                });
            }
            summary.packs = packs.len() as u64;
            summary.pack_bytes = packs.values().map(|size| (*size).max(0) as u64).sum();
            let pack_ids: Vec<String> = packs.keys().cloned().collect();
            self.ensure_packs_everywhere(&pack_ids, progress).await?;
            Ok(())
        }
        .await;
        if let Err(error) = result {
            self.remove_objects(&written).await;
            return Err(error);
        }
        let row = BackupRow {
            id: id.clone(),
            tenant: tenant.to_owned(),
            project: project.to_owned(),
            artifact_id: artifact_id.to_owned(),
            kind: kind.as_str().to_owned(),
            trigger: trigger.to_owned(),
            created_by: actor.to_owned(),
            created_at,
            summary: serde_json::to_string(&summary).map_err(|e| Error::internal(e.to_string()))?,
        };
        let pins: Vec<String> = pins.into_iter().collect();
        let sealed_keys: Vec<String> = sealed_keys.into_iter().collect();
        if let Err(error) = catalog.record_backup(&row, &pins, &sealed_keys).await {
            self.remove_objects(&written).await;
            return Err(error);
        }
        metrics::counter!(crate::telemetry::names::BACKUPS_TOTAL, "kind" => kind.as_str()).increment(1);
        backup_of(row)
    }

    /// Writes an object to every backup store and reads each copy back against its hash.
    async fn write_verified(&self, key: &str, bytes: Bytes) -> Result<Vec<String>> {
        let want = blake3::hash(&bytes);
        let mut verified = Vec::new();
        for (name, store) in self.backup_stores() {
            store
                .put(key, bytes.clone())
                .await
                .map_err(|e| store_error(&format!("writing {key} to the {name} store"), e))?;
            let back = read_object(&store, key).await?;
            if blake3::hash(&back) != want {
                return Err(Error::DataLoss(format!(
                    "{key} read back from the {name} store differs from what was written"
                )));
            }
            verified.push(name);
        }
        Ok(verified)
    }

    /// Makes sure every pack is on every backup store, copying from a store that has it.
    async fn ensure_packs_everywhere(&self, pack_ids: &[String], progress: Progress<'_>) -> Result<u64> {
        let stores = self.backup_stores();
        let total = pack_ids.len() as u64;
        let mut copied = 0;
        for (done, pack_id) in pack_ids.iter().enumerate() {
            if done % 64 == 0 {
                report(progress, "verifying packs", done as u64, total, "");
            }
            let key = pack_key(pack_id)?;
            let mut missing = Vec::new();
            let mut holder = None;
            for (name, store) in &stores {
                match store.head(&key).await {
                    Ok(Some(_)) => holder = holder.or(Some(store.clone())),
                    Ok(None) => missing.push((name.clone(), store.clone())),
                    Err(error) => {
                        return Err(store_error(&format!("checking {key} on the {name} store"), error));
                    }
                }
            }
            if missing.is_empty() {
                continue;
            }
            let Some(holder) = holder else {
                return Err(Error::DataLoss(format!("pack {key} is on no store")));
            };
            let bytes = read_object(&holder, &key).await?;
            for (name, store) in missing {
                store
                    .put(&key, bytes.clone())
                    .await
                    .map_err(|e| store_error(&format!("copying {key} to the {name} store"), e))?;
                copied += 1;
            }
        }
        Ok(copied)
    }

    async fn remove_objects(&self, keys: &[String]) {
        for key in keys {
            for (name, store) in self.backup_stores() {
                if let Err(error) = store.delete(key).await {
                    tracing::warn!(%key, store = %name, %error, "could not remove an unfinished backup object");
                }
            }
        }
    }

    // ---- listing and deleting ----------------------------------------------------------------

    pub async fn list_backups(
        &self,
        tenant: &str,
        project: &str,
        requested: u32,
        token: &str,
    ) -> Result<Page<Backup>> {
        validate_identifier("tenant", tenant)?;
        if !project.is_empty() {
            validate_identifier("project", project)?;
        }
        let limit = page_size(requested);
        let before = if token.is_empty() {
            None
        } else {
            let fields = decode_token(token, 3)?;
            if fields[0] != "backups" {
                return Err(Error::invalid(
                    "page_token",
                    "the token belongs to another listing",
                ));
            }
            let at = fields[1]
                .parse::<i64>()
                .map_err(|_| Error::invalid("page_token", "malformed token"))?;
            Some((at, fields[2].clone()))
        };
        let rows = self
            .inner
            .catalog
            .backups(tenant, Some(project).filter(|p| !p.is_empty()), before, limit + 1)
            .await?;
        let mut items: Vec<Backup> = rows.into_iter().map(backup_of).collect::<Result<_>>()?;
        let next_page_token = if items.len() > limit as usize {
            items.truncate(limit as usize);
            let last = items.last().expect("a full page");
            encode_token(&["backups", &last.created_at.0.to_string(), &last.id])
        } else {
            String::new()
        };
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// A backup of the tenant; with `project`, only one that covers it.
    pub async fn backup(&self, tenant: &str, project: &str, id: &str) -> Result<Backup> {
        validate_identifier("tenant", tenant)?;
        validate_backup_id(id)?;
        let backup = self
            .inner
            .catalog
            .backup(tenant, id)
            .await?
            .map(backup_of)
            .transpose()?
            .filter(|b| project.is_empty() || b.project.is_empty() || b.project == project)
            .ok_or_else(|| Error::not_found(format!("backup {id:?} not found in tenant {tenant:?}")))?;
        let mut backup = backup;
        if !project.is_empty() {
            // Of a tenant's backup, a project sees its own part.
            backup.summary.objects.retain(|object| object.project == project);
        }
        Ok(backup)
    }

    /// Reads every object of a backup on every store and checks it, and that its packs are
    /// there; the problems found (none when it is intact).
    pub async fn verify_backup(&self, backup: &Backup) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let mut packs = BTreeSet::new();
        for object in &backup.summary.objects {
            for (name, store) in self.backup_stores() {
                match read_object(&store, &object.key).await {
                    Ok(bytes) if blake3::hash(&bytes).to_hex().as_str() != object.blake3 => {
                        problems.push(format!(
                            "{} on the {name} store does not match its recorded hash",
                            object.key
                        ))
                    }
                    Ok(bytes) => match backup::decode(&object.key, &bytes) {
                        Ok(body) => packs.extend(body.packs.into_iter().map(|p| p.pack_id)),
                        Err(error) => problems.push(format!("on the {name} store: {error}")),
                    },
                    Err(error) => problems.push(format!("on the {name} store: {error}")),
                }
            }
        }
        for pack in packs {
            let key = pack_key(&pack)?;
            for (name, store) in self.backup_stores() {
                match store.head(&key).await {
                    Ok(Some(_)) => {}
                    Ok(None) => problems.push(format!("pack {key} is missing from the {name} store")),
                    Err(error) => problems.push(format!("checking {key} on the {name} store: {error}")),
                }
            }
        }
        Ok(problems)
    }

    /// Deletes a backup's objects on every store, then the backup.
    pub async fn delete_backup(&self, tenant: &str, project: &str, id: &str) -> Result<()> {
        let backup = self.backup(tenant, project, id).await?;
        for object in &backup.summary.objects {
            for (name, store) in self.backup_stores() {
                match store.delete(&object.key).await {
                    Ok(()) => {}
                    Err(error) if error.is_not_found() => {}
                    Err(error) => {
                        return Err(store_error(
                            &format!(
                                "deleting {} from the {name} store (the backup is kept)",
                                object.key
                            ),
                            error,
                        ));
                    }
                }
            }
        }
        self.inner.catalog.delete_backup(tenant, id).await?;
        Ok(())
    }

    /// Deletes every backup of a tenant, and every backup object under its prefix on every
    /// store (one a crash left unrecorded would otherwise still be found by its id).
    pub(crate) async fn delete_tenant_backups(&self, tenant: &str) -> Result<u64> {
        let mut deleted = 0;
        loop {
            let rows = self.inner.catalog.backups(tenant, None, None, 100).await?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                self.delete_backup(tenant, "", &row.id).await?;
                deleted += 1;
            }
        }
        let prefix = format!("{}{tenant}/", backup::PREFIX);
        for (name, store) in self.backup_stores() {
            let objects = store
                .list(&prefix)
                .await
                .map_err(|e| store_error(&format!("listing {prefix} on the {name} store"), e))?;
            for object in objects {
                match store.delete(&object.key).await {
                    Ok(()) => {}
                    Err(error) if error.is_not_found() => {}
                    Err(error) => return Err(store_error(&format!("deleting {}", object.key), error)),
                }
            }
        }
        Ok(deleted)
    }

    // ---- schedules ---------------------------------------------------------------------------

    pub async fn set_backup_schedule(
        &self,
        scope: &Scope,
        interval_seconds: u64,
        keep: u32,
        actor: &str,
    ) -> Result<Option<BackupSchedule>> {
        validate_scope(scope)?;
        if interval_seconds == 0 {
            self.inner
                .catalog
                .delete_backup_schedule(&scope.tenant, &scope.project)
                .await?;
            return Ok(None);
        }
        if interval_seconds < 60 {
            return Err(Error::invalid(
                "interval_seconds",
                format!("{interval_seconds} is under the shortest interval, 60 seconds"),
            ));
        }
        if interval_seconds > 100 * 366 * 24 * 3600 {
            return Err(Error::invalid(
                "interval_seconds",
                format!("{interval_seconds} is over 100 years"),
            ));
        }
        if keep == 0 {
            return Err(Error::invalid(
                "keep",
                "must be at least 1 (an interval of 0 removes the schedule)",
            ));
        }
        let row = ScheduleRow {
            tenant: scope.tenant.clone(),
            project: scope.project.clone(),
            interval_seconds: interval_seconds as i64,
            keep: i64::from(keep),
            updated_by: actor.to_owned(),
            updated_at: now_micros(),
            last_run_at: None,
        };
        self.inner.catalog.set_backup_schedule(&row).await?;
        Ok(self
            .inner
            .catalog
            .backup_schedules(Some(&scope.tenant), Some(&scope.project))
            .await?
            .into_iter()
            .next()
            .map(schedule_of))
    }

    pub async fn backup_schedules(&self, tenant: &str, project: &str) -> Result<Vec<BackupSchedule>> {
        validate_identifier("tenant", tenant)?;
        Ok(self
            .inner
            .catalog
            .backup_schedules(Some(tenant), Some(project).filter(|p| !p.is_empty()))
            .await?
            .into_iter()
            .map(schedule_of)
            .collect())
    }

    /// Takes the backups that are due, under a lease (one replica does it), and expires
    /// scheduled backups beyond each schedule's `keep`. Returns how many it took.
    pub async fn run_due_backups(&self, now: i64) -> Result<u64> {
        let holder = uuid::Uuid::now_v7().to_string();
        let lease = self.retention().lease_seconds.max(2).saturating_mul(1_000_000) as i64;
        let catalog = &self.inner.catalog;
        if catalog
            .take_lease(SCHEDULE_LEASE, &holder, now, now.saturating_add(lease))
            .await?
            .is_some()
        {
            return Ok(0);
        }
        let mut taken = 0;
        let outcome: Result<()> = async {
            for schedule in catalog.backup_schedules(None, None).await? {
                let every = schedule.interval_seconds.saturating_mul(1_000_000);
                if schedule
                    .last_run_at
                    .is_some_and(|last| last.saturating_add(every) > now)
                {
                    continue;
                }
                let quiet = |_: BackupProgress| {};
                match self
                    .create_backup(
                        &schedule.tenant,
                        &schedule.project,
                        "",
                        "schedule",
                        "scheduler",
                        &quiet,
                    )
                    .await
                {
                    Ok(_) => taken += 1,
                    Err(error) => {
                        tracing::warn!(tenant = %schedule.tenant, project = %schedule.project, %error,
                            "a scheduled backup failed; it is tried again at the next check");
                        continue;
                    }
                }
                catalog
                    .schedule_ran(&schedule.tenant, &schedule.project, now)
                    .await?;
                let scheduled: Vec<Backup> = catalog
                    .backups(&schedule.tenant, Some(&schedule.project), None, 10_000)
                    .await?
                    .into_iter()
                    .filter(|row| row.trigger == "schedule" && row.project == schedule.project)
                    .map(backup_of)
                    .collect::<Result<_>>()?;
                for old in scheduled.iter().skip(schedule.keep.max(1) as usize) {
                    if let Err(error) = self.delete_backup(&old.tenant, &old.project, &old.id).await {
                        tracing::warn!(backup = %old.id, %error, "could not expire a scheduled backup");
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(error) = catalog.release_lease(SCHEDULE_LEASE, &holder).await {
            tracing::warn!(%error, "could not release the backup schedule lease; it expires by itself");
        }
        outcome.map(|()| taken)
    }

    // ---- restoring ---------------------------------------------------------------------------

    /// A backup this catalog records or, failing that, one whose object for the project is
    /// on the store (taken by another installation sharing the stores, or before this
    /// catalog was made).
    async fn backup_to_restore(&self, scope: &Scope, id: &str) -> Result<Backup> {
        match self.backup(&scope.tenant, &scope.project, id).await {
            Err(Error::NotFound(message)) => {
                let key = backup::object_key(&scope.tenant, &scope.project, id);
                let bytes = match self.inner.store.head(&key).await {
                    Ok(Some(_)) => read_object(&self.inner.store, &key).await?,
                    Ok(None) => return Err(Error::NotFound(format!("{message}, nor on the store ({key})"))),
                    Err(error) => return Err(store_error(&format!("looking for {key}"), error)),
                };
                let body = backup::decode(&key, &bytes)?;
                Ok(Backup {
                    id: body.backup_id.clone(),
                    tenant: body.tenant.clone(),
                    project: body.project.clone(),
                    artifact_id: body.artifact_id.clone(),
                    kind: body.kind,
                    trigger: body.trigger.clone(),
                    created_by: body.created_by.clone(),
                    created_at: Timestamp(body.created_at),
                    summary: BackupSummary {
                        artifacts: body.artifacts.len() as u64,
                        versions: body.versions(),
                        logical_bytes: body.logical_bytes(),
                        pack_bytes: body.pack_bytes(),
                        packs: body.packs.len() as u64,
                        objects: vec![BackupObject {
                            key,
                            project: body.project.clone(),
                            size: bytes.len() as u64,
                            blake3: blake3::hash(&bytes).to_hex().to_string(),
                            verified_on: Vec::new(),
                        }],
                    },
                })
            }
            other => other,
        }
    }

    /// Reads and checks every object of a backup that covers `project` (all when empty).
    async fn load_backup(&self, backup: &Backup, project: &str) -> Result<Vec<BackupBody>> {
        let mut bodies = Vec::new();
        for object in &backup.summary.objects {
            if !project.is_empty() && object.project != project {
                continue;
            }
            let bytes = read_object(&self.inner.store, &object.key).await?;
            let body = backup::decode(&object.key, &bytes)?;
            if body.backup_id != backup.id || body.tenant != backup.tenant {
                return Err(Error::DataLoss(format!(
                    "backup object {} belongs to another backup ({})",
                    object.key, body.backup_id
                )));
            }
            bodies.push(body);
        }
        Ok(bodies)
    }

    /// Adopts a backup's chunk-id secret when this installation has none of its own in use.
    async fn adopt_secret(&self, secret_hex: &str) -> Result<()> {
        let current = blake3::Hash::from_bytes(self.inner.secret()).to_hex().to_string();
        if current.eq_ignore_ascii_case(secret_hex) {
            return Ok(());
        }
        self.inner.catalog.adopt_service_secret(secret_hex).await?;
        let hash = blake3::Hash::from_hex(secret_hex)
            .map_err(|_| Error::DataLoss("the backup's chunk-id secret is not 64 hex digits".into()))?;
        self.inner.set_secret(*hash.as_bytes());
        Ok(())
    }

    /// Restores from a backup or a point in time.
    pub async fn restore(&self, request: &RestoreRequest, progress: Progress<'_>) -> Result<RestoreReport> {
        validate_scope(&request.scope)?;
        match &request.target {
            RestoreTarget::SamePlace => {}
            RestoreTarget::NewProject(project) => validate_identifier("target.new_project", project)?,
            RestoreTarget::NewArtifact { project, name } => {
                if !project.is_empty() {
                    validate_identifier("target.new_artifact.project", project)?;
                }
                crate::domain::names::validate_artifact_name(name)
                    .map_err(|e| Error::invalid("target.new_artifact.name", e.to_string()))?;
            }
        }
        // No progress before the request has proved valid: a refusal is the call's status.
        let (images, content, as_of) = match &request.source {
            RestoreSource::Backup {
                backup_id,
                artifact_id,
            } => {
                let backup = self.backup_to_restore(&request.scope, backup_id).await?;
                let bodies = self.load_backup(&backup, &request.scope.project).await?;
                if bodies.is_empty() {
                    return Err(Error::not_found(format!(
                        "backup {backup_id} holds nothing of project {:?}",
                        request.scope.project
                    )));
                }
                let mut content = Export::default();
                let mut images = Vec::new();
                for body in bodies {
                    if !request.dry_run {
                        self.adopt_secret(&body.service_secret).await?;
                    }
                    images.extend(body.artifacts);
                    content.chunks.extend(body.chunks);
                    content.packs.extend(body.packs);
                    content.tenant_keys.extend(body.tenant_keys);
                }
                if let Some(id) = artifact_id {
                    images.retain(|image| &image.id == id);
                    if images.is_empty() {
                        return Err(Error::not_found(format!(
                            "backup {backup_id} does not hold artifact {id:?}"
                        )));
                    }
                }
                let content = Content::of(content)?;
                // The content must be there before anything is written.
                self.check_packs_present(&content, progress).await?;
                (images, Some(content), backup.created_at)
            }
            RestoreSource::PointInTime { artifact_id, at } => {
                let images = self
                    .images_at(&request.scope, artifact_id.as_deref(), *at, request)
                    .await?;
                (images, None, *at)
            }
        };
        let wanted = self.retarget(images, &request.target)?;
        let locate = match request.target {
            RestoreTarget::SamePlace => Locate::ById,
            _ => Locate::ByName,
        };
        let reason = match &request.source {
            RestoreSource::Backup { backup_id, .. } => format!("restored from backup {backup_id}"),
            RestoreSource::PointInTime { at, .. } => format!("restored as of {}", at.to_rfc3339()),
        };
        let now = now_micros();
        // Every artifact is planned first: a refusal comes before any write.
        let mut planned = Vec::new();
        for (source_id, image) in &wanted {
            let restored = self
                .inner
                .catalog
                .restore_artifact(&RestoreArtifact {
                    wanted: image,
                    locate,
                    overwrite: request.overwrite,
                    dry_run: true,
                    actor: &request.actor,
                    reason: &reason,
                    now,
                    content: content.as_ref(),
                })
                .await?;
            planned.push((source_id.clone(), image, restored));
        }
        if !request.dry_run && !request.overwrite {
            let existing: Vec<String> = planned
                .iter()
                .filter(|(_, _, plan)| plan.existed && !plan.steps.is_empty())
                .map(|(_, image, _)| format!("{} {:?}", image.artifact_type, image.name))
                .collect();
            if !existing.is_empty() {
                return Err(Error::AlreadyExists(format!(
                    "{} exist(s) in the target and differ(s) from the restored state; pass overwrite to change them, \
                     or a dry run to see the changes; nothing was restored",
                    existing.join(", ")
                )));
            }
        }
        let total = planned.len() as u64;
        let mut artifacts = Vec::new();
        let mut versions = 0;
        for (done, (source_id, image, plan)) in planned.into_iter().enumerate() {
            let restored = if request.dry_run {
                plan
            } else {
                if done % 16 == 0 {
                    report(progress, "restoring", done as u64, total, image.name.clone());
                }
                self.inner
                    .catalog
                    .restore_artifact(&RestoreArtifact {
                        wanted: image,
                        locate,
                        overwrite: request.overwrite,
                        dry_run: false,
                        actor: &request.actor,
                        reason: &reason,
                        now,
                        content: content.as_ref(),
                    })
                    .await?
            };
            versions += image.versions.len() as u64;
            artifacts.push(RestoredArtifact {
                source_id,
                artifact_id: restored.artifact_id,
                artifact_type: image.artifact_type.clone(),
                name: image.name.clone(),
                steps: restored.steps,
            });
        }
        report(progress, "restoring", total, total, "done");
        Ok(RestoreReport {
            dry_run: request.dry_run,
            as_of,
            artifacts,
            versions,
        })
    }

    /// Every pack a restore's content names must be on the store.
    async fn check_packs_present(&self, content: &Content, progress: Progress<'_>) -> Result<()> {
        let total = content.packs().count() as u64;
        for (done, pack) in content.packs().enumerate() {
            if done % 64 == 0 {
                report(progress, "checking packs", done as u64, total, "");
            }
            let key = pack_key(&pack.pack_id)?;
            match self.inner.store.head(&key).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(Error::FailedPrecondition(format!(
                        "pack {key}, which the backup needs, is not on the store; nothing was restored"
                    )));
                }
                Err(error) => return Err(store_error(&format!("checking {key}"), error)),
            }
        }
        Ok(())
    }

    /// The images of a project's artifacts (or one artifact) as they were at `at`. For a
    /// restore into the same place, an artifact that did not exist then is wanted in the
    /// trash.
    async fn images_at(
        &self,
        scope: &Scope,
        artifact_id: Option<&str>,
        at: Timestamp,
        request: &RestoreRequest,
    ) -> Result<Vec<ArtifactImage>> {
        let (earliest, seconds) = self.recovery_window().await?;
        let now = now_micros();
        if at.0 < earliest.0 || at.0 > now {
            return Err(Error::OutOfRange(format!(
                "point_in_time.at: {} is outside the recovery window, {} to now ({} s are kept)",
                at.to_rfc3339(),
                earliest.to_rfc3339(),
                seconds
            )));
        }
        let catalog = &self.inner.catalog;
        let ids = match artifact_id {
            Some(id) => {
                validate_artifact_id(id)?;
                if catalog.artifact_by_id(scope, id, true).await?.is_none() {
                    return Err(Error::not_found(format!(
                        "artifact {id:?} not found in {}/{}",
                        scope.tenant, scope.project
                    )));
                }
                vec![id.to_owned()]
            }
            None => catalog.artifact_ids(&scope.tenant, Some(&scope.project)).await?,
        };
        let mut images = Vec::new();
        for id in ids {
            let Some(current) = catalog.artifact_image(&id).await? else {
                continue;
            };
            let then = match catalog.journal_at(&id, at.0).await? {
                Some(journal) => image_at(&current, &journal, at.0),
                None => None,
            };
            match then {
                Some(image) => images.push(image),
                None if request.target == RestoreTarget::SamePlace && current.deleted_at.is_none() => {
                    // Created after `at`: as of then it was not there.
                    let mut gone = current.clone();
                    gone.deleted_at = Some(now);
                    gone.deleted_by = request.actor.clone();
                    images.push(gone);
                }
                None => {}
            }
        }
        if images.is_empty() && artifact_id.is_some() {
            return Err(Error::FailedPrecondition(format!(
                "artifact {} did not exist at {}",
                artifact_id.unwrap_or_default(),
                at.to_rfc3339()
            )));
        }
        Ok(images)
    }

    /// The images as the target wants them: new ids and places for a new project or a new
    /// artifact (dependencies between restored artifacts follow them), paired with their
    /// source ids.
    fn retarget(
        &self,
        images: Vec<ArtifactImage>,
        target: &RestoreTarget,
    ) -> Result<Vec<(String, ArtifactImage)>> {
        match target {
            RestoreTarget::SamePlace => Ok(images
                .into_iter()
                .map(|image| (image.id.clone(), image))
                .collect()),
            RestoreTarget::NewArtifact { project, name } => {
                if images.len() != 1 {
                    return Err(Error::invalid(
                        "target.new_artifact",
                        format!(
                            "restores one artifact; this restore holds {} (name one with artifact_id)",
                            images.len()
                        ),
                    ));
                }
                let mut image = images.into_iter().next().expect("one image");
                let source = image.id.clone();
                image.id = uuid::Uuid::now_v7().to_string();
                if !project.is_empty() {
                    image.project = project.clone();
                }
                image.name = name.clone();
                image.holds.clear();
                Ok(vec![(source, image)])
            }
            RestoreTarget::NewProject(project) => {
                let ids: HashMap<String, String> = images
                    .iter()
                    .map(|image| (image.id.clone(), uuid::Uuid::now_v7().to_string()))
                    .collect();
                Ok(images
                    .into_iter()
                    .map(|mut image| {
                        let source = image.id.clone();
                        image.id = ids[&source].clone();
                        image.project = project.clone();
                        for version in &mut image.versions {
                            for dependency in &mut version.dependencies {
                                if let Some(new) = ids.get(&dependency.target_id) {
                                    dependency.target_id = new.clone();
                                }
                            }
                        }
                        (source, image)
                    })
                    .collect())
            }
        }
    }

    // ---- disaster recovery -------------------------------------------------------------------

    /// Backs up every tenant now (each as one tenant backup): what `dr restore` needs.
    pub async fn dr_export(&self, progress: Progress<'_>) -> Result<Vec<Backup>> {
        let mut taken = Vec::new();
        for tenant in self.inner.catalog.tenants().await? {
            report(
                progress,
                "exporting",
                taken.len() as u64,
                0,
                format!("tenant {tenant}"),
            );
            taken.push(
                self.create_backup(&tenant, "", "", "dr", "dr export", progress)
                    .await?,
            );
        }
        Ok(taken)
    }

    /// Rebuilds this (empty) installation from the backups on `source` (the fallback store,
    /// read on its own): copies the packs the backups need and the backups themselves to
    /// this installation's stores, restores each project's newest backup (and newer
    /// backups of single artifacts), and records every backup found.
    pub async fn dr_restore(&self, source: &DynBlobStore, progress: Progress<'_>) -> Result<DrReport> {
        let mut dr = DrReport::default();
        let listed = source
            .list(backup::PREFIX)
            .await
            .map_err(|e| store_error("listing backups on the source store", e))?;
        let mut bodies: Vec<(String, u64, String, BackupBody)> = Vec::new();
        let total = listed.len() as u64;
        for (done, object) in listed.iter().enumerate() {
            report(
                progress,
                "reading backups",
                done as u64,
                total,
                object.key.clone(),
            );
            let bytes = match read_object(source, &object.key).await {
                Ok(bytes) => bytes,
                Err(error) => {
                    dr.problems.push(error.to_string());
                    continue;
                }
            };
            match backup::decode(&object.key, &bytes) {
                Ok(body) => bodies.push((
                    object.key.clone(),
                    bytes.len() as u64,
                    blake3::hash(&bytes).to_hex().to_string(),
                    body,
                )),
                Err(error) => dr.problems.push(error.to_string()),
            }
        }
        dr.backups_found = bodies
            .iter()
            .map(|(_, _, _, b)| &b.backup_id)
            .collect::<BTreeSet<_>>()
            .len() as u64;
        let secrets: BTreeSet<&str> = bodies
            .iter()
            .map(|(_, _, _, b)| b.service_secret.as_str())
            .collect();
        if secrets.len() > 1 {
            return Err(Error::FailedPrecondition(
                "the source store holds backups of more than one installation; restore from a store holding one"
                    .into(),
            ));
        }
        if let Some(secret) = secrets.into_iter().next() {
            self.adopt_secret(secret).await?;
        }
        // Everything a backup needs goes to this installation's primary first, written there
        // directly (through the failover pair, each missing pack would be read-repaired).
        let primary = match self.failover() {
            Some(pair) => pair.side_store(Side::Primary),
            None => self.inner.store.clone(),
        };
        let mut packs: BTreeSet<String> = BTreeSet::new();
        for (_, _, _, body) in &bodies {
            packs.extend(body.packs.iter().map(|p| p.pack_id.clone()));
        }
        let total = packs.len() as u64;
        for (done, pack_id) in packs.iter().enumerate() {
            if done % 64 == 0 {
                report(progress, "copying packs", done as u64, total, "");
            }
            let key = pack_key(pack_id)?;
            if primary
                .head(&key)
                .await
                .map_err(|e| store_error(&format!("checking {key}"), e))?
                .is_some()
            {
                continue;
            }
            let bytes = match read_object(source, &key).await {
                Ok(bytes) => bytes,
                Err(error) => {
                    dr.problems.push(format!("pack {key}: {error}"));
                    continue;
                }
            };
            primary
                .put(&key, bytes)
                .await
                .map_err(|e| store_error(&format!("copying {key}"), e))?;
            dr.packs_copied += 1;
        }
        for (key, _, _, _) in &bodies {
            let bytes = read_object(source, key).await?;
            self.write_verified(key, bytes).await?;
        }
        // Per project: the newest backup covering all of it, then newer single-artifact ones.
        let mut chosen: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
        let mut order: Vec<usize> = (0..bodies.len()).collect();
        order.sort_by_key(|&i| (bodies[i].3.created_at, bodies[i].3.backup_id.clone()));
        for &i in order.iter().rev() {
            let body = &bodies[i].3;
            let entry = chosen
                .entry((body.tenant.clone(), body.project.clone()))
                .or_default();
            let has_full = entry.iter().any(|&j| bodies[j].3.kind != BackupKind::Artifact);
            if !has_full {
                entry.push(i);
            }
        }
        let mut restored_backups = BTreeSet::new();
        let total = chosen.len() as u64;
        for (done, ((tenant, project), picks)) in chosen.iter().enumerate() {
            report(
                progress,
                "restoring",
                done as u64,
                total,
                format!("{tenant}/{project}"),
            );
            // Oldest first, so newer single-artifact backups win.
            for &i in picks.iter().rev() {
                let body = &bodies[i].3;
                let content = Content::of(Export {
                    artifacts: Vec::new(),
                    chunks: body.chunks.clone(),
                    packs: body.packs.clone(),
                    tenant_keys: body.tenant_keys.clone(),
                })?;
                for image in &body.artifacts {
                    let restored = self
                        .inner
                        .catalog
                        .restore_artifact(&RestoreArtifact {
                            wanted: image,
                            locate: Locate::ById,
                            overwrite: true,
                            dry_run: false,
                            actor: "dr restore",
                            reason: &format!("restored from backup {}", body.backup_id),
                            now: now_micros(),
                            content: Some(&content),
                        })
                        .await;
                    match restored {
                        Ok(_) => {
                            dr.artifacts += 1;
                            dr.versions += image.versions.len() as u64;
                        }
                        Err(error) => dr.problems.push(format!(
                            "{}/{} {} {:?}: {error}",
                            tenant, project, image.artifact_type, image.name
                        )),
                    }
                }
                restored_backups.insert(body.backup_id.clone());
            }
        }
        dr.backups_restored = restored_backups.len() as u64;
        // Every backup found is listed again, pinning its packs.
        let mut by_id: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, (_, _, _, body)) in bodies.iter().enumerate() {
            by_id.entry(body.backup_id.clone()).or_default().push(i);
        }
        for (id, members) in by_id {
            let first = &bodies[members[0]].3;
            let mut summary = BackupSummary::default();
            let mut pins = BTreeMap::new();
            for &i in &members {
                let (key, size, hash, body) = &bodies[i];
                summary.artifacts += body.artifacts.len() as u64;
                summary.versions += body.versions();
                summary.logical_bytes += body.logical_bytes();
                for pack in &body.packs {
                    pins.insert(pack.pack_id.clone(), pack.clone());
                }
                summary.objects.push(BackupObject {
                    key: key.clone(),
                    project: body.project.clone(),
                    size: *size,
                    blake3: hash.clone(),
                    verified_on: self.backup_stores().into_iter().map(|(name, _)| name).collect(),
                });
            }
            summary.packs = pins.len() as u64;
            summary.pack_bytes = pins.values().map(|p| p.size.max(0) as u64).sum();
            let packs: Vec<_> = pins.values().cloned().collect();
            self.inner
                .catalog
                .restore_pack_rows(&first.tenant, &packs)
                .await?;
            let row = BackupRow {
                id: id.clone(),
                tenant: first.tenant.clone(),
                project: if first.kind == BackupKind::Tenant {
                    String::new()
                } else {
                    first.project.clone()
                },
                artifact_id: first.artifact_id.clone(),
                kind: first.kind.as_str().to_owned(),
                trigger: first.trigger.clone(),
                created_by: first.created_by.clone(),
                created_at: first.created_at,
                summary: serde_json::to_string(&summary).map_err(|e| Error::internal(e.to_string()))?,
            };
            let pins: Vec<String> = pins.into_keys().collect();
            match self.inner.catalog.record_backup(&row, &pins, &[]).await {
                Ok(()) | Err(Error::AlreadyExists(_)) => {}
                Err(error) => dr.problems.push(format!("recording backup {id}: {error}")),
            }
        }
        report(progress, "done", 1, 1, "");
        Ok(dr)
    }
}

/// The changes of a restore, flattened for reports.
pub fn restore_changes(report: &RestoreReport) -> Vec<(&RestoredArtifact, &RestoreStep)> {
    report
        .artifacts
        .iter()
        .flat_map(|artifact| artifact.steps.iter().map(move |step| (artifact, step)))
        .filter(|(_, step)| step.kind != StepKind::Skip || !step.detail.is_empty())
        .collect()
}
