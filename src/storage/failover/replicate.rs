//! Copies between the sides: the replicator that drains the durable queue, and the
//! operator's full reconciliation (`SyncFallback`).

use super::{FailoverStore, SyncReport};
use crate::domain::now_micros;
use crate::storage::breaker::Permit;
use crate::storage::{GetOptions, ReplicationItem, Side, StoreError};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// What one pass of the replicator did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Attempts {
    /// Items whose target could be called.
    pub attempted: usize,
    /// Items whose outcome the queue could not record.
    pub unrecorded: usize,
}

impl FailoverStore {
    /// Makes `target` hold a good copy of `key`, copying it from the other side unless the
    /// target's copy is there and sound. With a verifier the target's copy is read and
    /// checked (a damaged copy is overwritten); without one, its presence is enough. A
    /// failure names the side it came from.
    pub(super) async fn copy(&self, key: &str, target: Side) -> Result<u64, (Side, StoreError)> {
        let target_side = self.side(target);
        let source_side = self.side(target.other());
        let on = |side: Side| move |error| (side, error);
        let target_is_sound = match &self.verifier {
            Some(verify) => match self
                .timed(
                    target_side,
                    "get",
                    target_side.store.get(key, GetOptions::default()),
                )
                .await
            {
                Ok(bytes) => verify(key, &bytes),
                Err(error) if error.is_not_found() => false,
                Err(error) => return Err((target, error)),
            },
            None => self
                .timed(target_side, "head", target_side.store.head(key))
                .await
                .map_err(on(target))?
                .is_some(),
        };
        if target_is_sound {
            return Ok(0);
        }
        let bytes = self
            .timed(
                source_side,
                "get",
                source_side.store.get(key, GetOptions::default()),
            )
            .await
            .map_err(on(target.other()))?;
        if let Some(verify) = &self.verifier
            && !verify(key, &bytes)
        {
            return Err((
                target.other(),
                StoreError::Corrupt {
                    store: source_side.store.name().to_owned(),
                    key: key.to_owned(),
                    message: format!("the {} copy does not match its name", source_side.side),
                },
            ));
        }
        let size = bytes.len() as u64;
        self.timed(target_side, "put", target_side.store.put(key, bytes))
            .await
            .map_err(on(target))?;
        source_side.counters.bytes_read.fetch_add(size, Ordering::Relaxed);
        target_side
            .counters
            .bytes_written
            .fetch_add(size, Ordering::Relaxed);
        target_side.counters.repaired.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::telemetry::names::STORE_REPAIRED_OBJECTS_TOTAL, "side" => target.as_str())
            .increment(1);
        Ok(size)
    }

    /// Copies one queued object if its target accepts calls now; the outcome on the target
    /// feeds its breaker. The permit is taken right before the copy, so that a breaker that
    /// opens during a batch stops the rest of it, and a half-open side's one trial is not
    /// held while other items wait. Returns whether the queue could be updated.
    pub(super) async fn replicate_item(&self, item: ReplicationItem) -> bool {
        let target = self.side(item.target);
        let Some(permit) = Self::call_permit(target) else {
            return true;
        };
        let started = Instant::now();
        let copied = self.copy(&item.key, item.target).await;
        match &copied {
            Err((side, error)) if *side == item.target => {
                self.settle(target, permit, &Err::<(), _>(error.clone()))
            }
            _ => self.settle(target, permit, &Ok::<(), StoreError>(())),
        }
        let recorded = match copied {
            Ok(bytes) => {
                self.replication.objects.fetch_add(1, Ordering::Relaxed);
                self.replication.bytes.fetch_add(bytes, Ordering::Relaxed);
                self.replication
                    .busy_micros
                    .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                metrics::counter!(crate::telemetry::names::REPLICATED_BYTES_TOTAL).increment(bytes);
                self.log.complete(&item.key, item.target).await
            }
            Err((_, error)) => {
                let next = now_micros() + self.backoff_for(item.attempts).as_micros() as i64;
                self.log
                    .record_failure(&item.key, item.target, &error.to_string(), next)
                    .await
            }
        };
        if let Err(error) = recorded {
            tracing::warn!(key = %item.key, %error, "could not update the replication queue");
            return false;
        }
        true
    }

    /// Leave to call a side: an observer while its breaker is closed, the trial when one is
    /// due, else none.
    fn call_permit(side: &super::SideState) -> Option<Permit<'_>> {
        if side.breaker.is_closed() {
            Some(side.breaker.observe())
        } else {
            side.breaker.try_acquire()
        }
    }

    /// Copies every due item whose target store accepts calls now; returns how many were
    /// attempted. Items for a store whose breaker is open wait untouched (no attempt is
    /// counted, no row rewritten) until the breaker lets calls through again.
    pub async fn replicate_due(&self) -> Attempts {
        let items = match self.log.due(now_micros(), 256).await {
            Ok(items) => items,
            Err(error) => {
                tracing::warn!(%error, "could not read the replication queue");
                return Attempts::default();
            }
        };
        // Items for a side whose breaker is open and not due a trial are left untouched.
        let runnable: Vec<ReplicationItem> = items
            .into_iter()
            .filter(|item| self.side(item.target).breaker.would_allow())
            .collect();
        let attempted = runnable.len();
        let unrecorded = std::sync::atomic::AtomicUsize::new(0);
        futures::stream::iter(runnable)
            .for_each_concurrent(self.config.replication_concurrency.max(1), |item| async {
                if !self.replicate_item(item).await {
                    unrecorded.fetch_add(1, Ordering::Relaxed);
                }
            })
            .await;
        Attempts {
            attempted,
            unrecorded: unrecorded.into_inner(),
        }
    }

    /// Publishes the queue's depth and the age of its oldest item.
    pub async fn publish_queue_metrics(&self) {
        if let Ok(stats) = self.log.stats(0).await {
            metrics::gauge!(crate::telemetry::names::REPLICATION_QUEUE_DEPTH).set(stats.depth as f64);
            let age = stats
                .oldest_created_at
                .map(|created| (now_micros() - created).max(0) as f64 / 1e6)
                .unwrap_or(0.0);
            metrics::gauge!(crate::telemetry::names::REPLICATION_OLDEST_AGE_SECONDS).set(age);
        }
    }

    /// Resolves when a copy was queued since the last call.
    pub async fn work_queued(&self) {
        self.work_queued.notified().await;
    }

    /// Lists both sides and copies whatever either lacks (SyncFallback). `progress` hears
    /// about every object examined.
    pub async fn sync(
        &self,
        dry_run: bool,
        mut progress: impl FnMut(&SyncReport),
    ) -> Result<SyncReport, StoreError> {
        let (primary, fallback) = tokio::join!(
            self.timed(&self.sides[0], "list", self.sides[0].store.list("packs/")),
            self.timed(&self.sides[1], "list", self.sides[1].store.list("packs/")),
        );
        let (primary, fallback) = (primary?, fallback?);
        let mut presence: BTreeMap<String, (bool, bool)> = BTreeMap::new();
        for object in &primary {
            presence.entry(object.key.clone()).or_default().0 = true;
        }
        for object in &fallback {
            presence.entry(object.key.clone()).or_default().1 = true;
        }
        let mut report = SyncReport::default();
        for (key, (on_primary, on_fallback)) in presence {
            report.examined += 1;
            let target = match (on_primary, on_fallback) {
                (true, false) => Side::Fallback,
                (false, true) => Side::Primary,
                _ => {
                    progress(&report);
                    continue;
                }
            };
            match target {
                Side::Primary => report.missing_on_primary += 1,
                Side::Fallback => report.missing_on_fallback += 1,
            }
            if !dry_run {
                match self.copy(&key, target).await.map_err(|(_, error)| error) {
                    Ok(_) => {
                        match target {
                            Side::Primary => report.copied_to_primary += 1,
                            Side::Fallback => report.copied_to_fallback += 1,
                        }
                        // The queue item, if any, is now satisfied.
                        let _ = self.log.complete(&key, target).await;
                    }
                    Err(error) => report.errors.push(format!("{key} → {target}: {error}")),
                }
            }
            progress(&report);
        }
        Ok(report)
    }
}
