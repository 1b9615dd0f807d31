//! Uploads large enough to spill their chunk lists and manifests to `ingest.spill_dir`,
//! several at once: each finds its own repeats among spilled chunks, their commits share
//! manifest segments (written in id order, so concurrent commits on Postgres lock them in
//! one order), and everything reads back and checks clean.

mod common;

use artifactd::proto::BumpKind;
use artifactd::proto::update_artifact_header::NextVersion;
use common::binary::{ServerOptions, ServerProcess};
use common::client::{create, download, download_request, header, update, update_header};
use common::noise;

const T: &str = "acme";
const P: &str = "bundles";
const CLIENTS: usize = 4;
const MIB: usize = 1024 * 1024;

/// Client `n`'s content: a block every client shares, one of its own, the shared block again.
fn content(shared: &[u8], n: usize) -> Vec<u8> {
    [shared, &noise(8 * MIB, 100 + n as u64), shared].concat()
}

/// The same with one MiB in its middle rewritten.
fn edited(content: &[u8], n: usize) -> Vec<u8> {
    let mut edited = content.to_vec();
    let middle = edited.len() / 2;
    edited[middle..middle + MIB].copy_from_slice(&noise(MIB, 200 + n as u64));
    edited
}

async fn spilled_uploads_at_once(postgres: bool) {
    let database = if postgres {
        Some(common::postgres::TestDatabase::create().await)
    } else {
        None
    };
    let mut options = ServerOptions::default()
        .env("ARTIFACTD_RETENTION__GC_GRACE_SECONDS", "1")
        .env("ARTIFACTD_RETENTION__GC_INTERVAL_SECONDS", "0");
    if let Some(database) = &database {
        options = options.env("DATABASE_URL", database.url.clone());
    }
    let server = std::sync::Arc::new(ServerProcess::start_with(options));
    let shared = std::sync::Arc::new(noise(24 * MIB, 7));

    let mut clients = tokio::task::JoinSet::new();
    for n in 0..CLIENTS {
        let server = server.clone();
        let shared = shared.clone();
        clients.spawn(async move {
            let mut client = server.client().await;
            let first = content(&shared, n);
            let created = create(&mut client, header(T, P, "bundle", &format!("b{n}.tar")), &first)
                .await
                .unwrap_or_else(|e| panic!("client {n} create: {e}"));
            let id = created.artifact.unwrap().id;
            let mut next = update_header(T, P, &id);
            next.next_version = Some(NextVersion::Bump(BumpKind::Minor as i32));
            let second = edited(&first, n);
            let updated = update(&mut client, next, &second)
                .await
                .unwrap_or_else(|e| panic!("client {n} update: {e}"));
            let new_bytes = updated.version.unwrap().new_stored_size;
            assert!(
                new_bytes < 2 * MIB as u64,
                "client {n}: a 1 MiB edit of a spilled version stored {new_bytes} new bytes"
            );
            (id, first, second)
        });
    }
    let uploaded = clients.join_all().await;
    assert_eq!(
        common::metric(server.http, "artifactd_uploads_spilled_total").await,
        (2 * CLIENTS) as f64,
        "every upload spilled"
    );
    // Uploads racing with the same new content each store it until one commits (the others'
    // copies lose and become garbage); after collection it is stored once: the shared
    // block, each client's own block, each edit (and a chunk or two around each seam).
    let unique = (24 + CLIENTS * 8 + CLIENTS) * MIB;
    let raced = server.fs_store_bytes() as usize;
    common::collect_garbage(&server, 4).await;
    let stored = server.fs_store_bytes() as usize;
    println!("stored {raced} bytes as the uploads raced, {stored} after collection, for {unique} unique");
    assert!(
        stored < unique + unique / 20 && stored >= unique,
        "stored {stored} bytes for {unique} unique after collection ({raced} before)"
    );
    let mut client = server.client().await;
    for (id, first, second) in &uploaded {
        for (version, expected) in [("1.0.0", first), ("1.1.0", second)] {
            let (_, read) = download(&mut client, download_request(T, P, id, version))
                .await
                .unwrap();
            assert!(read == *expected, "{id} {version} reads back");
        }
    }
    common::check_clean(&server, "after spilled uploads at once").await;

    // Half the artifacts gone, purged and collected: the rest still read back and check clean.
    for (id, ..) in &uploaded[..CLIENTS / 2] {
        common::delete_and_purge(&server, T, P, id).await;
    }
    common::collect_garbage(&server, 2).await;
    for (id, _, second) in &uploaded[CLIENTS / 2..] {
        let (_, read) = download(&mut client, download_request(T, P, id, "1.1.0"))
            .await
            .unwrap();
        assert!(read == *second, "{id} reads back after collection");
    }
    common::check_clean(&server, "after collection").await;
    drop(server);
    if let Some(database) = database {
        database.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spilled_uploads_at_once_on_sqlite() {
    spilled_uploads_at_once(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spilled_uploads_at_once_on_postgres() {
    spilled_uploads_at_once(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_of_many_chunks_finds_its_repeats_in_its_index_on_disk() {
    // 1 KiB chunks (about 1.2 KiB as cut): the first 32 MiB are ~27,000 chunks, past the
    // 16,384 entries after which the upload's own-repeat index writes its runs to the spill
    // directory. The same block again must be found there, not stored twice.
    let server =
        ServerProcess::start_with(ServerOptions::default().env("ARTIFACTD_INGEST__CHUNK_AVG_BYTES", "1024"));
    let mut client = server.client().await;
    let block = noise(32 * MIB, 41);
    let content = [block.as_slice(), &noise(4 * MIB, 42), block.as_slice()].concat();
    let created = create(&mut client, header(T, P, "bundle", "many-chunks.bin"), &content)
        .await
        .unwrap();
    let version = created.version.unwrap();
    let unique = (36 * MIB) as u64;
    assert!(
        version.new_stored_size < unique + unique / 20,
        "the repeated block was found in the index on disk: {} new bytes stored for {unique} unique",
        version.new_stored_size
    );
    let (_, read) = download(
        &mut client,
        download_request(T, P, &created.artifact.unwrap().id, ""),
    )
    .await
    .unwrap();
    assert!(read == content, "the upload reads back byte for byte");
}
