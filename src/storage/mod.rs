//! The storage core's object layer: a small `BlobStore` trait and its implementations.
//! Nothing here knows about artifacts; keys and bytes only.

pub mod breaker;
mod deadline;
mod disk_cache;
mod failover;
mod fs;
mod metered;
mod replication;
mod s3;
pub mod unreliable;

pub use breaker::{BreakerConfig, BreakerState};
pub use deadline::{DeadlineConfig, DeadlineStore};
pub use disk_cache::{DiskCache, DiskCacheStatus, DiskCachedStore, Verifier};
pub use failover::{
    FailoverConfig, FailoverMetrics, FailoverStatus, FailoverStore, ObjectVerifier, ProbeReport,
    ReconcileReport, SideMetrics, SideStatus, SwitchEvent, SyncReport,
};
pub use fs::FsStore;
pub use metered::MeteredStore;
pub use replication::{ObjectInventory, ReplicationItem, ReplicationLog, ReplicationStats, Side};
pub use s3::{S3Store, S3StoreConfig};

use crate::buffers::BufferPool;
use async_trait::async_trait;
use bytes::Bytes;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("object {key:?} not found in {store}")]
    NotFound { store: String, key: String },
    #[error("range {start}..{end} is outside object {key:?} of {size} bytes in {store}")]
    InvalidRange {
        store: String,
        key: String,
        start: u64,
        end: u64,
        size: u64,
    },
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("object {key:?} in {store} is corrupt: {message}")]
    Corrupt {
        store: String,
        key: String,
        message: String,
    },
    #[error("{store} is unavailable: {message}")]
    Unavailable { store: String, message: String },
    #[error("{store} failed: {message}")]
    Failed { store: String, message: String },
}

impl StoreError {
    /// Whether the same operation may succeed later (network trouble, timeouts, 5xx answers,
    /// throttling). Missing objects, bad keys and bad ranges are never retryable.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    /// Whether the failure says something about the store's health (it is down, slow, or
    /// refusing work), as opposed to an answer about the request (missing object, bad range,
    /// bad key). Failover counts these against a store and tries the other one.
    pub fn is_store_fault(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. } | StoreError::Failed { .. })
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
}

/// Turns bytes read from a store into what the caller wants from them (for packs: the
/// chunks of a span, each checked against its hash). It may return slices of the bytes it
/// is given rather than copies. An `Err` names what is wrong with the bytes;
/// [`BlobStore::get_decoded`] reports it as `StoreError::Corrupt`.
pub type Decoder = Arc<dyn Fn(&Bytes) -> Result<Vec<Bytes>, String> + Send + Sync>;

/// Options for [`BlobStore::get`].
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    /// Byte range to read; the whole object when `None`. The range must lie inside the object.
    pub range: Option<Range<u64>>,
    /// Where to take the buffer the bytes are read into (it returns there once the last
    /// slice of them is dropped); a buffer of its own when `None`. Stores that read into
    /// one contiguous buffer use it.
    pub buffers: Option<Arc<BufferPool>>,
}

impl GetOptions {
    pub fn range(range: Range<u64>) -> Self {
        Self {
            range: Some(range),
            buffers: None,
        }
    }

    /// The bytes are read into a buffer of `pool`.
    pub fn into_pool(mut self, pool: Arc<BufferPool>) -> Self {
        self.buffers = Some(pool);
        self
    }

    /// An empty buffer for `len` bytes: from the pool when there is one.
    fn buffer(&self, len: usize) -> Vec<u8> {
        match &self.buffers {
            Some(pool) => pool.take(len),
            None => Vec::with_capacity(len),
        }
    }

    /// `buffer` as bytes, going back to the pool it came from once dropped.
    fn bytes(&self, buffer: Vec<u8>) -> Bytes {
        match &self.buffers {
            Some(pool) => pool.wrap(buffer),
            None => Bytes::from(buffer),
        }
    }

    /// `range` of `file`, read into a buffer of the pool (straight into its free capacity:
    /// not zeroed first only to be overwritten).
    fn read_file(&self, file: &mut std::fs::File, range: &Range<u64>) -> std::io::Result<Bytes> {
        use std::io::{Read, Seek};
        let len = (range.end - range.start) as usize;
        let mut buffer = self.buffer(len);
        file.seek(std::io::SeekFrom::Start(range.start))?;
        let read = file.take(len as u64).read_to_end(&mut buffer)?;
        if read < len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the file ended {} bytes before the range did", len - read),
            ));
        }
        Ok(self.bytes(buffer))
    }
}

/// Runs `decode` on bytes just read, off the async workers when they are large.
pub async fn decode_read(
    store: &str,
    key: &str,
    decode: &Decoder,
    bytes: Bytes,
) -> Result<Vec<Bytes>, StoreError> {
    let decoded = if bytes.len() > 64 * 1024 {
        let decode = decode.clone();
        crate::compute::run(move || decode(&bytes))
            .await
            .map_err(|e| StoreError::Failed {
                store: store.to_owned(),
                message: format!("decoding task failed: {e}"),
            })?
    } else {
        decode(&bytes)
    };
    decoded.map_err(|message| StoreError::Corrupt {
        store: store.to_owned(),
        key: key.to_owned(),
        message,
    })
}

/// What a store knows about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
}

/// An object store holding immutable objects under string keys.
///
/// Contract every implementation keeps, checked by the conformance suite in
/// `tests/blobstore_conformance.rs`:
/// - `put` is atomic: a reader sees either no object or the whole object, never a part.
///   Objects are immutable by convention: callers only put content-addressed keys, so a repeated
///   put of a key carries the same bytes and is harmless.
/// - `get` returns the whole object or exactly the requested range; a range reaching past
///   the end is `InvalidRange`, a missing key is `NotFound`.
/// - `get_decoded` returns what the decoder made of exactly those bytes, and `Corrupt` when
///   the decoder refuses them.
/// - `head` returns `None` for a missing key.
/// - `delete` is idempotent: deleting a missing key succeeds.
/// - `list` returns every object whose key starts with `prefix`, sorted by key.
/// - Keys are relative, `/`-separated, without empty segments, `.` or `..` segments.
#[async_trait]
pub trait BlobStore: fmt::Debug + Send + Sync + 'static {
    /// A short name for logs, metrics and error messages.
    fn name(&self) -> &str;
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError>;
    async fn get(&self, key: &str, options: GetOptions) -> Result<Bytes, StoreError>;
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError>;
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError>;

    /// Reads `options.range` of `key` and returns what `decode` makes of the bytes. Bytes it
    /// refuses are `Corrupt`; a store holding a second copy (failover) answers that by
    /// decoding the other copy, and repairs the damaged one.
    async fn get_decoded(
        &self,
        key: &str,
        options: GetOptions,
        decode: Decoder,
    ) -> Result<Vec<Bytes>, StoreError> {
        let bytes = self.get(key, options).await?;
        decode_read(self.name(), key, &decode, bytes).await
    }

    /// Whether the store answers at all, for health checks: a `head` of a key that never
    /// exists. Wrappers over several stores decide what "answers" means for them.
    async fn check(&self) -> Result<(), StoreError> {
        self.head(HEALTH_PROBE_KEY).await.map(|_| ())
    }
}

/// A key that is never written; reading its metadata tells whether a store answers.
pub const HEALTH_PROBE_KEY: &str = "health/probe";

pub type DynBlobStore = Arc<dyn BlobStore>;

/// Rejects keys that could escape a directory or confuse an S3 implementation.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    let reason = if key.is_empty() {
        Some("empty key")
    } else if key.starts_with('/') || key.ends_with('/') {
        Some("keys must not start or end with '/'")
    } else if key
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        Some("keys must not contain empty, '.' or '..' segments")
    } else if !key.bytes().all(|b| b.is_ascii_graphic()) {
        Some("keys must be printable ASCII without spaces")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StoreError::InvalidKey {
            key: key.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Checks a requested range against an object's size.
fn check_range(store: &str, key: &str, range: &Range<u64>, size: u64) -> Result<(), StoreError> {
    if range.start > range.end || range.end > size {
        return Err(StoreError::InvalidRange {
            store: store.to_owned(),
            key: key.to_owned(),
            start: range.start,
            end: range.end,
            size,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_ranges_read_exactly_into_the_pool_and_a_short_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("object");
        let content: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let pool = BufferPool::new(8 * 1024 * 1024);
        let options = GetOptions::range(1000..2 * 1024 * 1024 + 1000).into_pool(pool);
        let mut file = std::fs::File::open(&path).unwrap();
        let range = options.range.clone().unwrap();
        let read = options.read_file(&mut file, &range).unwrap();
        assert!(read[..] == content[1000..2 * 1024 * 1024 + 1000]);
        let past_the_end = 3 * 1024 * 1024 - 10..3 * 1024 * 1024 + 10;
        let error = options.read_file(&mut file, &past_the_end).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(error.to_string().contains("10 bytes before"), "{error}");
    }
}
