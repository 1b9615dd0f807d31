//! BackupService helpers: take a backup and restore through the streaming calls, and read a
//! project's whole visible state (live artifacts, versions, states, tags, aliases, trash) to
//! compare with a model or with itself before and after.

use super::binary::Authed;
use super::client::{Client, create_id, header, update, update_header};
use artifactd::proto::artifact_service_client::ArtifactServiceClient;
use artifactd::proto::backup_service_client::BackupServiceClient;
use artifactd::proto::retention_service_client::RetentionServiceClient;
use artifactd::proto::{
    self, CreateBackupRequest, DeleteArtifactRequest, DeleteVersionRequest, ListAliasesRequest,
    ListArtifactsRequest, ListTrashRequest, ListVersionsRequest, RestoreBackupRequest, RestoreResult,
    SetAliasRequest, TransitionVersionRequest, UpdateArtifactLabelsRequest, create_backup_response,
    restore_backup_response,
};
use std::collections::{BTreeMap, BTreeSet};
use tonic::Status;

pub type Backups = BackupServiceClient<Authed>;

/// Takes a backup, checking that progress streamed before the result.
pub async fn backup(
    client: &mut Backups,
    tenant: &str,
    project: &str,
    artifact_id: &str,
) -> Result<proto::Backup, Status> {
    let mut stream = client
        .create_backup(CreateBackupRequest {
            tenant: tenant.into(),
            project: project.into(),
            artifact_id: artifact_id.into(),
        })
        .await?
        .into_inner();
    let mut progress = 0;
    while let Some(message) = stream.message().await? {
        match message.message {
            Some(create_backup_response::Message::Progress(_)) => progress += 1,
            Some(create_backup_response::Message::Backup(backup)) => {
                assert!(progress > 0, "a backup streams its progress before it ends");
                return Ok(backup);
            }
            None => panic!("an empty backup message"),
        }
    }
    panic!("the backup stream ended without a result")
}

pub async fn restore(client: &mut Backups, request: RestoreBackupRequest) -> Result<RestoreResult, Status> {
    let mut stream = client.restore_backup(request).await?.into_inner();
    while let Some(message) = stream.message().await? {
        match message.message {
            Some(restore_backup_response::Message::Progress(_)) => {}
            Some(restore_backup_response::Message::Result(result)) => return Ok(result),
            None => panic!("an empty restore message"),
        }
    }
    panic!("the restore stream ended without a result")
}

pub fn from_backup(tenant: &str, project: &str, backup_id: &str) -> RestoreBackupRequest {
    RestoreBackupRequest {
        tenant: tenant.into(),
        project: project.into(),
        source: Some(proto::restore_backup_request::Source::BackupId(backup_id.into())),
        ..Default::default()
    }
}

pub fn as_of(tenant: &str, project: &str, at_micros: i64) -> RestoreBackupRequest {
    RestoreBackupRequest {
        tenant: tenant.into(),
        project: project.into(),
        source: Some(proto::restore_backup_request::Source::PointInTime(
            proto::PointInTime {
                artifact_id: String::new(),
                at: Some(prost_types::Timestamp {
                    seconds: at_micros.div_euclid(1_000_000),
                    nanos: (at_micros.rem_euclid(1_000_000) * 1000) as i32,
                }),
            },
        )),
        ..Default::default()
    }
}

pub fn into_project(mut request: RestoreBackupRequest, project: &str) -> RestoreBackupRequest {
    request.target = Some(proto::RestoreTarget {
        target: Some(proto::restore_target::Target::NewProject(project.into())),
    });
    request
}

/// One artifact as a caller sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub artifact_type: String,
    /// In the trash as a whole (nothing else is compared then).
    pub deleted: bool,
    pub tags: Vec<String>,
    /// Live versions and their states.
    pub versions: BTreeMap<String, i32>,
    /// Versions in the trash.
    pub trashed: BTreeSet<String>,
    /// Aliases set by callers.
    pub aliases: BTreeMap<String, String>,
}

/// A project's state by artifact name, and the ids by name.
pub async fn project_state(
    artifacts: &mut ArtifactServiceClient<Authed>,
    retention: &mut RetentionServiceClient<Authed>,
    tenant: &str,
    project: &str,
) -> (BTreeMap<String, Seen>, BTreeMap<String, String>) {
    let mut state: BTreeMap<String, Seen> = BTreeMap::new();
    let mut ids = BTreeMap::new();
    let mut token = String::new();
    loop {
        let page = artifacts
            .list_artifacts(ListArtifactsRequest {
                tenant: tenant.into(),
                project: project.into(),
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for artifact in page.artifacts {
            if artifact.link.is_some() {
                continue;
            }
            let mut seen = Seen {
                artifact_type: artifact.artifact_type.clone(),
                tags: artifact.tags.clone(),
                ..Seen::default()
            };
            let mut versions_token = String::new();
            loop {
                let versions = artifacts
                    .list_versions(ListVersionsRequest {
                        tenant: tenant.into(),
                        project: project.into(),
                        artifact_id: artifact.id.clone(),
                        page_size: 1000,
                        page_token: versions_token.clone(),
                        states: (1..=4).collect(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                for version in versions.versions {
                    seen.versions.insert(version.version, version.state);
                }
                if versions.next_page_token.is_empty() {
                    break;
                }
                versions_token = versions.next_page_token;
            }
            let aliases = artifacts
                .list_aliases(ListAliasesRequest {
                    tenant: tenant.into(),
                    project: project.into(),
                    artifact_id: artifact.id.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            seen.aliases = aliases
                .aliases
                .into_iter()
                .filter(|a| !a.maintained)
                .map(|a| (a.name, a.version))
                .collect();
            ids.insert(artifact.name.clone(), artifact.id.clone());
            state.insert(artifact.name, seen);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut token = String::new();
    loop {
        let page = retention
            .list_trash(ListTrashRequest {
                tenant: tenant.into(),
                project: project.into(),
                page_size: 1000,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        for item in page.items {
            let seen = state.entry(item.name.clone()).or_default();
            seen.artifact_type = item.artifact_type.clone();
            if item.version.is_empty() {
                seen.deleted = true;
                ids.insert(item.name.clone(), item.artifact_id.clone());
            } else {
                seen.trashed.insert(item.version);
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    // An artifact in the trash shows nothing else.
    for seen in state.values_mut() {
        if seen.deleted {
            *seen = Seen {
                artifact_type: seen.artifact_type.clone(),
                deleted: true,
                ..Seen::default()
            };
        }
    }
    (state, ids)
}

/// Loads the release series (24 versions of one artifact in `releases`, with an approved
/// version, an archived one, an alias and one in the trash) and the docs corpus (one
/// artifact per file in `docs`, some relabelled, one in the trash) into `tenant`; the
/// number of docs.
pub async fn load_corpus(client: &mut Client, tenant: &str) -> usize {
    #[allow(non_snake_case)]
    let T = tenant;
    // The release series: 24 versions of one artifact.
    let releases_dir = super::corpus_dir().join("bmad-releases");
    let mut releases: Vec<(semver::Version, std::path::PathBuf)> = std::fs::read_dir(&releases_dir)
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version = name
                .strip_prefix("bmad-method-docs-")?
                .strip_suffix(".tar")?
                .to_owned();
            Some((semver::Version::parse(&version).ok()?, entry.path()))
        })
        .collect();
    releases.sort();
    assert_eq!(releases.len(), 24);
    let mut first = header(T, "releases", "release-bundle", "bmad-method-docs.tar");
    first.initial_version = releases[0].0.to_string();
    let id = create_id(client, first, &std::fs::read(&releases[0].1).unwrap()).await;
    let mut previous = releases[0].0.to_string();
    for (version, path) in &releases[1..] {
        let mut next = update_header(T, "releases", &id);
        next.next_version = Some(proto::update_artifact_header::NextVersion::ExplicitVersion(
            version.to_string(),
        ));
        next.expected_current_version = previous.clone();
        update(client, next, &std::fs::read(path).unwrap()).await.unwrap();
        previous = version.to_string();
    }
    for (version, to) in [
        ("6.1.0", proto::LifecycleState::Review),
        ("6.1.0", proto::LifecycleState::Approved),
        ("6.0.0-Beta.4", proto::LifecycleState::Archived),
    ] {
        client
            .transition_version(TransitionVersionRequest {
                tenant: T.into(),
                project: "releases".into(),
                artifact_id: id.clone(),
                version: version.into(),
                target_state: to as i32,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    client
        .set_alias(SetAliasRequest {
            tenant: T.into(),
            project: "releases".into(),
            artifact_id: id.clone(),
            alias: "stable".into(),
            version: "6.1.0".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .delete_version(DeleteVersionRequest {
            tenant: T.into(),
            project: "releases".into(),
            artifact_id: id.clone(),
            version: "6.0.2".into(),
        })
        .await
        .unwrap();

    // The docs corpus: one artifact per file.
    let docs = super::search_eval::corpus(&super::corpus_dir().join("bmad-docs"));
    let mut ids = Vec::new();
    for (path, text) in &docs {
        let mut h = header(T, "docs", "doc", &path.replace('/', " » "));
        h.tags = vec![
            path.split('/')
                .next()
                .unwrap()
                .trim_end_matches(".md")
                .to_lowercase()
                .replace(['.', '_'], "-"),
        ];
        ids.push(create_id(client, h, text.as_bytes()).await);
    }
    for id in ids.iter().step_by(37) {
        client
            .update_artifact_labels(UpdateArtifactLabelsRequest {
                tenant: T.into(),
                project: "docs".into(),
                artifact_id: id.clone(),
                labels: Some(proto::Labels {
                    tags: vec!["curated".into()],
                    categories: vec!["guides".into()],
                }),
            })
            .await
            .unwrap();
    }
    client
        .delete_artifact(DeleteArtifactRequest {
            tenant: T.into(),
            project: "docs".into(),
            artifact_id: ids[5].clone(),
        })
        .await
        .unwrap();
    docs.len()
}

/// The environment of an installation on Postgres with failover: `primary` (in-process S3)
/// and `fallback` (moto), with encryption at rest when a master key is given.
pub fn environment(
    primary: &super::s3::S3TestServer,
    fallback: &super::moto::MotoServer,
    database: &super::postgres::TestDatabase,
    master_key: Option<&str>,
) -> Vec<(String, String)> {
    let mut env = primary.env("primary");
    env.extend(fallback.fallback_env("fallback"));
    env.push(("DATABASE_URL".into(), database.url.clone()));
    if let Some(key) = master_key {
        env.push(("ARTIFACTD_ENCRYPTION__MASTER_KEY".into(), key.into()));
    }
    env
}

/// Runs `artifactd <args>` as a command with the installation's environment; whether it
/// succeeded, and its output.
pub fn run(args: &[&str], env: &[(String, String)], data_dir: &std::path::Path) -> (bool, String) {
    let output = super::binary::command()
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("ARTIFACTD_DATA_DIR", data_dir)
        .env("ARTIFACTD_LOG__FILTER", "warn")
        .output()
        .unwrap_or_else(|e| panic!("running artifactd {args:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}
