//! The 24 real BMAD release tars stored as successive versions of one artifact, through the
//! binary over gRPC: every version reads back byte-identical, and deduplication plus
//! compression keep what reaches the store below 20% of the logical size.

mod common;

use artifactd::storage::BlobStore;
use common::binary::{ServerOptions, ServerProcess};
use common::client::{create, download, download_request, header, update, update_header};
use common::postgres::TestDatabase;
use common::s3::S3TestServer;

/// The release tars ordered by the semantic version in their names.
pub fn release_series() -> Vec<(semver::Version, Vec<u8>)> {
    let dir = common::corpus_dir().join("bmad-releases");
    let mut releases: Vec<(semver::Version, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("bmad-method-docs-")?.strip_suffix(".tar")?;
            Some((
                semver::Version::parse(version).unwrap(),
                std::fs::read(entry.path()).unwrap(),
            ))
        })
        .collect();
    releases.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(releases.len(), 24, "the corpus holds 24 releases");
    releases
}

/// Uploads the series, reads it back, and returns the logical size.
async fn store_and_verify(server: &ServerProcess) -> u64 {
    let releases = release_series();
    let mut client = server.client().await;
    let (tenant, project) = ("bmad", "method");
    let (first_version, first_content) = &releases[0];
    let mut first = header(tenant, project, "release-bundle", "bmad-method-docs.tar");
    first.initial_version = first_version.to_string();
    first.expected_size = Some(first_content.len() as u64);
    let created = create(&mut client, first, first_content).await.unwrap();
    let id = created.artifact.unwrap().id;
    let mut previous = first_version.to_string();
    let mut logical = first_content.len() as u64;
    for (version, content) in &releases[1..] {
        let mut next = update_header(tenant, project, &id);
        next.next_version =
            Some(artifactd::proto::update_artifact_header::NextVersion::ExplicitVersion(version.to_string()));
        next.expected_current_version = previous.clone();
        next.expected_blake3 = blake3::hash(content).to_hex().to_string();
        let updated = update(&mut client, next, content).await.unwrap();
        let stored = updated.version.unwrap();
        assert_eq!(stored.version, version.to_string());
        previous = version.to_string();
        logical += content.len() as u64;
    }
    let artifact = client
        .get_artifact(artifactd::proto::GetArtifactRequest {
            tenant: tenant.into(),
            project: project.into(),
            selector: Some(artifactd::proto::get_artifact_request::Selector::ArtifactId(
                id.clone(),
            )),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .artifact
        .unwrap();
    assert_eq!(artifact.version_count, 24);
    assert_eq!(artifact.latest_version, "6.11.0");
    for (version, content) in &releases {
        let (head, bytes) = download(
            &mut client,
            download_request(tenant, project, &id, &version.to_string()),
        )
        .await
        .unwrap();
        assert_eq!(head.blake3, blake3::hash(content).to_hex().to_string());
        assert!(
            bytes == *content,
            "version {version} does not read back byte-identical"
        );
    }
    logical
}

fn check_ratio(label: &str, logical: u64, stored: u64) {
    let ratio = stored as f64 / logical as f64;
    println!("{label}: logical {logical} bytes, written to the store {stored} bytes, ratio {ratio:.4}");
    assert!(
        ratio < 0.20,
        "{label}: the store holds {:.1}% of the logical size",
        ratio * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_series_on_the_embedded_default() {
    let server = ServerProcess::start();
    let logical = store_and_verify(&server).await;
    check_ratio("sqlite+fs", logical, server.fs_store_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_series_on_postgres_and_s3() {
    let s3 = S3TestServer::start().await;
    let database = TestDatabase::create().await;
    let server = ServerProcess::start_with(
        ServerOptions::default()
            .envs(s3.env("releases"))
            .env("DATABASE_URL", database.url.clone()),
    );
    let logical = store_and_verify(&server).await;
    let stored: u64 = s3
        .store("releases")
        .await
        .list("")
        .await
        .unwrap()
        .iter()
        .map(|o| o.size)
        .sum();
    check_ratio("postgres+s3", logical, stored);
    drop(server);
    database.drop_database().await;
}
