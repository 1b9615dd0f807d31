//! Encryption at rest over real gRPC, on both catalogs: the store holds no plaintext of a
//! known document, rotation re-wraps keys without rewriting a pack (and uploads running
//! meanwhile all land readable), destroying a tenant's key makes exactly its sealed content
//! unreadable (also with uploads racing the destruction), master keys rotate, and content
//! written before encryption was on stays readable.

mod common;

use artifactd::proto::audit_service_client::AuditServiceClient;
use artifactd::proto::encryption_service_client::EncryptionServiceClient;
use artifactd::proto::search_service_client::SearchServiceClient;
use artifactd::proto::{
    DestroyTenantKeyRequest, GetAuditTrailRequest, GetEncryptionStatusRequest, GetEncryptionStatusResponse,
    RewrapTenantKeysRequest, RotateTenantKeyRequest, SearchRequest, TenantKeyState,
};
use base64::Engine;
use common::binary::{Authed, ServerOptions, ServerProcess, command};
use common::client::{Client, assert_status, create, create_id, download, download_request, header};
use common::postgres::TestDatabase;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use tonic::Code;

const T: &str = "acme";

fn master_key(seed: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([seed; 32])
}

/// A server whose state lives in `dir` (and in `database` when given), so it can be
/// restarted with other keys.
fn start_in(dir: &Path, database: &Option<TestDatabase>, env: &[(&str, String)]) -> ServerProcess {
    let mut options = ServerOptions {
        data_dir: Some(dir.to_owned()),
        ..Default::default()
    };
    if let Some(database) = database {
        options = options.env("DATABASE_URL", database.url.clone());
    }
    for (key, value) in env {
        options = options.env(key, value.clone());
    }
    ServerProcess::start_with(options)
}

async fn database(postgres: bool) -> Option<TestDatabase> {
    if postgres {
        Some(TestDatabase::create().await)
    } else {
        None
    }
}

fn sealed(seed: u8) -> Vec<(&'static str, String)> {
    vec![("ARTIFACTD_ENCRYPTION__MASTER_KEY", master_key(seed))]
}

async fn keys(server: &ServerProcess) -> EncryptionServiceClient<Authed> {
    EncryptionServiceClient::new(server.channel().await)
}

async fn status(server: &ServerProcess, tenant: &str) -> GetEncryptionStatusResponse {
    keys(server)
        .await
        .get_encryption_status(GetEncryptionStatusRequest {
            tenant: tenant.into(),
        })
        .await
        .expect("encryption status")
        .into_inner()
}

fn store_files(server: &ServerProcess) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(dir: &Path, into: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, into);
            } else {
                into.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(&server.data_dir.join("blobs").join("packs"), &mut files);
    files
}

/// How many 16-byte pieces of `document` appear verbatim anywhere in `files`.
fn plaintext_windows(document: &[u8], files: &BTreeMap<PathBuf, Vec<u8>>) -> usize {
    const WINDOW: usize = 16;
    let windows: HashSet<&[u8]> = document.windows(WINDOW).collect();
    files
        .values()
        .map(|bytes| bytes.windows(WINDOW).filter(|w| windows.contains(w)).count())
        .sum()
}

fn known_document() -> Vec<u8> {
    std::fs::read(common::corpus_dir().join("bmad-docs/CHANGELOG.md")).expect("corpus document")
}

/// The document's 16-byte pieces spread through noise, so that compression does not pay and
/// a plain store keeps every piece verbatim.
fn diluted(document: &[u8]) -> Vec<u8> {
    let pieces = document.chunks(16);
    let noise = common::noise(pieces.len() * 496, 5);
    pieces
        .zip(noise.chunks(496))
        .flat_map(|(piece, noise)| piece.iter().chain(noise).copied().collect::<Vec<u8>>())
        .collect()
}

async fn the_store_holds_no_plaintext(postgres: bool) {
    let document = known_document();
    let diluted = diluted(&document);
    // The control: without encryption the diluted document leaves its pieces in the store,
    // so the search below finds plaintext where there is some.
    let plain_dir = tempfile::tempdir().unwrap();
    let plain_db = database(postgres).await;
    let plain = start_in(plain_dir.path(), &plain_db, &[]);
    create_id(
        &mut plain.client().await,
        header(T, "p", "doc", "diluted.bin"),
        &diluted,
    )
    .await;
    let leaked = plaintext_windows(&document, &store_files(&plain));
    assert!(
        leaked >= document.len() / 16 / 2,
        "the control found only {leaked} plaintext pieces in a plain store"
    );

    let dir = tempfile::tempdir().unwrap();
    let db = database(postgres).await;
    // No chunk cache: the damage done below must reach the read, not a copy kept in memory.
    let mut settings = sealed(1);
    settings.push(("ARTIFACTD_DELIVERY__CACHE_MEMORY_BYTES", "0".to_owned()));
    let server = start_in(dir.path(), &db, &settings);
    let mut client = server.client().await;
    let id = create_id(&mut client, header(T, "p", "doc", "CHANGELOG.md"), &document).await;
    create_id(&mut client, header(T, "p", "doc", "diluted.bin"), &diluted).await;
    let files = store_files(&server);
    assert_eq!(files.len(), 2);
    assert_eq!(
        plaintext_windows(&document, &files),
        0,
        "sealed packs hold plaintext"
    );
    for bytes in files.values() {
        assert_eq!(
            &bytes[bytes.len() - 8..],
            b"ARTPACK2",
            "a sealed pack is format version 2"
        );
    }
    let (_, content) = download(&mut client, download_request(T, "p", &id, ""))
        .await
        .unwrap();
    assert!(content == document);
    let status = status(&server, T).await;
    assert!(status.enabled);
    assert_eq!(status.keys.len(), 1);
    assert_eq!(status.keys[0].state, TenantKeyState::Active as i32);
    assert_eq!(status.keys[0].master_key_id, status.master_key_id);
    assert_eq!((status.sealed_packs, status.plain_packs), (2, 0));

    // A flipped byte in a sealed pack is caught, not served.
    let path = files
        .keys()
        .find(|path| std::fs::metadata(path).unwrap().len() < diluted.len() as u64 / 2)
        .unwrap()
        .clone();
    let mut bytes = files[&path].clone();
    bytes[10] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    assert_status(
        download(&mut client, download_request(T, "p", &id, "")).await,
        Code::DataLoss,
        &[],
    );
}

#[tokio::test]
async fn the_store_holds_no_plaintext_on_sqlite() {
    the_store_holds_no_plaintext(false).await;
}

#[tokio::test]
async fn the_store_holds_no_plaintext_on_postgres() {
    the_store_holds_no_plaintext(true).await;
}

fn shared_block() -> Vec<u8> {
    common::noise(96 * 1024, 4242)
}

/// Uploads `count` artifacts of distinct content from one task; returns (id, content).
async fn upload_many(
    mut client: Client,
    tenant: &'static str,
    task: usize,
    count: usize,
) -> Vec<Result<(String, Vec<u8>), tonic::Status>> {
    let mut done = Vec::new();
    for i in 0..count {
        // A block every upload shares (so uploads deduplicate against each other's chunks),
        // then content of its own.
        let mut content = shared_block();
        content.extend(format!("task {task} upload {i}\n").repeat(200).into_bytes());
        content.extend(common::noise(20_000 + i * 1000, (task * 1000 + i) as u64));
        let name = format!("t{task}-{i}.bin");
        done.push(
            create(&mut client, header(tenant, "p", "bundle", &name), &content)
                .await
                .map(|r| (r.artifact.unwrap().id, content)),
        );
    }
    done
}

async fn rotation_rewraps_without_rewriting(postgres: bool) {
    let dir = tempfile::tempdir().unwrap();
    let db = database(postgres).await;
    let server = start_in(dir.path(), &db, &sealed(2));
    let client = server.client().await;
    let before = upload_many(client.clone(), T, 99, 3).await;
    let packs_before = store_files(&server);

    // Rotations while four clients upload.
    let uploads: Vec<_> = (0..4)
        .map(|task| tokio::spawn(upload_many(client.clone(), T, task, 6)))
        .collect();
    let mut keys = keys(&server).await;
    let mut rewrapped = 0;
    for _ in 0..5 {
        let rotation = keys
            .rotate_tenant_key(RotateTenantKeyRequest { tenant: T.into() })
            .await
            .expect("rotating")
            .into_inner();
        assert_ne!(rotation.old_key_id, rotation.new_key_id);
        rewrapped += rotation.data_keys_rewrapped;
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    assert!(
        rewrapped >= 3 * 5,
        "each rotation re-wraps at least the first packs"
    );
    let mut all = before;
    for upload in uploads {
        all.extend(upload.await.unwrap());
    }
    let mut client = client;
    for result in all {
        let (id, content) = result.expect("an upload racing a rotation still lands");
        let (_, read) = download(&mut client, download_request(T, "p", &id, ""))
            .await
            .expect("every version reads after the rotations");
        assert!(read == content);
    }
    // Nothing was rewritten: the packs from before are there, byte for byte.
    let packs_after = store_files(&server);
    for (path, bytes) in &packs_before {
        assert_eq!(packs_after.get(path), Some(bytes), "{} changed", path.display());
    }
    let status = status(&server, T).await;
    let states: Vec<i32> = status.keys.iter().map(|k| k.state).collect();
    assert_eq!(
        states
            .iter()
            .filter(|s| **s == TenantKeyState::Active as i32)
            .count(),
        1
    );
    assert_eq!(
        states
            .iter()
            .filter(|s| **s == TenantKeyState::Rotated as i32)
            .count(),
        5
    );
    assert!(
        status
            .keys
            .iter()
            .filter(|k| k.state == TenantKeyState::Rotated as i32)
            .all(|k| k.master_key_id.is_empty()),
        "a rotated key's material is erased"
    );
    assert_eq!(status.plain_packs, 0);
}

#[tokio::test]
async fn rotation_rewraps_without_rewriting_on_sqlite() {
    rotation_rewraps_without_rewriting(false).await;
}

#[tokio::test]
async fn rotation_rewraps_without_rewriting_on_postgres() {
    rotation_rewraps_without_rewriting(true).await;
}

/// Whether searching acme/p for words of the known document comes to find `id` (or, with
/// `present` false, comes to no longer find it) within 15 s.
async fn found_within(search: &mut SearchServiceClient<Authed>, id: &str, present: bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        let hits = search
            .search(SearchRequest {
                tenant: T.into(),
                project: "p".into(),
                query: "editorial skills become lenses".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .hits;
        if hits.iter().any(|hit| hit.artifact_id == id) == present {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

async fn destroying_a_key_shreds_exactly_its_content(postgres: bool) {
    let dir = tempfile::tempdir().unwrap();
    let db = database(postgres).await;
    let server = start_in(dir.path(), &db, &sealed(3));
    let mut client = server.client().await;
    let document = known_document();
    let shredded = create_id(&mut client, header(T, "p", "doc", "a.md"), &document).await;
    let other = create_id(&mut client, header("globex", "p", "doc", "a.md"), &document).await;
    let mut keys = keys(&server).await;
    let mut search = SearchServiceClient::new(server.channel().await);
    assert!(
        found_within(&mut search, &shredded, true).await,
        "the document's text is searchable before the destruction"
    );

    assert_status(
        keys.destroy_tenant_key(DestroyTenantKeyRequest {
            tenant: T.into(),
            confirm_tenant: "acm".into(),
        })
        .await,
        Code::InvalidArgument,
        &["confirm_tenant"],
    );

    // Uploads race the destruction: each one lands readable, or is refused, or was
    // committed before it and is shredded with the rest; none is silently broken.
    let racing: Vec<_> = (0..3)
        .map(|task| tokio::spawn(upload_many(client.clone(), T, task, 12)))
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let report = keys
        .destroy_tenant_key(DestroyTenantKeyRequest {
            tenant: T.into(),
            confirm_tenant: T.into(),
        })
        .await
        .expect("destroying")
        .into_inner();
    assert_eq!(report.destroyed_key_ids.len(), 1);
    assert!(report.packs_unreadable >= 1);
    assert!(report.chunks_forgotten >= 1);
    assert_eq!(report.plain_packs_remaining, 0);

    let (mut readable, mut shredded_racers, mut refused) = (0, 0, 0);
    for task in racing {
        for result in task.await.unwrap() {
            match result {
                Ok((id, content)) => match download(&mut client, download_request(T, "p", &id, "")).await {
                    Ok((_, read)) => {
                        assert!(read == content);
                        readable += 1;
                    }
                    Err(status) => {
                        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                        shredded_racers += 1;
                    }
                },
                Err(status) => {
                    assert_eq!(status.code(), Code::Aborted, "{status:?}");
                    refused += 1;
                }
            }
        }
    }
    eprintln!("racing uploads: {readable} readable, {shredded_racers} shredded, {refused} refused");

    assert_status(
        download(&mut client, download_request(T, "p", &shredded, "")).await,
        Code::FailedPrecondition,
        &["destroyed"],
    );
    // What the index and the catalog kept of its text goes too.
    assert!(
        found_within(&mut search, &shredded, false).await,
        "the destroyed content is still found by its text"
    );
    // Another tenant is untouched.
    let (_, read) = download(&mut client, download_request("globex", "p", &other, ""))
        .await
        .unwrap();
    assert!(read == document);
    // The shared block alone, and the same document again: stored anew under a new key, not
    // deduplicated against chunks nobody can read.
    let block = shared_block();
    let block_id = create_id(&mut client, header(T, "p", "bundle", "block.bin"), &block).await;
    let (_, read) = download(&mut client, download_request(T, "p", &block_id, ""))
        .await
        .unwrap();
    assert!(read == block);
    let again = create_id(&mut client, header(T, "p", "doc", "b.md"), &document).await;
    let (_, read) = download(&mut client, download_request(T, "p", &again, ""))
        .await
        .unwrap();
    assert!(read == document);
    let status = status(&server, T).await;
    assert_eq!(
        status
            .keys
            .iter()
            .filter(|k| k.state == TenantKeyState::Destroyed as i32)
            .count(),
        1
    );
    assert_eq!(
        status
            .keys
            .iter()
            .filter(|k| k.state == TenantKeyState::Active as i32)
            .count(),
        1
    );
    // The key changes are in the tenant's audit trail, with who made them.
    let mut audit = AuditServiceClient::new(server.channel().await);
    for action in ["tenant_key.created", "tenant_key.destroyed"] {
        let entries = audit
            .get_audit_trail(GetAuditTrailRequest {
                tenant: T.into(),
                action: action.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .entries;
        assert!(!entries.is_empty(), "no {action} entry");
        if action == "tenant_key.destroyed" {
            assert_eq!(entries.len(), 1);
            assert_eq!(entries[0].principal_kind, "api_key");
        }
    }
}

#[tokio::test]
async fn destroying_a_key_shreds_exactly_its_content_on_sqlite() {
    destroying_a_key_shreds_exactly_its_content(false).await;
}

#[tokio::test]
async fn destroying_a_key_shreds_exactly_its_content_on_postgres() {
    destroying_a_key_shreds_exactly_its_content(true).await;
}

async fn master_keys_rotate_and_old_content_stays_readable(postgres: bool) {
    let dir = tempfile::tempdir().unwrap();
    let db = database(postgres).await;
    let document = known_document();

    // Written before encryption was on.
    let mut server = start_in(dir.path(), &db, &[]);
    let plain_id = create_id(
        &mut server.client().await,
        header(T, "p", "doc", "plain.md"),
        &document,
    )
    .await;
    server.kill();

    // Master key A: the old content reads as it is, new content is sealed.
    let mut server = start_in(dir.path(), &db, &sealed(10));
    let mut client = server.client().await;
    let sealed_id = create_id(&mut client, header(T, "p", "doc", "sealed.md"), b"sealed under A").await;
    let (_, read) = download(&mut client, download_request(T, "p", &plain_id, ""))
        .await
        .unwrap();
    assert!(read == document);
    let status_a = status(&server, T).await;
    assert_eq!((status_a.sealed_packs, status_a.plain_packs), (1, 1));
    server.kill();

    // Without any master key, sealed content says what is missing; plain content reads.
    let mut server = start_in(dir.path(), &db, &[]);
    let mut client = server.client().await;
    assert_status(
        download(&mut client, download_request(T, "p", &sealed_id, "")).await,
        Code::FailedPrecondition,
        &["master key"],
    );
    download(&mut client, download_request(T, "p", &plain_id, ""))
        .await
        .unwrap();
    server.kill();

    // A wrong master key names the one that is needed.
    let mut server = start_in(dir.path(), &db, &sealed(11));
    assert_status(
        download(
            &mut server.client().await,
            download_request(T, "p", &sealed_id, ""),
        )
        .await,
        Code::FailedPrecondition,
        &[&status_a.master_key_id],
    );
    server.kill();

    // Master key B with A as the previous one: reads work, and a rewrap moves the tenant key.
    let previous = dir.path().join("master-a.key");
    std::fs::write(&previous, master_key(10)).unwrap();
    let mut env = sealed(11);
    env.push((
        "ARTIFACTD_ENCRYPTION__PREVIOUS_MASTER_KEY_FILES",
        previous.display().to_string(),
    ));
    let mut server = start_in(dir.path(), &db, &env);
    let mut client = server.client().await;
    let (_, read) = download(&mut client, download_request(T, "p", &sealed_id, ""))
        .await
        .unwrap();
    assert_eq!(read, b"sealed under A");
    let mut keys = keys(&server).await;
    let rewrap = keys
        .rewrap_tenant_keys(RewrapTenantKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((rewrap.rewrapped, rewrap.already_current), (1, 0));
    let rewrap = keys
        .rewrap_tenant_keys(RewrapTenantKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((rewrap.rewrapped, rewrap.already_current), (0, 1));
    server.kill();

    // B alone now opens everything.
    let server = start_in(dir.path(), &db, &sealed(11));
    let mut client = server.client().await;
    let (_, read) = download(&mut client, download_request(T, "p", &sealed_id, ""))
        .await
        .unwrap();
    assert_eq!(read, b"sealed under A");
    let status_b = status(&server, T).await;
    assert_ne!(status_b.master_key_id, status_a.master_key_id);
    assert_eq!(status_b.keys[0].master_key_id, status_b.master_key_id);
}

#[tokio::test]
async fn master_keys_rotate_and_old_content_stays_readable_on_sqlite() {
    master_keys_rotate_and_old_content_stays_readable(false).await;
}

#[tokio::test]
async fn master_keys_rotate_and_old_content_stays_readable_on_postgres() {
    master_keys_rotate_and_old_content_stays_readable(true).await;
}

#[test]
fn an_unusable_master_key_stops_the_server_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    for (variable, value, needle) in [
        (
            "ARTIFACTD_ENCRYPTION__MASTER_KEY",
            "c2hvcnQ=".to_owned(),
            "encryption.master_key",
        ),
        (
            "ARTIFACTD_ENCRYPTION__MASTER_KEY_FILE",
            dir.path().join("missing.key").display().to_string(),
            "encryption.master_key_file",
        ),
    ] {
        let output = command()
            .arg("serve")
            .env("ARTIFACTD_DATA_DIR", dir.path())
            .env("ARTIFACTD_SERVER__GRPC_ADDR", "127.0.0.1:0")
            .env("ARTIFACTD_SERVER__HTTP_ADDR", "127.0.0.1:0")
            .env(variable, value)
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{stderr}");
        assert!(
            !stderr.contains("c2hvcnQ"),
            "the key itself is never printed: {stderr}"
        );
    }
}
