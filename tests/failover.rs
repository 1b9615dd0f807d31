//! Failover between two real S3 servers over HTTP (in-process s3s-fs servers that the tests
//! stop and restart, and moto as an independent fallback), through the binary over gRPC.

mod common;

use artifactd::proto::{
    BreakerState, GetFallbackMetricsRequest, GetFallbackStatusRequest, GetFallbackStatusResponse, StoreSide,
    TestFallbackRequest,
};
use artifactd::storage::BlobStore;
use common::binary::{ServerOptions, ServerProcess};
use common::client::{Client, create, create_messages, download, download_request, header};
use common::failover::{
    CatalogKind, P, Pair, T, failover_tuning, fallback_client, fault_run, start_pair, start_pair_on,
    start_pair_with, status, sync, wait_drained, wait_for,
};
use common::moto::MotoServer;
use common::proxy::StallingProxy;
use common::s3::S3TestServer;
use std::time::{Duration, Instant};

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

async fn an_upload_in_progress_completes_on_the_fallback_when_the_primary_dies(mut pair: Pair) {
    let catalog = pair.catalog().await;
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

async fn the_primary_returning_with_its_data_drains_the_backlog_and_takes_writes_back(mut pair: Pair) {
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
    // Open, or half-open when its backoff ran out before this read (the tuning's backoff is
    // short, and a busy machine takes that long between the writes and the status): either
    // way not closed.
    let primary_breaker = store_status(&during, StoreSide::Primary).breaker_state;
    assert!(
        [BreakerState::Open as i32, BreakerState::HalfOpen as i32].contains(&primary_breaker),
        "the primary's breaker is {primary_breaker} during the outage"
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

/// The campaign's drill: the primary is replaced by an empty server (its bucket recreated by
/// an operator). Without anyone running SyncFallback, reconciliation finds what it lacks,
/// the status says so until it is refilled, and then the fallback can freeze without a
/// single read failing or waiting on it.
async fn an_empty_primary_is_refilled_without_anyone_asking(mut pair: Pair) {
    let mut client = pair.server.client().await;
    let mut written = Vec::new();
    for i in 0..3 {
        written.push(create_noise(&mut client, &format!("old-{i}.bin"), 500_000, 30 + i).await);
    }
    wait_drained(&pair.server).await;
    pair.primary.stop().await;
    written.push(create_noise(&mut client, "outage.bin", 500_000, 40).await);

    pair.primary.wipe_and_restart().await;
    pair.primary.store("primary-bucket").await;
    let bucket_recreated = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    wait_for(
        "the primary to be refilled by reconciliation",
        Duration::from_secs(60),
        || async {
            let now = status(&pair.server).await;
            let primary = &now.stores[0];
            // A reconciliation since the new bucket exists (the one at start-up, or the
            // draining of the outage's own backlog, would not have found the old packs).
            let reconciled_since = now
                .last_reconciliation_at
                .is_some_and(|at| at.seconds as f64 + f64::from(at.nanos) / 1e9 > bucket_recreated);
            reconciled_since && primary.lacking == 0 && primary.repaired > 0 && !now.degraded
        },
    )
    .await;
    let now = status(&pair.server).await;
    assert!(
        now.stores[0].missing_at_last_reconciliation > 0 || now.stores[0].repaired > 0,
        "{now:?}"
    );
    let check = sync(&pair.server, true).await;
    assert_eq!(
        (check.missing_on_primary, check.missing_on_fallback),
        (0, 0),
        "{check:?}"
    );

    // The fallback freezes: every read is served by the refilled primary, promptly.
    pair.fallback.stall().await;
    for (id, content) in &written {
        let started = std::time::Instant::now();
        assert_reads_back(&mut client, id, content).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a read waited {:?} on the frozen fallback",
            started.elapsed()
        );
    }
}

/// A store that lost objects while nobody looked (no outage, no breaker transition) is
/// found by the periodic reconciliation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_lost_silently_are_found_by_periodic_reconciliation() {
    let Pair {
        server,
        fallback,
        primary: _primary,
        ..
    } = start_pair_with(
        CatalogKind::Sqlite,
        &[("ARTIFACTD_STORAGE__FAILOVER__RECONCILE_INTERVAL_MS", "500")],
    )
    .await;
    let mut client = server.client().await;
    let (id, content) = create_noise(&mut client, "kept.bin", 700_000, 7).await;
    wait_drained(&server).await;
    // Delete the fallback's copies behind the service's back.
    let fallback_store = fallback.store("fallback-bucket").await;
    let lost = fallback_store.list("packs/").await.unwrap();
    assert!(!lost.is_empty());
    for object in &lost {
        fallback_store.delete(&object.key).await.unwrap();
    }
    wait_for("the fallback to be refilled", Duration::from_secs(30), || async {
        fallback_store
            .list("packs/")
            .await
            .map(|now| now.len())
            .unwrap_or(0)
            == lost.len()
    })
    .await;
    let now = status(&server).await;
    assert!(now.stores[1].repaired >= lost.len() as u64, "{now:?}");
    assert_reads_back(&mut client, &id, &content).await;
}

async fn a_stopped_fallback_costs_clients_nothing_and_catches_up(mut pair: Pair) {
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

async fn both_stores_down_is_unavailable_and_recovers_by_itself(mut pair: Pair) {
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
    pair.server
        .wait_for_health(
            "",
            tonic_health::pb::health_check_response::ServingStatus::NotServing,
        )
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
    pair.server
        .wait_for_health(
            "",
            tonic_health::pb::health_check_response::ServingStatus::Serving,
        )
        .await;
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
    // A hung primary must not make the service look down while the fallback works.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    for _ in 0..5 {
        let serving = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(
            serving,
            tonic_health::pb::health_check_response::ServingStatus::Serving
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
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
/// started at random moments (see `common::failover::fault_run`). `ARTIFACTD_FAULT_SEED` and
/// `ARTIFACTD_FAULT_OPERATIONS` change the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_store_faults_lose_no_acknowledged_write() {
    let seed: u64 = std::env::var("ARTIFACTD_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261128);
    let operations: usize = std::env::var("ARTIFACTD_FAULT_OPERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let report = fault_run(seed, operations).await;
    println!("{report}");
    assert_eq!(report.lost, 0, "acknowledged writes were lost");
    assert_eq!(
        report.unacknowledged_visible, 0,
        "unacknowledged writes are visible"
    );
    assert_eq!(
        (
            report.committed_missing_on_primary,
            report.committed_missing_on_fallback
        ),
        (0, 0),
        "committed packs are on both stores"
    );
    assert!(
        report.acknowledged > operations / 4,
        "the run exercised successful writes too: {report}"
    );
    assert!(
        report.unavailable > 0 && report.toggles > 10,
        "the run exercised faults: {report}"
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

/// Runs a scenario as two tests, one on each catalog.
macro_rules! on_both_catalogs {
    ($($scenario:ident => $sqlite:ident, $postgres:ident;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $sqlite() {
                $scenario(start_pair_on(CatalogKind::Sqlite).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $postgres() {
                $scenario(start_pair_on(CatalogKind::Postgres).await).await;
            }
        )*
    };
}

on_both_catalogs! {
    an_upload_in_progress_completes_on_the_fallback_when_the_primary_dies => an_upload_in_progress_completes_on_the_fallback_when_the_primary_dies_on_sqlite, an_upload_in_progress_completes_on_the_fallback_when_the_primary_dies_on_postgres;
    the_primary_returning_with_its_data_drains_the_backlog_and_takes_writes_back => the_primary_returning_with_its_data_drains_the_backlog_and_takes_writes_back_on_sqlite, the_primary_returning_with_its_data_drains_the_backlog_and_takes_writes_back_on_postgres;
    an_empty_primary_is_refilled_without_anyone_asking => an_empty_primary_is_refilled_without_anyone_asking_on_sqlite, an_empty_primary_is_refilled_without_anyone_asking_on_postgres;
    a_stopped_fallback_costs_clients_nothing_and_catches_up => a_stopped_fallback_costs_clients_nothing_and_catches_up_on_sqlite, a_stopped_fallback_costs_clients_nothing_and_catches_up_on_postgres;
    both_stores_down_is_unavailable_and_recovers_by_itself => both_stores_down_is_unavailable_and_recovers_by_itself_on_sqlite, both_stores_down_is_unavailable_and_recovers_by_itself_on_postgres;
}
