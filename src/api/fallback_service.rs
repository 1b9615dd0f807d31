//! `artifactd.v1.FallbackService`.

use super::convert::timestamp;
use super::status::to_status;
use crate::domain::{Error, now_micros};
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
use tonic::{Request, Response, Status};

/// Objects examined between two progress messages of SyncFallback.
const PROGRESS_EVERY: u64 = 500;

pub struct FallbackApi {
    failover: Option<Arc<FailoverStore>>,
}

impl FallbackApi {
    pub fn new(failover: Option<Arc<FailoverStore>>) -> Self {
        Self { failover }
    }

    fn failover(&self) -> Result<&Arc<FailoverStore>, Status> {
        self.failover.as_ref().ok_or_else(|| {
            to_status(Error::FailedPrecondition(
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
        at: Some(timestamp(event.at_micros)),
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
        _: Request<TestFallbackRequest>,
    ) -> Result<Response<TestFallbackResponse>, Status> {
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
        _: Request<GetFallbackStatusRequest>,
    ) -> Result<Response<GetFallbackStatusResponse>, Status> {
        let status = self.failover()?.status().await.map_err(to_status)?;
        let degraded = status
            .sides
            .iter()
            .any(|s| s.breaker.state != BreakerState::Closed)
            || status.write_target != Side::Primary;
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
                    queued_at: Some(timestamp(item.created_at)),
                    next_attempt_at: Some(timestamp(item.next_attempt_at)),
                })
                .collect(),
            last_failover: event(status.last_failover),
            last_failback: event(status.last_failback),
        }))
    }

    type SyncFallbackStream = SyncStream;

    async fn sync_fallback(
        &self,
        request: Request<SyncFallbackRequest>,
    ) -> Result<Response<SyncStream>, Status> {
        let failover = self.failover()?.clone();
        let dry_run = request.into_inner().dry_run;
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        // The reconciliation runs to completion even when the client stops listening: every
        // copy it makes is complete and idempotent, so an early end would only waste work.
        tokio::spawn(async move {
            let progress_sender = sender.clone();
            let outcome = failover
                .sync(dry_run, |report| {
                    if report.examined % PROGRESS_EVERY == 0 && report.examined > 0 {
                        let _ = progress_sender.try_send(Ok(SyncFallbackResponse {
                            message: Some(sync_fallback_response::Message::Progress(result(report))),
                        }));
                    }
                })
                .await;
            let last = match outcome {
                Ok(report) => Ok(SyncFallbackResponse {
                    message: Some(sync_fallback_response::Message::Result(result(&report))),
                }),
                Err(error) => Err(Status::unavailable(format!(
                    "both stores must answer to be reconciled: {error}"
                ))),
            };
            let _ = sender.send(last).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn get_fallback_metrics(
        &self,
        _: Request<GetFallbackMetricsRequest>,
    ) -> Result<Response<GetFallbackMetricsResponse>, Status> {
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
