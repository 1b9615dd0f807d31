//! The reconciler: compares what each side holds with what the catalog says both must hold
//! (`ObjectInventory`), and queues a copy for every object a side lacks or holds at the
//! wrong size. The replicator then copies, verifying the source against the object's name
//! and overwriting a damaged target. It runs on a schedule and whenever a side recovers,
//! so a store that comes back empty, or lost objects while nobody looked, is made complete
//! without anyone asking.
//!
//! Size is what a listing can check cheaply; damage that keeps the size (flipped bits) is
//! found when the object is read, and read repair queues the same copy.

use super::FailoverStore;
use crate::domain::now_micros;
use crate::storage::{ObjectMeta, Side};
use std::collections::HashMap;

/// Expected objects fetched from the inventory per round trip.
const INVENTORY_PAGE: u32 = 1000;

/// What one reconciliation found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// When it finished (µs since the epoch).
    pub finished_at: i64,
    /// Objects the catalog says both sides must hold.
    pub expected: u64,
    /// Per side (primary, fallback): objects absent.
    pub missing: [u64; 2],
    /// Per side: objects present at the wrong size.
    pub damaged: [u64; 2],
    /// Sides that could not be listed, with the reason; they were not compared.
    pub errors: Vec<String>,
}

impl ReconcileReport {
    pub fn missing_on(&self, side: Side) -> u64 {
        self.missing[index(side)]
    }

    pub fn damaged_on(&self, side: Side) -> u64 {
        self.damaged[index(side)]
    }
}

fn index(side: Side) -> usize {
    match side {
        Side::Primary => 0,
        Side::Fallback => 1,
    }
}

impl FailoverStore {
    async fn list_if_closed(
        &self,
        side: Side,
    ) -> Option<Result<Vec<ObjectMeta>, crate::storage::StoreError>> {
        let side = self.side(side);
        if !side.breaker.is_closed() {
            return None;
        }
        Some(self.timed(side, "list", side.store.list("packs/")).await)
    }

    /// Compares both sides with the inventory once and queues what either lacks.
    pub async fn reconcile(&self) -> ReconcileReport {
        let mut report = ReconcileReport::default();
        let Some(inventory) = &self.inventory else {
            report.finished_at = now_micros();
            return report;
        };
        // A side whose breaker is open is not listed: it cannot be repaired now, and its
        // recovery (the breaker closing) brings a reconciliation of its own.
        let (primary, fallback) = tokio::join!(
            self.list_if_closed(Side::Primary),
            self.list_if_closed(Side::Fallback)
        );
        let mut listings: Vec<(Side, HashMap<String, u64>)> = Vec::new();
        for (side, listed) in [(Side::Primary, primary), (Side::Fallback, fallback)] {
            let Some(listed) = listed else { continue };
            match listed {
                Ok(objects) => listings.push((
                    side,
                    objects
                        .into_iter()
                        .map(|ObjectMeta { key, size }| (key, size))
                        .collect(),
                )),
                Err(error) => report.errors.push(format!("{side}: {error}")),
            }
        }
        let mut after = String::new();
        let mut queued = false;
        loop {
            let page = match inventory.expected_objects(&after, INVENTORY_PAGE).await {
                Ok(page) => page,
                Err(error) => {
                    report.errors.push(format!("catalog: {error}"));
                    break;
                }
            };
            let Some(last) = page.last() else { break };
            after = last.key.clone();
            for expected in &page {
                report.expected += 1;
                for (side, listing) in &listings {
                    let lacking = match listing.get(&expected.key) {
                        None => {
                            report.missing[index(*side)] += 1;
                            true
                        }
                        Some(size) if *size != expected.size => {
                            report.damaged[index(*side)] += 1;
                            true
                        }
                        Some(_) => false,
                    };
                    if lacking {
                        if let Err(error) = self.log.enqueue(&expected.key, *side, now_micros()).await {
                            report
                                .errors
                                .push(format!("queueing {} for the {side}: {error}", expected.key));
                        }
                        queued = true;
                    }
                }
            }
            if page.len() < INVENTORY_PAGE as usize {
                break;
            }
        }
        if queued {
            self.work_queued.notify_one();
        }
        report.finished_at = now_micros();
        for side in [Side::Primary, Side::Fallback] {
            let found = report.missing_on(side) + report.damaged_on(side);
            if found > 0 {
                tracing::warn!(
                    %side,
                    missing = report.missing_on(side),
                    damaged = report.damaged_on(side),
                    "the store lacks objects the catalog says it holds; copies are queued"
                );
            }
            metrics::gauge!(crate::telemetry::names::STORE_MISSING_OBJECTS, "side" => side.as_str())
                .set(found as f64);
        }
        *self.last_reconcile.lock().expect("reconcile lock") = Some(report.clone());
        report
    }

    /// Resolves when a side recovered (its breaker closed, or its marker was found gone)
    /// since the last call.
    pub async fn recovered(&self) {
        self.recovered.notified().await;
    }
}
