//! Keeps the gRPC health service truthful: NOT_SERVING while the catalog or the object
//! store does not answer, SERVING again as soon as both do.

use crate::catalog::Catalog;
use crate::storage::DynBlobStore;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The services whose status is reported; the empty name is the server as a whole.
pub const SERVICE_NAMES: &[&str] = &["", "artifactd.v1.ArtifactService"];

pub struct HealthMonitor {
    pub catalog: Catalog,
    pub store: DynBlobStore,
    pub reporter: HealthReporter,
    pub interval: Duration,
}

impl HealthMonitor {
    /// Checks both dependencies once and publishes the result.
    pub async fn check_once(&self) -> bool {
        let timeout = self.interval.max(Duration::from_secs(1));
        let catalog_up = matches!(
            tokio::time::timeout(timeout, self.catalog.ping()).await,
            Ok(Ok(()))
        );
        let store_up = matches!(
            tokio::time::timeout(timeout, self.store.check()).await,
            Ok(Ok(()))
        );
        metrics::gauge!("artifactd_dependency_up", "dependency" => "catalog")
            .set(f64::from(u8::from(catalog_up)));
        metrics::gauge!("artifactd_dependency_up", "dependency" => "store")
            .set(f64::from(u8::from(store_up)));
        let status = if catalog_up && store_up {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in SERVICE_NAMES {
            self.reporter.set_service_status(*service, status).await;
        }
        catalog_up && store_up
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut was_up = true;
        loop {
            let up = self.check_once().await;
            if up != was_up {
                if up {
                    tracing::info!("catalog and store answer again; serving");
                } else {
                    tracing::warn!("catalog or store does not answer; reporting NOT_SERVING");
                }
                was_up = up;
            }
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
    }
}
