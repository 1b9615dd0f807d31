//! When the failover pair's background work runs; what it does is the storage core's
//! (`storage::FailoverStore`): probing, draining the replication queue, reconciling.

use super::JobResult;
use crate::storage::FailoverStore;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// With nothing queued, the replication queue is still looked at this often (other
/// replicas queue copies too).
const REPLICATION_POLL: Duration = Duration::from_millis(250);
/// When a side could not be listed, the next reconciliation comes this soon at the latest.
const RECONCILE_RETRY_AFTER_ERRORS: Duration = Duration::from_secs(60);

/// Probes both stores every probe interval; results feed their breakers.
pub async fn run_prober(store: Arc<FailoverStore>, shutdown: CancellationToken) -> JobResult {
    loop {
        store.probe_due().await;
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(store.config().probe_interval) => {}
        }
    }
}

/// Copies queued objects with bounded concurrency, retrying failed items with exponential
/// backoff for as long as it takes.
pub async fn run_replicator(store: Arc<FailoverStore>, shutdown: CancellationToken) -> JobResult {
    loop {
        let attempts = store.replicate_due().await;
        store.publish_queue_metrics().await;
        // More may be due at once; but when the catalog cannot record outcomes, the same
        // items would come back immediately: wait instead of spinning.
        if attempts.attempted > 0 && attempts.unrecorded == 0 {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = store.work_queued() => {}
            _ = tokio::time::sleep(REPLICATION_POLL) => {}
        }
    }
}

/// Reconciles the stores with the catalog at start, every reconcile interval, and whenever
/// a side recovers.
pub async fn run_reconciler(store: Arc<FailoverStore>, shutdown: CancellationToken) -> JobResult {
    loop {
        let report = store.reconcile().await;
        tracing::debug!(?report, "reconciled the stores with the catalog");
        // A side that could not be listed is compared again soon, not in a quarter hour.
        let interval = store.config().reconcile_interval;
        let next = if report.errors.is_empty() {
            interval
        } else {
            interval.min(RECONCILE_RETRY_AFTER_ERRORS)
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = store.recovered() => {}
            _ = tokio::time::sleep(next) => {}
        }
    }
}
