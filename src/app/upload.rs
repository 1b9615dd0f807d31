//! The ingest pipeline of one upload: cut content into chunks as it arrives, hash them with
//! the tenant's key, skip chunks the tenant already stores, compress the rest, collect them
//! into packs and write full packs while more content is still arriving.
//!
//! Memory stays bounded: the chunker holds at most one maximum-size chunk plus one message,
//! the dedup batch a few MiB, and at most `max_packs_in_flight` sealed packs plus the one
//! being filled.

use super::Inner;
use super::budget::Reservation;
use super::keys::SealingKey;
use crate::catalog::{NewVersion, PackStage};
use crate::domain::{Error, Result, content_type, names::quoted, now_micros};
use crate::ingest::chunk::{Codec, Compressibility, encode};
use crate::ingest::delta::{self, Alignment, DeltaBases};
use crate::ingest::extract::{ContentShape, Extracted, Head, extract};
use crate::ingest::resemblance::{self, Sketch};
use crate::ingest::sealing::DataKey;
use crate::ingest::{
    ChunkId, Manifest, ManifestEntry, ManifestWriter, NewChunks, NewManifest, PackBuilder, StreamChunker,
    TenantKey,
};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// Data messages received ahead of processing (up to 1 MiB at the default message limit;
/// the stream's flow-control window holds up to 512 KiB more). Each is reserved from the
/// received memory budget before it is taken.
const RECEIVE_AHEAD_MESSAGES: usize = 4;
/// Dedup lookups are batched: one catalog round trip per this many pending bytes. The
/// received budget pays for them (about three batches: one being cut, one handed over, one
/// being packed) until they are packed. Measured at 16 concurrent uploads, halving this and
/// the receive-ahead (and the stream window, `server.rs`) took 100 MiB off the peak at the
/// same throughput.
const DEDUP_BATCH_BYTES: usize = 512 * 1024;
/// The pack being filled takes memory from the budget in steps of this size once it needs
/// that much.
const PACK_RESERVATION_STEP: usize = 1024 * 1024;

/// What the caller promised about the content.
#[derive(Debug, Clone, Default)]
pub struct ContentExpectations {
    pub size: Option<u64>,
    pub blake3: Option<blake3::Hash>,
}

impl ContentExpectations {
    /// Whether the whole content (`size` bytes hashing to `digest`) is what was promised;
    /// errors name the field the promise came from.
    fn check(
        &self,
        size: u64,
        digest: &blake3::Hash,
        size_field: &'static str,
        blake3_field: &'static str,
    ) -> Result<()> {
        if let Some(expected) = self.size
            && expected != size
        {
            return Err(Error::invalid(
                size_field,
                format!("the stream carried {size} bytes but {expected} were declared"),
            ));
        }
        if let Some(expected) = self.blake3
            && expected != *digest
        {
            return Err(Error::invalid(
                blake3_field,
                format!(
                    "declared {} but the content hashes to {}",
                    expected.to_hex(),
                    digest.to_hex()
                ),
            ));
        }
        Ok(())
    }
}

/// One message of an upload after its header.
#[derive(Debug)]
pub enum UploadPart {
    /// The next piece of content.
    Data(Bytes),
    /// The deliberate end of the content, with what the caller promises about all of it.
    /// A cancelled or broken stream cannot produce this, which is why a commit needs it.
    Finish(ContentExpectations),
}

/// The content of a finished upload, ready to be committed as a version.
#[derive(Debug)]
pub struct IngestedContent {
    pub upload_id: String,
    pub size: u64,
    pub stored_size: u64,
    pub new_stored_size: u64,
    pub dedup_saved_bytes: u64,
    pub delta_saved_bytes: u64,
    pub blake3: String,
    pub manifest: NewManifest,
    pub new_chunks: NewChunks,
    /// Chunks of the content stored before this upload, each once, sorted.
    pub reused_chunks: Vec<ChunkId>,
    pub packs: Vec<crate::catalog::StagedPack>,
    pub content_type: String,
    pub extracted: Extracted,
}

impl IngestedContent {
    pub fn into_new_version(
        self,
        version: String,
        created_by: String,
        change_message: String,
        metadata: std::collections::BTreeMap<String, String>,
        labels: Option<crate::catalog::Labels>,
    ) -> NewVersion {
        NewVersion {
            version,
            size: self.size,
            stored_size: self.stored_size,
            new_stored_size: self.new_stored_size,
            dedup_saved_bytes: self.dedup_saved_bytes,
            delta_saved_bytes: self.delta_saved_bytes,
            blake3: self.blake3,
            chunk_count: self.manifest.len() as u64,
            created_by,
            created_at: now_micros(),
            change_message,
            metadata,
            content_type: self.content_type,
            extracted: serde_json::to_string(&self.extracted).expect("extracted metadata serializes"),
            manifest: self.manifest,
            new_chunks: self.new_chunks,
            reused_chunks: self.reused_chunks,
            packs: self.packs,
            labels,
            state: crate::domain::LifecycleState::Draft,
            dependencies: Vec::new(),
            produced_by: None,
        }
    }
}

/// Chunking and whole-content hashing state, moved into blocking tasks and back.
struct Cutter {
    chunker: StreamChunker,
    whole: blake3::Hasher,
    key: TenantKey,
    shape: ContentShape,
}

impl Cutter {
    fn cut(&mut self, data: &[u8], text: bool) -> Vec<(ChunkId, Bytes)> {
        self.shape.observe(data, text);
        self.whole.update(data);
        let chunks = self.chunker.push(data);
        self.identify(chunks)
    }

    fn identify(&self, chunks: Vec<Bytes>) -> Vec<(ChunkId, Bytes)> {
        chunks
            .into_iter()
            .map(|chunk| (self.key.chunk_id(&chunk), chunk))
            .collect()
    }
}

/// What the receiving stage hands to the packing stage.
enum Cut {
    /// The next chunks of the content, in order (about [`DEDUP_BATCH_BYTES`] of them), and
    /// the received memory they hold until they are packed.
    Chunks(Vec<(ChunkId, Bytes)>, Reservation),
    /// The content ended; this is what was learnt about all of it.
    End(Received),
}

struct Received {
    size: u64,
    digest: blake3::Hash,
    shape: ContentShape,
    head: Vec<u8>,
    finish: Option<ContentExpectations>,
}

/// The first stage of an upload: checks each message as it arrives, keeps the head for
/// extraction, hashes the whole content and cuts it into identified chunks, handing them
/// on in batches. It runs as its own task, so cutting and hashing the next batch overlaps
/// the packing stage's catalog lookup, compression and pack writes for this one.
struct Receiving {
    max_message: usize,
    batch_bytes: usize,
    expected_size: Option<u64>,
    size: u64,
    head: Head,
    finish: Option<ContentExpectations>,
    cutter: Option<Cutter>,
    pending: Vec<(ChunkId, Bytes)>,
    pending_bytes: usize,
    /// The received memory of the messages cut into `pending` (about its bytes: the
    /// chunker carries a chunk's worth from one batch to the next).
    pending_held: Reservation,
    /// The budget `pending_held` is from.
    received: super::budget::MemoryBudget,
}

/// Why the receiving stage stopped early without an error of its own.
struct PackingGone;

impl Receiving {
    async fn run(
        mut self,
        mut parts: tokio::sync::mpsc::Receiver<Result<(UploadPart, Reservation)>>,
        cuts: tokio::sync::mpsc::Sender<Result<Cut>>,
    ) {
        if let Err(Ok(error)) = self.receive(&mut parts, &cuts).await {
            let _ = cuts.send(Err(error)).await;
        }
    }

    /// `Err(Ok(error))`: the upload is refused; `Err(Err(PackingGone))`: nobody listens.
    async fn receive(
        &mut self,
        parts: &mut tokio::sync::mpsc::Receiver<Result<(UploadPart, Reservation)>>,
        cuts: &tokio::sync::mpsc::Sender<Result<Cut>>,
    ) -> std::result::Result<(), std::result::Result<Error, PackingGone>> {
        loop {
            let holding = !self.pending.is_empty() || self.pending_held.bytes() > 0;
            let part = if !holding {
                parts.recv().await
            } else {
                tokio::select! {
                    biased;
                    part = parts.recv() => part,
                    () = self.received.someone_waits() => {
                        // An upload (this one or another) waits for received memory while
                        // this one, with nothing new to cut, holds some: its part batch
                        // goes on to be packed now, which gives the memory back, rather
                        // than wait here for a message that may be the one waiting (what
                        // the chunker carries, less than a chunk, is let go unaccounted).
                        let (batch, held) = self.take_pending();
                        if batch.is_empty() {
                            drop(held);
                        } else {
                            cuts.send(Ok(Cut::Chunks(batch, held)))
                                .await
                                .map_err(|_| Err(PackingGone))?;
                        }
                        continue;
                    }
                }
            };
            let Some(part) = part else { break };
            let (part, held) = part.map_err(Ok)?;
            self.pending_held.merge(held);
            match part {
                UploadPart::Data(_) | UploadPart::Finish(_) if self.finish.is_some() => {
                    return Err(Ok(Error::invalid(
                        "finish",
                        "a message arrived after the finish message; finish must be the last message",
                    )));
                }
                UploadPart::Data(data) => {
                    self.accept(data).await.map_err(Ok)?;
                    if self.pending_bytes >= self.batch_bytes {
                        let (batch, held) = self.take_pending();
                        cuts.send(Ok(Cut::Chunks(batch, held)))
                            .await
                            .map_err(|_| Err(PackingGone))?;
                    }
                }
                UploadPart::Finish(promised) => self.finish = Some(promised),
            }
        }
        // A client that resets its stream looks, on this side, exactly like one that ended
        // it: only a finish message (or a size declared up front and met) proves the
        // content is complete.
        if self.finish.is_none() && self.expected_size.is_none() {
            return Err(Ok(Error::invalid(
                "finish",
                format!(
                    "the stream ended after {} bytes without a finish message, so the content may be cut short; end the upload with a finish message (or declare expected_size in the header)",
                    self.size
                ),
            )));
        }
        let mut cutter = self.cutter.take().expect("cutter present until the end");
        let (cutter, tail) = crate::compute::run(move || {
            let chunker = std::mem::replace(&mut cutter.chunker, StreamChunker::new(Default::default()));
            let tail = cutter.identify(chunker.finish());
            (cutter, tail)
        })
        .await
        .map_err(|e| Ok(Error::internal(format!("chunking task failed: {e}"))))?;
        self.queue(tail);
        let (batch, held) = self.take_pending();
        let end = Received {
            size: self.size,
            digest: cutter.whole.finalize(),
            shape: cutter.shape,
            head: std::mem::take(&mut self.head).into_bytes(),
            finish: self.finish.take(),
        };
        for cut in [Cut::Chunks(batch, held), Cut::End(end)] {
            cuts.send(Ok(cut)).await.map_err(|_| Err(PackingGone))?;
        }
        Ok(())
    }

    async fn accept(&mut self, data: Bytes) -> Result<()> {
        if data.len() > self.max_message {
            return Err(Error::invalid(
                "data",
                format!(
                    "a data message of {} bytes exceeds the limit of {}",
                    data.len(),
                    self.max_message
                ),
            ));
        }
        self.size += data.len() as u64;
        if let Some(expected) = self.expected_size
            && self.size > expected
        {
            return Err(Error::invalid(
                "expected_size",
                format!("the stream carried more than the declared {expected} bytes"),
            ));
        }
        self.head.push(&data);
        let text = !self.head.shows_not_text();
        let mut cutter = self.cutter.take().expect("cutter present until the end");
        let (cutter, chunks) = crate::compute::run(move || {
            let chunks = cutter.cut(&data, text);
            (cutter, chunks)
        })
        .await
        .map_err(|e| Error::internal(format!("chunking task failed: {e}")))?;
        self.cutter = Some(cutter);
        self.queue(chunks);
        Ok(())
    }

    fn queue(&mut self, chunks: Vec<(ChunkId, Bytes)>) {
        for (id, chunk) in chunks {
            self.pending_bytes += chunk.len();
            self.pending.push((id, chunk));
        }
    }

    fn take_pending(&mut self) -> (Vec<(ChunkId, Bytes)>, Reservation) {
        self.pending_bytes = 0;
        (
            std::mem::take(&mut self.pending),
            std::mem::take(&mut self.pending_held),
        )
    }
}

pub(super) struct Upload {
    inner: Arc<Inner>,
    tenant: String,
    upload_id: String,
    /// The tenant key this upload's packs are sealed under, looked up at the first pack;
    /// `Some(None)` when encryption is off.
    sealing: Option<Option<Arc<SealingKey>>>,
    /// The receiving stage, until the upload starts.
    receiving: Option<Receiving>,
    /// Bytes received so far (for the log when an upload is abandoned).
    size: u64,
    expectations: ContentExpectations,
    /// Whether compressing the next chunk is worth trying.
    compressibility: Compressibility,
    /// An update's previous version, followed along the content for delta bases.
    alignment: Option<Alignment>,
    /// Whether delta-encoding the next chunk that has a base is worth trying.
    delta_trials: Compressibility,
    key: TenantKey,
    /// The chunks this upload stores itself, found by id for its own repeats.
    new_chunks: NewChunks,
    manifest: ManifestWriter,
    /// Chunks of the content stored before this upload (sorted and deduplicated as it
    /// grows).
    reused_chunks: Vec<ChunkId>,
    /// `reused_chunks` is deduplicated again when it reaches this length.
    reused_dedup_at: usize,
    /// Stored bytes of the whole content (chunks stored before counted too), as encoded.
    stored_size: u64,
    new_stored_size: u64,
    /// Raw bytes of the chunks this upload stores itself.
    new_raw_size: u64,
    delta_saved_bytes: u64,
    pack: PackBuilder,
    /// The memory budget the pack being filled holds.
    pack_reservation: Reservation,
    packs: Vec<crate::catalog::StagedPack>,
    writes: JoinSet<Result<()>>,
}

impl Upload {
    /// An upload of `tenant`'s content; `previous` is the manifest of the version an update
    /// follows, whose chunks new ones may be stored as deltas against.
    pub(super) fn new(
        inner: Arc<Inner>,
        tenant: &str,
        expectations: ContentExpectations,
        previous: Option<Manifest>,
    ) -> Self {
        let key = TenantKey::derive(&inner.secret(), tenant);
        let alignment = previous
            .filter(|_| inner.settings.ingest.delta_max_depth > 0)
            .and_then(DeltaBases::new)
            .map(Alignment::new);
        let chunker = StreamChunker::new(inner.settings.ingest.chunker());
        let spill_dir = inner.settings.ingest.spill_path();
        let receiving = Receiving {
            max_message: inner.settings.ingest.max_data_message_bytes,
            batch_bytes: DEDUP_BATCH_BYTES.min(inner.settings.ingest.pack_target_bytes),
            expected_size: expectations.size,
            size: 0,
            head: Head::default(),
            finish: None,
            cutter: Some(Cutter {
                chunker,
                whole: blake3::Hasher::new(),
                key: key.clone(),
                shape: ContentShape::default(),
            }),
            pending: Vec::new(),
            pending_bytes: 0,
            pending_held: Reservation::none(),
            received: inner.received_budget.clone(),
        };
        Self {
            inner,
            tenant: tenant.to_owned(),
            upload_id: uuid::Uuid::now_v7().to_string(),
            sealing: None,
            receiving: Some(receiving),
            size: 0,
            expectations,
            compressibility: Compressibility::default(),
            alignment,
            delta_trials: Compressibility::default(),
            key,
            new_chunks: NewChunks::new(spill_dir.clone()),
            manifest: ManifestWriter::new(spill_dir.clone()),
            reused_chunks: Vec::new(),
            reused_dedup_at: 1024,
            stored_size: 0,
            new_stored_size: 0,
            new_raw_size: 0,
            delta_saved_bytes: 0,
            pack: PackBuilder::new(),
            pack_reservation: Reservation::none(),
            packs: Vec::new(),
            writes: JoinSet::new(),
        }
    }

    /// Consumes the content stream. On any failure, packs already written are marked
    /// abandoned for garbage collection and nothing becomes visible.
    pub(super) async fn run<S>(
        mut self,
        content: S,
        name: &str,
        caller_gone: &CancellationToken,
    ) -> Result<IngestedContent>
    where
        S: Stream<Item = Result<UploadPart>> + Send + Unpin + 'static,
    {
        let consumed = self.consume(content, name).await.and_then(|done| {
            // A stream reset by the client ends like a complete one on the server side, so the
            // caller's disappearance is the only sign that the content is cut short.
            if caller_gone.is_cancelled() {
                Err(Error::Cancelled(
                    "the client cancelled the upload before it completed".to_owned(),
                ))
            } else {
                Ok(done)
            }
        });
        match consumed {
            Ok(done) => Ok(done),
            Err(error) => {
                self.writes.abort_all();
                while self.writes.join_next().await.is_some() {}
                if let Err(cleanup) = self.inner.catalog.abandon_upload(&self.upload_id).await {
                    tracing::warn!(upload_id = %self.upload_id, error = %cleanup, "could not mark an abandoned upload's packs; garbage collection will find them as staged");
                }
                metrics::counter!(crate::telemetry::names::UPLOADS_FAILED_TOTAL).increment(1);
                tracing::info!(upload_id = %self.upload_id, bytes = self.size, %error, "upload abandoned; nothing was committed");
                Err(error)
            }
        }
    }

    async fn consume<S>(&mut self, content: S, name: &str) -> Result<IngestedContent>
    where
        S: Stream<Item = Result<UploadPart>> + Send + Unpin + 'static,
    {
        // Receive ahead of processing: the client keeps sending while chunks are hashed,
        // compressed and written, instead of stalling on every flush. Dropping the
        // channels' ends (an error here) stops both tasks.
        let (sender, parts) = tokio::sync::mpsc::channel(RECEIVE_AHEAD_MESSAGES);
        let (cut_sender, mut cuts) = tokio::sync::mpsc::channel(1);
        let _receiver = AbortOnDropHandle::new(tokio::spawn(forward(
            content,
            self.inner.received_budget.clone(),
            sender,
        )));
        let receiving = self.receiving.take().expect("an upload runs once");
        let _cutting = AbortOnDropHandle::new(tokio::spawn(receiving.run(parts, cut_sender)));
        let received = loop {
            match cuts.recv().await {
                Some(Ok(Cut::Chunks(chunks, held))) => {
                    self.size += chunks.iter().map(|(_, c)| c.len() as u64).sum::<u64>();
                    self.pack_chunks(chunks).await?;
                    drop(held);
                }
                Some(Ok(Cut::End(received))) => break received,
                Some(Err(error)) => return Err(error),
                None => return Err(Error::internal("the receiving stage of an upload stopped")),
            }
        };
        if !self.pack.is_empty() {
            let ingest = &self.inner.settings.ingest;
            if self.pack.len() < ingest.shared_pack_below_bytes.min(ingest.pack_target_bytes / 2) {
                self.place_in_shared_pack().await?;
            } else {
                self.seal_pack().await?;
            }
        }
        while let Some(write) = self.writes.join_next().await {
            write.map_err(|e| Error::internal(format!("pack write task failed: {e}")))??;
        }

        let Received {
            size,
            digest,
            shape,
            head,
            finish,
        } = received;
        self.expectations
            .check(size, &digest, "expected_size", "expected_blake3")?;
        if let Some(finish) = &finish {
            finish.check(size, &digest, "finish.size", "finish.blake3")?;
        }
        let content_type = content_type::guess(name, &head);
        let extracted = crate::compute::run(move || extract(content_type, &head, shape))
            .await
            .map_err(|e| Error::internal(format!("extraction task failed: {e}")))?;
        metrics::counter!(crate::telemetry::names::INGESTED_BYTES_TOTAL).increment(size);
        metrics::counter!(crate::telemetry::names::STORED_BYTES_TOTAL).increment(self.new_stored_size);
        if !self.new_chunks.all_sealed() {
            return Err(Error::internal(
                "an upload ended with chunks in no sealed pack; nothing was committed",
            ));
        }
        let manifest = std::mem::replace(
            &mut self.manifest,
            ManifestWriter::new(self.inner.settings.ingest.spill_path()),
        )
        .finish();
        if manifest.spilled() || self.new_chunks.spilled() {
            metrics::counter!(crate::telemetry::names::UPLOADS_SPILLED_TOTAL).increment(1);
        }
        let mut reused_chunks = std::mem::take(&mut self.reused_chunks);
        reused_chunks.sort_unstable();
        reused_chunks.dedup();
        Ok(IngestedContent {
            upload_id: self.upload_id.clone(),
            size,
            stored_size: self.stored_size,
            new_stored_size: self.new_stored_size,
            dedup_saved_bytes: size.saturating_sub(self.new_raw_size),
            delta_saved_bytes: self.delta_saved_bytes,
            blake3: digest.to_hex().to_string(),
            manifest,
            new_chunks: std::mem::replace(
                &mut self.new_chunks,
                NewChunks::new(self.inner.settings.ingest.spill_path()),
            ),
            reused_chunks,
            packs: std::mem::take(&mut self.packs),
            content_type: content_type.to_owned(),
            extracted,
        })
    }

    /// Looks a batch of chunks up in the chunk index and packs the ones nobody has yet.
    async fn pack_chunks(&mut self, pending: Vec<(ChunkId, Bytes)>) -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let mut unplaced: Vec<ChunkId> = Vec::new();
        for (id, _) in &pending {
            if self.new_chunks.find(id).map_err(spill_error)?.is_none() {
                unplaced.push(*id);
            }
        }
        let known = if unplaced.is_empty() {
            HashMap::new()
        } else {
            self.inner.catalog.known_chunks(&self.tenant, &unplaced).await?
        };

        let mut to_encode = Vec::new();
        for (id, chunk) in &pending {
            self.manifest
                .push(ManifestEntry {
                    chunk_id: *id,
                    raw_len: chunk.len() as u32,
                })
                .map_err(spill_error)?;
            let candidate = self
                .alignment
                .as_mut()
                .and_then(|alignment| alignment.next(id, chunk.len() as u32));
            if known.contains_key(id) {
                self.reused_chunks.push(*id);
                continue;
            }
            if self.new_chunks.find(id).map_err(spill_error)?.is_some() {
                continue;
            }
            // Placed now so a repeat later in this batch dedups against it; its stored form
            // is set once the chunk is encoded.
            let at = self
                .new_chunks
                .place(*id, chunk.len() as u32)
                .map_err(spill_error)?;
            to_encode.push(ToEncode {
                at,
                id: *id,
                chunk: chunk.clone(),
                sketch: None,
                candidates: [candidate, None, None],
                try_delta: false,
            });
        }
        let deltas_on = self.inner.settings.ingest.delta_max_depth > 0;
        // Content that does not compress gets no sketch: it makes no delta base either.
        if deltas_on && !self.compressibility.giving_up() && !to_encode.is_empty() {
            let key = self.key.clone();
            to_encode = crate::compute::run_in_parts(to_encode, MIN_ENCODE_PART, move |mut part| {
                for item in &mut part {
                    item.sketch = resemblance::sketch(&key, &item.chunk);
                }
                part
            })
            .await
            .map_err(|e| Error::internal(format!("sketching task failed: {e}")))?
            .into_iter()
            .flatten()
            .collect();
        }
        // Which chunks try a delta is decided before their bases are read: content unlike
        // anything stored (new random data, a rewritten file) stops reading bases after a
        // few misses, instead of reading the whole previous version to find nothing.
        let mut delta_trials = self.delta_trials;
        for item in &mut to_encode {
            let may_have_base = item.candidates[0].is_some() || item.sketch.is_some();
            item.try_delta = may_have_base && delta_trials.worth_trying();
            if !item.try_delta {
                item.candidates = [None; 3];
            }
        }
        self.find_similar(&mut to_encode).await;
        // The bases' memory is held until their chunks are encoded.
        let (bases, _bases_held) = self.delta_bases(&to_encode).await;
        let level = self.inner.settings.ingest.zstd_level;
        let compressibility = self.compressibility;
        let bases = Arc::new(bases);
        // The batch's parts are encoded side by side (one upload of documents is mostly
        // compression and delta encoding, which would otherwise keep one core busy while
        // the others idle), each from the decisions' state before the batch; the state
        // after is what the parts' tries would have left one after the other.
        let parts = crate::compute::run_in_parts(to_encode, MIN_ENCODE_PART, move |part| {
            encode_part(part, &bases, level, compressibility, delta_trials)
        })
        .await
        .map_err(|e| Error::internal(format!("compression task failed: {e}")))?;
        if let Some(last) = parts.last() {
            self.compressibility = compressibility.after_runs(
                parts
                    .iter()
                    .flat_map(|part| part.compression_tries.iter().copied()),
                last.compressibility,
            );
            self.delta_trials = delta_trials.after_runs(
                parts.iter().flat_map(|part| part.delta_tries.iter().copied()),
                last.delta_trials,
            );
        }
        let encoded: Vec<Encoded> = parts.into_iter().flat_map(|part| part.encoded).collect();
        for chunk in &encoded {
            self.new_chunks
                .set_encoded(chunk.at, chunk.codec, chunk.stored.len() as u32, chunk.delta);
            if let Some(sketch) = chunk.sketch {
                self.new_chunks.set_sketch(chunk.at, sketch);
            }
            self.new_raw_size += u64::from(chunk.raw_len);
            self.delta_saved_bytes += chunk.saved;
            if chunk.delta.is_some() {
                metrics::counter!(crate::telemetry::names::DELTA_CHUNKS_TOTAL).increment(1);
                metrics::counter!(crate::telemetry::names::DELTA_SAVED_BYTES_TOTAL).increment(chunk.saved);
            }
        }
        if self.reused_chunks.len() >= self.reused_dedup_at {
            self.reused_chunks.sort_unstable();
            self.reused_chunks.dedup();
            self.reused_dedup_at = (self.reused_chunks.len() * 2).max(1024);
        }
        for (id, _) in &pending {
            self.stored_size += match self.new_chunks.find(id).map_err(spill_error)? {
                Some(at) => self.new_chunks.stored_len(at).map_err(spill_error)?,
                None => known.get(id).copied().unwrap_or(0),
            };
        }
        for chunk in encoded {
            self.reserve_for(chunk.stored.len()).await?;
            self.pack.add(
                chunk.id,
                chunk.codec,
                chunk.raw_len,
                &chunk.stored,
                chunk.delta.map(|(base, _)| base),
            );
            self.new_stored_size += chunk.stored.len() as u64;
            if self.pack.len() >= self.inner.settings.ingest.pack_target_bytes {
                self.seal_pack().await?;
            }
        }
        Ok(())
    }

    /// Gives each chunk that tries a delta the two stored chunks most like it as further
    /// candidates: those sharing the most features, among equals those whose chains may
    /// still grow, the deepest first (the most recent edit of a chain). Sharing a feature
    /// only proposes a base: the delta is encoded and kept when it pays. A lookup that
    /// fails costs only these candidates.
    async fn find_similar(&self, to_encode: &mut [ToEncode]) {
        let sketches: Vec<Sketch> = to_encode
            .iter()
            .filter(|item| item.try_delta)
            .filter_map(|item| item.sketch)
            .collect();
        if sketches.is_empty() {
            return;
        }
        let similar = match self.inner.catalog.similar_chunks(&self.tenant, &sketches).await {
            Ok(similar) => similar,
            Err(error) => {
                tracing::warn!(upload_id = %self.upload_id, %error, "similar chunks could not be looked up; this part of the upload tries fewer delta bases");
                return;
            }
        };
        let mut by_feature: HashMap<(usize, i64), Vec<usize>> = HashMap::new();
        for (at, chunk) in similar.iter().enumerate() {
            for (slot, feature) in chunk.sketch.0.iter().enumerate() {
                by_feature.entry((slot, *feature)).or_default().push(at);
            }
        }
        let max_depth = self.inner.settings.ingest.delta_max_depth;
        for item in to_encode.iter_mut().filter(|item| item.try_delta) {
            let Some(sketch) = item.sketch else { continue };
            let mut shared: HashMap<usize, usize> = HashMap::new();
            for (slot, feature) in sketch.0.iter().enumerate() {
                for &at in by_feature.get(&(slot, *feature)).into_iter().flatten() {
                    *shared.entry(at).or_default() += 1;
                }
            }
            let mut ranked: Vec<(usize, usize)> = shared.into_iter().collect();
            ranked.sort_unstable_by_key(|&(at, count)| {
                let depth = similar[at].depth;
                std::cmp::Reverse((count, depth < max_depth, depth, std::cmp::Reverse(at)))
            });
            let position = item.candidates[0];
            let mut more = ranked
                .into_iter()
                .map(|(at, _)| similar[at].chunk_id)
                .filter(|id| Some(*id) != position);
            item.candidates[1] = more.next();
            item.candidates[2] = more.next();
        }
    }

    /// The bases the chunks to encode may be stored as deltas against, by the candidate
    /// each was aligned with: the candidate itself, or, when the candidate's own chain is
    /// as deep as allowed, the candidate's base (so chains never grow past
    /// `ingest.delta_max_depth`, and later versions keep finding a base close to them).
    /// Each with the depth a delta against it has, and its plain content; with the delta
    /// base memory that content holds. A base that cannot be read now (or not within the
    /// wait for that memory) costs only the delta: the chunk is stored on its own.
    async fn delta_bases(&self, to_encode: &[ToEncode]) -> (HashMap<ChunkId, Base>, Reservation) {
        let mut candidates: Vec<ChunkId> = to_encode
            .iter()
            .flat_map(|item| item.candidates.iter().flatten().copied())
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        if candidates.is_empty() {
            return (HashMap::new(), Reservation::none());
        }
        let max_depth = self.inner.settings.ingest.delta_max_depth;
        let found = async {
            let locations = self
                .inner
                .catalog
                .chunk_locations(&self.tenant, &candidates)
                .await?;
            let mut chosen: HashMap<ChunkId, (ChunkId, u8, bool)> = HashMap::new();
            for (candidate, location) in &locations {
                let base = if location.depth < max_depth {
                    Some((*candidate, location.depth + 1, false))
                } else {
                    location
                        .base
                        .filter(|_| location.depth.saturating_sub(1) < max_depth)
                        .map(|base| (base, location.depth, true))
                };
                if let Some(base) = base {
                    chosen.insert(*candidate, base);
                }
            }
            let ids: Vec<ChunkId> = chosen.values().map(|(base, ..)| *base).collect();
            let plain = super::download::plain_chunks(
                self.inner.clone(),
                Arc::from(self.tenant.as_str()),
                self.key.clone(),
                ids,
                self.inner.cache.admission_for_bases(),
                0,
            )
            .await?;
            let (plain, held) = plain.into_parts();
            let bases = chosen
                .into_iter()
                .filter_map(|(candidate, (id, depth, past_the_chain))| {
                    let plain = plain.get(&id)?.clone();
                    Some((
                        candidate,
                        Base {
                            id,
                            depth,
                            past_the_chain,
                            plain,
                        },
                    ))
                })
                .collect();
            Ok::<_, Error>((bases, held))
        };
        match found.await {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(upload_id = %self.upload_id, %error, "the delta bases could not be read; this part of the upload is stored without deltas");
                (HashMap::new(), Reservation::none())
            }
        }
    }

    /// Makes sure the pack being filled has budget for `more` bytes. When the budget is
    /// short and the pack holds something, the pack is sealed and written early (that frees
    /// memory without help from any other stream); only an empty pack waits.
    async fn reserve_for(&mut self, more: usize) -> Result<()> {
        loop {
            // What the pack's buffer will hold: the chunk, the trailer entry and (sealed) the
            // tag of every chunk, and the room reserved for the whole pack once it is large.
            let ingest = &self.inner.settings.ingest;
            let chunker = ingest.chunker();
            // (and the name of a delta chunk's base)
            let per_chunk = crate::ingest::pack::TRAILER_ENTRY_LEN + crate::ingest::sealing::TAG_LEN + 32;
            let filled = self.pack.len() + more + per_chunk * (self.pack.entry_count() + 1);
            // A pack past 1 MiB belongs to a large upload: its whole buffer (the target, a
            // last chunk, the trailer) is reserved, then allocated at once rather than
            // copied on every doubling. A small one grows by doubling, counted as such.
            let large = self.pack.len() >= 1024 * 1024;
            let whole = ingest.pack_target_bytes
                + chunker.max_size
                + per_chunk * (ingest.pack_target_bytes / chunker.min_size.max(1) + 1);
            let capacity = self.pack.capacity();
            let needed = if large {
                whole.max(filled)
            } else if filled > capacity {
                filled.max(2 * capacity)
            } else {
                capacity
            };
            let held = self.pack_reservation.bytes();
            if held >= needed {
                if large {
                    self.pack.reserve_total_from(whole, &self.inner.buffers);
                }
                return Ok(());
            }
            // Large packs take memory in big steps (fewer waits on the budget); a small one
            // only what it needs, so many small uploads at once fit in the budget.
            let step = (needed - held).max(PACK_RESERVATION_STEP.min(needed));
            if let Some(more) = self.inner.budget.try_reserve(step) {
                self.pack_reservation.merge(more);
            } else if !self.pack.is_empty() {
                self.seal_pack().await?;
            } else {
                let more = self.inner.budget.reserve(step).await?;
                self.pack_reservation.merge(more);
            }
        }
    }

    /// Hands the chunks of the pack being filled to a pack shared with other uploads, and
    /// waits until that pack is durable and staged (see [`super::shared_packs`]).
    async fn place_in_shared_pack(&mut self) -> Result<()> {
        let builder = std::mem::take(&mut self.pack);
        let reservation = std::mem::take(&mut self.pack_reservation);
        let placement =
            super::shared_packs::SharedPacks::place(&self.inner, &self.tenant, builder, reservation).await?;
        self.new_chunks
            .seal(Arc::from(placement.pack.pack_id.as_str()), &placement.entries)
            .map_err(spill_error)?;
        self.packs.push(placement.pack);
        Ok(())
    }

    /// Seals the current pack, records it as staged, and writes it in the background,
    /// waiting first when too many writes are in flight.
    async fn seal_pack(&mut self) -> Result<()> {
        let sealing = match &self.sealing {
            Some(sealing) => sealing.clone(),
            None => {
                let sealing = self
                    .inner
                    .keys
                    .sealing_key(&self.inner.catalog, &self.tenant)
                    .await?;
                self.sealing = Some(sealing.clone());
                sealing
            }
        };
        let builder = std::mem::take(&mut self.pack);
        // The pack's memory stays reserved until its write is done.
        let reservation = std::mem::take(&mut self.pack_reservation);
        let (sealed, generation) =
            seal_and_stage(&self.inner, &self.tenant, builder, sealing, &self.upload_id).await?;
        let pack_id = sealed.id.to_hex();
        self.new_chunks
            .seal(Arc::from(pack_id.as_str()), &sealed.entries)
            .map_err(spill_error)?;
        self.packs
            .push(crate::catalog::StagedPack { pack_id, generation });
        while self.writes.len() >= self.inner.settings.ingest.max_packs_in_flight {
            if let Some(write) = self.writes.join_next().await {
                write.map_err(|e| Error::internal(format!("pack write task failed: {e}")))??;
            }
        }
        let store = self.inner.store.clone();
        self.writes.spawn(async move {
            let _reservation = reservation;
            write_pack(&store, sealed.id, sealed.bytes).await
        });
        Ok(())
    }
}

/// Writes a sealed (and staged) pack to the store; a failure says whether to retry.
pub(super) async fn write_pack(
    store: &crate::storage::DynBlobStore,
    id: crate::ingest::PackId,
    bytes: Bytes,
) -> Result<()> {
    let key = id.object_key();
    let size = bytes.len();
    store.put(&key, bytes).await.map_err(|error| {
        let message = format!("writing pack {key} failed: {error}");
        if error.is_retryable() {
            Error::Unavailable(message)
        } else {
            Error::Internal(message)
        }
    })?;
    metrics::counter!(crate::telemetry::names::PACK_BYTES_WRITTEN_TOTAL).increment(size as u64);
    Ok(())
}

/// Finishes a pack (sealed under a new data key when the tenant's content is encrypted) and
/// records it as staged, before any byte of it is written: a pack on a store is always one
/// the catalog knows, so garbage collection can find it.
pub(super) async fn seal_and_stage(
    inner: &Inner,
    tenant: &str,
    builder: PackBuilder,
    sealing: Option<Arc<super::keys::SealingKey>>,
    upload_id: &str,
) -> Result<(crate::ingest::pack::SealedPack, i64)> {
    let data_key = sealing.as_ref().map(|_| DataKey::generate());
    let (sealed, data_key) = crate::compute::run(move || {
        let sealed = match &data_key {
            Some(key) => builder.seal_with(key),
            None => builder.seal(),
        };
        (sealed, data_key)
    })
    .await
    .map_err(|e| Error::internal(format!("pack sealing failed: {e}")))?;
    let pack_id = sealed.id.to_hex();
    let stage = PackStage {
        tenant,
        pack_id: &pack_id,
        size: sealed.bytes.len() as u64,
        upload_id,
        at: now_micros(),
    };
    let generation = match (sealing, &data_key) {
        (Some(sealing), Some(data_key)) => {
            inner
                .keys
                .stage_sealed(&inner.catalog, &stage, data_key, sealing)
                .await?
        }
        _ => match inner.catalog.stage_pack(&stage, None).await? {
            crate::catalog::Staged::Recorded { generation } => generation,
            crate::catalog::Staged::KeyRetired => {
                return Err(Error::internal("a plain pack was refused for a retired key"));
            }
        },
    };
    Ok((sealed, generation))
}

/// What a new chunk may be stored as a delta against.
struct Base {
    id: ChunkId,
    /// The depth a delta against it has.
    depth: u8,
    /// Whether it is an older chunk than the one the new chunk replaces, whose chain was as
    /// deep as allowed (see [`delta::pays`]).
    past_the_chain: bool,
    plain: Bytes,
}

/// One new chunk as it is stored.
struct Encoded {
    /// Its place in the upload's new chunks.
    at: usize,
    id: ChunkId,
    raw_len: u32,
    codec: Codec,
    stored: Bytes,
    /// A delta's base and depth.
    delta: Option<(ChunkId, u8)>,
    /// What the delta saved against the chunk's own encoding.
    saved: u64,
    /// Its resemblance sketch, when it is compressible and long enough to have one.
    sketch: Option<Sketch>,
}

/// A new chunk on its way to being encoded.
struct ToEncode {
    /// Its place in the upload's new chunks.
    at: usize,
    id: ChunkId,
    chunk: Bytes,
    sketch: Option<Sketch>,
    /// Chunks to try as its delta base: the previous version's chunk at the same place,
    /// and the two stored chunks most like it.
    candidates: [Option<ChunkId>; 3],
    /// Whether a delta is tried (see `Upload::delta_trials`).
    try_delta: bool,
}

/// A batch's chunks are encoded (and sketched) in parts of at least this many, one part per
/// compute thread: each part costs a compression context of its own.
const MIN_ENCODE_PART: usize = 16;

/// Part of a batch, encoded.
struct EncodedPart {
    encoded: Vec<Encoded>,
    /// Whether each compression tried compressed, in order.
    compression_tries: Vec<bool>,
    /// Whether each chunk that tried a delta found one that pays, in order.
    delta_tries: Vec<bool>,
    /// The decisions' state at the end of the part.
    compressibility: Compressibility,
    delta_trials: Compressibility,
}

/// Encodes chunks in order: compressed when that is worth trying, as a delta against the
/// best of their candidate bases when one pays.
fn encode_part(
    to_encode: Vec<ToEncode>,
    bases: &HashMap<ChunkId, Base>,
    level: i32,
    mut compressibility: Compressibility,
    mut delta_trials: Compressibility,
) -> EncodedPart {
    let mut compression_tries = Vec::new();
    let mut delta_tries = Vec::new();
    // Made at the first delta tried (most parts of most uploads try none); `Some(None)`
    // when zstd could not make one.
    let mut deltas: Option<Option<delta::Encoder>> = None;
    let encoded = to_encode
        .into_iter()
        .map(
            |ToEncode {
                 at,
                 id,
                 chunk,
                 sketch,
                 candidates,
                 ..
             }| {
                let (codec, stored) = if compressibility.worth_trying() {
                    let (codec, stored) = encode(&chunk, level);
                    compressibility.record(codec == Codec::Zstd);
                    compression_tries.push(codec == Codec::Zstd);
                    (codec, stored)
                } else {
                    (Codec::Raw, chunk.clone())
                };
                // Incompressible content is no use as a base later.
                let sketch = sketch.filter(|_| codec == Codec::Zstd);
                // The smallest delta against the candidates whose bases could be had (a
                // chunk whose bases could not be read says nothing about the content:
                // neither a hit nor a miss is recorded).
                let mut tried = false;
                let mut best: Option<(Vec<u8>, &Base)> = None;
                for base in candidates.iter().flatten().filter_map(|c| bases.get(c)) {
                    tried = true;
                    let delta = deltas
                        .get_or_insert_with(delta::Encoder::new)
                        .as_mut()
                        .and_then(|deltas| deltas.encode(&chunk, &base.plain, level.max(delta::MIN_LEVEL)))
                        .filter(|d| delta::pays(d.len(), stored.len(), base.past_the_chain));
                    if let Some(delta) = delta
                        && best
                            .as_ref()
                            .is_none_or(|(smallest, _)| delta.len() < smallest.len())
                    {
                        best = Some((delta, base));
                    }
                    if best
                        .as_ref()
                        .is_some_and(|(smallest, _)| delta::good_enough(smallest.len(), chunk.len()))
                    {
                        break;
                    }
                }
                if tried {
                    delta_trials.record(best.is_some());
                    delta_tries.push(best.is_some());
                }
                if let Some((delta, base)) = best {
                    let saved = (stored.len() - delta.len()) as u64;
                    return Encoded {
                        at,
                        id,
                        raw_len: chunk.len() as u32,
                        codec: Codec::ZstdDelta,
                        stored: Bytes::from(delta),
                        delta: Some((base.id, base.depth)),
                        saved,
                        sketch,
                    };
                }
                Encoded {
                    at,
                    id,
                    raw_len: chunk.len() as u32,
                    codec,
                    stored,
                    delta: None,
                    saved: 0,
                    sketch,
                }
            },
        )
        .collect::<Vec<_>>();
    EncodedPart {
        encoded,
        compression_tries,
        delta_tries,
        compressibility,
        delta_trials,
    }
}

/// Moves a content stream into a channel, stopping at the first error or when the
/// consumer has gone away.
/// Takes the upload's messages as the receiving stage makes room for them, each data
/// message once the received budget has its bytes: until then the next message is not
/// taken, and the client waits on flow control.
async fn forward<S>(
    mut content: S,
    budget: super::budget::MemoryBudget,
    sender: tokio::sync::mpsc::Sender<Result<(UploadPart, Reservation)>>,
) where
    S: Stream<Item = Result<UploadPart>> + Send + Unpin,
{
    while let Some(item) = content.next().await {
        let item = match item {
            Ok(UploadPart::Data(data)) => match budget.reserve(data.len()).await {
                Ok(held) => Ok((UploadPart::Data(data), held)),
                Err(error) => Err(error),
            },
            Ok(part) => Ok((part, Reservation::none())),
            Err(error) => Err(error),
        };
        let stop = item.is_err();
        if sender.send(item).await.is_err() || stop {
            return;
        }
    }
}

/// Explains a promised blake3 (`field`) that is not a digest.
pub fn parse_expected_blake3(field: &'static str, value: &str) -> Result<Option<blake3::Hash>> {
    if value.is_empty() {
        return Ok(None);
    }
    blake3::Hash::from_hex(value).map(Some).map_err(|_| {
        Error::invalid(
            field,
            format!("{} is not a 64-digit hex blake3 digest", quoted(value)),
        )
    })
}

/// An upload's spill file failed: the upload cannot go on, but nothing is lost.
fn spill_error(error: std::io::Error) -> Error {
    let message = format!("the upload could not keep its chunk list ({error}); nothing was committed");
    if error.kind() == std::io::ErrorKind::StorageFull {
        Error::ResourceExhausted(format!("{message}: ingest.spill_dir is full"))
    } else {
        Error::Unavailable(format!("{message}; retry the upload"))
    }
}
