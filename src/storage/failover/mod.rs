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
//! - Reads try the preferred healthy side and fall back to the other on a miss or an error.
//! - A prober per side writes, reads back and deletes a canary; its results feed the
//!   breakers, which is how a returning primary closes its breaker (failback) and how a dead
//!   one is noticed without traffic. Per-request timeouts make a slow store count as a dead one.

use super::breaker::{BreakerConfig, BreakerSnapshot, CircuitBreaker, Permit, Transition};
use super::replication::{ReplicationItem, ReplicationLog, ReplicationStats, Side};
use super::{BlobStore, DynBlobStore, GetOptions, ObjectMeta, StoreError};
use crate::domain::now_micros;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Checks that an object's bytes match its name (packs are named by their hash).
pub type ObjectVerifier = Arc<dyn Fn(&str, &[u8]) -> bool + Send + Sync>;

#[derive(Debug, Clone)]
pub struct FailoverConfig {
    /// Limit for any single store call; a slower store is treated as failing.
    pub request_timeout: Duration,
    pub probe_interval: Duration,
    pub breaker: BreakerConfig,
    pub replication_concurrency: usize,
    pub replication_retry_initial: Duration,
    pub replication_retry_max: Duration,
    /// Write both sides at once while both are healthy (acknowledged objects survive the
    /// loss of either side); otherwise only the primary, leaving the copy to the replicator.
    pub synchronous_mirror: bool,
    /// Names the canary object of this process, so replicas sharing a bucket do not collide.
    pub node_id: String,
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
}

#[derive(Debug, Clone)]
pub struct FailoverStatus {
    pub sides: Vec<SideStatus>,
    pub write_target: Side,
    pub replication: ReplicationStats,
    pub last_failover: Option<SwitchEvent>,
    pub last_failback: Option<SwitchEvent>,
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
    config: FailoverConfig,
    verifier: Option<ObjectVerifier>,
    switches: Mutex<Switches>,
    replication: ReplicationCounters,
    work_queued: Notify,
    name: String,
}

impl std::fmt::Debug for FailoverStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailoverStore").field("name", &self.name).finish()
    }
}

/// Health checks answer within this, whatever the request timeout.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

fn timed_out(store: &str, limit: Duration) -> StoreError {
    StoreError::Unavailable {
        store: store.to_owned(),
        message: format!("no answer within {} ms", limit.as_millis()),
    }
}

impl FailoverStore {
    pub fn new(
        primary: DynBlobStore,
        fallback: DynBlobStore,
        log: Arc<dyn ReplicationLog>,
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

    /// Runs one store call under the request timeout, counting it and its latency.
    async fn timed<T>(
        &self,
        side: &SideState,
        operation: &'static str,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.config.request_timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(timed_out(side.store.name(), self.config.request_timeout)),
        };
        let elapsed = started.elapsed();
        side.counters.operations.fetch_add(1, Ordering::Relaxed);
        side.counters
            .latency_micros_total
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        let outcome = match &result {
            Err(error) if error.is_store_fault() => {
                side.counters.errors.fetch_add(1, Ordering::Relaxed);
                "error"
            }
            _ => "ok",
        };
        metrics::counter!("artifactd_store_operations_total", "side" => side.side.as_str(), "operation" => operation, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("artifactd_store_latency_seconds", "side" => side.side.as_str(), "operation" => operation)
            .record(elapsed.as_secs_f64());
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
                metrics::counter!("artifactd_store_breaker_opened_total", "side" => side.side.as_str())
                    .increment(1);
            }
            Transition::Closed => tracing::info!(side = %side.side, "circuit closed"),
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
            metrics::gauge!("artifactd_store_breaker_open", "side" => side.side.as_str()).set(open);
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
                metrics::counter!("artifactd_failovers_total").increment(1);
                metrics::gauge!("artifactd_failed_over").set(1.0);
            }
            Side::Primary => {
                tracing::info!(reason = %event.reason, "failback: writes return to the primary store");
                if let Some(since) = switches.failed_over_since.take() {
                    switches.failed_over_total += since.elapsed();
                }
                switches.last_failback = Some(event);
                metrics::counter!("artifactd_failbacks_total").increment(1);
                metrics::gauge!("artifactd_failed_over").set(0.0);
            }
        }
    }

    fn backoff_for(&self, attempts: i64) -> Duration {
        let exponent = attempts.clamp(0, 16) as u32;
        (self.config.replication_retry_initial * 2u32.pow(exponent)).min(self.config.replication_retry_max)
    }

    // ---- probing -------------------------------------------------------------------------

    /// Writes, reads back and deletes a canary on one side; the whole probe is one outcome
    /// for the breaker (a canary that reads back wrong fails it like an outage).
    async fn probe_side(&self, side: &SideState, permit: Permit<'_>) -> ProbeReport {
        let key = format!("health/canary-{}", self.config.node_id);
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
        self.after_probe(&primary_report);
        vec![primary_report, fallback_report]
    }

    fn after_probe(&self, primary: &ProbeReport) {
        if primary.healthy() && self.side(Side::Primary).breaker.is_closed() {
            self.note_write_target(Side::Primary, || {
                "the primary store passes its probes again".to_owned()
            });
        }
    }

    /// The prober job: probes both sides every `probe_interval`, concurrently so that a hung
    /// store does not delay the other's probe; an open side is probed only when its backoff
    /// allows a trial.
    pub async fn run_prober(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let this: &Self = &self;
            let [primary, fallback] = &this.sides;
            let probe = |side| async move {
                match Self::probe_permit(side) {
                    Some(permit) => Some(this.probe_side(side, permit).await),
                    None => None,
                }
            };
            let (primary_report, _) = tokio::join!(probe(primary), probe(fallback));
            if let Some(report) = primary_report {
                self.after_probe(&report);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.config.probe_interval) => {}
            }
        }
    }

    // ---- replication ---------------------------------------------------------------------

    /// Copies `key` from the other side to `target` unless it is there already. A failure
    /// names the side it came from.
    async fn copy(&self, key: &str, target: Side) -> Result<u64, (Side, StoreError)> {
        let target_side = self.side(target);
        let source_side = self.side(target.other());
        let on = |side: Side| move |error| (side, error);
        if self
            .timed(target_side, "head", target_side.store.head(key))
            .await
            .map_err(on(target))?
            .is_some()
        {
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
        Ok(size)
    }

    /// Copies one queued object; the outcome on the target feeds its breaker.
    async fn replicate_item(&self, item: ReplicationItem, permit: Permit<'_>) {
        let target = self.side(item.target);
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
                metrics::counter!("artifactd_replicated_bytes_total").increment(bytes);
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
        }
    }

    /// Copies every due item whose target store accepts calls now; returns how many were
    /// attempted. Items for a store whose breaker is open wait untouched (no attempt is
    /// counted, no row rewritten) until the breaker lets calls through again.
    pub async fn replicate_due(&self) -> usize {
        let items = match self.log.due(now_micros(), 256).await {
            Ok(items) => items,
            Err(error) => {
                tracing::warn!(%error, "could not read the replication queue");
                return 0;
            }
        };
        let mut runnable = Vec::new();
        for item in items {
            let target = self.side(item.target);
            let permit = if target.breaker.is_closed() {
                Some(target.breaker.observe())
            } else {
                target.breaker.try_acquire()
            };
            if let Some(permit) = permit {
                runnable.push((item, permit));
            }
        }
        let count = runnable.len();
        futures::stream::iter(runnable)
            .for_each_concurrent(self.config.replication_concurrency.max(1), |(item, permit)| {
                self.replicate_item(item, permit)
            })
            .await;
        count
    }

    /// The replicator job: copies queued objects with bounded concurrency, retrying failed
    /// items with exponential backoff for as long as it takes.
    pub async fn run_replicator(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let attempted = self.replicate_due().await;
            if let Ok(stats) = self.log.stats(0).await {
                metrics::gauge!("artifactd_replication_queue_depth").set(stats.depth as f64);
                let age = stats
                    .oldest_created_at
                    .map(|created| (now_micros() - created).max(0) as f64 / 1e6)
                    .unwrap_or(0.0);
                metrics::gauge!("artifactd_replication_oldest_age_seconds").set(age);
            }
            if attempted > 0 {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.work_queued.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
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
                })
                .collect(),
            write_target: switches.write_target,
            replication,
            last_failover: switches.last_failover.clone(),
            last_failback: switches.last_failback.clone(),
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

    async fn put_on<'a>(
        &'a self,
        side: &'a SideState,
        permit: Permit<'a>,
        key: &str,
        data: Bytes,
    ) -> (&'a SideState, Result<(), StoreError>) {
        (
            side,
            self.call(side, permit, "put", side.store.put(key, data)).await,
        )
    }

    /// Reads from the preferred side, then the other; `read` is the per-side operation.
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
        let mut failures = Vec::new();
        let mut answered_missing = 0;
        let mut skipped = Vec::new();
        let mut corrupt = None;
        for side in order {
            let Some(permit) = side.breaker.try_acquire() else {
                skipped.push(side);
                continue;
            };
            match self.call(side, permit, operation, read(side.store.clone())).await {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => {
                    answered_missing += 1;
                    failures.push(format!("{}: not found", side.side));
                }
                Err(error) if error.is_store_fault() => failures.push(format!("{}: {error}", side.side)),
                // A copy that fails verification or is shorter than expected is damaged; the
                // other side may hold a good one.
                Err(error @ (StoreError::Corrupt { .. } | StoreError::InvalidRange { .. })) => {
                    tracing::error!(side = %side.side, %error, "damaged copy; reading the other store's");
                    metrics::counter!("artifactd_store_corrupt_reads_total", "side" => side.side.as_str())
                        .increment(1);
                    corrupt = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        // Last resort: the sides we trusted could not serve the read; try the others.
        for side in skipped {
            match self
                .call(side, side.breaker.observe(), operation, read(side.store.clone()))
                .await
            {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => {
                    answered_missing += 1;
                    failures.push(format!("{}: not found", side.side));
                }
                Err(error) if error.is_store_fault() => {
                    failures.push(format!("{} (circuit open): {error}", side.side))
                }
                Err(error @ (StoreError::Corrupt { .. } | StoreError::InvalidRange { .. })) => {
                    corrupt = Some(error)
                }
                Err(error) => return Err(error),
            }
        }
        if let Some(error) = corrupt
            && failures.iter().all(|f| f.ends_with("not found"))
        {
            // No side had a good copy and none is merely unreachable.
            return Err(error);
        }
        if answered_missing == 2 {
            return Err(StoreError::NotFound {
                store: self.name.clone(),
                key: key.to_owned(),
            });
        }
        Err(StoreError::Unavailable {
            store: self.name.clone(),
            message: format!("{key} could not be read from any store ({})", failures.join("; ")),
        })
    }
}

#[async_trait]
impl BlobStore for FailoverStore {
    fn name(&self) -> &str {
        &self.name
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let mut failures = Vec::new();
        let mut landed = Vec::new();
        let [primary, fallback] = &self.sides;
        let primary_permit = primary.breaker.try_acquire();
        let primary_allowed = primary_permit.is_some();
        if !primary_allowed {
            failures.push(format!("{}: circuit open", Side::Primary));
        }
        // Synchronous mirroring writes both sides at once while both are healthy, so an
        // acknowledged object survives the loss of either; the asynchronous mode writes the
        // primary only and leaves the copy to the replicator.
        let fallback_now = !primary_allowed || self.config.synchronous_mirror;
        let fallback_permit = if fallback_now {
            fallback.breaker.try_acquire()
        } else {
            None
        };
        let fallback_allowed = fallback_permit.is_some();
        if fallback_now && !fallback_allowed {
            failures.push(format!("{}: circuit open", Side::Fallback));
        }
        let (primary_result, fallback_result) = tokio::join!(
            async {
                match primary_permit {
                    Some(permit) => Some(self.put_on(primary, permit, key, data.clone()).await),
                    None => None,
                }
            },
            async {
                match fallback_permit {
                    Some(permit) => Some(self.put_on(fallback, permit, key, data.clone()).await),
                    None => None,
                }
            },
        );
        let mut outcomes: Vec<_> = primary_result.into_iter().chain(fallback_result).collect();
        // The primary failed and the fallback was not tried yet (asynchronous mode).
        if !fallback_now
            && outcomes.iter().all(|(_, result)| result.is_err())
            && let Some(permit) = fallback.breaker.try_acquire()
        {
            outcomes.push(self.put_on(fallback, permit, key, data.clone()).await);
        }
        let mut attempted: Vec<Side> = outcomes.iter().map(|(side, _)| side.side).collect();
        for (side, result) in outcomes {
            match result {
                Ok(()) => {
                    side.counters
                        .bytes_written
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    landed.push(side.side);
                }
                Err(error) if error.is_store_fault() => failures.push(format!("{}: {error}", side.side)),
                Err(error) => return Err(error),
            }
        }
        // Last resort: every side we trusted failed, so try the ones whose breaker is open
        // rather than refuse a write that one of them may well take.
        for side in &self.sides {
            if !landed.is_empty() || attempted.contains(&side.side) {
                continue;
            }
            attempted.push(side.side);
            match self
                .put_on(side, side.breaker.observe(), key, data.clone())
                .await
                .1
            {
                Ok(()) => {
                    side.counters
                        .bytes_written
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    landed.push(side.side);
                }
                Err(error) if error.is_store_fault() => {
                    failures.push(format!("{} (last resort): {error}", side.side))
                }
                Err(error) => return Err(error),
            }
        }
        if landed.is_empty() {
            return Err(StoreError::Unavailable {
                store: self.name.clone(),
                message: format!("no object store accepted the write ({})", failures.join("; ")),
            });
        }
        // Queue the copy for every side that lacks the object before acknowledging: a crash
        // can delay the copy, never lose it.
        for side in [Side::Primary, Side::Fallback] {
            if landed.contains(&side) {
                continue;
            }
            self.log
                .enqueue(key, side, now_micros())
                .await
                .map_err(|error| StoreError::Unavailable {
                    store: self.name.clone(),
                    message: format!("queueing {key} for replication to the {side}: {error}"),
                })?;
            self.work_queued.notify_one();
        }
        let target = if landed.contains(&Side::Primary) {
            Side::Primary
        } else {
            Side::Fallback
        };
        let reason = failures.join("; ");
        self.note_write_target(target, || match target {
            Side::Fallback => format!("primary store failing: {reason}"),
            Side::Primary => "the primary store accepts writes again".to_owned(),
        });
        Ok(())
    }

    async fn get(&self, key: &str, options: GetOptions) -> Result<Bytes, StoreError> {
        let bytes = self
            .read_either("get", key, |store| {
                let options = options.clone();
                async move {
                    match store.get(key, options).await {
                        Ok(bytes) => Ok(Some(bytes)),
                        Err(error) if error.is_not_found() => Ok(None),
                        Err(error) => Err(error),
                    }
                }
            })
            .await?;
        Ok(bytes)
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        match self
            .read_either("head", key, |store| async move {
                store.head(key).await.map(|m| m.map(Some))
            })
            .await
        {
            Ok(meta) => Ok(meta),
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

    /// Healthy while at least one side answers.
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
