//! Retention policies, legal holds and the trash through the real binary on both catalogs:
//! a dry run equals the execution on randomized catalogs, the rules decide as documented,
//! bad policies are refused naming the field, the trash lists, restores and purges (by the
//! job after the retention period, or on request), holds stop everything, scheduled
//! policies run and their reports are kept.

mod common;

use artifactd::proto::retention_service_client::RetentionServiceClient;
use artifactd::proto::{
    self, CreateRetentionPolicyRequest, DeleteArtifactRequest, DeleteVersionRequest,
    EvaluateRetentionPolicyRequest, ExecuteRetentionPolicyRequest, GetRetentionRunRequest, KeepRules,
    ListRetentionRunsRequest, ListTrashRequest, ListVersionsRequest, PurgeTrashRequest, RetentionAction,
    RetentionPolicySpec, SetAliasRequest, SetLegalHoldRequest, TransitionVersionRequest,
    UndeleteVersionRequest, create_retention_policy_request,
};
use common::binary::{Authed, ServerProcess};
use common::client::{
    Client, assert_status, create_id, download, download_request, header, update, update_header,
};
use common::postgres::TestDatabase;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::time::Duration;
use tonic::Code;

const T: &str = "acme";

type Retention = RetentionServiceClient<Authed>;

async fn start(postgres: bool, extra: &[(&str, &str)]) -> (ServerProcess, Option<TestDatabase>) {
    common::binary::start_on_catalog_with(postgres, extra).await
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

async fn versions_of(client: &mut Client, project: &str, id: &str) -> BTreeSet<String> {
    client
        .list_versions(ListVersionsRequest {
            tenant: T.into(),
            project: project.into(),
            artifact_id: id.into(),
            page_size: 1000,
            states: (1..=4).collect(),
            ..Default::default()
        })
        .await
        .expect("listing versions")
        .into_inner()
        .versions
        .into_iter()
        .map(|v| v.version)
        .collect()
}

async fn transition(
    client: &mut Client,
    project: &str,
    id: &str,
    version: &str,
    target: proto::LifecycleState,
) {
    client
        .transition_version(TransitionVersionRequest {
            tenant: T.into(),
            project: project.into(),
            artifact_id: id.into(),
            version: version.into(),
            target_state: target as i32,
            ..Default::default()
        })
        .await
        .expect("transition");
}

async fn create_policy(
    retention: &mut Retention,
    project: &str,
    name: &str,
    policy: create_retention_policy_request::Policy,
) -> Result<proto::RetentionPolicy, tonic::Status> {
    retention
        .create_retention_policy(CreateRetentionPolicyRequest {
            tenant: T.into(),
            project: project.into(),
            name: name.into(),
            policy: Some(policy),
        })
        .await
        .map(|r| r.into_inner().policy.expect("policy"))
}

fn spec(action: RetentionAction, keep: KeepRules) -> create_retention_policy_request::Policy {
    create_retention_policy_request::Policy::Spec(RetentionPolicySpec {
        action: action as i32,
        keep: Some(keep),
        ..Default::default()
    })
}

/// Builds a random project: artifacts of two types with 1 to 7 versions, some in review or
/// approved or archived, some aliased, some held.
async fn random_project(server: &ServerProcess, project: &str, rng: &mut StdRng) -> Vec<String> {
    let mut client = server.client().await;
    let mut retention = RetentionServiceClient::new(server.channel().await);
    let mut ids = Vec::new();
    for n in 0..14 {
        let kind = if n % 3 == 0 { "prd" } else { "story" };
        let id = create_id(
            &mut client,
            header(T, project, kind, &format!("{kind}-{n}")),
            format!("artifact {n} v0").as_bytes(),
        )
        .await;
        let mut versions = vec!["1.0.0".to_owned()];
        for v in 0..rng.random_range(0..7) {
            versions.push(
                new_version(
                    &mut client,
                    project,
                    &id,
                    format!("artifact {n} v{}", v + 1).as_bytes(),
                )
                .await,
            );
        }
        for version in &versions {
            match rng.random_range(0..10) {
                0..=1 => transition(&mut client, project, &id, version, proto::LifecycleState::Review).await,
                2 => {
                    transition(&mut client, project, &id, version, proto::LifecycleState::Review).await;
                    transition(
                        &mut client,
                        project,
                        &id,
                        version,
                        proto::LifecycleState::Approved,
                    )
                    .await;
                }
                3 => {
                    transition(
                        &mut client,
                        project,
                        &id,
                        version,
                        proto::LifecycleState::Archived,
                    )
                    .await
                }
                _ => {}
            }
            if rng.random_range(0..12) == 0 {
                client
                    .set_alias(SetAliasRequest {
                        tenant: T.into(),
                        project: project.into(),
                        artifact_id: id.clone(),
                        alias: "stable".into(),
                        version: version.clone(),
                        expected_version: None,
                    })
                    .await
                    .expect("alias");
            }
            if rng.random_range(0..15) == 0 {
                retention
                    .set_legal_hold(SetLegalHoldRequest {
                        tenant: T.into(),
                        project: project.into(),
                        artifact_id: id.clone(),
                        version: version.clone(),
                        reason: "litigation 42".into(),
                    })
                    .await
                    .expect("hold");
            }
        }
        ids.push(id);
    }
    ids
}

fn random_spec(rng: &mut StdRng) -> RetentionPolicySpec {
    let states: Vec<i32> = match rng.random_range(0..3) {
        0 => vec![],
        1 => vec![proto::LifecycleState::Draft as i32],
        _ => vec![
            proto::LifecycleState::Draft as i32,
            proto::LifecycleState::Review as i32,
        ],
    };
    RetentionPolicySpec {
        artifact_types: if rng.random_bool(0.3) {
            vec!["story".into()]
        } else {
            vec![]
        },
        name_pattern: if rng.random_bool(0.3) {
            "-1[0-9]?$".into()
        } else {
            String::new()
        },
        keep: Some(KeepRules {
            latest: rng.random_bool(0.7).then(|| rng.random_range(0..4)),
            created_within_days: None,
            read_within_days: None,
            version_pattern: if rng.random_bool(0.3) {
                r"\.[02468]$".into()
            } else {
                String::new()
            },
        }),
        action: if rng.random_bool(0.5) {
            RetentionAction::Delete
        } else {
            RetentionAction::Archive
        } as i32,
        states,
        allow_approved: false,
        schedule_seconds: 0,
    }
}

async fn a_dry_run_equals_the_execution(postgres: bool) {
    let (server, _db) = start(postgres, &[]).await;
    let mut rng = StdRng::seed_from_u64(if postgres { 2 } else { 1 });
    let mut retention = RetentionServiceClient::new(server.channel().await);
    let mut client = server.client().await;
    let mut affected_total = 0;
    for round in 0..4 {
        let project = format!("p{round}");
        let ids = random_project(&server, &project, &mut rng).await;
        for p in 0..3 {
            let spec = random_spec(&mut rng);
            let action = spec.action;
            let policy = create_policy(
                &mut retention,
                &project,
                &format!("policy-{p}"),
                create_retention_policy_request::Policy::Spec(spec),
            )
            .await
            .expect("a valid random policy");
            let dry = retention
                .evaluate_retention_policy(EvaluateRetentionPolicyRequest {
                    tenant: T.into(),
                    project: project.clone(),
                    policy_id: policy.id.clone(),
                })
                .await
                .expect("dry run")
                .into_inner()
                .run
                .expect("run");
            let mut before = Vec::new();
            for id in &ids {
                before.push(versions_of(&mut client, &project, id).await);
            }
            let executed = retention
                .execute_retention_policy(ExecuteRetentionPolicyRequest {
                    tenant: T.into(),
                    project: project.clone(),
                    policy_id: policy.id.clone(),
                    expected_plan: dry.plan.clone(),
                })
                .await
                .expect("execution of the dry run's plan")
                .into_inner()
                .run
                .expect("run");
            assert!(!executed.dry_run && dry.dry_run);
            let key = |d: &proto::RetentionDecision| (d.artifact_id.clone(), d.version.clone(), d.verdict);
            let planned: BTreeSet<_> = dry.affected.iter().map(key).collect();
            let done: BTreeSet<_> = executed.affected.iter().map(key).collect();
            assert_eq!(
                planned, done,
                "the execution planned differently from the dry run"
            );
            assert!(executed.skipped.is_empty(), "{:?}", executed.skipped);
            assert_eq!(executed.applied as usize, planned.len());
            affected_total += planned.len();
            // What the catalog shows agrees: deleted versions left the listing, archived
            // ones moved state, nothing else changed.
            for (i, id) in ids.iter().enumerate() {
                let after = versions_of(&mut client, &project, id).await;
                let gone: BTreeSet<String> = before[i].difference(&after).cloned().collect();
                let expected: BTreeSet<String> = dry
                    .affected
                    .iter()
                    .filter(|d| &d.artifact_id == id && action == RetentionAction::Delete as i32)
                    .map(|d| d.version.clone())
                    .collect();
                assert_eq!(gone, expected, "artifact {id}");
            }
            for decision in &dry.affected {
                assert_eq!(decision.rule, "no_keep_rule");
                assert_ne!(
                    decision.state,
                    proto::LifecycleState::Approved as i32,
                    "approved versions are kept"
                );
            }
            // A second execution finds nothing more to do (the plan is a fixed point).
            let again = retention
                .evaluate_retention_policy(EvaluateRetentionPolicyRequest {
                    tenant: T.into(),
                    project: project.clone(),
                    policy_id: policy.id.clone(),
                })
                .await
                .expect("dry run")
                .into_inner()
                .run
                .expect("run");
            assert!(again.affected.is_empty(), "{:?}", again.affected);
            // The stale plan is refused now that the catalog changed.
            if !planned.is_empty() {
                assert_status(
                    retention
                        .execute_retention_policy(ExecuteRetentionPolicyRequest {
                            tenant: T.into(),
                            project: project.clone(),
                            policy_id: policy.id.clone(),
                            expected_plan: dry.plan.clone(),
                        })
                        .await,
                    Code::Aborted,
                    &["expected_plan"],
                );
            }
            // Reports are kept and queryable.
            let runs = retention
                .list_retention_runs(ListRetentionRunsRequest {
                    tenant: T.into(),
                    project: project.clone(),
                    policy_id: policy.id.clone(),
                    limit: 10,
                })
                .await
                .expect("runs")
                .into_inner()
                .runs;
            assert_eq!(runs.len(), 3, "dry run, execution, second dry run");
            let stored = retention
                .get_retention_run(GetRetentionRunRequest {
                    tenant: T.into(),
                    project: project.clone(),
                    run_id: executed.id.clone(),
                })
                .await
                .expect("a run")
                .into_inner()
                .run
                .expect("run");
            assert_eq!(stored.affected.len(), executed.affected.len());
            assert_eq!(stored.applied, executed.applied);
        }
    }
    assert!(
        affected_total > 20,
        "the random policies affected only {affected_total} versions"
    );
}

#[tokio::test]
async fn a_dry_run_equals_the_execution_on_sqlite() {
    a_dry_run_equals_the_execution(false).await;
}

#[tokio::test]
async fn a_dry_run_equals_the_execution_on_postgres() {
    a_dry_run_equals_the_execution(true).await;
}

async fn bad_policies_are_refused_naming_the_field(postgres: bool) {
    let (server, _db) = start(postgres, &[]).await;
    let mut retention = RetentionServiceClient::new(server.channel().await);
    let cases: Vec<(create_retention_policy_request::Policy, &str, &str)> = vec![
        (
            spec(
                RetentionAction::Delete,
                KeepRules {
                    latest: Some(-3),
                    ..Default::default()
                },
            ),
            "policy.keep.latest",
            "-3",
        ),
        (
            spec(
                RetentionAction::Delete,
                KeepRules {
                    created_within_days: Some(-1),
                    ..Default::default()
                },
            ),
            "policy.keep.created_within_days",
            "negative",
        ),
        (
            create_retention_policy_request::Policy::Document("action: delete\nkeep:\n  latests: 3\n".into()),
            "document",
            "latests",
        ),
        (
            create_retention_policy_request::Policy::Document("action: delete\nshredder: true\n".into()),
            "document",
            "shredder",
        ),
        (
            create_retention_policy_request::Policy::Spec(RetentionPolicySpec {
                action: RetentionAction::Delete as i32,
                name_pattern: "prd-(".into(),
                ..Default::default()
            }),
            "policy.name_pattern",
            "prd-(",
        ),
        (
            spec(
                RetentionAction::Delete,
                KeepRules {
                    version_pattern: "[".into(),
                    ..Default::default()
                },
            ),
            "policy.keep.version_pattern",
            "does not compile",
        ),
        (
            create_retention_policy_request::Policy::Spec(RetentionPolicySpec {
                action: RetentionAction::Delete as i32,
                states: vec![proto::LifecycleState::Approved as i32],
                ..Default::default()
            }),
            "policy.allow_approved",
            "approved",
        ),
        (
            create_retention_policy_request::Policy::Spec(RetentionPolicySpec::default()),
            "policy.action",
            "unset",
        ),
        (
            create_retention_policy_request::Policy::Spec(RetentionPolicySpec {
                action: RetentionAction::Delete as i32,
                schedule_seconds: -5,
                ..Default::default()
            }),
            "policy.schedule_seconds",
            "negative",
        ),
    ];
    for (policy, field, needle) in cases {
        let status = assert_status(
            create_policy(&mut retention, "p", "bad", policy).await,
            Code::InvalidArgument,
            &[needle],
        );
        assert!(
            status.message().starts_with(field),
            "{field}: {}",
            status.message()
        );
    }
    // The explicit form is accepted.
    create_policy(
        &mut retention,
        "p",
        "explicit",
        create_retention_policy_request::Policy::Document(
            "action: delete\nstates: [approved, archived]\nallow_approved: true\nkeep: {latest: 2}\n".into(),
        ),
    )
    .await
    .expect("an explicit approved-deleting policy");
    assert_status(
        create_policy(
            &mut retention,
            "p",
            "explicit",
            spec(RetentionAction::Archive, KeepRules::default()),
        )
        .await,
        Code::AlreadyExists,
        &["explicit"],
    );
}

#[tokio::test]
async fn bad_policies_are_refused_naming_the_field_on_sqlite() {
    bad_policies_are_refused_naming_the_field(false).await;
}

#[tokio::test]
async fn bad_policies_are_refused_naming_the_field_on_postgres() {
    bad_policies_are_refused_naming_the_field(true).await;
}

async fn the_trash_and_holds(postgres: bool) {
    let (server, _db) = start(
        postgres,
        &[
            ("ARTIFACTD_RETENTION__DELETED_RETENTION_SECONDS", "3"),
            ("ARTIFACTD_RETENTION__PURGE_INTERVAL_SECONDS", "1"),
            ("ARTIFACTD_RETENTION__POLICY_CHECK_SECONDS", "1"),
            // Point-in-time restore reaches no further than the trash here.
            ("ARTIFACTD_RETENTION__RECOVERY_WINDOW_SECONDS", "3"),
        ],
    )
    .await;
    let mut client = server.client().await;
    let mut retention = RetentionServiceClient::new(server.channel().await);
    let id = create_id(&mut client, header(T, "p", "prd", "payments"), b"v0").await;
    let v1 = new_version(&mut client, "p", &id, b"v1").await;
    let v2 = new_version(&mut client, "p", &id, b"v2").await;
    let v3 = new_version(&mut client, "p", &id, b"v3").await;
    let delete = |version: &str| DeleteVersionRequest {
        tenant: T.into(),
        project: "p".into(),
        artifact_id: id.clone(),
        version: version.into(),
    };
    // The latest, an approved version, an aliased one and a held one stay.
    assert_status(
        client.delete_version(delete(&v3)).await,
        Code::FailedPrecondition,
        &["latest"],
    );
    transition(&mut client, "p", &id, &v1, proto::LifecycleState::Review).await;
    transition(&mut client, "p", &id, &v1, proto::LifecycleState::Approved).await;
    assert_status(
        client.delete_version(delete(&v1)).await,
        Code::FailedPrecondition,
        &["approved"],
    );
    client
        .set_alias(SetAliasRequest {
            tenant: T.into(),
            project: "p".into(),
            artifact_id: id.clone(),
            alias: "stable".into(),
            version: v2.clone(),
            expected_version: None,
        })
        .await
        .unwrap();
    assert_status(
        client.delete_version(delete(&v2)).await,
        Code::FailedPrecondition,
        &["stable"],
    );
    retention
        .set_legal_hold(SetLegalHoldRequest {
            tenant: T.into(),
            project: "p".into(),
            artifact_id: id.clone(),
            version: "1.0.0".into(),
            reason: "audit 2026".into(),
        })
        .await
        .unwrap();
    assert_status(
        client.delete_version(delete("1.0.0")).await,
        Code::FailedPrecondition,
        &["legal hold", "audit 2026"],
    );
    assert_status(
        client.delete_version(delete("9.9.9")).await,
        Code::NotFound,
        &["9.9.9"],
    );
    assert_status(
        client.delete_version(delete("not-a-version")).await,
        Code::InvalidArgument,
        &["version"],
    );
    assert_status(
        retention
            .set_legal_hold(SetLegalHoldRequest {
                tenant: T.into(),
                project: "p".into(),
                artifact_id: id.clone(),
                version: String::new(),
                reason: "  ".into(),
            })
            .await,
        Code::InvalidArgument,
        &["reason"],
    );
    retention
        .release_legal_hold(proto::ReleaseLegalHoldRequest {
            tenant: T.into(),
            project: "p".into(),
            artifact_id: id.clone(),
            version: "1.0.0".into(),
        })
        .await
        .unwrap();
    // In the trash: listed, unreadable, restorable; purge on request.
    let deleted = client
        .delete_version(delete("1.0.0"))
        .await
        .expect("trash 1.0.0")
        .into_inner();
    assert!(deleted.restorable_until.is_some());
    let trash = retention
        .list_trash(ListTrashRequest {
            tenant: T.into(),
            project: "p".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(trash.len(), 1);
    assert_eq!(
        (trash[0].artifact_id.as_str(), trash[0].version.as_str()),
        (id.as_str(), "1.0.0")
    );
    assert_status(
        download(&mut client, download_request(T, "p", &id, "1.0.0")).await,
        Code::NotFound,
        &["1.0.0"],
    );
    client
        .undelete_version(UndeleteVersionRequest {
            tenant: T.into(),
            project: "p".into(),
            artifact_id: id.clone(),
            version: "1.0.0".into(),
        })
        .await
        .expect("restoring");
    let (_, body) = download(&mut client, download_request(T, "p", &id, "1.0.0"))
        .await
        .unwrap();
    assert_eq!(body, b"v0");
    assert_status(
        retention
            .purge_trash(PurgeTrashRequest {
                tenant: T.into(),
                project: "p".into(),
                artifact_id: id.clone(),
                version: "1.0.0".into(),
            })
            .await,
        Code::FailedPrecondition,
        &["not in the trash"],
    );
    client.delete_version(delete("1.0.0")).await.unwrap();
    retention
        .purge_trash(PurgeTrashRequest {
            tenant: T.into(),
            project: "p".into(),
            artifact_id: id.clone(),
            version: "1.0.0".into(),
        })
        .await
        .expect("purging on request");
    assert_status(
        client
            .undelete_version(UndeleteVersionRequest {
                tenant: T.into(),
                project: "p".into(),
                artifact_id: id.clone(),
                version: "1.0.0".into(),
            })
            .await,
        Code::NotFound,
        &["1.0.0"],
    );

    // A held artifact in the trash outlives its retention; the purge job takes the other.
    let held = create_id(&mut client, header(T, "p", "prd", "held"), b"held").await;
    let loose = create_id(&mut client, header(T, "p", "prd", "loose"), b"loose").await;
    retention
        .set_legal_hold(SetLegalHoldRequest {
            tenant: T.into(),
            project: "p".into(),
            artifact_id: held.clone(),
            version: String::new(),
            reason: "regulator".into(),
        })
        .await
        .unwrap();
    for artifact in [&held, &loose] {
        let result = client
            .delete_artifact(DeleteArtifactRequest {
                tenant: T.into(),
                project: "p".into(),
                artifact_id: artifact.clone(),
            })
            .await;
        if artifact == &held {
            assert_status(result, Code::FailedPrecondition, &["legal hold"]);
        } else {
            result.expect("deleting");
        }
    }
    let listed = retention
        .list_trash(ListTrashRequest {
            tenant: T.into(),
            project: "p".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    // Listed at once: its retention (3 s) has not run out yet.
    let item = listed
        .iter()
        .find(|item| item.artifact_id == loose)
        .expect("the deleted artifact is in the trash");
    assert!(item.version.is_empty(), "the whole artifact is in the trash");
    assert!(
        item.deleted_by.starts_with("key:"),
        "who deleted it: {:?}",
        item.deleted_by
    );
    let mut purged = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let items = retention
            .list_trash(ListTrashRequest {
                tenant: T.into(),
                project: "p".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .items;
        if items.iter().all(|item| item.artifact_id != loose) {
            purged = true;
            break;
        }
    }
    assert!(purged, "the purge job did not take the expired artifact");
    let (_, body) = download(&mut client, download_request(T, "p", &held, ""))
        .await
        .unwrap();
    assert_eq!(body, b"held");

    // A scheduled policy runs by itself; reads keep versions under read_within_days.
    let reader = create_id(&mut client, header(T, "q", "story", "reader"), b"r0").await;
    new_version(&mut client, "q", &reader, b"r1").await;
    new_version(&mut client, "q", &reader, b"r2").await;
    download(&mut client, download_request(T, "q", &reader, "1.0.0"))
        .await
        .unwrap();
    let policy = create_policy(
        &mut retention,
        "q",
        "reads",
        create_retention_policy_request::Policy::Document(
            "action: delete\nkeep:\n  read_within_days: 7\nschedule_seconds: 3600\n".into(),
        ),
    )
    .await
    .unwrap();
    let mut run = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let runs = retention
            .list_retention_runs(ListRetentionRunsRequest {
                tenant: T.into(),
                project: "q".into(),
                policy_id: policy.id.clone(),
                limit: 5,
            })
            .await
            .unwrap()
            .into_inner()
            .runs;
        if let Some(found) = runs.into_iter().find(|r| r.trigger == "schedule") {
            run = Some(found);
            break;
        }
    }
    let run = run.expect("the scheduled policy did not run");
    let affected: Vec<&str> = run.affected.iter().map(|d| d.version.as_str()).collect();
    assert_eq!(affected, vec!["1.0.1"], "the read version and the latest stay");
    assert_eq!(
        versions_of(&mut client, "q", &reader).await,
        ["1.0.0", "1.0.2"].into_iter().map(String::from).collect()
    );
}

#[tokio::test]
async fn the_trash_and_holds_on_sqlite() {
    the_trash_and_holds(false).await;
}

#[tokio::test]
async fn the_trash_and_holds_on_postgres() {
    the_trash_and_holds(true).await;
}
