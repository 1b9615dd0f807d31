//! The fallback sync job: runs the full reconciliations operators ask for with
//! `SyncFallback`, one at a time, under the supervisor. The request only listens to its
//! progress: a reconciliation runs to completion even when the caller stops listening,
//! since every copy it makes is complete and idempotent.

use super::JobResult;
use crate::storage::{FailoverStore, StoreError, SyncReport};
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

/// Reconciliations that may wait behind the running one.
const WAITING_REQUESTS: usize = 4;
/// A progress report every this many objects examined.
const PROGRESS_EVERY: u64 = 500;

/// What a caller hears about its reconciliation.
#[derive(Debug)]
pub enum SyncProgress {
    Progress(SyncReport),
    Finished(Result<SyncReport, StoreError>),
}

#[derive(Debug)]
pub struct SyncRequest {
    pub dry_run: bool,
    pub progress: mpsc::Sender<SyncProgress>,
}

pub struct FallbackSync {
    failover: Arc<FailoverStore>,
    requests: Arc<Mutex<mpsc::Receiver<SyncRequest>>>,
}

impl FallbackSync {
    /// The job and the sender that `SyncFallback` submits to.
    pub fn new(failover: Arc<FailoverStore>) -> (Self, mpsc::Sender<SyncRequest>) {
        let (sender, receiver) = mpsc::channel(WAITING_REQUESTS);
        (
            Self {
                failover,
                requests: Arc::new(Mutex::new(receiver)),
            },
            sender,
        )
    }

    pub async fn run(&self, shutdown: CancellationToken) -> JobResult {
        let mut requests = self.requests.lock().await;
        loop {
            let request = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                request = requests.recv() => request,
            };
            let Some(request) = request else {
                // The service that submits requests is gone (the server is stopping): wait
                // for the shutdown rather than end as if failed.
                shutdown.cancelled().await;
                return Ok(());
            };
            let progress = request.progress.clone();
            let outcome = self
                .failover
                .sync(request.dry_run, |report| {
                    if report.examined > 0 && report.examined % PROGRESS_EVERY == 0 {
                        let _ = progress.try_send(SyncProgress::Progress(report.clone()));
                    }
                })
                .await;
            let _ = request.progress.send(SyncProgress::Finished(outcome)).await;
        }
    }
}
