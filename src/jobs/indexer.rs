//! When the search index follows the catalog; how is `search::Indexer`'s.

use super::JobResult;
use crate::search::Indexer;
use crate::telemetry::names;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const LAG_EVERY: Duration = Duration::from_secs(1);
/// Under a stream of changes, commits are at least this far apart, so that many small writes
/// share one: each commit costs a sync, a new segment and a restart of the writer's threads
/// (500 creates in a row made about 200 commits, and the indexer most of the server's CPU).
/// A change that arrives after a quiet spell is committed at once; one that arrives in a
/// stream waits at most this long, well inside the one-second freshness goal.
const COMMIT_SPACING: Duration = Duration::from_millis(100);

/// Follows the outbox until shutdown, recording in the catalog, under `replica_id`, how far
/// it got (the outbox is never pruned past a live replica). A failed step is logged and
/// retried at the next change; the job itself only ends on shutdown (a panic is the
/// supervisor's to restart).
pub async fn run_indexer(indexer: Indexer, replica_id: String, shutdown: CancellationToken) -> JobResult {
    let mut last_verified = None;
    let mut last_measured: Option<Instant> = None;
    let mut last_commit: Option<Instant> = None;
    loop {
        match indexer.step(&mut last_verified).await {
            Ok(0) => {}
            Ok(_) => last_commit = Some(Instant::now()),
            Err(error) => tracing::warn!(%error, "indexing failed; retrying"),
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
        let spacing = last_commit.map_or(Duration::ZERO, |at| COMMIT_SPACING.saturating_sub(at.elapsed()));
        if !spacing.is_zero() {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(spacing) => {}
            }
        }
    }
}
