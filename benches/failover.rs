//! `cargo bench --bench failover`: failover behaviour of the release binary over two
//! in-process S3 servers, printed as `RESULT <name> <value>` lines.
//!
//! - `failover_seconds`: from stopping the primary to the first acknowledged write (default
//!   failover settings: the breaker has to notice on its own).
//! - `throughput_during_failover_vs_before`: upload throughput with the primary down divided
//!   by the throughput with both stores up (mirrored writes), same data size, same run.
//! - `replication_mib_s`: how fast the backlog written during the outage drains back to the
//!   returned primary (bytes copied / time the replicator spent copying).
//! - `backlog_drain_seconds`: from restarting the primary to an empty replication queue.
//! - `acknowledged_lost`: from a seeded random fault run (the same as the test's).
//! - `stall_write_p99_ms`, `stall_read_p99_ms`: p99 of 4 KiB creates and of reads of
//!   existing 4 KiB artifacts while the primary is frozen (accepts connections, answers
//!   nothing, like a SIGSTOPped server), each also as a ratio to the same figure measured
//!   just before the freeze in the same run (`*_vs_before`).
//! - `stall_first_ok_seconds`: from freezing the primary to the first acknowledged create.

#[path = "../tests/common/mod.rs"]
mod common;

use artifactd::proto::GetFallbackMetricsRequest;
use common::binary::{ServerOptions, ServerProcess};
use common::client::{create, create_id, create_messages, download, download_request, header};
use common::failover::{fallback_client, fault_run, status};
use common::s3::S3TestServer;
use std::time::{Duration, Instant};

const UPLOAD: usize = 64 * 1024 * 1024;
const MESSAGE: usize = 256 * 1024;

async fn timed_upload(client: &mut common::client::Client, name: &str, seed: u64) -> Duration {
    let data = common::noise(UPLOAD, seed);
    let messages = create_messages(header("bench", "failover", "bundle", name), &data, MESSAGE);
    let started = Instant::now();
    client
        .create_artifact(futures::stream::iter(messages))
        .await
        .expect("upload");
    started.elapsed()
}

#[tokio::main]
async fn main() {
    run().await;
    stall().await;
}

/// Creates small artifacts until one is acknowledged; returns how long that took and how
/// many attempts it made.
async fn until_a_create_succeeds(
    client: &mut common::client::Client,
    project: &str,
    label: &str,
) -> (Duration, u64) {
    let started = Instant::now();
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        let name = format!("{label}-{attempt}.bin");
        let data = common::noise(SMALL, 5000 + attempt);
        if create(client, header("bench", project, "bundle", &name), &data)
            .await
            .is_ok()
        {
            return (started.elapsed(), attempt);
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no write succeeded within 120 s"
        );
    }
}

const SMALL: usize = 4096;
const STALL_CALLS: usize = 200;

fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[(samples.len() * 99).div_ceil(100) - 1]
}

/// p99 of creates and of reads of `existing`, `STALL_CALLS` each.
async fn small_calls(
    client: &mut common::client::Client,
    label: &str,
    existing: &[String],
) -> (Duration, Duration) {
    let mut writes = Vec::with_capacity(STALL_CALLS);
    let mut reads = Vec::with_capacity(STALL_CALLS);
    for n in 0..STALL_CALLS {
        let data = common::noise(SMALL, n as u64 + 7);
        let started = Instant::now();
        create(
            client,
            header("bench", "stall", "doc", &format!("{label}-{n}.bin")),
            &data,
        )
        .await
        .expect("create");
        writes.push(started.elapsed());
        let id = &existing[n % existing.len()];
        let started = Instant::now();
        download(client, download_request("bench", "stall", id, ""))
            .await
            .expect("read");
        reads.push(started.elapsed());
    }
    (p99(writes), p99(reads))
}

/// A frozen primary, with default failover settings (10 s request timeout).
async fn stall() {
    let (mut primary, _fallback, server) = default_pair().await;
    let mut client = server.client().await;
    let mut existing = Vec::new();
    for n in 0..50 {
        let data = common::noise(SMALL, 1000 + n);
        existing.push(
            create_id(
                &mut client,
                header("bench", "stall", "doc", &format!("old-{n}.bin")),
                &data,
            )
            .await,
        );
    }
    let (write_before, read_before) = small_calls(&mut client, "before", &existing).await;

    primary.stall().await;
    let first_ok = until_a_create_succeeds(&mut client, "stall", "first")
        .await
        .0
        .as_secs_f64();
    let (write_during, read_during) = small_calls(&mut client, "during", &existing).await;
    drop(server);

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("RESULT stall_first_ok_seconds {first_ok:.3}");
    println!("RESULT stall_write_p99_ms {:.2}", ms(write_during));
    println!("RESULT stall_read_p99_ms {:.2}", ms(read_during));
    println!("RESULT write_p99_ms_before_stall {:.2}", ms(write_before));
    println!("RESULT read_p99_ms_before_stall {:.2}", ms(read_before));
    println!(
        "RESULT stall_write_p99_vs_before {:.2}",
        write_during.as_secs_f64() / write_before.as_secs_f64()
    );
    println!(
        "RESULT stall_read_p99_vs_before {:.2}",
        read_during.as_secs_f64() / read_before.as_secs_f64()
    );
}

/// Two in-process S3 servers and the release binary over them, with default settings.
async fn default_pair() -> (S3TestServer, S3TestServer, ServerProcess) {
    let primary = S3TestServer::start().await;
    let fallback = S3TestServer::start().await;
    let server = ServerProcess::start_with(
        ServerOptions::default()
            .envs(primary.env("primary-bucket"))
            .envs(fallback.fallback_env("fallback-bucket")),
    );
    (primary, fallback, server)
}

async fn run() {
    let (mut primary, _fallback, server) = default_pair().await;
    let mut client = server.client().await;

    // Throughput with both stores up (every pack written to both).
    let mut before = Duration::MAX;
    for round in 0..2 {
        before = before.min(timed_upload(&mut client, &format!("before-{round}.bin"), 100 + round).await);
    }

    // Failover: stop the primary, write small artifacts until one is acknowledged.
    primary.stop().await;
    let (failover, attempt) = until_a_create_succeeds(&mut client, "failover", "probe").await;
    let failover_seconds = failover.as_secs_f64();

    let mut during = Duration::MAX;
    for round in 0..2 {
        during = during.min(timed_upload(&mut client, &format!("during-{round}.bin"), 200 + round).await);
    }

    // Failback: the backlog drains to the returned primary.
    let backlog = status(&server).await.queue_depth;
    primary.restart().await;
    let restarted = Instant::now();
    loop {
        if status(&server).await.queue_depth == 0 {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(300),
            "the backlog did not drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain_seconds = restarted.elapsed().as_secs_f64();
    let metrics = fallback_client(&server)
        .await
        .get_fallback_metrics(GetFallbackMetricsRequest {})
        .await
        .unwrap()
        .into_inner();
    drop(server);

    let report = fault_run(20261128, 300).await;
    eprintln!("{report}");
    eprintln!("backlog at failback: {backlog} objects; failover after {attempt} attempts");

    println!("RESULT failover_seconds {failover_seconds:.3}");
    println!(
        "RESULT throughput_during_failover_vs_before {:.3}",
        before.as_secs_f64() / during.as_secs_f64()
    );
    println!(
        "RESULT upload_mib_s_before {:.1}",
        UPLOAD as f64 / 1048576.0 / before.as_secs_f64()
    );
    println!(
        "RESULT upload_mib_s_during {:.1}",
        UPLOAD as f64 / 1048576.0 / during.as_secs_f64()
    );
    println!(
        "RESULT replication_mib_s {:.1}",
        metrics.replication_mib_per_second
    );
    println!("RESULT backlog_drain_seconds {drain_seconds:.3}");
    println!("RESULT acknowledged_lost {}", report.lost);
}
