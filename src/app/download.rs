//! Reading a version back: manifest → chunk locations → ranged reads coalesced per pack,
//! fetched ahead of the client with bounded concurrency, every chunk verified against its
//! keyed hash before a byte of it is sent. Chunks of sealed packs are opened with their
//! pack's data key first.
//!
//! Memory is bounded whatever the artifact's size: the plan is made a window of chunks at a
//! time, at most `read_ahead_spans` spans are in flight, and what a span reads leaves as
//! the messages' bytes without another copy: chunks stored as they are straight from the
//! read, the others from the one buffer they decode into. Messages are sized for
//! the transport ([`MESSAGE_MIN`]..=[`MESSAGE_MAX`]), not for the chunks: a stream of 16 KiB
//! messages spends its time on per-message overhead in every client.

use super::Inner;
use super::budget::Reservation;
use super::delivery::Admission;
use crate::catalog::{ChunkLocation, ManifestReader};
use crate::domain::{Error, Result};
use crate::ingest::chunk::Codec;
use crate::ingest::sealing::DataKey;
use crate::ingest::{ChunkId, Manifest, PackId, TenantKey};
use crate::storage::{Decoder, GetOptions, StoreError};
use bytes::{Bytes, BytesMut};
use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;

/// Chunks planned per catalog round trip. A window's locations are all a download holds of
/// the chunk index at a time (about 2,048 × 150 bytes), so planning memory does not grow
/// with the artifact.
pub(super) const PLAN_WINDOW_CHUNKS: usize = 2048;
/// Download messages carry at least this many bytes (except the last), copying small
/// pieces together…
pub const MESSAGE_MIN: usize = 124 * 1024;
/// …and at most this many, slicing large ones without copying. tonic encodes every sent
/// message into a buffer of its own: kept under the allocator's 256 KiB mmap threshold
/// (`src/main.rs`), that buffer almost always comes from the heap and its memory is used
/// again, where a larger one is mapped, faulted in page by page and unmapped for every
/// message (tonic may still double a buffer it holds alone past the threshold when a
/// message outgrows the one before).
pub const MESSAGE_MAX: usize = 248 * 1024;

/// One chunk's part in a read: where it sits in the span's bytes and which of its decoded
/// bytes the client asked for.
#[derive(Debug, Clone)]
pub(super) struct ChunkSlice {
    chunk_id: ChunkId,
    location: ChunkLocation,
    /// The key of the chunk's pack when the pack is sealed.
    data_key: Option<Arc<DataKey>>,
    wanted: Range<usize>,
}

/// One ranged GET on a pack covering chunks that follow each other both in the content and
/// in the pack, so that their decoded bytes are one contiguous piece of the content.
#[derive(Debug, Clone)]
pub(super) struct ReadSpan {
    pack_key: String,
    range: Range<u64>,
    chunks: Vec<ChunkSlice>,
}

impl ChunkSlice {
    /// Whether the chunk's stored bytes are its content: raw, and not sealed.
    fn stored_as_is(&self) -> bool {
        self.data_key.is_none()
            && self.location.codec == Codec::Raw
            && self.location.stored_len == self.location.raw_len
    }
}

impl ReadSpan {
    fn raw_len(&self) -> usize {
        self.chunks.iter().map(|c| c.location.raw_len as usize).sum()
    }

    /// The bytes the span decodes into a buffer of its own: those of the chunks not stored
    /// as they are (those are sent from the read itself).
    fn decoded_len(&self) -> usize {
        self.chunks
            .iter()
            .filter(|c| !c.stored_as_is())
            .map(|c| c.location.raw_len as usize)
            .sum()
    }
}

/// The chunks of `range` in manifest order, a window at a time. The manifest is read a
/// part at a time as the windows need it.
struct Windows {
    reader: ManifestReader,
    part: Option<Manifest>,
    /// The next entry of `part`.
    in_part: usize,
    range: Range<u64>,
    position: u64,
}

impl Windows {
    /// Windows over `range` of the content, read by `reader`, whose first entry begins at
    /// byte `position` (at or before `range.start`).
    fn new(reader: ManifestReader, position: u64, range: Range<u64>) -> Self {
        Self {
            reader,
            part: None,
            in_part: 0,
            range,
            position,
        }
    }

    async fn next_window(&mut self) -> Result<Option<Vec<(ChunkId, Range<usize>)>>> {
        let mut window = Vec::new();
        while window.len() < PLAN_WINDOW_CHUNKS && self.position < self.range.end {
            let Some(entry) = self.part.as_ref().and_then(|part| part.get(self.in_part)) else {
                match self.reader.next_part().await? {
                    Some(part) => {
                        self.part = Some(part);
                        self.in_part = 0;
                        continue;
                    }
                    None => break,
                }
            };
            self.in_part += 1;
            let chunk = self.position..self.position + u64::from(entry.raw_len);
            self.position = chunk.end;
            if chunk.end <= self.range.start {
                continue;
            }
            let start = self.range.start.max(chunk.start) - chunk.start;
            let end = self.range.end.min(chunk.end) - chunk.start;
            window.push((entry.chunk_id, start as usize..end as usize));
        }
        Ok((!window.is_empty()).then_some(window))
    }
}

/// Streams `range` of the content described by `manifest` (whose first entry begins at
/// byte `position`): the first window is planned before this returns (so a missing chunk or
/// a destroyed key is an error before any byte), later ones while earlier spans are being
/// sent.
pub(super) async fn stream(
    inner: Arc<Inner>,
    tenant: String,
    key: TenantKey,
    (manifest, position): (ManifestReader, u64),
    range: Range<u64>,
) -> Result<impl Stream<Item = Result<Bytes>> + Send + 'static> {
    let admission = inner.cache.admission(range.end - range.start);
    let tenant_name: Arc<str> = Arc::from(tenant.as_str());
    let mut windows = Windows::new(manifest, position, range);
    let first = match windows.next_window().await? {
        Some(window) => plan(&inner, &tenant, window).await?,
        None => Vec::new(),
    };
    let rest = futures::stream::try_unfold(
        (inner.clone(), tenant, windows),
        |(inner, tenant, mut windows)| async move {
            let Some(window) = windows.next_window().await? else {
                return Ok(None);
            };
            let spans = plan(&inner, &tenant, window).await?;
            Ok(Some((spans, (inner, tenant, windows))))
        },
    );
    let read_ahead = inner.settings.ingest.read_ahead_spans.max(1);
    let stalled_after = std::time::Duration::from_secs(inner.settings.ingest.stalled_download_seconds);
    let budget = inner.budget.clone();
    let pieces = futures::stream::once(futures::future::ready(Ok(first)))
        .chain(rest)
        .map_ok(|spans| futures::stream::iter(spans.into_iter().map(Ok)))
        .try_flatten()
        // Each span's memory (what is read and what it decodes to) is reserved in order
        // before it is fetched, and given back once the client has taken its bytes.
        .and_then(move |span: ReadSpan| {
            let budget = budget.clone();
            async move {
                let cost = (span.range.end - span.range.start) as usize + span.decoded_len();
                Ok((span, budget.reserve(cost).await?))
            }
        })
        .map(move |span| match span {
            Ok((span, reservation)) => {
                // A task of its own: the read goes on while nothing polls this stream (the
                // client's flow-control window full, or the previous message being sent),
                // and is cancelled with the download.
                let read = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(fetch_span(
                    inner.clone(),
                    tenant_name.clone(),
                    key.clone(),
                    span,
                    admission,
                    0,
                )));
                async move {
                    let pieces = read
                        .await
                        .map_err(|e| Error::internal(format!("reading a span failed: {e}")))??;
                    Ok((pieces, reservation))
                }
                .boxed()
            }
            Err(error) => futures::future::ready(Err(error)).boxed(),
        })
        .buffered(read_ahead)
        .map_ok(|(pieces, reservation)| {
            futures::stream::iter(pieces.into_iter().map(Ok)).map(move |piece| {
                let _held_until_sent = &reservation;
                piece
            })
        })
        .try_flatten();
    Ok(end_when_stalled(
        coalesce(pieces, MESSAGE_MIN, MESSAGE_MAX),
        stalled_after,
    ))
}

/// A download between its reader and its content: what `end_when_stalled` can take away.
struct Reading<S> {
    content: Option<std::pin::Pin<Box<S>>>,
    /// When the last piece was handed over, while the reader has not asked for the next.
    handed_at: Option<std::time::Instant>,
    /// Whether the reader has been told its download was ended.
    told: bool,
}

/// Ends a download whose reader stopped taking its bytes. A reader that takes nothing for
/// `limit` after a piece was handed over (its connection's flow-control window full, so
/// nothing asks for more) would otherwise keep the download's read-ahead reserved from the
/// memory budget for as long as it keeps the stream open: a few such readers, or links
/// fetched and never read, would make every other transfer wait. The content is dropped
/// (its reservations go back at once) and the reader, should it come back, gets
/// UNAVAILABLE rather than a stream that ends as if complete. Time spent waiting for the
/// budget or the store is not the reader's, and does not count.
fn end_when_stalled<S>(
    content: S,
    limit: std::time::Duration,
) -> impl Stream<Item = Result<Bytes>> + Send + 'static
where
    S: Stream<Item = Result<Bytes>> + Send + 'static,
{
    let reading = Arc::new(std::sync::Mutex::new(Reading {
        content: Some(Box::pin(content)),
        handed_at: None,
        told: false,
    }));
    let watched = Arc::downgrade(&reading);
    tokio::spawn(async move {
        let mut wait = limit;
        loop {
            tokio::time::sleep(wait).await;
            let Some(reading) = watched.upgrade() else {
                return;
            };
            let mut reading = reading.lock().expect("download lock");
            if reading.content.is_none() {
                return;
            }
            match reading.handed_at.map(|at| at.elapsed()) {
                Some(idle) if idle >= limit => {
                    reading.content = None;
                    metrics::counter!(crate::telemetry::names::DOWNLOADS_STALLED_TOTAL).increment(1);
                    tracing::info!(
                        seconds = limit.as_secs(),
                        "a download's reader took nothing for too long; the download was ended and its memory given back"
                    );
                    return;
                }
                Some(idle) => wait = limit - idle,
                None => wait = limit,
            }
        }
    });
    futures::stream::poll_fn(move |context| {
        let mut reading = reading.lock().expect("download lock");
        reading.handed_at = None;
        let Some(content) = reading.content.as_mut() else {
            if reading.told {
                return std::task::Poll::Ready(None);
            }
            reading.told = true;
            return std::task::Poll::Ready(Some(Err(Error::Unavailable(format!(
                "the download was ended because its reader took nothing for {} s (ingest.stalled_download_seconds); download again, from an offset to resume",
                limit.as_secs()
            )))));
        };
        let polled = content.as_mut().poll_next(context);
        match &polled {
            std::task::Poll::Ready(Some(_)) => reading.handed_at = Some(std::time::Instant::now()),
            std::task::Poll::Ready(None) => reading.content = None,
            std::task::Poll::Pending => {}
        }
        if matches!(polled, std::task::Poll::Ready(None)) {
            reading.told = true;
        }
        polled
    })
}

/// Plans the reads of one window of chunks.
async fn plan(inner: &Inner, tenant: &str, needed: Vec<(ChunkId, Range<usize>)>) -> Result<Vec<ReadSpan>> {
    let mut ids: Vec<ChunkId> = needed.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    let locations = inner.catalog.chunk_locations(tenant, &ids).await?;
    explain_missing(inner, tenant, &ids, &locations).await?;
    plan_at(
        inner,
        tenant,
        needed,
        &locations,
        inner.settings.ingest.max_read_span_bytes,
    )
    .await
}

/// Plans the reads of `needed` at known `locations`, coalescing chunks that follow each
/// other in a pack up to `max_span` bytes.
async fn plan_at(
    inner: &Inner,
    tenant: &str,
    needed: Vec<(ChunkId, Range<usize>)>,
    locations: &HashMap<ChunkId, ChunkLocation>,
    max_span: u64,
) -> Result<Vec<ReadSpan>> {
    let data_keys = inner
        .keys
        .data_keys(&inner.catalog, tenant, locations.values())
        .await?;

    let mut spans: Vec<ReadSpan> = Vec::new();
    for (chunk_id, wanted) in needed {
        let location = locations.get(&chunk_id).cloned().ok_or_else(|| {
            Error::DataLoss(format!(
                "the chunk index has no entry for chunk {}",
                chunk_id.to_hex()
            ))
        })?;
        let start = location.offset;
        let end = start + u64::from(location.stored_len);
        let pack_key = PackId::from_hex(&location.pack_id)
            .ok_or_else(|| {
                Error::DataLoss(format!(
                    "pack id {:?} in the chunk index is malformed",
                    location.pack_id
                ))
            })?
            .object_key();
        let data_key = match &location.key {
            Some(_) => Some(data_keys.get(&location.pack_id).cloned().ok_or_else(|| {
                Error::internal(format!("no data key opened for pack {}", location.pack_id))
            })?),
            None => None,
        };
        // A whole chunk may be asked for without knowing its length (a delta's base).
        let raw_len = location.raw_len as usize;
        let wanted = wanted.start.min(raw_len)..wanted.end.min(raw_len);
        let slice = ChunkSlice {
            chunk_id,
            location,
            data_key,
            wanted,
        };
        // Coalesce with the previous read when the chunk follows it directly in the same pack,
        // while both what is read and what it decodes to stay within the span limit (the
        // span's memory is reserved from the budget).
        if let Some(last) = spans.last_mut()
            && last.pack_key == pack_key
            && last.range.end == start
            && end - last.range.start <= max_span
            && (last.raw_len() + slice.location.raw_len as usize) as u64 <= max_span
        {
            last.range.end = end;
            last.chunks.push(slice);
            continue;
        }
        spans.push(ReadSpan {
            pack_key,
            range: start..end,
            chunks: vec![slice],
        });
    }
    Ok(spans)
}

/// Chunks missing from the index: forgotten when the tenant's key was destroyed (the
/// content is gone on purpose), otherwise lost.
async fn explain_missing(
    inner: &Inner,
    tenant: &str,
    ids: &[ChunkId],
    locations: &std::collections::HashMap<ChunkId, ChunkLocation>,
) -> Result<()> {
    let Some(missing) = ids.iter().find(|id| !locations.contains_key(id)) else {
        return Ok(());
    };
    let destroyed = inner
        .catalog
        .tenant_keys(tenant)
        .await?
        .into_iter()
        .filter(|key| key.state == crate::domain::encryption::TenantKeyState::Destroyed)
        .filter_map(|key| key.retired_at)
        .max();
    Err(match destroyed {
        Some(at) => Error::FailedPrecondition(format!(
            "this content was encrypted under tenant {tenant:?}'s key, destroyed at {}; it cannot be read",
            at.to_rfc3339()
        )),
        None => Error::DataLoss(format!(
            "the chunk index has no entry for chunk {}",
            missing.to_hex()
        )),
    })
}

/// Reads of a chain's chunks in flight at once.
const CHAIN_READS: usize = 8;

/// The plain content of chunks (the bases of delta chunks), each verified: from the chunk
/// cache, else read and decoded (and so cached for the next delta against them).
///
/// A chain's locations come from one catalog query, and every chunk of it that the cache
/// lacks is read at once ([`CHAIN_READS`] in flight), then decoded from its root up: the
/// extra reads of a delta are at most its depth, but they wait for one another only in
/// the decoding, not in their round trips. A chunk whose stored copy does not decode or
/// verify is read again through the store's checked read (so a failover pair serves its
/// other copy). `depth` counts the chains already followed to get here: a chain longer than
/// any upload writes is refused as damage rather than followed.
///
/// What is read holds memory from the delta base budget (`ingest.delta_base_memory_bytes`)
/// until the returned chunks are dropped: a first read waits for it (nothing it waits on
/// waits for anything but store reads); a read of damaged bases' other copies (`depth` > 0)
/// takes what is free and goes on without the rest rather than wait inside a reservation.
pub(super) fn plain_chunks(
    inner: Arc<Inner>,
    tenant: Arc<str>,
    key: TenantKey,
    ids: Vec<ChunkId>,
    admission: Admission,
    depth: u8,
) -> futures::future::BoxFuture<'static, Result<PlainChunks>> {
    async move {
        let mut found: HashMap<ChunkId, Bytes> = HashMap::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in ids {
            match inner.cache.get(&id) {
                Some(plain) => {
                    found.insert(id, plain);
                }
                None => missing.push(id),
            }
        }
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return Ok(PlainChunks::cached(found));
        }
        if depth > crate::ingest::delta::MAX_CHAIN {
            return Err(Error::DataLoss(format!(
                "chunk {} decodes through more than {} bases; the chunk index is damaged",
                missing[0].to_hex(),
                crate::ingest::delta::MAX_CHAIN
            )));
        }
        let mut chain_ids = missing.clone();
        chain_ids.extend(inner.catalog.chain_of(&tenant, &missing).await?);
        chain_ids.sort_unstable();
        chain_ids.dedup();
        let locations = inner.catalog.chunk_locations(&tenant, &chain_ids).await?;
        explain_missing(&inner, &tenant, &missing, &locations).await?;
        // What has to be read: the missing chunks and, down each chain, every base up to one
        // the cache holds.
        let mut needed: Vec<(u8, ChunkId)> = Vec::new();
        let mut seen: std::collections::HashSet<ChunkId> = std::collections::HashSet::new();
        let mut pending = missing.clone();
        while let Some(id) = pending.pop() {
            if found.contains_key(&id) || !seen.insert(id) {
                continue;
            }
            if let Some(plain) = inner.cache.get(&id) {
                found.insert(id, plain);
                continue;
            }
            let location = locations.get(&id).ok_or_else(|| {
                Error::DataLoss(format!(
                    "chunk {} that a delta decodes against is not in the chunk index",
                    id.to_hex()
                ))
            })?;
            if needed.len() > missing.len() * (usize::from(crate::ingest::delta::MAX_CHAIN) + 1) {
                return Err(Error::DataLoss(format!(
                    "chunk {} decodes through more than {} bases; the chunk index is damaged",
                    id.to_hex(),
                    crate::ingest::delta::MAX_CHAIN
                )));
            }
            needed.push((location.depth, id));
            pending.extend(location.base);
        }
        // Roots first: each chunk's base is decoded before it.
        needed.sort_unstable();
        // Each chunk read is held twice for a while: as stored and as decoded.
        let cost: usize = needed
            .iter()
            .filter_map(|(_, id)| locations.get(id))
            .map(|location| location.stored_len as usize + location.raw_len as usize)
            .sum();
        let held = if depth == 0 {
            inner.base_budget.reserve(cost).await?
        } else {
            inner.base_budget.try_reserve(cost).unwrap_or_default()
        };
        let mut spans = Vec::with_capacity(needed.len());
        for (_, id) in &needed {
            // One read per chunk: a chain's chunks are rarely next to each other.
            spans.extend(plan_at(&inner, &tenant, vec![(*id, 0..usize::MAX)], &locations, 0).await?);
        }
        let reads = futures::stream::iter(spans.into_iter().map(|span| {
            let inner = inner.clone();
            async move {
                let bytes = inner
                    .store
                    .get(&span.pack_key, GetOptions::range(span.range.clone()))
                    .await;
                (span, bytes)
            }
        }))
        .buffered(CHAIN_READS)
        .collect::<Vec<_>>()
        .await;
        for (span, bytes) in reads {
            let id = span.chunks[0].chunk_id;
            let decoded = match bytes {
                Ok(bytes) => {
                    metrics::counter!(crate::telemetry::names::PACK_BYTES_READ_TOTAL)
                        .increment(bytes.len() as u64);
                    let base: HashMap<ChunkId, Bytes> = span.chunks[0]
                        .location
                        .base
                        .and_then(|base| Some((base, found.get(&base)?.clone())))
                        .into_iter()
                        .collect();
                    let (key, inner, span) = (key.clone(), inner.clone(), span.clone());
                    crate::compute::run(move || decode_span(&key, &span, &bytes, &base, &inner, admission))
                        .await
                        .map_err(|e| Error::internal(format!("decoding task failed: {e}")))
                        .and_then(|decoded| decoded)
                }
                Err(error) => Err(Error::Unavailable(error.to_string())),
            };
            let pieces = match decoded {
                Ok(pieces) => pieces,
                // Damaged or unreadable here: the store's checked read, which a failover
                // pair answers from its other copy.
                Err(_) => {
                    fetch_span(
                        inner.clone(),
                        tenant.clone(),
                        key.clone(),
                        span,
                        admission,
                        depth + 1,
                    )
                    .await?
                }
            };
            let plain = match pieces.as_slice() {
                [one] => one.clone(),
                many => Bytes::from(many.concat()),
            };
            found.insert(id, plain);
        }
        Ok(PlainChunks { chunks: found, held })
    }
    .boxed()
}

/// The plain content of chunks, holding the delta base memory their reading took until
/// dropped.
pub(super) struct PlainChunks {
    pub chunks: HashMap<ChunkId, Bytes>,
    held: Reservation,
}

impl PlainChunks {
    /// The chunks and the memory they hold, to be kept as long as the chunks are.
    pub fn into_parts(self) -> (HashMap<ChunkId, Bytes>, Reservation) {
        (self.chunks, self.held)
    }

    /// Chunks the chunk cache held: the cache's memory, not the budget's.
    pub fn cached(chunks: HashMap<ChunkId, Bytes>) -> Self {
        Self {
            chunks,
            held: Reservation::none(),
        }
    }
}

/// Reads one span: from the chunk cache when it holds every chunk of it, otherwise from
/// the store. Decoding and checking every chunk happens inside the store's read, so a
/// store with a second copy (failover) answers a corrupt copy by reading the other one.
/// `admission` says whether what is decoded is kept in the chunk cache (noted when the read
/// was planned: a cache cleared since, a tenant's keys destroyed, keeps nothing from it). The bases of delta chunks are read
/// first (`depth` of them already followed to get here).
fn fetch_span(
    inner: Arc<Inner>,
    tenant: Arc<str>,
    key: TenantKey,
    span: ReadSpan,
    admission: Admission,
    depth: u8,
) -> futures::future::BoxFuture<'static, Result<Vec<Bytes>>> {
    async move {
        let cache = &inner.cache;
        if cache.enabled() {
            let cached: Option<Vec<Bytes>> = span
                .chunks
                .iter()
                .map(|chunk| Some(cache.get(&chunk.chunk_id)?.slice(chunk.wanted.clone())))
                .collect();
            if let Some(pieces) = cached {
                cache.record_hits(pieces.len(), pieces.iter().map(Bytes::len).sum());
                return Ok(pieces);
            }
            cache.record_misses(span.chunks.len());
        }
        let base_ids: Vec<ChunkId> = span
            .chunks
            .iter()
            .filter_map(|chunk| chunk.location.base)
            .collect();
        let bases = if base_ids.is_empty() {
            PlainChunks::cached(HashMap::new())
        } else {
            plain_chunks(
                inner.clone(),
                tenant,
                key.clone(),
                base_ids,
                admission.for_bases(),
                depth,
            )
            .await?
        };
        let span = Arc::new(span);
        let decode: Decoder = {
            let span = span.clone();
            let inner = inner.clone();
            Arc::new(move |bytes: &Bytes| {
                decode_span(&key, &span, bytes, &bases.chunks, &inner, admission).map_err(|e| e.to_string())
            })
        };
        let pieces = inner
            .store
            .get_decoded(
                &span.pack_key,
                GetOptions::range(span.range.clone()).into_pool(inner.buffers.clone()),
                decode,
            )
            .await
            .map_err(|error| match error {
                StoreError::NotFound { .. } => {
                    Error::DataLoss(format!("pack {} is missing from the store", span.pack_key))
                }
                StoreError::Corrupt { message, .. } => Error::DataLoss(message),
                // The chunk index points past the end of the pack: the stored copy is truncated.
                error @ StoreError::InvalidRange { .. } => Error::DataLoss(error.to_string()),
                error if error.is_retryable() => {
                    Error::Unavailable(format!("reading pack {}: {error}", span.pack_key))
                }
                error => Error::Internal(format!("reading pack {}: {error}", span.pack_key)),
            })?;
        metrics::counter!(crate::telemetry::names::PACK_BYTES_READ_TOTAL)
            .increment(span.range.end - span.range.start);
        Ok(pieces)
    }
    .boxed()
}

/// Decodes a span's chunks in order, checking each against its id (keeping a copy of each
/// in the chunk cache), and returns the part the client asked for as pieces of content in
/// order. A chunk stored as it is (raw and not sealed) is checked in place and sent as a
/// slice of the read itself; the others decode into one buffer. Incompressible content so
/// costs neither a copy nor a second buffer.
fn decode_span(
    key: &TenantKey,
    span: &ReadSpan,
    bytes: &Bytes,
    bases: &HashMap<ChunkId, Bytes>,
    inner: &Inner,
    admission: Admission,
) -> Result<Vec<Bytes>> {
    let cache = &inner.cache;
    thread_local! {
        static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    }
    let mut out: Vec<u8> = match span.decoded_len() {
        0 => Vec::new(),
        len => inner.buffers.take(len),
    };
    // Where the wanted bytes are, in order: runs in the read (`true`) or in `out`.
    let mut places: Vec<(bool, Range<usize>)> = Vec::with_capacity(span.chunks.len());
    for chunk in &span.chunks {
        let start = (chunk.location.offset - span.range.start) as usize;
        let stored = &bytes[start..start + chunk.location.stored_len as usize];
        let raw_len = chunk.location.raw_len as usize;
        let undecodable = |reason: String| {
            Error::DataLoss(format!(
                "chunk {} in {} cannot be decoded: {reason}",
                chunk.chunk_id.to_hex(),
                span.pack_key
            ))
        };
        let (in_read, at) = if chunk.stored_as_is() {
            (true, start)
        } else {
            let opened;
            let stored = match &chunk.data_key {
                Some(key) => {
                    opened = key
                        .open_chunk(&chunk.chunk_id, chunk.location.offset, stored)
                        .map_err(|e| {
                            metrics::counter!(crate::telemetry::names::CHECKSUM_MISMATCHES_TOTAL)
                                .increment(1);
                            Error::DataLoss(format!(
                                "chunk {} in {} does not open: {e}",
                                chunk.chunk_id.to_hex(),
                                span.pack_key
                            ))
                        })?;
                    &opened[..]
                }
                None => stored,
            };
            let at = out.len();
            match chunk.location.codec {
                Codec::Raw if stored.len() == raw_len => out.extend_from_slice(stored),
                Codec::Raw => {
                    return Err(undecodable(format!(
                        "{} stored bytes for {raw_len} raw bytes",
                        stored.len()
                    )));
                }
                Codec::Zstd => {
                    out.resize(at + raw_len, 0);
                    let written = DECOMPRESSOR
                        .with_borrow_mut(|slot| {
                            if slot.is_none() {
                                *slot = Some(zstd::bulk::Decompressor::new()?);
                            }
                            let decompressor = slot.as_mut().expect("set just above");
                            decompressor.decompress_to_buffer(stored, &mut out[at..])
                        })
                        .map_err(|e| undecodable(e.to_string()))?;
                    if written != raw_len {
                        return Err(undecodable(format!(
                            "decompressed to {written} bytes, expected {raw_len}"
                        )));
                    }
                }
                Codec::ZstdDelta => {
                    let base = chunk
                        .location
                        .base
                        .and_then(|base| bases.get(&base))
                        .ok_or_else(|| undecodable("its base was not read".to_owned()))?;
                    out.resize(at + raw_len, 0);
                    let written = crate::ingest::delta::decode_into(stored, base, &mut out[at..])
                        .map_err(undecodable)?;
                    if written != raw_len {
                        return Err(undecodable(format!(
                            "decompressed to {written} bytes, expected {raw_len}"
                        )));
                    }
                }
            }
            (false, at)
        };
        let plain = if in_read {
            &bytes[at..at + raw_len]
        } else {
            &out[at..at + raw_len]
        };
        if key.chunk_id(plain) != chunk.chunk_id {
            metrics::counter!(crate::telemetry::names::CHECKSUM_MISMATCHES_TOTAL).increment(1);
            return Err(Error::DataLoss(format!(
                "chunk {} in {} does not match its hash",
                chunk.chunk_id.to_hex(),
                span.pack_key
            )));
        }
        cache.insert(chunk.chunk_id, plain, admission);
        let wanted = at + chunk.wanted.start..at + chunk.wanted.end;
        match places.last_mut() {
            Some((run_in_read, run)) if *run_in_read == in_read && run.end == wanted.start => {
                run.end = wanted.end;
            }
            _ if wanted.is_empty() => {}
            _ => places.push((in_read, wanted)),
        }
    }
    let out = inner.buffers.wrap(out);
    Ok(places
        .into_iter()
        .map(|(in_read, run)| if in_read { bytes.slice(run) } else { out.slice(run) })
        .collect())
}

/// Regroups a stream of pieces into messages of `min..=max` bytes (the last may be
/// smaller): large pieces are sliced without copying, small ones copied together.
pub fn coalesce<S>(pieces: S, min: usize, max: usize) -> impl Stream<Item = Result<Bytes>> + Send
where
    S: Stream<Item = Result<Bytes>> + Send,
{
    struct State<S> {
        pieces: std::pin::Pin<Box<S>>,
        ready: VecDeque<Bytes>,
        partial: BytesMut,
        ended: bool,
    }
    let state = State {
        pieces: Box::pin(pieces),
        ready: VecDeque::new(),
        partial: BytesMut::new(),
        ended: false,
    };
    futures::stream::unfold(state, move |mut state| async move {
        loop {
            if let Some(message) = state.ready.pop_front() {
                return Some((Ok(message), state));
            }
            if state.ended {
                if state.partial.is_empty() {
                    return None;
                }
                let last = state.partial.split().freeze();
                return Some((Ok(last), state));
            }
            match state.pieces.next().await {
                None => state.ended = true,
                Some(Err(error)) => {
                    // Nothing after an error: what was gathered is not sent either.
                    state.ended = true;
                    state.partial.clear();
                    return Some((Err(error), state));
                }
                Some(Ok(mut piece)) => {
                    if !state.partial.is_empty() {
                        let top_up = (min - state.partial.len().min(min)).min(piece.len());
                        state.partial.extend_from_slice(&piece.split_to(top_up));
                        if state.partial.len() >= min {
                            state.ready.push_back(state.partial.split().freeze());
                        }
                    }
                    if piece.len() < min {
                        if state.partial.is_empty() {
                            // One allocation for the whole message: a partial message
                            // never holds more than `min`.
                            state.partial.reserve(min);
                        }
                        state.partial.extend_from_slice(&piece);
                    } else {
                        let parts = piece.len().div_ceil(max);
                        let size = piece.len().div_ceil(parts);
                        while !piece.is_empty() {
                            let take = size.min(piece.len());
                            state.ready.push_back(piece.split_to(take));
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(pieces: Vec<usize>, min: usize, max: usize) -> (Vec<usize>, Vec<u8>) {
        let mut next = 0u8;
        let input: Vec<Result<Bytes>> = pieces
            .into_iter()
            .map(|len| {
                Ok(Bytes::from(
                    (0..len)
                        .map(|_| {
                            next = next.wrapping_add(1);
                            next
                        })
                        .collect::<Vec<u8>>(),
                ))
            })
            .collect();
        let expected: Vec<u8> = input
            .iter()
            .flat_map(|piece| piece.as_ref().unwrap().to_vec())
            .collect();
        let output: Vec<Bytes> =
            futures::executor::block_on(coalesce(futures::stream::iter(input), min, max).try_collect())
                .unwrap();
        let joined: Vec<u8> = output.iter().flat_map(|b| b.to_vec()).collect();
        assert_eq!(joined, expected, "the bytes and their order are kept");
        (output.iter().map(Bytes::len).collect(), joined)
    }

    #[test]
    fn messages_are_sized_for_the_transport_whatever_the_pieces() {
        // Small pieces are gathered up to the minimum.
        let (out, _) = sizes(vec![10; 25], 64, 256);
        assert!(
            out[..out.len() - 1].iter().all(|&n| (64..=256).contains(&n)),
            "{out:?}"
        );
        // A large piece is cut into near-equal messages no larger than the maximum.
        let (out, _) = sizes(vec![1000], 64, 256);
        assert_eq!(out, vec![250, 250, 250, 250]);
        // Mixed: a small piece tops up from the next large one; every message but the last is
        // within bounds.
        for pieces in [
            vec![5, 300, 7, 7, 1000, 63, 64, 65],
            vec![257, 1, 513],
            vec![0, 0, 64],
        ] {
            let (out, _) = sizes(pieces.clone(), 64, 256);
            let (last, rest) = out.split_last().unwrap();
            assert!(
                rest.iter().all(|&n| (64..=256).contains(&n)),
                "{pieces:?} → {out:?}"
            );
            assert!(*last <= 256 && *last > 0, "{pieces:?} → {out:?}");
        }
        assert!(sizes(vec![], 64, 256).0.is_empty());
        assert!(sizes(vec![0, 0], 64, 256).0.is_empty());
    }

    #[test]
    fn an_error_ends_the_messages() {
        let input = vec![
            Ok(Bytes::from(vec![1u8; 10])),
            Err(Error::DataLoss("gone".into())),
            Ok(Bytes::from(vec![2u8; 10])),
        ];
        let output: Vec<Result<Bytes>> =
            futures::executor::block_on(coalesce(futures::stream::iter(input), 64, 256).collect());
        assert_eq!(output.len(), 1);
        assert!(matches!(output[0], Err(Error::DataLoss(_))));
    }
}
