//! Delta compression through the real binary: documents uploaded version by version as
//! users edit them are stored as edits against their previous versions, and every version
//! reads back byte-identical after delta encoding, after the versions their chunks were
//! encoded against are deleted and purged, after collection compacts and merges the packs,
//! and after a restart, on both catalogs. A damaged base is DATA_LOSS, never decoded into
//! wrong content. Chains stay within `ingest.delta_max_depth`. Bases are found by
//! resemblance too: a document copied into another artifact, or moved inside an archive,
//! is stored as an edit of the chunks it resembles, which stay alive while it needs them.

mod common;

use artifactd::proto::admin_service_client::AdminServiceClient;
use artifactd::proto::retention_service_client::RetentionServiceClient;
use artifactd::proto::{
    CheckConsistencyRequest, DeleteArtifactRequest, DeleteVersionRequest, PurgeTrashRequest,
};
use common::binary::{ServerOptions, ServerProcess};
use common::client::{
    Client, assert_status, create, download, download_request, header, update, update_header,
};
use std::path::{Path, PathBuf};
use tonic::Code;

const T: &str = "acme";
const P: &str = "docs";

/// The `documents` most edited documents of bmad-history, each with up to `versions` of
/// its versions, oldest first.
fn histories(documents: usize, versions: usize) -> Vec<(String, Vec<Vec<u8>>)> {
    let mut all = common::history_documents();
    all.sort_by_key(|(name, contents)| (std::cmp::Reverse(contents.len()), name.clone()));
    all.truncate(documents);
    for (_, contents) in &mut all {
        contents.truncate(versions);
    }
    all
}

/// Artifacts by id, each with its versions and their content, in order.
type Uploaded = Vec<(String, Vec<(String, Vec<u8>)>)>;

/// Uploads each history as the versions of one artifact; the artifact ids with the versions
/// they were given, in order.
async fn upload(client: &mut Client, histories: &[(String, Vec<Vec<u8>>)]) -> Uploaded {
    let mut uploaded = Vec::new();
    for (name, versions) in histories {
        let created = create(client, header(T, P, "doc", name), &versions[0])
            .await
            .unwrap();
        let id = created.artifact.unwrap().id;
        let mut given = vec![(created.version.unwrap().version, versions[0].clone())];
        for content in &versions[1..] {
            let made = update(client, next_header(&id), content).await.unwrap();
            given.push((made.version.unwrap().version, content.clone()));
        }
        uploaded.push((id, given));
    }
    uploaded
}

async fn read_back(client: &mut Client, uploaded: &Uploaded, what: &str) {
    for (id, versions) in uploaded {
        for (version, content) in versions {
            let (_, bytes) = download(client, download_request(T, P, id, version))
                .await
                .unwrap_or_else(|status| panic!("{what}: {id}@{version} does not read: {status:?}"));
            assert!(
                bytes == *content,
                "{what}: {id}@{version} reads back different bytes"
            );
        }
    }
}

/// The next minor version of `id`.
fn next_header(id: &str) -> artifactd::proto::UpdateArtifactHeader {
    let mut next = update_header(T, P, id);
    next.next_version = Some(artifactd::proto::update_artifact_header::NextVersion::Bump(
        artifactd::proto::BumpKind::Minor as i32,
    ));
    next
}

fn server(data_dir: &Path, database: Option<&str>, settings: &[(&str, &str)]) -> ServerProcess {
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
        options = options.env(key, *value);
    }
    ServerProcess::start_with(options)
}

/// A fresh Postgres database and its URL when `postgres`, else the embedded SQLite catalog.
async fn catalog_for(postgres: bool) -> (Option<common::postgres::TestDatabase>, Option<String>) {
    if !postgres {
        return (None, None);
    }
    let database = common::postgres::TestDatabase::create().await;
    let url = database.url.clone();
    (Some(database), Some(url))
}

fn pack_files(server: &ServerProcess) -> Vec<PathBuf> {
    common::pack_files(&server.data_dir)
        .into_iter()
        .map(|(path, _)| path)
        .collect()
}

async fn histories_survive_deltas_purged_bases_compaction_and_restarts(postgres: bool) {
    let (database, url) = catalog_for(postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let plain_dir = tempfile::tempdir().unwrap();
    let histories = histories(4, 24);

    // The same histories with delta compression off, for what they cost without it.
    let plain_server = server(
        plain_dir.path(),
        None,
        &[("ARTIFACTD_INGEST__DELTA_MAX_DEPTH", "0")],
    );
    let mut plain_client = plain_server.client().await;
    upload(&mut plain_client, &histories).await;
    let plain_bytes = plain_server.fs_store_bytes();
    drop(plain_client);
    drop(plain_server);

    let mut first = server(dir.path(), url.as_deref(), &[]);
    let mut client = first.client().await;
    let uploaded = upload(&mut client, &histories).await;
    let delta_bytes = first.fs_store_bytes();
    let deltas = common::metric(first.http, "artifactd_delta_chunks_total").await;
    assert!(deltas > 0.0, "no chunk was stored as a delta");
    assert!(
        delta_bytes * 2 < plain_bytes,
        "with deltas the store holds {delta_bytes} bytes, without {plain_bytes}: deltas should at least halve it"
    );
    eprintln!("stored {delta_bytes} bytes with deltas ({deltas} delta chunks), {plain_bytes} without");
    read_back(&mut client, &uploaded, "after upload").await;

    // The older half of every history deleted and purged: later versions' deltas were
    // encoded against their chunks, which must stay.
    let mut retention = RetentionServiceClient::new(first.channel().await);
    let mut kept = Vec::new();
    for (id, versions) in &uploaded {
        let half = versions.len() / 2;
        for (version, _) in &versions[..half] {
            let scope = (T.to_owned(), P.to_owned(), id.clone(), version.clone());
            client
                .delete_version(DeleteVersionRequest {
                    tenant: scope.0.clone(),
                    project: scope.1.clone(),
                    artifact_id: scope.2.clone(),
                    version: scope.3.clone(),
                })
                .await
                .unwrap();
            retention
                .purge_trash(PurgeTrashRequest {
                    tenant: scope.0,
                    project: scope.1,
                    artifact_id: scope.2,
                    version: scope.3,
                })
                .await
                .unwrap();
        }
        kept.push((id.clone(), versions[half..].to_vec()));
    }
    let packs_before = pack_files(&first).len();
    let (compacted, _) = common::collect_garbage(&first, 4).await;
    let packs_after = pack_files(&first).len();
    assert!(compacted > 0, "collection merged no small packs");
    assert!(
        packs_after * 4 < packs_before,
        "{packs_before} packs before collection, {packs_after} after: small packs were not merged"
    );
    read_back(&mut client, &kept, "after purging bases and compaction").await;
    common::check_clean(&first, "the check").await;

    // A restart reads everything from the store again (the chunk cache starts empty).
    drop(client);
    drop(retention);
    first.terminate();
    drop(first);
    let second = server(dir.path(), url.as_deref(), &[]);
    let mut client = second.client().await;
    read_back(&mut client, &kept, "after a restart").await;
    common::check_clean(&second, "the check").await;
    // New versions after all that still find bases and read back.
    let (id, versions) = &kept[0];
    let mut next = versions.last().unwrap().1.clone();
    next.extend_from_slice(b"\n## Appendix\nOne more paragraph, added after compaction.\n");
    let made = update(&mut client, next_header(id), &next).await.unwrap();
    let (_, bytes) = download(
        &mut client,
        download_request(T, P, id, &made.version.unwrap().version),
    )
    .await
    .unwrap();
    assert_eq!(bytes, next);
    drop(client);
    drop(second);
    if let Some(database) = database {
        database.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_survive_deltas_purged_bases_compaction_and_restarts_on_sqlite() {
    histories_survive_deltas_purged_bases_compaction_and_restarts(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_survive_deltas_purged_bases_compaction_and_restarts_on_postgres() {
    histories_survive_deltas_purged_bases_compaction_and_restarts(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_base_is_data_loss_never_decoded_into_other_content() {
    let dir = tempfile::tempdir().unwrap();
    // No chunk cache: every read goes to the store.
    let server = server(
        dir.path(),
        None,
        &[("ARTIFACTD_DELIVERY__CACHE_MEMORY_BYTES", "0")],
    );
    let mut client = server.client().await;
    let base: Vec<u8> = "## Requirements\nThe service keeps every version of every artifact.\n"
        .repeat(400)
        .into_bytes();
    let created = create(&mut client, header(T, P, "doc", "prd.md"), &base)
        .await
        .unwrap();
    let id = created.artifact.unwrap().id;
    let v1 = created.version.unwrap().version;
    let base_packs = pack_files(&server);
    assert_eq!(base_packs.len(), 1);
    let mut edited = base.clone();
    edited.splice(
        100..100,
        b"An inserted sentence changes the first chunk a little. "
            .iter()
            .copied(),
    );
    let made = update(&mut client, next_header(&id), &edited).await.unwrap();
    let v2 = made.version.unwrap().version;
    assert!(common::metric(server.http, "artifactd_delta_chunks_total").await >= 1.0);
    let (_, bytes) = download(&mut client, download_request(T, P, &id, &v2))
        .await
        .unwrap();
    assert_eq!(bytes, edited);

    // Damage the base's pack: the delta cannot be decoded into anything but an error.
    let mut damaged = std::fs::read(&base_packs[0]).unwrap();
    damaged[40] ^= 0x55;
    std::fs::write(&base_packs[0], damaged).unwrap();
    for version in [&v2, &v1] {
        assert_status(
            download(&mut client, download_request(T, P, &id, version)).await,
            Code::DataLoss,
            &[],
        );
    }
    let mut admin = AdminServiceClient::new(server.channel().await);
    let checked = admin
        .check_consistency(CheckConsistencyRequest { read_data: true })
        .await
        .unwrap()
        .into_inner();
    assert!(!checked.problems.is_empty(), "the check missed a damaged base");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_of_deltas_stay_within_the_configured_depth() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = server(dir.path(), None, &[("ARTIFACTD_INGEST__DELTA_MAX_DEPTH", "3")]);
    let mut client = server.client().await;
    let mut content: Vec<u8> = "- [ ] a task of the sprint that someone will do\n"
        .repeat(300)
        .into_bytes();
    let created = create(&mut client, header(T, P, "doc", "sprint.md"), &content)
        .await
        .unwrap();
    let id = created.artifact.unwrap().id;
    let mut versions = vec![(created.version.unwrap().version, content.clone())];
    for edit in 0..20 {
        let line = format!("- [x] task {edit} done by the developer agent\n");
        let at = (edit * 997) % content.len();
        let at = content[..at]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |p| p + 1);
        content.splice(at..at, line.bytes());
        let made = update(&mut client, next_header(&id), &content).await.unwrap();
        versions.push((made.version.unwrap().version, content.clone()));
    }
    read_back(&mut client, &vec![(id, versions)], "after 20 edits").await;
    drop(client);
    server.terminate();
    let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
    let catalog = artifactd::catalog::Catalog::connect(&url, 1).await.unwrap();
    let (deltas, deepest) = catalog.delta_depths(T).await.unwrap();
    assert!(deltas >= 15, "only {deltas} of 20 edits were stored as deltas");
    assert!(deepest <= 3, "a chain of {deepest} bases, over the configured 3");
    assert!(deepest >= 2, "chains never grew past one base ({deepest})");
}

/// `document` with a sentence inserted after every `every` bytes (at the next line start):
/// every chunk of it differs from the original's, so nothing dedups.
fn edited_throughout(document: &[u8], every: usize, tag: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(document.len() + document.len() / every * 64);
    let mut since = 0;
    for (at, byte) in document.iter().enumerate() {
        out.push(*byte);
        since += 1;
        if *byte == b'\n' && since >= every {
            out.extend_from_slice(format!("Edited ({tag}) at byte {at}.\n").as_bytes());
            since = 0;
        }
    }
    out
}

async fn similar_content_elsewhere_is_stored_as_a_delta(postgres: bool) {
    let (database, url) = catalog_for(postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let mut first = server(dir.path(), url.as_deref(), &[]);
    let mut client = first.client().await;
    // The two largest documents of bmad-history, at their latest versions.
    let mut documents: Vec<Vec<u8>> = common::history_documents()
        .into_iter()
        .map(|(_, mut versions)| versions.pop().unwrap())
        .collect();
    documents.sort_by_key(|d| std::cmp::Reverse(d.len()));
    let (one, two) = (documents[0].clone(), documents[1].clone());
    assert!(
        two.len() > 32 * 1024,
        "the corpus' documents are too small for this test"
    );

    // A document copied, edited throughout, into a new artifact: no previous version, no
    // shared chunk, only resemblance finds its bases.
    let original = create(&mut client, header(T, P, "doc", "original.md"), &one)
        .await
        .unwrap();
    let original_id = original.artifact.unwrap().id;
    let own_cost = original.version.unwrap().new_stored_size;
    let copy_content = edited_throughout(&one, 6000, "copy");
    let copy = create(&mut client, header(T, P, "doc", "copy.md"), &copy_content)
        .await
        .unwrap();
    let copy_id = copy.artifact.unwrap().id;
    let copy_version = copy.version.unwrap();
    assert!(
        copy_version.delta_saved_bytes > 0 && copy_version.new_stored_size * 4 < own_cost,
        "the edited copy stored {} bytes (delta saved {}); the original cost {own_cost}",
        copy_version.new_stored_size,
        copy_version.delta_saved_bytes
    );

    // An archive whose members swap places and change a little: the previous version's
    // chunk at the same place is the other member, the one it resembles is elsewhere.
    let mut archive = one.clone();
    archive.extend_from_slice(&two);
    let bundle = create(&mut client, header(T, P, "bundle", "bundle.tar"), &archive)
        .await
        .unwrap();
    let bundle_id = bundle.artifact.unwrap().id;
    let bundle_cost = bundle.version.unwrap().new_stored_size;
    let mut swapped = edited_throughout(&two, 6000, "swap");
    swapped.extend_from_slice(&edited_throughout(&one, 6000, "swap"));
    let made = update(&mut client, next_header(&bundle_id), &swapped)
        .await
        .unwrap();
    let swapped_version = made.version.unwrap();
    assert!(
        swapped_version.new_stored_size * 4 < bundle_cost,
        "the swapped archive stored {} bytes; the first version cost {bundle_cost}",
        swapped_version.new_stored_size
    );

    // The original deleted and purged, collected: what the copy was encoded against stays.
    client
        .delete_artifact(DeleteArtifactRequest {
            tenant: T.into(),
            project: P.into(),
            artifact_id: original_id.clone(),
        })
        .await
        .unwrap();
    RetentionServiceClient::new(first.channel().await)
        .purge_trash(PurgeTrashRequest {
            tenant: T.into(),
            project: P.into(),
            artifact_id: original_id,
            version: String::new(),
        })
        .await
        .unwrap();
    common::collect_garbage(&first, 3).await;
    let expected: Uploaded = vec![
        (
            copy_id.clone(),
            vec![(copy_version.version.clone(), copy_content.clone())],
        ),
        (
            bundle_id.clone(),
            vec![(swapped_version.version.clone(), swapped.clone())],
        ),
    ];
    read_back(
        &mut client,
        &expected,
        "after the original was purged and collected",
    )
    .await;
    common::check_clean(&first, "the check").await;
    drop(client);
    first.terminate();
    drop(first);
    let second = server(dir.path(), url.as_deref(), &[]);
    let mut client = second.client().await;
    read_back(&mut client, &expected, "after a restart").await;
    drop(client);
    drop(second);
    if let Some(database) = database {
        database.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn similar_content_elsewhere_is_stored_as_a_delta_on_sqlite() {
    similar_content_elsewhere_is_stored_as_a_delta(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn similar_content_elsewhere_is_stored_as_a_delta_on_postgres() {
    similar_content_elsewhere_is_stored_as_a_delta(true).await;
}

/// Reads of delta bases hold memory from a budget of their own: with room for one read at
/// a time (64 KiB) and no chunk cache, concurrent downloads through deep chains and
/// concurrent updates encoding against bases all wait their turn and succeed, every
/// version reads back byte-identical, the updates still store deltas, and the budget is
/// whole again at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delta_bases_are_read_within_their_memory_budget_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(
        dir.path(),
        None,
        &[
            ("ARTIFACTD_DELIVERY__CACHE_MEMORY_BYTES", "0"),
            ("ARTIFACTD_INGEST__DELTA_BASE_MEMORY_BYTES", "65536"),
        ],
    );
    let mut client = server.client().await;
    let uploaded = upload(&mut client, &histories(6, 10)).await;
    assert!(common::metric(server.http, "artifactd_delta_chunks_total").await >= 10.0);

    let mut tasks = tokio::task::JoinSet::new();
    for reader in 0..6 {
        let mut client = server.client().await;
        let uploaded = uploaded.clone();
        tasks.spawn(async move {
            read_back(&mut client, &uploaded, &format!("reader {reader}")).await;
            0
        });
    }
    for (id, versions) in uploaded.clone() {
        let mut client = server.client().await;
        tasks.spawn(async move {
            // The latest version with a line added in the middle: an edit of its chunks.
            let mut edited = versions.last().unwrap().1.clone();
            let middle = edited.len() / 2;
            let cut = middle + edited[middle..].iter().position(|b| *b == b'\n').unwrap_or(0);
            edited.splice(cut..cut, b"\nA line added while others read.\n".iter().copied());
            let made = update(&mut client, next_header(&id), &edited)
                .await
                .unwrap_or_else(|status| panic!("updating {id} under load: {status:?}"));
            let version = made.version.unwrap();
            let (_, bytes) = download(&mut client, download_request(T, P, &id, &version.version))
                .await
                .unwrap();
            assert!(
                bytes == edited,
                "{id}@{} reads back different bytes",
                version.version
            );
            version.delta_saved_bytes
        });
    }
    let mut saved = 0;
    while let Some(done) = tasks.join_next().await {
        saved += done.unwrap();
    }
    assert!(saved > 0, "the updates under load stored no deltas");
    let waits = common::metric(server.http, "artifactd_delta_base_memory_waits_total").await;
    assert!(
        waits > 0.0,
        "with room for one read at a time, reads of bases waited"
    );
    assert_eq!(
        common::metric(server.http, "artifactd_delta_base_memory_reserved_bytes").await,
        0.0,
        "every read gave its delta base memory back"
    );
    println!("reads of delta bases waited {waits} times");
}
