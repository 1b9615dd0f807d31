//! Reading a version back: manifest → chunk locations → ranged reads coalesced per pack,
//! fetched ahead of the client with bounded concurrency, every chunk verified against its
//! keyed hash before a byte of it is sent. Chunks of sealed packs are opened with their
//! pack's data key first.

use super::Inner;
use crate::catalog::ChunkLocation;
use crate::domain::{Error, Result};
use crate::ingest::chunk::decode;
use crate::ingest::sealing::DataKey;
use crate::ingest::{ChunkId, Manifest, PackId, TenantKey};
use crate::storage::{Decoder, GetOptions, StoreError};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use std::ops::Range;
use std::sync::Arc;

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

/// One ranged GET on a pack covering consecutive chunks.
#[derive(Debug, Clone)]
pub(super) struct ReadSpan {
    pack_key: String,
    range: Range<u64>,
    chunks: Vec<ChunkSlice>,
}

/// Plans the reads for `range` of the content described by `manifest`.
pub(super) async fn plan(
    inner: &Inner,
    tenant: &str,
    manifest: &Manifest,
    range: Range<u64>,
) -> Result<Vec<ReadSpan>> {
    let mut needed = Vec::new();
    let mut position = 0u64;
    for entry in &manifest.entries {
        let chunk_range = position..position + u64::from(entry.raw_len);
        position = chunk_range.end;
        if chunk_range.end <= range.start || chunk_range.start >= range.end {
            continue;
        }
        let wanted_start = range.start.max(chunk_range.start) - chunk_range.start;
        let wanted_end = range.end.min(chunk_range.end) - chunk_range.start;
        needed.push((entry.chunk_id, wanted_start as usize..wanted_end as usize));
    }
    let ids: Vec<ChunkId> = needed.iter().map(|(id, _)| *id).collect();
    let locations = inner.catalog.chunk_locations(tenant, &ids).await?;
    explain_missing(inner, tenant, &ids, &locations).await?;
    let data_keys = inner
        .keys
        .data_keys(&inner.catalog, tenant, locations.values())
        .await?;

    let max_span = inner.settings.ingest.max_read_span_bytes;
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
        let slice = ChunkSlice {
            chunk_id,
            location,
            data_key,
            wanted,
        };
        // Coalesce with the previous read when the chunk follows it directly in the same pack.
        if let Some(last) = spans.last_mut()
            && last.pack_key == pack_key
            && last.range.end == start
            && end - last.range.start <= max_span
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

/// Streams the planned reads, `read_ahead` spans ahead of the consumer.
pub(super) fn stream(
    inner: Arc<Inner>,
    key: TenantKey,
    spans: Vec<ReadSpan>,
) -> impl Stream<Item = Result<Bytes>> + Send + 'static {
    let read_ahead = inner.settings.ingest.read_ahead_spans.max(1);
    futures::stream::iter(spans)
        .map(move |span| fetch_span(inner.clone(), key.clone(), span))
        .buffered(read_ahead)
        .map_ok(|pieces| futures::stream::iter(pieces.into_iter().map(Ok)))
        .try_flatten()
}

/// Reads one span. Decoding and checking every chunk happens inside the store's read, so a
/// store with a second copy (failover) answers a corrupt copy by reading the other one.
async fn fetch_span(inner: Arc<Inner>, key: TenantKey, span: ReadSpan) -> Result<Vec<Bytes>> {
    let span = Arc::new(span);
    let decode: Decoder = {
        let span = span.clone();
        Arc::new(move |bytes: &[u8]| decode_span(&key, &span, bytes).map_err(|e| e.to_string()))
    };
    let pieces = inner
        .store
        .get_decoded(&span.pack_key, GetOptions::range(span.range.clone()), decode)
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

fn decode_span(key: &TenantKey, span: &ReadSpan, bytes: &[u8]) -> Result<Vec<Bytes>> {
    let mut pieces = Vec::with_capacity(span.chunks.len());
    for chunk in &span.chunks {
        let start = (chunk.location.offset - span.range.start) as usize;
        let stored = &bytes[start..start + chunk.location.stored_len as usize];
        let opened;
        let stored = match &chunk.data_key {
            Some(key) => {
                opened = key
                    .open_chunk(&chunk.chunk_id, chunk.location.offset, stored)
                    .map_err(|e| {
                        metrics::counter!(crate::telemetry::names::CHECKSUM_MISMATCHES_TOTAL).increment(1);
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
        let raw = decode(chunk.location.codec, stored, chunk.location.raw_len as usize).map_err(|e| {
            Error::DataLoss(format!(
                "chunk {} in {} cannot be decoded: {e}",
                chunk.chunk_id.to_hex(),
                span.pack_key
            ))
        })?;
        if key.chunk_id(&raw) != chunk.chunk_id {
            metrics::counter!(crate::telemetry::names::CHECKSUM_MISMATCHES_TOTAL).increment(1);
            return Err(Error::DataLoss(format!(
                "chunk {} in {} does not match its hash",
                chunk.chunk_id.to_hex(),
                span.pack_key
            )));
        }
        let raw = Bytes::from(raw);
        pieces.push(raw.slice(chunk.wanted.clone()));
    }
    Ok(pieces)
}
