//! BackupService through the binary on both catalogs: backups restore what they hold into
//! the same place, a new project or a new artifact; point-in-time restores match a model of
//! a randomized history; backups taken during uploads are consistent; collection keeps
//! what backups need; another installation on the same stores restores a backup; bad input
//! is refused and writes nothing.

mod common;

use artifactd::proto::retention_service_client::RetentionServiceClient;
use artifactd::proto::{
    self, DeleteArtifactRequest, DeleteBackupRequest, DeleteVersionRequest, GetBackupRequest,
    ListBackupsRequest, ListTrashRequest, PurgeTrashRequest, RestoreBackupRequest, SetAliasRequest,
    SetBackupScheduleRequest, TransitionVersionRequest, UndeleteArtifactRequest, UndeleteVersionRequest,
    UpdateArtifactLabelsRequest,
};
use common::backup::{Backups, Seen, as_of, backup, from_backup, into_project, project_state, restore};
use common::binary::{Authed, ServerOptions, ServerProcess};
use common::client::{
    Client, assert_status, create, create_id, download, download_request, header, update, update_header,
};
use common::postgres::TestDatabase;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tonic::Code;

const T: &str = "acme";

type Retention = RetentionServiceClient<Authed>;

async fn start(postgres: bool, extra: &[(&str, &str)]) -> (ServerProcess, Option<TestDatabase>) {
    common::binary::start_on_catalog_with(postgres, extra).await
}

struct Api {
    artifacts: Client,
    backups: Backups,
    retention: Retention,
}

async fn api(server: &ServerProcess) -> Api {
    Api {
        artifacts: server.client().await,
        backups: Backups::new(server.channel().await),
        retention: Retention::new(server.channel().await),
    }
}

async fn new_version(client: &mut Client, project: &str, id: &str, content: &[u8]) -> String {
    let mut next = update_header(T, project, id);
    next.next_version = Some(proto::update_artifact_header::NextVersion::Bump(
        proto::BumpKind::Patch as i32,
    ));
    update(client, next, content)
        .await
        .expect("adding a version")
        .version
        .expect("version")
        .version
}

async fn fetch(client: &mut Client, project: &str, id: &str, version: &str) -> Vec<u8> {
    download(client, download_request(T, project, id, version))
        .await
        .unwrap_or_else(|e| panic!("downloading {project}/{id}@{version}: {e}"))
        .1
}

async fn transition(client: &mut Client, project: &str, id: &str, version: &str, to: proto::LifecycleState) {
    client
        .transition_version(TransitionVersionRequest {
            tenant: T.into(),
            project: project.into(),
            artifact_id: id.into(),
            version: version.into(),
            target_state: to as i32,
            ..Default::default()
        })
        .await
        .unwrap();
}

fn doc(seed: u64, len: usize) -> Vec<u8> {
    common::noise(len, seed)
}

fn same_place() -> Option<proto::RestoreTarget> {
    Some(proto::RestoreTarget {
        target: Some(proto::restore_target::Target::SamePlace(true)),
    })
}

/// Backups restore what they hold: into the same place (with overwrite, and not without),
/// into a new project (new ids, dependencies following), as a new artifact.
async fn round_trip(postgres: bool) {
    let (server, _db) = start(postgres, &[]).await;
    let mut api = api(&server).await;
    let p = "docs";
    let prd_v1 = doc(1, 70_000);
    let prd_v2 = doc(2, 90_000);
    let mut prd_header = header(T, p, "prd", "checkout PRD");
    prd_header.tags = vec!["checkout".into()];
    let prd = create_id(&mut api.artifacts, prd_header, &prd_v1).await;
    let v2 = new_version(&mut api.artifacts, p, &prd, &prd_v2).await;
    transition(
        &mut api.artifacts,
        p,
        &prd,
        "1.0.0",
        proto::LifecycleState::Review,
    )
    .await;
    transition(
        &mut api.artifacts,
        p,
        &prd,
        "1.0.0",
        proto::LifecycleState::Approved,
    )
    .await;
    api.artifacts
        .set_alias(SetAliasRequest {
            tenant: T.into(),
            project: p.into(),
            artifact_id: prd.clone(),
            alias: "stable".into(),
            version: "1.0.0".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut arch_header = header(T, p, "architecture", "checkout architecture");
    arch_header.dependencies = vec![proto::DependencySpec {
        target: Some(proto::dependency_spec::Target::ArtifactId(prd.clone())),
        requirement: "^1".into(),
        kind: "derived-from".into(),
    }];
    let arch_v1 = doc(3, 20_000);
    let arch = create_id(&mut api.artifacts, arch_header, &arch_v1).await;

    let taken = backup(&mut api.backups, T, p, "").await.unwrap();
    assert_eq!(taken.kind, proto::BackupKind::Project as i32);
    assert_eq!((taken.artifacts, taken.versions), (2, 3));
    assert_eq!(
        taken.logical_bytes,
        (prd_v1.len() + prd_v2.len() + arch_v1.len()) as u64
    );
    assert_eq!(taken.objects.len(), 1);
    assert_eq!(taken.objects[0].verified_on, vec!["store".to_owned()]);
    assert!(taken.objects[0].key.starts_with(&format!("backups/{T}/{p}/")));
    let listed = api
        .backups
        .list_backups(ListBackupsRequest {
            tenant: T.into(),
            project: p.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.backups, vec![taken.clone()]);
    let checked = api
        .backups
        .get_backup(GetBackupRequest {
            tenant: T.into(),
            project: p.into(),
            backup_id: taken.id.clone(),
            verify: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(checked.problems.is_empty(), "{:?}", checked.problems);
    let (before, _) = project_state(&mut api.artifacts, &mut api.retention, T, p).await;

    // Changes after the backup.
    api.artifacts
        .update_artifact_labels(UpdateArtifactLabelsRequest {
            tenant: T.into(),
            project: p.into(),
            artifact_id: prd.clone(),
            labels: Some(proto::Labels {
                tags: vec!["changed".into()],
                categories: vec![],
            }),
        })
        .await
        .unwrap();
    let v3 = new_version(&mut api.artifacts, p, &prd, &doc(4, 10_000)).await;
    api.artifacts
        .delete_version(DeleteVersionRequest {
            tenant: T.into(),
            project: p.into(),
            artifact_id: prd.clone(),
            version: v2.clone(),
        })
        .await
        .unwrap();
    let (changed, _) = project_state(&mut api.artifacts, &mut api.retention, T, p).await;
    assert_ne!(changed, before);

    // A dry run lists the changes and changes nothing; without overwrite nothing happens.
    let mut dry = from_backup(T, p, &taken.id);
    dry.dry_run = true;
    let planned = restore(&mut api.backups, dry).await.unwrap();
    assert!(planned.dry_run);
    let kinds: BTreeSet<i32> = planned.changes.iter().map(|c| c.kind).collect();
    for kind in [
        proto::RestoreChangeKind::SetFields,
        proto::RestoreChangeKind::UntrashVersion,
        proto::RestoreChangeKind::TrashVersion,
    ] {
        assert!(
            kinds.contains(&(kind as i32)),
            "{kind:?} in {:?}",
            planned.changes
        );
    }
    assert!(
        planned
            .changes
            .iter()
            .any(|c| c.version == v3 && c.kind == proto::RestoreChangeKind::TrashVersion as i32)
    );
    assert_eq!(
        project_state(&mut api.artifacts, &mut api.retention, T, p)
            .await
            .0,
        changed
    );
    assert_status(
        restore(&mut api.backups, from_backup(T, p, &taken.id)).await,
        Code::AlreadyExists,
        &["overwrite"],
    );
    assert_eq!(
        project_state(&mut api.artifacts, &mut api.retention, T, p)
            .await
            .0,
        changed
    );

    // With overwrite: the backup's state, the newer version kept in the trash.
    let mut apply = from_backup(T, p, &taken.id);
    apply.overwrite = true;
    apply.target = same_place();
    let applied = restore(&mut api.backups, apply).await.unwrap();
    assert!(!applied.dry_run);
    let (after, ids) = project_state(&mut api.artifacts, &mut api.retention, T, p).await;
    let mut expected = before.clone();
    expected
        .get_mut("checkout PRD")
        .unwrap()
        .trashed
        .insert(v3.clone());
    assert_eq!(after, expected);
    assert_eq!(ids["checkout PRD"], prd);
    assert_eq!(fetch(&mut api.artifacts, p, &prd, &v2).await, prd_v2);

    // Into a new project: new ids, the dependency follows its target, bytes identical.
    let copied = restore(
        &mut api.backups,
        into_project(from_backup(T, p, &taken.id), "docs-copy"),
    )
    .await
    .unwrap();
    assert_eq!(copied.new_ids.len(), 2);
    let (copy_state, copy_ids) = project_state(&mut api.artifacts, &mut api.retention, T, "docs-copy").await;
    assert_eq!(copy_state, before);
    assert_ne!(copy_ids["checkout PRD"], prd);
    assert_eq!(copied.new_ids[&prd], copy_ids["checkout PRD"]);
    assert_eq!(
        fetch(
            &mut api.artifacts,
            "docs-copy",
            &copy_ids["checkout PRD"],
            "1.0.0"
        )
        .await,
        prd_v1
    );
    assert_eq!(
        fetch(
            &mut api.artifacts,
            "docs-copy",
            &copy_ids["checkout architecture"],
            "1.0.0"
        )
        .await,
        arch_v1
    );
    let got = api
        .artifacts
        .get_artifact(proto::GetArtifactRequest {
            tenant: T.into(),
            project: "docs-copy".into(),
            selector: Some(proto::get_artifact_request::Selector::ArtifactId(
                copy_ids["checkout architecture"].clone(),
            )),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.dependencies.len(), 1);
    assert_eq!(got.dependencies[0].artifact_id, copy_ids["checkout PRD"]);
    // Again into the same project: it holds that state already, so there is nothing to do.
    let again = restore(
        &mut api.backups,
        into_project(from_backup(T, p, &taken.id), "docs-copy"),
    )
    .await
    .unwrap();
    assert!(again.changes.is_empty(), "{:?}", again.changes);

    // One artifact as a new artifact beside the original.
    let mut single = from_backup(T, p, &taken.id);
    single.artifact_id = prd.clone();
    single.target = Some(proto::RestoreTarget {
        target: Some(proto::restore_target::Target::NewArtifact(proto::NewArtifact {
            project: String::new(),
            name: "checkout PRD (as backed up)".into(),
        })),
    });
    let one = restore(&mut api.backups, single).await.unwrap();
    let new_id = one.new_ids[&prd].clone();
    assert_eq!(fetch(&mut api.artifacts, p, &new_id, &v2).await, prd_v2);
    let _ = arch;

    // The backup and each restored artifact are in the audit trail.
    let mut audit = artifactd::proto::audit_service_client::AuditServiceClient::new(server.channel().await);
    let trail = |action: &str, artifact_id: &str| proto::GetAuditTrailRequest {
        tenant: T.into(),
        action: action.into(),
        artifact_id: artifact_id.into(),
        page_size: 100,
        ..Default::default()
    };
    let backups_audited = audit
        .get_audit_trail(trail("artifactd.v1.BackupService/CreateBackup", ""))
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(backups_audited.len(), 1, "{backups_audited:?}");
    assert_eq!(backups_audited[0].project, p);
    let recovered = audit
        .get_audit_trail(trail("artifact.recovered", &prd))
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(
        recovered.len(),
        1,
        "the in-place restore of the PRD: {recovered:?}"
    );

    // Deleting the backup removes its object.
    api.backups
        .delete_backup(DeleteBackupRequest {
            tenant: T.into(),
            project: p.into(),
            backup_id: taken.id.clone(),
        })
        .await
        .unwrap();
    assert_status(
        api.backups
            .get_backup(GetBackupRequest {
                tenant: T.into(),
                project: p.into(),
                backup_id: taken.id.clone(),
                verify: false,
            })
            .await,
        Code::NotFound,
        &[&taken.id],
    );
    assert_status(
        restore(
            &mut api.backups,
            into_project(from_backup(T, p, &taken.id), "docs-gone"),
        )
        .await,
        Code::NotFound,
        &["nor on the store"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn backups_restore_into_the_same_place_a_new_project_or_a_new_artifact_sqlite() {
    round_trip(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn backups_restore_into_the_same_place_a_new_project_or_a_new_artifact_postgres() {
    round_trip(true).await;
}

/// Every file under `dir` whose name ends with `suffix`.
fn files_ending(dir: &std::path::Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_restores_are_refused_and_write_nothing() {
    let (server, _db) = start(false, &[]).await;
    let mut api = api(&server).await;
    let p = "bad";
    let a = create_id(&mut api.artifacts, header(T, p, "prd", "one"), &doc(10, 30_000)).await;
    create_id(&mut api.artifacts, header(T, p, "prd", "two"), &doc(11, 30_000)).await;
    let taken = backup(&mut api.backups, T, p, "").await.unwrap();

    // A backup that does not exist, or an id that is not one.
    let missing = uuid::Uuid::now_v7().to_string();
    assert_status(
        restore(&mut api.backups, from_backup(T, p, &missing)).await,
        Code::NotFound,
        &[&missing],
    );
    assert_status(
        restore(&mut api.backups, from_backup(T, p, "not-a-backup")).await,
        Code::InvalidArgument,
        &["backup_id"],
    );
    assert_status(
        restore(
            &mut api.backups,
            RestoreBackupRequest {
                tenant: T.into(),
                project: p.into(),
                ..Default::default()
            },
        )
        .await,
        Code::InvalidArgument,
        &["source"],
    );
    // Two artifacts cannot become one new artifact.
    let mut two_into_one = from_backup(T, p, &taken.id);
    two_into_one.target = Some(proto::RestoreTarget {
        target: Some(proto::restore_target::Target::NewArtifact(proto::NewArtifact {
            project: String::new(),
            name: "merged".into(),
        })),
    });
    assert_status(
        restore(&mut api.backups, two_into_one).await,
        Code::InvalidArgument,
        &["target.new_artifact"],
    );
    // Outside the recovery window: before the journal began, and in the future.
    let now = artifactd::domain::now_micros();
    assert_status(
        restore(
            &mut api.backups,
            into_project(as_of(T, p, now - 400 * 24 * 3600 * 1_000_000), "old"),
        )
        .await,
        Code::OutOfRange,
        &["recovery window"],
    );
    assert_status(
        restore(
            &mut api.backups,
            into_project(as_of(T, p, now + 3600 * 1_000_000), "future"),
        )
        .await,
        Code::OutOfRange,
        &["recovery window"],
    );
    // Bad schedules.
    for (interval, keep, field) in [(5, 1, "interval_seconds"), (3600, 0, "keep")] {
        assert_status(
            api.backups
                .set_backup_schedule(SetBackupScheduleRequest {
                    tenant: T.into(),
                    project: p.into(),
                    interval_seconds: interval,
                    keep,
                })
                .await,
            Code::InvalidArgument,
            &[field],
        );
    }

    // A flipped byte in the object: DATA_LOSS, found by verification and by restore, and
    // nothing is written.
    let objects = files_ending(&server.data_dir, &format!("{}.artbkp", taken.id));
    assert_eq!(objects.len(), 1, "the backup object is on the filesystem store");
    let mut bytes = std::fs::read(&objects[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&objects[0], &bytes).unwrap();
    let verified = api
        .backups
        .get_backup(GetBackupRequest {
            tenant: T.into(),
            project: p.into(),
            backup_id: taken.id.clone(),
            verify: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        verified
            .problems
            .iter()
            .any(|problem| problem.contains("hash") || problem.contains("not intact")),
        "{:?}",
        verified.problems
    );
    assert_status(
        restore(
            &mut api.backups,
            into_project(from_backup(T, p, &taken.id), "from-corrupt"),
        )
        .await,
        Code::DataLoss,
        &["not intact"],
    );
    let (nothing, _) = project_state(&mut api.artifacts, &mut api.retention, T, "from-corrupt").await;
    assert!(nothing.is_empty(), "{nothing:?}");

    // An existing target without overwrite: refused before anything is written, even when
    // only one of the artifacts differs.
    bytes[middle] ^= 0x20;
    std::fs::write(&objects[0], &bytes).unwrap();
    api.artifacts
        .delete_artifact(DeleteArtifactRequest {
            tenant: T.into(),
            project: p.into(),
            artifact_id: a.clone(),
        })
        .await
        .unwrap();
    let (deleted_state, _) = project_state(&mut api.artifacts, &mut api.retention, T, p).await;
    assert_status(
        restore(&mut api.backups, from_backup(T, p, &taken.id)).await,
        Code::AlreadyExists,
        &["overwrite"],
    );
    assert_eq!(
        project_state(&mut api.artifacts, &mut api.retention, T, p)
            .await
            .0,
        deleted_state
    );
    // Into a project where one of the artifacts exists and differs: refused before the
    // other one is created.
    let two = {
        let (_, ids) = project_state(&mut api.artifacts, &mut api.retention, T, p).await;
        ids["two"].clone()
    };
    let mut only_two = into_project(from_backup(T, p, &taken.id), "partial");
    only_two.artifact_id = two.clone();
    let copied = restore(&mut api.backups, only_two).await.unwrap();
    api.artifacts
        .update_artifact_labels(UpdateArtifactLabelsRequest {
            tenant: T.into(),
            project: "partial".into(),
            artifact_id: copied.new_ids[&two].clone(),
            labels: Some(proto::Labels {
                tags: vec!["changed".into()],
                categories: vec![],
            }),
        })
        .await
        .unwrap();
    let (partial_before, _) = project_state(&mut api.artifacts, &mut api.retention, T, "partial").await;
    assert_status(
        restore(
            &mut api.backups,
            into_project(from_backup(T, p, &taken.id), "partial"),
        )
        .await,
        Code::AlreadyExists,
        &["\"two\"", "overwrite", "nothing was restored"],
    );
    assert_eq!(
        project_state(&mut api.artifacts, &mut api.retention, T, "partial")
            .await
            .0,
        partial_before,
        "\"one\" was not created"
    );
    // An artifact of the same name with other content under the same version: refused even
    // with overwrite.
    create_id(
        &mut api.artifacts,
        header(T, "mixed", "prd", "one"),
        b"other content",
    )
    .await;
    let mut mixed = into_project(from_backup(T, p, &taken.id), "mixed");
    mixed.overwrite = true;
    assert_status(
        restore(&mut api.backups, mixed).await,
        Code::FailedPrecondition,
        &["other content", "1.0.0"],
    );
    // Restoring a project needs ManageProject there.
    let reader = artifactd::proto::access_service_client::AccessServiceClient::new(server.channel().await)
        .create_api_key(proto::CreateApiKeyRequest {
            tenant: T.into(),
            projects: vec![p.into()],
            role: proto::Role::Viewer as i32,
            name: "reader".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let mut as_reader = Backups::new(server.channel_as(&reader).await);
    assert_status(
        restore(
            &mut as_reader,
            into_project(from_backup(T, p, &taken.id), "elsewhere"),
        )
        .await,
        Code::PermissionDenied,
        &[],
    );
}

// ---- point in time ---------------------------------------------------------------------------

/// The model of one project: artifacts by name.
type Model = BTreeMap<String, Seen>;

fn live_names(model: &Model) -> Vec<String> {
    model
        .iter()
        .filter(|(_, s)| !s.deleted)
        .map(|(n, _)| n.clone())
        .collect()
}

const STATES: [proto::LifecycleState; 4] = [
    proto::LifecycleState::Draft,
    proto::LifecycleState::Review,
    proto::LifecycleState::Approved,
    proto::LifecycleState::Archived,
];

/// A randomized history of creates, new versions, label changes, transitions, deletes and
/// restores of versions and artifacts, and alias moves; the model follows every change the
/// server accepted. Restoring as of 20 random moments between changes, into new projects,
/// gives the model's state at each; restoring the project itself to one of them in place
/// gives its live state, with what came later in the trash.
async fn point_in_time(postgres: bool, seed: u64) {
    let (server, _db) = start(postgres, &[]).await;
    let mut api = api(&server).await;
    let p = "history";
    let mut rng = StdRng::seed_from_u64(seed);
    let names = ["brief", "prd", "architecture", "epic", "story"];
    let mut model: Model = BTreeMap::new();
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    let mut next_patch: BTreeMap<String, u32> = BTreeMap::new();
    // (moment, the model as it was then)
    let mut moments: Vec<(i64, Model)> = Vec::new();
    for step in 0..140u64 {
        let before = artifactd::domain::now_micros();
        let live = live_names(&model);
        let pick = |rng: &mut StdRng, from: &[String]| from[rng.random_range(0..from.len())].clone();
        match rng.random_range(0..10) {
            0 | 1 if live.len() < names.len() => {
                let name = names
                    .iter()
                    .find(|n| !model.contains_key(**n))
                    .map(|n| n.to_string());
                if let Some(name) = name {
                    let mut h = header(T, p, "doc", &name);
                    h.tags = vec![format!("t{}", rng.random_range(0..3))];
                    let id = create_id(&mut api.artifacts, h.clone(), &doc(step, 2000)).await;
                    ids.insert(name.clone(), id);
                    next_patch.insert(name.clone(), 1);
                    model.insert(
                        name,
                        Seen {
                            artifact_type: "doc".into(),
                            tags: h.tags,
                            versions: [("1.0.0".to_owned(), proto::LifecycleState::Draft as i32)].into(),
                            ..Seen::default()
                        },
                    );
                }
            }
            2 | 3 if !live.is_empty() => {
                let name = pick(&mut rng, &live);
                let patch = next_patch[&name];
                let version = new_version(&mut api.artifacts, p, &ids[&name], &doc(1000 + step, 2000)).await;
                assert_eq!(version, format!("1.0.{patch}"));
                next_patch.insert(name.clone(), patch + 1);
                model
                    .get_mut(&name)
                    .unwrap()
                    .versions
                    .insert(version, proto::LifecycleState::Draft as i32);
            }
            4 if !live.is_empty() => {
                let name = pick(&mut rng, &live);
                let tags = vec![format!("t{}", rng.random_range(0..5))];
                api.artifacts
                    .update_artifact_labels(UpdateArtifactLabelsRequest {
                        tenant: T.into(),
                        project: p.into(),
                        artifact_id: ids[&name].clone(),
                        labels: Some(proto::Labels {
                            tags: tags.clone(),
                            categories: vec![],
                        }),
                    })
                    .await
                    .unwrap();
                model.get_mut(&name).unwrap().tags = tags;
            }
            5 if !live.is_empty() => {
                let name = pick(&mut rng, &live);
                let versions: Vec<String> = model[&name].versions.keys().cloned().collect();
                let version = pick(&mut rng, &versions);
                let to = STATES[rng.random_range(0..4)];
                let done = api
                    .artifacts
                    .transition_version(TransitionVersionRequest {
                        tenant: T.into(),
                        project: p.into(),
                        artifact_id: ids[&name].clone(),
                        version: version.clone(),
                        target_state: to as i32,
                        ..Default::default()
                    })
                    .await;
                if done.is_ok() {
                    model.get_mut(&name).unwrap().versions.insert(version, to as i32);
                }
            }
            6 if !live.is_empty() => {
                let name = pick(&mut rng, &live);
                let versions: Vec<String> = model[&name].versions.keys().cloned().collect();
                let version = pick(&mut rng, &versions);
                let done = api
                    .artifacts
                    .delete_version(DeleteVersionRequest {
                        tenant: T.into(),
                        project: p.into(),
                        artifact_id: ids[&name].clone(),
                        version: version.clone(),
                    })
                    .await;
                if done.is_ok() {
                    let seen = model.get_mut(&name).unwrap();
                    seen.versions.remove(&version);
                    seen.trashed.insert(version);
                }
            }
            7 => {
                let with_trash: Vec<String> = model
                    .iter()
                    .filter(|(_, s)| !s.deleted && !s.trashed.is_empty())
                    .map(|(n, _)| n.clone())
                    .collect();
                if with_trash.is_empty() {
                    continue;
                }
                let name = pick(&mut rng, &with_trash);
                let trashed: Vec<String> = model[&name].trashed.iter().cloned().collect();
                let version = pick(&mut rng, &trashed);
                api.artifacts
                    .undelete_version(UndeleteVersionRequest {
                        tenant: T.into(),
                        project: p.into(),
                        artifact_id: ids[&name].clone(),
                        version: version.clone(),
                    })
                    .await
                    .unwrap();
                // Its state is what it was when deleted; read it back.
                let (now_state, _) = project_state(&mut api.artifacts, &mut api.retention, T, p).await;
                let seen = model.get_mut(&name).unwrap();
                seen.trashed.remove(&version);
                seen.versions
                    .insert(version.clone(), now_state[&name].versions[&version]);
            }
            8 if !live.is_empty() => {
                let name = pick(&mut rng, &live);
                let done = api
                    .artifacts
                    .delete_artifact(DeleteArtifactRequest {
                        tenant: T.into(),
                        project: p.into(),
                        artifact_id: ids[&name].clone(),
                    })
                    .await;
                if done.is_ok() {
                    let seen = model.get_mut(&name).unwrap();
                    seen.deleted = true;
                }
            }
            9 => {
                let deleted: Vec<String> = model
                    .iter()
                    .filter(|(_, s)| s.deleted)
                    .map(|(n, _)| n.clone())
                    .collect();
                if !deleted.is_empty() && rng.random_bool(0.5) {
                    let name = pick(&mut rng, &deleted);
                    api.artifacts
                        .undelete_artifact(UndeleteArtifactRequest {
                            tenant: T.into(),
                            project: p.into(),
                            artifact_id: ids[&name].clone(),
                        })
                        .await
                        .unwrap();
                    model.get_mut(&name).unwrap().deleted = false;
                } else if !live.is_empty() {
                    let name = pick(&mut rng, &live);
                    let versions: Vec<String> = model[&name].versions.keys().cloned().collect();
                    let version = pick(&mut rng, &versions);
                    api.artifacts
                        .set_alias(SetAliasRequest {
                            tenant: T.into(),
                            project: p.into(),
                            artifact_id: ids[&name].clone(),
                            alias: "stable".into(),
                            version: version.clone(),
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    model
                        .get_mut(&name)
                        .unwrap()
                        .aliases
                        .insert("stable".into(), version);
                }
            }
            _ => continue,
        }
        let after = artifactd::domain::now_micros();
        if after <= before {
            // A step that found nothing to do (every name taken, say) can end within the
            // microsecond it began: it made no moment of its own.
            continue;
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
        moments.push((after + 1000, visible(&model)));
    }
    // The server agrees with the model now.
    let (now_state, _) = project_state(&mut api.artifacts, &mut api.retention, T, p).await;
    assert_eq!(now_state, visible(&model), "the model follows the server");

    for round in 0..20 {
        let (at, expected) = &moments[rng.random_range(0..moments.len())];
        let target = format!("asof-{round}");
        let restored = restore(&mut api.backups, into_project(as_of(T, p, *at), &target))
            .await
            .unwrap();
        assert!(!restored.dry_run);
        let (state, _) = project_state(&mut api.artifacts, &mut api.retention, T, &target).await;
        assert_eq!(&state, expected, "the project as of moment {at} (round {round})");
    }

    // In place: the live state is the moment's; what came later is in the trash.
    let (at, expected) = moments[moments.len() / 2].clone();
    let mut in_place = as_of(T, p, at);
    in_place.overwrite = true;
    let mut dry = in_place.clone();
    dry.dry_run = true;
    let planned = restore(&mut api.backups, dry).await.unwrap();
    assert!(planned.dry_run);
    assert_eq!(
        project_state(&mut api.artifacts, &mut api.retention, T, p)
            .await
            .0,
        now_state
    );
    restore(&mut api.backups, in_place).await.unwrap();
    let (state, _) = project_state(&mut api.artifacts, &mut api.retention, T, p).await;
    // The live part: trash contents aside.
    let live = |model: &Model| -> Model {
        model
            .iter()
            .filter(|(_, s)| !s.deleted)
            .map(|(n, s)| {
                let mut s = s.clone();
                s.trashed.clear();
                (n.clone(), s)
            })
            .collect()
    };
    assert_eq!(live(&state), live(&expected));
    for (name, seen) in &expected {
        if seen.deleted {
            assert!(state[name].deleted, "{name} is in the trash as it was");
        } else {
            assert!(
                seen.trashed.is_subset(&state[name].trashed),
                "{name}: {seen:?} / {:?}",
                state[name]
            );
        }
    }
}

/// What the model shows a caller: aliases on versions that are not live do not show.
fn visible(model: &Model) -> Model {
    model
        .iter()
        .map(|(name, seen)| {
            if seen.deleted {
                return (
                    name.clone(),
                    Seen {
                        artifact_type: seen.artifact_type.clone(),
                        deleted: true,
                        ..Seen::default()
                    },
                );
            }
            let mut seen = seen.clone();
            let versions = seen.versions.clone();
            seen.aliases.retain(|_, version| versions.contains_key(version));
            (name.clone(), seen)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn point_in_time_restores_match_a_model_sqlite() {
    point_in_time(false, 0xB4C0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn point_in_time_restores_match_a_model_postgres() {
    point_in_time(true, 0xB4C1).await;
}

// ---- consistency under load ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn backups_taken_while_uploads_run_are_consistent() {
    let (server, _db) = start(true, &[("ARTIFACTD_INGEST__PACK_TARGET_BYTES", "65536")]).await;
    let p = "busy";
    let uploaded = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::<(String, String), Vec<u8>>::new()));
    let mut writers = Vec::new();
    for writer in 0..4u64 {
        let mut client = server.client().await;
        let uploaded = uploaded.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..12u64 {
                let name = format!("w{writer}-{n}");
                // Shared content across writers: chunks dedup against each other's uploads.
                let mut content = doc(n, 40_000);
                content.extend(doc(writer * 100 + n, 30_000));
                create(&mut client, header(T, p, "doc", &name), &content)
                    .await
                    .unwrap();
                uploaded.lock().unwrap().insert((name, "1.0.0".into()), content);
            }
        }));
    }
    let mut backups_client = Backups::new(server.channel().await);
    let mut taken = Vec::new();
    while writers.iter().any(|w| !w.is_finished()) {
        taken.push(backup(&mut backups_client, T, p, "").await.unwrap());
    }
    for writer in writers {
        writer.await.unwrap();
    }
    taken.push(backup(&mut backups_client, T, p, "").await.unwrap());
    assert!(
        taken.len() >= 3,
        "backups ran beside the uploads ({})",
        taken.len()
    );
    let uploaded = uploaded.lock().unwrap().clone();
    let mut client = server.client().await;
    let mut retention = Retention::new(server.channel().await);
    for (k, b) in taken.iter().enumerate() {
        let target = format!("copy-{k}");
        let result = restore(
            &mut backups_client,
            into_project(from_backup(T, p, &b.id), &target),
        )
        .await
        .unwrap();
        assert_eq!(result.versions, b.versions);
        let (state, ids) = project_state(&mut client, &mut retention, T, &target).await;
        assert_eq!(state.len() as u64, b.artifacts);
        for (name, seen) in &state {
            for version in seen.versions.keys() {
                let content = fetch(&mut client, &target, &ids[name], version).await;
                assert_eq!(
                    content,
                    uploaded[&(name.clone(), version.clone())],
                    "{target}: {name}@{version}"
                );
            }
        }
    }
    assert_eq!(taken.last().unwrap().artifacts, 48);
}

// ---- collection ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn collection_keeps_what_backups_need_until_they_are_deleted() {
    let (server, _db) = start(false, &[("ARTIFACTD_RETENTION__GC_GRACE_SECONDS", "1")]).await;
    let mut api = api(&server).await;
    let mut admin = artifactd::proto::admin_service_client::AdminServiceClient::new(server.channel().await);
    let p = "kept";
    let first = doc(50, 300_000);
    let id = create_id(&mut api.artifacts, header(T, p, "bundle", "release"), &first).await;
    let second = new_version(&mut api.artifacts, p, &id, &doc(51, 300_000)).await;
    let taken = backup(&mut api.backups, T, p, &id).await.unwrap();
    assert_eq!(taken.kind, proto::BackupKind::Artifact as i32);
    api.artifacts
        .delete_version(DeleteVersionRequest {
            tenant: T.into(),
            project: p.into(),
            artifact_id: id.clone(),
            version: "1.0.0".into(),
        })
        .await
        .unwrap();
    api.retention
        .purge_trash(PurgeTrashRequest {
            tenant: T.into(),
            project: p.into(),
            artifact_id: id.clone(),
            version: "1.0.0".into(),
        })
        .await
        .unwrap();
    let collect = |admin: &mut artifactd::proto::admin_service_client::AdminServiceClient<Authed>| {
        let mut admin = admin.clone();
        async move {
            admin
                .collect_garbage(proto::CollectGarbageRequest { dry_run: false })
                .await
                .unwrap()
                .into_inner()
        }
    };
    for _ in 0..3 {
        collect(&mut admin).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let mut single = from_backup(T, p, &taken.id);
    single.target = Some(proto::RestoreTarget {
        target: Some(proto::restore_target::Target::NewArtifact(proto::NewArtifact {
            project: "recovered".into(),
            name: "release".into(),
        })),
    });
    let restored = restore(&mut api.backups, single).await.unwrap();
    let new_id = restored.new_ids[&id].clone();
    assert_eq!(
        fetch(&mut api.artifacts, "recovered", &new_id, "1.0.0").await,
        first
    );
    let _ = second;

    // Once the backup and the copy are gone, the purged version's packs are collected.
    api.backups
        .delete_backup(DeleteBackupRequest {
            tenant: T.into(),
            project: p.into(),
            backup_id: taken.id.clone(),
        })
        .await
        .unwrap();
    api.artifacts
        .delete_artifact(DeleteArtifactRequest {
            tenant: T.into(),
            project: "recovered".into(),
            artifact_id: new_id.clone(),
        })
        .await
        .unwrap();
    api.retention
        .purge_trash(PurgeTrashRequest {
            tenant: T.into(),
            project: "recovered".into(),
            artifact_id: new_id,
            version: String::new(),
        })
        .await
        .unwrap();
    let mut reclaimed = 0;
    for _ in 0..3 {
        reclaimed += collect(&mut admin).await.report.map_or(0, |r| r.bytes_reclaimed);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert!(
        reclaimed >= 250_000,
        "the unpinned packs were collected ({reclaimed} bytes)"
    );
    let trash = api
        .retention
        .list_trash(ListTrashRequest {
            tenant: T.into(),
            project: p.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(trash.items.is_empty());
}

// ---- another installation --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_restores_into_an_empty_installation_on_the_same_stores() {
    let s3 = common::s3::S3TestServer::start().await;
    let p = "moved";
    let mut contents = BTreeMap::new();
    let backup_id;
    {
        let first = ServerProcess::start_with(ServerOptions::default().envs(s3.env("shared")));
        let mut client = first.client().await;
        for n in 0..5u64 {
            let content = doc(200 + n, 50_000 + n as usize * 1000);
            let id = create_id(&mut client, header(T, p, "doc", &format!("doc-{n}")), &content).await;
            let next = doc(300 + n, 20_000);
            new_version(&mut client, p, &id, &next).await;
            contents.insert((format!("doc-{n}"), "1.0.0".to_owned()), content);
            contents.insert((format!("doc-{n}"), "1.0.1".to_owned()), next);
        }
        let mut backups = Backups::new(first.channel().await);
        backup_id = backup(&mut backups, T, p, "").await.unwrap().id;
    }
    // A new installation: its own empty catalog, the same bucket.
    let second = ServerProcess::start_with(ServerOptions::default().envs(s3.env("shared")));
    let mut api = api(&second).await;
    let result = restore(&mut api.backups, from_backup(T, p, &backup_id))
        .await
        .unwrap();
    assert_eq!(result.artifacts, 5);
    let (state, ids) = project_state(&mut api.artifacts, &mut api.retention, T, p).await;
    assert_eq!(state.len(), 5);
    for ((name, version), content) in &contents {
        assert_eq!(
            &fetch(&mut api.artifacts, p, &ids[name], version).await,
            content,
            "{name}@{version}"
        );
    }
    // It adopted the chunk-id secret: new uploads dedup against the restored content.
    let again = create(
        &mut api.artifacts,
        header(T, "other", "doc", "copy"),
        &contents[&("doc-0".to_owned(), "1.0.0".to_owned())],
    )
    .await
    .unwrap();
    assert_eq!(
        again.version.unwrap().new_stored_size,
        0,
        "the restored chunks are found again"
    );
}

// ---- schedules -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_backups_run_and_keep_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let catalog =
        artifactd::catalog::Catalog::connect(&format!("sqlite://{}/catalog.db", dir.path().display()), 4)
            .await
            .unwrap();
    let store: artifactd::storage::DynBlobStore =
        std::sync::Arc::new(artifactd::storage::FsStore::open(dir.path().join("objects")).unwrap());
    let artifacts = artifactd::app::Artifacts::new(catalog, store, artifactd::app::Settings::default())
        .await
        .unwrap();
    let scope = artifactd::catalog::Scope::new(T, "nightly");
    artifacts
        .create(
            artifactd::app::CreateArtifact {
                scope: scope.clone(),
                artifact_type: "doc".into(),
                name: "plan".into(),
                initial_version: "1.0.0".into(),
                actor: "tester".into(),
                ..Default::default()
            },
            futures::stream::iter(vec![
                Ok(artifactd::app::UploadPart::Data(bytes::Bytes::from(doc(
                    7, 10_000,
                )))),
                Ok(artifactd::app::UploadPart::Finish(
                    artifactd::app::ContentExpectations::default(),
                )),
            ]),
            &tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap();
    artifacts
        .set_backup_schedule(&scope, 3600, 2, "tester")
        .await
        .unwrap();
    let hour = 3600 * 1_000_000i64;
    let t0 = artifactd::domain::now_micros();
    assert_eq!(artifacts.run_due_backups(t0).await.unwrap(), 1);
    assert_eq!(
        artifacts.run_due_backups(t0 + hour / 2).await.unwrap(),
        0,
        "not due yet"
    );
    assert_eq!(artifacts.run_due_backups(t0 + hour).await.unwrap(), 1);
    assert_eq!(artifacts.run_due_backups(t0 + 2 * hour).await.unwrap(), 1);
    let listed = artifacts.list_backups(T, "nightly", 0, "").await.unwrap();
    assert_eq!(
        listed.items.len(),
        2,
        "keep 2: the oldest scheduled backup expired"
    );
    assert!(listed.items.iter().all(|b| b.trigger == "schedule"));
    let schedules = artifacts.backup_schedules(T, "nightly").await.unwrap();
    assert_eq!(schedules[0].last_run_at.map(|t| t.0), Some(t0 + 2 * hour));
    // Removing the schedule stops it.
    artifacts
        .set_backup_schedule(&scope, 0, 0, "tester")
        .await
        .unwrap();
    assert_eq!(artifacts.run_due_backups(t0 + 10 * hour).await.unwrap(), 0);
}

// ---- crypto-shredding ------------------------------------------------------------------------

/// Backups hold the tenant's keys (wrapped): destroying the keys deletes them, so no restore
/// can bring the keys, or the content, back.
#[tokio::test(flavor = "multi_thread")]
async fn destroying_a_tenants_keys_deletes_its_backups() {
    let (server, _db) = start(
        false,
        &[(
            "ARTIFACTD_ENCRYPTION__MASTER_KEY",
            "7878787878787878787878787878787878787878787878787878787878787878",
        )],
    )
    .await;
    let mut api = api(&server).await;
    let p = "secret";
    let id = create_id(
        &mut api.artifacts,
        header(T, p, "doc", "sealed"),
        &doc(90, 50_000),
    )
    .await;
    let taken = backup(&mut api.backups, T, p, "").await.unwrap();
    let copy = restore(
        &mut api.backups,
        into_project(from_backup(T, p, &taken.id), "secret-copy"),
    )
    .await
    .unwrap();
    assert_eq!(
        fetch(&mut api.artifacts, "secret-copy", &copy.new_ids[&id], "1.0.0").await,
        doc(90, 50_000)
    );
    assert_eq!(files_ending(&server.data_dir, ".artbkp").len(), 1);
    artifactd::proto::encryption_service_client::EncryptionServiceClient::new(server.channel().await)
        .destroy_tenant_key(proto::DestroyTenantKeyRequest {
            tenant: T.into(),
            confirm_tenant: T.into(),
        })
        .await
        .unwrap();
    let listed = api
        .backups
        .list_backups(ListBackupsRequest {
            tenant: T.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.backups.is_empty(), "{:?}", listed.backups);
    assert!(
        files_ending(&server.data_dir, ".artbkp").is_empty(),
        "the backup objects are gone"
    );
    assert_status(
        restore(
            &mut api.backups,
            into_project(from_backup(T, p, &taken.id), "secret-again"),
        )
        .await,
        Code::NotFound,
        &[&taken.id],
    );
}

// ---- the recovery window and the trash -------------------------------------------------------

/// The trash purger keeps what the recovery window still reaches: a version deleted with a
/// 1 s trash period stays restorable (and its moment reachable) until the 6 s window has
/// passed, then goes.
#[tokio::test(flavor = "multi_thread")]
async fn the_trash_keeps_what_the_recovery_window_reaches() {
    let (server, _db) = start(
        false,
        &[
            ("ARTIFACTD_RETENTION__DELETED_RETENTION_SECONDS", "1"),
            ("ARTIFACTD_RETENTION__PURGE_INTERVAL_SECONDS", "1"),
            ("ARTIFACTD_RETENTION__RECOVERY_WINDOW_SECONDS", "6"),
        ],
    )
    .await;
    let mut api = api(&server).await;
    let p = "window";
    let first = doc(70, 5_000);
    let id = create_id(&mut api.artifacts, header(T, p, "doc", "kept"), &first).await;
    new_version(&mut api.artifacts, p, &id, &doc(71, 5_000)).await;
    let before_delete = artifactd::domain::now_micros();
    tokio::time::sleep(Duration::from_millis(20)).await;
    api.artifacts
        .delete_version(DeleteVersionRequest {
            tenant: T.into(),
            project: p.into(),
            artifact_id: id.clone(),
            version: "1.0.0".into(),
        })
        .await
        .unwrap();
    let deleted_at = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restored = restore(
        &mut api.backups,
        into_project(as_of(T, p, before_delete), "window-then"),
    )
    .await
    .unwrap();
    let copy = restored.new_ids[&id].clone();
    assert_eq!(
        fetch(&mut api.artifacts, "window-then", &copy, "1.0.0").await,
        first
    );
    let trash = |api: &mut Api| {
        let mut retention = api.retention.clone();
        async move {
            retention
                .list_trash(ListTrashRequest {
                    tenant: T.into(),
                    project: p.into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .items
                .len()
        }
    };
    assert!(deleted_at.elapsed() < Duration::from_secs(6));
    assert_eq!(
        trash(&mut api).await,
        1,
        "kept past the trash period while the window reaches it"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while trash(&mut api).await == 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "purged once the window passed"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        deleted_at.elapsed() >= Duration::from_secs(6),
        "not before the window passed"
    );
}
