//! One conformance suite, run against every `BlobStore`: the filesystem store, and the S3
//! store over HTTP against two independent S3 servers (in-process s3s-fs, and moto).

mod common;

use artifactd::buffers::BufferPool;
use artifactd::storage::{BlobStore, FsStore, GetOptions, S3Store, S3StoreConfig, StoreError};
use bytes::Bytes;
use common::moto::MotoServer;
use common::noise;
use common::s3::S3TestServer;
use std::sync::Arc;

async fn conformance(store: Arc<dyn BlobStore>) {
    let name = store.name().to_owned();

    // Missing objects.
    assert!(
        store.head("packs/aa/missing.pack").await.unwrap().is_none(),
        "{name}: head of a missing key"
    );
    let missing = store
        .get("packs/aa/missing.pack", GetOptions::default())
        .await
        .unwrap_err();
    assert!(
        missing.is_not_found(),
        "{name}: get of a missing key gave {missing:?}"
    );
    assert!(!missing.is_retryable(), "{name}: not-found must not be retryable");

    // Put, then whole and ranged reads.
    let data = Bytes::from(noise(300_000, 1));
    store.put("packs/ab/one.pack", data.clone()).await.unwrap();
    assert_eq!(
        store
            .get("packs/ab/one.pack", GetOptions::default())
            .await
            .unwrap(),
        data,
        "{name}: whole get"
    );
    let ranged = store
        .get("packs/ab/one.pack", GetOptions::range(1000..70_000))
        .await
        .unwrap();
    assert_eq!(ranged, data.slice(1000..70_000), "{name}: ranged get");
    let tail = store
        .get("packs/ab/one.pack", GetOptions::range(299_990..300_000))
        .await
        .unwrap();
    assert_eq!(tail, data.slice(299_990..), "{name}: range at the end");
    let empty = store
        .get("packs/ab/one.pack", GetOptions::range(5..5))
        .await
        .unwrap();
    assert!(empty.is_empty(), "{name}: empty range");
    let past_end = store
        .get("packs/ab/one.pack", GetOptions::range(299_000..300_001))
        .await
        .unwrap_err();
    assert!(
        matches!(past_end, StoreError::InvalidRange { .. }),
        "{name}: range past the end gave {past_end:?}"
    );
    assert_eq!(
        store.head("packs/ab/one.pack").await.unwrap().unwrap().size,
        300_000,
        "{name}: head size"
    );

    // Read into a pool's buffer: the same bytes, whole or ranged, and the buffer goes back
    // to the pool once the last slice of what was read is dropped.
    let large = Bytes::from(noise(3 * 1024 * 1024, 7));
    store.put("packs/ad/large.pack", large.clone()).await.unwrap();
    let pool = BufferPool::new(64 * 1024 * 1024);
    for range in [None, Some(1000..2_500_000), Some(2_000_000..3 * 1024 * 1024)] {
        let options = GetOptions {
            range: range.clone(),
            ..GetOptions::default()
        }
        .into_pool(pool.clone());
        let read = store.get("packs/ad/large.pack", options).await.unwrap();
        let expected = match &range {
            Some(range) => large.slice(range.start as usize..range.end as usize),
            None => large.clone(),
        };
        assert_eq!(read, expected, "{name}: read into a pool's buffer, {range:?}");
        let before = pool.idle_bytes();
        let slice = read.slice(10..20);
        drop(read);
        assert_eq!(
            pool.idle_bytes(),
            before,
            "{name}: a slice still holds the buffer"
        );
        drop(slice);
        assert!(
            pool.idle_bytes() >= before + expected.len(),
            "{name}: the buffer of {range:?} went back to the pool"
        );
    }
    let reused = store
        .get(
            "packs/ab/one.pack",
            GetOptions::range(0..300_000).into_pool(pool.clone()),
        )
        .await
        .unwrap();
    assert_eq!(reused, data, "{name}: a small read into a pool");
    store.delete("packs/ad/large.pack").await.unwrap();

    // Putting the same content again is harmless; empty objects work.
    store.put("packs/ab/one.pack", data.clone()).await.unwrap();
    assert_eq!(
        store
            .get("packs/ab/one.pack", GetOptions::default())
            .await
            .unwrap(),
        data
    );
    store.put("packs/ac/empty.pack", Bytes::new()).await.unwrap();
    assert_eq!(store.head("packs/ac/empty.pack").await.unwrap().unwrap().size, 0);
    assert!(
        store
            .get("packs/ac/empty.pack", GetOptions::default())
            .await
            .unwrap()
            .is_empty()
    );

    // Listing by prefix, sorted, exact sizes, nothing outside the prefix.
    store
        .put("packs/ab/two.pack", Bytes::from_static(b"two"))
        .await
        .unwrap();
    store
        .put("other/ab/three", Bytes::from_static(b"three"))
        .await
        .unwrap();
    let listed = store.list("packs/ab/").await.unwrap();
    let keys: Vec<(&str, u64)> = listed.iter().map(|m| (m.key.as_str(), m.size)).collect();
    assert_eq!(
        keys,
        vec![("packs/ab/one.pack", 300_000), ("packs/ab/two.pack", 3)],
        "{name}: list"
    );
    let partial = store.list("packs/ab/t").await.unwrap();
    assert_eq!(partial.len(), 1, "{name}: list with a partial name");
    let everything = store.list("").await.unwrap();
    assert_eq!(everything.len(), 4, "{name}: list everything gave {everything:?}");

    // Delete is idempotent.
    store.delete("packs/ab/two.pack").await.unwrap();
    store.delete("packs/ab/two.pack").await.unwrap();
    assert!(store.head("packs/ab/two.pack").await.unwrap().is_none());
    assert_eq!(store.list("packs/ab/").await.unwrap().len(), 1);

    // Keys that could escape or confuse are refused before any I/O.
    for bad in ["", "/abs", "a//b", "a/../b", "a/./b", "trailing/", "sp ace"] {
        let error = store.put(bad, Bytes::from_static(b"x")).await.unwrap_err();
        assert!(
            matches!(error, StoreError::InvalidKey { .. }),
            "{name}: key {bad:?} gave {error:?}"
        );
    }

    // Concurrent puts of different keys all land.
    let writes = (0..16).map(|i| {
        let store = store.clone();
        async move {
            let body = Bytes::from(noise(10_000 + i, i as u64));
            store
                .put(&format!("concurrent/{i:02}"), body.clone())
                .await
                .unwrap();
            body
        }
    });
    let bodies = futures::future::join_all(writes).await;
    for (i, body) in bodies.iter().enumerate() {
        let read = store
            .get(&format!("concurrent/{i:02}"), GetOptions::default())
            .await
            .unwrap();
        assert_eq!(&read, body, "{name}: concurrent put {i}");
    }
}

/// Objects above the multipart threshold go up in parts and read back whole.
async fn multipart(store: S3Store) {
    let data = Bytes::from(noise(12 * 1024 * 1024 + 12_345, 9));
    store.put("packs/mp/large.pack", data.clone()).await.unwrap();
    assert_eq!(
        store.head("packs/mp/large.pack").await.unwrap().unwrap().size,
        data.len() as u64
    );
    let read = store
        .get("packs/mp/large.pack", GetOptions::default())
        .await
        .unwrap();
    assert!(read == data, "multipart object differs after reading back");
    let middle = store
        .get("packs/mp/large.pack", GetOptions::range(5_000_000..7_000_000))
        .await
        .unwrap();
    assert!(middle == data.slice(5_000_000..7_000_000));
}

fn small_multipart(mut config: artifactd::storage::S3StoreConfig) -> S3Store {
    config.multipart_threshold_bytes = 6 * 1024 * 1024;
    config.multipart_part_bytes = 5 * 1024 * 1024;
    S3Store::new(config)
}

#[tokio::test]
async fn fs_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance(Arc::new(FsStore::open(dir.path()).unwrap())).await;
}

#[tokio::test]
async fn fs_store_leaves_no_temporary_files_visible() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    store
        .put("packs/aa/x.pack", Bytes::from_static(b"x"))
        .await
        .unwrap();
    // A crash mid-write leaves a file in the temp area; reopening clears it and it is never listed.
    std::fs::write(dir.path().join(".tmp/partial"), b"half").unwrap();
    assert_eq!(store.list("").await.unwrap().len(), 1);
    let reopened = FsStore::open(dir.path()).unwrap();
    assert!(!dir.path().join(".tmp/partial").exists());
    assert_eq!(reopened.list("").await.unwrap().len(), 1);
}

/// What the S3 server recorded as the CRC32C of `key`, asked with a client of its own.
async fn recorded_crc32c(config: &S3StoreConfig, key: &str) -> Option<String> {
    let credentials = aws_sdk_s3::config::Credentials::new(
        config.access_key_id.clone().unwrap(),
        config.secret_access_key.as_ref().unwrap().expose(),
        None,
        None,
        "conformance",
    );
    let client = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(config.region.clone()))
            .endpoint_url(config.endpoint_url.clone().unwrap())
            .force_path_style(true)
            .credentials_provider(credentials)
            .build(),
    );
    client
        .head_object()
        .bucket(&config.bucket)
        .key(key)
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await
        .unwrap()
        .checksum_crc32_c()
        .map(str::to_owned)
}

/// A put sends the body's CRC32C (its payload is not signed): the server checks the body
/// against it (s3s-fs refuses a mismatch) and keeps it.
async fn puts_carry_their_crc32c(config: S3StoreConfig) {
    use base64::Engine as _;
    let store = S3Store::new(config.clone());
    for (key, body) in [
        ("packs/ae/checked.pack", Bytes::from(noise(200_000, 9))),
        ("packs/ae/known", Bytes::from_static(b"123456789")),
    ] {
        store.put(key, body.clone()).await.unwrap();
        let expected = base64::engine::general_purpose::STANDARD.encode(crc32c::crc32c(&body).to_be_bytes());
        assert_eq!(recorded_crc32c(&config, key).await, Some(expected), "{key}");
    }
    // The check value of CRC-32C: the encoding itself is right, not only self-consistent.
    assert_eq!(
        recorded_crc32c(&config, "packs/ae/known").await.as_deref(),
        Some("4waSgw==")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_conforms_on_s3s_fs() {
    let server = S3TestServer::start().await;
    conformance(Arc::new(server.store("conformance").await)).await;
    puts_carry_their_crc32c(server.store_config("conformance")).await;
    let store = small_multipart(server.store_config("conformance"));
    multipart(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_conforms_on_moto() {
    let server = MotoServer::start().await;
    conformance(Arc::new(server.store("conformance").await)).await;
    puts_carry_their_crc32c(server.store_config("conformance")).await;
    let store = small_multipart(server.store_config("conformance"));
    multipart(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_reports_a_stopped_server_as_retryable() {
    let mut server = S3TestServer::start().await;
    let mut config = server.store_config("retry");
    config.max_attempts = 1;
    config.request_timeout = std::time::Duration::from_secs(2);
    let store = S3Store::new(config);
    store.ensure_bucket().await.unwrap();
    store
        .put("packs/aa/x.pack", Bytes::from_static(b"x"))
        .await
        .unwrap();
    server.stop().await;
    let error = store
        .get("packs/aa/x.pack", GetOptions::default())
        .await
        .unwrap_err();
    assert!(
        error.is_retryable(),
        "a stopped server should be retryable, got {error:?}"
    );
    server.restart().await;
    assert_eq!(
        store.get("packs/aa/x.pack", GetOptions::default()).await.unwrap(),
        Bytes::from_static(b"x"),
        "data survives a restart"
    );
}
