//! Failover between two real S3 servers over HTTP (in-process s3s-fs servers that the tests
//! stop and restart, and moto as an independent fallback), through the binary over gRPC.

mod common;

use artifactd::catalog::Catalog;
use artifactd::proto::fallback_service_client::FallbackServiceClient;
use artifactd::proto::{
    BreakerState, GetFallbackMetricsRequest, GetFallbackStatusRequest, GetFallbackStatusResponse, StoreSide,
    SyncFallbackRequest, SyncFallbackResult, TestFallbackRequest, sync_fallback_response,
};
use artifactd::storage::BlobStore;
use common::binary::{ServerOptions, ServerProcess};
use common::client::{Client, create, create_messages, download, download_request, header};
use common::moto::MotoServer;
use common::proxy::StallingProxy;
use common::s3::S3TestServer;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const T: &str = "acme";
const P: &str = "failover";

fn failover_tuning() -> Vec<(String, String)> {
    [
        ("ARTIFACTD_STORAGE__FAILOVER__REQUEST_TIMEOUT_MS", "1500"),
        ("ARTIFACTD_STORAGE__FAILOVER__PROBE_INTERVAL_MS", "200"),
        ("ARTIFACTD_STORAGE__FAILOVER__OPEN_BACKOFF_INITIAL_MS", "200"),
        ("ARTIFACTD_STORAGE__FAILOVER__OPEN_BACKOFF_MAX_MS", "1000"),
        ("ARTIFACTD_STORAGE__FAILOVER__REPLICATION_RETRY_INITIAL_MS", "100"),
        ("ARTIFACTD_STORAGE__FAILOVER__REPLICATION_RETRY_MAX_MS", "1000"),
        // Small packs: every upload below spans several of them.
        ("ARTIFACTD_INGEST__PACK_TARGET_BYTES", "262144"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

struct Pair {
    primary: S3TestServer,
    fallback: S3TestServer,
    server: ServerProcess,
}

async fn start_pair() -> Pair {
    let primary = S3TestServer::start().await;
    let fallback = S3TestServer::start().await;
    let server = ServerProcess::start_with(
        ServerOptions::default()
            .envs(primary.env("primary-bucket"))
            .envs(fallback.fallback_env("fallback-bucket"))
            .envs(failover_tuning()),
    );
    Pair {
        primary,
        fallback,
        server,
    }
}

async fn fallback_client(server: &ServerProcess) -> FallbackServiceClient<Channel> {
    FallbackServiceClient::new(server.channel().await)
}

async fn status(server: &ServerProcess) -> GetFallbackStatusResponse {
    fallback_client(server)
        .await
        .get_fallback_status(GetFallbackStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_drained(server: &ServerProcess) {
    wait_for(
        "the replication queue to drain",
        Duration::from_secs(60),
        || async { status(server).await.queue_depth == 0 },
    )
    .await;
}

async fn sync(server: &ServerProcess, dry_run: bool) -> SyncFallbackResult {
    let mut stream = fallback_client(server)
        .await
        .sync_fallback(SyncFallbackRequest { dry_run })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(message) = stream.message().await.unwrap() {
        if let Some(sync_fallback_response::Message::Result(result)) = message.message {
            last = Some(result);
        }
    }
    last.expect("SyncFallback ends with a result")
}

async fn create_noise(client: &mut Client, name: &str, size: usize, seed: u64) -> (String, Vec<u8>) {
    let content = common::noise(size, seed);
    let created = create(client, header(T, P, "bundle", name), &content)
        .await
        .unwrap();
    (created.artifact.unwrap().id, content)
}

async fn assert_reads_back(client: &mut Client, id: &str, content: &[u8]) {
    let (_, bytes) = download(client, download_request(T, P, id, "")).await.unwrap();
    assert!(
        bytes == content,
        "artifact {id} does not read back byte-identical"
    );
}

fn store_status(status: &GetFallbackStatusResponse, side: StoreSide) -> &artifactd::proto::StoreStatus {
    status.stores.iter().find(|s| s.side == side as i32).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_in_progress_completes_on_the_fallback_when_the_primary_dies() {
    let mut pair = start_pair().await;
    let catalog = Catalog::connect(
        &format!("sqlite://{}/catalog.db", pair.server.data_dir.display()),
        2,
    )
    .await
    .unwrap();
    let content = common::noise(3 * 1024 * 1024, 1);
    let (sender, receiver) = tokio::sync::mpsc::channel(2);
    let mut upload_client = pair.server.client().await;
    let upload = tokio::spawn(async move {
        upload_client
            .create_artifact(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await
    });
    let mut messages =
        create_messages(header(T, P, "bundle", "mid-upload.bin"), &content, 64 * 1024).into_iter();
    for message in messages.by_ref().take(20) {
        sender.send(message).await.unwrap();
    }
    wait_for(
        "packs written to the primary",
        Duration::from_secs(20),
        || async { catalog.packs_in_state("staged").await.unwrap().len() >= 2 },
    )
    .await;
    pair.primary.stop().await;
    for message in messages {
        sender.send(message).await.unwrap();
    }
    drop(sender);
    let created = upload
        .await
        .unwrap()
        .expect("the client sees no error")
        .into_inner();
    let id = created.artifact.unwrap().id;
    let mut client = pair.server.client().await;
    assert_reads_back(&mut client, &id, &content).await;

    let status = status(&pair.server).await;
    assert_eq!(status.write_target, StoreSide::Fallback as i32);
    assert!(status.degraded);
    assert!(status.last_failover.is_some(), "the failover is recorded");
    assert!(!status.last_failover.as_ref().unwrap().reason.is_empty());
    let metrics = fallback_client(&pair.server)
        .await
        .get_fallback_metrics(GetFallbackMetricsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(metrics.failover_count >= 1);
    let fallback_metrics = metrics
        .stores
        .iter()
        .find(|s| s.side == StoreSide::Fallback as i32)
        .unwrap();
    assert!(fallback_metrics.bytes_written > 0);
    drop(pair.fallback);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_returning_with_its_data_drains_the_backlog_and_takes_writes_back() {
    let mut pair = start_pair().await;
    let mut client = pair.server.client().await;
    let mut written = Vec::new();
    for i in 0..3 {
        written.push(create_noise(&mut client, &format!("before-{i}.bin"), 600_000, 10 + i).await);
    }
    wait_drained(&pair.server).await;

    // Primary down: everything written before is still readable, new writes succeed.
    pair.primary.stop().await;
    for (id, content) in &written {
        assert_reads_back(&mut client, id, content).await;
    }
    for i in 0..3 {
        written.push(create_noise(&mut client, &format!("during-{i}.bin"), 600_000, 20 + i).await);
    }
    let during = status(&pair.server).await;
    assert!(
        during.queue_depth > 0,
        "writes made during the outage wait for the primary"
    );
    assert_eq!(
        store_status(&during, StoreSide::Primary).breaker_state,
        BreakerState::Open as i32
    );

    // Primary back with its old data: the backlog drains and writes go back to it.
    pair.primary.restart().await;
    wait_drained(&pair.server).await;
    wait_for(
        "writes to return to the primary",
        Duration::from_secs(30),
        || async { status(&pair.server).await.write_target == StoreSide::Primary as i32 },
    )
    .await;
    let after = status(&pair.server).await;
    assert!(after.last_failback.is_some(), "the failback is recorded");
    let check = sync(&pair.server, true).await;
    assert_eq!(
        (check.missing_on_primary, check.missing_on_fallback),
        (0, 0),
        "{check:?}"
    );
    assert!(check.examined > 0);

    // Each side alone now holds everything.
    pair.fallback.stop().await;
    for (id, content) in &written {
        assert_reads_back(&mut client, id, content).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_primary_is_refilled_by_sync() {
    let mut pair = start_pair().await;
    let mut client = pair.server.client().await;
    let mut written = Vec::new();
    for i in 0..3 {
        written.push(create_noise(&mut client, &format!("old-{i}.bin"), 500_000, 30 + i).await);
    }
    wait_drained(&pair.server).await;
    pair.primary.stop().await;
    written.push(create_noise(&mut client, "outage.bin", 500_000, 40).await);

    // The primary comes back empty (a replaced server); operators recreate its bucket.
    pair.primary.wipe_and_restart().await;
    pair.primary.store("primary-bucket").await;
    wait_drained(&pair.server).await;
    let before = sync(&pair.server, true).await;
    assert!(
        before.missing_on_primary > 0,
        "the old packs are missing on the new primary: {before:?}"
    );
    let repaired = sync(&pair.server, false).await;
    assert_eq!(
        repaired.copied_to_primary, before.missing_on_primary,
        "{repaired:?}"
    );
    assert!(repaired.errors.is_empty(), "{repaired:?}");
    let check = sync(&pair.server, true).await;
    assert_eq!(
        (check.missing_on_primary, check.missing_on_fallback),
        (0, 0),
        "{check:?}"
    );

    pair.fallback.stop().await;
    for (id, content) in &written {
        assert_reads_back(&mut client, id, content).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_fallback_costs_clients_nothing_and_catches_up() {
    let mut pair = start_pair().await;
    let mut client = pair.server.client().await;
    pair.fallback.stop().await;
    let mut written = Vec::new();
    for i in 0..3 {
        written.push(create_noise(&mut client, &format!("f-{i}.bin"), 400_000, 50 + i).await);
    }
    for (id, content) in &written {
        assert_reads_back(&mut client, id, content).await;
    }
    wait_for(
        "replication failures to show",
        Duration::from_secs(20),
        || async {
            let status = status(&pair.server).await;
            status.queue_depth > 0
                && status.failing_items.iter().any(|item| {
                    item.attempts >= 1
                        && !item.last_error.is_empty()
                        && item.target == StoreSide::Fallback as i32
                })
        },
    )
    .await;
    let during = status(&pair.server).await;
    assert_eq!(
        during.write_target,
        StoreSide::Primary as i32,
        "writes stay on the healthy primary"
    );
    assert!(during.oldest_pending_age_seconds > 0.0);

    pair.fallback.restart().await;
    wait_drained(&pair.server).await;
    let check = sync(&pair.server, true).await;
    assert_eq!(
        (check.missing_on_primary, check.missing_on_fallback),
        (0, 0),
        "{check:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_stores_down_is_unavailable_and_recovers_by_itself() {
    let mut pair = start_pair().await;
    let mut client = pair.server.client().await;
    let (id, content) = create_noise(&mut client, "before.bin", 300_000, 60).await;
    pair.primary.stop().await;
    pair.fallback.stop().await;
    let status = create(
        &mut client,
        header(T, P, "bundle", "lost.bin"),
        &common::noise(300_000, 61),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("no object store accepted the write"),
        "{status:?}"
    );
    let mut health = tonic_health::pb::health_client::HealthClient::new(pair.server.channel().await);
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing;
    wait_for("health to report NOT_SERVING", Duration::from_secs(20), || {
        let mut health = health.clone();
        async move {
            health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|r| r.into_inner().status() == not_serving)
                .unwrap_or(false)
        }
    })
    .await;
    let missing = client
        .get_artifact(artifactd::proto::GetArtifactRequest {
            tenant: T.into(),
            project: P.into(),
            selector: Some(artifactd::proto::get_artifact_request::Selector::Coordinates(
                artifactd::proto::ArtifactCoordinates {
                    artifact_type: "bundle".into(),
                    name: "lost.bin".into(),
                },
            )),
            version: String::new(),
        })
        .await;
    assert_eq!(
        missing.unwrap_err().code(),
        tonic::Code::NotFound,
        "nothing was committed"
    );

    // One store back is enough.
    pair.fallback.restart().await;
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving;
    wait_for("health to report SERVING", Duration::from_secs(20), || {
        let mut health = health.clone();
        async move {
            health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|r| r.into_inner().status() == serving)
                .unwrap_or(false)
        }
    })
    .await;
    let _ = &mut health;
    wait_for("writes to succeed again", Duration::from_secs(20), || {
        let mut client = client.clone();
        async move {
            create(&mut client, header(T, P, "bundle", "after.bin"), b"back")
                .await
                .is_ok()
        }
    })
    .await;
    assert_reads_back(&mut client, &id, &content).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalling_primary_trips_its_breaker_through_timeouts() {
    let stall = StallingProxy::start().await;
    let fallback = S3TestServer::start().await;
    let mut primary_env = fallback.env("unused");
    for (key, value) in primary_env.iter_mut() {
        match key.as_str() {
            "S3_ENDPOINT_URL" => *value = format!("http://{}", stall.addr),
            "S3_BUCKET_NAME" => *value = "stalled".into(),
            "ARTIFACTD_STORAGE__S3__CREATE_BUCKET" => *value = "false".into(),
            _ => {}
        }
    }
    let server = ServerProcess::start_with(
        ServerOptions::default()
            .envs(primary_env)
            .envs(fallback.fallback_env("fallback-bucket"))
            .envs(failover_tuning())
            .env("ARTIFACTD_STORAGE__FAILOVER__REQUEST_TIMEOUT_MS", "700"),
    );
    let mut client = server.client().await;
    let started = Instant::now();
    let (id, content) = create_noise(&mut client, "stalled.bin", 400_000, 70).await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "timeouts bound the wait: {:?}",
        started.elapsed()
    );
    assert_reads_back(&mut client, &id, &content).await;
    let status = status(&server).await;
    let primary = store_status(&status, StoreSide::Primary);
    assert_ne!(primary.breaker_state, BreakerState::Closed as i32, "{primary:?}");
    assert!(
        primary.last_error.contains("no answer within 700 ms") || primary.last_error.contains("timed out"),
        "{primary:?}"
    );
    assert_eq!(status.write_target, StoreSide::Fallback as i32);
    let probes = fallback_client(&server)
        .await
        .test_fallback(TestFallbackRequest {})
        .await
        .unwrap()
        .into_inner();
    let primary_probe = probes
        .stores
        .iter()
        .find(|s| s.side == StoreSide::Primary as i32)
        .unwrap();
    let fallback_probe = probes
        .stores
        .iter()
        .find(|s| s.side == StoreSide::Fallback as i32)
        .unwrap();
    assert!(
        !primary_probe.can_write && !primary_probe.error.is_empty(),
        "{primary_probe:?}"
    );
    assert!(
        fallback_probe.can_write && fallback_probe.can_read && fallback_probe.can_delete,
        "{fallback_probe:?}"
    );
    assert!(fallback_probe.latency_ms > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_as_the_fallback_end_to_end() {
    let mut primary = S3TestServer::start().await;
    let moto = MotoServer::start().await;
    let server = ServerProcess::start_with(
        ServerOptions::default()
            .envs(primary.env("primary-bucket"))
            .envs(moto.fallback_env("fallback-bucket"))
            .envs(failover_tuning()),
    );
    let mut client = server.client().await;
    let (first_id, first) = create_noise(&mut client, "one.bin", 700_000, 80).await;
    wait_drained(&server).await;
    primary.stop().await;
    let (second_id, second) = create_noise(&mut client, "two.bin", 700_000, 81).await;
    assert_reads_back(&mut client, &first_id, &first).await;
    assert_reads_back(&mut client, &second_id, &second).await;
    primary.restart().await;
    wait_drained(&server).await;
    let check = sync(&server, true).await;
    assert_eq!(
        (check.missing_on_primary, check.missing_on_fallback),
        (0, 0),
        "{check:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_fallback_the_service_says_so() {
    let server = ServerProcess::start();
    let error = fallback_client(&server)
        .await
        .get_fallback_status(GetFallbackStatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::FailedPrecondition);
    assert!(error.message().contains("S3_FALLBACK_ENABLED"));
}

/// A seeded, reproducible run of creates and updates while both stores are stopped and
/// started at random moments. Every acknowledged version must read back byte-identical, and
/// nothing unacknowledged may be visible. `ARTIFACTD_FAULT_SEED` and
/// `ARTIFACTD_FAULT_OPERATIONS` change the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_store_faults_lose_no_acknowledged_write() {
    use artifactd::proto::update_artifact_header::NextVersion;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    let seed: u64 = std::env::var("ARTIFACTD_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261128);
    let operations: usize = std::env::var("ARTIFACTD_FAULT_OPERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let primary = S3TestServer::start().await;
    let fallback = S3TestServer::start().await;
    let server = ServerProcess::start_with(
        ServerOptions::default()
            .envs(primary.env("primary-bucket"))
            .envs(fallback.fallback_env("fallback-bucket"))
            .envs(failover_tuning())
            .env("ARTIFACTD_STORAGE__FAILOVER__REQUEST_TIMEOUT_MS", "800")
            .env("ARTIFACTD_STORAGE__FAILOVER__PROBE_INTERVAL_MS", "100")
            .env("ARTIFACTD_STORAGE__FAILOVER__OPEN_BACKOFF_INITIAL_MS", "100")
            .env("ARTIFACTD_STORAGE__FAILOVER__OPEN_BACKOFF_MAX_MS", "400")
            .env("ARTIFACTD_INGEST__PACK_TARGET_BYTES", "65536"),
    );
    let stores = Arc::new(tokio::sync::Mutex::new([primary, fallback]));
    let stop_faults = tokio_util::sync::CancellationToken::new();

    // The fault injector: stops or starts one store at random moments.
    let injector = {
        let stores = stores.clone();
        let stop = stop_faults.clone();
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
            let mut toggles = 0u64;
            while !stop.is_cancelled() {
                let pause = Duration::from_millis(rng.random_range(20..300));
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
                let mut stores = stores.lock().await;
                let which = rng.random_range(0..2usize);
                let other_running = stores[1 - which].is_running();
                if stores[which].is_running() {
                    // Both down happens too, but less often.
                    if other_running || rng.random_bool(0.3) {
                        stores[which].stop().await;
                        toggles += 1;
                    }
                } else {
                    stores[which].restart().await;
                    toggles += 1;
                }
            }
            toggles
        })
    };

    let corpus: Vec<Vec<u8>> = [
        "bmad-docs/README.md",
        "bmad-docs/CHANGELOG.md",
        "bmad-docs/CONTRIBUTING.md",
    ]
    .iter()
    .map(|p| std::fs::read(common::corpus_dir().join(p)).unwrap())
    .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut client = server.client().await;
    /// An artifact's id and its acknowledged versions with their content.
    type Acknowledged = (String, Vec<(String, Vec<u8>)>);
    let mut acknowledged: BTreeMap<String, Acknowledged> = BTreeMap::new();
    let (mut acked, mut unavailable, mut attempted_creates) = (0usize, 0usize, 0usize);
    for operation in 0..operations {
        let mut content = corpus[rng.random_range(0..corpus.len())].clone();
        let cut = rng.random_range(0..content.len());
        content.truncate(cut.max(1));
        content.extend_from_slice(&common::noise(
            rng.random_range(0..120_000),
            seed + operation as u64,
        ));
        let update_existing = !acknowledged.is_empty() && rng.random_bool(0.6);
        let result = if update_existing {
            let index = rng.random_range(0..acknowledged.len());
            let (name, (id, versions)) = acknowledged
                .iter()
                .nth(index)
                .map(|(n, v)| (n.clone(), v.clone()))
                .unwrap();
            let current = versions.last().unwrap().0.clone();
            let mut next = common::client::update_header(T, P, &id);
            next.next_version = Some(NextVersion::Bump(artifactd::proto::BumpKind::Patch as i32));
            next.expected_current_version = current;
            common::client::update(&mut client, next, &content)
                .await
                .map(|response| (name, id, response.version.unwrap().version))
        } else {
            attempted_creates += 1;
            let name = format!("fault-{operation:04}.bin");
            create(&mut client, header(T, P, "bundle", &name), &content)
                .await
                .map(|response| {
                    (
                        name,
                        response.artifact.unwrap().id,
                        response.version.unwrap().version,
                    )
                })
        };
        match result {
            Ok((name, id, version)) => {
                acked += 1;
                acknowledged
                    .entry(name)
                    .or_insert_with(|| (id, Vec::new()))
                    .1
                    .push((version, content));
            }
            Err(status) => {
                assert_eq!(
                    status.code(),
                    tonic::Code::Unavailable,
                    "operation {operation}: {status:?}"
                );
                unavailable += 1;
            }
        }
    }
    stop_faults.cancel();
    let toggles = injector.await.unwrap();
    {
        let mut stores = stores.lock().await;
        for store in stores.iter_mut() {
            if !store.is_running() {
                store.restart().await;
            }
        }
    }
    wait_drained(&server).await;

    // Every acknowledged version reads back; nothing else exists.
    let mut lost = 0usize;
    for (name, (id, versions)) in &acknowledged {
        let listed = client
            .list_versions(artifactd::proto::ListVersionsRequest {
                tenant: T.into(),
                project: P.into(),
                artifact_id: id.clone(),
                page_size: 1000,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut listed: Vec<String> = listed.versions.into_iter().map(|v| v.version).collect();
        listed.reverse();
        let expected: Vec<String> = versions.iter().map(|(v, _)| v.clone()).collect();
        assert_eq!(listed, expected, "{name}: only acknowledged versions exist");
        for (version, content) in versions {
            match download(&mut client, download_request(T, P, id, version)).await {
                Ok((_, bytes)) if bytes == *content => {}
                other => {
                    lost += 1;
                    eprintln!("{name} {version} did not read back: {:?}", other.map(|(h, _)| h));
                }
            }
        }
    }
    let mut visible = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_artifacts(artifactd::proto::ListArtifactsRequest {
                tenant: T.into(),
                project: P.into(),
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        visible.extend(page.artifacts.into_iter().map(|a| a.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let acknowledged_names: Vec<String> = acknowledged.keys().cloned().collect();
    assert_eq!(visible, acknowledged_names, "nothing unacknowledged is visible");
    // Every committed pack is on both stores. Packs of abandoned uploads may exist on one
    // side only (a write can land after its client gave up on it); they are garbage for the
    // collector, not data.
    let catalog = Catalog::connect(&format!("sqlite://{}/catalog.db", server.data_dir.display()), 1)
        .await
        .unwrap();
    let committed: std::collections::BTreeSet<String> = catalog
        .packs_in_state("committed")
        .await
        .unwrap()
        .into_iter()
        .map(|pack| {
            artifactd::ingest::PackId::from_hex(&pack.pack_id)
                .unwrap()
                .object_key()
        })
        .collect();
    let (primary_keys, fallback_keys) = {
        let stores = stores.lock().await;
        let keys = |store: artifactd::storage::S3Store| async move {
            store
                .list("packs/")
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.key)
                .collect::<std::collections::BTreeSet<String>>()
        };
        (
            keys(stores[0].store("primary-bucket").await).await,
            keys(stores[1].store("fallback-bucket").await).await,
        )
    };
    let missing_on_primary = committed.difference(&primary_keys).count();
    let missing_on_fallback = committed.difference(&fallback_keys).count();
    let one_sided_orphans = primary_keys.symmetric_difference(&fallback_keys).count();
    println!(
        "fault run seed {seed}: {operations} operations ({attempted_creates} creates attempted), {acked} acknowledged, \
         {unavailable} unavailable, {toggles} store stops/starts, {} artifacts, {lost} acknowledged lost, \
         committed packs {} (missing on primary {missing_on_primary}, on fallback {missing_on_fallback}), \
         uncommitted packs on one side only {one_sided_orphans}",
        acknowledged.len(),
        committed.len(),
    );
    assert_eq!(lost, 0, "acknowledged writes were lost");
    assert_eq!(
        (missing_on_primary, missing_on_fallback),
        (0, 0),
        "committed packs are on both stores"
    );
    assert!(
        acked > operations / 4,
        "the run exercised successful writes too: {acked}"
    );
    assert!(
        unavailable > 0 && toggles > 10,
        "the run exercised faults: {unavailable} failures, {toggles} toggles"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_copy_is_read_from_the_other_store() {
    let pair = start_pair().await;
    let mut client = pair.server.client().await;
    let (id, content) = create_noise(&mut client, "precious.bin", 200_000, 90).await;
    wait_drained(&pair.server).await;
    let primary = pair.primary.store("primary-bucket").await;
    let fallback = pair.fallback.store("fallback-bucket").await;
    let packs = primary.list("packs/").await.unwrap();
    assert!(!packs.is_empty());
    for pack in &packs {
        let mut bytes = primary
            .get(&pack.key, artifactd::storage::GetOptions::default())
            .await
            .unwrap()
            .to_vec();
        bytes[10] ^= 0xff;
        primary.put(&pack.key, bytes.into()).await.unwrap();
    }
    assert_reads_back(&mut client, &id, &content).await;

    // With both copies damaged the loss is reported, never wrong bytes.
    for pack in &packs {
        fallback
            .put(&pack.key, bytes::Bytes::from_static(b"garbage"))
            .await
            .unwrap();
    }
    let error = download(&mut client, download_request(T, P, &id, ""))
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::DataLoss, "{error:?}");
}
