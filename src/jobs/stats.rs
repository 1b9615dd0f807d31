//! The per-tenant storage figures as metrics: summed from the catalog now and then, since
//! they change with every commit and purge, on every replica.

use super::JobResult;
use crate::catalog::Catalog;
use crate::telemetry::names;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Sums every tenant's figures at once and then every `every`, until shutdown; a failed
/// round is logged and retried at the next one. A tenant that no longer has versions is
/// set to zero.
pub async fn run_storage_stats(catalog: Catalog, every: Duration, shutdown: CancellationToken) -> JobResult {
    let mut known: BTreeSet<String> = BTreeSet::new();
    loop {
        match catalog.tenant_storage_stats().await {
            Ok(tenants) => {
                let now: BTreeSet<String> = tenants.iter().map(|(tenant, _)| tenant.clone()).collect();
                for gone in known.difference(&now) {
                    for name in [
                        names::TENANT_LOGICAL_BYTES,
                        names::TENANT_STORED_BYTES,
                        names::TENANT_DEDUP_SAVED_BYTES,
                        names::TENANT_DELTA_SAVED_BYTES,
                    ] {
                        metrics::gauge!(name, "tenant" => gone.clone()).set(0.0);
                    }
                }
                for (tenant, stats) in tenants {
                    let label = || ("tenant", tenant.clone());
                    metrics::gauge!(names::TENANT_LOGICAL_BYTES, &[label()]).set(stats.logical_bytes as f64);
                    metrics::gauge!(names::TENANT_STORED_BYTES, &[label()]).set(stats.stored_bytes as f64);
                    metrics::gauge!(names::TENANT_DEDUP_SAVED_BYTES, &[label()])
                        .set(stats.dedup_saved_bytes as f64);
                    metrics::gauge!(names::TENANT_DELTA_SAVED_BYTES, &[label()])
                        .set(stats.delta_saved_bytes as f64);
                }
                known = now;
            }
            Err(error) => tracing::warn!(%error, "summing the storage figures failed; retrying next round"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
    }
}
