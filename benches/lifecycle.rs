//! `cargo bench --bench lifecycle`: dependency resolution, reverse lookups and the change
//! stream of the release binary (embedded SQLite catalog), printed as `RESULT <name> <value>`
//! lines, each with a baseline measured in the same run.
//!
//! - `resolve_p50_ms`, `resolve_p95_ms`: `ResolveDependencies` of a version whose closure
//!   holds 1,000 artifacts (a tree of fan-out 2 with cross links, every artifact also
//!   depending on one shared glossary); `resolve_p50_vs_list` against listing the same 1,000
//!   artifacts in one `ListArtifacts` page (the least a caller could do to see them).
//! - `reverse_p95_ms`: `ListDependents` (transitive) of the glossary, which all 1,000 depend
//!   on; `reverse_p95_vs_list` against the same listing.
//! - `watch_events_per_s`: events a watcher received per second while four writers committed
//!   label changes as fast as they could; `watch_vs_commit_rate` against the rate the writers
//!   committed them (1.0 means the stream keeps up).
//! - `watch_lag_p99_ms`: from an event's commit time to its arrival at the watcher;
//!   `watch_lag_p99_vs_call_p99` against the writers' own call latency p99.

#[path = "../tests/common/mod.rs"]
mod common;

use artifactd::proto::{
    self, DependencySpec, Labels, ListArtifactsRequest, ListDependentsRequest, ResolveDependenciesRequest,
    UpdateArtifactLabelsRequest, WatchEventsRequest, dependency_spec, watch_events_response,
};
use common::binary::ServerProcess;
use common::client::{Client, create, header};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const T: &str = "bench";
const P: &str = "lifecycle";
const NODES: usize = 1000;
const RUNS: usize = 30;
const WATCHED_CHANGES: usize = 4000;
const WRITERS: usize = 4;

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn on_id(id: &str) -> DependencySpec {
    DependencySpec {
        target: Some(dependency_spec::Target::ArtifactId(id.into())),
        requirement: "^1".into(),
        kind: "references".into(),
    }
}

#[tokio::main]
async fn main() {
    let server = ServerProcess::start();
    let mut client = server.client().await;
    dependencies(&mut client).await;
    watch(&server, &mut client).await;
}

async fn dependencies(client: &mut Client) {
    let glossary = create(client, header(T, P, "doc", "glossary.md"), b"# Glossary\n")
        .await
        .unwrap()
        .artifact
        .unwrap()
        .id;
    // Node i depends on 2i+1, 2i+2 (a tree) and 3i+3 (a cross link), and on the glossary;
    // created leaves first so that every target exists.
    let mut ids = vec![String::new(); NODES];
    for i in (0..NODES).rev() {
        let mut deps: Vec<DependencySpec> = [2 * i + 1, 2 * i + 2, 3 * i + 3]
            .into_iter()
            .filter(|j| *j < NODES)
            .map(|j| on_id(&ids[j]))
            .collect();
        deps.dedup_by(|a, b| a.target == b.target);
        deps.push(on_id(&glossary));
        let mut node = header(T, P, "story", &format!("node-{i:04}.md"));
        node.dependencies = deps;
        ids[i] = create(client, node, format!("# node {i}\n").as_bytes())
            .await
            .unwrap()
            .artifact
            .unwrap()
            .id;
    }
    let resolve = ResolveDependenciesRequest {
        tenant: T.into(),
        project: P.into(),
        artifact_id: ids[0].clone(),
        admit_states: vec![proto::LifecycleState::Draft as i32],
        ..Default::default()
    };
    let first = client
        .resolve_dependencies(resolve.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        first.resolved.len(),
        NODES,
        "the closure holds every other node and the glossary"
    );
    let list = ListArtifactsRequest {
        tenant: T.into(),
        project: P.into(),
        page_size: 1000,
        ..Default::default()
    };
    let (mut resolves, mut lists, mut reverses) = (Vec::new(), Vec::new(), Vec::new());
    let reverse = ListDependentsRequest {
        tenant: T.into(),
        project: P.into(),
        artifact_id: glossary.clone(),
        transitive: true,
        max_depth: 64,
        ..Default::default()
    };
    for _ in 0..RUNS {
        let started = Instant::now();
        client.resolve_dependencies(resolve.clone()).await.unwrap();
        resolves.push(started.elapsed());
        let started = Instant::now();
        let listed = client.list_artifacts(list.clone()).await.unwrap().into_inner();
        lists.push(started.elapsed());
        assert_eq!(listed.artifacts.len(), 1000);
        let started = Instant::now();
        let found = client
            .list_dependents(reverse.clone())
            .await
            .unwrap()
            .into_inner();
        reverses.push(started.elapsed());
        assert_eq!(found.dependents.len(), NODES);
    }
    let list_p50 = percentile(&mut lists, 0.5);
    let list_p95 = percentile(&mut lists, 0.95);
    let resolve_p50 = percentile(&mut resolves, 0.5);
    println!("RESULT resolve_p50_ms {:.1}", ms(resolve_p50));
    println!("RESULT resolve_p95_ms {:.1}", ms(percentile(&mut resolves, 0.95)));
    println!("RESULT list_1000_p50_ms {:.1}", ms(list_p50));
    println!(
        "RESULT resolve_p50_vs_list {:.2}",
        resolve_p50.as_secs_f64() / list_p50.as_secs_f64()
    );
    let reverse_p95 = percentile(&mut reverses, 0.95);
    println!("RESULT reverse_p95_ms {:.1}", ms(reverse_p95));
    println!(
        "RESULT reverse_p95_vs_list {:.2}",
        reverse_p95.as_secs_f64() / list_p95.as_secs_f64()
    );
}

async fn watch(server: &ServerProcess, client: &mut Client) {
    let id = create(client, header(T, P, "doc", "watched.md"), b"# Watched\n")
        .await
        .unwrap()
        .artifact
        .unwrap()
        .id;
    let mut stream = server
        .client()
        .await
        .watch_events(WatchEventsRequest {
            tenant: T.into(),
            project: P.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let watcher = tokio::spawn(async move {
        let mut lags = Vec::with_capacity(WATCHED_CHANGES);
        let mut first = None;
        let mut last = Instant::now();
        while lags.len() < WATCHED_CHANGES {
            let message = stream.message().await.unwrap().unwrap();
            if let Some(watch_events_response::Message::Event(event)) = message.message {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
                let at = event.at.unwrap();
                let committed = Duration::new(at.seconds as u64, at.nanos as u32);
                lags.push(now.saturating_sub(committed));
                first.get_or_insert_with(Instant::now);
                last = Instant::now();
            }
        }
        (lags, last - first.unwrap())
    });
    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut client = server.client().await;
        let id = id.clone();
        writers.push(tokio::spawn(async move {
            let mut calls = Vec::new();
            for n in 0..WATCHED_CHANGES / WRITERS {
                let call = Instant::now();
                client
                    .update_artifact_labels(UpdateArtifactLabelsRequest {
                        tenant: T.into(),
                        project: P.into(),
                        artifact_id: id.clone(),
                        labels: Some(Labels {
                            tags: vec![format!("w{w}-{n}")],
                            categories: vec![],
                        }),
                    })
                    .await
                    .unwrap();
                calls.push(call.elapsed());
            }
            calls
        }));
    }
    let mut calls = Vec::new();
    for writer in writers {
        calls.extend(writer.await.unwrap());
    }
    let writing = started.elapsed();
    let (mut lags, receiving) = watcher.await.unwrap();
    let commit_rate = WATCHED_CHANGES as f64 / writing.as_secs_f64();
    let watch_rate = (WATCHED_CHANGES - 1) as f64 / receiving.as_secs_f64();
    let lag_p99 = percentile(&mut lags, 0.99);
    let call_p99 = percentile(&mut calls, 0.99);
    println!("RESULT watch_events_per_s {watch_rate:.0}");
    println!("RESULT commit_rate_per_s {commit_rate:.0}");
    println!("RESULT watch_vs_commit_rate {:.2}", watch_rate / commit_rate);
    println!("RESULT watch_lag_p99_ms {:.1}", ms(lag_p99));
    println!("RESULT call_p99_ms {:.1}", ms(call_p99));
    println!(
        "RESULT watch_lag_p99_vs_call_p99 {:.2}",
        lag_p99.as_secs_f64() / call_p99.as_secs_f64()
    );
}
