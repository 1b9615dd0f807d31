//! The prober: a canary written, read back and deleted on each side; its results feed the
//! breakers, which is how a returning store closes its breaker (failback) and how a dead one
//! is noticed without traffic.

use super::{FailoverStore, ProbeReport, SideState};
use crate::domain::now_micros;
use crate::storage::breaker::Permit;
use crate::storage::{GetOptions, StoreError};
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A small object every store keeps for good. A store that answers but no longer has it
/// was replaced or wiped (perhaps too quickly for its breaker to notice): whatever else it
/// held may be gone too, so the reconciler runs at once.
pub(super) const MARKER_KEY: &str = "health/marker";

impl FailoverStore {
    /// Checks the side's marker; writes it (and asks for a reconciliation) when it is gone.
    async fn check_marker(&self, side: &SideState) -> Result<(), StoreError> {
        if self
            .timed(side, "probe", side.store.head(MARKER_KEY))
            .await?
            .is_some()
        {
            return Ok(());
        }
        tracing::warn!(side = %side.side, "the store has lost its marker object: it was replaced or wiped; reconciling it with the catalog");
        self.recovered.notify_one();
        self.timed(
            side,
            "probe",
            side.store
                .put(MARKER_KEY, Bytes::from_static(b"artifactd store marker")),
        )
        .await
    }

    /// Writes, reads back and deletes a canary on one side; the whole probe is one outcome
    /// for the breaker (a canary that reads back wrong fails it like an outage).
    pub(super) async fn probe_side(&self, side: &SideState, permit: Permit<'_>) -> ProbeReport {
        // A key per probe: a probe on demand (TestFallback) may overlap the prober's own.
        let key = format!(
            "health/canary-{}-{}",
            self.config.node_id,
            uuid::Uuid::now_v7().simple()
        );
        let payload = Bytes::from(format!("artifactd canary {}", now_micros()));
        let started = Instant::now();
        let mut report = ProbeReport {
            side: side.side,
            store_name: side.store.name().to_owned(),
            reachable: false,
            can_write: false,
            can_read: false,
            can_delete: false,
            latency: Duration::ZERO,
            error: None,
        };
        let result: Result<(), StoreError> = async {
            self.timed(side, "probe", side.store.put(&key, payload.clone()))
                .await?;
            report.can_write = true;
            let read = self
                .timed(side, "probe", side.store.get(&key, GetOptions::default()))
                .await?;
            if read != payload {
                return Err(StoreError::Failed {
                    store: side.store.name().to_owned(),
                    message: "the canary read back different bytes".to_owned(),
                });
            }
            report.can_read = true;
            self.timed(side, "probe", side.store.delete(&key)).await?;
            report.can_delete = true;
            self.check_marker(side).await?;
            Ok(())
        }
        .await;
        report.latency = started.elapsed();
        side.counters
            .last_probe_latency_micros
            .store(report.latency.as_micros() as u64, Ordering::Relaxed);
        report.reachable = match &result {
            Ok(()) => true,
            Err(error) => report.can_write || !error.is_retryable(),
        };
        let verdict = match &result {
            Err(error) if !error.is_store_fault() => Err(StoreError::Failed {
                store: side.store.name().to_owned(),
                message: format!("canary: {error}"),
            }),
            Err(error) => Err(StoreError::Unavailable {
                store: side.store.name().to_owned(),
                message: error.to_string(),
            }),
            Ok(()) => Ok(()),
        };
        self.settle(side, permit, &verdict);
        if let Err(error) = result {
            report.error = Some(error.to_string());
        }
        report
    }

    /// A permit for a probe: the half-open trial when one is due, else an observer.
    fn probe_permit(side: &SideState) -> Option<Permit<'_>> {
        if side.breaker.is_closed() {
            Some(side.breaker.observe())
        } else {
            side.breaker.try_acquire()
        }
    }

    /// Probes both sides now (TestFallback).
    pub async fn probe_now(&self) -> Vec<ProbeReport> {
        let [primary, fallback] = &self.sides;
        let primary_permit = Self::probe_permit(primary).unwrap_or_else(|| primary.breaker.observe());
        let fallback_permit = Self::probe_permit(fallback).unwrap_or_else(|| fallback.breaker.observe());
        let (primary_report, fallback_report) = tokio::join!(
            self.probe_side(primary, primary_permit),
            self.probe_side(fallback, fallback_permit)
        );
        vec![primary_report, fallback_report]
    }

    /// One round of the prober: probes both sides at once, so that a hung store does not
    /// delay the other's probe; an open side is probed only when its backoff allows a trial.
    pub async fn probe_due(&self) {
        let [primary, fallback] = &self.sides;
        let probe = |side| async move {
            if let Some(permit) = Self::probe_permit(side) {
                self.probe_side(side, permit).await;
            }
        };
        tokio::join!(probe(primary), probe(fallback));
    }
}
