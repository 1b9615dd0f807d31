//! `FailoverStore`: a `BlobStore` over two stores, a primary (MinIO in production) and a
//! fallback (AWS S3).
//!
//! - Writes go to the primary while its circuit breaker is closed; a retryable failure or an
//!   open breaker sends the write to the fallback, so an upload in progress when the primary
//!   dies completes on the fallback without the client noticing.
//! - Every object written to one side is queued durably (in the catalog) for the other: the
//!   fallback is a live replica. Objects are immutable and named by their content, so the two
//!   sides can never hold different bytes under one name and replication is
//!   copy-what-is-missing, with no conflict resolution.
//! - Reads try the preferred healthy side and fall back to the other on a miss or an error;
//!   a side that lacked the object or held a damaged copy gets a good one queued (read
//!   repair). A side whose breaker is open is never waited on.
//! - A prober per side writes, reads back and deletes a canary (`probe.rs`); its results
//!   feed the breakers, which is how a returning primary closes its breaker (failback) and
//!   how a dead one is noticed without traffic.
//! - The replicator (`replicate.rs`) drains the durable queue; the reconciler
//!   (`reconcile.rs`) compares each side with what the catalog says it must hold, on a
//!   schedule and whenever a side recovers, and queues whatever is missing or damaged.
//! - Every decision is a typed value (`outcome.rs`).
//!
//! Deadlines are not this type's business: each side is a store wrapped in a
//! `DeadlineStore`, whose deadline follows that store's observed latency.

mod outcome;
mod probe;
mod reconcile;
mod replicate;

pub use reconcile::ReconcileReport;

use outcome::{ReadDecision, SideOutcome, WriteDecision, decide_read, decide_write};

use super::breaker::{BreakerConfig, BreakerSnapshot, CircuitBreaker, Permit, Transition};
use super::replication::{ObjectInventory, ReplicationLog, ReplicationStats, Side};
use super::{BlobStore, Decoder, DynBlobStore, GetOptions, ObjectMeta, StoreError};
use crate::domain::now_micros;
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Checks that an object's bytes match its name (packs are named by their hash).
pub type ObjectVerifier = Arc<dyn Fn(&str, &[u8]) -> bool + Send + Sync>;

/// How a failover pair behaves; also the `[storage.failover]` configuration section.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// The cap of any single store call's deadline (the deadline itself follows the store's
    /// observed latency); a slower store is treated as failing.
    #[serde(rename = "request_timeout_ms", with = "crate::domain::millis")]
    pub request_timeout: Duration,
    /// How often each store's canary is written, read back and deleted.
    #[serde(rename = "probe_interval_ms", with = "crate::domain::millis")]
    pub probe_interval: Duration,
    pub breaker: BreakerConfig,
    /// Copies in flight.
    pub replication_concurrency: usize,
    /// Backoff of a failing copy (it is retried for ever).
    #[serde(rename = "replication_retry_initial_ms", with = "crate::domain::millis")]
    pub replication_retry_initial: Duration,
    #[serde(rename = "replication_retry_max_ms", with = "crate::domain::millis")]
    pub replication_retry_max: Duration,
    /// Write both sides at once while both are healthy (acknowledged objects survive the
    /// loss of either side); otherwise only the primary, leaving the copy to the replicator.
    pub synchronous_mirror: bool,
    /// Names the canary object of this process, so replicas sharing a bucket do not collide.
    #[serde(skip)]
    pub node_id: String,
    /// How often the reconciler compares the stores with the catalog (it also runs whenever
    /// a store recovers).
    #[serde(rename = "reconcile_interval_ms", with = "crate::domain::millis")]
    pub reconcile_interval: Duration,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            probe_interval: Duration::from_secs(2),
            breaker: BreakerConfig::default(),
            replication_concurrency: 4,
            replication_retry_initial: Duration::from_millis(500),
            replication_retry_max: Duration::from_secs(60),
            synchronous_mirror: true,
            node_id: uuid::Uuid::now_v7().simple().to_string(),
            reconcile_interval: Duration::from_secs(15 * 60),
        }
    }
}

/// Counters of one side, for `GetFallbackMetrics`.
#[derive(Debug, Default)]
pub struct SideCounters {
    pub operations: AtomicU64,
    pub errors: AtomicU64,
    pub bytes_written: AtomicU64,
    pub bytes_read: AtomicU64,
    pub latency_micros_total: AtomicU64,
    pub last_probe_latency_micros: AtomicU64,
    /// Objects copied to this side because it lacked them or held a damaged copy.
    pub repaired: AtomicU64,
}

#[derive(Debug)]
struct SideState {
    side: Side,
    store: DynBlobStore,
    breaker: CircuitBreaker,
    counters: SideCounters,
}

/// A failover or failback, for status reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchEvent {
    pub at_micros: i64,
    pub reason: String,
}

#[derive(Debug)]
struct Switches {
    write_target: Side,
    last_failover: Option<SwitchEvent>,
    last_failback: Option<SwitchEvent>,
    failover_count: u64,
    failed_over_since: Option<Instant>,
    failed_over_total: Duration,
}

#[derive(Debug, Default)]
struct ReplicationCounters {
    objects: AtomicU64,
    bytes: AtomicU64,
    busy_micros: AtomicU64,
}

/// What one probe of one side found.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    pub side: Side,
    pub store_name: String,
    /// The store answered (even if with an error of its own).
    pub reachable: bool,
    pub can_write: bool,
    pub can_read: bool,
    pub can_delete: bool,
    pub latency: Duration,
    pub error: Option<String>,
}

impl ProbeReport {
    pub fn healthy(&self) -> bool {
        self.can_write && self.can_read && self.can_delete
    }
}

/// A side's state, for `GetFallbackStatus`.
#[derive(Debug, Clone)]
pub struct SideStatus {
    pub side: Side,
    pub store_name: String,
    pub breaker: BreakerSnapshot,
    pub last_probe_latency: Duration,
    /// Objects this side should hold but does not yet (queued to be copied to it).
    pub lacking: u64,
    /// Objects copied to this side since the process started.
    pub repaired: u64,
}

#[derive(Debug, Clone)]
pub struct FailoverStatus {
    pub sides: Vec<SideStatus>,
    pub write_target: Side,
    pub replication: ReplicationStats,
    pub last_failover: Option<SwitchEvent>,
    pub last_failback: Option<SwitchEvent>,
    pub last_reconcile: Option<ReconcileReport>,
}

impl FailoverStatus {
    /// A breaker is not closed, or a side lacks objects it should hold.
    pub fn degraded(&self) -> bool {
        self.sides
            .iter()
            .any(|side| side.breaker.state != super::BreakerState::Closed || side.lacking > 0)
    }
}

#[derive(Debug, Clone)]
pub struct SideMetrics {
    pub side: Side,
    pub operations: u64,
    pub errors: u64,
    pub bytes_written: u64,
    pub bytes_read: u64,
    pub mean_latency: Duration,
}

#[derive(Debug, Clone)]
pub struct FailoverMetrics {
    pub sides: Vec<SideMetrics>,
    pub failover_count: u64,
    pub time_failed_over: Duration,
    pub replicated_objects: u64,
    pub replicated_bytes: u64,
    pub replication_bytes_per_second: f64,
}

/// Progress and outcome of a reconciliation of both sides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub examined: u64,
    pub missing_on_primary: u64,
    pub missing_on_fallback: u64,
    pub copied_to_primary: u64,
    pub copied_to_fallback: u64,
    pub errors: Vec<String>,
}

pub struct FailoverStore {
    sides: [SideState; 2],
    log: Arc<dyn ReplicationLog>,
    inventory: Option<Arc<dyn ObjectInventory>>,
    config: FailoverConfig,
    verifier: Option<ObjectVerifier>,
    switches: Mutex<Switches>,
    replication: ReplicationCounters,
    work_queued: Notify,
    /// A side recovered (its breaker closed): reconcile now.
    recovered: Notify,
    last_reconcile: Mutex<Option<ReconcileReport>>,
    name: String,
}

impl std::fmt::Debug for FailoverStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailoverStore").field("name", &self.name).finish()
    }
}

/// The longest a whole listing (all its pages) may take.
const LIST_BACKSTOP: Duration = Duration::from_secs(600);

/// Health checks answer within this, whatever the request timeout.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

fn timed_out(store: &str, limit: Duration) -> StoreError {
    StoreError::Unavailable {
        store: store.to_owned(),
        message: format!("no answer within {} ms", limit.as_millis()),
    }
}

impl FailoverStore {
    /// `inventory` tells the reconciler what both sides must hold; without it only the
    /// replication queue and read repair keep the sides complete.
    pub fn new(
        primary: DynBlobStore,
        fallback: DynBlobStore,
        log: Arc<dyn ReplicationLog>,
        inventory: Option<Arc<dyn ObjectInventory>>,
        config: FailoverConfig,
        verifier: Option<ObjectVerifier>,
    ) -> Self {
        let name = format!("failover({} → {})", primary.name(), fallback.name());
        let side = |side, store| SideState {
            side,
            store,
            breaker: CircuitBreaker::new(config.breaker.clone()),
            counters: SideCounters::default(),
        };
        Self {
            sides: [side(Side::Primary, primary), side(Side::Fallback, fallback)],
            log,
            inventory,
            verifier,
            switches: Mutex::new(Switches {
                write_target: Side::Primary,
                last_failover: None,
                last_failback: None,
                failover_count: 0,
                failed_over_since: None,
                failed_over_total: Duration::ZERO,
            }),
            replication: ReplicationCounters::default(),
            work_queued: Notify::new(),
            recovered: Notify::new(),
            last_reconcile: Mutex::new(None),
            config,
            name,
        }
    }

    fn side(&self, side: Side) -> &SideState {
        match side {
            Side::Primary => &self.sides[0],
            Side::Fallback => &self.sides[1],
        }
    }

    /// Runs one store call, counting it and its latency for `GetFallbackMetrics`. The
    /// store's own `DeadlineStore` bounds it; the request timeout here is only a backstop
    /// for stores wired without one.
    async fn timed<T>(
        &self,
        side: &SideState,
        operation: &'static str,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        // A whole listing is many requests; only single calls get the request timeout.
        let backstop = if operation == "list" {
            LIST_BACKSTOP
        } else {
            self.config.request_timeout
        };
        let result = match tokio::time::timeout(backstop, work).await {
            Ok(result) => result,
            Err(_) => Err(timed_out(side.store.name(), backstop)),
        };
        let elapsed = started.elapsed();
        side.counters.operations.fetch_add(1, Ordering::Relaxed);
        side.counters
            .latency_micros_total
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        if matches!(&result, Err(error) if error.is_store_fault()) {
            side.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Feeds a call's outcome to the side's breaker through the call's permit. Only store
    /// faults count against a store: a missing object is an answer, not a fault.
    fn settle<T>(&self, side: &SideState, permit: Permit<'_>, result: &Result<T, StoreError>) {
        let transition = match result {
            Err(error) if error.is_store_fault() => permit.failure(&error.to_string()),
            _ => permit.success(),
        };
        match transition {
            Transition::Opened => {
                tracing::warn!(side = %side.side, "circuit opened");
                metrics::counter!(crate::telemetry::names::STORE_BREAKER_OPENED_TOTAL, "side" => side.side.as_str())
                    .increment(1);
                // Failover is a decision about the primary store, not about one call: it
                // happens when the primary's breaker opens, so a single failed write that
                // the fallback took is neither a failover nor, after it, a failback.
                if side.side == Side::Primary {
                    let reason = side
                        .breaker
                        .snapshot()
                        .last_error
                        .unwrap_or_else(|| "the primary store is failing".to_owned());
                    self.note_write_target(Side::Fallback, || format!("primary store failing: {reason}"));
                }
            }
            Transition::Closed => {
                tracing::info!(side = %side.side, "circuit closed");
                // A store that was away may have lost data or missed writes.
                self.recovered.notify_one();
                if side.side == Side::Primary {
                    self.note_write_target(Side::Primary, || {
                        "the primary store accepts calls again".to_owned()
                    });
                }
            }
            Transition::None => {}
        }
        self.publish_breaker_gauges();
    }

    /// A timed call whose outcome feeds the breaker.
    async fn call<T>(
        &self,
        side: &SideState,
        permit: Permit<'_>,
        operation: &'static str,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = self.timed(side, operation, work).await;
        self.settle(side, permit, &result);
        result
    }

    fn publish_breaker_gauges(&self) {
        for side in &self.sides {
            let open = if side.breaker.is_closed() { 0.0 } else { 1.0 };
            metrics::gauge!(crate::telemetry::names::STORE_BREAKER_OPEN, "side" => side.side.as_str())
                .set(open);
        }
    }

    /// Records where writes land now, turning changes into failover and failback events.
    fn note_write_target(&self, side: Side, reason: impl FnOnce() -> String) {
        let mut switches = self.switches.lock().expect("switches lock");
        if switches.write_target == side {
            return;
        }
        switches.write_target = side;
        let event = SwitchEvent {
            at_micros: now_micros(),
            reason: reason(),
        };
        match side {
            Side::Fallback => {
                tracing::warn!(reason = %event.reason, "failover: writes go to the fallback store");
                switches.failover_count += 1;
                switches.failed_over_since = Some(Instant::now());
                switches.last_failover = Some(event);
                metrics::counter!(crate::telemetry::names::FAILOVERS_TOTAL).increment(1);
                metrics::gauge!(crate::telemetry::names::FAILED_OVER).set(1.0);
            }
            Side::Primary => {
                tracing::info!(reason = %event.reason, "failback: writes return to the primary store");
                if let Some(since) = switches.failed_over_since.take() {
                    switches.failed_over_total += since.elapsed();
                }
                switches.last_failback = Some(event);
                metrics::counter!(crate::telemetry::names::FAILBACKS_TOTAL).increment(1);
                metrics::gauge!(crate::telemetry::names::FAILED_OVER).set(0.0);
            }
        }
    }

    fn backoff_for(&self, attempts: i64) -> Duration {
        let exponent = attempts.clamp(0, 16) as u32;
        (self.config.replication_retry_initial * 2u32.pow(exponent)).min(self.config.replication_retry_max)
    }

    // ---- reports -------------------------------------------------------------------------

    pub async fn status(&self) -> Result<FailoverStatus, crate::domain::Error> {
        let replication = self.log.stats(20).await?;
        let switches = self.switches.lock().expect("switches lock");
        Ok(FailoverStatus {
            sides: self
                .sides
                .iter()
                .map(|side| SideStatus {
                    side: side.side,
                    store_name: side.store.name().to_owned(),
                    breaker: side.breaker.snapshot(),
                    last_probe_latency: Duration::from_micros(
                        side.counters.last_probe_latency_micros.load(Ordering::Relaxed),
                    ),
                    lacking: replication.pending_for(side.side),
                    repaired: side.counters.repaired.load(Ordering::Relaxed),
                })
                .collect(),
            write_target: switches.write_target,
            replication,
            last_failover: switches.last_failover.clone(),
            last_failback: switches.last_failback.clone(),
            last_reconcile: self.last_reconcile.lock().expect("reconcile lock").clone(),
        })
    }

    pub fn metrics(&self) -> FailoverMetrics {
        let switches = self.switches.lock().expect("switches lock");
        let time_failed_over = switches.failed_over_total
            + switches
                .failed_over_since
                .map(|s| s.elapsed())
                .unwrap_or_default();
        let busy = self.replication.busy_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let bytes = self.replication.bytes.load(Ordering::Relaxed);
        FailoverMetrics {
            sides: self
                .sides
                .iter()
                .map(|side| {
                    let operations = side.counters.operations.load(Ordering::Relaxed);
                    let latency = side.counters.latency_micros_total.load(Ordering::Relaxed);
                    SideMetrics {
                        side: side.side,
                        operations,
                        errors: side.counters.errors.load(Ordering::Relaxed),
                        bytes_written: side.counters.bytes_written.load(Ordering::Relaxed),
                        bytes_read: side.counters.bytes_read.load(Ordering::Relaxed),
                        mean_latency: Duration::from_micros(latency.checked_div(operations).unwrap_or(0)),
                    }
                })
                .collect(),
            failover_count: switches.failover_count,
            time_failed_over,
            replicated_objects: self.replication.objects.load(Ordering::Relaxed),
            replicated_bytes: bytes,
            replication_bytes_per_second: if busy > 0.0 { bytes as f64 / busy } else { 0.0 },
        }
    }

    /// One side's store on its own, without failover, for writes that must reach that side
    /// (a backup's copies) and reads that must come from it.
    pub fn side_store(&self, side: Side) -> DynBlobStore {
        self.side(side).store.clone()
    }

    pub fn config(&self) -> &FailoverConfig {
        &self.config
    }

    /// Whether a write can land now: some side's breaker is not open.
    pub fn accepts_writes(&self) -> bool {
        self.sides
            .iter()
            .any(|side| side.breaker.snapshot().state != super::BreakerState::Open)
    }

    /// Queues good copies for sides that lacked an object or held a damaged one.
    async fn repair(&self, key: &str, sides: &[Side]) {
        for side in sides {
            tracing::warn!(%side, key, "the store lacks or holds a damaged copy of an object; repairing it");
            if let Err(error) = self.log.enqueue(key, *side, now_micros()).await {
                tracing::warn!(%side, key, %error, "could not queue a repair");
            }
        }
        if !sides.is_empty() {
            self.work_queued.notify_one();
        }
    }

    /// Asks one side, unless its breaker is open: an open side is never waited on.
    async fn read_side<T, F, Fut>(
        &self,
        side: &SideState,
        operation: &'static str,
        read: &F,
    ) -> SideOutcome<T>
    where
        F: Fn(DynBlobStore) -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, StoreError>>,
    {
        let Some(permit) = side.breaker.try_acquire() else {
            return SideOutcome::Skipped;
        };
        let outcome =
            SideOutcome::classify(self.call(side, permit, operation, read(side.store.clone())).await);
        if let SideOutcome::Damaged(error) = &outcome {
            tracing::error!(side = %side.side, %error, "damaged copy; reading the other store's");
            metrics::counter!(crate::telemetry::names::STORE_CORRUPT_READS_TOTAL, "side" => side.side.as_str())
                .increment(1);
        }
        outcome
    }

    /// Reads from the preferred side, then, unless it served, from the other; repairs the
    /// side that lacked the object or held a damaged copy.
    async fn read_either<T, F, Fut>(
        &self,
        operation: &'static str,
        key: &str,
        read: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(DynBlobStore) -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, StoreError>>,
    {
        let order = if self.sides[0].breaker.is_closed() || !self.sides[1].breaker.is_closed() {
            [&self.sides[0], &self.sides[1]]
        } else {
            [&self.sides[1], &self.sides[0]]
        };
        let mut outcomes = Vec::with_capacity(2);
        for side in order {
            let outcome = self.read_side(side, operation, &read).await;
            let served = outcome.is_done();
            outcomes.push((side.side, outcome));
            if served {
                break;
            }
        }
        // A damaged copy is repaired even when no other side could serve this read: the
        // replicator copies a good one once the other side answers again.
        let damaged: Vec<Side> = outcomes
            .iter()
            .filter(|(_, outcome)| matches!(outcome, SideOutcome::Damaged(_)))
            .map(|(side, _)| *side)
            .collect();
        match decide_read(outcomes) {
            ReadDecision::Serve { value, repair } => {
                self.repair(key, &repair).await;
                Ok(value)
            }
            ReadDecision::NotFound => Err(StoreError::NotFound {
                store: self.name.clone(),
                key: key.to_owned(),
            }),
            ReadDecision::Damaged(error) | ReadDecision::Reject(error) => Err(error),
            ReadDecision::Unavailable { reasons } => {
                self.repair(key, &damaged).await;
                Err(StoreError::Unavailable {
                    store: self.name.clone(),
                    message: format!("{key} could not be read from any store ({reasons})"),
                })
            }
        }
    }

    async fn put_side(
        &self,
        side: &SideState,
        permit: Option<Permit<'_>>,
        key: &str,
        data: &Bytes,
    ) -> SideOutcome<()> {
        let Some(permit) = permit else {
            return SideOutcome::Skipped;
        };
        let outcome = SideOutcome::classify(
            self.call(side, permit, "put", side.store.put(key, data.clone()))
                .await
                .map(Some),
        );
        if outcome.is_done() {
            side.counters
                .bytes_written
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        outcome
    }
}

#[async_trait]
impl BlobStore for FailoverStore {
    fn name(&self) -> &str {
        &self.name
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let [primary, fallback] = &self.sides;
        let primary_permit = primary.breaker.try_acquire();
        // Synchronous mirroring writes both sides at once while both are healthy, so an
        // acknowledged object survives the loss of either; the asynchronous mode writes the
        // primary only and leaves the copy to the replicator.
        let fallback_now = primary_permit.is_none() || self.config.synchronous_mirror;
        let fallback_permit = if fallback_now {
            fallback.breaker.try_acquire()
        } else {
            None
        };
        let (primary_outcome, mut fallback_outcome) = tokio::join!(
            self.put_side(primary, primary_permit, key, &data),
            self.put_side(fallback, fallback_permit, key, &data),
        );
        // Asynchronous mode: the primary did not take it, so the fallback must.
        if !fallback_now && !primary_outcome.is_done() {
            fallback_outcome = self
                .put_side(fallback, fallback.breaker.try_acquire(), key, &data)
                .await;
        }
        match decide_write(&primary_outcome, &fallback_outcome) {
            WriteDecision::Acknowledge { copy_to } => {
                // The copy order is durable before the write is acknowledged: a crash can
                // delay the copy, never lose it.
                for side in copy_to {
                    self.log.enqueue(key, side, now_micros()).await.map_err(|error| {
                        StoreError::Unavailable {
                            store: self.name.clone(),
                            message: format!("queueing {key} for replication to the {side}: {error}"),
                        }
                    })?;
                    self.work_queued.notify_one();
                }
                Ok(())
            }
            WriteDecision::Unavailable { reasons } => Err(StoreError::Unavailable {
                store: self.name.clone(),
                message: format!("no object store accepted the write ({reasons})"),
            }),
            WriteDecision::Reject(error) => Err(error),
        }
    }

    async fn get(&self, key: &str, options: GetOptions) -> Result<Bytes, StoreError> {
        self.read_either("get", key, |store| {
            let options = options.clone();
            async move { store.get(key, options).await.map(Some) }
        })
        .await
    }

    async fn get_decoded(
        &self,
        key: &str,
        options: GetOptions,
        decode: Decoder,
    ) -> Result<Vec<Bytes>, StoreError> {
        self.read_either("get", key, |store| {
            let options = options.clone();
            let decode = decode.clone();
            async move { store.get_decoded(key, options, decode).await.map(Some) }
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        match self
            .read_either("head", key, |store| async move { store.head(key).await })
            .await
        {
            Ok(meta) => Ok(Some(meta)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let (primary, fallback) = tokio::join!(
            self.call(
                &self.sides[0],
                self.sides[0].breaker.observe(),
                "delete",
                self.sides[0].store.delete(key)
            ),
            self.call(
                &self.sides[1],
                self.sides[1].breaker.observe(),
                "delete",
                self.sides[1].store.delete(key)
            ),
        );
        primary.and(fallback)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let (primary, fallback) = tokio::join!(
            self.timed(&self.sides[0], "list", self.sides[0].store.list(prefix)),
            self.timed(&self.sides[1], "list", self.sides[1].store.list(prefix)),
        );
        let mut merged: BTreeMap<String, ObjectMeta> = BTreeMap::new();
        for object in primary?.into_iter().chain(fallback?) {
            merged.entry(object.key.clone()).or_insert(object);
        }
        Ok(merged.into_values().collect())
    }

    /// Healthy as soon as either side answers: a hung side must not hide a working one.
    /// Health checks leave the breakers alone; the prober speaks for the stores.
    async fn check(&self) -> Result<(), StoreError> {
        let [primary, fallback] = &self.sides;
        let limit = self.config.request_timeout.min(CHECK_TIMEOUT);
        let checked = |side: &'static str, store: DynBlobStore| async move {
            match tokio::time::timeout(limit, store.check()).await {
                Ok(result) => result,
                Err(_) => Err(timed_out(side, limit)),
            }
        };
        futures::future::select_ok([
            Box::pin(checked("primary", primary.store.clone())),
            Box::pin(checked("fallback", fallback.store.clone())),
        ])
        .await
        .map(|_| ())
    }
}
