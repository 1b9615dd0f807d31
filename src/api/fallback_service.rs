//! `artifactd.v1.FallbackService`.

use super::convert::timestamp;
use crate::domain::{Error, Timestamp, now_micros};
use crate::jobs::{SyncProgress, SyncRequest};
use crate::proto::fallback_service_server::FallbackService;
use crate::proto::{
    self, GetFallbackMetricsRequest, GetFallbackMetricsResponse, GetFallbackStatusRequest,
    GetFallbackStatusResponse, StoreSide, SyncFallbackRequest, SyncFallbackResponse, SyncFallbackResult,
    TestFallbackRequest, TestFallbackResponse, sync_fallback_response,
};
use crate::storage::{BreakerState, FailoverStore, Side, SwitchEvent, SyncReport};
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

pub struct FallbackApi {
    failover: Option<Arc<FailoverStore>>,
    /// Where SyncFallback hands its reconciliation to the supervised sync job.
    sync_requests: Option<mpsc::Sender<SyncRequest>>,
}

impl FallbackApi {
    pub fn new(
        failover: Option<Arc<FailoverStore>>,
        sync_requests: Option<mpsc::Sender<SyncRequest>>,
    ) -> Self {
        Self {
            failover,
            sync_requests,
        }
    }

    fn failover(&self) -> Result<&Arc<FailoverStore>, Status> {
        self.failover.as_ref().ok_or_else(|| {
            Status::from(Error::FailedPrecondition(
                "no fallback store is configured (set S3_FALLBACK_ENABLED and the S3_FALLBACK_* variables)"
                    .to_owned(),
            ))
        })
    }
}

fn side(side: Side) -> i32 {
    match side {
        Side::Primary => StoreSide::Primary as i32,
        Side::Fallback => StoreSide::Fallback as i32,
    }
}

fn breaker_state(state: BreakerState) -> i32 {
    match state {
        BreakerState::Closed => proto::BreakerState::Closed as i32,
        BreakerState::Open => proto::BreakerState::Open as i32,
        BreakerState::HalfOpen => proto::BreakerState::HalfOpen as i32,
    }
}

fn event(event: Option<SwitchEvent>) -> Option<proto::SwitchEvent> {
    event.map(|event| proto::SwitchEvent {
        at: Some(timestamp(Timestamp(event.at_micros))),
        reason: event.reason,
    })
}

fn result(report: &SyncReport) -> SyncFallbackResult {
    SyncFallbackResult {
        examined: report.examined,
        missing_on_primary: report.missing_on_primary,
        missing_on_fallback: report.missing_on_fallback,
        copied_to_primary: report.copied_to_primary,
        copied_to_fallback: report.copied_to_fallback,
        errors: report.errors.clone(),
    }
}

fn milliseconds(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

type SyncStream = Pin<Box<dyn Stream<Item = Result<SyncFallbackResponse, Status>> + Send>>;

#[tonic::async_trait]
impl FallbackService for FallbackApi {
    async fn test_fallback(
        &self,
        request: Request<TestFallbackRequest>,
    ) -> Result<Response<TestFallbackResponse>, Status> {
        super::caller(&request)?.authorize_server()?;
        let reports = self.failover()?.probe_now().await;
        Ok(Response::new(TestFallbackResponse {
            stores: reports
                .into_iter()
                .map(|report| proto::StoreProbe {
                    side: side(report.side),
                    store: report.store_name.clone(),
                    reachable: report.reachable,
                    can_write: report.can_write,
                    can_read: report.can_read,
                    can_delete: report.can_delete,
                    latency_ms: milliseconds(report.latency),
                    error: report.error.unwrap_or_default(),
                })
                .collect(),
        }))
    }

    async fn get_fallback_status(
        &self,
        request: Request<GetFallbackStatusRequest>,
    ) -> Result<Response<GetFallbackStatusResponse>, Status> {
        super::caller(&request)?.authorize_server()?;
        let status = self.failover()?.status().await?;
        let degraded = status.degraded() || status.write_target != Side::Primary;
        let last_reconcile = status.last_reconcile.clone();
        Ok(Response::new(GetFallbackStatusResponse {
            stores: status
                .sides
                .iter()
                .map(|s| proto::StoreStatus {
                    side: side(s.side),
                    store: s.store_name.clone(),
                    breaker_state: breaker_state(s.breaker.state),
                    consecutive_failures: s.breaker.consecutive_failures,
                    open_for_ms: s.breaker.open_for.map(milliseconds).unwrap_or(0.0),
                    last_error: s.breaker.last_error.clone().unwrap_or_default(),
                    last_probe_latency_ms: milliseconds(s.last_probe_latency),
                    lacking: s.lacking,
                    repaired: s.repaired,
                    missing_at_last_reconciliation: last_reconcile
                        .as_ref()
                        .map_or(0, |r| r.missing_on(s.side)),
                    damaged_at_last_reconciliation: last_reconcile
                        .as_ref()
                        .map_or(0, |r| r.damaged_on(s.side)),
                })
                .collect(),
            write_target: side(status.write_target),
            degraded,
            queue_depth: status.replication.depth,
            oldest_pending_age_seconds: status
                .replication
                .oldest_created_at
                .map(|created| (now_micros() - created).max(0) as f64 / 1e6)
                .unwrap_or(0.0),
            failing_items: status
                .replication
                .failing
                .iter()
                .map(|item| proto::ReplicationItem {
                    key: item.key.clone(),
                    target: side(item.target),
                    attempts: item.attempts as u64,
                    last_error: item.last_error.clone().unwrap_or_default(),
                    queued_at: Some(timestamp(Timestamp(item.created_at))),
                    next_attempt_at: Some(timestamp(Timestamp(item.next_attempt_at))),
                })
                .collect(),
            last_failover: event(status.last_failover),
            last_failback: event(status.last_failback),
            last_reconciliation_at: last_reconcile
                .as_ref()
                .map(|r| timestamp(Timestamp(r.finished_at))),
            last_reconciliation_expected: last_reconcile.as_ref().map_or(0, |r| r.expected),
        }))
    }

    type SyncFallbackStream = SyncStream;

    async fn sync_fallback(
        &self,
        request: Request<SyncFallbackRequest>,
    ) -> Result<Response<SyncStream>, Status> {
        super::caller(&request)?.authorize_server()?;
        self.failover()?;
        let Some(sync_requests) = &self.sync_requests else {
            return Err(Status::failed_precondition(
                "the fallback sync job is not running",
            ));
        };
        let dry_run = request.into_inner().dry_run;
        let (progress, reports) = mpsc::channel(16);
        sync_requests
            .try_send(SyncRequest { dry_run, progress })
            .map_err(|_| {
                Status::resource_exhausted("reconciliations are already queued; try again when they finish")
            })?;
        let stream = futures::stream::unfold(reports, |mut reports| async move {
            let message = match reports.recv().await? {
                SyncProgress::Progress(report) => Ok(SyncFallbackResponse {
                    message: Some(sync_fallback_response::Message::Progress(result(&report))),
                }),
                SyncProgress::Finished(Ok(report)) => Ok(SyncFallbackResponse {
                    message: Some(sync_fallback_response::Message::Result(result(&report))),
                }),
                SyncProgress::Finished(Err(error)) => Err(Status::unavailable(format!(
                    "both stores must answer to be reconciled: {error}"
                ))),
            };
            Some((message, reports))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_fallback_metrics(
        &self,
        request: Request<GetFallbackMetricsRequest>,
    ) -> Result<Response<GetFallbackMetricsResponse>, Status> {
        super::caller(&request)?.authorize_server()?;
        let metrics = self.failover()?.metrics();
        Ok(Response::new(GetFallbackMetricsResponse {
            stores: metrics
                .sides
                .iter()
                .map(|s| proto::StoreMetrics {
                    side: side(s.side),
                    operations: s.operations,
                    errors: s.errors,
                    bytes_written: s.bytes_written,
                    bytes_read: s.bytes_read,
                    mean_latency_ms: milliseconds(s.mean_latency),
                })
                .collect(),
            failover_count: metrics.failover_count,
            seconds_failed_over: metrics.time_failed_over.as_secs_f64(),
            replicated_objects: metrics.replicated_objects,
            replicated_bytes: metrics.replicated_bytes,
            replication_mib_per_second: metrics.replication_bytes_per_second / (1024.0 * 1024.0),
        }))
    }
}
