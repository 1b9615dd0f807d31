//! One conformance suite for the catalog, run on SQLite and on Postgres over a real
//! connection. Both dialects must behave identically.

mod common;

use artifactd::catalog::{
    Catalog, Dialect, Labels, NewArtifact, NewVersion, PackStage, Scope, Staged, StagedPack,
};
use artifactd::domain::{Error, LifecycleState};
use artifactd::ingest::{ChunkId, Codec, PackEntry};
use common::postgres::TestDatabase;
use std::collections::BTreeMap;

/// Runs `$check` as two tests, `$on_sqlite` and `$on_postgres`, each on a new catalog
/// with `$connections` connections.
macro_rules! on_both_catalogs {
    ($check:ident, $connections:expr, $on_sqlite:ident, $on_postgres:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $on_sqlite() {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
            $check(Catalog::connect(&url, $connections).await.unwrap()).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $on_postgres() {
            let database = TestDatabase::create().await;
            let catalog = Catalog::connect(&database.url, $connections).await.unwrap();
            $check(catalog.clone()).await;
            catalog.close().await;
            database.drop_database().await;
        }
    };
}

fn new_artifact(scope: &Scope, name: &str) -> NewArtifact {
    NewArtifact {
        id: uuid::Uuid::now_v7().to_string(),
        scope: scope.clone(),
        artifact_type: "prd".into(),
        name: name.into(),
        description: "product requirements".into(),
        tags: vec!["payments".into(), "q3".into()],
        categories: vec!["epic-1".into()],
    }
}

fn new_version(version: &str, chunks: Vec<(String, PackEntry)>, packs: Vec<StagedPack>) -> NewVersion {
    let chunks: artifactd::ingest::NewChunks = chunks
        .into_iter()
        .map(|(pack, entry)| (std::sync::Arc::from(pack.as_str()), entry))
        .collect();
    NewVersion {
        version: version.into(),
        size: 100,
        stored_size: 40,
        new_stored_size: 40,
        dedup_saved_bytes: 60,
        delta_saved_bytes: 5,
        blake3: "ab".repeat(32),
        chunk_count: chunks.len() as u64,
        created_by: "tester".into(),
        created_at: artifactd::domain::now_micros(),
        change_message: format!("release {version}"),
        metadata: BTreeMap::from([("owner".to_owned(), "pm".to_owned())]),
        content_type: "text/markdown".into(),
        extracted: r#"{"is_text":true,"line_count":3,"title":"PRD","headings":[],"front_matter":{},"top_level_keys":[],"truncated":false}"#.into(),
        manifest: artifactd::ingest::NewManifest::default(),
        new_chunks: chunks,
        reused_chunks: Vec::new(),
        packs,
        labels: None,
        state: LifecycleState::Draft,
        dependencies: Vec::new(),
        produced_by: None,
    }
}

fn stage<'a>(pack_id: &'a str, size: u64, upload_id: &'a str, at: i64) -> PackStage<'a> {
    PackStage {
        tenant: "acme",
        pack_id,
        size,
        upload_id,
        at,
    }
}

fn entry(id: u8, offset: u64) -> PackEntry {
    PackEntry {
        chunk_id: ChunkId([id; 32]),
        offset,
        stored_len: 10,
        raw_len: 20,
        codec: Codec::Zstd,
        base: None,
    }
}

async fn conformance(catalog: Catalog) {
    let dialect = catalog.dialect();
    let scope = Scope::new("acme", "payments");
    let other_tenant = Scope::new("globex", "payments");

    // The service secret is created once and then stable.
    let secret = catalog.service_secret().await.unwrap();
    assert_eq!(
        catalog.service_secret().await.unwrap(),
        secret,
        "{dialect:?}: secret is stable"
    );

    // A staged pack, then an artifact whose first version commits it with two chunks.
    let Staged::Recorded { generation } = catalog
        .stage_pack(&stage("pack-1", 1000, "upload-1", 1), None)
        .await
        .unwrap()
    else {
        panic!("a plain pack is always recorded")
    };
    assert_eq!(
        generation, 1,
        "{dialect:?}: a new row's generation is its staging time"
    );
    assert_eq!(catalog.packs_in_state("staged").await.unwrap().len(), 1);
    // Staging the same bytes again finds the same row, generation and all.
    assert_eq!(
        catalog
            .stage_pack(&stage("pack-1", 1000, "upload-9", 5), None)
            .await
            .unwrap(),
        Staged::Recorded { generation: 1 }
    );
    let artifact = new_artifact(&scope, "PRD.md");
    let (created, first) = catalog
        .create_artifact(
            &artifact,
            &new_version(
                "1.0.0",
                vec![("pack-1".into(), entry(1, 0)), ("pack-1".into(), entry(2, 10))],
                vec![StagedPack {
                    pack_id: "pack-1".into(),
                    generation,
                }],
            ),
        )
        .await
        .unwrap();
    assert_eq!(created.latest_version, "1.0.0");
    assert_eq!(created.version_count, 1);
    assert_eq!(created.tags.clone(), vec!["payments", "q3"]);
    assert_eq!(created.categories.clone(), vec!["epic-1"]);
    assert_eq!(created.metadata["owner"], "pm");
    assert_eq!(first.seq, 1);
    assert_eq!(
        catalog.packs_in_state("committed").await.unwrap().len(),
        1,
        "{dialect:?}: pack committed"
    );
    assert_eq!(catalog.committed_pack_bytes().await.unwrap(), 1000);

    // Chunk index: lookups are per tenant.
    let ids = [ChunkId([1; 32]), ChunkId([2; 32]), ChunkId([3; 32])];
    let known = catalog.known_chunks("acme", &ids).await.unwrap();
    assert_eq!(known.len(), 2, "{dialect:?}: known chunks");
    assert_eq!(known[&ChunkId([2; 32])], 10);
    assert!(
        catalog.known_chunks("globex", &ids).await.unwrap().is_empty(),
        "{dialect:?}: chunks are per tenant"
    );
    let locations = catalog.chunk_locations("acme", &ids).await.unwrap();
    assert_eq!(locations[&ChunkId([2; 32])].offset, 10);
    assert_eq!(locations[&ChunkId([2; 32])].codec, Codec::Zstd);
    assert_eq!(locations[&ChunkId([2; 32])].pack_id, "pack-1");

    // Lookups by id and by name are scoped.
    assert!(
        catalog
            .artifact_by_id(&scope, &created.id, false)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        catalog
            .artifact_by_id(&other_tenant, &created.id, false)
            .await
            .unwrap()
            .is_none(),
        "{dialect:?}: id lookups cross no tenants"
    );
    assert!(
        catalog
            .artifact_by_name(&scope, "prd", "PRD.md")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        catalog
            .artifact_by_name(&other_tenant, "prd", "PRD.md")
            .await
            .unwrap()
            .is_none()
    );

    // Duplicate names are refused and write nothing.
    let duplicate = catalog
        .create_artifact(
            &new_artifact(&scope, "PRD.md"),
            &new_version("1.0.0", vec![], vec![]),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(duplicate, Error::AlreadyExists(_)),
        "{dialect:?}: {duplicate:?}"
    );

    // A transaction that fails half-way leaves nothing: a chunk pointing at an unknown pack
    // violates a foreign key after the artifact row was written.
    let broken = catalog
        .create_artifact(
            &new_artifact(&scope, "broken.md"),
            &new_version("1.0.0", vec![("no-such-pack".into(), entry(9, 0))], vec![]),
        )
        .await;
    assert!(broken.is_err(), "{dialect:?}: the broken commit must fail");
    assert!(
        catalog
            .artifact_by_name(&scope, "prd", "broken.md")
            .await
            .unwrap()
            .is_none(),
        "{dialect:?}: a failed commit leaves no artifact"
    );

    // Compare-and-set: of two updates from 1.0.0 exactly one wins.
    let (minor, major) = (
        new_version("1.1.0", vec![], vec![]),
        new_version("2.0.0", vec![], vec![]),
    );
    let (a, b) = tokio::join!(
        catalog.add_version(&scope, &created.id, "1.0.0", &minor),
        catalog.add_version(&scope, &created.id, "1.0.0", &major),
    );
    let outcomes = [a.is_ok(), b.is_ok()];
    assert_eq!(
        outcomes.iter().filter(|ok| **ok).count(),
        1,
        "{dialect:?}: exactly one update wins: {a:?} {b:?}"
    );
    let loser = match (a, b) {
        (Err(error), Ok(_)) | (Ok(_), Err(error)) => error,
        other => panic!("{dialect:?}: expected one winner and one loser, got {other:?}"),
    };
    assert!(
        matches!(loser, Error::Aborted(_)),
        "{dialect:?}: the loser may retry: {loser:?}"
    );
    let current = catalog
        .artifact_by_id(&scope, &created.id, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(current.version_count, 2, "{dialect:?}: the loser wrote nothing");

    // More versions; listing newest first with paging by seq.
    let mut latest = current.latest_version.clone();
    for next in ["3.0.0", "3.1.0", "3.2.0"] {
        let (artifact, version) = catalog
            .add_version(&scope, &created.id, &latest, &new_version(next, vec![], vec![]))
            .await
            .unwrap();
        assert_eq!(artifact.latest_version, next);
        latest = version.version;
    }
    let page = catalog
        .list_versions(&created.id, &LifecycleState::ALL, None, 2)
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|v| v.version.as_str()).collect::<Vec<_>>(),
        ["3.2.0", "3.1.0"]
    );
    let rest = catalog
        .list_versions(&created.id, &LifecycleState::ALL, Some(page[1].seq), 10)
        .await
        .unwrap();
    assert_eq!(rest.len(), 3, "{dialect:?}: the rest of the versions");
    assert_eq!(rest.last().unwrap().version, "1.0.0");
    assert_eq!(catalog.manifest(&created.id, "1.0.0").await.unwrap(), vec![1]);
    assert_eq!(page[0].dedup_saved_bytes, 60, "{dialect:?}: savings read back");
    assert_eq!(page[0].delta_saved_bytes, 5);
    // Storage figures: the artifact's five versions, by artifact and by tenant.
    let stats = catalog
        .storage_stats(&scope, Some(&created.id.to_string()))
        .await
        .unwrap();
    assert_eq!(
        (
            stats.versions,
            stats.logical_bytes,
            stats.stored_bytes,
            stats.dedup_saved_bytes,
            stats.delta_saved_bytes
        ),
        (5, 500, 200, 300, 25),
        "{dialect:?}"
    );
    assert_eq!(stats.compression_saved_bytes(), 0);
    let tenants = catalog.tenant_storage_stats().await.unwrap();
    assert!(
        tenants
            .iter()
            .any(|(tenant, t)| tenant == &scope.tenant && t.versions >= 5),
        "{dialect:?}: {tenants:?}"
    );

    // Listing artifacts by name with a type filter and keyset paging.
    for name in ["b.md", "a.md", "c.md"] {
        let mut artifact = new_artifact(&scope, name);
        if name == "c.md" {
            artifact.artifact_type = "story".into();
        }
        catalog
            .create_artifact(&artifact, &new_version("0.1.0", vec![], vec![]))
            .await
            .unwrap();
    }
    let names =
        |records: &[artifactd::domain::Artifact]| records.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
    let first_page = catalog
        .list_artifacts(&scope, None, "", &LifecycleState::ALL, None, 2)
        .await
        .unwrap();
    assert_eq!(names(&first_page), ["PRD.md", "a.md"]);
    let last = first_page.last().unwrap();
    let second_page = catalog
        .list_artifacts(
            &scope,
            None,
            "",
            &LifecycleState::ALL,
            Some((&last.name, &last.id)),
            10,
        )
        .await
        .unwrap();
    assert_eq!(names(&second_page), ["b.md", "c.md"]);
    let stories = catalog
        .list_artifacts(&scope, Some("story"), "", &LifecycleState::ALL, None, 10)
        .await
        .unwrap();
    assert_eq!(names(&stories), ["c.md"]);
    assert!(
        catalog
            .list_artifacts(&other_tenant, None, "", &LifecycleState::ALL, None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Labels change without a version, or with one.
    let labels = Labels {
        tags: vec!["relabelled".into()],
        categories: vec![],
    };
    let relabelled = catalog
        .update_labels(&scope, &created.id, &labels, 5)
        .await
        .unwrap();
    assert_eq!(relabelled.tags.clone(), vec!["relabelled"]);
    assert!(relabelled.categories.clone().is_empty());
    assert_eq!(relabelled.version_count, 5, "{dialect:?}: no version was added");
    let mut with_labels = new_version("4.0.0", vec![], vec![]);
    with_labels.labels = Some(Labels {
        tags: vec!["v4".into()],
        categories: vec!["epic-9".into()],
    });
    let (after, _) = catalog
        .add_version(&scope, &created.id, &latest, &with_labels)
        .await
        .unwrap();
    assert_eq!(
        (after.tags.clone(), after.categories.clone()),
        (vec!["v4".to_owned()], vec!["epic-9".to_owned()])
    );
    let (kept, _) = catalog
        .add_version(
            &scope,
            &created.id,
            "4.0.0",
            &new_version("4.1.0", vec![], vec![]),
        )
        .await
        .unwrap();
    assert_eq!(
        kept.tags.clone(),
        vec!["v4"],
        "{dialect:?}: versions without labels keep them"
    );
    latest = "4.1.0".to_owned();
    let missing_labels = catalog
        .update_labels(&other_tenant, &created.id, &labels, 6)
        .await
        .unwrap_err();
    assert!(matches!(missing_labels, Error::NotFound(_)));

    // Soft delete hides; undelete within retention restores; outside it refuses.
    let deleted = catalog
        .soft_delete(&scope, &created.id, "tester", 1_000)
        .await
        .unwrap();
    assert_eq!(deleted.deleted_at, Some(artifactd::domain::Timestamp(1_000)));
    assert!(
        catalog
            .artifact_by_id(&scope, &created.id, false)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        catalog
            .artifact_by_id(&scope, &created.id, true)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        !names(
            &catalog
                .list_artifacts(&scope, None, "", &LifecycleState::ALL, None, 10)
                .await
                .unwrap()
        )
        .contains(&"PRD.md".to_owned())
    );
    let updating_deleted = catalog
        .add_version(
            &scope,
            &created.id,
            &latest,
            &new_version("9.0.0", vec![], vec![]),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(updating_deleted, Error::FailedPrecondition(_)),
        "{dialect:?}: {updating_deleted:?}"
    );
    let expired = catalog
        .undelete(&scope, &created.id, 2_000, 3_000)
        .await
        .unwrap_err();
    assert!(
        matches!(expired, Error::FailedPrecondition(ref m) if m.contains("retention")),
        "{dialect:?}: {expired:?}"
    );
    let restored = catalog.undelete(&scope, &created.id, 500, 3_000).await.unwrap();
    assert_eq!(restored.deleted_at, None);
    let not_deleted = catalog
        .undelete(&scope, &created.id, 500, 3_000)
        .await
        .unwrap_err();
    assert!(matches!(not_deleted, Error::FailedPrecondition(_)));
    let missing = catalog
        .soft_delete(&other_tenant, &created.id, "tester", 1)
        .await
        .unwrap_err();
    assert!(
        matches!(missing, Error::NotFound(_)),
        "{dialect:?}: deletes cross no tenants"
    );

    // Abandoned uploads: staged packs of the upload become garbage, committed ones stay.
    catalog
        .stage_pack(&stage("pack-2", 500, "upload-2", 2), None)
        .await
        .unwrap();
    catalog
        .stage_pack(&stage("pack-3", 500, "upload-2", 2), None)
        .await
        .unwrap();
    assert_eq!(catalog.abandon_upload("upload-2").await.unwrap(), 2);
    assert_eq!(
        catalog.abandon_upload("upload-1").await.unwrap(),
        0,
        "{dialect:?}: committed packs stay committed"
    );
    assert_eq!(catalog.packs_in_state("abandoned").await.unwrap().len(), 2);

    // The outbox records every change in commit order.
    let events = catalog.outbox_after(0, 100).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"artifact.created"));
    assert!(kinds.contains(&"artifact.labels_changed"), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "version.created").count(),
        6,
        "{dialect:?}: {kinds:?}"
    );
    assert!(
        kinds.ends_with(&["artifact.deleted", "artifact.undeleted"]),
        "{dialect:?}: {kinds:?}"
    );
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    let tail = catalog.outbox_after(events[2].seq, 100).await.unwrap();
    assert_eq!(tail.len(), events.len() - 3);

    catalog.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_catalog_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
    let catalog = Catalog::connect(&url, 4).await.unwrap();
    assert_eq!(catalog.dialect(), Dialect::Sqlite);
    conformance(catalog.clone()).await;
    catalog.close().await;
    // Reopening runs no migration twice and keeps the data.
    let reopened = Catalog::connect(&url, 4).await.unwrap();
    assert!(
        reopened
            .artifact_by_name(&Scope::new("acme", "payments"), "prd", "PRD.md")
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_catalog_conforms() {
    let database = TestDatabase::create().await;
    let catalog = Catalog::connect(&database.url, 4).await.unwrap();
    assert_eq!(catalog.dialect(), Dialect::Postgres);
    conformance(catalog.clone()).await;
    catalog.close().await;
    let reopened = Catalog::connect(&database.url, 4).await.unwrap();
    assert!(
        reopened
            .artifact_by_name(&Scope::new("acme", "payments"), "prd", "PRD.md")
            .await
            .unwrap()
            .is_some()
    );
    reopened.close().await;
    database.drop_database().await;
}

#[tokio::test]
async fn unknown_catalog_urls_are_refused() {
    let error = Catalog::connect("mysql://localhost/x", 1).await.unwrap_err();
    assert!(error.to_string().contains("catalog.url"), "{error}");
}

/// Links and creations of one type and name in one project race at the catalog, many
/// rounds at once: exactly one of each round commits, whatever the interleaving.
async fn a_name_goes_to_one_of_racing_links_and_creations(catalog: Catalog) {
    const ROUNDS: usize = 60;
    let home = Scope::new("acme", "home");
    let shared = Scope::new("acme", "shared");
    let mut origins = Vec::new();
    for round in 0..ROUNDS {
        let origin = new_artifact(&home, &format!("prd-{round}.md"));
        let (created, _) = catalog
            .create_artifact(&origin, &new_version("1.0.0", Vec::new(), Vec::new()))
            .await
            .unwrap();
        origins.push(created);
    }
    let mut attempts = tokio::task::JoinSet::new();
    for (round, origin) in origins.into_iter().enumerate() {
        for contender in 0..4 {
            let catalog = catalog.clone();
            let shared = shared.clone();
            let origin = origin.clone();
            attempts.spawn(async move {
                let outcome = if contender % 2 == 0 {
                    catalog
                        .link_artifact(&shared, &origin, "linker", artifactd::domain::now_micros())
                        .await
                } else {
                    let own = new_artifact(&shared, &origin.name);
                    catalog
                        .create_artifact(&own, &new_version("1.0.0", Vec::new(), Vec::new()))
                        .await
                        .map(|_| ())
                };
                (round, outcome)
            });
        }
    }
    let mut won = vec![0; ROUNDS];
    while let Some(joined) = attempts.join_next().await {
        let (round, outcome) = joined.unwrap();
        match outcome {
            Ok(()) => won[round] += 1,
            // Both are refusals that say the name is taken; a busy catalog may also say retry.
            Err(Error::AlreadyExists(_) | Error::Aborted(_) | Error::Unavailable(_)) => {}
            Err(other) => panic!("round {round}: unexpected {other:?}"),
        }
    }
    for (round, count) in won.iter().enumerate() {
        assert_eq!(
            *count, 1,
            "round {round}: exactly one of the racing link and creations wins"
        );
    }
    let shown = catalog
        .list_artifacts(&shared, None, "", &[LifecycleState::Draft], None, 1000)
        .await
        .unwrap();
    assert_eq!(shown.len(), ROUNDS, "one artifact per name in the project");

    // Names that are paths list by folder, sub-folders included, on both dialects.
    let paths = Scope::new("acme", "paths");
    for name in [
        "docs/stories/1.1.md",
        "docs/prd.md",
        "docsx/other.md",
        "README.md",
        "docs/stories/é.md",
    ] {
        catalog
            .create_artifact(
                &new_artifact(&paths, name),
                &new_version("1.0.0", Vec::new(), Vec::new()),
            )
            .await
            .unwrap();
    }
    for (prefix, expected) in [
        (
            "docs/",
            vec!["docs/prd.md", "docs/stories/1.1.md", "docs/stories/é.md"],
        ),
        ("docs/stories/", vec!["docs/stories/1.1.md", "docs/stories/é.md"]),
        (
            "",
            vec![
                "README.md",
                "docs/prd.md",
                "docs/stories/1.1.md",
                "docs/stories/é.md",
                "docsx/other.md",
            ],
        ),
    ] {
        let mut listed: Vec<String> = catalog
            .list_artifacts(&paths, None, prefix, &[LifecycleState::Draft], None, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.name)
            .collect();
        listed.sort();
        assert_eq!(listed, expected, "{prefix:?}");
    }
}

on_both_catalogs!(
    a_name_goes_to_one_of_racing_links_and_creations,
    8,
    a_name_goes_to_one_of_racing_links_and_creations_on_sqlite,
    a_name_goes_to_one_of_racing_links_and_creations_on_postgres
);

/// A pack id as the collector needs it: 64 hex digits.
const PACK_A: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";

/// The collector's meeting points with uploads and policies, at the catalog:
/// - a pack collected and then staged again from the same bytes is a new generation, and the
///   upload that staged the old one cannot commit against it;
/// - a policy's decision is re-made under the artifact's lock: one planned before a version
///   was trashed is not carried out when the policy would now keep the version.
async fn collection_meets_uploads_and_policies(catalog: Catalog) {
    use artifactd::catalog::GcPack;
    use artifactd::domain::retention::{PolicySpec, Verdict};
    let dialect = catalog.dialect();
    let scope = Scope::new("acme", "gc");
    let holder = "test-collector";
    let now = artifactd::domain::now_micros();
    assert_eq!(
        catalog
            .take_lease("gc", holder, now, now + 60_000_000)
            .await
            .unwrap(),
        None
    );
    assert!(
        catalog
            .take_lease("gc", "another", now, now + 60_000_000)
            .await
            .unwrap()
            .is_some(),
        "{dialect:?}: one holder at a time"
    );

    // An upload stages pack-a (generation 100); the collector marks and sweeps it.
    let Staged::Recorded { generation } = catalog
        .stage_pack(&stage(PACK_A, 64, "slow-upload", 100), None)
        .await
        .unwrap()
    else {
        panic!("recorded")
    };
    catalog
        .update_marks(holder, &[PACK_A.to_owned()], &[], 200)
        .await
        .unwrap();
    let pack = GcPack {
        pack_id: PACK_A.into(),
        tenant: "acme".into(),
        size: 64,
        state: "staged".into(),
        created_at: 100,
        sealed: false,
    };
    assert!(
        catalog.sweep_pack(holder, &pack, 300, 400).await.unwrap(),
        "{dialect:?}: swept"
    );
    assert_eq!(catalog.tombstones().await.unwrap().len(), 1);
    // Another upload makes the same bytes again: a new row, and its tombstone is gone.
    let again = catalog
        .stage_pack(&stage(PACK_A, 64, "second-upload", 500), None)
        .await
        .unwrap();
    assert_eq!(again, Staged::Recorded { generation: 500 });
    assert!(
        catalog.tombstones().await.unwrap().is_empty(),
        "{dialect:?}: revived"
    );
    // The slow upload tries to commit against the row it staged: refused, nothing written.
    let refused = catalog
        .create_artifact(
            &new_artifact(&scope, "slow.md"),
            &new_version(
                "1.0.0",
                vec![(PACK_A.into(), entry(7, 0))],
                vec![StagedPack {
                    pack_id: PACK_A.into(),
                    generation,
                }],
            ),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(refused, artifactd::domain::Error::Aborted(_)),
        "{dialect:?}: {refused:?}"
    );
    // The upload that made it again commits.
    catalog
        .create_artifact(
            &new_artifact(&scope, "second.md"),
            &new_version(
                "1.0.0",
                vec![(PACK_A.into(), entry(7, 0))],
                vec![StagedPack {
                    pack_id: PACK_A.into(),
                    generation: 500,
                }],
            ),
        )
        .await
        .expect("the new generation commits");

    // A policy keeping the newest two, planned on versions 1.0.0 to 1.0.3 (1.0.0 and 1.0.1
    // go); then 1.0.2 is trashed by hand, so under the lock the policy keeps 1.0.1.
    let (artifact, _) = catalog
        .create_artifact(
            &new_artifact(&scope, "policy.md"),
            &new_version("1.0.0", vec![], vec![]),
        )
        .await
        .unwrap();
    let mut latest = "1.0.0".to_owned();
    for next in ["1.0.1", "1.0.2", "1.0.3"] {
        catalog
            .add_version(&scope, &artifact.id, &latest, &new_version(next, vec![], vec![]))
            .await
            .unwrap();
        latest = next.to_owned();
    }
    let policy = PolicySpec::from_document("action: delete\nkeep: {latest: 2}\n")
        .unwrap()
        .compile()
        .unwrap();
    let planned_at = artifactd::domain::now_micros();
    let facts = catalog.retention_facts(&scope, "", 100).await.unwrap();
    let facts = facts
        .iter()
        .find(|f| f.artifact_id == artifact.id.as_str())
        .unwrap();
    let plan: Vec<_> = policy
        .evaluate(facts, planned_at)
        .into_iter()
        .filter(|d| d.verdict == Verdict::Delete)
        .collect();
    let planned: Vec<&str> = plan.iter().map(|d| d.version.as_str()).collect();
    assert_eq!(planned, ["1.0.1", "1.0.0"], "{dialect:?}");
    catalog
        .delete_version(&scope, &artifact.id, "1.0.2", "someone", planned_at)
        .await
        .unwrap();
    let skipped = catalog
        .apply_retention(
            &scope, &plan[0], "keep-two", &policy, planned_at, "policy", planned_at,
        )
        .await
        .unwrap();
    assert!(
        skipped.as_deref().is_some_and(|why| why.contains("keep.latest")),
        "{dialect:?}: {skipped:?}"
    );
    let applied = catalog
        .apply_retention(
            &scope, &plan[1], "keep-two", &policy, planned_at, "policy", planned_at,
        )
        .await
        .unwrap();
    assert_eq!(applied, None, "{dialect:?}: 1.0.0 still goes");
    catalog.release_lease("gc", holder).await.unwrap();
}

on_both_catalogs!(
    collection_meets_uploads_and_policies,
    4,
    collection_meets_uploads_and_policies_on_sqlite,
    collection_meets_uploads_and_policies_on_postgres
);

/// Two uploads of the same new chunk both store it, each in its own pack; the first
/// to commit indexes it. The second commits too, its copy unindexed, and takes the chunk
/// through the winner's pack: a collection that had marked the winner's pack meanwhile
/// (its own version deleted, say) must find the mark gone and keep the pack.
async fn a_chunk_two_uploads_stored_is_kept_in_the_winners_pack(catalog: Catalog) {
    use artifactd::catalog::GcPack;
    let dialect = catalog.dialect();
    let scope = Scope::new("acme", "race");
    let holder = "race-collector";
    let now = artifactd::domain::now_micros();
    assert_eq!(
        catalog
            .take_lease("gc", holder, now, now + 60_000_000)
            .await
            .unwrap(),
        None
    );
    let id = |n: u32| {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(&n.to_be_bytes());
        // Spread over the key space, so sorting reorders them.
        bytes[4..8].copy_from_slice(&n.wrapping_mul(0x9E37_79B9).to_be_bytes());
        bytes.reverse();
        ChunkId(bytes)
    };
    let chunk = |n: u32, offset: u64| PackEntry {
        chunk_id: id(n),
        offset,
        stored_len: 10,
        raw_len: 20,
        codec: Codec::Raw,
        base: None,
    };
    let Staged::Recorded { generation: won } = catalog
        .stage_pack(&stage(PACK_WINNER, 64, "winner", now), None)
        .await
        .unwrap()
    else {
        panic!("recorded")
    };
    catalog
        .create_artifact(
            &new_artifact(&scope, "winner.md"),
            &new_version(
                "1.0.0",
                vec![
                    (PACK_WINNER.into(), chunk(1000, 0)),
                    (PACK_WINNER.into(), chunk(1001, 10)),
                ],
                vec![StagedPack {
                    pack_id: PACK_WINNER.into(),
                    generation: won,
                }],
            ),
        )
        .await
        .unwrap();
    // The other upload stored 450 new chunks (three statements' worth), two of them the
    // winner's, in the middle of the content.
    let Staged::Recorded { generation: lost } = catalog
        .stage_pack(&stage(PACK_LOSER, 64, "loser", now + 1), None)
        .await
        .unwrap()
    else {
        panic!("recorded")
    };
    let mut chunks: Vec<(String, PackEntry)> = (0..450u32)
        .map(|n| (PACK_LOSER.to_owned(), chunk(n, u64::from(n) * 10)))
        .collect();
    chunks[210].1.chunk_id = id(1000);
    chunks[333].1.chunk_id = id(1001);
    let mut version = new_version(
        "1.0.0",
        chunks.clone(),
        vec![StagedPack {
            pack_id: PACK_LOSER.into(),
            generation: lost,
        }],
    );
    version.chunk_count = chunks.len() as u64;
    catalog
        .update_marks(holder, &[PACK_WINNER.to_owned()], &[], now + 2)
        .await
        .unwrap();
    catalog
        .create_artifact(&new_artifact(&scope, "loser.md"), &version)
        .await
        .expect("the second upload commits too");
    let winner = GcPack {
        pack_id: PACK_WINNER.into(),
        tenant: "acme".into(),
        size: 64,
        state: "committed".into(),
        created_at: now,
        sealed: false,
    };
    assert!(
        !catalog
            .sweep_pack(holder, &winner, now + 3, now + 4)
            .await
            .unwrap(),
        "{dialect:?}: the winner's pack holds chunks of the second version: its mark was taken"
    );
    let ids: Vec<ChunkId> = chunks.iter().map(|(_, entry)| entry.chunk_id).collect();
    let found = catalog.chunk_locations("acme", &ids).await.unwrap();
    assert_eq!(found.len(), chunks.len(), "{dialect:?}: every chunk is indexed");
    for (at, (_, entry)) in chunks.iter().enumerate() {
        let location = &found[&entry.chunk_id];
        let (pack, offset) = match at {
            210 => (PACK_WINNER, 0),
            333 => (PACK_WINNER, 10),
            _ => (PACK_LOSER, entry.offset),
        };
        assert_eq!(
            (location.pack_id.as_str(), location.offset),
            (pack, offset),
            "{dialect:?}: chunk {at}"
        );
    }
    catalog.release_lease("gc", holder).await.unwrap();
}

const PACK_WINNER: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
const PACK_LOSER: &str = "c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3";

on_both_catalogs!(
    a_chunk_two_uploads_stored_is_kept_in_the_winners_pack,
    4,
    a_chunk_two_uploads_stored_is_kept_in_the_winners_pack_on_sqlite,
    a_chunk_two_uploads_stored_is_kept_in_the_winners_pack_on_postgres
);

/// A manifest of `len` chunks; `changed` entries get other chunk ids.
fn long_manifest(len: u64, changed: &[u64], salt: u64) -> artifactd::ingest::Manifest {
    (0..len)
        .map(|n| {
            let seed = if changed.contains(&n) {
                n + 1_000_000 * (salt + 1)
            } else {
                n
            };
            artifactd::ingest::ManifestEntry {
                chunk_id: ChunkId(*blake3::hash(&seed.to_le_bytes()).as_bytes()),
                raw_len: 16384,
            }
        })
        .collect()
}

/// Long manifests are stored as segments shared between versions: a one-chunk edit of a
/// 4,096-chunk artifact adds a few KB, not a 147 KB chunk list; every version reads its
/// manifest back whole; counts stay exact under concurrent commits and purges, and purging
/// the last version naming a segment deletes it.
async fn long_manifests_share_segments(catalog: Catalog) {
    let dialect = catalog.dialect();
    let scope = Scope::new("acme", "segments");
    let now = artifactd::domain::now_micros();
    let mut v1 = new_version("1.0.0", Vec::new(), Vec::new());
    let v1_manifest = long_manifest(4096, &[], 0);
    v1.manifest = v1_manifest.clone().into();
    let whole_len = v1_manifest.encoded().len() as u64;
    let (artifact, _) = catalog
        .create_artifact(&new_artifact(&scope, "big.bin"), &v1)
        .await
        .unwrap();
    let first = catalog.audit_shared_rows().await.unwrap();
    assert!(first.problems.is_empty(), "{dialect:?}: {:?}", first.problems);
    assert!(
        first.segments >= 16 && first.row_bytes < whole_len / 20,
        "{dialect:?}: {first:?}"
    );
    let mut v2 = new_version("1.1.0", Vec::new(), Vec::new());
    let v2_manifest = long_manifest(4096, &[2000], 0);
    v2.manifest = v2_manifest.clone().into();
    catalog
        .add_version(&scope, &artifact.id, "1.0.0", &v2)
        .await
        .unwrap();
    let second = catalog.audit_shared_rows().await.unwrap();
    let added = (second.bytes + second.row_bytes) - (first.bytes + first.row_bytes);
    eprintln!(
        "{dialect:?}: a one-chunk edit of 4,096 chunks added {added} catalog bytes ({} segments)",
        first.segments
    );
    assert!(
        added < 12_000,
        "{dialect:?}: a one-chunk edit added {added} catalog bytes (the whole manifest is {whole_len})"
    );
    for (version, manifest) in [("1.0.0", &v1_manifest), ("1.1.0", &v2_manifest)] {
        assert_eq!(
            catalog.manifest(&artifact.id, version).await.unwrap(),
            manifest.encoded().to_vec(),
            "{dialect:?}: {version} reads back whole"
        );
    }

    // Concurrent commits of versions sharing segments, in several artifacts, then purges.
    let mut tasks = Vec::new();
    for writer in 0..6u64 {
        let catalog = catalog.clone();
        let scope = scope.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("copy-{writer}.bin");
            let mut first = new_version("1.0.0", Vec::new(), Vec::new());
            let first_manifest = long_manifest(4096, &[writer * 500], writer);
            first.manifest = first_manifest.clone().into();
            let (artifact, _) = catalog
                .create_artifact(&new_artifact(&scope, &name), &first)
                .await
                .unwrap();
            for step in 1..4u64 {
                let mut next = new_version(&format!("1.{step}.0"), Vec::new(), Vec::new());
                let next_manifest = long_manifest(4096, &[writer * 500, step * 997], writer * 10 + step);
                next.manifest = next_manifest.clone().into();
                catalog
                    .add_version(&scope, &artifact.id, &format!("1.{}.0", step - 1), &next)
                    .await
                    .unwrap();
                let old = format!("1.{}.0", step - 1);
                catalog
                    .delete_version(&scope, &artifact.id, &old, "tester", now)
                    .await
                    .unwrap();
                assert!(
                    catalog
                        .purge(&scope, &artifact.id, Some(&old), now)
                        .await
                        .unwrap()
                );
                let read = catalog
                    .manifest(&artifact.id, &format!("1.{step}.0"))
                    .await
                    .unwrap();
                assert_eq!(read, next_manifest.encoded().to_vec());
            }
            artifact.id
        }));
    }
    let mut copies = Vec::new();
    for task in tasks {
        copies.push(task.await.unwrap());
    }
    let busy = catalog.audit_shared_rows().await.unwrap();
    assert!(busy.problems.is_empty(), "{dialect:?}: {:?}", busy.problems);

    // Read a part at a time (as downloads read), every version reads back whole too.
    for (version, manifest) in [("1.0.0", &v1_manifest), ("1.1.0", &v2_manifest)] {
        let mut reader = catalog.manifest_reader(&artifact.id, version).await.unwrap();
        let mut parts = 0;
        let mut entries = Vec::new();
        while let Some(part) = reader.next_part().await.unwrap() {
            parts += 1;
            entries.extend(part.entries());
        }
        assert!(parts > 1, "{dialect:?}: {version} was read in {parts} part");
        assert_eq!(
            entries,
            manifest.entries().collect::<Vec<_>>(),
            "{dialect:?}: {version}"
        );
    }
    // Purging the older version deletes only the segments no other version names.
    catalog
        .delete_version(&scope, &artifact.id, "1.0.0", "tester", now)
        .await
        .unwrap();
    assert!(
        catalog
            .purge(&scope, &artifact.id, Some("1.0.0"), now)
            .await
            .unwrap()
    );
    assert_eq!(
        catalog.manifest(&artifact.id, "1.1.0").await.unwrap(),
        v2_manifest.encoded().to_vec()
    );
    // A reader of 1.1.0 that has begun, then everything is purged: its segments are gone,
    // and the reader says the version was purged rather than damaged.
    let mut reader = catalog.manifest_reader(&artifact.id, "1.1.0").await.unwrap();
    reader.next_part().await.unwrap().expect("a first part");
    // Every artifact deleted and purged: no segment is left.
    for id in copies.iter().chain([&artifact.id]) {
        catalog.soft_delete(&scope, id, "tester", now).await.unwrap();
        assert!(catalog.purge(&scope, id, None, now).await.unwrap());
    }
    let end = catalog.audit_shared_rows().await.unwrap();
    assert!(end.problems.is_empty(), "{dialect:?}: {:?}", end.problems);
    assert_eq!(end.segments, 0, "{dialect:?}: segments outlived every version");
    let purged = loop {
        match reader.next_part().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("{dialect:?}: a purged version's manifest read to its end"),
            Err(error) => break error,
        }
    };
    assert!(
        matches!(purged, artifactd::domain::Error::NotFound(_)) && purged.to_string().contains("purged"),
        "{dialect:?}: {purged}"
    );
}

on_both_catalogs!(
    long_manifests_share_segments,
    8,
    long_manifests_share_segments_on_sqlite,
    long_manifests_share_segments_on_postgres
);

/// A read from an offset deep into a long manifest starts at the segment holding that byte:
/// what it reads is the manifest from that segment on, and little of what comes before.
async fn manifests_are_read_from_an_offset(catalog: Catalog) {
    let dialect = catalog.dialect();
    let scope = Scope::new("acme", "offsets");
    let manifest: artifactd::ingest::Manifest = (0..3000u64)
        .map(|n| artifactd::ingest::ManifestEntry {
            chunk_id: ChunkId(*blake3::hash(&n.to_le_bytes()).as_bytes()),
            raw_len: 1000 + (n * 7919 % 30_000) as u32,
        })
        .collect();
    let entries: Vec<_> = manifest.entries().collect();
    let mut starts = vec![0u64];
    for entry in &entries {
        starts.push(starts.last().unwrap() + u64::from(entry.raw_len));
    }
    let total = *starts.last().unwrap();
    let mut version = new_version("1.0.0", Vec::new(), Vec::new());
    version.manifest = manifest.clone().into();
    let (artifact, _) = catalog
        .create_artifact(&new_artifact(&scope, "offsets.bin"), &version)
        .await
        .unwrap();
    for offset in [0, 1, total / 3, total * 9 / 10, total - 1, total] {
        let (mut reader, position) = catalog
            .manifest_reader_from(&artifact.id, "1.0.0", offset)
            .await
            .unwrap();
        let mut read = Vec::new();
        while let Some(part) = reader.next_part().await.unwrap() {
            read.extend(part.entries());
        }
        let first = starts
            .iter()
            .position(|start| *start == position)
            .unwrap_or_else(|| panic!("{dialect:?}: {position} is no entry's start"));
        assert_eq!(read, entries[first..], "{dialect:?}: read from {offset}");
        assert!(position <= offset, "{dialect:?}: {offset} read from {position}");
        if offset < total {
            assert!(
                offset - position < 257 * 31_000,
                "{dialect:?}: the read from {offset} began {} bytes before it, more than a segment",
                offset - position
            );
        } else {
            assert!(
                read.is_empty(),
                "{dialect:?}: a read from the end read {}",
                read.len()
            );
        }
    }
}

on_both_catalogs!(
    manifests_are_read_from_an_offset,
    8,
    manifests_are_read_from_an_offset_on_sqlite,
    manifests_are_read_from_an_offset_on_postgres
);

/// Rows written before manifests gave their segments' lengths (form 2: the ids alone) are
/// still read whole and from any offset (from their start), and counted by the audit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_segment_ids_alone_are_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
    let catalog = Catalog::connect(&url, 2).await.unwrap();
    let scope = Scope::new("acme", "legacy");
    let manifest = long_manifest(2000, &[], 3);
    let mut version = new_version("1.0.0", Vec::new(), Vec::new());
    version.manifest = manifest.clone().into();
    let (artifact, _) = catalog
        .create_artifact(&new_artifact(&scope, "legacy.bin"), &version)
        .await
        .unwrap();
    // The row as the earlier form wrote it: tag 2, then each segment's 32-byte id.
    let raw = sqlx::sqlite::SqlitePool::connect(&url).await.unwrap();
    let (row,): (Vec<u8>,) = sqlx::query_as("SELECT manifest FROM versions WHERE artifact_id = ?")
        .bind(artifact.id.as_str())
        .fetch_one(&raw)
        .await
        .unwrap();
    assert_eq!(
        row[0], 3,
        "long manifests are written with their segments' lengths"
    );
    let mut legacy = vec![2u8];
    for record in row[1..].chunks_exact(40) {
        legacy.extend_from_slice(&record[..32]);
    }
    sqlx::query("UPDATE versions SET manifest = ? WHERE artifact_id = ?")
        .bind(&legacy)
        .bind(artifact.id.as_str())
        .execute(&raw)
        .await
        .unwrap();
    raw.close().await;

    assert_eq!(
        catalog.manifest(&artifact.id, "1.0.0").await.unwrap(),
        manifest.encoded().to_vec()
    );
    let (mut reader, position) = catalog
        .manifest_reader_from(&artifact.id, "1.0.0", 16384 * 1500)
        .await
        .unwrap();
    assert_eq!(position, 0, "a row without lengths is read from its start");
    let mut read = Vec::new();
    while let Some(part) = reader.next_part().await.unwrap() {
        read.extend(part.entries());
    }
    assert_eq!(read, manifest.entries().collect::<Vec<_>>());
    let audit = catalog.audit_shared_rows().await.unwrap();
    assert!(audit.problems.is_empty() && audit.segments > 16, "{audit:?}");
}

/// Extracted metadata that only differs in its line count is stored once and read back
/// with each version's own count; purging the last version naming it deletes it.
async fn extracted_metadata_is_shared(catalog: Catalog) {
    let dialect = catalog.dialect();
    let scope = Scope::new("acme", "extracted");
    let now = artifactd::domain::now_micros();
    let extracted = |lines: u64, extra: &str| {
        let mut headings: Vec<String> = (0..40).map(|n| format!("Functional requirement {n}")).collect();
        headings.push(extra.to_owned());
        serde_json::to_string(&artifactd::ingest::extract::Extracted {
            is_text: true,
            line_count: lines,
            title: Some("Product requirements".into()),
            headings,
            ..Default::default()
        })
        .unwrap()
    };
    let versions = [
        ("1.0.0", extracted(100, "Scope")),
        ("1.1.0", extracted(104, "Scope")),
        ("1.2.0", extracted(111, "Scope")),
        ("1.3.0", extracted(111, "Scope and limits")),
    ];
    let mut artifact_id: Option<String> = None;
    let mut latest = String::new();
    for (version, document) in &versions {
        let mut new = new_version(version, Vec::new(), Vec::new());
        new.extracted = document.clone();
        artifact_id = Some(match &artifact_id {
            None => catalog
                .create_artifact(&new_artifact(&scope, "prd.md"), &new)
                .await
                .unwrap()
                .0
                .id
                .to_string(),
            Some(id) => {
                catalog.add_version(&scope, id, &latest, &new).await.unwrap();
                id.clone()
            }
        });
        latest = version.to_string();
    }
    let id = artifact_id.unwrap();
    for (version, document) in &versions {
        let read = catalog.version(&id, version).await.unwrap().unwrap();
        assert_eq!(
            read.extracted,
            serde_json::from_str::<artifactd::ingest::extract::Extracted>(document).unwrap(),
            "{dialect:?}: {version} reads its own extracted metadata"
        );
    }
    let audit = catalog.audit_shared_rows().await.unwrap();
    assert!(audit.problems.is_empty(), "{dialect:?}: {:?}", audit.problems);
    assert_eq!(
        audit.documents, 2,
        "{dialect:?}: three versions share one document"
    );
    for version in ["1.0.0", "1.1.0", "1.2.0"] {
        catalog
            .delete_version(&scope, &id, version, "tester", now)
            .await
            .unwrap();
        assert!(catalog.purge(&scope, &id, Some(version), now).await.unwrap());
    }
    let audit = catalog.audit_shared_rows().await.unwrap();
    assert!(audit.problems.is_empty(), "{dialect:?}: {:?}", audit.problems);
    assert_eq!(
        audit.documents, 1,
        "{dialect:?}: the shared document went with its versions"
    );
}

on_both_catalogs!(
    extracted_metadata_is_shared,
    4,
    extracted_metadata_is_shared_on_sqlite,
    extracted_metadata_is_shared_on_postgres
);

/// Stored chunks are found by any one shared feature of their resemblance sketch, within
/// their tenant, unless collection marked their pack unneeded.
async fn similar_chunks_are_found_by_a_shared_feature(catalog: Catalog) {
    use artifactd::ingest::resemblance::Sketch;
    let dialect = catalog.dialect();
    let scope = Scope::new("acme", "similar");
    let now = artifactd::domain::now_micros();
    let Staged::Recorded { .. } = catalog
        .stage_pack(&stage("pack-s", 1000, "upload-s", now), None)
        .await
        .unwrap()
    else {
        panic!("recorded")
    };
    let mut version = new_version(
        "1.0.0",
        vec![("pack-s".into(), entry(1, 0)), ("pack-s".into(), entry(2, 10))],
        vec![StagedPack {
            pack_id: "pack-s".into(),
            generation: now,
        }],
    );
    version.new_chunks.set_sketch(0, Sketch([11, 12, 13, 14]));
    catalog
        .create_artifact(&new_artifact(&scope, "similar.md"), &version)
        .await
        .unwrap();
    let found = catalog
        .similar_chunks(
            "acme",
            // Three sketches: the lists are padded to four with the last one repeated.
            &[
                Sketch([99, 98, 13, 97]),
                Sketch([1, 2, 3, 4]),
                Sketch([5, 6, 7, 8]),
            ],
        )
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "{dialect:?}: {found:?}");
    assert_eq!(found[0].chunk_id, entry(1, 0).chunk_id);
    assert_eq!(found[0].sketch, Sketch([11, 12, 13, 14]));
    assert!(
        catalog
            .similar_chunks("globex", &[Sketch([11, 12, 13, 14])])
            .await
            .unwrap()
            .is_empty(),
        "{dialect:?}: another tenant's chunks are not found"
    );
    catalog
        .take_lease("gc", "collector", now, now + 60_000_000)
        .await
        .unwrap();
    catalog
        .update_marks("collector", &["pack-s".to_owned()], &[], now)
        .await
        .unwrap();
    assert!(
        catalog
            .similar_chunks("acme", &[Sketch([11, 12, 13, 14])])
            .await
            .unwrap()
            .is_empty(),
        "{dialect:?}: chunks of a pack marked unneeded are not proposed as bases"
    );
}

on_both_catalogs!(
    similar_chunks_are_found_by_a_shared_feature,
    4,
    similar_chunks_are_found_by_a_shared_feature_on_sqlite,
    similar_chunks_are_found_by_a_shared_feature_on_postgres
);

/// A chunk's location comes back whole (pack, offset, lengths, codec, a delta's base and
/// depth, no key for a plain pack), for the chunks of the tenant asked about only.
async fn chunk_locations_carry_every_field(catalog: Catalog) {
    use artifactd::catalog::ChunkLocation;
    let dialect = catalog.dialect();
    let scope = Scope::new("acme", "locations");
    let now = artifactd::domain::now_micros();
    let Staged::Recorded { generation } = catalog
        .stage_pack(&stage("pack-l", 1000, "upload-l", now), None)
        .await
        .unwrap()
    else {
        panic!("recorded")
    };
    let plain = PackEntry {
        chunk_id: ChunkId([7; 32]),
        offset: 0,
        stored_len: 90,
        raw_len: 4096,
        codec: Codec::Zstd,
        base: None,
    };
    let delta = PackEntry {
        chunk_id: ChunkId([8; 32]),
        offset: 90,
        stored_len: 12,
        raw_len: 4100,
        codec: Codec::ZstdDelta,
        base: Some(plain.chunk_id),
    };
    let version = new_version(
        "1.0.0",
        vec![("pack-l".into(), plain), ("pack-l".into(), delta)],
        vec![StagedPack {
            pack_id: "pack-l".into(),
            generation,
        }],
    );
    catalog
        .create_artifact(&new_artifact(&scope, "locations.md"), &version)
        .await
        .unwrap();
    let absent = ChunkId([9; 32]);
    let found = catalog
        .chunk_locations("acme", &[delta.chunk_id, plain.chunk_id, absent, plain.chunk_id])
        .await
        .unwrap();
    let location = |entry: &PackEntry, base: Option<ChunkId>, depth: u8| ChunkLocation {
        pack_id: "pack-l".into(),
        offset: entry.offset,
        stored_len: entry.stored_len,
        raw_len: entry.raw_len,
        codec: entry.codec,
        key: None,
        base,
        depth,
    };
    assert_eq!(found.len(), 2, "{dialect:?}: {found:?}");
    assert_eq!(found[&plain.chunk_id], location(&plain, None, 0), "{dialect:?}");
    assert_eq!(
        found[&delta.chunk_id],
        location(&delta, Some(plain.chunk_id), 1),
        "{dialect:?}"
    );
    assert!(
        catalog
            .chunk_locations("globex", &[plain.chunk_id])
            .await
            .unwrap()
            .is_empty(),
        "{dialect:?}: another tenant's chunks are not found"
    );
    assert!(
        catalog.chunk_locations("acme", &[]).await.unwrap().is_empty(),
        "{dialect:?}: no ids, no locations"
    );
}

on_both_catalogs!(
    chunk_locations_carry_every_field,
    2,
    chunk_locations_carry_every_field_on_sqlite,
    chunk_locations_carry_every_field_on_postgres
);
