//! End-to-end tests of ArtifactService: the built binary, spoken to over real gRPC.

mod common;

use artifactd::catalog::Catalog;
use artifactd::proto::{
    ArtifactCoordinates, BumpKind, CreateArtifactRequest, DeleteArtifactRequest, GetArtifactRequest,
    GetMetadataRequest, ListArtifactsRequest, ListVersionsRequest, UndeleteArtifactRequest,
    create_artifact_request, get_artifact_request, update_artifact_header,
};
use bytes::Bytes;
use common::binary::{ServerOptions, ServerProcess};
use common::client::{
    self, Client, assert_status, create, create_id, download, download_request, header, update, update_header,
};
use common::noise;
use tonic::Code;

const T: &str = "acme";
const P: &str = "payments";

/// A server writing 256 KiB packs, so that a few MiB of upload span several of them.
fn small_pack_server() -> ServerProcess {
    ServerProcess::start_with(ServerOptions::default().env("ARTIFACTD_INGEST__PACK_TARGET_BYTES", "262144"))
}

async fn server_catalog(server: &ServerProcess) -> Catalog {
    Catalog::connect(&format!("sqlite://{}/catalog.db", server.data_dir.display()), 2)
        .await
        .unwrap()
}

fn get_by_id(id: &str, version: &str) -> GetArtifactRequest {
    GetArtifactRequest {
        tenant: T.into(),
        project: P.into(),
        selector: Some(get_artifact_request::Selector::ArtifactId(id.into())),
        version: version.into(),
    }
}

async fn artifact_count(client: &mut Client) -> usize {
    client
        .list_artifacts(ListArtifactsRequest {
            tenant: T.into(),
            project: P.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .artifacts
        .len()
}

fn corpus_file(relative: &str) -> Vec<u8> {
    std::fs::read(common::corpus_dir().join(relative)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_lifecycle_over_grpc() {
    let server = ServerProcess::start();
    let mut client = server.client().await;
    let prd = corpus_file("bmad-docs/README.md");

    let mut first = header(T, P, "prd", "README.md");
    first.description = "BMAD method overview".into();
    first.tags = vec!["docs".into(), "bmad".into(), "docs".into()];
    first.metadata = [
        ("owner".to_owned(), "pm".to_owned()),
        ("phase".to_owned(), "planning".to_owned()),
    ]
    .into();
    first.expected_size = Some(prd.len() as u64);
    first.expected_blake3 = blake3::hash(&prd).to_hex().to_string();
    first.change_message = "first draft".into();
    let mut request = tonic::Request::new(futures::stream::iter(client::create_messages(
        first,
        &prd,
        16 * 1024,
    )));
    request
        .metadata_mut()
        .insert("x-artifactd-actor", "agent-pm".parse().unwrap());
    let created = client.create_artifact(request).await.unwrap().into_inner();
    let artifact = created.artifact.unwrap();
    let version = created.version.unwrap();
    assert_eq!(artifact.latest_version, "1.0.0");
    assert_eq!(artifact.tags, vec!["bmad", "docs"], "tags are normalized");
    assert_eq!(
        artifact.created_by,
        format!("key:{}", &common::binary::ADMIN_KEY[4..20]),
        "the author is the proven caller, never a header it chose"
    );
    assert_eq!(version.size, prd.len() as u64);
    assert_eq!(version.blake3, blake3::hash(&prd).to_hex().to_string());
    assert!(
        version.stored_size < version.size,
        "markdown is compressed: {} of {}",
        version.stored_size,
        version.size
    );
    assert_eq!(version.change_message, "first draft");
    let id = artifact.id.clone();

    // Get by id and by coordinates.
    let by_id = client
        .get_artifact(get_by_id(&id, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_id.artifact.unwrap().id, id);
    let by_name = client
        .get_artifact(GetArtifactRequest {
            tenant: T.into(),
            project: P.into(),
            selector: Some(get_artifact_request::Selector::Coordinates(ArtifactCoordinates {
                artifact_type: "prd".into(),
                name: "README.md".into(),
            })),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_name.artifact.unwrap().id, id);

    // Successive versions from the real file history: bumps and an explicit version.
    let history = common::corpus_dir().join("bmad-history/README.md");
    let mut versions_in_order = vec![("1.0.0".to_owned(), prd.clone())];
    let bumps = [BumpKind::Patch, BumpKind::Minor, BumpKind::Major];
    for (index, bump) in bumps.iter().enumerate() {
        let content = std::fs::read(history.join(format!("{:03}.md", index + 1))).unwrap();
        let mut next = update_header(T, P, &id);
        next.next_version = Some(update_artifact_header::NextVersion::Bump(*bump as i32));
        next.expected_current_version = versions_in_order.last().unwrap().0.clone();
        next.metadata_set = [("reviewer".to_owned(), format!("r{index}"))].into();
        if index == 2 {
            next.metadata_remove = vec!["phase".into()];
        }
        let updated = update(&mut client, next, &content).await.unwrap();
        versions_in_order.push((updated.version.unwrap().version, content));
    }
    let names: Vec<&str> = versions_in_order.iter().map(|(v, _)| v.as_str()).collect();
    assert_eq!(names, ["1.0.0", "1.0.1", "1.1.0", "2.0.0"]);
    let explicit_content = std::fs::read(history.join("004.md")).unwrap();
    let mut explicit = update_header(T, P, &id);
    explicit.next_version = Some(update_artifact_header::NextVersion::ExplicitVersion(
        "2.5.0-rc.1".into(),
    ));
    let updated = update(&mut client, explicit, &explicit_content).await.unwrap();
    assert_eq!(updated.artifact.unwrap().latest_version, "2.5.0-rc.1");
    versions_in_order.push(("2.5.0-rc.1".into(), explicit_content));

    // Every version reads back byte-identical; ranges and resumption work.
    for (version, content) in &versions_in_order {
        let (head, bytes) = download(&mut client, download_request(T, P, &id, version))
            .await
            .unwrap();
        assert_eq!(head.version, *version);
        assert_eq!(head.size, content.len() as u64);
        assert_eq!(head.blake3, blake3::hash(content).to_hex().to_string());
        assert!(bytes == *content, "version {version} differs");
    }
    let (_, latest) = versions_in_order.last().unwrap();
    let mut ranged = download_request(T, P, &id, "");
    ranged.offset = 100;
    ranged.length = 1000;
    let (head, bytes) = download(&mut client, ranged).await.unwrap();
    assert_eq!((head.offset, head.length), (100, 1000));
    assert_eq!(bytes, latest[100..1100]);
    let mut resumed = download_request(T, P, &id, "");
    resumed.offset = 1234;
    let (_, rest) = download(&mut client, resumed).await.unwrap();
    assert_eq!(rest, latest[1234..]);

    // Versions newest first, paginated.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_versions(ListVersionsRequest {
                tenant: T.into(),
                project: P.into(),
                artifact_id: id.clone(),
                page_size: 2,
                page_token: token.clone(),
                states: Vec::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.versions.len() <= 2);
        seen.extend(page.versions.into_iter().map(|v| v.version));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["2.5.0-rc.1", "2.0.0", "1.1.0", "1.0.1", "1.0.0"]);

    // Metadata as of each version.
    let metadata = client
        .get_metadata(GetMetadataRequest {
            tenant: T.into(),
            project: P.into(),
            artifact_id: id.clone(),
            version: "1.1.0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(metadata.content_type, "text/markdown");
    assert_eq!(metadata.metadata["reviewer"], "r1");
    assert_eq!(metadata.metadata["phase"], "planning");
    let latest_metadata = client
        .get_metadata(GetMetadataRequest {
            tenant: T.into(),
            project: P.into(),
            artifact_id: id.clone(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !latest_metadata.metadata.contains_key("phase"),
        "metadata_remove took effect"
    );

    // Listing artifacts with a type filter and paging.
    for (kind, name) in [
        ("story", "story-1.md"),
        ("story", "story-2.md"),
        ("architecture", "arch.md"),
    ] {
        create(&mut client, header(T, P, kind, name), b"# content\n")
            .await
            .unwrap();
    }
    let stories = client
        .list_artifacts(ListArtifactsRequest {
            tenant: T.into(),
            project: P.into(),
            artifact_type: "story".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stories
            .artifacts
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>(),
        ["story-1.md", "story-2.md"]
    );
    let first_page = client
        .list_artifacts(ListArtifactsRequest {
            tenant: T.into(),
            project: P.into(),
            page_size: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first_page.artifacts.len(), 3);
    let second_page = client
        .list_artifacts(ListArtifactsRequest {
            tenant: T.into(),
            project: P.into(),
            page_size: 3,
            page_token: first_page.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second_page.artifacts.len(), 1);
    assert!(second_page.next_page_token.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_content_is_stored_once() {
    let server = ServerProcess::start();
    let mut client = server.client().await;
    let content = noise(3 * 1024 * 1024, 5);
    let first = create(&mut client, header(T, P, "bundle", "a.bin"), &content)
        .await
        .unwrap();
    let version = first.version.unwrap();
    assert_eq!(version.new_stored_size, version.stored_size);
    let store_after_first = server.fs_store_bytes();
    let second = create(&mut client, header(T, P, "bundle", "b.bin"), &content)
        .await
        .unwrap();
    let version = second.version.unwrap();
    assert_eq!(
        version.new_stored_size, 0,
        "identical content in the same tenant adds nothing"
    );
    assert_eq!(server.fs_store_bytes(), store_after_first);
    // Another tenant's identical content is stored separately: ids reveal nothing across tenants.
    let other = create(&mut client, header("globex", P, "bundle", "a.bin"), &content)
        .await
        .unwrap();
    assert_eq!(other.version.unwrap().new_stored_size, version.stored_size);
}

/// An upload keeps its manifest and the list of chunks it stores in a spill file once they
/// outgrow a few KiB: a 56 MiB upload (3,500 chunks) whose last 24 MiB repeat its first
/// finds those repeats among the spilled chunks, commits every chunk, and reads back; the
/// same content again adds nothing, and the stores check clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_spills_its_chunk_list_and_still_finds_its_own_repeats() {
    let server = ServerProcess::start();
    let mut client = server.client().await;
    let first = noise(24 * 1024 * 1024, 31);
    let middle = noise(8 * 1024 * 1024, 32);
    let content = [first.as_slice(), middle.as_slice(), first.as_slice()].concat();
    let created = create(&mut client, header(T, P, "bundle", "big.tar"), &content)
        .await
        .unwrap();
    assert_eq!(
        common::metric(server.http, "artifactd_uploads_spilled_total").await,
        1.0,
        "the upload spilled into <data_dir>/spill"
    );
    let artifact = created.artifact.unwrap();
    let version = created.version.unwrap();
    let unique = (first.len() + middle.len()) as u64;
    assert!(
        version.new_stored_size < unique + unique / 50,
        "the repeated 24 MiB were found among spilled chunks: {} new bytes stored for {unique} unique",
        version.new_stored_size
    );
    assert!(version.new_stored_size >= unique, "{version:?}");
    assert_eq!(version.size, content.len() as u64);
    let (_, read) = download(&mut client, download_request(T, P, &artifact.id, ""))
        .await
        .unwrap();
    assert!(read == content, "a spilled upload reads back byte for byte");
    let mut next = update_header(T, P, &artifact.id);
    next.next_version = Some(update_artifact_header::NextVersion::Bump(BumpKind::Minor as i32));
    let again = update(&mut client, next, &content).await.unwrap();
    assert_eq!(again.version.unwrap().new_stored_size, 0);
    let (_, ranged) = download(
        &mut client,
        artifactd::proto::DownloadArtifactRequest {
            offset: 40 * 1024 * 1024,
            length: 1024 * 1024,
            ..download_request(T, P, &artifact.id, "")
        },
    )
    .await
    .unwrap();
    assert!(ranged == content[40 * 1024 * 1024..41 * 1024 * 1024]);
    common::check_clean(&server, "after a spilled upload").await;
    let spilled: Vec<_> = std::fs::read_dir(server.data_dir.join("spill"))
        .unwrap()
        .collect();
    assert!(spilled.is_empty(), "spill files have no names: {spilled:?}");
}

/// A spill directory that cannot be written stops the server at startup, naming the
/// setting, instead of failing the first large upload.
#[test]
fn an_unwritable_spill_directory_is_refused_at_startup() {
    let data = tempfile::tempdir().unwrap();
    let blocker = data.path().join("not-a-directory");
    std::fs::write(&blocker, b"a file").unwrap();
    let refused = common::binary::command()
        .arg("serve")
        .env("ARTIFACTD_DATA_DIR", data.path())
        .env("ARTIFACTD_SERVER__GRPC_ADDR", "127.0.0.1:0")
        .env("ARTIFACTD_SERVER__HTTP_ADDR", "127.0.0.1:0")
        .env("ARTIFACTD_INGEST__SPILL_DIR", blocker.join("spill"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("ingest.spill_dir"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_malformed_ids_are_named() {
    let server = ServerProcess::start();
    let mut client = server.client().await;
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_status(
        client.get_artifact(get_by_id(&unknown, "")).await,
        Code::NotFound,
        &[&unknown],
    );
    assert_status(
        download(&mut client, download_request(T, P, &unknown, "")).await,
        Code::NotFound,
        &[&unknown],
    );
    assert_status(
        update(&mut client, update_header(T, P, &unknown).with_bump(), b"x").await,
        Code::NotFound,
        &[&unknown],
    );
    assert_status(
        client
            .delete_artifact(DeleteArtifactRequest {
                tenant: T.into(),
                project: P.into(),
                artifact_id: unknown.clone(),
            })
            .await,
        Code::NotFound,
        &[&unknown],
    );
    assert_status(
        client.get_artifact(get_by_id("not-a-uuid", "")).await,
        Code::InvalidArgument,
        &["artifact_id", "not-a-uuid"],
    );
    let created = create(&mut client, header(T, P, "prd", "x.md"), b"x")
        .await
        .unwrap();
    let id = created.artifact.unwrap().id;
    assert_status(
        client.get_artifact(get_by_id(&id, "9.9.9")).await,
        Code::NotFound,
        &["9.9.9"],
    );
    // A word is an alias; text that is neither a version nor an alias name is invalid.
    assert_status(
        client.get_artifact(get_by_id(&id, "nine")).await,
        Code::NotFound,
        &["version", "no alias \"nine\""],
    );
    assert_status(
        client.get_artifact(get_by_id(&id, "Nine Point")).await,
        Code::InvalidArgument,
        &["version", "Nine Point", "neither a version"],
    );
}

trait WithBump {
    fn with_bump(self) -> Self;
}

impl WithBump for artifactd::proto::UpdateArtifactHeader {
    fn with_bump(mut self) -> Self {
        self.next_version = Some(update_artifact_header::NextVersion::Bump(BumpKind::Patch as i32));
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_are_rejected_and_nothing_is_stored() {
    let server = ServerProcess::start();
    let mut client = server.client().await;
    let too_long = "n".repeat(256);
    let cases: Vec<(&str, &str)> = vec![
        ("/a/b.md", "leading '/'"),
        ("..", "'..'"),
        ("docs/../b.md", "'..'"),
        ("docs//b.md", "empty segment"),
        ("bell\u{7}.md", "control characters"),
        (too_long.as_str(), "limit is 255"),
        ("", "must not be empty"),
    ];
    for (name, reason) in cases {
        let status = assert_status(
            create(&mut client, header(T, P, "prd", name), b"content").await,
            Code::InvalidArgument,
            &["name", reason],
        );
        if !name.is_empty() {
            let shown: String = name.chars().take(20).collect();
            let shown = format!("{shown:?}");
            assert!(
                status.message().contains(shown.trim_end_matches('"')),
                "the value is quoted: {}",
                status.message()
            );
        }
    }
    assert_status(
        create(&mut client, header("Bad Tenant", P, "prd", "a.md"), b"x").await,
        Code::InvalidArgument,
        &["tenant", "Bad Tenant"],
    );
    assert_status(
        create(&mut client, header(T, "../up", "prd", "a.md"), b"x").await,
        Code::InvalidArgument,
        &["project", "../up"],
    );
    assert_status(
        create(&mut client, header(T, P, "p r d", "a.md"), b"x").await,
        Code::InvalidArgument,
        &["artifact_type", "p r d"],
    );
    let mut bad_tag = header(T, P, "prd", "a.md");
    bad_tag.tags = vec!["a,b".into()];
    assert_status(
        create(&mut client, bad_tag, b"x").await,
        Code::InvalidArgument,
        &["tags", "a,b"],
    );
    let mut bad_metadata = header(T, P, "prd", "a.md");
    bad_metadata.metadata = [("bad key".to_owned(), "v".to_owned())].into();
    assert_status(
        create(&mut client, bad_metadata, b"x").await,
        Code::InvalidArgument,
        &["metadata", "bad key"],
    );
    assert_eq!(artifact_count(&mut client).await, 0);
    assert_eq!(server.fs_store_bytes(), 0, "nothing reached the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_rules_are_enforced() {
    let server = ServerProcess::start();
    let mut client = server.client().await;
    let mut bad_initial = header(T, P, "prd", "a.md");
    bad_initial.initial_version = "1.0".into();
    assert_status(
        create(&mut client, bad_initial, b"x").await,
        Code::InvalidArgument,
        &["initial_version", "\"1.0\""],
    );
    assert_eq!(artifact_count(&mut client).await, 0);

    let mut first = header(T, P, "prd", "a.md");
    first.initial_version = "2.0.0".into();
    let id = create_id(&mut client, first, b"v2").await;

    let mut invalid = update_header(T, P, &id);
    invalid.next_version = Some(update_artifact_header::NextVersion::ExplicitVersion("v3".into()));
    assert_status(
        update(&mut client, invalid, b"x").await,
        Code::InvalidArgument,
        &["explicit_version", "\"v3\""],
    );

    for not_greater in ["2.0.0", "1.9.9", "2.0.0-rc.1"] {
        let mut lower = update_header(T, P, &id);
        lower.next_version = Some(update_artifact_header::NextVersion::ExplicitVersion(
            not_greater.into(),
        ));
        assert_status(
            update(&mut client, lower, b"x").await,
            Code::FailedPrecondition,
            &["explicit_version", not_greater, "2.0.0"],
        );
    }

    let mut stale = update_header(T, P, &id).with_bump();
    stale.expected_current_version = "1.0.0".into();
    assert_status(
        update(&mut client, stale, b"x").await,
        Code::FailedPrecondition,
        &["expected_current_version", "2.0.0", "1.0.0"],
    );
    let mut neither = update_header(T, P, &id);
    neither.next_version = None;
    assert_status(
        update(&mut client, neither, b"x").await,
        Code::InvalidArgument,
        &["next_version"],
    );
    let mut bad_bump = update_header(T, P, &id);
    bad_bump.next_version = Some(update_artifact_header::NextVersion::Bump(0));
    assert_status(
        update(&mut client, bad_bump, b"x").await,
        Code::InvalidArgument,
        &["bump"],
    );

    let artifact = client
        .get_artifact(get_by_id(&id, ""))
        .await
        .unwrap()
        .into_inner()
        .artifact
        .unwrap();
    assert_eq!(
        (artifact.latest_version.as_str(), artifact.version_count),
        ("2.0.0", 1),
        "nothing was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_streams_are_rejected_and_leave_nothing_committed() {
    let server = small_pack_server();
    let mut client = server.client().await;
    let content = noise(2 * 1024 * 1024, 11);

    // A data message over the limit.
    let oversized = client::create_messages(header(T, P, "bundle", "big.bin"), &content, 256 * 1024 + 1);
    assert_status(
        client.create_artifact(futures::stream::iter(oversized)).await,
        Code::InvalidArgument,
        &["data", "262145", "262144"],
    );

    // The stream ends before the declared size.
    let mut short = header(T, P, "bundle", "short.bin");
    short.expected_size = Some(content.len() as u64 + 1);
    assert_status(
        create(&mut client, short, &content).await,
        Code::InvalidArgument,
        &[
            "expected_size",
            &content.len().to_string(),
            &(content.len() + 1).to_string(),
        ],
    );

    // More than declared.
    let mut long = header(T, P, "bundle", "long.bin");
    long.expected_size = Some(1000);
    assert_status(
        create(&mut client, long, &content).await,
        Code::InvalidArgument,
        &["expected_size", "1000"],
    );

    // A declared blake3 that does not match (after every byte was stored).
    let mut wrong_hash = header(T, P, "bundle", "hash.bin");
    let wrong = blake3::hash(b"something else").to_hex().to_string();
    wrong_hash.expected_blake3 = wrong.clone();
    assert_status(
        create(&mut client, wrong_hash, &content).await,
        Code::InvalidArgument,
        &[
            "expected_blake3",
            &wrong,
            blake3::hash(&content).to_hex().as_str(),
        ],
    );
    let mut malformed_hash = header(T, P, "bundle", "hash.bin");
    malformed_hash.expected_blake3 = "xyz".into();
    assert_status(
        create(&mut client, malformed_hash, &content).await,
        Code::InvalidArgument,
        &["expected_blake3", "xyz"],
    );

    // Headers: missing, or repeated after data.
    let data_first = vec![CreateArtifactRequest {
        message: Some(create_artifact_request::Message::Data(Bytes::from_static(b"x"))),
    }];
    assert_status(
        client.create_artifact(futures::stream::iter(data_first)).await,
        Code::InvalidArgument,
        &["header"],
    );
    assert_status(
        client
            .create_artifact(futures::stream::iter(Vec::<CreateArtifactRequest>::new()))
            .await,
        Code::InvalidArgument,
        &["header"],
    );
    let mut twice = client::create_messages(header(T, P, "bundle", "twice.bin"), b"abc", 1);
    twice.push(twice[0].clone());
    assert_status(
        client.create_artifact(futures::stream::iter(twice)).await,
        Code::InvalidArgument,
        &["header"],
    );

    assert_eq!(
        artifact_count(&mut client).await,
        0,
        "no failed upload is visible"
    );
    let catalog = server_catalog(&server).await;
    assert!(catalog.packs_in_state("committed").await.unwrap().is_empty());
    assert!(
        !catalog.packs_in_state("abandoned").await.unwrap().is_empty(),
        "packs written before the failure are recorded for garbage collection"
    );
    // Small tails went into shared packs, which name no upload: those wait for collection.
    let staged = catalog.packs_in_state("staged").await.unwrap();
    assert!(
        staged.iter().all(|pack| pack.upload_id.starts_with("shared-")),
        "a failed upload's own packs are abandoned: {staged:?}"
    );

    // Reading past the end.
    let id = create_id(&mut client, header(T, P, "bundle", "ok.bin"), b"0123456789").await;
    let mut past = download_request(T, P, &id, "");
    past.offset = 11;
    assert_status(
        download(&mut client, past).await,
        Code::OutOfRange,
        &["offset", "11", "10 bytes"],
    );
    let mut too_long = download_request(T, P, &id, "");
    too_long.offset = 5;
    too_long.length = 6;
    assert_status(
        download(&mut client, too_long).await,
        Code::OutOfRange,
        &["length", "6"],
    );
    let mut overflowing = download_request(T, P, &id, "");
    overflowing.offset = 1;
    overflowing.length = u64::MAX;
    assert_status(
        download(&mut client, overflowing).await,
        Code::OutOfRange,
        &["length"],
    );
    let mut at_end = download_request(T, P, &id, "");
    at_end.offset = 10;
    let (_, nothing) = download(&mut client, at_end).await.unwrap();
    assert!(nothing.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_from_the_same_version_exactly_one_wins() {
    let server = ServerProcess::start();
    let mut client = server.client().await;
    let id = create_id(&mut client, header(T, P, "bundle", "race.bin"), b"base").await;
    for round in 0..5u64 {
        let current = client
            .get_artifact(get_by_id(&id, ""))
            .await
            .unwrap()
            .into_inner()
            .artifact
            .unwrap();
        let mut racers = Vec::new();
        for racer in 0..2u64 {
            let mut client = server.client().await;
            let mut next = update_header(T, P, &id).with_bump();
            next.expected_current_version = current.latest_version.clone();
            let content = noise(1024 * 1024, round * 10 + racer);
            racers.push(tokio::spawn(
                async move { update(&mut client, next, &content).await },
            ));
        }
        let mut outcomes = Vec::new();
        for racer in racers {
            outcomes.push(racer.await.unwrap());
        }
        let winners = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(winners, 1, "round {round}: exactly one update wins: {outcomes:?}");
        let loser = outcomes.into_iter().find(|o| o.is_err()).unwrap().unwrap_err();
        assert!(
            matches!(loser.code(), Code::FailedPrecondition | Code::Aborted),
            "round {round}: loser got {loser:?}"
        );
        let after = client
            .get_artifact(get_by_id(&id, ""))
            .await
            .unwrap()
            .into_inner()
            .artifact
            .unwrap();
        assert_eq!(
            after.version_count,
            current.version_count + 1,
            "round {round}: the loser wrote nothing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_upload_leaves_no_version_and_records_its_packs() {
    let server = small_pack_server();
    let mut client = server.client().await;
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    // The upload has a connection of its own, so aborting it cuts that connection like a
    // client that died; the sender stays alive so the stream never ends cleanly.
    let mut upload_client = server.client().await;
    let upload = tokio::spawn(async move {
        upload_client
            .create_artifact(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await
    });
    let messages = client::create_messages(
        header(T, P, "bundle", "cancelled.bin"),
        &noise(4 * 1024 * 1024, 3),
        64 * 1024,
    );
    for message in messages.into_iter().take(40) {
        sender.send(message).await.unwrap();
    }
    let catalog = server_catalog(&server).await;
    // Wait until the server has written packs, then cut the call off.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while catalog.packs_in_state("staged").await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no pack was staged");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    upload.abort();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while catalog.packs_in_state("abandoned").await.unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the cancelled upload's packs were never marked abandoned: staged {:?}, committed {:?}, log:\n{}",
            catalog.packs_in_state("staged").await.unwrap().len(),
            catalog.packs_in_state("committed").await.unwrap().len(),
            server.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(artifact_count(&mut client).await, 0);
    assert!(catalog.packs_in_state("committed").await.unwrap().is_empty());
    drop(sender);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_and_projects_are_isolated() {
    let server = ServerProcess::start();
    let mut client = server.client().await;
    let id = create_id(&mut client, header(T, P, "prd", "secret.md"), b"acme only").await;
    for (tenant, project) in [("globex", P), (T, "other")] {
        let mut request = get_by_id(&id, "");
        request.tenant = tenant.into();
        request.project = project.into();
        assert_status(client.get_artifact(request).await, Code::NotFound, &[&id]);
        assert_status(
            download(&mut client, download_request(tenant, project, &id, "")).await,
            Code::NotFound,
            &[&id],
        );
        assert_status(
            update(&mut client, update_header(tenant, project, &id).with_bump(), b"x").await,
            Code::NotFound,
            &[&id],
        );
        assert_status(
            client
                .delete_artifact(DeleteArtifactRequest {
                    tenant: tenant.into(),
                    project: project.into(),
                    artifact_id: id.clone(),
                })
                .await,
            Code::NotFound,
            &[&id],
        );
        let listed = client
            .list_artifacts(ListArtifactsRequest {
                tenant: tenant.into(),
                project: project.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(listed.artifacts.is_empty());
    }
    // The same name may exist in another tenant.
    create(
        &mut client,
        header("globex", P, "prd", "secret.md"),
        b"globex's own",
    )
    .await
    .unwrap();
    let (_, bytes) = download(&mut client, download_request(T, P, &id, ""))
        .await
        .unwrap();
    assert_eq!(bytes, b"acme only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_delete_hides_and_undelete_restores_within_retention() {
    let server = ServerProcess::start_with(
        ServerOptions::default().env("ARTIFACTD_RETENTION__DELETED_RETENTION_SECONDS", "2"),
    );
    let mut client = server.client().await;
    let content = corpus_file("bmad-docs/CHANGELOG.md");
    let id = create_id(&mut client, header(T, P, "changelog", "CHANGELOG.md"), &content).await;
    let delete = |id: &str| DeleteArtifactRequest {
        tenant: T.into(),
        project: P.into(),
        artifact_id: id.into(),
    };
    let undelete = |id: &str| UndeleteArtifactRequest {
        tenant: T.into(),
        project: P.into(),
        artifact_id: id.into(),
    };
    let deleted = client.delete_artifact(delete(&id)).await.unwrap().into_inner();
    assert!(deleted.artifact.unwrap().deleted_at.is_some());
    assert!(deleted.restorable_until.is_some());
    assert_status(
        client.get_artifact(get_by_id(&id, "")).await,
        Code::NotFound,
        &[&id],
    );
    assert_eq!(artifact_count(&mut client).await, 0);
    assert_status(client.delete_artifact(delete(&id)).await, Code::NotFound, &[&id]);
    // The name stays taken while the artifact can still be restored.
    assert_status(
        create(&mut client, header(T, P, "changelog", "CHANGELOG.md"), b"x").await,
        Code::AlreadyExists,
        &["CHANGELOG.md"],
    );

    let restored = client
        .undelete_artifact(undelete(&id))
        .await
        .unwrap()
        .into_inner();
    assert!(restored.artifact.unwrap().deleted_at.is_none());
    let (_, bytes) = download(&mut client, download_request(T, P, &id, ""))
        .await
        .unwrap();
    assert!(bytes == content, "content survives a delete and undelete");
    assert_status(
        client.undelete_artifact(undelete(&id)).await,
        Code::FailedPrecondition,
        &["not deleted"],
    );

    client.delete_artifact(delete(&id)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_status(
        client.undelete_artifact(undelete(&id)).await,
        Code::FailedPrecondition,
        &["retention"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_pack_is_reported_as_data_loss() {
    let server = ServerProcess::start();
    let mut client = server.client().await;
    let content = noise(500_000, 8);
    let id = create_id(&mut client, header(T, P, "bundle", "x.bin"), &content).await;
    let pack = walk_files(&server.data_dir.join("blobs/packs"))
        .pop()
        .expect("a pack file");
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&pack, bytes).unwrap();
    assert_status(
        download(&mut client, download_request(T, P, &id, "")).await,
        Code::DataLoss,
        &["does not match"],
    );
    // A range that avoids the damaged chunk still reads.
    let mut tail = download_request(T, P, &id, "");
    tail.offset = 400_000;
    let (_, bytes) = download(&mut client, tail)
        .await
        .expect("the damaged chunk is at the start");
    assert_eq!(bytes, content[400_000..]);
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk_files(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_counts_uploads() {
    let server = ServerProcess::start();
    let mut client = server.client().await;
    create(&mut client, header(T, P, "prd", "a.md"), b"# hello\n")
        .await
        .unwrap();
    let body = common::http_get(server.http, "/metrics").await;
    assert!(
        body.contains("artifactd_versions_committed_total 1"),
        "metrics:\n{body}"
    );
    assert!(
        body.contains("artifactd_ingested_bytes_total 8"),
        "metrics:\n{body}"
    );
}

async fn latest_metadata(client: &mut Client, artifact_id: String) -> artifactd::proto::GetMetadataResponse {
    client
        .get_metadata(GetMetadataRequest {
            tenant: T.into(),
            project: P.into(),
            artifact_id,
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_is_extracted_on_upload() {
    let server = ServerProcess::start();
    let mut client = server.client().await;
    let skill = corpus_file("bmad-docs/src/core-skills/bmad-review/SKILL.md");
    let id = create_id(&mut client, header(T, P, "skill", "SKILL.md"), &skill).await;
    let metadata = latest_metadata(&mut client, id).await;
    let extracted = metadata.extracted.unwrap();
    assert_eq!(metadata.content_type, "text/markdown");
    assert!(extracted.is_text && !extracted.truncated);
    assert_eq!(extracted.line_count, 50, "wc -l of the file");
    assert_eq!(
        extracted.title, "BMad Review",
        "no title in the front matter: the first H1"
    );
    assert_eq!(&extracted.headings[..3], ["BMad Review", "Inputs", "Conventions"]);
    let front_matter = extracted.front_matter.unwrap();
    let name = front_matter.fields["name"].kind.clone().unwrap();
    assert_eq!(name, prost_types::value::Kind::StringValue("bmad-review".into()));
    assert!(front_matter.fields.contains_key("description"));

    let modules = corpus_file("bmad-docs/bmad-modules.yaml");
    let yaml_id = create_id(&mut client, header(T, P, "config", "bmad-modules.yaml"), &modules).await;
    let yaml = latest_metadata(&mut client, yaml_id).await;
    assert_eq!(yaml.content_type, "application/yaml");
    assert!(!yaml.extracted.unwrap().top_level_keys.is_empty());

    let binary_id = create_id(&mut client, header(T, P, "bundle", "blob.bin"), &noise(10_000, 4)).await;
    let binary = latest_metadata(&mut client, binary_id).await;
    assert!(!binary.extracted.unwrap().is_text);
}
