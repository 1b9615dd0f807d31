//! An upload commits only on a complete, deliberate end: a finish message (or, for clients
//! that predate it, a size declared in the header and met). A cancelled stream, which the
//! server sees end just like a complete one, must never become a version, however the
//! cancellation and the server's work interleave.

mod common;

use artifactd::proto::{
    ArtifactCoordinates, CreateArtifactRequest, GetArtifactRequest, UpdateArtifactRequest, UploadFinish,
    create_artifact_request, get_artifact_request, update_artifact_header, update_artifact_request,
};
use bytes::Bytes;
use common::binary::ServerProcess;
use common::client::{
    self, Client, assert_status, create, create_id, download, download_request, header, update_header,
};
use common::noise;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tonic::Code;

const T: &str = "acme";
const P: &str = "uploads";

fn data(bytes: &[u8]) -> CreateArtifactRequest {
    CreateArtifactRequest {
        message: Some(create_artifact_request::Message::Data(Bytes::copy_from_slice(
            bytes,
        ))),
    }
}

fn finish_message(finish: UploadFinish) -> CreateArtifactRequest {
    CreateArtifactRequest {
        message: Some(create_artifact_request::Message::Finish(finish)),
    }
}

fn head(header: artifactd::proto::CreateArtifactHeader) -> CreateArtifactRequest {
    CreateArtifactRequest {
        message: Some(create_artifact_request::Message::Header(header)),
    }
}

async fn lookup(client: &mut Client, name: &str) -> Result<(), tonic::Status> {
    client
        .get_artifact(GetArtifactRequest {
            tenant: T.into(),
            project: P.into(),
            selector: Some(get_artifact_request::Selector::Coordinates(ArtifactCoordinates {
                artifact_type: "bundle".into(),
                name: name.into(),
            })),
            version: String::new(),
        })
        .await
        .map(|_| ())
}

trait WithBump {
    fn with_patch_bump(self) -> Self;
}

impl WithBump for artifactd::proto::UpdateArtifactHeader {
    fn with_patch_bump(mut self) -> Self {
        self.next_version = Some(update_artifact_header::NextVersion::Bump(
            artifactd::proto::BumpKind::Patch as i32,
        ));
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_commits_only_after_its_finish_message() {
    let server = ServerProcess::start();
    let mut client = server.client().await;
    let content = noise(200 * 1024, 5);

    // Ended without a finish message and without a declared size: refused, nothing visible.
    let unfinished = vec![head(header(T, P, "bundle", "unfinished.bin")), data(&content)];
    assert_status(
        client.create_artifact(futures::stream::iter(unfinished)).await,
        Code::InvalidArgument,
        &["finish", &content.len().to_string()],
    );
    assert_status(lookup(&mut client, "unfinished.bin").await, Code::NotFound, &[]);

    // The finish message's promises are checked and name their field.
    let short = vec![
        head(header(T, P, "bundle", "short.bin")),
        data(&content),
        finish_message(UploadFinish {
            size: Some(content.len() as u64 + 1),
            blake3: String::new(),
        }),
    ];
    assert_status(
        client.create_artifact(futures::stream::iter(short)).await,
        Code::InvalidArgument,
        &["finish.size", &(content.len() + 1).to_string()],
    );
    let wrong = blake3::hash(b"other").to_hex().to_string();
    let wrong_hash = vec![
        head(header(T, P, "bundle", "hash.bin")),
        data(&content),
        finish_message(UploadFinish {
            size: None,
            blake3: wrong.clone(),
        }),
    ];
    assert_status(
        client.create_artifact(futures::stream::iter(wrong_hash)).await,
        Code::InvalidArgument,
        &["finish.blake3", &wrong],
    );
    let malformed = vec![
        head(header(T, P, "bundle", "malformed.bin")),
        data(&content),
        finish_message(UploadFinish {
            size: None,
            blake3: "not-hex".into(),
        }),
    ];
    assert_status(
        client.create_artifact(futures::stream::iter(malformed)).await,
        Code::InvalidArgument,
        &["finish.blake3", "not-hex"],
    );
    // Nothing may follow the finish.
    let after = vec![
        head(header(T, P, "bundle", "after.bin")),
        data(&content),
        finish_message(client::finish(&content)),
        data(b"more"),
    ];
    assert_status(
        client.create_artifact(futures::stream::iter(after)).await,
        Code::InvalidArgument,
        &["finish", "after the finish"],
    );
    for name in ["short.bin", "hash.bin", "malformed.bin", "after.bin"] {
        assert_status(lookup(&mut client, name).await, Code::NotFound, &[]);
    }

    // An empty finish is a deliberate end too, and an empty artifact is allowed.
    let empty = vec![
        head(header(T, P, "bundle", "empty.bin")),
        finish_message(UploadFinish::default()),
    ];
    let created = client
        .create_artifact(futures::stream::iter(empty))
        .await
        .expect("an upload ended by a finish commits")
        .into_inner();
    assert_eq!(created.version.unwrap().size, 0);

    // Clients that predate the finish message: a declared size that is met commits.
    let mut legacy = header(T, P, "bundle", "legacy.bin");
    legacy.expected_size = Some(content.len() as u64);
    let legacy_stream = vec![head(legacy), data(&content)];
    let id = client
        .create_artifact(futures::stream::iter(legacy_stream))
        .await
        .expect("a declared, met size is a complete end")
        .into_inner()
        .artifact
        .unwrap()
        .id;
    let (_, downloaded) = download(&mut client, download_request(T, P, &id, ""))
        .await
        .unwrap();
    assert_eq!(downloaded, content);

    // Updates follow the same rule.
    let unfinished_update = vec![
        UpdateArtifactRequest {
            message: Some(update_artifact_request::Message::Header(
                update_header(T, P, &id).with_patch_bump(),
            )),
        },
        UpdateArtifactRequest {
            message: Some(update_artifact_request::Message::Data(Bytes::from_static(b"v2"))),
        },
    ];
    assert_status(
        client
            .update_artifact(futures::stream::iter(unfinished_update))
            .await,
        Code::InvalidArgument,
        &["finish"],
    );
    let finished_update = client::update_messages(update_header(T, P, &id).with_patch_bump(), b"v2", 1);
    let updated = client
        .update_artifact(futures::stream::iter(finished_update))
        .await
        .expect("a finished update commits")
        .into_inner();
    assert_eq!(updated.version.unwrap().version, "1.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_message_and_versions_compare_by_precedence() {
    let server = ServerProcess::start();
    let mut client = server.client().await;
    // A header larger than any message the server decodes is reported as the header.
    let mut huge = header(T, P, "bundle", "huge-header.bin");
    huge.description = "x".repeat(9 * 1024 * 1024);
    let status = client
        .create_artifact(futures::stream::iter(vec![head(huge)]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("header:"), "{status:?}");

    // Build metadata does not make a version newer.
    let mut first = header(T, P, "bundle", "built.bin");
    first.initial_version = "1.2.3+a".into();
    let id = create_id(&mut client, first, b"build a").await;
    let mut same_precedence = update_header(T, P, &id);
    same_precedence.next_version = Some(update_artifact_header::NextVersion::ExplicitVersion(
        "1.2.3+b".into(),
    ));
    assert_status(
        common::client::update(&mut client, same_precedence, b"build b").await,
        Code::FailedPrecondition,
        &["1.2.3+b", "build metadata"],
    );
    // A name that would display as something else is refused, naming the field.
    assert_status(
        create(
            &mut client,
            header(T, P, "bundle", "invoice\u{202E}txt.exe"),
            b"x",
        )
        .await,
        Code::InvalidArgument,
        &["name:", "U+202E"],
    );
}

/// Number of header-then-cancel creates and, separately, updates.
const CANCELS: usize = 200;
/// Cancellations started together: more than h2's default allowance of 20 streams reset
/// before the server accepted them.
const CANCEL_BURST: usize = 40;

/// Reproduces the campaign's race: while three clients upload 8 MiB files, another client
/// on one connection sends only a header and then cancels, hundreds of times, for creates
/// and updates. Before the finish message, a few of those committed empty versions. The
/// same connection also carries real uploads, which must not be torn down by the server's
/// reset-flood guard.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_uploads_never_commit_under_concurrent_load() {
    let server = Arc::new(ServerProcess::start());
    let mut client = server.client().await;
    let mut targets = Vec::new();
    for n in 0..4 {
        let name = format!("target-{n}.bin");
        targets.push(create_id(&mut client, header(T, P, "bundle", &name), &noise(4096, n)).await);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for worker in 0..3u64 {
        let server = server.clone();
        let stop = stop.clone();
        let completed = completed.clone();
        load.push(tokio::spawn(async move {
            let mut client = server.client().await;
            let content = noise(8 * 1024 * 1024, 100 + worker);
            let mut done = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("load-{worker}-{done}.bin");
                create(&mut client, header(T, P, "bundle", &name), &content)
                    .await
                    .expect("a complete upload under load commits");
                done += 1;
                completed.fetch_add(1, Ordering::Relaxed);
            }
            done
        }));
    }

    // One connection for every cancellation and for uploads that must survive them.
    let shared = server.client().await;
    let survivor = {
        let mut shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let content = noise(2 * 1024 * 1024, 7);
            let mut done = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("same-connection-{done}.bin");
                let messages = client::create_messages(header(T, P, "bundle", &name), &content, 64 * 1024);
                shared
                    .create_artifact(futures::stream::iter(messages))
                    .await
                    .expect("an upload sharing a connection with cancelled calls completes");
                done += 1;
            }
            done
        })
    };

    // Cancel while the load is surely running: after its first upload committed.
    while completed.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Bursts of cancellations, as a client aborting a batch of uploads makes them, with a
    // pause between bursts: an honest client, not a reset flood.
    let rounds = CANCELS * 2;
    for burst in (0..rounds).collect::<Vec<_>>().chunks(CANCEL_BURST) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let cancellations = burst.iter().map(|&round| {
            let mut caller = shared.clone();
            let targets = &targets;
            async move {
                if round % 2 == 1 {
                    let target = &targets[(round / 2) % targets.len()];
                    let first = UpdateArtifactRequest {
                        message: Some(update_artifact_request::Message::Header(
                            update_header(T, P, target).with_patch_bump(),
                        )),
                    };
                    cancel_after_header(round, first, move |stream| async move {
                        let _ = caller.update_artifact(stream).await;
                    })
                    .await;
                } else {
                    let first = head(header(T, P, "bundle", &format!("cancelled-{round}.bin")));
                    cancel_after_header(round, first, move |stream| async move {
                        let _ = caller.create_artifact(stream).await;
                    })
                    .await;
                }
            }
        });
        futures::future::join_all(cancellations).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut loaded = 0;
    for worker in load {
        loaded += worker.await.unwrap();
    }
    let survived = survivor.await.unwrap();
    assert!(
        loaded > 0 && survived > 0,
        "the load ran ({loaded} and {survived} uploads)"
    );

    // Give cancelled handlers time to finish whatever they were going to do.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for round in (0..rounds).step_by(2) {
        let name = format!("cancelled-{round}.bin");
        assert_status(lookup(&mut client, &name).await, Code::NotFound, &[]);
    }
    for target in &targets {
        let versions = client
            .list_versions(artifactd::proto::ListVersionsRequest {
                tenant: T.into(),
                project: P.into(),
                artifact_id: target.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .versions;
        assert_eq!(
            versions.iter().map(|v| v.version.as_str()).collect::<Vec<_>>(),
            vec!["1.0.0"],
            "a cancelled update committed a version of {target}"
        );
    }
    // The handlers of cancelled uploads log as they finish, which under load can be after
    // the checks above.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !server.log().contains("upload abandoned") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        server.log().contains("upload abandoned"),
        "abandoned uploads are logged"
    );
}

/// Starts a call whose request stream carries only `first`, then cancels it. How far the
/// server gets first varies with `round`, and so does whether the request stream's end (which
/// is how a reset stream looks to the server) or the reset reaches the server first.
async fn cancel_after_header<M, F, Fut>(round: usize, first: M, call: F)
where
    M: Send + 'static,
    F: FnOnce(tokio_stream::wrappers::ReceiverStream<M>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(2);
    let task = tokio::spawn(call(tokio_stream::wrappers::ReceiverStream::new(receiver)));
    let _ = sender.send(first).await;
    // Anywhere from before the handler has the header (proving the caller takes a catalog
    // read) to well into the upload.
    tokio::time::sleep(Duration::from_micros((round as u64 * 397) % 12_000)).await;
    if round % 4 < 2 {
        drop(sender);
        task.abort();
    } else {
        task.abort();
        drop(sender);
    }
}
