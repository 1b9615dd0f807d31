//! When the search index follows the catalog; how is `search::Indexer`'s.

use super::JobResult;
use crate::search::Indexer;
use crate::telemetry::names;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const LAG_EVERY: Duration = Duration::from_secs(1);

/// Follows the outbox until shutdown, recording in the catalog, under `replica_id`, how far
/// it got (the outbox is never pruned past a live replica). A failed step is logged and
/// retried at the next change; the job itself only ends on shutdown (a panic is the
/// supervisor's to restart).
pub async fn run_indexer(indexer: Indexer, replica_id: String, shutdown: CancellationToken) -> JobResult {
    let mut last_verified = None;
    let mut last_measured: Option<Instant> = None;
    loop {
        if let Err(error) = indexer.step(&mut last_verified).await {
            tracing::warn!(%error, "indexing failed; retrying");
        }
        // The lag costs a catalog query: once a second is plenty for a gauge, while steps
        // come every 100 ms when idle.
        if last_measured.is_none_or(|at| at.elapsed() >= LAG_EVERY) {
            match indexer.lag().await {
                Ok(lag) => metrics::gauge!(names::INDEX_LAG_SECONDS).set(lag.as_secs_f64()),
                Err(error) => tracing::debug!(%error, "could not measure the index lag"),
            }
            if let Err(error) = indexer.record_position(&replica_id).await {
                tracing::debug!(%error, "could not record the index position");
            }
            last_measured = Some(Instant::now());
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = indexer.changes() => {}
        }
    }
}
