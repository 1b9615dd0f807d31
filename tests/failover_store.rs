//! `FailoverStore` in-process: the BlobStore conformance suite in every state the pair can
//! be in, and its decisions (failover accounting, read repair, repair of damaged copies,
//! reconciliation, stalled stores) driven with the unreliable wrapper over real stores and a
//! real SQLite catalog as the replication log.

mod common;

use artifactd::catalog::Catalog;
use artifactd::domain::Result as DomainResult;
use artifactd::storage::unreliable::{Fault, Operation, UnreliableStore};
use artifactd::storage::{
    BlobStore, BreakerConfig, BreakerState, DeadlineConfig, DeadlineStore, DynBlobStore, FailoverConfig,
    FailoverStore, FsStore, GetOptions, ObjectInventory, ObjectMeta, ObjectVerifier, ReplicationLog, Side,
    StoreError,
};
use bytes::Bytes;
use common::noise;
use common::s3::S3TestServer;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One side: a real store, the unreliable wrapper over it, and a deadline over that.
struct TestSide {
    real: DynBlobStore,
    unreliable: Arc<UnreliableStore>,
}

struct Pair {
    _dirs: Vec<tempfile::TempDir>,
    primary: TestSide,
    fallback: TestSide,
    catalog: Catalog,
    inventory: Arc<ListedInventory>,
    store: Arc<FailoverStore>,
}

/// A fixed list of what both sides must hold.
#[derive(Debug, Default)]
struct ListedInventory(Mutex<Vec<ObjectMeta>>);

#[async_trait::async_trait]
impl ObjectInventory for ListedInventory {
    async fn expected_objects(&self, after: &str, limit: u32) -> DomainResult<Vec<ObjectMeta>> {
        let mut objects = self.0.lock().unwrap().clone();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects
            .into_iter()
            .filter(|object| object.key.as_str() > after)
            .take(limit as usize)
            .collect())
    }
}

fn side(real: DynBlobStore) -> TestSide {
    TestSide {
        unreliable: Arc::new(UnreliableStore::new(real.clone())),
        real,
    }
}

fn config() -> FailoverConfig {
    FailoverConfig {
        request_timeout: Duration::from_secs(30),
        probe_interval: Duration::from_secs(3600),
        breaker: BreakerConfig {
            failure_threshold: 3,
            open_backoff_initial: Duration::from_millis(200),
            open_backoff_max: Duration::from_millis(200),
            ..BreakerConfig::default()
        },
        replication_retry_initial: Duration::from_millis(1),
        replication_retry_max: Duration::from_millis(1),
        ..FailoverConfig::default()
    }
}

/// A decoder that accepts exactly `expected` and refuses anything else as damaged, as the
/// download path's chunk-hash check does.
fn accepting_only(expected: Bytes) -> artifactd::storage::Decoder {
    Arc::new(move |bytes: &Bytes| {
        if bytes == &expected[..] {
            Ok(vec![Bytes::copy_from_slice(bytes)])
        } else {
            Err("not the bytes that were written".to_owned())
        }
    })
}

/// A keyed-by-hash verifier, as packs are named by the blake3 of their bytes.
fn hash_named() -> ObjectVerifier {
    Arc::new(|key: &str, bytes: &[u8]| {
        let Some(name) = key.rsplit('/').next() else {
            return false;
        };
        name == blake3::hash(bytes).to_hex().as_str()
    })
}

/// Where reconciliation looks (`packs/`), named by the content's hash.
fn hash_key(bytes: &[u8]) -> String {
    let hex = blake3::hash(bytes).to_hex();
    format!("packs/{}/{hex}", &hex[..2])
}

async fn pair_over(
    primary: DynBlobStore,
    fallback: DynBlobStore,
    dirs: Vec<tempfile::TempDir>,
    verifier: Option<ObjectVerifier>,
) -> Pair {
    let catalog_dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::connect(
        &format!("sqlite://{}/catalog.db", catalog_dir.path().display()),
        4,
    )
    .await
    .unwrap();
    let primary = side(primary);
    let fallback = side(fallback);
    let deadline = DeadlineConfig {
        ceiling: Duration::from_secs(60),
        // Well above an fsync on a busy disk (a 100 ms floor failed a healthy fallback's
        // write under a loaded CI run), well below the 30 s ceiling a stall is measured by.
        floor: Duration::from_secs(1),
        min_samples: 4,
        ..DeadlineConfig::default()
    };
    let inventory = Arc::new(ListedInventory::default());
    let store = Arc::new(FailoverStore::new(
        Arc::new(DeadlineStore::new(primary.unreliable.clone(), deadline.clone())),
        Arc::new(DeadlineStore::new(fallback.unreliable.clone(), deadline)),
        Arc::new(catalog.clone()),
        Some(inventory.clone()),
        config(),
        verifier,
    ));
    let mut dirs = dirs;
    dirs.push(catalog_dir);
    Pair {
        _dirs: dirs,
        primary,
        fallback,
        catalog,
        inventory,
        store,
    }
}

async fn fs_pair(verifier: Option<ObjectVerifier>) -> Pair {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary: DynBlobStore = Arc::new(FsStore::open(a.path()).unwrap());
    let fallback: DynBlobStore = Arc::new(FsStore::open(b.path()).unwrap());
    pair_over(primary, fallback, vec![a, b], verifier).await
}

async fn queued_for(pair: &Pair, side: Side) -> u64 {
    pair.catalog.stats(0).await.unwrap().pending_for(side)
}

// ---- conformance ---------------------------------------------------------------------------

/// What a scenario allows the suite to rely on.
struct Expect {
    /// Plain reads return exact bytes (false when one side silently returns damaged bytes:
    /// only a decoder can tell).
    exact_plain_reads: bool,
    /// Both sides answer. With one down, a list fails (it needs both), and "missing" or
    /// "damaged" on the other cannot be told from "maybe good on the side that is down".
    both_answer: bool,
}

async fn conformance(store: Arc<dyn BlobStore>, expect: Expect, scenario: &str) {
    let data = Bytes::from(noise(200_000, 3));
    let key = "packs/ab/one.pack";
    store
        .put(key, data.clone())
        .await
        .unwrap_or_else(|e| panic!("{scenario}: put: {e}"));
    // Reads through a decoder that accepts only the true bytes: a damaged copy is refused
    // and the other side's is used.
    let exact = accepting_only(data.slice(1000..50_000));
    let decoded = store
        .get_decoded(key, GetOptions::range(1000..50_000), exact)
        .await
        .unwrap_or_else(|e| panic!("{scenario}: decoded read: {e}"));
    assert_eq!(
        decoded,
        vec![data.slice(1000..50_000)],
        "{scenario}: decoded read"
    );
    let refusing: artifactd::storage::Decoder = Arc::new(|_: &bytes::Bytes| Err("refused".to_owned()));
    let refused = store
        .get_decoded(key, GetOptions::range(0..10), refusing)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::Corrupt { .. }) || (!expect.both_answer && refused.is_retryable()),
        "{scenario}: a refused decode is Corrupt, got {refused:?}"
    );
    if expect.exact_plain_reads {
        assert_eq!(
            store.get(key, GetOptions::default()).await.unwrap(),
            data,
            "{scenario}: get"
        );
        assert_eq!(
            store.get(key, GetOptions::range(10..20)).await.unwrap(),
            data.slice(10..20),
            "{scenario}: ranged get"
        );
    }
    assert_eq!(
        store.head(key).await.unwrap().unwrap().size,
        200_000,
        "{scenario}: head"
    );
    let missing = store.get("packs/zz/none.pack", GetOptions::default()).await;
    match missing {
        Err(error) if error.is_not_found() => {}
        // With one side down, "missing" cannot be told from "on the side that is down".
        Err(error) if error.is_retryable() && !expect.both_answer => {}
        other => panic!("{scenario}: missing key gave {other:?}"),
    }
    if expect.both_answer {
        store
            .put("packs/ab/two.pack", Bytes::from_static(b"two"))
            .await
            .unwrap();
        let listed: Vec<String> = store
            .list("packs/ab/")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(
            listed,
            vec!["packs/ab/one.pack", "packs/ab/two.pack"],
            "{scenario}: list"
        );
    }
    let bad = store.put("a/../b", Bytes::from_static(b"x")).await.unwrap_err();
    assert!(
        matches!(bad, StoreError::InvalidKey { .. }),
        "{scenario}: bad key gave {bad:?}"
    );
    // A delete must reach both sides; with one down it is refused, to be retried.
    match store.delete(key).await {
        Ok(()) => {}
        Err(error) if error.is_retryable() && !expect.both_answer => {}
        Err(error) => panic!("{scenario}: delete: {error}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_store_conforms_in_every_state() {
    type Break = fn(&Pair);
    let scenarios: [(&str, Break, Expect); 5] = [
        (
            "both up",
            |_| {},
            Expect {
                exact_plain_reads: true,
                both_answer: true,
            },
        ),
        (
            "primary down",
            |pair| pair.primary.unreliable.inject(None, Fault::Fail, None),
            Expect {
                exact_plain_reads: true,
                both_answer: false,
            },
        ),
        (
            "fallback down",
            |pair| pair.fallback.unreliable.inject(None, Fault::Fail, None),
            Expect {
                exact_plain_reads: true,
                both_answer: false,
            },
        ),
        (
            "primary corrupt",
            |pair| {
                pair.primary
                    .unreliable
                    .inject(Some(Operation::Get), Fault::CorruptRead, None)
            },
            Expect {
                exact_plain_reads: false,
                both_answer: true,
            },
        ),
        (
            "primary wiped",
            |pair| {
                pair.primary
                    .unreliable
                    .inject(Some(Operation::Get), Fault::Lost, None);
                pair.primary
                    .unreliable
                    .inject(Some(Operation::Head), Fault::Lost, None);
            },
            Expect {
                exact_plain_reads: true,
                both_answer: true,
            },
        ),
    ];
    for (scenario, break_it, expect) in scenarios {
        let pair = fs_pair(None).await;
        break_it(&pair);
        conformance(pair.store.clone(), expect, scenario).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_store_conforms_over_two_s3_servers() {
    let (primary_server, fallback_server) = (S3TestServer::start().await, S3TestServer::start().await);
    let primary: DynBlobStore = Arc::new(primary_server.store("primary").await);
    let fallback: DynBlobStore = Arc::new(fallback_server.store("fallback").await);
    let pair = pair_over(primary, fallback, Vec::new(), None).await;
    conformance(
        pair.store.clone(),
        Expect {
            exact_plain_reads: true,
            both_answer: true,
        },
        "s3 pair",
    )
    .await;
}

// ---- decisions ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_failed_write_is_not_a_failover() {
    let pair = fs_pair(None).await;
    pair.primary
        .unreliable
        .inject(Some(Operation::Put), Fault::Fail, Some(1));
    let data = Bytes::from_static(b"one failed put");
    pair.store.put("objects/a", data.clone()).await.unwrap();
    assert_eq!(
        pair.store.metrics().failover_count,
        0,
        "one failure is not a failover"
    );
    let status = pair.store.status().await.unwrap();
    assert_eq!(status.write_target, Side::Primary);
    assert!(status.last_failover.is_none() && status.last_failback.is_none());
    assert_eq!(
        queued_for(&pair, Side::Primary).await,
        1,
        "the copy the primary missed is queued"
    );
    assert!(status.degraded(), "the primary lacks an object it should hold");
    pair.store.replicate_due().await;
    assert_eq!(
        pair.primary
            .real
            .get("objects/a", GetOptions::default())
            .await
            .unwrap(),
        data
    );
    assert!(!pair.store.status().await.unwrap().degraded());

    // Three in a row open the primary's breaker: that is a failover, counted once.
    pair.primary
        .unreliable
        .inject(Some(Operation::Put), Fault::Fail, Some(3));
    for n in 0..3 {
        pair.store
            .put(&format!("objects/b{n}"), data.clone())
            .await
            .unwrap();
    }
    let status = pair.store.status().await.unwrap();
    assert_eq!(status.write_target, Side::Fallback);
    assert_eq!(status.sides[0].breaker.state, BreakerState::Open);
    assert_eq!(pair.store.metrics().failover_count, 1);
    // Once its backoff allows a trial, the prober's canary closes it again: one failback.
    tokio::time::sleep(Duration::from_millis(300)).await;
    pair.store.probe_now().await;
    let status = pair.store.status().await.unwrap();
    assert_eq!(
        status.write_target,
        Side::Primary,
        "{:?}",
        status.sides[0].breaker
    );
    assert!(status.last_failback.is_some());
    assert_eq!(pair.store.metrics().failover_count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_or_a_damaged_copy_on_one_side_is_repaired_by_reading() {
    let pair = fs_pair(Some(hash_named())).await;
    let data = Bytes::from(noise(50_000, 8));
    let key = hash_key(&data);
    pair.store.put(&key, data.clone()).await.unwrap();

    // The primary lost it: the read is served by the fallback and the primary repaired.
    pair.primary.real.delete(&key).await.unwrap();
    assert_eq!(pair.store.get(&key, GetOptions::default()).await.unwrap(), data);
    assert_eq!(queued_for(&pair, Side::Primary).await, 1);
    pair.store.replicate_due().await;
    assert_eq!(
        pair.primary.real.get(&key, GetOptions::default()).await.unwrap(),
        data
    );

    // The primary's copy is damaged on disk (same size, other bytes): a decoding read
    // refuses it, serves the fallback's, and the repair overwrites the damaged copy.
    let mut damaged = data.to_vec();
    damaged[100] ^= 0x55;
    pair.primary.real.put(&key, Bytes::from(damaged)).await.unwrap();
    let decoder = accepting_only(data.clone());
    let read = pair
        .store
        .get_decoded(&key, GetOptions::default(), decoder)
        .await
        .unwrap();
    assert_eq!(read, vec![data.clone()]);
    assert_eq!(queued_for(&pair, Side::Primary).await, 1);
    pair.store.replicate_due().await;
    assert_eq!(queued_for(&pair, Side::Primary).await, 0);
    assert_eq!(
        pair.primary.real.get(&key, GetOptions::default()).await.unwrap(),
        data,
        "the damaged copy was overwritten with a good one"
    );
    assert_eq!(pair.store.status().await.unwrap().sides[0].repaired, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_finds_what_a_wiped_store_lost_and_refills_it() {
    let pair = fs_pair(Some(hash_named())).await;
    let mut keys = Vec::new();
    for n in 0..20 {
        let data = Bytes::from(noise(4096 + n, n as u64));
        let key = hash_key(&data);
        pair.store.put(&key, data.clone()).await.unwrap();
        pair.inventory.0.lock().unwrap().push(ObjectMeta {
            key: key.clone(),
            size: data.len() as u64,
        });
        keys.push((key, data));
    }
    // Wipe the primary behind the service's back, and truncate one fallback copy.
    for (key, _) in &keys {
        pair.primary.real.delete(key).await.unwrap();
    }
    let (short_key, short_data) = &keys[3];
    pair.fallback
        .real
        .put(short_key, short_data.slice(..10))
        .await
        .unwrap();

    let report = pair.store.reconcile().await;
    assert_eq!(report.expected, 20);
    assert_eq!(report.missing_on(Side::Primary), 20);
    assert_eq!(report.damaged_on(Side::Fallback), 1);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let status = pair.store.status().await.unwrap();
    assert!(status.degraded());
    assert_eq!(status.sides[0].lacking, 20);

    for _ in 0..5 {
        pair.store.replicate_due().await;
    }
    for (key, data) in &keys {
        if key == short_key {
            continue;
        }
        assert_eq!(
            &pair.primary.real.get(key, GetOptions::default()).await.unwrap(),
            data
        );
    }
    // The truncated object had no good copy anywhere: it stays queued, with its error
    // visible, rather than being "repaired" with damaged bytes.
    let stats = pair.catalog.stats(10).await.unwrap();
    assert_eq!(stats.depth, 2, "{stats:?}");
    assert!(
        stats.failing.iter().all(|item| item.key == *short_key),
        "{stats:?}"
    );
    assert!(
        stats.failing.iter().any(|item| item
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("does not match its name")),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_primary_costs_an_adaptive_deadline_and_then_nothing() {
    let pair = fs_pair(None).await;
    let data = Bytes::from_static(b"small write");
    // Teach the deadlines what this store's latency is.
    for n in 0..10 {
        pair.store
            .put(&format!("objects/warm{n}"), data.clone())
            .await
            .unwrap();
        pair.store
            .get(&format!("objects/warm{n}"), GetOptions::default())
            .await
            .unwrap();
    }
    pair.primary.unreliable.inject(None, Fault::Stall, None);
    let mut slowest = Duration::ZERO;
    for n in 0..10 {
        let started = Instant::now();
        pair.store
            .put(&format!("objects/stalled{n}"), data.clone())
            .await
            .unwrap();
        let read = pair
            .store
            .get(&format!("objects/warm{n}"), GetOptions::default())
            .await
            .unwrap();
        assert_eq!(read, data);
        slowest = slowest.max(started.elapsed());
    }
    // A stall costs the adaptive deadline (the 1 s floor, or 8 × the p99 the warm-up saw on
    // a busy machine), never the 60 s ceiling a fixed timeout would: a third of it is the
    // bound, wide enough for a loaded CI machine.
    assert!(
        slowest < Duration::from_secs(20),
        "a stalled store cost {slowest:?}"
    );
    let status = pair.store.status().await.unwrap();
    assert_eq!(status.sides[0].breaker.state, BreakerState::Open);
    assert_eq!(
        status.sides[0].lacking, 10,
        "every write the primary missed is queued for it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_write_is_found_by_the_next_read_and_repaired() {
    let pair = fs_pair(Some(hash_named())).await;
    let data = Bytes::from(noise(80_000, 12));
    let key = hash_key(&data);
    // The primary acknowledges the write but keeps only half of it.
    pair.primary
        .unreliable
        .inject(Some(Operation::Put), Fault::TornWrite, Some(1));
    pair.store.put(&key, data.clone()).await.unwrap();
    assert_eq!(pair.primary.real.head(&key).await.unwrap().unwrap().size, 40_000);

    // A read of the whole object sees a range past the end of the torn copy: damaged, so the
    // fallback's copy serves it and the primary's is queued for repair.
    let decoder = accepting_only(data.clone());
    let read = pair
        .store
        .get_decoded(&key, GetOptions::range(0..data.len() as u64), decoder)
        .await
        .unwrap();
    assert_eq!(read, vec![data.clone()]);
    assert_eq!(queued_for(&pair, Side::Primary).await, 1);
    pair.store.replicate_due().await;
    assert_eq!(
        pair.primary.real.get(&key, GetOptions::default()).await.unwrap(),
        data
    );
}
