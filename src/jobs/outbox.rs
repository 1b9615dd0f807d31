//! Pruning the outbox: events older than the retention horizon go, but never past the
//! position of a live replica's search index.

use super::JobResult;
use crate::app::EventSettings;
use crate::catalog::Catalog;
use crate::domain::now_micros;
use crate::telemetry::names;
use tokio_util::sync::CancellationToken;

/// Prunes every `prune_interval` until shutdown; a failed round is logged and retried at the
/// next one.
pub async fn run_outbox_pruner(
    catalog: Catalog,
    settings: EventSettings,
    shutdown: CancellationToken,
) -> JobResult {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(settings.prune_interval) => {}
        }
        let now = now_micros();
        let created_before = now.saturating_sub(seconds_in_micros(settings.retention_seconds));
        let live_since = now.saturating_sub(seconds_in_micros(settings.replica_liveness_seconds));
        match catalog.prune_outbox(created_before, live_since).await {
            Ok(0) => {}
            Ok(deleted) => {
                metrics::counter!(names::OUTBOX_PRUNED_TOTAL).increment(deleted);
                tracing::info!(deleted, "pruned the outbox");
            }
            Err(error) => tracing::warn!(%error, "pruning the outbox failed; retrying next round"),
        }
    }
}

fn seconds_in_micros(seconds: u64) -> i64 {
    i64::try_from(seconds.saturating_mul(1_000_000)).unwrap_or(i64::MAX)
}
