//! `artifactd.v1.AdminService`: the supervisor's job board and the last health report.

use super::convert::timestamp;
use crate::app::Artifacts;
use crate::domain::Timestamp;
use crate::jobs::{JobBoard, JobState, LastHealth};
use crate::proto::admin_service_server::AdminService;
use crate::proto::{self, GetServerStatusRequest, GetServerStatusResponse};
use crate::storage::DynBlobStore;
use tonic::{Request, Response, Status};

pub struct AdminApi {
    jobs: JobBoard,
    health: LastHealth,
    artifacts: Artifacts,
    /// Each store by name, for consistency checks.
    stores: Vec<(String, DynBlobStore)>,
}

impl AdminApi {
    pub fn new(
        jobs: JobBoard,
        health: LastHealth,
        artifacts: Artifacts,
        stores: Vec<(String, DynBlobStore)>,
    ) -> Self {
        Self {
            jobs,
            health,
            artifacts,
            stores,
        }
    }
}

fn job_state(state: JobState) -> i32 {
    match state {
        JobState::Running => proto::JobState::Running as i32,
        JobState::Restarting => proto::JobState::Restarting as i32,
        JobState::Stopped => proto::JobState::Stopped as i32,
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn get_server_status(
        &self,
        request: Request<GetServerStatusRequest>,
    ) -> Result<Response<GetServerStatusResponse>, Status> {
        super::caller(&request)?.authorize_server()?;
        Ok(Response::new(GetServerStatusResponse {
            jobs: self
                .jobs
                .snapshot()
                .into_iter()
                .map(|job| proto::JobStatus {
                    name: job.name.to_owned(),
                    state: job_state(job.state),
                    restarts: job.restarts,
                    last_error: job.last_error.unwrap_or_default(),
                    since: Some(timestamp(Timestamp(job.since))),
                })
                .collect(),
            services: self
                .health
                .services()
                .into_iter()
                .map(|(service, serving)| proto::ServiceHealth {
                    service: service.to_owned(),
                    serving,
                })
                .collect(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            cache: Some(cache_status(self.artifacts.cache_status())),
        }))
    }

    async fn check_consistency(
        &self,
        request: Request<proto::CheckConsistencyRequest>,
    ) -> Result<Response<proto::CheckConsistencyResponse>, Status> {
        super::caller(&request)?.authorize_server()?;
        let report = self
            .artifacts
            .check(&self.stores, request.into_inner().read_data)
            .await?;
        Ok(Response::new(proto::CheckConsistencyResponse {
            versions: report.versions,
            chunks: report.chunks,
            packs: report.packs,
            stores: report.stores,
            bytes_read: report.bytes_read,
            destroyed_versions: report.destroyed_versions,
            problems: report.problems,
            orphans: report.orphans,
        }))
    }

    async fn collect_garbage(
        &self,
        request: Request<proto::CollectGarbageRequest>,
    ) -> Result<Response<proto::CollectGarbageResponse>, Status> {
        super::caller(&request)?.authorize_server()?;
        let report = self
            .artifacts
            .collect_garbage(request.into_inner().dry_run)
            .await?;
        Ok(Response::new(proto::CollectGarbageResponse {
            report: Some(gc_to_proto(report)),
        }))
    }

    async fn list_garbage_collections(
        &self,
        request: Request<proto::ListGarbageCollectionsRequest>,
    ) -> Result<Response<proto::ListGarbageCollectionsResponse>, Status> {
        super::caller(&request)?.authorize_server()?;
        let runs = self.artifacts.gc_runs(request.into_inner().limit).await?;
        Ok(Response::new(proto::ListGarbageCollectionsResponse {
            runs: runs.into_iter().map(gc_to_proto).collect(),
        }))
    }
}

fn gc_to_proto(report: crate::app::GcReport) -> proto::GarbageCollection {
    proto::GarbageCollection {
        id: report.id,
        dry_run: report.dry_run,
        started_at: Some(timestamp(Timestamp(report.started_at))),
        finished_at: Some(timestamp(Timestamp(report.finished_at))),
        versions_scanned: report.versions_scanned,
        chunks_scanned: report.chunks_scanned,
        packs_examined: report.packs_examined,
        bytes_examined: report.bytes_examined,
        packs_marked: report.packs_marked,
        marks_cleared: report.marks_cleared,
        packs_reclaimed: report.packs_reclaimed,
        bytes_reclaimed: report.bytes_reclaimed,
        packs_compacted: report.packs_compacted,
        bytes_compacted: report.bytes_compacted,
        bytes_rewritten: report.bytes_rewritten,
        objects_deleted: report.objects_deleted,
        delete_failures: report.delete_failures,
        kept: report
            .kept
            .into_iter()
            .map(|kept| proto::GarbageKept {
                reason: kept.reason,
                packs: kept.packs,
                bytes: kept.bytes,
            })
            .collect(),
        problems: report.problems,
        holder: report.holder,
    }
}

fn cache_status(status: crate::app::CacheStatus) -> proto::CacheStatus {
    let disk = status.disk.unwrap_or_default();
    proto::CacheStatus {
        memory_bytes: status.memory_bytes,
        memory_capacity_bytes: status.memory_capacity,
        memory_hits: status.memory_hits,
        memory_misses: status.memory_misses,
        disk_bytes: disk.bytes,
        disk_capacity_bytes: disk.capacity,
        disk_hits: disk.hits,
        disk_misses: disk.misses,
        disk_problem: disk.problem.unwrap_or_default(),
    }
}
