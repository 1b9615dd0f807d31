//! The change stream over gRPC against the built binary: three watchers follow 10,000 mixed
//! changes from four writers while the server is killed and restarted twice, and each must
//! receive every committed event exactly once, in commit order (checked against the outbox
//! itself); cursors outside the retained history, slow consumers, heartbeats and filters.

mod common;

use artifactd::catalog::{Catalog, Scope};
use artifactd::proto::{
    self, BumpKind, EventKind, Labels, SetAliasRequest, TransitionVersionRequest,
    UpdateArtifactLabelsRequest, WatchEventsRequest, update_artifact_header, watch_events_response,
};
use common::binary::{ServerOptions, ServerProcess};
use common::client::{Client, create, header, update, update_header};
use common::postgres::TestDatabase;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

const T: &str = "acme";
const P: &str = "watched";
const CHANGES: usize = 10_000;
const WRITERS: usize = 4;
const WATCHERS: usize = 3;

/// Where the server is now; writers and watchers reconnect to it after a restart.
#[derive(Clone, Default)]
struct Endpoint(Arc<Mutex<String>>);

impl Endpoint {
    fn set(&self, endpoint: String) {
        *self.0.lock().unwrap() = endpoint;
    }

    async fn client(&self) -> Option<Client> {
        let endpoint = self.0.lock().unwrap().clone();
        let channel = Channel::from_shared(endpoint).ok()?.connect().await.ok()?;
        Some(Client::new(common::binary::Authed::new(
            channel,
            common::binary::Bearer::new(&common::binary::ADMIN_KEY),
        )))
    }
}

fn watch_request(after_cursor: &str) -> WatchEventsRequest {
    WatchEventsRequest {
        tenant: T.into(),
        project: P.into(),
        after_cursor: after_cursor.into(),
        from_oldest: after_cursor.is_empty(),
        ..Default::default()
    }
}

/// Follows the stream from the oldest event, reconnecting with its last cursor whenever the
/// stream breaks, until `done` is set and it has reached `target`.
async fn watcher(endpoint: Endpoint, done: Arc<AtomicBool>, target: Arc<Mutex<Option<i64>>>) -> Vec<i64> {
    let mut received: Vec<i64> = Vec::new();
    let mut cursor = String::new();
    loop {
        let reached = |received: &[i64]| {
            let target = *target.lock().unwrap();
            done.load(Ordering::SeqCst) && target.is_some_and(|t| received.last().copied().unwrap_or(0) >= t)
        };
        if reached(&received) {
            return received;
        }
        let Some(mut client) = endpoint.client().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(response) = client.watch_events(watch_request(&cursor)).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut stream = response.into_inner();
        loop {
            match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
                Ok(Ok(Some(message))) => match message.message {
                    Some(watch_events_response::Message::Event(event)) => {
                        received.push(event.cursor.parse().unwrap());
                        cursor = event.cursor;
                    }
                    Some(watch_events_response::Message::Heartbeat(beat)) => {
                        // Nothing for this watcher up to here; it filters nothing, so the
                        // heartbeat is never ahead of its last event.
                        assert!(beat.cursor.parse::<i64>().unwrap() >= received.last().copied().unwrap_or(0));
                    }
                    None => panic!("an empty message"),
                },
                Ok(Ok(None)) | Ok(Err(_)) => break,
                Err(_) => {
                    if reached(&received) {
                        return received;
                    }
                }
            }
            if reached(&received) {
                return received;
            }
        }
    }
}

/// One writer's changes: creates, new versions, label changes, transitions and alias moves,
/// each retried across server restarts until it is answered.
async fn writer(endpoint: Endpoint, index: usize, changes: usize, made: Arc<AtomicUsize>) {
    let mut artifacts: Vec<(String, bool)> = Vec::new(); // (id, latest version in review)
    let mut step = 0usize;
    let mut client: Option<Client> = None;
    while step < changes {
        let Some(active) = client.as_mut() else {
            client = endpoint.client().await;
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            continue;
        };
        let result: Result<(), tonic::Status> = if artifacts.is_empty() || step.is_multiple_of(25) {
            let name = format!("w{index}-{}.md", artifacts.len());
            match create(
                active,
                header(T, P, "story", &name),
                format!("# {name}\n").as_bytes(),
            )
            .await
            {
                Ok(created) => {
                    artifacts.push((created.artifact.unwrap().id, false));
                    Ok(())
                }
                // Committed before a crash cut the answer off: it exists, find it.
                Err(status) if status.code() == Code::AlreadyExists => {
                    let found = active
                        .get_artifact(proto::GetArtifactRequest {
                            tenant: T.into(),
                            project: P.into(),
                            selector: Some(proto::get_artifact_request::Selector::Coordinates(
                                proto::ArtifactCoordinates {
                                    artifact_type: "story".into(),
                                    name,
                                },
                            )),
                            version: String::new(),
                        })
                        .await
                        .map(|r| r.into_inner().artifact.unwrap().id);
                    found.map(|id| artifacts.push((id, false)))
                }
                Err(status) => Err(status),
            }
        } else {
            let pick = step % artifacts.len();
            let (id, in_review) = artifacts[pick].clone();
            match step % 4 {
                0 => {
                    let mut next = update_header(T, P, &id);
                    next.next_version =
                        Some(update_artifact_header::NextVersion::Bump(BumpKind::Patch as i32));
                    update(active, next, format!("step {step}\n").as_bytes())
                        .await
                        .map(|_| {
                            artifacts[pick].1 = false;
                        })
                }
                1 => active
                    .update_artifact_labels(UpdateArtifactLabelsRequest {
                        tenant: T.into(),
                        project: P.into(),
                        artifact_id: id,
                        labels: Some(Labels {
                            tags: vec![format!("t{}", step % 7)],
                            categories: vec![],
                        }),
                    })
                    .await
                    .map(|_| ()),
                2 => {
                    let target = if in_review {
                        proto::LifecycleState::Draft
                    } else {
                        proto::LifecycleState::Review
                    };
                    let moved = active
                        .transition_version(TransitionVersionRequest {
                            tenant: T.into(),
                            project: P.into(),
                            artifact_id: id,
                            target_state: target as i32,
                            ..Default::default()
                        })
                        .await;
                    match moved {
                        Ok(_) => {
                            artifacts[pick].1 = !in_review;
                            Ok(())
                        }
                        // A move committed before a crash: the state is already the target.
                        Err(status) if status.code() == Code::FailedPrecondition => {
                            artifacts[pick].1 = !in_review;
                            Ok(())
                        }
                        Err(status) => Err(status),
                    }
                }
                _ => {
                    let latest = active
                        .get_artifact(proto::GetArtifactRequest {
                            tenant: T.into(),
                            project: P.into(),
                            selector: Some(proto::get_artifact_request::Selector::ArtifactId(id.clone())),
                            version: String::new(),
                        })
                        .await
                        .map(|r| r.into_inner().artifact.unwrap().latest_version);
                    match latest {
                        Ok(version) => active
                            .set_alias(SetAliasRequest {
                                tenant: T.into(),
                                project: P.into(),
                                artifact_id: id,
                                alias: "current".into(),
                                version,
                                expected_version: None,
                            })
                            .await
                            .map(|_| ()),
                        Err(status) => Err(status),
                    }
                }
            }
        };
        match result {
            Ok(()) => {
                step += 1;
                made.fetch_add(1, Ordering::SeqCst);
            }
            Err(status) => {
                assert!(
                    matches!(
                        status.code(),
                        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
                    ),
                    "writer {index}: unexpected {status:?}"
                );
                client = None;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Every event of the project the outbox holds, in commit order.
async fn outbox_positions(catalog: &Catalog) -> Vec<i64> {
    let scope = Scope::new(T, P);
    let mut positions = Vec::new();
    let mut after = 0;
    loop {
        let batch = catalog.events_after(&scope, after, 5000).await.unwrap();
        positions.extend(batch.events.iter().map(|e| e.position));
        after = batch.scanned_to;
        if !batch.full {
            return positions;
        }
    }
}

async fn watchers_receive_every_event_once_in_order_across_restarts(postgres: bool) {
    let data = tempfile::tempdir().unwrap();
    let database = if postgres {
        Some(TestDatabase::create().await)
    } else {
        None
    };
    let options = || {
        let mut options = ServerOptions {
            data_dir: Some(data.path().to_owned()),
            ..Default::default()
        }
        .env("ARTIFACTD_EVENTS__HEARTBEAT_MS", "300");
        if let Some(database) = &database {
            options = options.env("DATABASE_URL", database.url.clone());
        }
        options
    };
    let mut server = ServerProcess::start_with(options());
    let endpoint = Endpoint::default();
    endpoint.set(server.endpoint());

    let done = Arc::new(AtomicBool::new(false));
    let target = Arc::new(Mutex::new(None));
    let watchers: Vec<_> = (0..WATCHERS)
        .map(|_| tokio::spawn(watcher(endpoint.clone(), done.clone(), target.clone())))
        .collect();
    let made = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|index| tokio::spawn(writer(endpoint.clone(), index, CHANGES / WRITERS, made.clone())))
        .collect();

    // Killed (no shutdown at all) twice, mid-stream.
    for at in [CHANGES * 3 / 10, CHANGES * 65 / 100] {
        while made.load(Ordering::SeqCst) < at {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.kill();
        server = ServerProcess::start_with(options());
        endpoint.set(server.endpoint());
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let url = match &database {
        Some(database) => database.url.clone(),
        None => format!("sqlite://{}/catalog.db", data.path().display()),
    };
    let catalog = Catalog::connect(&url, 2).await.unwrap();
    let committed = outbox_positions(&catalog).await;
    assert!(
        committed.len() >= CHANGES,
        "{} events for {CHANGES} changes",
        committed.len()
    );
    *target.lock().unwrap() = committed.last().copied();
    done.store(true, Ordering::SeqCst);
    for watcher in watchers {
        let received = tokio::time::timeout(Duration::from_secs(120), watcher)
            .await
            .expect("a watcher caught up")
            .unwrap();
        assert_eq!(received.len(), committed.len(), "every event, once");
        assert!(received == committed, "in commit order, the outbox's own");
    }
    catalog.close().await;
    drop(server);
    if let Some(database) = database {
        database.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watchers_receive_every_event_once_in_order_across_restarts_on_sqlite() {
    watchers_receive_every_event_once_in_order_across_restarts(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watchers_receive_every_event_once_in_order_across_restarts_on_postgres() {
    watchers_receive_every_event_once_in_order_across_restarts(true).await;
}

async fn labels_changes(client: &mut Client, id: &str, count: usize) {
    for i in 0..count {
        client
            .update_artifact_labels(UpdateArtifactLabelsRequest {
                tenant: T.into(),
                project: P.into(),
                artifact_id: id.into(),
                labels: Some(Labels {
                    tags: vec![format!("n{i}")],
                    categories: vec![],
                }),
            })
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_filters_and_bad_cursors() {
    let server = ServerProcess::start_with(
        ServerOptions::default()
            .env("ARTIFACTD_EVENTS__HEARTBEAT_MS", "200")
            .env("ARTIFACTD_EVENTS__BUFFER_EVENTS", "4")
            .env("ARTIFACTD_EVENTS__SLOW_CONSUMER_MS", "300"),
    );
    let mut client = server.client().await;

    // An idle stream carries heartbeats with a cursor.
    let mut idle = client.watch_events(watch_request("")).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), idle.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(watch_events_response::Message::Heartbeat(beat)) = first.message else {
        panic!("expected a heartbeat, got {first:?}");
    };
    assert_eq!(beat.cursor, "0");

    // Filters: only transitions of one name.
    let id = create(&mut client, header(T, P, "prd", "watched.md"), b"# Watched\n")
        .await
        .unwrap()
        .artifact
        .unwrap()
        .id;
    create(&mut client, header(T, P, "prd", "other.md"), b"# Other\n")
        .await
        .unwrap();
    let mut filtered = client
        .watch_events(WatchEventsRequest {
            names: vec!["watched.md".into()],
            kinds: vec![EventKind::VersionTransitioned as i32],
            ..watch_request("")
        })
        .await
        .unwrap()
        .into_inner();
    let mut review = TransitionVersionRequest {
        tenant: T.into(),
        project: P.into(),
        artifact_id: id.clone(),
        target_state: proto::LifecycleState::Review as i32,
        reason: "ready".into(),
        ..Default::default()
    };
    client.transition_version(review.clone()).await.unwrap();
    labels_changes(&mut client, &id, 3).await;
    review.target_state = proto::LifecycleState::Draft as i32;
    review.reason = String::new();
    client.transition_version(review).await.unwrap();
    let mut transitions = Vec::new();
    while transitions.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(5), filtered.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(watch_events_response::Message::Event(event)) = message.message {
            assert_eq!(
                (event.kind, event.name.as_str()),
                (EventKind::VersionTransitioned as i32, "watched.md")
            );
            transitions.push((event.from_state, event.to_state, event.reason));
        }
    }
    assert_eq!(
        transitions,
        [
            (
                proto::LifecycleState::Draft as i32,
                proto::LifecycleState::Review as i32,
                "ready".to_owned()
            ),
            (
                proto::LifecycleState::Review as i32,
                proto::LifecycleState::Draft as i32,
                String::new()
            ),
        ]
    );

    // Cursors that did not come from this history, and malformed ones.
    let status = client.watch_events(watch_request("999999")).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("newer than the newest event"),
        "{}",
        status.message()
    );
    let status = client.watch_events(watch_request("-3")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("after_cursor:"),
        "{}",
        status.message()
    );
    let status = client
        .watch_events(WatchEventsRequest {
            kinds: vec![0],
            ..watch_request("")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

/// A watcher that stops reading is cut off once its buffer has been full for the slow
/// consumer limit, and resumes from its cursor. In process, on the use case itself: over
/// gRPC, HTTP/2's windows and send buffers hold megabytes before the stream's own buffer
/// fills, which makes the moment of the cut-off depend on transport settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_is_cut_off_and_resumes_from_its_cursor() {
    use artifactd::app::{Artifacts, Settings, StartAt, WatchFilter, WatchItem};
    use artifactd::catalog::Labels as CatalogLabels;
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::connect(&format!("sqlite://{}/catalog.db", dir.path().display()), 4)
        .await
        .unwrap();
    let store = Arc::new(artifactd::storage::FsStore::open(dir.path().join("blobs")).unwrap());
    let mut settings = Settings::default();
    settings.events.buffer_events = 4;
    settings.events.slow_consumer = Duration::from_millis(200);
    let artifacts = Artifacts::new(catalog, store, settings).await.unwrap();
    let scope = Scope::new(T, P);
    let create = artifactd::app::CreateArtifact {
        scope: scope.clone(),
        artifact_type: "prd".into(),
        name: "slow.md".into(),
        ..Default::default()
    };
    let content = futures::stream::iter(vec![
        Ok(artifactd::app::UploadPart::Data(bytes::Bytes::from_static(
            b"# Slow\n",
        ))),
        Ok(artifactd::app::UploadPart::Finish(Default::default())),
    ]);
    let never = tokio_util::sync::CancellationToken::new();
    let (artifact, _) = artifacts.create(create, content, &never).await.unwrap();
    let label = |n: usize| CatalogLabels {
        tags: vec![format!("n{n}")],
        categories: vec![],
    };

    let mut stream = Box::pin(
        artifacts
            .watch(scope.clone(), StartAt::Now, WatchFilter::default(), never.clone())
            .await
            .unwrap(),
    );
    for n in 0..20 {
        artifacts
            .update_labels(&scope, &artifact.id, &label(n))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let first = stream.next().await.expect("an item");
    let error = first.expect_err("the stream was cut off before anything else");
    assert!(
        matches!(error, artifactd::domain::Error::ResourceExhausted(_)),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("resume after the last cursor received"),
        "{error}"
    );
    assert!(stream.next().await.is_none(), "nothing after the cut-off");

    // Resuming from the start position delivers all 20 changes, in order.
    let start = artifacts
        .watch(
            scope.clone(),
            StartAt::Oldest,
            WatchFilter::default(),
            never.clone(),
        )
        .await
        .unwrap();
    let positions: Vec<i64> = start
        .take(21)
        .map(|item| match item.unwrap() {
            WatchItem::Event(event) => event.position,
            other => panic!("expected events, got {other:?}"),
        })
        .collect()
        .await;
    assert_eq!(positions, (1..=21).collect::<Vec<i64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_is_pruned_past_the_horizon_and_old_cursors_are_out_of_range() {
    let server = ServerProcess::start_with(
        ServerOptions::default()
            .env("ARTIFACTD_EVENTS__RETENTION_SECONDS", "0")
            .env("ARTIFACTD_EVENTS__PRUNE_INTERVAL_MS", "200")
            .env("ARTIFACTD_EVENTS__HEARTBEAT_MS", "200"),
    );
    let mut client = server.client().await;
    // A quiet project's stream, open while another project's events come and are pruned.
    let quiet = |after: &str| WatchEventsRequest {
        project: "quiet".into(),
        ..watch_request(after)
    };
    let mut quiet_stream = client.watch_events(quiet("")).await.unwrap().into_inner();
    quiet_stream.message().await.unwrap().unwrap();
    let id = create(&mut client, header(T, P, "prd", "pruned.md"), b"# Pruned\n")
        .await
        .unwrap()
        .artifact
        .unwrap()
        .id;
    labels_changes(&mut client, &id, 20).await;
    // Pruned up to (not including) the event the index stands at.
    common::failover::wait_for("the outbox to be pruned", Duration::from_secs(20), || {
        let mut client = client.clone();
        async move {
            matches!(client.watch_events(watch_request("1")).await, Err(status) if status.code() == Code::OutOfRange)
        }
    })
    .await;
    let status = client.watch_events(watch_request("1")).await.unwrap_err();
    assert!(
        status
            .message()
            .contains("older than the retained history; the oldest cursor available is"),
        "{}",
        status.message()
    );
    let oldest: i64 = status.message().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(oldest > 1 && oldest < 21, "{oldest}");
    // From the oldest cursor available, the stream delivers what remains, in order.
    let mut stream = client
        .watch_events(watch_request(&oldest.to_string()))
        .await
        .unwrap()
        .into_inner();
    let message = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(watch_events_response::Message::Event(event)) = message.message else {
        panic!("expected an event, got {message:?}");
    };
    assert_eq!(event.cursor.parse::<i64>().unwrap(), oldest + 1);
    // The quiet project's stream lives on: its heartbeats' cursors follow the whole outbox,
    // so pruning never passes them, and resuming from one works.
    let mut heartbeat_cursor = String::new();
    for _ in 0..10 {
        let message = tokio::time::timeout(Duration::from_secs(5), quiet_stream.message())
            .await
            .unwrap()
            .expect("the quiet stream is not cut off by pruning")
            .unwrap();
        if let Some(watch_events_response::Message::Heartbeat(beat)) = message.message {
            heartbeat_cursor = beat.cursor;
        }
    }
    assert!(
        heartbeat_cursor.parse::<i64>().unwrap() >= oldest,
        "{heartbeat_cursor} vs {oldest}"
    );
    client
        .watch_events(quiet(&heartbeat_cursor))
        .await
        .expect("resuming from a heartbeat");

    // Pruning kept the event the index stands at: the index never saw a diverged outbox.
    let log = server.log();
    assert!(!log.contains("the catalog's outbox differs"), "{log}");
}
