//! `cargo bench --bench storage`: the data path measured against baselines taken in the
//! same run, printed as `RESULT <name> <value>` lines. Every `_vs_` figure is a throughput
//! ratio, artifactd's divided by the baseline's: above 1 artifactd is faster.
//!
//! Transfers of 256 MiB of random data (each timed step runs twice, alternating baseline and
//! artifactd; the faster run counts):
//! - `upload_vs_s3` / `download_vs_s3`: a gRPC upload/download through artifactd (release
//!   binary, SQLite catalog, default settings: a 256 MiB read passes through the 64 MiB
//!   chunk cache without filling it) into moto's S3 server, against a plain aws-sdk-s3 PUT/GET of the
//!   same bytes to the same server. moto serves GETs several times faster than the in-process
//!   s3s-fs server, so the baseline is not the bottleneck.
//! - `download_vs_disk_http`, `link_download_vs_disk_http`: artifactd's gRPC download, and
//!   the same version through a download link over HTTP, against a raw HTTP/1.1 GET of the
//!   file from local disk (a minimal server in this process, 1 MiB reads).
//! - `embedded_download_vs_disk_http`: a gRPC download from artifactd's embedded store
//!   (local disk, no memory cache) against that same raw GET: disk against disk.
//! - `upload_mib_s`, `download_mib_s`, `direct_put_mib_s`, `direct_get_mib_s`,
//!   `disk_http_get_mib_s`, `link_download_mib_s`.
//! - `cache_hit_download_mib_s`: the last version downloaded from a server whose chunk cache
//!   (320 MiB) holds it, after a first read filled it.
//! - `http_range_mib_s`: 64 ranged GETs of 1 MiB at random offsets through a download link.
//! - `encrypted_upload_ratio` / `encrypted_download_ratio`: with encryption at rest on,
//!   divided by off (1 means encryption costs nothing).
//! - `peak_rss_mib`: the server's peak resident memory after those transfers, and
//!   `peak_rss_mib_quarter_size` after the same round trip at 64 MiB on a fresh server (a
//!   read that size fits the default 64 MiB chunk cache and fills it, where the 256 MiB read
//!   passes it by, so this peak holds a full cache).
//! - `peak_rss_mib_<N>x<size>`: the peak while N clients each upload `size` of random data
//!   generated on the fly, then N download it (the embedded filesystem store; scale set by
//!   `ARTIFACTD_BENCH_STREAMS` and `ARTIFACTD_BENCH_STREAM_MIB`, 16 × 1024 by default: 16 × 4 GiB
//!   would need 64 GiB of disk).
//!
//! Against Debian's `docker-registry` (distribution 2.8, filesystem storage) and artifactd
//! on its embedded filesystem store: `push_vs_registry` / `pull_vs_registry` for the 24 BMAD
//! release tars (as blobs and as versions of one artifact) and `push_vs_registry_random` /
//! `pull_vs_registry_random` for 256 MiB of random data.
//!
//! Edits, on the embedded filesystem store (`history` section):
//! - `history_stored_bytes`: bytes of packs after every version of every bmad-history
//!   document is uploaded in order (one artifact per document), with delta compression on;
//!   `history_stored_bytes_without_deltas` the same with `ingest.delta_max_depth = 0`, and
//!   `history_catalog_bytes` the SQLite catalog's size beside it.
//! - `history_upload_mib_s` (deltas) and `history_upload_plain_mib_s`: the uploads of every
//!   version, one after the other; `history_upload_vs_plain` their ratio (what finding
//!   similar chunks, reading bases and encoding deltas cost a writer).
//! - `history_download_mib_s` (deltas) and `history_download_plain_mib_s`: every version read
//!   back in order after a restart (empty chunk cache); `history_download_vs_plain` their ratio.
//! - `doc_edit_new_bytes`: what a paragraph inserted into the middle of the largest docs file
//!   stores (`new_stored_size` of the new version).
//! - `history_packs` / `mean_pack_bytes`: packs and their mean size after collection merged
//!   the small ones (before: `history_packs_before_compaction`).
//!
//! Small creates (`small` section): every version of every bmad-history document (1,027,
//! 15.6 KB on average) created as an artifact of its own by 32 clients at once, on the
//! embedded store, with each upload writing its own pack (`own`, the baseline), with small
//! uploads sharing packs (`shared`, the default) and sharing with a 2 ms window
//! (`shared_window`): `small_creates_per_s_<c>`, `small_create_p50_ms_<c>`,
//! `small_create_p99_ms_<c>`, `small_uploads_per_pack_<c>`, and the throughput ratios
//! `small_creates_shared_vs_own` and `small_creates_shared_window_vs_own`.
//!
//! The release series and collection, on the in-process S3 server:
//! - `release_series_stored_bytes`: bytes written to the store for the 24 BMAD release tars.
//! - `gc_reclaimed_ratio`: after the older half of the release series is deleted, purged and
//!   collected, the bytes the store gave back divided by the bytes it could give back (store
//!   before, less what the remaining half needs when uploaded alone); `gc_seconds_per_gib`:
//!   collection time per GiB of packs examined. The run asserts the store ends within one pack
//!   of what the remaining versions need, and the consistency check reading every byte is clean.

#[path = "../tests/common/mod.rs"]
mod common;

use artifactd::proto::admin_service_client::AdminServiceClient;
use artifactd::proto::retention_service_client::RetentionServiceClient;
use artifactd::proto::update_artifact_header::NextVersion;
use artifactd::proto::{
    CheckConsistencyRequest, CollectGarbageRequest, CreateArtifactRequest, CreateDownloadLinkRequest,
    DeleteVersionRequest, PurgeTrashRequest, UploadFinish, create_artifact_request,
    download_artifact_response,
};
use artifactd::storage::{BlobStore, GetOptions, S3Store};
use bytes::Bytes;
use common::binary::{ServerOptions, ServerProcess};
use common::client::{Client, create_messages, download, download_request, header, update, update_header};
use common::moto::MotoServer;
use common::s3::S3TestServer;
use http_body_util::BodyExt;
use std::time::{Duration, Instant};

const SIZE: usize = 256 * 1024 * 1024;
const MESSAGE: usize = 256 * 1024;
const ROUNDS: u64 = 2;

async fn bucket_bytes(s3: &S3TestServer, bucket: &str) -> u64 {
    s3.store(bucket)
        .await
        .list("packs/")
        .await
        .unwrap()
        .iter()
        .map(|o| o.size)
        .sum()
}

fn mib_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64()
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<Bytes>,
>;

fn http_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// An HTTP request; the status and the whole body.
async fn request(
    client: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (u16, hyper::HeaderMap, Bytes) {
    let mut request = hyper::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(http_body_util::Full::new(body)).unwrap())
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

async fn upload(client: &mut Client, name: &str, data: &[u8]) -> String {
    let messages = create_messages(header("bench", "storage", "bundle", name), data, MESSAGE);
    client
        .create_artifact(futures::stream::iter(messages))
        .await
        .expect("upload through artifactd")
        .into_inner()
        .artifact
        .unwrap()
        .id
}

async fn link_url(client: &mut Client, project: &str, id: &str) -> String {
    client
        .create_download_link(CreateDownloadLinkRequest {
            tenant: "bench".into(),
            project: project.into(),
            artifact_id: id.into(),
            ttl_seconds: 3600,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .url
}

/// A minimal HTTP/1.1 file server in this process: the baseline for reading a file from
/// local disk over HTTP (1 MiB reads, no other work).
async fn serve_file(path: std::path::PathBuf) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/file",
        axum::routing::get(move || {
            let path = path.clone();
            async move {
                let file = tokio::fs::File::open(&path).await.unwrap();
                let stream = tokio_util::io::ReaderStream::with_capacity(file, 1024 * 1024);
                axum::body::Body::from_stream(stream)
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Whether a section runs: all of them unless `ARTIFACTD_BENCH_SECTIONS` lists some
/// (`transfers`, `registry`, `concurrent`, `prefetch`, `history`, `small`, `series`).
fn section(name: &str) -> bool {
    std::env::var("ARTIFACTD_BENCH_SECTIONS").map_or(true, |list| list.split(',').any(|s| s.trim() == name))
}

#[tokio::main]
async fn main() {
    if section("transfers") {
        transfers().await.print();
    }
    if section("registry") {
        registry_comparison().await.print();
    }
    if section("concurrent") {
        concurrent_rss().await.print();
    }
    if section("prefetch") {
        prefetch().await;
        run_prefetch().await;
    }
    if section("history") {
        history().await;
    }
    if section("small") {
        small_creates().await;
    }
    if section("series") {
        let s3 = S3TestServer::start().await;
        let (releases, stored) = release_series_and_gc(&s3).await;
        let logical: usize = releases.iter().map(|(_, c)| c.len()).sum();
        println!("RESULT release_series_stored_bytes {stored}");
        println!(
            "RESULT release_series_stored_ratio {:.4}",
            stored as f64 / logical as f64
        );
    }
}

/// Every version of every bmad-history document created as an artifact of its own by 32
/// clients at once, on the embedded store: with every upload writing its own pack (the
/// baseline), with small uploads sharing packs, and sharing with a 2 ms window. Three rounds
/// alternate the configurations; each one's fastest round counts.
async fn small_creates() {
    const CLIENTS: usize = 32;
    let documents: Vec<Vec<u8>> = common::history_documents()
        .into_iter()
        .flat_map(|(_, versions)| versions)
        .collect();
    let configurations: [(&str, &[(&str, &str)]); 3] = [
        ("own", &[("ARTIFACTD_INGEST__SHARED_PACK_BELOW_BYTES", "0")]),
        ("shared", &[]),
        (
            "shared_window",
            &[("ARTIFACTD_INGEST__SHARED_PACK_WINDOW_MS", "2")],
        ),
    ];
    // (creates a second, p50 ms, p99 ms, uploads a pack) of each configuration's best round.
    let mut best: Vec<Option<(f64, f64, f64, f64)>> = vec![None; configurations.len()];
    for _round in 0..3 {
        for (at, (_, settings)) in configurations.iter().enumerate() {
            let mut options = experiment(ServerOptions::default());
            for (key, value) in *settings {
                options = options.env(key, *value);
            }
            let server = ServerProcess::start_with(options);
            let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let documents = std::sync::Arc::new(documents.clone());
            let started = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..CLIENTS {
                let mut client = server.client().await;
                let (next, documents) = (next.clone(), documents.clone());
                tasks.spawn(async move {
                    let mut latencies = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(content) = documents.get(i) else { break };
                        let messages = create_messages(
                            header("bench", "small", "doc", &format!("doc-{i}")),
                            content,
                            MESSAGE,
                        );
                        let begun = Instant::now();
                        client
                            .create_artifact(futures::stream::iter(messages))
                            .await
                            .expect("a small create");
                        latencies.push(begun.elapsed().as_secs_f64() * 1000.0);
                    }
                    latencies
                });
            }
            let mut latencies = Vec::new();
            while let Some(done) = tasks.join_next().await {
                latencies.extend(done.unwrap());
            }
            let elapsed = started.elapsed();
            latencies.sort_by(f64::total_cmp);
            let quantile = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
            let packs = common::pack_files(&server.data_dir).len().max(1);
            let figures = (
                documents.len() as f64 / elapsed.as_secs_f64(),
                quantile(0.5),
                quantile(0.99),
                documents.len() as f64 / packs as f64,
            );
            eprintln!("small creates {}: {figures:?}", configurations[at].0);
            if best[at].is_none_or(|previous| figures.0 > previous.0) {
                best[at] = Some(figures);
            }
        }
    }
    for ((label, _), figures) in configurations.iter().zip(&best) {
        let (rate, p50, p99, per_pack) = figures.unwrap();
        println!("RESULT small_creates_per_s_{label} {rate:.1}");
        println!("RESULT small_create_p50_ms_{label} {p50:.2}");
        println!("RESULT small_create_p99_ms_{label} {p99:.2}");
        println!("RESULT small_uploads_per_pack_{label} {per_pack:.2}");
    }
    let rate = |at: usize| best[at].unwrap().0;
    println!("RESULT small_creates_shared_vs_own {:.3}", rate(1) / rate(0));
    println!(
        "RESULT small_creates_shared_window_vs_own {:.3}",
        rate(2) / rate(0)
    );
}

/// The next minor version of `id` in the `history` project.
fn next_minor(id: &str) -> artifactd::proto::UpdateArtifactHeader {
    let mut next = update_header("bench", "history", id);
    next.next_version = Some(NextVersion::Bump(artifactd::proto::BumpKind::Minor as i32));
    next
}

/// bmad-history uploaded version by version, with and without deltas: what it stores, how
/// fast it reads back, and what collection makes of its packs; and one paragraph inserted
/// into the largest docs file.
async fn history() {
    let documents = common::history_documents();
    let logical: usize = documents.iter().flat_map(|(_, v)| v.iter().map(Vec::len)).sum();
    let versions: usize = documents.iter().map(|(_, v)| v.len()).sum();
    eprintln!(
        "history: {} documents, {versions} versions, {logical} bytes",
        documents.len()
    );
    let mut read_rates = Vec::new();
    let mut write_rates = Vec::new();
    for deltas in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let options = || {
            let options = ServerOptions {
                data_dir: Some(dir.path().to_path_buf()),
                ..ServerOptions::default()
            }
            .env("ARTIFACTD_RETENTION__GC_GRACE_SECONDS", "1")
            .env("ARTIFACTD_RETENTION__GC_INTERVAL_SECONDS", "0");
            if deltas {
                options
            } else {
                options.env("ARTIFACTD_INGEST__DELTA_MAX_DEPTH", "0")
            }
        };
        let mut server = ServerProcess::start_with(options());
        let mut client = server.client().await;
        let mut ids = Vec::new();
        let started = Instant::now();
        for (name, versions) in &documents {
            let created =
                common::client::create(&mut client, header("bench", "history", "doc", name), &versions[0])
                    .await
                    .unwrap();
            let id = created.artifact.unwrap().id;
            let mut given = vec![created.version.unwrap().version];
            for content in &versions[1..] {
                let made = update(&mut client, next_minor(&id), content).await.unwrap();
                given.push(made.version.unwrap().version);
            }
            ids.push((id, given));
        }
        write_rates.push(mib_s(logical, started.elapsed()));
        let packs = common::pack_files(dir.path())
            .into_iter()
            .map(|(_, size)| size)
            .collect::<Vec<u64>>();
        let stored: u64 = packs.iter().sum();
        drop(client);
        server.terminate();
        let catalog_bytes: u64 = ["catalog.db", "catalog.db-wal"]
            .iter()
            .filter_map(|file| std::fs::metadata(dir.path().join(file)).ok())
            .map(|meta| meta.len())
            .sum();
        if deltas {
            println!("RESULT history_stored_bytes {stored}");
            println!("RESULT history_catalog_bytes {catalog_bytes}");
            println!("RESULT history_packs_before_compaction {}", packs.len());
        } else {
            println!("RESULT history_stored_bytes_without_deltas {stored}");
            println!("RESULT history_catalog_bytes_without_deltas {catalog_bytes}");
        }

        // Read back in order after a restart: nothing in the chunk cache.
        let server = ServerProcess::start_with(options());
        let mut client = server.client().await;
        let started = Instant::now();
        let mut read = 0;
        for ((id, given), (_, contents)) in ids.iter().zip(&documents) {
            for (version, content) in given.iter().zip(contents) {
                let (_, bytes) = download(&mut client, download_request("bench", "history", id, version))
                    .await
                    .unwrap();
                assert!(bytes == *content, "{id}@{version} reads back different bytes");
                read += bytes.len();
            }
        }
        read_rates.push(mib_s(read, started.elapsed()));

        if deltas {
            // Collection merges the small packs every upload sealed.
            common::collect_garbage(&server, 3).await;
            let packs = common::pack_files(dir.path())
                .into_iter()
                .map(|(_, size)| size)
                .collect::<Vec<u64>>();
            println!("RESULT history_packs {}", packs.len());
            println!(
                "RESULT mean_pack_bytes {}",
                packs.iter().sum::<u64>() / (packs.len().max(1) as u64)
            );
            let (id, given) = &ids[ids.len() / 2];
            let (_, bytes) = download(
                &mut client,
                download_request("bench", "history", id, given.last().unwrap()),
            )
            .await
            .unwrap();
            assert!(bytes == *documents[ids.len() / 2].1.last().unwrap());

            // A paragraph inserted into the middle of the largest docs file, in a tenant of
            // its own (chunks are per tenant: the history's CHANGELOG chunks, deep in their
            // chains, would otherwise be this document's too).
            let largest = largest_doc();
            let created = common::client::create(
                &mut client,
                header("bench-edit", "history", "doc", "largest.md"),
                &largest,
            )
            .await
            .unwrap();
            let id = created.artifact.unwrap().id;
            let mut edited = largest.clone();
            let middle = edited.len() / 2;
            let at = edited[..middle]
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |p| p + 1);
            let paragraph =
                b"\nThis paragraph was added to the document by an agent during a later workflow run, \
to record a decision that the team took after the review: keep every version, store only the edit.\n\n";
            edited.splice(at..at, paragraph.iter().copied());
            let mut next = next_minor(&id);
            next.tenant = "bench-edit".into();
            let made = update(&mut client, next, &edited).await.unwrap();
            println!(
                "RESULT doc_edit_new_bytes {}",
                made.version.unwrap().new_stored_size
            );
        }
    }
    println!("RESULT history_upload_mib_s {:.2}", write_rates[0]);
    println!("RESULT history_upload_plain_mib_s {:.2}", write_rates[1]);
    println!(
        "RESULT history_upload_vs_plain {:.3}",
        write_rates[0] / write_rates[1]
    );
    println!("RESULT history_download_mib_s {:.1}", read_rates[0]);
    println!("RESULT history_download_plain_mib_s {:.1}", read_rates[1]);
    println!(
        "RESULT history_download_vs_plain {:.3}",
        read_rates[0] / read_rates[1]
    );
}

/// The largest Markdown file of bmad-docs.
fn largest_doc() -> Vec<u8> {
    fn walk(dir: &std::path::Path, best: &mut (u64, std::path::PathBuf)) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, best);
            } else if path.extension().is_some_and(|ext| ext == "md") {
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                if len > best.0 {
                    *best = (len, path);
                }
            }
        }
    }
    let mut best = (0, std::path::PathBuf::new());
    walk(&common::corpus_dir().join("bmad-docs"), &mut best);
    std::fs::read(best.1).unwrap()
}

/// The release series read in order, version after version, by one client, on servers with
/// prefetch on and off (alternating, the faster of three runs each): `prefetch_read_ratio`
/// is the throughput with it divided by without, and `prefetch_extra_read_ratio` the bytes
/// prefetch read divided by the bytes the client read (its cost, when nothing else reads).
async fn prefetch() {
    let releases = load_releases();
    let logical: usize = releases.iter().map(|(_, c)| c.len()).sum();
    let mut best = [Duration::MAX; 2];
    let mut extra = 0.0;
    for _ in 0..3 {
        for (slot, on) in [(0, true), (1, false)] {
            let dir = tempfile::tempdir().unwrap();
            let options = || {
                ServerOptions {
                    data_dir: Some(dir.path().to_owned()),
                    ..Default::default()
                }
                .env("ARTIFACTD_DELIVERY__PREFETCH", on.to_string())
            };
            let mut server = ServerProcess::start_with(options());
            let mut client = server.client().await;
            let refs: Vec<&(semver::Version, Vec<u8>)> = releases.iter().collect();
            let id = upload_series(&mut client, "prefetch", &refs).await;
            // A fresh process: nothing of the series is cached before the reads.
            drop(client);
            server.terminate();
            let server = ServerProcess::start_with(options());
            let mut client = server.client().await;
            best[slot] = best[slot].min(read_series(&mut client, "prefetch", &id, &releases).await);
            if on {
                let prefetched = common::metric(server.http, "artifactd_prefetched_bytes_total").await;
                extra = prefetched / logical as f64;
            }
        }
    }
    println!(
        "RESULT prefetch_read_ratio {:.3}",
        best[1].as_secs_f64() / best[0].as_secs_f64()
    );
    println!("RESULT prefetch_series_read_mib_s {:.1}", mib_s(logical, best[0]));
    println!("RESULT prefetch_extra_read_ratio {extra:.3}");
}

/// A workflow run reads the same documents in the same order each time, and between runs
/// every document gets its next version (the 8 longest histories of bmad-history). Runs
/// after the first are timed on servers with prefetch on and off, with moto as the store so
/// that a read that misses the caches is a GET (the faster of two servers each):
/// `run_prefetch_read_ratio` is the runs' read throughput with prefetch divided by without,
/// `run_prefetch_extra_read_ratio` the bytes warmed divided by the bytes the runs read. The
/// runs read back to back, and again (`_paced`) with 50 ms between reads, as an agent
/// working on one input before asking for the next leaves time (only reads are timed).
async fn run_prefetch() {
    run_prefetch_with(Duration::ZERO, "").await;
    run_prefetch_with(Duration::from_millis(50), "_paced").await;
}

async fn run_prefetch_with(pause: Duration, suffix: &str) {
    const DOCUMENTS: usize = 8;
    const RUNS: usize = 12;
    let root = common::corpus_dir().join("bmad-history");
    let mut histories: Vec<Vec<Vec<u8>>> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .filter(|entry| entry.path().is_dir())
        .map(|entry| {
            let mut versions: Vec<std::path::PathBuf> = std::fs::read_dir(entry.path())
                .unwrap()
                .flatten()
                .map(|v| v.path())
                .collect();
            versions.sort();
            versions.into_iter().map(|v| std::fs::read(v).unwrap()).collect()
        })
        .collect();
    histories.sort_by_key(|versions| std::cmp::Reverse(versions.len()));
    histories.truncate(DOCUMENTS);
    assert!(histories.iter().all(|versions| versions.len() >= RUNS));
    let moto = MotoServer::start().await;
    let mut best = [Duration::MAX; 2];
    let (mut read_bytes, mut extra) = (0usize, 0.0);
    for round in 0..2 {
        for (slot, on) in [(0, true), (1, false)] {
            let bucket = format!("runs-{round}-{slot}");
            let _ = moto.store(&bucket).await;
            let server = ServerProcess::start_with(
                ServerOptions::default()
                    .envs(moto.env(&bucket))
                    .env("ARTIFACTD_DELIVERY__PREFETCH", on.to_string()),
            );
            let mut client = server.client().await;
            let mut ids = Vec::new();
            for (n, versions) in histories.iter().enumerate() {
                let messages = create_messages(
                    header("bench", "runs", "document", &format!("doc-{n}.md")),
                    &versions[0],
                    MESSAGE,
                );
                let created = client
                    .create_artifact(futures::stream::iter(messages))
                    .await
                    .unwrap();
                ids.push(created.into_inner().artifact.unwrap().id);
            }
            let mut elapsed = Duration::ZERO;
            read_bytes = 0;
            for run in 0..RUNS {
                if run > 0 {
                    for (id, versions) in ids.iter().zip(&histories) {
                        let mut next = update_header("bench", "runs", id);
                        next.next_version = Some(NextVersion::Bump(artifactd::proto::BumpKind::Minor as i32));
                        update(&mut client, next, &versions[run]).await.unwrap();
                    }
                }
                for id in &ids {
                    let started = Instant::now();
                    let content = common::client::download_as_run(
                        &mut client,
                        &format!("run-{run}"),
                        download_request("bench", "runs", id, ""),
                    )
                    .await
                    .unwrap();
                    if run > 0 {
                        elapsed += started.elapsed();
                        read_bytes += content.len();
                    }
                    tokio::time::sleep(pause).await;
                }
            }
            best[slot] = best[slot].min(elapsed);
            if on {
                let prefetched = common::metric(server.http, "artifactd_prefetched_bytes_total").await;
                extra = prefetched / read_bytes as f64;
            }
        }
    }
    println!(
        "RESULT run_prefetch_read_ratio{suffix} {:.3}",
        best[1].as_secs_f64() / best[0].as_secs_f64()
    );
    println!(
        "RESULT run_prefetch_read_mib_s{suffix} {:.1}",
        mib_s(read_bytes, best[0])
    );
    println!("RESULT run_prefetch_extra_read_ratio{suffix} {extra:.3}");
}

struct Transfers {
    best: [Duration; 9],
    cache_hit: Duration,
    range_bytes: usize,
    range_time: Duration,
    rss: f64,
    quarter_rss: f64,
}

impl Transfers {
    fn print(&self) {
        let [
            put,
            upload,
            get,
            download,
            sealed_upload,
            sealed_download,
            disk,
            link,
            embedded_download,
        ] = self.best;
        let ratio = |baseline: Duration, ours: Duration| baseline.as_secs_f64() / ours.as_secs_f64();
        println!("RESULT upload_vs_s3 {:.3}", ratio(put, upload));
        println!("RESULT download_vs_s3 {:.3}", ratio(get, download));
        println!("RESULT download_vs_disk_http {:.3}", ratio(disk, download));
        println!("RESULT link_download_vs_disk_http {:.3}", ratio(disk, link));
        println!(
            "RESULT embedded_download_vs_disk_http {:.3}",
            ratio(disk, embedded_download)
        );
        println!(
            "RESULT embedded_download_mib_s {:.1}",
            mib_s(SIZE, embedded_download)
        );
        println!("RESULT upload_mib_s {:.1}", mib_s(SIZE, upload));
        println!("RESULT download_mib_s {:.1}", mib_s(SIZE, download));
        println!("RESULT direct_put_mib_s {:.1}", mib_s(SIZE, put));
        println!("RESULT direct_get_mib_s {:.1}", mib_s(SIZE, get));
        println!("RESULT disk_http_get_mib_s {:.1}", mib_s(SIZE, disk));
        println!("RESULT link_download_mib_s {:.1}", mib_s(SIZE, link));
        println!(
            "RESULT cache_hit_download_mib_s {:.1}",
            mib_s(SIZE, self.cache_hit)
        );
        println!(
            "RESULT http_range_mib_s {:.1}",
            mib_s(self.range_bytes, self.range_time)
        );
        println!(
            "RESULT encrypted_upload_ratio {:.3}",
            ratio(sealed_upload, upload)
        );
        println!(
            "RESULT encrypted_download_ratio {:.3}",
            ratio(sealed_download, download)
        );
        println!("RESULT encrypted_upload_mib_s {:.1}", mib_s(SIZE, sealed_upload));
        println!(
            "RESULT encrypted_download_mib_s {:.1}",
            mib_s(SIZE, sealed_download)
        );
        println!("RESULT peak_rss_mib {:.1}", self.rss);
        println!("RESULT peak_rss_mib_quarter_size {:.1}", self.quarter_rss);
    }
}

async fn transfers() -> Transfers {
    let moto = MotoServer::start().await;
    let mut direct_config = moto.store_config("baseline");
    direct_config.multipart_threshold_bytes = u64::MAX; // one plain PUT, as a client would do
    direct_config.request_timeout = Duration::from_secs(600);
    let direct = S3Store::new(direct_config);
    direct.ensure_bucket().await.unwrap();
    let _ = moto.store("artifactd").await;
    let _ = moto.store("sealed").await;
    let _ = moto.store("cached").await;
    // The default configuration: a 256 MiB read passes through the 64 MiB chunk cache.
    let server = ServerProcess::start_with(experiment(
        ServerOptions::default()
            .envs(moto.env("artifactd"))
            .env("ARTIFACTD_STORAGE__S3__REQUEST_TIMEOUT_MS", "600000"),
    ));
    let mut client = server.client().await;
    // Room for one whole 256 MiB version: the second read of it is all hits.
    let cache_server = ServerProcess::start_with(experiment(
        ServerOptions::default()
            .envs(moto.env("cached"))
            .env("ARTIFACTD_STORAGE__S3__REQUEST_TIMEOUT_MS", "600000")
            .env(
                "ARTIFACTD_DELIVERY__CACHE_MEMORY_BYTES",
                (320u64 << 20).to_string(),
            ),
    ));
    let mut cache_client = cache_server.client().await;
    let sealed_server = ServerProcess::start_with(
        ServerOptions::default()
            .envs(moto.env("sealed"))
            .env("ARTIFACTD_STORAGE__S3__REQUEST_TIMEOUT_MS", "600000")
            .env("ARTIFACTD_ENCRYPTION__MASTER_KEY", "42".repeat(32)),
    );
    let mut sealed_client = sealed_server.client().await;
    // The embedded store on local disk, no memory cache: against the same bytes read from
    // local disk by a raw HTTP GET.
    let embedded_server = ServerProcess::start_with(
        ServerOptions::default().env("ARTIFACTD_DELIVERY__CACHE_MEMORY_BYTES", "0"),
    );
    let mut embedded_client = embedded_server.client().await;
    let http = http_client();
    let scratch = tempfile::tempdir().unwrap();

    // direct put, artifactd upload, direct get, artifactd download, both with encryption,
    // the disk file over HTTP, the download link, a download from the embedded store
    let mut best = [Duration::MAX; 9];
    let mut last_id = String::new();
    let mut last_data = Bytes::new();
    for round in 0..ROUNDS {
        let data = Bytes::from(common::noise(SIZE, 1000 + round));
        let key = format!("packs/bench/{round}");
        let file = scratch.path().join(format!("noise-{round}.bin"));
        std::fs::write(&file, &data).unwrap();
        let file_server = serve_file(file).await;

        let started = Instant::now();
        direct.put(&key, data.clone()).await.unwrap();
        best[0] = best[0].min(started.elapsed());

        let started = Instant::now();
        let id = upload(&mut client, &format!("noise-{round}.bin"), &data).await;
        best[1] = best[1].min(started.elapsed());

        let started = Instant::now();
        let fetched = direct.get(&key, GetOptions::default()).await.unwrap();
        best[2] = best[2].min(started.elapsed());
        assert_eq!(fetched.len(), SIZE);
        drop(fetched);

        let started = Instant::now();
        let (_, bytes) = download(&mut client, download_request("bench", "storage", &id, ""))
            .await
            .unwrap();
        best[3] = best[3].min(started.elapsed());
        assert!(bytes == data, "artifactd returned different bytes");
        drop(bytes);

        let started = Instant::now();
        let sealed_id = upload(&mut sealed_client, &format!("noise-{round}.bin"), &data).await;
        best[4] = best[4].min(started.elapsed());
        let started = Instant::now();
        let (_, bytes) = download(
            &mut sealed_client,
            download_request("bench", "storage", &sealed_id, ""),
        )
        .await
        .unwrap();
        best[5] = best[5].min(started.elapsed());
        assert!(
            bytes == data,
            "artifactd with encryption returned different bytes"
        );
        drop(bytes);

        let started = Instant::now();
        let (status, _, bytes) = request(
            &http,
            "GET",
            &format!("http://{file_server}/file"),
            &[],
            Bytes::new(),
        )
        .await;
        best[6] = best[6].min(started.elapsed());
        assert!(status == 200 && bytes == data);
        drop(bytes);

        // The link is read from a second artifact of other bytes, so no cache serves it.
        let linked = Bytes::from(common::noise(SIZE, 2000 + round));
        let link_id = upload(&mut client, &format!("linked-{round}.bin"), &linked).await;
        let url = link_url(&mut client, "storage", &link_id).await;
        let started = Instant::now();
        let (status, _, bytes) = request(&http, "GET", &url, &[], Bytes::new()).await;
        best[7] = best[7].min(started.elapsed());
        assert!(
            status == 200 && bytes == linked,
            "the link returned different bytes"
        );
        let embedded_id = upload(&mut embedded_client, &format!("noise-{round}.bin"), &data).await;
        let started = Instant::now();
        let (_, bytes) = download(
            &mut embedded_client,
            download_request("bench", "storage", &embedded_id, ""),
        )
        .await
        .unwrap();
        best[8] = best[8].min(started.elapsed());
        assert!(bytes == data, "the embedded store returned different bytes");
        drop(bytes);
        eprintln!(
            "round {round}: put {:?} upload {:?} get {:?} download {:?} sealed upload {:?} sealed download {:?} disk http {:?} link {:?} embedded download {:?}",
            best[0], best[1], best[2], best[3], best[4], best[5], best[6], best[7], best[8]
        );
        last_id = id;
        last_data = data;
    }

    // The last version on a server whose cache holds it whole: the first read fills the
    // cache, the two after it are all hits.
    let cached_id = upload(&mut cache_client, "cached.bin", &last_data).await;
    let mut cache_hit = Duration::MAX;
    for read in 0..3 {
        let started = Instant::now();
        let (_, bytes) = download(
            &mut cache_client,
            download_request("bench", "storage", &cached_id, ""),
        )
        .await
        .unwrap();
        if read > 0 {
            cache_hit = cache_hit.min(started.elapsed());
        }
        assert!(bytes == last_data);
    }

    // Ranged GETs through a link, at offsets spread over the version.
    let url = link_url(&mut client, "storage", &last_id).await;
    let mut state = 7u64;
    let mut range_bytes = 0;
    let started = Instant::now();
    for _ in 0..64 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let start = (state >> 11) as usize % (SIZE - (1 << 20));
        let end = start + (1 << 20);
        let range = format!("bytes={start}-{}", end - 1);
        let (status, _, bytes) = request(&http, "GET", &url, &[("range", &range)], Bytes::new()).await;
        assert!(status == 206 && bytes == last_data[start..end], "{range}");
        range_bytes += bytes.len();
    }
    let range_time = started.elapsed();
    let rss = peak_rss_mib(server.pid());
    drop((sealed_client, sealed_server, cache_client, cache_server));

    // The same round trip at a quarter of the size, on a fresh server: if memory is bounded,
    // the peak moves with the artifact size by no more than the chunk cache it fills.
    let small_server = ServerProcess::start_with(ServerOptions::default().envs(moto.env("small")));
    let _ = moto.store("small").await;
    let mut small_client = small_server.client().await;
    let quarter = Bytes::from(common::noise(SIZE / 4, 77));
    let quarter_id = upload(&mut small_client, "quarter.bin", &quarter).await;
    let (_, bytes) = download(
        &mut small_client,
        download_request("bench", "storage", &quarter_id, ""),
    )
    .await
    .unwrap();
    assert!(bytes == quarter);
    let quarter_rss = peak_rss_mib(small_server.pid());
    Transfers {
        best,
        cache_hit,
        range_bytes,
        range_time,
        rss,
        quarter_rss,
    }
}

async fn release_series_and_gc(s3: &S3TestServer) -> (Vec<(semver::Version, Vec<u8>)>, u64) {
    // The release series into a fresh bucket.
    let series_server = ServerProcess::start_with(
        ServerOptions::default()
            .envs(s3.env("series"))
            .env("ARTIFACTD_RETENTION__GC_GRACE_SECONDS", "1")
            .env("ARTIFACTD_RETENTION__GC_INTERVAL_SECONDS", "0"),
    );
    let mut series_client = series_server.client().await;
    let releases = load_releases();
    let refs: Vec<&(semver::Version, Vec<u8>)> = releases.iter().collect();
    let id = upload_series(&mut series_client, "series", &refs).await;
    let logical: usize = releases.iter().map(|(_, c)| c.len()).sum();
    let stored: u64 = s3
        .store("series")
        .await
        .list("")
        .await
        .unwrap()
        .iter()
        .map(|o| o.size)
        .sum();

    // Garbage collection: the older half of the series deleted and purged, then collected
    // (runs a grace period apart: mark, sweep and compact, mark the compacted, sweep them).
    let mut versions: Vec<String> = releases.iter().map(|(v, _)| v.to_string()).collect();
    let kept_versions = versions.split_off(versions.len() / 2);
    let before_gc = bucket_bytes(s3, "series").await;
    let mut retention = RetentionServiceClient::new(series_server.channel().await);
    for version in &versions {
        series_client
            .delete_version(DeleteVersionRequest {
                tenant: "bench".into(),
                project: "series".into(),
                artifact_id: id.clone(),
                version: version.clone(),
            })
            .await
            .unwrap();
        retention
            .purge_trash(PurgeTrashRequest {
                tenant: "bench".into(),
                project: "series".into(),
                artifact_id: id.clone(),
                version: version.clone(),
            })
            .await
            .unwrap();
    }
    let mut admin = AdminServiceClient::new(series_server.channel().await);
    let mut gc_time = Duration::ZERO;
    let mut examined = 0;
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let started = Instant::now();
        let report = admin
            .collect_garbage(CollectGarbageRequest { dry_run: false })
            .await
            .unwrap()
            .into_inner()
            .report
            .unwrap();
        gc_time += started.elapsed();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        if round == 0 {
            examined = report.bytes_examined;
        }
    }
    let checked = admin
        .check_consistency(CheckConsistencyRequest { read_data: true })
        .await
        .unwrap()
        .into_inner();
    assert!(checked.problems.is_empty(), "{:?}", checked.problems);
    let after_gc = bucket_bytes(s3, "series").await;
    // What the remaining half needs: the same versions uploaded alone into a fresh bucket.
    let needed_server = ServerProcess::start_with(ServerOptions::default().envs(s3.env("series-half")));
    let mut needed_client = needed_server.client().await;
    let half: Vec<&(semver::Version, Vec<u8>)> = releases
        .iter()
        .filter(|(v, _)| kept_versions.contains(&v.to_string()))
        .collect();
    upload_series(&mut needed_client, "series", &half).await;
    let needed = bucket_bytes(s3, "series-half").await;
    let pack_target = artifactd::app::IngestSettings::default().pack_target_bytes as u64;
    eprintln!(
        "gc: store {before_gc} bytes of packs before, {after_gc} after; the remaining half alone needs {needed} (+ one pack: {})",
        needed + pack_target
    );
    assert!(
        after_gc <= needed + pack_target,
        "after collection the store holds {after_gc} bytes; the remaining versions need {needed} plus one pack"
    );

    println!(
        "RESULT gc_reclaimed_ratio {:.3}",
        (before_gc.saturating_sub(after_gc)) as f64 / (before_gc.saturating_sub(needed)).max(1) as f64
    );
    println!(
        "RESULT gc_seconds_per_gib {:.2}",
        gc_time.as_secs_f64() / (examined.max(1) as f64 / (1u64 << 30) as f64)
    );
    println!("RESULT gc_store_after_bytes {after_gc}");
    println!("RESULT gc_needed_bytes {needed}");
    println!("RESULT release_series_stored_bytes {stored}");
    println!(
        "RESULT release_series_stored_ratio {:.4}",
        stored as f64 / logical as f64
    );
    (releases, stored)
}

/// `releases` uploaded in order as the versions of one artifact in `project`; its id.
async fn upload_series<C: std::ops::Deref<Target = (semver::Version, Vec<u8>)>>(
    client: &mut Client,
    project: &str,
    releases: &[C],
) -> String {
    let mut first = header("bench", project, "release-bundle", "docs.tar");
    first.initial_version = releases[0].0.to_string();
    let id = client
        .create_artifact(futures::stream::iter(create_messages(
            first,
            &releases[0].1,
            MESSAGE,
        )))
        .await
        .unwrap()
        .into_inner()
        .artifact
        .unwrap()
        .id;
    for release in &releases[1..] {
        let mut next = update_header("bench", project, &id);
        next.next_version = Some(NextVersion::ExplicitVersion(release.0.to_string()));
        update(client, next, &release.1).await.unwrap();
    }
    id
}

/// Downloads every version of the series `id`, in order, checking each; how long it took.
async fn read_series(
    client: &mut Client,
    project: &str,
    id: &str,
    releases: &[(semver::Version, Vec<u8>)],
) -> Duration {
    let started = Instant::now();
    for (version, content) in releases {
        let (_, bytes) = download(
            client,
            download_request("bench", project, id, &version.to_string()),
        )
        .await
        .unwrap();
        assert!(bytes == *content);
    }
    started.elapsed()
}

/// `options` with the settings of `ARTIFACTD_BENCH_SERVER_ENV` (`NAME=value,…`), for
/// experiments: they reach the servers of the transfers, concurrent and small sections only.
fn experiment(mut options: ServerOptions) -> ServerOptions {
    for pair in std::env::var("ARTIFACTD_BENCH_SERVER_ENV")
        .unwrap_or_default()
        .split(',')
    {
        if let Some((name, value)) = pair.split_once('=') {
            options = options.env(name.trim(), value.trim());
        }
    }
    options
}

fn load_releases() -> Vec<(semver::Version, Vec<u8>)> {
    let mut releases: Vec<(semver::Version, Vec<u8>)> =
        std::fs::read_dir(common::corpus_dir().join("bmad-releases"))
            .unwrap()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let version = name
                    .strip_prefix("bmad-method-docs-")?
                    .strip_suffix(".tar")?
                    .to_owned();
                Some((
                    semver::Version::parse(&version).ok()?,
                    std::fs::read(entry.path()).ok()?,
                ))
            })
            .collect();
    releases.sort_by(|a, b| a.0.cmp(&b.0));
    releases
}

/// Debian's `docker-registry` (the CNCF distribution registry) on a port of its own, storing
/// blobs on the filesystem.
struct Registry {
    child: std::process::Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    async fn start() -> Self {
        let binary = "/usr/bin/docker-registry";
        assert!(
            std::path::Path::new(binary).exists(),
            "{binary} is missing: install Debian's registry with `apt-get install docker-registry`"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new(binary)
            .args(["serve", config.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting docker-registry");
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// A monolithic blob upload (POST, then PUT with the digest), as `docker push` does.
    async fn push(&self, client: &HttpClient, digest: &str, data: &Bytes) {
        let (status, headers, _) = request(
            client,
            "POST",
            &format!("{}/v2/bench/blobs/uploads/", self.base),
            &[],
            Bytes::new(),
        )
        .await;
        assert_eq!(status, 202, "starting a blob upload");
        let location = headers["location"].to_str().unwrap();
        let location = if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location.to_owned()
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let (status, _, body) = request(
            client,
            "PUT",
            &format!("{location}{separator}digest={digest}"),
            &[("content-type", "application/octet-stream")],
            data.clone(),
        )
        .await;
        assert_eq!(
            status,
            201,
            "finishing a blob upload: {}",
            String::from_utf8_lossy(&body)
        );
    }

    async fn pull(&self, client: &HttpClient, digest: &str) -> Bytes {
        let (status, _, body) = request(
            client,
            "GET",
            &format!("{}/v2/bench/blobs/{digest}", self.base),
            &[],
            Bytes::new(),
        )
        .await;
        assert_eq!(status, 200);
        body
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256_digest(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{:x}", sha2::Sha256::digest(data))
}

struct RegistryComparison {
    series: [Duration; 4],
    random: [Duration; 4],
}

impl RegistryComparison {
    fn print(&self) {
        // [registry push, artifactd push, registry pull, artifactd pull]
        let ratio = |t: &[Duration; 4], baseline: usize, ours: usize| {
            t[baseline].as_secs_f64() / t[ours].as_secs_f64()
        };
        println!("RESULT push_vs_registry {:.3}", ratio(&self.series, 0, 1));
        println!("RESULT pull_vs_registry {:.3}", ratio(&self.series, 2, 3));
        println!("RESULT push_vs_registry_random {:.3}", ratio(&self.random, 0, 1));
        println!("RESULT pull_vs_registry_random {:.3}", ratio(&self.random, 2, 3));
    }
}

/// The release series and 256 MiB of random data pushed and pulled through the registry
/// and through artifactd on its embedded store, alternating, the faster of two runs each.
async fn registry_comparison() -> RegistryComparison {
    let releases = load_releases();
    let http = http_client();
    let digests: Vec<String> = releases.iter().map(|(_, c)| sha256_digest(c)).collect();
    let blobs: Vec<Bytes> = releases.iter().map(|(_, c)| Bytes::from(c.clone())).collect();
    let random = Bytes::from(common::noise(SIZE, 4242));
    let random_digest = sha256_digest(&random);
    let mut series = [Duration::MAX; 4];
    let mut random_best = [Duration::MAX; 4];
    for round in 0..2 {
        let registry = Registry::start().await;
        let server = ServerProcess::start();
        let mut client = server.client().await;

        // Messages are made before the clock starts, as digests are for the registry.
        let mut first = header(
            "bench",
            "registry",
            "release-bundle",
            &format!("docs-{round}.tar"),
        );
        first.initial_version = releases[0].0.to_string();
        let first = create_messages(first, &releases[0].1, MESSAGE);
        let started = Instant::now();
        for (digest, blob) in digests.iter().zip(&blobs) {
            registry.push(&http, digest, blob).await;
        }
        series[0] = series[0].min(started.elapsed());
        let started = Instant::now();
        let id = client
            .create_artifact(futures::stream::iter(first))
            .await
            .unwrap()
            .into_inner()
            .artifact
            .unwrap()
            .id;
        let mut later = Vec::new();
        for (version, content) in &releases[1..] {
            let mut next = update_header("bench", "registry", &id);
            next.next_version = Some(NextVersion::ExplicitVersion(version.to_string()));
            later.push(common::client::update_messages(next, content, MESSAGE));
        }
        let prepared = started.elapsed();
        let started = Instant::now();
        for messages in later {
            client
                .update_artifact(futures::stream::iter(messages))
                .await
                .unwrap();
        }
        series[1] = series[1].min(prepared + started.elapsed());

        let started = Instant::now();
        for (digest, blob) in digests.iter().zip(&blobs) {
            assert!(registry.pull(&http, digest).await == *blob);
        }
        series[2] = series[2].min(started.elapsed());
        series[3] = series[3].min(read_series(&mut client, "registry", &id, &releases).await);

        let started = Instant::now();
        registry.push(&http, &random_digest, &random).await;
        random_best[0] = random_best[0].min(started.elapsed());
        let messages = create_messages(
            header("bench", "registry", "bundle", &format!("noise-{round}.bin")),
            &random,
            MESSAGE,
        );
        let started = Instant::now();
        let random_id = client
            .create_artifact(futures::stream::iter(messages))
            .await
            .unwrap()
            .into_inner()
            .artifact
            .unwrap()
            .id;
        random_best[1] = random_best[1].min(started.elapsed());
        let started = Instant::now();
        assert!(registry.pull(&http, &random_digest).await == random);
        random_best[2] = random_best[2].min(started.elapsed());
        let started = Instant::now();
        let (_, bytes) = download(&mut client, download_request("bench", "registry", &random_id, ""))
            .await
            .unwrap();
        random_best[3] = random_best[3].min(started.elapsed());
        assert!(bytes == random);
        eprintln!("registry round {round}: series {series:?} random {random_best:?}");
    }
    RegistryComparison {
        series,
        random: random_best,
    }
}

struct Concurrent {
    streams: usize,
    mib: usize,
    upload: Duration,
    download: Duration,
    /// The peak after the uploads, before the downloads.
    upload_rss: f64,
    rss: f64,
}

impl Concurrent {
    fn print(&self) {
        let scale = if self.mib.is_multiple_of(1024) {
            format!("{}g", self.mib / 1024)
        } else {
            format!("{}m", self.mib)
        };
        let total = self.streams * self.mib * 1024 * 1024;
        println!("RESULT peak_rss_mib_{}x{scale} {:.1}", self.streams, self.rss);
        println!(
            "RESULT peak_rss_mib_{}x{scale}_uploads {:.1}",
            self.streams, self.upload_rss
        );
        println!("RESULT concurrent_upload_mib_s {:.1}", mib_s(total, self.upload));
        println!(
            "RESULT concurrent_download_mib_s {:.1}",
            mib_s(total, self.download)
        );
    }
}

/// Random data made on the fly, `MESSAGE` bytes a message.
fn generated(seed: u64, total: usize) -> impl Iterator<Item = Bytes> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    let mut left = total;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let len = left.min(MESSAGE);
        left -= len;
        let mut piece = Vec::with_capacity(len + 8);
        while piece.len() < len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            piece.extend_from_slice(&state.to_le_bytes());
        }
        piece.truncate(len);
        Some(Bytes::from(piece))
    })
}

/// N clients upload generated data at once, then download it at once, each checked by
/// its hash; the server's peak memory over both.
async fn concurrent_rss() -> Concurrent {
    let setting = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let streams = setting("ARTIFACTD_BENCH_STREAMS", 16);
    let mib = setting("ARTIFACTD_BENCH_STREAM_MIB", 1024);
    let server = std::sync::Arc::new(ServerProcess::start_with(experiment(ServerOptions::default())));
    let total = mib * 1024 * 1024;
    let started = Instant::now();
    let mut uploads = tokio::task::JoinSet::new();
    for stream in 0..streams {
        let server = server.clone();
        uploads.spawn(async move {
            let mut client = server.client().await;
            let hasher = std::sync::Arc::new(std::sync::Mutex::new(blake3::Hasher::new()));
            let hashing = hasher.clone();
            let messages = vec![CreateArtifactRequest {
                message: Some(create_artifact_request::Message::Header(header(
                    "bench",
                    "concurrent",
                    "bundle",
                    &format!("stream-{stream}.bin"),
                ))),
            }];
            let data = generated(stream as u64 + 1, total).map(move |piece| {
                hashing.lock().unwrap().update(&piece);
                CreateArtifactRequest {
                    message: Some(create_artifact_request::Message::Data(piece)),
                }
            });
            let finish = std::iter::once(CreateArtifactRequest {
                message: Some(create_artifact_request::Message::Finish(UploadFinish {
                    size: Some(total as u64),
                    blake3: String::new(),
                })),
            });
            let id = client
                .create_artifact(futures::stream::iter(
                    messages.into_iter().chain(data).chain(finish),
                ))
                .await
                .expect("a concurrent upload")
                .into_inner()
                .artifact
                .unwrap()
                .id;
            let hash = hasher.lock().unwrap().finalize();
            (id, hash)
        });
    }
    let uploaded: Vec<(String, blake3::Hash)> = uploads.join_all().await;
    let upload = started.elapsed();
    let upload_rss = peak_rss_mib(server.pid());
    let started = Instant::now();
    let mut downloads = tokio::task::JoinSet::new();
    for (id, expected) in uploaded {
        let server = server.clone();
        downloads.spawn(async move {
            let mut client = server.client().await;
            let mut stream = client
                .download_artifact(download_request("bench", "concurrent", &id, ""))
                .await
                .unwrap()
                .into_inner();
            let mut hasher = blake3::Hasher::new();
            let mut received = 0;
            while let Some(message) = stream.message().await.unwrap() {
                if let Some(download_artifact_response::Message::Data(data)) = message.message {
                    received += data.len();
                    hasher.update(&data);
                }
            }
            assert_eq!(received, total);
            assert_eq!(hasher.finalize(), expected, "a concurrent download differs");
        });
    }
    downloads.join_all().await;
    let download = started.elapsed();
    Concurrent {
        streams,
        mib,
        upload,
        download,
        upload_rss,
        rss: peak_rss_mib(server.pid()),
    }
}
