//! Shared test harness: real servers (in-process S3, moto, Postgres, the artifactd binary)
//! and small client helpers. A missing service fails the test with a message saying how to
//! provide it; nothing is skipped.
#![allow(dead_code)]

pub mod backup;
pub mod binary;
pub mod client;
pub mod failover;
pub mod http;
pub mod moto;
pub mod postgres;
pub mod proxy;
pub mod s3;
pub mod search_eval;

use std::path::PathBuf;

/// Every version of every bmad-history document, oldest first, by document name.
pub fn history_documents() -> Vec<(String, Vec<Vec<u8>>)> {
    let root = corpus_dir().join("bmad-history");
    let mut documents: Vec<(String, Vec<Vec<u8>>)> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .filter(|entry| entry.path().is_dir())
        .map(|entry| {
            let mut files: Vec<PathBuf> = std::fs::read_dir(entry.path())
                .unwrap()
                .flatten()
                .map(|file| file.path())
                .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
                .collect();
            files.sort();
            let versions = files.iter().map(|path| std::fs::read(path).unwrap()).collect();
            (entry.file_name().to_string_lossy().into_owned(), versions)
        })
        .collect();
    documents.sort();
    documents
}

/// The pack files of the filesystem store under `data_dir`, with their sizes, by path.
pub fn pack_files(data_dir: &std::path::Path) -> Vec<(PathBuf, u64)> {
    fn walk(dir: &std::path::Path, out: &mut Vec<(PathBuf, u64)>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|ext| ext == "pack") {
                out.push((path, entry.metadata().map(|m| m.len()).unwrap_or(0)));
            }
        }
    }
    let mut out = Vec::new();
    walk(&data_dir.join("blobs/packs"), &mut out);
    out.sort();
    out
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shared corpus of real BMAD documents (`../shared/corpus` beside the repository,
/// or `ARTIFACTD_CORPUS`).
pub fn corpus_dir() -> PathBuf {
    let dir = std::env::var_os("ARTIFACTD_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/corpus"));
    assert!(
        dir.join("bmad-releases").is_dir(),
        "the BMAD corpus is missing at {}: place shared/corpus beside the repository or set ARTIFACTD_CORPUS",
        dir.display()
    );
    dir
}

/// Tools the test command installs into the project's virtual environment.
pub fn venv_tool(name: &str, override_variable: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(override_variable) {
        return PathBuf::from(path);
    }
    let path = repo_root().join(".venv-test/bin").join(name);
    assert!(
        path.exists(),
        "{name} is not installed at {}: run `scripts/test` once (it creates .venv-test with moto and grpcurl), or set {override_variable}",
        path.display()
    );
    path
}

/// Deterministic incompressible bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A free TCP port on loopback (bound and released; fine for tests on one machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.1 GET (the metrics endpoint), returning the whole response.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "GET {path}: {response}");
    response
}

/// The value of an unlabelled counter or gauge on a server's metrics page (0 when absent).
pub async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    http_get(addr, "/metrics")
        .await
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A server's chunk caches as `GetServerStatus` reports them.
pub async fn cache_status(server: &binary::ServerProcess) -> artifactd::proto::CacheStatus {
    artifactd::proto::admin_service_client::AdminServiceClient::new(server.channel().await)
        .get_server_status(artifactd::proto::GetServerStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .cache
        .expect("the status reports the caches")
}

/// `rounds` garbage collections, each a little over a second after the last (tests run with
/// a one-second grace period), each without problems; the packs they compacted and reclaimed.
pub async fn collect_garbage(server: &binary::ServerProcess, rounds: usize) -> (u64, u64) {
    let mut admin = artifactd::proto::admin_service_client::AdminServiceClient::new(server.channel().await);
    let (mut compacted, mut reclaimed) = (0, 0);
    for _ in 0..rounds {
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let report = admin
            .collect_garbage(artifactd::proto::CollectGarbageRequest { dry_run: false })
            .await
            .unwrap()
            .into_inner()
            .report
            .unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        compacted += report.packs_compacted;
        reclaimed += report.packs_reclaimed;
    }
    (compacted, reclaimed)
}

/// Deletes an artifact and purges it from the trash at once.
pub async fn delete_and_purge(
    server: &binary::ServerProcess,
    tenant: &str,
    project: &str,
    artifact_id: &str,
) {
    server
        .client()
        .await
        .delete_artifact(artifactd::proto::DeleteArtifactRequest {
            tenant: tenant.into(),
            project: project.into(),
            artifact_id: artifact_id.into(),
        })
        .await
        .unwrap();
    artifactd::proto::retention_service_client::RetentionServiceClient::new(server.channel().await)
        .purge_trash(artifactd::proto::PurgeTrashRequest {
            tenant: tenant.into(),
            project: project.into(),
            artifact_id: artifact_id.into(),
            version: String::new(),
        })
        .await
        .unwrap();
}

/// The consistency check, reading every byte, finds nothing wrong (`what`: when).
pub async fn check_clean(server: &binary::ServerProcess, what: &str) {
    let checked = artifactd::proto::admin_service_client::AdminServiceClient::new(server.channel().await)
        .check_consistency(artifactd::proto::CheckConsistencyRequest { read_data: true })
        .await
        .unwrap()
        .into_inner();
    assert!(checked.problems.is_empty(), "{what}: {:?}", checked.problems);
}
