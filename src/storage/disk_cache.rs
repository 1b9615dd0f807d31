//! `DiskCachedStore`: a `BlobStore` wrapper that keeps whole objects read more than once in a
//! local directory, for stores that are far away (S3 across a network). It caches what the
//! store holds, byte for byte (sealed packs stay sealed), never what a write sends.
//!
//! - Admission: an object is copied to disk when the same part of it is missed a second time
//!   within the last [`SEEN_ONCE`] misses: one large scan that reads each object once never
//!   fills the cache, and neither do the several spans one download reads of one pack.
//! - Eviction: least recently used first, down to the capacity.
//! - Damage: a cached copy the decoder refuses is deleted and the read goes to the store;
//!   a fill is checked by `verify` (for packs, their name is their hash) before it is kept.
//! - A directory that cannot be written or read (full, read-only, gone) costs nothing but
//!   the cache: reads go to the store, the problem is logged once, shown by
//!   [`DiskCache::problem`], the `disk-cache` health status and the
//!   `artifactd_disk_cache_degraded` gauge, and cleared by the next write that works. While
//!   it lasts, copies are tried again only after a wait that doubles (from
//!   [`FIRST_RETRY`] to [`LAST_RETRY`]), each after a small test write, so a broken cache
//!   does not fetch objects from the store only to fail to keep them.
//! - Copies that cannot be removed to make room stay indexed (they can still be read): the
//!   index always matches the directory.

use super::{BlobStore, Decoder, DynBlobStore, GetOptions, ObjectMeta, StoreError, decode_read};
use crate::telemetry::names;
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// How many missed keys the admission filter remembers.
const SEEN_ONCE: usize = 4096;

/// The first wait before copies are tried again in a directory that failed.
pub const FIRST_RETRY: std::time::Duration = std::time::Duration::from_secs(5);
/// The longest wait between tries.
pub const LAST_RETRY: std::time::Duration = std::time::Duration::from_secs(300);

/// Whether the bytes of a whole object are what `key` should hold.
pub type Verifier = Arc<dyn Fn(&str, &[u8]) -> bool + Send + Sync>;

#[derive(Default)]
struct Index {
    /// key → (size, last use)
    entries: HashMap<String, (u64, u64)>,
    total: u64,
    clock: u64,
    seen_once: VecDeque<String>,
    seen_set: HashSet<String>,
    filling: HashSet<String>,
    /// Objects deleted while being copied: their copy is not kept.
    cancelled: HashSet<String>,
    /// Bytes being written, counted against the capacity before they are indexed.
    pending: u64,
}

impl Index {
    fn touch(&mut self, key: &str) -> bool {
        self.clock += 1;
        match self.entries.get_mut(key) {
            Some(entry) => {
                entry.1 = self.clock;
                true
            }
            None => false,
        }
    }

    /// Records a miss of `part` (a key and a range); whether that part was missed before
    /// (and the object is not being copied already).
    fn admit(&mut self, key: &str, part: String) -> bool {
        if self.filling.contains(key) {
            return false;
        }
        if self.seen_set.remove(&part) {
            self.seen_once.retain(|k| *k != part);
            self.filling.insert(key.to_owned());
            return true;
        }
        if self.seen_once.len() >= SEEN_ONCE
            && let Some(oldest) = self.seen_once.pop_front()
        {
            self.seen_set.remove(&oldest);
        }
        self.seen_once.push_back(part.clone());
        self.seen_set.insert(part);
        false
    }

    /// Takes out of the index the entries to delete so that `incoming` more bytes (besides
    /// those being written) fit in `capacity`, least recent first: (key, size, last use).
    fn make_room(&mut self, incoming: u64, capacity: u64) -> Vec<(String, u64, u64)> {
        let incoming = incoming + self.pending;
        let mut by_age: Vec<(u64, String)> = self
            .entries
            .iter()
            .map(|(k, (_, used))| (*used, k.clone()))
            .collect();
        by_age.sort();
        let mut evicted = Vec::new();
        for (_, key) in by_age {
            if self.total + incoming <= capacity {
                break;
            }
            if let Some((size, used)) = self.entries.remove(&key) {
                self.total -= size;
                evicted.push((key, size, used));
            }
        }
        evicted
    }

    /// Puts back an entry taken out by [`Index::make_room`] whose file is still there.
    fn restore(&mut self, key: String, size: u64, used: u64) {
        self.total += size;
        self.entries.insert(key, (size, used));
    }
}

/// Why the cache cannot keep what it should, and when copies are tried again.
struct Problem {
    message: String,
    retry_at: std::time::Instant,
    wait: std::time::Duration,
}

/// The cache directory and what it holds.
pub struct DiskCache {
    dir: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
    problem: Mutex<Option<Problem>>,
    first_retry: std::time::Duration,
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

/// What the cache holds and whether it can keep more, for status calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskCacheStatus {
    pub bytes: u64,
    pub capacity: u64,
    pub hits: u64,
    pub misses: u64,
    pub problem: Option<String>,
}

impl DiskCache {
    /// Opens (creating) `dir`, forgets unfinished copies and indexes what is there. A
    /// directory that cannot be made is a problem to report, not a reason not to start.
    pub fn open(dir: &Path, capacity: u64) -> Arc<Self> {
        Self::open_with_retry(dir, capacity, FIRST_RETRY)
    }

    /// [`DiskCache::open`], with copies into a directory that failed tried again after
    /// `first_retry` (doubling up to [`LAST_RETRY`]).
    pub fn open_with_retry(dir: &Path, capacity: u64, first_retry: std::time::Duration) -> Arc<Self> {
        let cache = Arc::new(Self {
            dir: dir.to_owned(),
            capacity,
            index: Mutex::new(Index::default()),
            problem: Mutex::new(None),
            first_retry,
            hits: Default::default(),
            misses: Default::default(),
        });
        match cache.scan() {
            Ok(()) => cache.clear_problem(),
            Err(error) => cache.report_problem(format!("cannot use {}: {error}", dir.display())),
        }
        cache
    }

    fn scan(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Only the cache's own files: a copy cut short is removed, anything else left.
            if name.ends_with(".tmp") && name.contains(".cached.") {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let Some(key) = key_of(&name) else {
                continue;
            };
            let meta = entry.metadata()?;
            let used = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            found.push((used, key, meta.len()));
        }
        found.sort();
        let mut index = self.index.lock().expect("disk cache index");
        for (_, key, size) in found {
            index.clock += 1;
            let clock = index.clock;
            index.total += size;
            index.entries.insert(key, (size, clock));
        }
        let evict = index.make_room(0, self.capacity);
        let stuck = self.evict(&mut index, evict);
        drop(index);
        self.report_size();
        stuck.map_or(Ok(()), Err)
    }

    /// Deletes the files of entries taken out of the index; an entry whose file could not
    /// be deleted goes back (it can still be read), and the first such error is returned.
    /// Called with the index held, so no copy of the same key is kept meanwhile.
    fn evict(&self, index: &mut Index, evicted: Vec<(String, u64, u64)>) -> Option<std::io::Error> {
        let mut stuck = None;
        for (key, size, used) in evicted {
            match std::fs::remove_file(self.path_of(&key)) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    index.restore(key, size, used);
                    stuck.get_or_insert(error);
                }
                _ => {}
            }
        }
        stuck
    }

    fn path_of(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{}.cached", key.replace('/', "~")))
    }

    pub fn status(&self) -> DiskCacheStatus {
        DiskCacheStatus {
            bytes: self.index.lock().expect("disk cache index").total,
            capacity: self.capacity,
            hits: self.hits.load(std::sync::atomic::Ordering::Relaxed),
            misses: self.misses.load(std::sync::atomic::Ordering::Relaxed),
            problem: self.problem(),
        }
    }

    /// Why the cache cannot keep what it should, while that lasts.
    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .expect("disk cache problem")
            .as_ref()
            .map(|problem| problem.message.clone())
    }

    /// Whether a copy may start now: always while the cache works; while it has a problem,
    /// one try each time the wait is over (the next waits until the try reports).
    fn may_fill(&self) -> bool {
        let mut current = self.problem.lock().expect("disk cache problem");
        match current.as_mut() {
            None => true,
            Some(problem) => {
                let now = std::time::Instant::now();
                if now < problem.retry_at {
                    return false;
                }
                problem.retry_at = now + problem.wait;
                true
            }
        }
    }

    fn report_problem(&self, message: String) {
        let mut current = self.problem.lock().expect("disk cache problem");
        let wait = match current.as_ref() {
            None => {
                tracing::warn!(dir = %self.dir.display(), problem = %message, "the disk cache cannot keep objects; reads go to the store");
                self.first_retry
            }
            Some(problem) => (problem.wait * 2).min(LAST_RETRY.max(self.first_retry)),
        };
        *current = Some(Problem {
            message,
            retry_at: std::time::Instant::now() + wait,
            wait,
        });
        metrics::gauge!(names::DISK_CACHE_DEGRADED).set(1.0);
    }

    /// A small write and removal in the directory, before a copy is tried again in one that
    /// failed; a failure is reported (and the next try waits longer).
    fn probe(&self) -> bool {
        let probe = self
            .dir
            .join(format!("probe.cached.{}.tmp", uuid::Uuid::now_v7().simple()));
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&probe, b"probe"))
            .and_then(|()| std::fs::remove_file(&probe));
        match written {
            Ok(()) => true,
            Err(error) => {
                let _ = std::fs::remove_file(&probe);
                self.report_problem(format!("cannot write {}: {error}", self.dir.display()));
                false
            }
        }
    }

    fn has_problem(&self) -> bool {
        self.problem.lock().expect("disk cache problem").is_some()
    }

    fn clear_problem(&self) {
        if self.problem.lock().expect("disk cache problem").take().is_some() {
            tracing::info!(dir = %self.dir.display(), "the disk cache keeps objects again");
        }
        metrics::gauge!(names::DISK_CACHE_DEGRADED).set(0.0);
    }

    fn report_size(&self) {
        let total = self.index.lock().expect("disk cache index").total;
        metrics::gauge!(names::DISK_CACHE_BYTES).set(total as f64);
    }

    /// The cached bytes of `key` in `range`, if the whole object is here.
    fn read(&self, key: &str, options: &GetOptions) -> Option<Bytes> {
        if !self.index.lock().expect("disk cache index").touch(key) {
            return None;
        }
        let path = self.path_of(key);
        let read = || -> std::io::Result<Bytes> {
            let mut file = std::fs::File::open(&path)?;
            match &options.range {
                None => {
                    let mut bytes = Vec::new();
                    file.read_to_end(&mut bytes)?;
                    Ok(Bytes::from(bytes))
                }
                Some(range) => options.read_file(&mut file, range),
            }
        };
        match read() {
            Ok(bytes) => Some(bytes),
            Err(error) => {
                tracing::warn!(%key, %error, "a cached object could not be read; reading the store");
                if error.kind() != std::io::ErrorKind::NotFound {
                    self.report_problem(format!("cannot read {}: {error}", path.display()));
                }
                self.forget(key);
                None
            }
        }
    }

    /// Drops `key` from the cache. The file goes while the index is held, so a copy of the
    /// same key kept meanwhile is never the file removed; a copy being written now is
    /// cancelled and not kept.
    fn forget(&self, key: &str) {
        let mut index = self.index.lock().expect("disk cache index");
        if let Some((size, _)) = index.entries.remove(key) {
            index.total -= size;
            let _ = std::fs::remove_file(self.path_of(key));
        }
        if index.filling.contains(key) {
            index.cancelled.insert(key.to_owned());
        }
        drop(index);
        self.report_size();
    }

    /// Keeps `bytes` as the whole of `key`: written to a temporary name, then renamed, so a
    /// crash never leaves a partial object under a real name. The key stays `filling` until
    /// it is indexed (no second copy of it starts meanwhile), and what is evicted to make
    /// room is removed while the index is held (no copy kept meanwhile is removed).
    fn keep(&self, key: &str, bytes: &[u8]) {
        let size = bytes.len() as u64;
        {
            let mut index = self.index.lock().expect("disk cache index");
            if index.cancelled.remove(key) || size > self.capacity || index.entries.contains_key(key) {
                index.filling.remove(key);
                return;
            }
            let evicted = index.make_room(size, self.capacity);
            if let Some(error) = self.evict(&mut index, evicted)
                && index.total + index.pending + size > self.capacity
            {
                index.filling.remove(key);
                drop(index);
                self.report_problem(format!(
                    "cannot remove old copies from {}: {error}",
                    self.dir.display()
                ));
                self.report_size();
                return;
            }
            index.pending += size;
        }
        let path = self.path_of(key);
        let temp = path.with_file_name(format!(
            "{}.{}.tmp",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            uuid::Uuid::now_v7().simple()
        ));
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&temp, bytes))
            .and_then(|()| std::fs::rename(&temp, &path));
        let mut index = self.index.lock().expect("disk cache index");
        index.pending -= size;
        index.filling.remove(key);
        let cancelled = index.cancelled.remove(key);
        match written {
            Ok(()) if cancelled => {
                // Forgotten (the object deleted) while it was written.
                let _ = std::fs::remove_file(&path);
                drop(index);
            }
            Ok(()) => {
                index.clock += 1;
                let clock = index.clock;
                if let Some((replaced, _)) = index.entries.insert(key.to_owned(), (size, clock)) {
                    index.total -= replaced;
                }
                index.total += size;
                drop(index);
                self.clear_problem();
            }
            Err(error) => {
                drop(index);
                let _ = std::fs::remove_file(&temp);
                self.report_problem(format!("cannot write {}: {error}", path.display()));
            }
        }
        self.report_size();
    }

    fn fill_failed(&self, key: &str) {
        let mut index = self.index.lock().expect("disk cache index");
        index.filling.remove(key);
        index.cancelled.remove(key);
    }
}

/// The key a cache file holds; `None` for files that are not the cache's.
fn key_of(file_name: &str) -> Option<String> {
    Some(file_name.strip_suffix(".cached")?.replace('~', "/"))
}

/// Whole-object copies running at once; more admissions wait for a later miss.
const FILLS: usize = 2;

/// A store whose objects under `prefix` are read through a [`DiskCache`].
pub struct DiskCachedStore {
    inner: DynBlobStore,
    cache: Arc<DiskCache>,
    prefix: String,
    verify: Verifier,
    fills: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for DiskCachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCachedStore")
            .field("inner", &self.inner)
            .field("dir", &self.cache.dir)
            .finish()
    }
}

impl DiskCachedStore {
    pub fn new(inner: DynBlobStore, cache: Arc<DiskCache>, prefix: &str, verify: Verifier) -> Self {
        Self {
            inner,
            cache,
            prefix: prefix.to_owned(),
            verify,
            fills: Arc::new(tokio::sync::Semaphore::new(FILLS)),
        }
    }

    fn cacheable(&self, key: &str) -> bool {
        key.starts_with(&self.prefix)
    }

    fn hit(&self) {
        self.cache.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!(names::DISK_CACHE_HITS_TOTAL).increment(1);
    }

    /// Counts a miss, and copies the whole object to disk in the background when the same
    /// part of it was missed before.
    fn missed(&self, key: &str, range: Option<&std::ops::Range<u64>>) {
        self.cache
            .misses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!(names::DISK_CACHE_MISSES_TOTAL).increment(1);
        let part = match range {
            Some(range) => format!("{key}@{}-{}", range.start, range.end),
            None => key.to_owned(),
        };
        if !self
            .cache
            .index
            .lock()
            .expect("disk cache index")
            .admit(key, part)
        {
            return;
        }
        let Ok(permit) = self.fills.clone().try_acquire_owned() else {
            // Enough copies are running; a later miss tries again.
            self.cache.fill_failed(key);
            return;
        };
        // A directory that failed is tried again only now and then, not at every miss.
        if !self.cache.may_fill() {
            self.cache.fill_failed(key);
            return;
        }
        let (inner, cache, verify, key) = (
            self.inner.clone(),
            self.cache.clone(),
            self.verify.clone(),
            key.to_owned(),
        );
        tokio::spawn(async move {
            let _permit = permit;
            if cache.has_problem() {
                // A try after a failure: a small write first, before the store is asked
                // for a whole object that might not be kept.
                let probing = cache.clone();
                if !tokio::task::spawn_blocking(move || probing.probe())
                    .await
                    .unwrap_or(false)
                {
                    cache.fill_failed(&key);
                    return;
                }
            }
            match inner.get(&key, GetOptions::default()).await {
                Ok(bytes) => {
                    let _ = tokio::task::spawn_blocking(move || {
                        if verify(&key, &bytes) {
                            cache.keep(&key, &bytes);
                        } else {
                            tracing::warn!(%key, "the store's copy failed its check; not caching it");
                            cache.fill_failed(&key);
                        }
                    })
                    .await;
                }
                Err(error) => {
                    tracing::debug!(%key, %error, "could not copy an object to the disk cache");
                    cache.fill_failed(&key);
                }
            }
        });
    }

    async fn cached(&self, key: &str, options: &GetOptions) -> Option<Bytes> {
        let (cache, key, options) = (self.cache.clone(), key.to_owned(), options.clone());
        tokio::task::spawn_blocking(move || cache.read(&key, &options))
            .await
            .ok()
            .flatten()
    }
}

#[async_trait]
impl BlobStore for DiskCachedStore {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.inner.put(key, data).await
    }

    async fn get(&self, key: &str, options: GetOptions) -> Result<Bytes, StoreError> {
        if !self.cacheable(key) {
            return self.inner.get(key, options).await;
        }
        if let Some(bytes) = self.cached(key, &options).await {
            self.hit();
            return Ok(bytes);
        }
        let range = options.range.clone();
        let bytes = self.inner.get(key, options).await?;
        self.missed(key, range.as_ref());
        Ok(bytes)
    }

    async fn get_decoded(
        &self,
        key: &str,
        options: GetOptions,
        decode: Decoder,
    ) -> Result<Vec<Bytes>, StoreError> {
        if !self.cacheable(key) {
            return self.inner.get_decoded(key, options, decode).await;
        }
        if let Some(bytes) = self.cached(key, &options).await {
            match decode_read(self.inner.name(), key, &decode, bytes).await {
                Ok(decoded) => {
                    self.hit();
                    return Ok(decoded);
                }
                Err(error) => {
                    tracing::warn!(%key, %error, "a cached object is damaged; deleting it and reading the store");
                    let (cache, doomed) = (self.cache.clone(), key.to_owned());
                    let _ = tokio::task::spawn_blocking(move || cache.forget(&doomed)).await;
                }
            }
        }
        let range = options.range.clone();
        let decoded = self.inner.get_decoded(key, options, decode).await?;
        self.missed(key, range.as_ref());
        Ok(decoded)
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.inner.head(key).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await?;
        if self.cacheable(key) {
            let (cache, key) = (self.cache.clone(), key.to_owned());
            let _ = tokio::task::spawn_blocking(move || cache.forget(&key)).await;
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.inner.list(prefix).await
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.inner.check().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::FsStore;
    use std::time::Duration;

    async fn fixture(capacity: u64) -> (tempfile::TempDir, Arc<FsStore>, Arc<DiskCache>, DiskCachedStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FsStore::open(dir.path().join("store")).unwrap());
        let cache =
            DiskCache::open_with_retry(&dir.path().join("cache"), capacity, Duration::from_millis(100));
        let verify: Verifier = Arc::new(|_: &str, bytes: &[u8]| !bytes.starts_with(b"bad"));
        let cached = DiskCachedStore::new(store.clone(), cache.clone(), "packs/", verify);
        (dir, store, cache, cached)
    }

    /// A store that counts the reads made of it.
    #[derive(Debug)]
    struct Counting {
        inner: Arc<FsStore>,
        gets: std::sync::atomic::AtomicU64,
    }

    impl Counting {
        fn gets(&self) -> u64 {
            self.gets.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl BlobStore for Counting {
        fn name(&self) -> &str {
            "counting"
        }
        async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
            self.inner.put(key, data).await
        }
        async fn get(&self, key: &str, options: GetOptions) -> Result<Bytes, StoreError> {
            self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.get(key, options).await
        }
        async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
            self.inner.head(key).await
        }
        async fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.inner.delete(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
            self.inner.list(prefix).await
        }
    }

    async fn settled(cache: &DiskCache, bytes: u64) {
        for _ in 0..200 {
            if cache.status().bytes == bytes {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the cache holds {:?}, not {bytes} bytes", cache.status());
    }

    /// Copies kept, evictions and forgets of the same keys racing on several threads leave
    /// an index that matches the directory: every indexed object has its file at its size,
    /// the total is their sum, and no cache file is left unindexed.
    #[test]
    fn racing_fills_evictions_and_forgets_keep_index_and_files_in_step() {
        let dir = tempfile::tempdir().unwrap();
        // Room for about four of the twelve objects: most fills evict.
        let cache = DiskCache::open(dir.path(), 4 * 4096);
        let threads: Vec<_> = (0..4u64)
            .map(|thread| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    let mut state = thread.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                    for _ in 0..3000 {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        let key = format!("packs/{}", state % 12);
                        if state % 5 == 0 {
                            cache.forget(&key);
                        } else {
                            // As a fill does: admitted (one copy of a key at a time),
                            // then kept.
                            if cache.index.lock().unwrap().filling.insert(key.clone()) {
                                let size = 4096 - (state % 12) as usize * 8;
                                cache.keep(&key, &vec![(state % 251) as u8; size]);
                            }
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let index = cache.index.lock().unwrap();
        let mut sum = 0;
        for (key, (size, _)) in &index.entries {
            let on_disk = std::fs::metadata(cache.path_of(key)).map(|m| m.len());
            assert_eq!(on_disk.ok(), Some(*size), "{key} is indexed at {size} bytes");
            sum += size;
        }
        assert_eq!(index.total, sum);
        assert_eq!(index.pending, 0);
        assert!(index.total <= cache.capacity);
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            let key = key_of(&name).unwrap_or_else(|| panic!("a stray file {name}"));
            assert!(
                index.entries.contains_key(&key),
                "{name} is on disk but not indexed"
            );
        }
    }

    #[tokio::test]
    async fn objects_read_twice_are_kept_least_recent_evicted_first() {
        let (_dir, store, cache, cached) = fixture(250_000).await;
        for n in 0..4u8 {
            store
                .put(&format!("packs/{n}"), Bytes::from(vec![n; 100_000]))
                .await
                .unwrap();
        }
        store
            .put("other/x", Bytes::from_static(b"not cached"))
            .await
            .unwrap();
        // A scan reads each object once: nothing is kept.
        for n in 0..4 {
            cached
                .get(&format!("packs/{n}"), GetOptions::default())
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(cache.status().bytes, 0);
        // Read again: kept, within the capacity, the oldest evicted.
        for n in 0..4 {
            cached
                .get(&format!("packs/{n}"), GetOptions::default())
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        settled(&cache, 200_000).await;
        // Two different parts of one object, read once each (one download's spans): not kept.
        store.put("packs/9", Bytes::from(vec![9u8; 1000])).await.unwrap();
        cached.get("packs/9", GetOptions::range(0..500)).await.unwrap();
        cached.get("packs/9", GetOptions::range(500..1000)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(cache.status().bytes, 200_000);
        let hits_before = cache.status().hits;
        let part = cached.get("packs/3", GetOptions::range(10..20)).await.unwrap();
        assert_eq!(&part[..], &[3u8; 10]);
        assert_eq!(cache.status().hits, hits_before + 1);
        // Deleting through the wrapper forgets the copy.
        cached.delete("packs/3").await.unwrap();
        settled(&cache, 100_000).await;
        assert!(cached.get("packs/3", GetOptions::default()).await.is_err());
        cached.get("other/x", GetOptions::default()).await.unwrap();
        cached.get("other/x", GetOptions::default()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(cache.status().bytes, 100_000, "only the prefix is cached");
        // A restart finds what was kept.
        let reopened = DiskCache::open(&cache.dir, 250_000);
        assert_eq!(reopened.status().bytes, 100_000);
    }

    #[tokio::test]
    async fn a_damaged_copy_is_dropped_and_the_store_read() {
        let (_dir, store, cache, cached) = fixture(1_000_000).await;
        store.put("packs/a", Bytes::from(vec![7u8; 1000])).await.unwrap();
        for _ in 0..2 {
            cached.get("packs/a", GetOptions::default()).await.unwrap();
        }
        settled(&cache, 1000).await;
        std::fs::write(cache.path_of("packs/a"), vec![8u8; 1000]).unwrap();
        let decoder: Decoder = Arc::new(|bytes: &Bytes| {
            if bytes.iter().all(|b| *b == 7) {
                Ok(vec![Bytes::copy_from_slice(bytes)])
            } else {
                Err("not sevens".to_owned())
            }
        });
        let decoded = cached
            .get_decoded("packs/a", GetOptions::default(), decoder)
            .await
            .unwrap();
        assert_eq!(decoded[0].len(), 1000);
        assert_eq!(cache.status().bytes, 0, "the damaged copy is gone");
        // An object the store holds damaged (its check fails) is not kept.
        store
            .put("packs/b", Bytes::from_static(b"bad bytes"))
            .await
            .unwrap();
        for _ in 0..2 {
            cached.get("packs/b", GetOptions::default()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(cache.status().bytes, 0);
    }

    #[tokio::test]
    async fn an_unwritable_directory_is_reported_and_reads_go_on() {
        let (dir, store, cache, cached) = fixture(1_000_000).await;
        store.put("packs/a", Bytes::from(vec![1u8; 1000])).await.unwrap();
        // The directory is replaced by a file: nothing can be written there.
        std::fs::remove_dir_all(&cache.dir).unwrap();
        std::fs::write(&cache.dir, b"in the way").unwrap();
        for _ in 0..3 {
            assert_eq!(
                cached.get("packs/a", GetOptions::default()).await.unwrap().len(),
                1000
            );
        }
        for _ in 0..200 {
            if cache.problem().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let problem = cache.problem().expect("the problem is reported");
        assert!(problem.contains("cannot write"), "{problem}");
        // Fixed: the next copy tried (after a short wait here) clears it.
        std::fs::remove_file(&cache.dir).unwrap();
        store.put("packs/b", Bytes::from(vec![2u8; 1000])).await.unwrap();
        for _ in 0..100 {
            if cache.status().bytes == 1000 {
                break;
            }
            cached.get("packs/b", GetOptions::default()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        settled(&cache, 1000).await;
        assert_eq!(cache.problem(), None);
        // A cache that cannot even be opened still lets the store serve.
        let blocked = dir.path().join("blocked");
        std::fs::write(&blocked, b"file").unwrap();
        let unusable = DiskCache::open(&blocked.join("cache"), 1000);
        assert!(unusable.problem().unwrap().contains("cannot use"));
    }

    /// While the directory is broken, objects read twice are not fetched whole from the
    /// store only to fail to be kept: one copy is tried, then none until the wait is over,
    /// and a retry that fails its test write costs the store nothing.
    #[tokio::test]
    async fn a_broken_directory_costs_the_store_no_copies_until_it_is_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Counting {
            inner: Arc::new(FsStore::open(dir.path().join("store")).unwrap()),
            gets: Default::default(),
        });
        let cache =
            DiskCache::open_with_retry(&dir.path().join("cache"), 1 << 20, Duration::from_millis(300));
        let verify: Verifier = Arc::new(|_: &str, _: &[u8]| true);
        let cached = DiskCachedStore::new(store.clone(), cache.clone(), "packs/", verify);
        for n in 0..8u8 {
            store
                .put(&format!("packs/{n}"), Bytes::from(vec![n; 1000]))
                .await
                .unwrap();
        }
        std::fs::remove_dir_all(&cache.dir).unwrap();
        std::fs::write(&cache.dir, b"in the way").unwrap();
        let read_twice = |n: u8| {
            let cached = &cached;
            async move {
                for _ in 0..2 {
                    let bytes = cached
                        .get(&format!("packs/{n}"), GetOptions::default())
                        .await
                        .unwrap();
                    assert_eq!(bytes.len(), 1000);
                }
            }
        };
        // The first object read twice is copied (a whole read of it), and that fails.
        read_twice(0).await;
        for _ in 0..200 {
            if cache.problem().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(cache.problem().is_some(), "the failed copy is reported");
        assert_eq!(store.gets(), 3, "two reads and one copy");
        // Until the wait is over, reads are the store's only requests.
        for n in 1..5 {
            read_twice(n).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(store.gets(), 3 + 8, "no copies while the directory is broken");
        // After it, a try: its test write fails, so the store is not asked for the object,
        // and the next wait is longer.
        tokio::time::sleep(Duration::from_millis(350)).await;
        read_twice(5).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(store.gets(), 3 + 8 + 2, "a retry that cannot write reads nothing");
        let retry_at = cache.problem.lock().unwrap().as_ref().unwrap().wait;
        assert_eq!(retry_at, Duration::from_millis(600), "the wait doubles");
        // A directory that works again: the try after the wait keeps the copy and clears
        // the problem.
        std::fs::remove_file(&cache.dir).unwrap();
        tokio::time::sleep(Duration::from_millis(650)).await;
        read_twice(6).await;
        settled(&cache, 1000).await;
        assert_eq!(cache.problem(), None);
        assert_eq!(store.gets(), 3 + 8 + 2 + 3);
    }

    /// A copy that cannot be removed to make room stays indexed (the index matches the
    /// directory), and the copy that needed the room is not written.
    #[test]
    fn copies_that_cannot_be_evicted_stay_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 2500);
        for key in ["packs/a", "packs/b"] {
            cache.index.lock().unwrap().filling.insert(key.to_owned());
            cache.keep(key, &[1u8; 1000]);
        }
        assert_eq!(cache.status().bytes, 2000);
        // The least recent copy's name now holds something no file removal takes away
        // (permissions would not stop a test running as root).
        let oldest = cache.path_of("packs/a");
        std::fs::remove_file(&oldest).unwrap();
        std::fs::create_dir(&oldest).unwrap();
        std::fs::write(oldest.join("inside"), b"x").unwrap();
        cache.index.lock().unwrap().filling.insert("packs/c".to_owned());
        cache.keep("packs/c", &[2u8; 1000]);
        assert_eq!(cache.status().bytes, 2000, "nothing evicted, nothing added");
        assert!(
            cache.problem().unwrap().contains("cannot remove old copies"),
            "{:?}",
            cache.problem()
        );
        let index = cache.index.lock().unwrap();
        assert!(index.entries.contains_key("packs/a") && index.entries.contains_key("packs/b"));
        assert!(!index.entries.contains_key("packs/c") && !index.filling.contains("packs/c"));
        assert!(!cache.path_of("packs/c").exists());
    }
}
