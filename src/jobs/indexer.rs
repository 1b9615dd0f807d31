//! When the search index follows the catalog; how is `search::Indexer`'s.

use super::JobResult;
use crate::search::Indexer;
use crate::telemetry::names;
use tokio_util::sync::CancellationToken;

/// Follows the outbox until shutdown. A failed step is logged and retried at the next
/// change; the job itself only ends on shutdown (a panic is the supervisor's to restart).
pub async fn run_indexer(indexer: Indexer, shutdown: CancellationToken) -> JobResult {
    let mut last_verified = None;
    loop {
        if let Err(error) = indexer.step(&mut last_verified).await {
            tracing::warn!(%error, "indexing failed; retrying");
        }
        match indexer.lag().await {
            Ok(lag) => metrics::gauge!(names::INDEX_LAG_SECONDS).set(lag.as_secs_f64()),
            Err(error) => tracing::debug!(%error, "could not measure the index lag"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = indexer.changes() => {}
        }
    }
}
