//! `DeadlineStore`: a `BlobStore` wrapper that gives every call a deadline derived from the
//! store's observed latency, so that a store which accepts connections and then hangs costs
//! a caller a fraction of a second, not the configured request timeout.
//!
//! The deadline of a call is `max(floor, multiplier × p99 of recent call overheads)` plus a
//! transfer allowance for the bytes the call moves at `min_bytes_per_second`, capped by the
//! `ceiling` (the request timeout). A call's overhead is its latency less its transfer
//! allowance, so large pack writes do not inflate the deadline of small reads. Until enough
//! calls have been observed to know the store, the ceiling applies.

use super::{BlobStore, DynBlobStore, GetOptions, ObjectMeta, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct DeadlineConfig {
    /// No call ever waits longer than this, but for a listing.
    pub ceiling: Duration,
    /// A whole listing (all its pages) may take this long.
    pub list_ceiling: Duration,
    /// No deadline is shorter than this (plus the transfer allowance).
    pub floor: Duration,
    /// The deadline is this many times the p99 of recent call overheads.
    pub multiplier: u32,
    /// The slowest transfer rate still considered healthy, for the transfer allowance.
    pub min_bytes_per_second: u64,
    /// Size assumed for a whole-object read, whose size is unknown before it answers.
    pub assumed_object_bytes: u64,
    /// Recent successful calls kept for the percentile.
    pub window: usize,
    /// Calls observed before the adaptive deadline replaces the ceiling.
    pub min_samples: usize,
}

impl DeadlineConfig {
    /// A plain timeout: every call gets `ceiling`.
    pub fn fixed(ceiling: Duration) -> Self {
        Self {
            ceiling,
            floor: ceiling,
            ..Self::default()
        }
    }
}

impl Default for DeadlineConfig {
    fn default() -> Self {
        Self {
            ceiling: Duration::from_secs(10),
            list_ceiling: Duration::from_secs(600),
            floor: Duration::from_millis(250),
            multiplier: 8,
            min_bytes_per_second: 8 * 1024 * 1024,
            assumed_object_bytes: 8 * 1024 * 1024,
            window: 256,
            min_samples: 16,
        }
    }
}

#[derive(Debug)]
pub struct DeadlineStore {
    inner: DynBlobStore,
    config: DeadlineConfig,
    overheads: Mutex<VecDeque<Duration>>,
}

impl DeadlineStore {
    pub fn new(inner: DynBlobStore, config: DeadlineConfig) -> Self {
        Self {
            inner,
            config,
            overheads: Mutex::new(VecDeque::new()),
        }
    }

    fn transfer_allowance(&self, bytes: u64) -> Duration {
        Duration::from_secs_f64(bytes as f64 / self.config.min_bytes_per_second.max(1) as f64)
    }

    /// The deadline for a call that moves `bytes`.
    pub fn deadline_for(&self, bytes: u64) -> Duration {
        let overheads = self.overheads.lock().expect("deadline lock");
        if overheads.len() < self.config.min_samples {
            return self.config.ceiling;
        }
        let mut sorted: Vec<Duration> = overheads.iter().copied().collect();
        drop(overheads);
        sorted.sort_unstable();
        let p99 = sorted[((sorted.len() - 1) * 99) / 100];
        let base = self.config.floor.max(p99 * self.config.multiplier);
        (base + self.transfer_allowance(bytes)).min(self.config.ceiling)
    }

    fn observe(&self, latency: Duration, bytes: u64) {
        let overhead = latency.saturating_sub(self.transfer_allowance(bytes));
        let mut overheads = self.overheads.lock().expect("deadline lock");
        if overheads.len() == self.config.window.max(1) {
            overheads.pop_front();
        }
        overheads.push_back(overhead);
    }

    async fn bounded<T>(
        &self,
        bytes: u64,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let deadline = self.deadline_for(bytes);
        let started = Instant::now();
        match tokio::time::timeout(deadline, work).await {
            Ok(result) => {
                // Only answers teach the deadline; a refused connection answers fast and
                // says nothing about how long a healthy call takes.
                if !matches!(&result, Err(error) if error.is_store_fault()) {
                    self.observe(started.elapsed(), bytes);
                }
                result
            }
            Err(_) => {
                // A timeout teaches the deadline too: a store that has become uniformly
                // slower than its deadline would otherwise fail every call for ever, since
                // only answers would be sampled. Once more than 1% of recent calls time out,
                // the p99 (and so the deadline) grows by the multiplier.
                self.observe(deadline, bytes);
                Err(self.timed_out(deadline))
            }
        }
    }

    fn timed_out(&self, deadline: Duration) -> StoreError {
        StoreError::Unavailable {
            store: self.inner.name().to_owned(),
            message: format!(
                "no answer within {} ms (deadline from the store's recent latency; ceiling {} ms)",
                deadline.as_millis(),
                self.config.ceiling.as_millis()
            ),
        }
    }
}

#[async_trait]
impl BlobStore for DeadlineStore {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let bytes = data.len() as u64;
        self.bounded(bytes, self.inner.put(key, data)).await
    }

    async fn get(&self, key: &str, options: GetOptions) -> Result<Bytes, StoreError> {
        let bytes = options
            .range
            .as_ref()
            .map_or(self.config.assumed_object_bytes, |range| {
                range.end.saturating_sub(range.start)
            });
        self.bounded(bytes, self.inner.get(key, options)).await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.bounded(0, self.inner.head(key)).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.bounded(0, self.inner.delete(key)).await
    }

    /// Listing a large bucket takes as long as it takes, page after page: only
    /// `list_ceiling` applies.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        match tokio::time::timeout(self.config.list_ceiling, self.inner.list(prefix)).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable {
                store: self.inner.name().to_owned(),
                message: format!(
                    "listing took longer than {} s",
                    self.config.list_ceiling.as_secs()
                ),
            }),
        }
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.bounded(0, self.inner.check()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::unreliable::{Fault, Operation, UnreliableStore};
    use std::sync::Arc;

    #[tokio::test]
    async fn a_stalled_store_costs_the_adaptive_deadline_not_the_ceiling() {
        let root = tempfile::tempdir().unwrap();
        let unreliable = Arc::new(UnreliableStore::new(Arc::new(
            crate::storage::FsStore::open(root.path()).unwrap(),
        )));
        let config = DeadlineConfig {
            ceiling: Duration::from_secs(30),
            floor: Duration::from_millis(100),
            min_samples: 8,
            ..DeadlineConfig::default()
        };
        let store = DeadlineStore::new(unreliable.clone(), config);
        assert_eq!(
            store.deadline_for(0),
            Duration::from_secs(30),
            "unknown store: ceiling"
        );
        for n in 0..20 {
            store
                .put(&format!("k/{n}"), Bytes::from_static(b"x"))
                .await
                .unwrap();
        }
        let deadline = store.deadline_for(0);
        assert!(
            deadline >= Duration::from_millis(100) && deadline < Duration::from_secs(1),
            "{deadline:?}"
        );
        // An 8 MiB write gets its transfer allowance on top.
        assert!(store.deadline_for(8 * 1024 * 1024) >= deadline + Duration::from_millis(900));

        unreliable.inject(Some(Operation::Get), Fault::Stall, None);
        let started = Instant::now();
        let error = store.get("k/1", GetOptions::range(0..1)).await.unwrap_err();
        let waited = started.elapsed();
        assert!(error.is_retryable(), "{error}");
        assert!(error.to_string().contains("no answer within"), "{error}");
        assert!(waited < Duration::from_secs(2), "waited {waited:?}");
    }

    #[tokio::test]
    async fn a_store_that_became_slower_gets_longer_deadlines_instead_of_failing_for_ever() {
        let root = tempfile::tempdir().unwrap();
        let unreliable = Arc::new(UnreliableStore::new(Arc::new(
            crate::storage::FsStore::open(root.path()).unwrap(),
        )));
        let config = DeadlineConfig {
            ceiling: Duration::from_secs(30),
            floor: Duration::from_millis(20),
            min_samples: 8,
            window: 32,
            ..DeadlineConfig::default()
        };
        let store = DeadlineStore::new(unreliable.clone(), config);
        // The objects are written past the deadlines (a busy machine's fsync can take longer
        // than this test's 20 ms floor); the store learns its latency from reads.
        for n in 0..32 {
            unreliable
                .put(&format!("k/{n}"), Bytes::from_static(b"x"))
                .await
                .unwrap();
        }
        for n in 0..32 {
            let _ = store.head(&format!("k/{n}")).await;
        }
        let fast = store.deadline_for(0);
        // Every call now takes 200 ms, ten times the learned deadline.
        unreliable.inject(None, Fault::Delay(Duration::from_millis(200)), None);
        let mut answered = 0;
        for n in 0..12 {
            if store.head(&format!("k/{n}")).await.is_ok() {
                answered += 1;
            }
        }
        assert!(
            store.deadline_for(0) > fast * 4,
            "{:?} after {:?}",
            store.deadline_for(0),
            fast
        );
        assert!(answered > 0, "the deadline grew until the slower store answered");
        assert!(store.head("k/1").await.is_ok());
    }
}
