//! `cargo bench --bench storage`: the data path measured against a baseline taken in the
//! same run, printed as `RESULT <name> <value>` lines.
//!
//! - `upload_vs_s3` / `download_vs_s3`: time of a 256 MiB incompressible gRPC upload/download
//!   through artifactd (release binary, SQLite catalog) into an S3 server, divided by the time
//!   of a direct aws-sdk-s3 PUT/GET of the same bytes to the same server (below 1 is faster).
//! - `upload_mib_s`, `download_mib_s`: artifactd's throughput in MiB/s.
//! - `release_series_stored_bytes`: bytes written to the store for the 24 BMAD release tars.
//! - `encrypted_upload_ratio` / `encrypted_download_ratio`: throughput of the same transfers
//!   with encryption at rest on (a second server, its own bucket on the same S3 server)
//!   divided by the throughput with it off (1 means encryption costs nothing).
//! - `gc_reclaimed_ratio`: after the older half of the release series is deleted, purged and
//!   collected, the bytes the store gave back divided by the bytes it could give back (store
//!   before, less what the remaining half needs when uploaded alone); `gc_seconds_per_gib`:
//!   collection time per GiB of packs examined. The run asserts the store ends within one pack
//!   of what the remaining versions need, and the consistency check reading every byte is clean.
//! - `peak_rss_mib`: the server's peak resident memory after the big transfers, and
//!   `peak_rss_mib_quarter_size` after the same round trip at 64 MiB on a fresh server (bounded
//!   memory shows as two similar figures).
//!
//! Each timed step runs twice, alternating baseline and artifactd, and the faster run counts.

#[path = "../tests/common/mod.rs"]
mod common;

use artifactd::proto::admin_service_client::AdminServiceClient;
use artifactd::proto::retention_service_client::RetentionServiceClient;
use artifactd::proto::update_artifact_header::NextVersion;
use artifactd::proto::{
    CheckConsistencyRequest, CollectGarbageRequest, DeleteVersionRequest, PurgeTrashRequest,
};
use artifactd::storage::{BlobStore, GetOptions, S3Store};
use bytes::Bytes;
use common::binary::{ServerOptions, ServerProcess};
use common::client::{create_messages, download, download_request, header, update, update_header};
use common::s3::S3TestServer;
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

#[tokio::main]
async fn main() {
    run().await;
}

async fn run() {
    let s3 = S3TestServer::start().await;
    let mut direct_config = s3.store_config("baseline");
    direct_config.multipart_threshold_bytes = u64::MAX; // one plain PUT, as a client would do
    direct_config.request_timeout = Duration::from_secs(600);
    let direct = S3Store::new(direct_config);
    direct.ensure_bucket().await.unwrap();
    let server = ServerProcess::start_with(
        ServerOptions::default()
            .envs(s3.env("artifactd"))
            .env("ARTIFACTD_STORAGE__S3__REQUEST_TIMEOUT_MS", "600000"),
    );
    let mut client = server.client().await;
    let sealed_server = ServerProcess::start_with(
        ServerOptions::default()
            .envs(s3.env("sealed"))
            .env("ARTIFACTD_STORAGE__S3__REQUEST_TIMEOUT_MS", "600000")
            .env("ARTIFACTD_ENCRYPTION__MASTER_KEY", "42".repeat(32)),
    );
    let mut sealed_client = sealed_server.client().await;

    // direct put, artifactd upload, direct get, artifactd download, and both with encryption
    let mut best = [Duration::MAX; 6];
    for round in 0..ROUNDS {
        let data = Bytes::from(common::noise(SIZE, 1000 + round));
        let key = format!("packs/bench/{round}");

        let started = Instant::now();
        direct.put(&key, data.clone()).await.unwrap();
        best[0] = best[0].min(started.elapsed());

        let name = format!("noise-{round}.bin");
        let messages = create_messages(header("bench", "storage", "bundle", &name), &data, MESSAGE);
        let started = Instant::now();
        let created = client
            .create_artifact(futures::stream::iter(messages))
            .await
            .expect("upload through artifactd")
            .into_inner();
        best[1] = best[1].min(started.elapsed());
        let id = created.artifact.unwrap().id;

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

        let messages = create_messages(header("bench", "storage", "bundle", &name), &data, MESSAGE);
        let started = Instant::now();
        let sealed_id = sealed_client
            .create_artifact(futures::stream::iter(messages))
            .await
            .expect("upload through artifactd with encryption")
            .into_inner()
            .artifact
            .unwrap()
            .id;
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
        eprintln!(
            "round {round}: put {:?} upload {:?} get {:?} download {:?} sealed upload {:?} sealed download {:?}",
            best[0], best[1], best[2], best[3], best[4], best[5]
        );
    }
    let rss = peak_rss_mib(server.pid());
    drop(sealed_client);
    drop(sealed_server);

    // The same round trip at a quarter of the size, on a fresh server: if memory is bounded,
    // the peak barely moves with the artifact size.
    let small_server = ServerProcess::start_with(ServerOptions::default().envs(s3.env("small")));
    let mut small_client = small_server.client().await;
    let quarter = Bytes::from(common::noise(SIZE / 4, 77));
    let messages = create_messages(
        header("bench", "storage", "bundle", "quarter.bin"),
        &quarter,
        MESSAGE,
    );
    let quarter_id = small_client
        .create_artifact(futures::stream::iter(messages))
        .await
        .unwrap()
        .into_inner()
        .artifact
        .unwrap()
        .id;
    let (_, bytes) = download(
        &mut small_client,
        download_request("bench", "storage", &quarter_id, ""),
    )
    .await
    .unwrap();
    assert!(bytes == quarter);
    let quarter_rss = peak_rss_mib(small_server.pid());

    // The release series into a fresh bucket.
    let series_server = ServerProcess::start_with(
        ServerOptions::default()
            .envs(s3.env("series"))
            .env("ARTIFACTD_RETENTION__GC_GRACE_SECONDS", "1")
            .env("ARTIFACTD_RETENTION__GC_INTERVAL_SECONDS", "0"),
    );
    let mut series_client = series_server.client().await;
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
    let mut first = header("bench", "series", "release-bundle", "docs.tar");
    first.initial_version = releases[0].0.to_string();
    let id = series_client
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
    for (version, content) in &releases[1..] {
        let mut next = update_header("bench", "series", &id);
        next.next_version = Some(NextVersion::ExplicitVersion(version.to_string()));
        update(&mut series_client, next, content).await.unwrap();
    }
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
    let before_gc = bucket_bytes(&s3, "series").await;
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
    let after_gc = bucket_bytes(&s3, "series").await;
    // What the remaining half needs: the same versions uploaded alone into a fresh bucket.
    let needed_server = ServerProcess::start_with(ServerOptions::default().envs(s3.env("series-half")));
    let mut needed_client = needed_server.client().await;
    let half: Vec<&(semver::Version, Vec<u8>)> = releases
        .iter()
        .filter(|(v, _)| kept_versions.contains(&v.to_string()))
        .collect();
    let mut first = header("bench", "series", "release-bundle", "docs.tar");
    first.initial_version = half[0].0.to_string();
    let half_id = needed_client
        .create_artifact(futures::stream::iter(create_messages(first, &half[0].1, MESSAGE)))
        .await
        .unwrap()
        .into_inner()
        .artifact
        .unwrap()
        .id;
    for (version, content) in &half[1..] {
        let mut next = update_header("bench", "series", &half_id);
        next.next_version = Some(NextVersion::ExplicitVersion(version.to_string()));
        update(&mut needed_client, next, content).await.unwrap();
    }
    let needed = bucket_bytes(&s3, "series-half").await;
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
    println!(
        "RESULT upload_vs_s3 {:.3}",
        best[1].as_secs_f64() / best[0].as_secs_f64()
    );
    println!(
        "RESULT download_vs_s3 {:.3}",
        best[3].as_secs_f64() / best[2].as_secs_f64()
    );
    println!("RESULT upload_mib_s {:.1}", mib_s(SIZE, best[1]));
    println!("RESULT download_mib_s {:.1}", mib_s(SIZE, best[3]));
    println!("RESULT direct_put_mib_s {:.1}", mib_s(SIZE, best[0]));
    println!("RESULT direct_get_mib_s {:.1}", mib_s(SIZE, best[2]));
    println!(
        "RESULT encrypted_upload_ratio {:.3}",
        best[1].as_secs_f64() / best[4].as_secs_f64()
    );
    println!(
        "RESULT encrypted_download_ratio {:.3}",
        best[3].as_secs_f64() / best[5].as_secs_f64()
    );
    println!("RESULT encrypted_upload_mib_s {:.1}", mib_s(SIZE, best[4]));
    println!("RESULT encrypted_download_mib_s {:.1}", mib_s(SIZE, best[5]));
    println!("RESULT release_series_stored_bytes {stored}");
    println!(
        "RESULT release_series_stored_ratio {:.4}",
        stored as f64 / logical as f64
    );
    println!("RESULT peak_rss_mib {rss:.1}");
    println!("RESULT peak_rss_mib_quarter_size {quarter_rss:.1}");
}
