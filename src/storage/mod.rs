//! The storage core's object layer: a small `BlobStore` trait and its implementations.
//! Nothing here knows about artifacts; keys and bytes only.

mod fs;
mod s3;

pub use fs::FsStore;
pub use s3::{S3Store, S3StoreConfig};

use async_trait::async_trait;
use bytes::Bytes;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
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

    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
}

/// Options for [`BlobStore::get`].
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    /// Byte range to read; the whole object when `None`. The range must lie inside the object.
    pub range: Option<Range<u64>>,
}

impl GetOptions {
    pub fn range(range: Range<u64>) -> Self {
        Self { range: Some(range) }
    }
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
}

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
