//! `artifactd.v1.BackupService`: backups, restores, point-in-time recovery, schedules.

use super::caller;
use super::convert::timestamp;
use crate::app::{
    Artifacts, BackupProgress, RestoreReport, RestoreRequest, RestoreSource, RestoreTarget, restore_changes,
};
use crate::domain::access::Permission;
use crate::domain::backup::{Backup, BackupKind, BackupSchedule, StepKind};
use crate::domain::{Error, Result, Scope, Timestamp};
use crate::identity::Caller;
use crate::proto::backup_service_server::BackupService;
use crate::proto::{
    self, create_backup_response, restore_backup_request, restore_backup_response, restore_target,
};
use futures::Stream;
use std::pin::Pin;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

pub struct BackupApi {
    artifacts: Artifacts,
}

impl BackupApi {
    pub fn new(artifacts: Artifacts) -> Self {
        Self { artifacts }
    }
}

/// A project-scoped call; an empty project is the whole tenant, which needs ManageTenant.
fn authorized(caller: &Caller, tenant: &str, project: &str) -> Result<()> {
    super::request_layer::record_scope(tenant, project);
    if project.is_empty() {
        caller.authorize_in(tenant, None)?;
        caller.require(Permission::ManageTenant, tenant, None)
    } else {
        caller.authorize_in(tenant, Some(project))
    }
}

fn kind(kind: BackupKind) -> i32 {
    (match kind {
        BackupKind::Tenant => proto::BackupKind::Tenant,
        BackupKind::Project => proto::BackupKind::Project,
        BackupKind::Artifact => proto::BackupKind::Artifact,
    }) as i32
}

fn backup(b: Backup) -> proto::Backup {
    proto::Backup {
        id: b.id,
        tenant: b.tenant,
        project: b.project,
        artifact_id: b.artifact_id,
        kind: kind(b.kind),
        trigger: b.trigger,
        created_by: b.created_by,
        created_at: Some(timestamp(b.created_at)),
        artifacts: b.summary.artifacts,
        versions: b.summary.versions,
        logical_bytes: b.summary.logical_bytes,
        pack_bytes: b.summary.pack_bytes,
        packs: b.summary.packs,
        objects: b
            .summary
            .objects
            .into_iter()
            .map(|o| proto::BackupObject {
                key: o.key,
                project: o.project,
                size: o.size,
                blake3: o.blake3,
                verified_on: o.verified_on,
            })
            .collect(),
    }
}

fn schedule(s: BackupSchedule) -> proto::BackupSchedule {
    proto::BackupSchedule {
        tenant: s.tenant,
        project: s.project,
        interval_seconds: s.interval_seconds,
        keep: s.keep,
        updated_by: s.updated_by,
        updated_at: Some(timestamp(s.updated_at)),
        last_run_at: s.last_run_at.map(timestamp),
    }
}

fn progress(p: BackupProgress) -> proto::BackupProgress {
    proto::BackupProgress {
        phase: p.phase.to_owned(),
        done: p.done,
        total: p.total,
        detail: p.detail,
    }
}

fn step_kind(kind: StepKind) -> i32 {
    use proto::RestoreChangeKind as K;
    (match kind {
        StepKind::CreateArtifact => K::CreateArtifact,
        StepKind::SetFields => K::SetFields,
        StepKind::AddVersion => K::AddVersion,
        StepKind::SetState => K::SetState,
        StepKind::TrashVersion => K::TrashVersion,
        StepKind::UntrashVersion => K::UntrashVersion,
        StepKind::SetAliases => K::SetAliases,
        StepKind::DeleteArtifact => K::DeleteArtifact,
        StepKind::UndeleteArtifact => K::UndeleteArtifact,
        StepKind::Skip => K::Skip,
    }) as i32
}

fn result(report: &RestoreReport) -> proto::RestoreResult {
    proto::RestoreResult {
        dry_run: report.dry_run,
        as_of: Some(timestamp(report.as_of)),
        artifacts: report.artifacts.len() as u64,
        versions: report.versions,
        changes: restore_changes(report)
            .into_iter()
            .map(|(artifact, step)| proto::RestoreChange {
                artifact_id: artifact.artifact_id.clone(),
                artifact_type: artifact.artifact_type.clone(),
                name: artifact.name.clone(),
                version: step.version.clone(),
                kind: step_kind(step.kind),
                detail: step.detail.clone(),
            })
            .collect(),
        new_ids: report
            .artifacts
            .iter()
            .filter(|a| a.source_id != a.artifact_id)
            .map(|a| (a.source_id.clone(), a.artifact_id.clone()))
            .collect(),
    }
}

fn micros(field: &'static str, value: Option<prost_types::Timestamp>) -> Result<Timestamp> {
    let t = value.ok_or_else(|| Error::invalid(field, "is required"))?;
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(Error::invalid(field, "nanos must be within 0..1e9"));
    }
    Ok(Timestamp(
        t.seconds.saturating_mul(1_000_000) + i64::from(t.nanos / 1000),
    ))
}

type CreateStream = Pin<Box<dyn Stream<Item = Result<proto::CreateBackupResponse, Status>> + Send>>;
type RestoreStream = Pin<Box<dyn Stream<Item = Result<proto::RestoreBackupResponse, Status>> + Send>>;

/// Runs `work` on its own task, streaming its progress and then its outcome. The work
/// finishes even when the caller goes away: a backup or restore is never left half-done by
/// a dropped connection.
fn streamed<T, M, F, Fut>(
    work: F,
    wrap_done: fn(T) -> M,
) -> Pin<Box<dyn Stream<Item = Result<M, Status>> + Send>>
where
    T: Send + 'static,
    M: Send + 'static,
    F: FnOnce(mpsc::Sender<Result<M, Status>>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let (sender, receiver) = mpsc::channel(32);
    let done = sender.clone();
    tokio::spawn(async move {
        let outcome = work(sender).await;
        let _ = done.send(outcome.map(wrap_done).map_err(Status::from)).await;
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
}

#[tonic::async_trait]
impl BackupService for BackupApi {
    type CreateBackupStream = CreateStream;

    async fn create_backup(
        &self,
        request: Request<proto::CreateBackupRequest>,
    ) -> Result<Response<CreateStream>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        authorized(&caller, &r.tenant, &r.project)?;
        if !r.artifact_id.is_empty() {
            caller.target(&r.artifact_id);
        }
        let artifacts = self.artifacts.clone();
        let actor = caller.actor();
        let wrap_progress = |p| proto::CreateBackupResponse {
            message: Some(create_backup_response::Message::Progress(p)),
        };
        let wrap_done = |b| proto::CreateBackupResponse {
            message: Some(create_backup_response::Message::Backup(backup(b))),
        };
        Ok(Response::new(streamed(
            move |sender| async move {
                let notify = move |p: BackupProgress| {
                    let _ = sender.try_send(Ok(wrap_progress(progress(p))));
                };
                artifacts
                    .create_backup(&r.tenant, &r.project, &r.artifact_id, "manual", &actor, &notify)
                    .await
            },
            wrap_done,
        )))
    }

    async fn list_backups(
        &self,
        request: Request<proto::ListBackupsRequest>,
    ) -> Result<Response<proto::ListBackupsResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        authorized(&caller, &r.tenant, &r.project)?;
        let page = self
            .artifacts
            .list_backups(&r.tenant, &r.project, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(proto::ListBackupsResponse {
            backups: page.items.into_iter().map(backup).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_backup(
        &self,
        request: Request<proto::GetBackupRequest>,
    ) -> Result<Response<proto::GetBackupResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        authorized(&caller, &r.tenant, &r.project)?;
        caller.target(&r.backup_id);
        let found = self.artifacts.backup(&r.tenant, &r.project, &r.backup_id).await?;
        let problems = if r.verify {
            self.artifacts.verify_backup(&found).await?
        } else {
            Vec::new()
        };
        Ok(Response::new(proto::GetBackupResponse {
            backup: Some(backup(found)),
            problems,
        }))
    }

    async fn delete_backup(
        &self,
        request: Request<proto::DeleteBackupRequest>,
    ) -> Result<Response<proto::DeleteBackupResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        authorized(&caller, &r.tenant, &r.project)?;
        caller.target(&r.backup_id);
        let found = self.artifacts.backup(&r.tenant, &r.project, &r.backup_id).await?;
        if found.project.is_empty() && !r.project.is_empty() {
            // A tenant backup is the tenant's to delete.
            caller.require(Permission::ManageTenant, &r.tenant, None)?;
        }
        self.artifacts
            .delete_backup(&r.tenant, &r.project, &r.backup_id)
            .await?;
        Ok(Response::new(proto::DeleteBackupResponse {}))
    }

    type RestoreBackupStream = RestoreStream;

    async fn restore_backup(
        &self,
        request: Request<proto::RestoreBackupRequest>,
    ) -> Result<Response<RestoreStream>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        if r.project.is_empty() {
            return Err(Error::invalid("project", "is required: a restore writes into a project").into());
        }
        authorized(&caller, &r.tenant, &r.project)?;
        let source = match r.source {
            Some(restore_backup_request::Source::BackupId(backup_id)) => {
                caller.target(&backup_id);
                RestoreSource::Backup {
                    backup_id,
                    artifact_id: Some(r.artifact_id.clone()).filter(|id| !id.is_empty()),
                }
            }
            Some(restore_backup_request::Source::PointInTime(point)) => {
                if !r.artifact_id.is_empty()
                    && !point.artifact_id.is_empty()
                    && r.artifact_id != point.artifact_id
                {
                    return Err(Error::invalid(
                        "artifact_id",
                        "differs from point_in_time.artifact_id; give one",
                    )
                    .into());
                }
                let artifact_id = Some(point.artifact_id)
                    .filter(|id| !id.is_empty())
                    .or(Some(r.artifact_id.clone()).filter(|id| !id.is_empty()));
                RestoreSource::PointInTime {
                    artifact_id,
                    at: micros("point_in_time.at", point.at)?,
                }
            }
            None => {
                return Err(Error::invalid("source", "is unset; give a backup_id or a point_in_time").into());
            }
        };
        let target = match r.target.and_then(|t| t.target) {
            None | Some(restore_target::Target::SamePlace(_)) => RestoreTarget::SamePlace,
            Some(restore_target::Target::NewProject(project)) => {
                // Writing there needs the same permission there.
                caller.authorize_in(&r.tenant, Some(&project))?;
                RestoreTarget::NewProject(project)
            }
            Some(restore_target::Target::NewArtifact(new)) => {
                if !new.project.is_empty() {
                    caller.authorize_in(&r.tenant, Some(&new.project))?;
                }
                RestoreTarget::NewArtifact {
                    project: new.project,
                    name: new.name,
                }
            }
        };
        let restore = RestoreRequest {
            scope: Scope::new(r.tenant, r.project),
            source,
            target,
            overwrite: r.overwrite,
            dry_run: r.dry_run,
            actor: caller.actor(),
        };
        let artifacts = self.artifacts.clone();
        let wrap_progress = |p| proto::RestoreBackupResponse {
            message: Some(restore_backup_response::Message::Progress(p)),
        };
        let wrap_done = |report: RestoreReport| proto::RestoreBackupResponse {
            message: Some(restore_backup_response::Message::Result(result(&report))),
        };
        Ok(Response::new(streamed(
            move |sender| async move {
                let notify = move |p: BackupProgress| {
                    let _ = sender.try_send(Ok(wrap_progress(progress(p))));
                };
                let report = artifacts.restore(&restore, &notify).await?;
                if !report.dry_run {
                    let source = match restore.source {
                        RestoreSource::Backup { .. } => "backup",
                        RestoreSource::PointInTime { .. } => "point_in_time",
                    };
                    metrics::counter!(crate::telemetry::names::RESTORES_TOTAL, "source" => source)
                        .increment(1);
                }
                Ok(report)
            },
            wrap_done,
        )))
    }

    async fn set_backup_schedule(
        &self,
        request: Request<proto::SetBackupScheduleRequest>,
    ) -> Result<Response<proto::SetBackupScheduleResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        if r.project.is_empty() {
            return Err(Error::invalid("project", "is required: schedules back up a project").into());
        }
        authorized(&caller, &r.tenant, &r.project)?;
        let scope = Scope::new(r.tenant, r.project);
        let set = self
            .artifacts
            .set_backup_schedule(&scope, r.interval_seconds, r.keep, &caller.actor())
            .await?;
        Ok(Response::new(proto::SetBackupScheduleResponse {
            schedule: set.map(schedule),
        }))
    }

    async fn list_backup_schedules(
        &self,
        request: Request<proto::ListBackupSchedulesRequest>,
    ) -> Result<Response<proto::ListBackupSchedulesResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        authorized(&caller, &r.tenant, &r.project)?;
        let schedules = self.artifacts.backup_schedules(&r.tenant, &r.project).await?;
        Ok(Response::new(proto::ListBackupSchedulesResponse {
            schedules: schedules.into_iter().map(schedule).collect(),
        }))
    }

    async fn get_recovery_window(
        &self,
        request: Request<proto::GetRecoveryWindowRequest>,
    ) -> Result<Response<proto::GetRecoveryWindowResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        authorized(&caller, &r.tenant, &r.project)?;
        let (earliest, seconds) = self.artifacts.recovery_window().await?;
        Ok(Response::new(proto::GetRecoveryWindowResponse {
            earliest: Some(timestamp(earliest)),
            window_seconds: seconds,
        }))
    }
}
