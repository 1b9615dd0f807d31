//! Small uploads share packs, through the real binary: concurrent creates and updates of
//! small documents go out in far fewer packs than uploads, on both catalogs; an upload that
//! fails after its chunks entered a shared pack takes nothing from the others (they commit,
//! read back after a restart and after collection, and the check is clean), and once every
//! artifact is purged collection leaves no pack behind. A shared pack whose write fails fails
//! every upload in it, with UNAVAILABLE, and commits none of them.

mod common;

use artifactd::proto::{CreateArtifactRequest, ListArtifactsRequest, create_artifact_request};
use common::binary::{ServerOptions, ServerProcess};
use common::client::{
    Client, PIECE, create, create_messages, download, download_request, header, update, update_header,
};
use std::path::Path;
use tonic::Code;

const T: &str = "acme";
const P: &str = "stories";
/// Clients uploading at once.
const CLIENTS: usize = 16;
/// Versions each client uploads (a create, then updates).
const VERSIONS: usize = 6;

/// A small story document of its own: compressible, a few KiB, unlike any other.
fn story(client: usize, version: usize) -> Vec<u8> {
    let mut text = format!("# Story {client}.{version}\n\n## Acceptance criteria\n\n");
    for line in 0..(40 + 25 * ((client + version) % 5)) {
        text.push_str(&format!(
            "- given client {client} at step {line}, when version {version} is read, then {} holds\n",
            (client * 7919 + line * 104_729 + version * 15_485_863) % 1_000_003
        ));
    }
    text.into_bytes()
}

fn server(data_dir: &Path, database: Option<&str>, settings: &[(String, String)]) -> ServerProcess {
    let mut options = ServerOptions {
        data_dir: Some(data_dir.to_path_buf()),
        ..ServerOptions::default()
    }
    .env("ARTIFACTD_RETENTION__GC_GRACE_SECONDS", "1")
    .env("ARTIFACTD_RETENTION__GC_INTERVAL_SECONDS", "0");
    if let Some(url) = database {
        options = options.env("DATABASE_URL", url);
    }
    for (key, value) in settings {
        options = options.env(key, value.clone());
    }
    ServerProcess::start_with(options)
}

/// A create whose finish message promises another hash: refused once the content is in,
/// that is after its chunks were placed.
async fn create_refused(client: &mut Client, name: &str, content: &[u8]) -> tonic::Status {
    let mut messages = create_messages(header(T, P, "story", name), content, PIECE);
    if let Some(CreateArtifactRequest {
        message: Some(create_artifact_request::Message::Finish(finish)),
    }) = messages.last_mut()
    {
        finish.blake3 = blake3::hash(b"something else").to_hex().to_string();
    }
    client
        .create_artifact(futures::stream::iter(messages))
        .await
        .expect_err("a wrong promised hash is refused")
}

/// Artifact id and its versions with their content.
type Uploaded = Vec<(String, Vec<(String, Vec<u8>)>)>;

/// `CLIENTS` clients at once, each creating one story and updating it; every third client
/// also sends a create that is refused after its content is in. Returns what was committed
/// and how many uploads reached the point of placing their chunks.
async fn upload_concurrently(server: &ServerProcess) -> (Uploaded, usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let mut client = server.client().await;
        tasks.spawn(async move {
            let mut placed = 0;
            let first = story(c, 0);
            let created = create(&mut client, header(T, P, "story", &format!("story-{c}")), &first)
                .await
                .unwrap_or_else(|status| panic!("client {c} create: {status:?}"));
            placed += 1;
            let id = created.artifact.unwrap().id;
            let mut versions = vec![(created.version.unwrap().version, first)];
            for v in 1..VERSIONS {
                if c % 3 == 0 && v == VERSIONS / 2 {
                    let status = create_refused(&mut client, &format!("refused-{c}"), &story(c, 100)).await;
                    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
                    assert!(status.message().contains("finish.blake3"), "{status:?}");
                    placed += 1;
                }
                let mut next = update_header(T, P, &id);
                next.next_version = Some(artifactd::proto::update_artifact_header::NextVersion::Bump(
                    artifactd::proto::BumpKind::Patch as i32,
                ));
                let content = story(c, v);
                let made = update(&mut client, next, &content)
                    .await
                    .unwrap_or_else(|status| panic!("client {c} update {v}: {status:?}"));
                placed += 1;
                versions.push((made.version.unwrap().version, content));
            }
            ((id, versions), placed)
        });
    }
    let mut uploaded = Vec::new();
    let mut placed = 0;
    while let Some(done) = tasks.join_next().await {
        let (artifact, count) = done.unwrap();
        uploaded.push(artifact);
        placed += count;
    }
    (uploaded, placed)
}

async fn read_back(server: &ServerProcess, uploaded: &Uploaded, what: &str) {
    let mut client = server.client().await;
    for (id, versions) in uploaded {
        for (version, content) in versions {
            let (_, bytes) = download(&mut client, download_request(T, P, id, version))
                .await
                .unwrap_or_else(|status| panic!("{what}: {id}@{version} does not read: {status:?}"));
            assert!(
                bytes == *content,
                "{what}: {id}@{version} reads back different bytes"
            );
        }
    }
}

async fn small_uploads_share_packs(postgres: bool) {
    let database = if postgres {
        Some(common::postgres::TestDatabase::create().await)
    } else {
        None
    };
    let url = database.as_ref().map(|database| database.url.clone());
    let dir = tempfile::tempdir().unwrap();
    let first = server(dir.path(), url.as_deref(), &[]);

    let (uploaded, placed) = upload_concurrently(&first).await;
    let committed: usize = uploaded.iter().map(|(_, versions)| versions.len()).sum();
    assert_eq!(committed, CLIENTS * VERSIONS);
    let shared_uploads = common::metric(first.http, "artifactd_shared_pack_uploads_total").await;
    let shared_packs = common::metric(first.http, "artifactd_shared_packs_total").await;
    let packs = common::pack_files(dir.path()).len();
    println!(
        "{placed} uploads placed their chunks in {shared_packs} shared packs ({packs} pack files): {:.2} uploads a pack",
        placed as f64 / shared_packs
    );
    assert_eq!(
        shared_uploads, placed as f64,
        "every small upload, the refused ones too, goes through a shared pack"
    );
    assert_eq!(packs as f64, shared_packs, "every pack written is a shared one");
    assert!(
        shared_packs <= 0.75 * placed as f64,
        "{placed} concurrent small uploads should share packs, but took {shared_packs}"
    );
    read_back(&first, &uploaded, "after concurrent uploads").await;
    common::check_clean(&first, "after concurrent uploads").await;
    drop(first);

    // The refused uploads' chunks sit unclaimed in packs others committed: a restart and
    // collection keep every committed version readable and the check clean.
    let second = server(dir.path(), url.as_deref(), &[]);
    read_back(&second, &uploaded, "after a restart").await;
    common::collect_garbage(&second, 3).await;
    read_back(&second, &uploaded, "after collection").await;
    common::check_clean(&second, "after collection").await;

    // Everything purged: no pack stays behind.
    for (id, _) in &uploaded {
        common::delete_and_purge(&second, T, P, id).await;
    }
    common::collect_garbage(&second, 4).await;
    assert_eq!(
        common::pack_files(dir.path()),
        Vec::new(),
        "packs left after every artifact was purged and collected"
    );
    common::check_clean(&second, "after purging everything").await;
    drop(second);
    if let Some(database) = database {
        database.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_uploads_share_packs_on_sqlite() {
    small_uploads_share_packs(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_uploads_share_packs_on_postgres() {
    small_uploads_share_packs(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_shared_pack_write_fails_its_uploads_and_commits_none() {
    let mut s3 = common::s3::S3TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<(String, String)> = s3.env("shared-packs");
    let server = server(dir.path(), None, &env);
    let mut client = server.client().await;
    let before = create(&mut client, header(T, P, "story", "before"), &story(99, 0))
        .await
        .unwrap();

    s3.stop().await;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..8 {
        let mut client = server.client().await;
        tasks.spawn(async move {
            create(
                &mut client,
                header(T, P, "story", &format!("lost-{c}")),
                &story(c, 0),
            )
            .await
        });
    }
    while let Some(done) = tasks.join_next().await {
        let status = done
            .unwrap()
            .expect_err("no upload commits while its pack cannot be written");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("pack"), "{status:?}");
    }
    let listed = client
        .list_artifacts(ListArtifactsRequest {
            tenant: T.into(),
            project: P.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<String> = listed.artifacts.iter().map(|a| a.name.clone()).collect();
    assert_eq!(
        names,
        ["before"],
        "only what committed before the store went away is listed"
    );

    s3.restart().await;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..8 {
        let mut client = server.client().await;
        tasks.spawn(async move {
            let content = story(c, 1);
            let made = create(
                &mut client,
                header(T, P, "story", &format!("after-{c}")),
                &content,
            )
            .await
            .unwrap_or_else(|status| panic!("after the store came back: {status:?}"));
            (
                made.artifact.unwrap().id,
                vec![(made.version.unwrap().version, content)],
            )
        });
    }
    let mut uploaded: Uploaded = vec![(
        before.artifact.unwrap().id,
        vec![(before.version.unwrap().version, story(99, 0))],
    )];
    while let Some(done) = tasks.join_next().await {
        uploaded.push(done.unwrap());
    }
    read_back(&server, &uploaded, "after the store came back").await;
    common::check_clean(&server, "after the store came back").await;
}
