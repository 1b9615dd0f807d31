//! Keeps the gRPC health service truthful, per service:
//! - the server as a whole (`""`): SERVING while the catalog and the object store answer;
//! - `artifactd.v1.ArtifactService`: SERVING while the catalog answers and a store accepts
//!   writes;
//! - `artifactd.v1.SearchService`: SERVING while the catalog answers, the indexer job runs
//!   and the index is not being rebuilt from scratch (a rebuilding index answers with
//!   partial results);
//! - `artifactd.v1.FallbackService`: NOT_SERVING while the failover pair is degraded (a
//!   breaker open, or a store lacking objects it should hold), so that an alert or a probe
//!   sees it; SERVING otherwise, and when no fallback is configured;
//! - `disk-cache` (a component, not a gRPC service): NOT_SERVING while the disk cache cannot
//!   keep or read copies (reads go to the store meanwhile, so nothing else changes);
//!   SERVING otherwise, and when there is no disk cache.

use super::{JobBoard, JobState};
use crate::catalog::Catalog;
use crate::search::SearchIndex;
use crate::storage::{DynBlobStore, FailoverStore};
use crate::telemetry::names;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub const ARTIFACT_SERVICE: &str = "artifactd.v1.ArtifactService";
pub const SEARCH_SERVICE: &str = "artifactd.v1.SearchService";
pub const FALLBACK_SERVICE: &str = "artifactd.v1.FallbackService";
pub const DISK_CACHE: &str = "disk-cache";

/// The services whose status is reported; the empty name is the server as a whole.
pub const SERVICE_NAMES: &[&str] = &["", ARTIFACT_SERVICE, SEARCH_SERVICE, FALLBACK_SERVICE, DISK_CACHE];

/// The job whose state the search service's health follows.
pub const INDEXER_JOB: &str = "indexer";

/// What health is decided from.
#[derive(Clone)]
pub struct HealthInputs {
    pub catalog: Catalog,
    pub store: DynBlobStore,
    pub failover: Option<Arc<FailoverStore>>,
    pub index: Arc<SearchIndex>,
    pub jobs: JobBoard,
    pub disk_cache: Option<Arc<crate::storage::DiskCache>>,
}

/// One round of checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthReport {
    pub catalog_up: bool,
    pub store_up: bool,
    pub accepts_writes: bool,
    pub search_ready: bool,
    pub failover_degraded: bool,
    pub disk_cache_degraded: bool,
}

impl HealthReport {
    fn status_of(&self, service: &str) -> ServingStatus {
        let serving = match service {
            "" => self.catalog_up && self.store_up,
            ARTIFACT_SERVICE => self.catalog_up && self.accepts_writes,
            SEARCH_SERVICE => self.catalog_up && self.search_ready,
            FALLBACK_SERVICE => !self.failover_degraded,
            DISK_CACHE => !self.disk_cache_degraded,
            _ => false,
        };
        if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    }
}

pub struct HealthMonitor {
    pub inputs: HealthInputs,
    pub reporter: HealthReporter,
    pub interval: Duration,
    /// The last round's report, for the status call.
    pub last: LastHealth,
}

/// The most recent health report. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct LastHealth(Arc<std::sync::Mutex<Option<HealthReport>>>);

impl LastHealth {
    pub fn get(&self) -> Option<HealthReport> {
        *self.0.lock().expect("health lock")
    }

    /// Each reported service with whether it serves, as of the last round.
    pub fn services(&self) -> Vec<(&'static str, bool)> {
        let Some(report) = self.get() else {
            return SERVICE_NAMES.iter().map(|service| (*service, false)).collect();
        };
        SERVICE_NAMES
            .iter()
            .map(|service| (*service, report.status_of(service) == ServingStatus::Serving))
            .collect()
    }
}

impl HealthMonitor {
    /// Checks every dependency once and publishes the result.
    pub async fn check_once(&self) -> HealthReport {
        let inputs = &self.inputs;
        let timeout = self.interval.max(Duration::from_secs(1));
        let catalog_up = matches!(
            tokio::time::timeout(timeout, inputs.catalog.ping()).await,
            Ok(Ok(()))
        );
        let store_up = matches!(
            tokio::time::timeout(timeout, inputs.store.check()).await,
            Ok(Ok(()))
        );
        let (accepts_writes, failover_degraded) = match &inputs.failover {
            Some(failover) => {
                let degraded = match tokio::time::timeout(timeout, failover.status()).await {
                    Ok(Ok(status)) => status.degraded(),
                    _ => true,
                };
                (failover.accepts_writes(), degraded)
            }
            None => (store_up, false),
        };
        let search_ready =
            inputs.jobs.state(INDEXER_JOB) == Some(JobState::Running) && !inputs.index.needs_rebuild();
        metrics::gauge!(names::DEPENDENCY_UP, "dependency" => "catalog").set(f64::from(u8::from(catalog_up)));
        metrics::gauge!(names::DEPENDENCY_UP, "dependency" => "store").set(f64::from(u8::from(store_up)));
        let disk_cache_degraded = inputs
            .disk_cache
            .as_ref()
            .is_some_and(|cache| cache.problem().is_some());
        let report = HealthReport {
            catalog_up,
            store_up,
            accepts_writes,
            search_ready,
            failover_degraded,
            disk_cache_degraded,
        };
        for service in SERVICE_NAMES {
            self.reporter
                .set_service_status(*service, report.status_of(service))
                .await;
        }
        *self.last.0.lock().expect("health lock") = Some(report);
        report
    }

    pub async fn run(&self, shutdown: CancellationToken) -> super::JobResult {
        let mut last: Option<HealthReport> = None;
        loop {
            let report = self.check_once().await;
            if last.is_some_and(|last| last != report) {
                tracing::info!(?report, "health changed");
            }
            last = Some(report);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
        for service in SERVICE_NAMES {
            self.reporter
                .set_service_status(*service, ServingStatus::NotServing)
                .await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> HealthReport {
        HealthReport {
            catalog_up: true,
            store_up: true,
            accepts_writes: true,
            search_ready: true,
            failover_degraded: false,
            disk_cache_degraded: false,
        }
    }

    #[test]
    fn each_service_follows_what_it_depends_on() {
        let serving = |report: HealthReport| {
            SERVICE_NAMES
                .iter()
                .map(|service| report.status_of(service) == ServingStatus::Serving)
                .collect::<Vec<_>>()
        };
        assert_eq!(serving(healthy()), [true, true, true, true, true]);
        // An index rebuilding from scratch, or an indexer that is down: search only.
        let rebuilding = HealthReport {
            search_ready: false,
            ..healthy()
        };
        assert_eq!(serving(rebuilding), [true, true, false, true, true]);
        // No store accepts writes (both breakers open) although one still answers reads.
        let read_only = HealthReport {
            accepts_writes: false,
            ..healthy()
        };
        assert_eq!(serving(read_only), [true, false, true, true, true]);
        let degraded = HealthReport {
            failover_degraded: true,
            ..healthy()
        };
        assert_eq!(serving(degraded), [true, true, true, false, true]);
        let no_catalog = HealthReport {
            catalog_up: false,
            ..healthy()
        };
        assert_eq!(serving(no_catalog), [false, false, false, true, true]);
        // A broken disk cache costs only speed: it alone says so.
        let cache_broken = HealthReport {
            disk_cache_degraded: true,
            ..healthy()
        };
        assert_eq!(serving(cache_broken), [true, true, true, true, false]);
    }
}
