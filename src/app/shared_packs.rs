//! Packs shared by small uploads.
//!
//! An upload whose last pack is small (all of a small upload's content) hands its chunks
//! here instead of writing a pack of its own. Per tenant, one pack is written at a time:
//! chunks handed in while it is written wait and then go out together, so under load many
//! uploads share one pack, one staging row and one object write (group commit, the write in
//! flight being the window), while an upload arriving when nothing is being written has its
//! pack written at once, as its own would have been (or after `ingest.shared_pack_window_ms`
//! when that is set, to gather more). A batch that reaches the pack target
//! closes and the next one opens; up to `ingest.max_packs_in_flight` full batches of a tenant
//! are written at the same time.
//!
//! An upload learns where its chunks are only once their pack is durable and staged, and it
//! commits after that: sharing never acknowledges anything earlier than a pack of its own
//! would have. A shared pack's row names no single upload, so an upload that fails leaves its
//! chunks in the pack unclaimed and abandons nothing of the others'; they still commit
//! theirs, and collection compacts what nobody claimed. A pack whose uploads all failed stays
//! staged until collection takes it after the grace period, as any staged pack.

use super::Inner;
use super::budget::Reservation;
use super::upload::{seal_and_stage, write_pack};
use crate::catalog::StagedPack;
use crate::domain::{Error, Result};
use crate::ingest::PackBuilder;
use crate::ingest::pack::PackEntry;
use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

static NEXT_EPOCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Where an upload's chunks went.
#[derive(Debug)]
pub(super) struct Placement {
    pub pack: StagedPack,
    /// The upload's chunks as the pack holds them, in the order they were handed in.
    pub entries: Vec<PackEntry>,
}

/// The shared packs being filled and written, by tenant.
#[derive(Default)]
pub(crate) struct SharedPacks {
    tenants: Mutex<HashMap<Arc<str>, Queue>>,
}

#[derive(Default)]
struct Queue {
    /// Tells this queue from one made for the tenant after it was dropped.
    epoch: u64,
    /// Batches waiting to be written, oldest first; only the last one takes more chunks.
    waiting: VecDeque<Batch>,
    /// Writer tasks running for the tenant.
    writers: usize,
}

#[derive(Default)]
struct Batch {
    builder: PackBuilder,
    /// The memory the uploads' chunks held, given back once the pack is written.
    reservation: Reservation,
    members: Vec<Member>,
}

struct Member {
    entries: Range<usize>,
    placed: oneshot::Sender<Result<Placement>>,
}

impl SharedPacks {
    /// Puts `chunks` (with the memory `reservation` that holds them) into a shared pack of
    /// `tenant`'s and answers once that pack is durable on the store and staged in the
    /// catalog.
    pub(super) async fn place(
        inner: &Arc<Inner>,
        tenant: &str,
        chunks: PackBuilder,
        reservation: Reservation,
    ) -> Result<Placement> {
        let (placed, placement) = oneshot::channel();
        let target = inner.settings.ingest.pack_target_bytes;
        let start_writer = {
            let mut tenants = inner.shared_packs.lock();
            let queue = tenants.entry(Arc::from(tenant)).or_insert_with(|| Queue {
                epoch: NEXT_EPOCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                ..Queue::default()
            });
            let epoch = queue.epoch;
            let fits = queue
                .waiting
                .back()
                .is_some_and(|batch| batch.builder.len() + chunks.len() <= target);
            if !fits {
                queue.waiting.push_back(Batch::default());
            }
            let batch = queue.waiting.back_mut().expect("a batch is open");
            let entries = batch.builder.append(chunks);
            batch.reservation.merge(reservation);
            batch.members.push(Member { entries, placed });
            // A writer is started when none runs, or when a full batch waits and fewer than
            // the allowed writes are in flight.
            let wanted = if queue.waiting.len() > 1 {
                inner.settings.ingest.max_packs_in_flight
            } else {
                1
            };
            if queue.writers < wanted {
                queue.writers += 1;
                Some(epoch)
            } else {
                None
            }
        };
        if let Some(epoch) = start_writer {
            let writer = Writer {
                inner: inner.clone(),
                tenant: Arc::from(tenant),
                epoch,
                done: false,
            };
            tokio::spawn(writer.run());
        }
        metrics::counter!(crate::telemetry::names::SHARED_PACK_UPLOADS_TOTAL).increment(1);
        placement
            .await
            .unwrap_or_else(|_| Err(Error::internal("the shared pack writer stopped before writing")))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Queue>> {
        self.tenants
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Writes a tenant's waiting batches, oldest first, until none is left.
struct Writer {
    inner: Arc<Inner>,
    tenant: Arc<str>,
    /// The queue this writer is counted in.
    epoch: u64,
    /// Set once the writer found nothing left and stopped being counted.
    done: bool,
}

impl Writer {
    async fn run(mut self) {
        let window = self.inner.settings.ingest.shared_pack_window_ms;
        if window > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(window)).await;
        }
        while let Some(batch) = self.next_batch() {
            let Batch {
                builder,
                reservation,
                members,
            } = batch;
            let written = self.write(builder).await;
            drop(reservation);
            for Member { entries, placed } in members {
                let placement = match &written {
                    Ok((pack, all)) => Ok(Placement {
                        pack: pack.clone(),
                        entries: all[entries].to_vec(),
                    }),
                    Err(error) => Err(error.clone()),
                };
                // An upload that went away meanwhile leaves its chunks unclaimed.
                let _ = placed.send(placement);
            }
        }
    }

    /// The oldest waiting batch; `None` (and this writer is no longer counted) when there
    /// is none.
    fn next_batch(&mut self) -> Option<Batch> {
        let mut tenants = self.inner.shared_packs.lock();
        let Some(queue) = tenants
            .get_mut(&self.tenant)
            .filter(|queue| queue.epoch == self.epoch)
        else {
            self.done = true;
            return None;
        };
        match queue.waiting.pop_front() {
            Some(batch) => Some(batch),
            None => {
                self.done = true;
                queue.writers -= 1;
                if queue.writers == 0 {
                    tenants.remove(&self.tenant);
                }
                None
            }
        }
    }

    async fn write(&self, builder: PackBuilder) -> Result<(StagedPack, Vec<PackEntry>)> {
        let inner = &self.inner;
        let sealing = inner.keys.sealing_key(&inner.catalog, &self.tenant).await?;
        let group = format!("shared-{}", uuid::Uuid::now_v7());
        let (sealed, generation) = seal_and_stage(inner, &self.tenant, builder, sealing, &group).await?;
        write_pack(&inner.store, sealed.id, sealed.bytes).await?;
        metrics::counter!(crate::telemetry::names::SHARED_PACKS_TOTAL).increment(1);
        let pack = StagedPack {
            pack_id: sealed.id.to_hex(),
            generation,
        };
        Ok((pack, sealed.entries))
    }
}

/// A writer that ends otherwise than by finding nothing left (it panicked, or its task was
/// dropped with the runtime) must not leave its tenant's uploads waiting for a write that
/// never comes: the tenant's queue goes, the senders in it tell each waiting upload the
/// writer stopped, and the next upload starts afresh.
impl Drop for Writer {
    fn drop(&mut self) {
        if !self.done {
            let mut tenants = self.inner.shared_packs.lock();
            if tenants
                .get(&self.tenant)
                .is_some_and(|queue| queue.epoch == self.epoch)
            {
                tenants.remove(&self.tenant);
            }
        }
    }
}
