//! One memory budget for every upload's packs and every download's read-ahead, with
//! backpressure: a stream that needs more waits for others to finish with theirs instead of
//! the process growing with the number of streams.
//!
//! Waiting never deadlocks because a stream only waits while what it already holds is on
//! its way out without help from any other stream: an upload waits with nothing reserved
//! but its pack writes in flight (an upload that runs short with a pack half full seals it
//! early and writes it), and a download reserves its spans in order, so what it holds is
//! ahead of what it waits for and leaves as its client reads.
//!
//! Uploads' received content has a budget of its own ([`Pool::Received`]): an upload
//! reserves each message before it takes the next and gives the reservation back once the
//! batch the message was cut into is packed. Packing may wait for the transfer budget while
//! holding received content, never the other way round, so the two budgets cannot wait on
//! each other in a circle.

use crate::domain::{Error, Result};
use crate::telemetry::names;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Reservations are counted in units of this many bytes.
const UNIT: usize = 64 * 1024;
/// The longest a transfer waits for memory before it is told to retry.
pub(crate) const WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Clone)]
pub(crate) struct MemoryBudget {
    units: Arc<Semaphore>,
    total_units: u32,
    pool: Pool,
    waiting: Arc<Waiting>,
}

/// Who waits for a budget, for holders that can give memory back early when asked.
#[derive(Default)]
struct Waiting {
    count: std::sync::atomic::AtomicUsize,
    started: tokio::sync::Notify,
}

/// Counts a reservation as waiting while it lives (a wait given up counts no longer).
struct WaitingGuard<'a>(&'a Waiting);

impl<'a> WaitingGuard<'a> {
    fn new(waiting: &'a Waiting) -> Self {
        waiting.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        waiting.started.notify_waiters();
        Self(waiting)
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// What a budget is for: its metrics and how it explains a wait that ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pool {
    /// Uploads' packs and downloads' read-ahead.
    Transfers,
    /// The plain content of delta bases, read to encode or decode delta chunks.
    DeltaBases,
    /// Uploads' content received and not yet packed.
    Received,
}

impl Pool {
    fn reserved_gauge(self) -> &'static str {
        match self {
            Pool::Transfers => names::TRANSFER_MEMORY_RESERVED_BYTES,
            Pool::DeltaBases => names::DELTA_BASE_MEMORY_RESERVED_BYTES,
            Pool::Received => names::RECEIVED_MEMORY_RESERVED_BYTES,
        }
    }

    fn waits_counter(self) -> &'static str {
        match self {
            Pool::Transfers => names::TRANSFER_MEMORY_WAITS_TOTAL,
            Pool::DeltaBases => names::DELTA_BASE_MEMORY_WAITS_TOTAL,
            Pool::Received => names::RECEIVED_MEMORY_WAITS_TOTAL,
        }
    }

    fn held_by(self) -> &'static str {
        match self {
            Pool::Transfers => "transfer memory has been in use by other uploads and downloads",
            Pool::DeltaBases => "memory for delta bases has been in use by other reads",
            Pool::Received => "memory for received content has been in use by other uploads",
        }
    }
}

/// Bytes held against a budget until dropped.
pub(crate) struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    pool: Pool,
}

impl Default for Reservation {
    fn default() -> Self {
        Self::none()
    }
}

impl Reservation {
    pub(crate) fn none() -> Self {
        Self {
            permit: None,
            pool: Pool::Transfers,
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.permit.as_ref().map_or(0, |p| p.num_permits() * UNIT)
    }

    /// Adds `other` (of the same budget) to this reservation.
    pub(crate) fn merge(&mut self, mut other: Reservation) {
        match (&mut self.permit, other.permit.take()) {
            (Some(mine), Some(theirs)) => {
                debug_assert_eq!(self.pool, other.pool, "reservations of one budget merge");
                mine.merge(theirs)
            }
            (mine @ None, theirs) => {
                *mine = theirs;
                self.pool = other.pool;
            }
            (_, None) => {}
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            let units = permit.num_permits();
            drop(permit);
            metrics::gauge!(self.pool.reserved_gauge()).decrement((units * UNIT) as f64);
        }
    }
}

impl MemoryBudget {
    /// The budget of transfers' buffers.
    pub(crate) fn new(bytes: usize) -> Self {
        Self::for_pool(Pool::Transfers, bytes)
    }

    pub(crate) fn for_pool(pool: Pool, bytes: usize) -> Self {
        let total_units = bytes
            .div_ceil(UNIT)
            .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize)) as u32;
        Self {
            units: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
            pool,
            waiting: Default::default(),
        }
    }

    fn units_for(&self, bytes: usize) -> u32 {
        // A single reservation larger than the whole budget would wait for ever.
        (bytes.div_ceil(UNIT).max(1) as u32).min(self.total_units)
    }

    fn granted(&self, permit: OwnedSemaphorePermit) -> Reservation {
        metrics::gauge!(self.pool.reserved_gauge()).increment((permit.num_permits() * UNIT) as f64);
        Reservation {
            permit: Some(permit),
            pool: self.pool,
        }
    }

    /// Bytes nobody holds now.
    pub(crate) fn available(&self) -> usize {
        self.units.available_permits() * UNIT
    }

    /// `bytes` now, if the budget has them.
    pub(crate) fn try_reserve(&self, bytes: usize) -> Option<Reservation> {
        self.units
            .clone()
            .try_acquire_many_owned(self.units_for(bytes))
            .ok()
            .map(|permit| self.granted(permit))
    }

    /// `bytes`, waiting until the budget has them, for at most [`WAIT_LIMIT`]: transfers
    /// whose clients stopped reading hold memory until they go away, and a caller is better
    /// told to retry than kept waiting without end.
    pub(crate) async fn reserve(&self, bytes: usize) -> Result<Reservation> {
        if let Some(reservation) = self.try_reserve(bytes) {
            return Ok(reservation);
        }
        metrics::counter!(self.pool.waits_counter()).increment(1);
        let _waiting = WaitingGuard::new(&self.waiting);
        let acquired = tokio::time::timeout(
            WAIT_LIMIT,
            self.units.clone().acquire_many_owned(self.units_for(bytes)),
        )
        .await
        .map_err(|_| {
            Error::Unavailable(format!(
                "the server's {} for {} s; retry",
                self.pool.held_by(),
                WAIT_LIMIT.as_secs()
            ))
        })?;
        Ok(self.granted(acquired.expect("the budget's semaphore is never closed")))
    }

    /// Returns once someone waits for this budget (at once if someone does now): a holder
    /// that could give memory back early, but would rather not, learns when it should.
    pub(crate) async fn someone_waits(&self) {
        let started = self.waiting.started.notified();
        tokio::pin!(started);
        // Registered before the count is read, so a wait that starts in between is not missed.
        started.as_mut().enable();
        if self.waiting.count.load(std::sync::atomic::Ordering::Acquire) > 0 {
            return;
        }
        started.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn reservations_wait_for_what_others_give_back() {
        let budget = MemoryBudget::new(1024 * 1024);
        let first = budget.reserve(768 * 1024).await.unwrap();
        assert_eq!(first.bytes(), 768 * 1024);
        assert!(budget.try_reserve(512 * 1024).is_none());
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(512 * 1024).await.unwrap().bytes() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "nothing was given back yet");
        drop(first);
        assert_eq!(waiting.await.unwrap(), 512 * 1024);
        // More than the whole budget is capped at the whole budget, never waits for ever.
        assert_eq!(budget.reserve(10 << 20).await.unwrap().bytes(), 1024 * 1024);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn holders_learn_when_someone_waits() {
        let budget = MemoryBudget::for_pool(Pool::Received, 128 * 1024);
        let held = budget.reserve(128 * 1024).await.unwrap();
        let quiet = |budget: &MemoryBudget| {
            let budget = budget.clone();
            async move {
                tokio::time::timeout(Duration::from_millis(100), budget.someone_waits())
                    .await
                    .is_err()
            }
        };
        assert!(quiet(&budget).await, "nobody waits yet");
        // A holder listening before the wait starts hears of it…
        let listening = tokio::spawn({
            let budget = budget.clone();
            async move { budget.someone_waits().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(64 * 1024).await.unwrap().bytes() }
        });
        tokio::time::timeout(Duration::from_secs(10), listening)
            .await
            .expect("the listening holder was told")
            .unwrap();
        // …and one that asks while the wait lasts is told at once.
        assert!(!quiet(&budget).await, "someone waits");
        drop(held);
        assert_eq!(waiter.await.unwrap(), 64 * 1024);
        assert!(quiet(&budget).await, "nobody waits any more");
    }

    #[tokio::test]
    async fn merged_reservations_are_given_back_together() {
        let budget = MemoryBudget::new(256 * 1024);
        let mut held = Reservation::none();
        for _ in 0..4 {
            held.merge(budget.try_reserve(64 * 1024).unwrap());
        }
        assert_eq!(held.bytes(), 256 * 1024);
        assert!(budget.try_reserve(1).is_none());
        drop(held);
        assert!(budget.try_reserve(256 * 1024).is_some());
    }
}
