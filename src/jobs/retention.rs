//! When retention work runs: scheduled policies, the trash purge, garbage collection. What
//! each does is the use cases' (`Artifacts::run_due_policies`, `purge_expired`,
//! `collect_garbage`); a failed round is logged and tried again at the next one.

use super::JobResult;
use crate::app::Artifacts;
use crate::domain::{Error, now_micros};
use crate::telemetry::names;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Waits `every`, or returns false when shutting down.
async fn pause(every: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(every) => true,
    }
}

/// Executes scheduled retention policies when they are due.
pub async fn run_policy_scheduler(
    artifacts: Artifacts,
    every: Duration,
    shutdown: CancellationToken,
) -> JobResult {
    while pause(every, &shutdown).await {
        match artifacts.run_due_policies(now_micros()).await {
            Ok(0) => {}
            Ok(ran) => tracing::debug!(ran, "scheduled retention policies ran"),
            Err(error) => {
                tracing::warn!(%error, "checking scheduled retention policies failed; retrying next round")
            }
        }
    }
    Ok(())
}

/// Purges what has been in the trash longer than the retention period.
pub async fn run_trash_purger(
    artifacts: Artifacts,
    every: Duration,
    shutdown: CancellationToken,
) -> JobResult {
    while pause(every, &shutdown).await {
        match artifacts.purge_expired().await {
            Ok(purged) if purged.artifacts + purged.versions == 0 => {}
            Ok(purged) => {
                metrics::counter!(names::TRASH_PURGED_TOTAL).increment(purged.artifacts + purged.versions);
                tracing::info!(
                    artifacts = purged.artifacts,
                    versions = purged.versions,
                    "purged the trash"
                );
            }
            Err(error) => tracing::warn!(%error, "purging the trash failed; retrying next round"),
        }
    }
    Ok(())
}

/// Collects garbage every `every`; a round another replica is running is skipped.
pub async fn run_collector(artifacts: Artifacts, every: Duration, shutdown: CancellationToken) -> JobResult {
    while pause(every, &shutdown).await {
        match artifacts.collect_garbage(false).await {
            Ok(_) => {}
            Err(Error::FailedPrecondition(message)) => {
                tracing::debug!(%message, "garbage collection skipped")
            }
            Err(error) => tracing::warn!(%error, "garbage collection failed; retrying next round"),
        }
    }
    Ok(())
}

/// Takes scheduled backups when they are due (one replica at a time, under a lease).
pub async fn run_backup_scheduler(
    artifacts: Artifacts,
    every: Duration,
    shutdown: CancellationToken,
) -> JobResult {
    while pause(every, &shutdown).await {
        match artifacts.run_due_backups(now_micros()).await {
            Ok(0) => {}
            Ok(taken) => tracing::info!(taken, "scheduled backups taken"),
            Err(error) => tracing::warn!(%error, "checking backup schedules failed; retrying next round"),
        }
    }
    Ok(())
}
