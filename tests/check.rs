//! `artifactd check` against a real catalog (both dialects) and store: clean after uploads
//! (sealed and plain, deduplicated, one tenant shredded on purpose), orphans listed without
//! failing, a flipped byte found only by `--read-data`, a missing pack found by either.

mod common;

use artifactd::proto::admin_service_client::AdminServiceClient;
use artifactd::proto::encryption_service_client::EncryptionServiceClient;
use artifactd::proto::{CheckConsistencyRequest, DestroyTenantKeyRequest};
use common::binary::{ServerOptions, ServerProcess, command};
use common::client::{create_id, header};
use common::postgres::TestDatabase;
use std::path::{Path, PathBuf};

const MASTER_KEY: &str = "3333333333333333333333333333333333333333333333333333333333333333";

struct Checked {
    success: bool,
    stdout: String,
}

fn check(dir: &Path, database: &Option<TestDatabase>, read_data: bool) -> Checked {
    let mut check = command();
    check
        .arg("check")
        .env("ARTIFACTD_DATA_DIR", dir)
        .env("ARTIFACTD_ENCRYPTION__MASTER_KEY", MASTER_KEY);
    if let Some(database) = database {
        check.env("DATABASE_URL", &database.url);
    }
    if read_data {
        check.arg("--read-data");
    }
    let output = check.output().expect("running artifactd check");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    Checked {
        success: output.status.success(),
        stdout,
    }
}

fn packs(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for fan in std::fs::read_dir(dir.join("blobs/packs")).unwrap().flatten() {
        for pack in std::fs::read_dir(fan.path()).unwrap().flatten() {
            found.push(pack.path());
        }
    }
    found.sort();
    found
}

async fn the_check_finds_what_is_wrong(postgres: bool) {
    let dir = tempfile::tempdir().unwrap();
    let database = if postgres {
        Some(TestDatabase::create().await)
    } else {
        None
    };
    // Plain content first, then the same server with encryption on.
    let mut options = ServerOptions {
        data_dir: Some(dir.path().to_owned()),
        ..Default::default()
    };
    if let Some(database) = &database {
        options = options.env("DATABASE_URL", database.url.clone());
    }
    let mut server = ServerProcess::start_with(options.clone());
    let shared = common::noise(200_000, 1);
    let mut plain = shared.clone();
    plain.extend(b"written before encryption");
    create_id(
        &mut server.client().await,
        header("acme", "p", "bundle", "plain.bin"),
        &plain,
    )
    .await;
    server.kill();
    let server = ServerProcess::start_with(options.env("ARTIFACTD_ENCRYPTION__MASTER_KEY", MASTER_KEY));
    let mut client = server.client().await;
    for i in 0..4u64 {
        let mut content = shared.clone();
        content.extend(common::noise(50_000, 10 + i));
        create_id(
            &mut client,
            header("acme", "p", "bundle", &format!("sealed-{i}.bin")),
            &content,
        )
        .await;
    }
    create_id(
        &mut client,
        header("globex", "p", "doc", "gone.md"),
        b"# to be destroyed\n",
    )
    .await;
    EncryptionServiceClient::new(server.channel().await)
        .destroy_tenant_key(DestroyTenantKeyRequest {
            tenant: "globex".into(),
            confirm_tenant: "globex".into(),
        })
        .await
        .unwrap();
    // The same check as a call, on the running server.
    let called = AdminServiceClient::new(server.channel().await)
        .check_consistency(CheckConsistencyRequest { read_data: true })
        .await
        .expect("the check as a call")
        .into_inner();
    assert_eq!((called.versions, called.destroyed_versions), (6, 1));
    assert!(called.problems.is_empty(), "{:?}", called.problems);
    assert!(called.bytes_read > 0);
    drop(client);
    drop(server);

    let clean = check(dir.path(), &database, true);
    assert!(clean.success, "a sound store fails the check");
    assert!(clean.stdout.contains("checked 6 versions"), "{}", clean.stdout);
    assert!(
        clean.stdout.contains("1 versions were destroyed"),
        "{}",
        clean.stdout
    );
    assert!(clean.stdout.contains("no problems found"));

    // A stray object is an orphan, not damage.
    let stray = dir
        .path()
        .join("blobs/packs/ab")
        .join(format!("{}.pack", "ab".repeat(32)));
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, b"stray").unwrap();
    let orphaned = check(dir.path(), &database, false);
    assert!(orphaned.success);
    assert!(orphaned.stdout.contains("orphan:") && orphaned.stdout.contains(&"ab".repeat(32)));
    std::fs::remove_file(&stray).unwrap();

    // A flipped byte: only reading the data finds it.
    let all = packs(dir.path());
    let victim = all
        .iter()
        .max_by_key(|path| std::fs::metadata(path).unwrap().len())
        .unwrap()
        .clone();
    let original = std::fs::read(&victim).unwrap();
    let mut flipped = original.clone();
    flipped[1000] ^= 0x20;
    std::fs::write(&victim, &flipped).unwrap();
    assert!(
        check(dir.path(), &database, false).success,
        "presence alone cannot see a flip"
    );
    let corrupt = check(dir.path(), &database, true);
    assert!(!corrupt.success, "a flipped byte went unnoticed");
    let name = victim.file_stem().unwrap().to_string_lossy().into_owned();
    assert!(
        corrupt.stdout.contains("PROBLEM") && corrupt.stdout.contains(&name),
        "{}",
        corrupt.stdout
    );
    std::fs::write(&victim, &original).unwrap();

    // A missing pack: found without reading.
    std::fs::remove_file(&victim).unwrap();
    let missing = check(dir.path(), &database, false);
    assert!(!missing.success);
    assert!(
        missing.stdout.contains("missing") && missing.stdout.contains(&name),
        "{}",
        missing.stdout
    );
}

#[tokio::test]
async fn the_check_finds_what_is_wrong_on_sqlite() {
    the_check_finds_what_is_wrong(false).await;
}

#[tokio::test]
async fn the_check_finds_what_is_wrong_on_postgres() {
    the_check_finds_what_is_wrong(true).await;
}
