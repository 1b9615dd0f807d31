//! Lifecycle states, aliases, change history and diffs, over gRPC against the built binary,
//! on both catalogs; the races (concurrent transitions, approve against delete, alias moves)
//! under concurrent load.

mod common;

use artifactd::proto::search_service_client::SearchServiceClient;
use artifactd::proto::{
    self, DeleteAliasRequest, DiffVersionsRequest, GetChangeHistoryRequest, ListAliasesRequest,
    ListArtifactsRequest, ListVersionsRequest, MetadataFilter, SearchByMetadataRequest, SearchRequest,
    SetAliasRequest, TransitionVersionRequest, metadata_filter,
};
use common::client::{
    Client, assert_status, create, create_id, download, download_request, header, update, update_header,
};
use proto::LifecycleState::{Approved, Archived, Draft, Review};
use tonic::Code;

const T: &str = "acme";
const P: &str = "lifecycle";

fn move_to(id: &str, version: &str, target: proto::LifecycleState) -> TransitionVersionRequest {
    TransitionVersionRequest {
        tenant: T.into(),
        project: P.into(),
        artifact_id: id.into(),
        version: version.into(),
        target_state: target as i32,
        ..Default::default()
    }
}

async fn state_of(client: &mut Client, id: &str, version: &str) -> i32 {
    client
        .get_artifact(proto::GetArtifactRequest {
            tenant: T.into(),
            project: P.into(),
            selector: Some(proto::get_artifact_request::Selector::ArtifactId(id.into())),
            version: version.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap()
        .state
}

async fn versions_listed(client: &mut Client, id: &str, states: &[proto::LifecycleState]) -> Vec<String> {
    client
        .list_versions(ListVersionsRequest {
            tenant: T.into(),
            project: P.into(),
            artifact_id: id.into(),
            states: states.iter().map(|s| *s as i32).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .versions
        .into_iter()
        .map(|v| v.version)
        .collect()
}

async fn history(client: &mut Client, id: &str) -> Vec<proto::VersionChange> {
    client
        .get_change_history(GetChangeHistoryRequest {
            tenant: T.into(),
            project: P.into(),
            artifact_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .changes
}

/// A new artifact at 1.0.0 (draft) with a 2.0.0 created directly in review.
async fn two_versions(client: &mut Client, name: &str) -> String {
    let id = create_id(client, header(T, P, "prd", name), b"# One\nfirst\n").await;
    let mut next = update_header(T, P, &id);
    next.next_version = Some(proto::update_artifact_header::NextVersion::ExplicitVersion(
        "2.0.0".into(),
    ));
    next.initial_state = Review as i32;
    update(client, next, b"# One\nsecond\n").await.unwrap();
    id
}

async fn transitions_follow_the_table_and_refusals_write_nothing(postgres: bool) {
    let (server, _db) = common::binary::start_on_catalog(postgres).await;
    let mut client = server.client().await;
    let id = two_versions(&mut client, "table.md").await;
    assert_eq!(state_of(&mut client, &id, "1.0.0").await, Draft as i32);
    assert_eq!(state_of(&mut client, &id, "2.0.0").await, Review as i32);

    // Refusals name the current state and where it may go, and change nothing.
    let before = history(&mut client, &id).await;
    assert_status(
        client.transition_version(move_to(&id, "1.0.0", Approved)).await,
        Code::FailedPrecondition,
        &[
            "version 1.0.0 is draft and cannot move to approved",
            "review, archived",
        ],
    );
    let mut expecting = move_to(&id, "1.0.0", Review);
    expecting.expected_state = Review as i32;
    assert_status(
        client.transition_version(expecting).await,
        Code::FailedPrecondition,
        &["is draft, not review", "may move to review, archived"],
    );
    let mut unknown = move_to(&id, "1.0.0", Review);
    unknown.target_state = 9;
    assert_status(
        client.transition_version(unknown).await,
        Code::InvalidArgument,
        &["target_state:"],
    );
    assert_status(
        client
            .transition_version(move_to(&id, "1.0.0", proto::LifecycleState::Unspecified))
            .await,
        Code::InvalidArgument,
        &["target_state:"],
    );
    assert_status(
        client.transition_version(move_to(&id, "3.0.0", Review)).await,
        Code::NotFound,
        &["version 3.0.0"],
    );
    let mut created_approved = header(T, P, "prd", "approved-at-birth.md");
    created_approved.initial_state = Approved as i32;
    assert_status(
        create(&mut client, created_approved, b"x").await,
        Code::InvalidArgument,
        &["initial_state:"],
    );
    assert_eq!(
        history(&mut client, &id).await,
        before,
        "refused calls wrote nothing"
    );

    // Draft -> review (compare-and-set) -> approved, with the actor and reason recorded.
    let mut to_review = move_to(&id, "1.0.0", Review);
    to_review.expected_state = Draft as i32;
    client.transition_version(to_review).await.unwrap();
    let mut approve = tonic::Request::new(move_to(&id, "1.0.0", Approved));
    approve.get_mut().reason = "signed off by the architect".into();
    approve
        .metadata_mut()
        .insert("x-artifactd-actor", "agent-architect".parse().unwrap());
    let approved = client.transition_version(approve).await.unwrap().into_inner();
    assert_eq!(approved.version.unwrap().state, Approved as i32);
    let changes = history(&mut client, &id).await;
    let first = changes
        .iter()
        .find(|c| c.version.as_ref().unwrap().version == "1.0.0")
        .unwrap();
    let moves: Vec<(i32, i32)> = first
        .transitions
        .iter()
        .map(|t| (t.from_state, t.to_state))
        .collect();
    assert_eq!(
        moves,
        [
            (0, Draft as i32),
            (Draft as i32, Review as i32),
            (Review as i32, Approved as i32)
        ]
    );
    let last = first.transitions.last().unwrap();
    assert_eq!(
        (last.actor.clone(), last.reason.as_str()),
        (
            format!("key:{}", &common::binary::ADMIN_KEY[4..20]),
            "signed off by the architect"
        ),
        "the actor is the proven caller, never a header it chose"
    );

    // An approved version blocks deletion until it is archived.
    let delete = proto::DeleteArtifactRequest {
        tenant: T.into(),
        project: P.into(),
        artifact_id: id.clone(),
    };
    assert_status(
        client.delete_artifact(delete.clone()).await,
        Code::FailedPrecondition,
        &["approved versions (1.0.0)", "archive them"],
    );
    assert_eq!(
        state_of(&mut client, &id, "").await,
        Review as i32,
        "still there after the refusal"
    );
    client
        .transition_version(move_to(&id, "1.0.0", Archived))
        .await
        .unwrap();

    // Archived versions leave default listings but stay downloadable.
    assert_eq!(versions_listed(&mut client, &id, &[]).await, ["2.0.0"]);
    assert_eq!(versions_listed(&mut client, &id, &[Archived]).await, ["1.0.0"]);
    assert_eq!(
        versions_listed(&mut client, &id, &[Archived, Review]).await,
        ["2.0.0", "1.0.0"]
    );
    let (_, archived) = download(&mut client, download_request(T, P, &id, "1.0.0"))
        .await
        .unwrap();
    assert_eq!(archived, b"# One\nfirst\n");
    assert_status(
        client
            .list_versions(ListVersionsRequest {
                tenant: T.into(),
                project: P.into(),
                artifact_id: id.clone(),
                states: vec![0],
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &["states:"],
    );
    // Artifacts are listed by their latest version's state.
    let listed = |states: Vec<i32>| ListArtifactsRequest {
        tenant: T.into(),
        project: P.into(),
        states,
        ..Default::default()
    };
    let in_review = client
        .list_artifacts(listed(vec![Review as i32]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        in_review
            .artifacts
            .iter()
            .map(|a| a.id.as_str())
            .collect::<Vec<_>>(),
        [id.as_str()]
    );
    let drafts = client
        .list_artifacts(listed(vec![Draft as i32]))
        .await
        .unwrap()
        .into_inner();
    assert!(drafts.artifacts.is_empty());

    client.delete_artifact(delete).await.unwrap();
}

/// Many callers move one version from review at once: exactly one wins, the others are told
/// the state it moved to, and the history has exactly one move.
async fn concurrent_transitions_let_exactly_one_win(postgres: bool) {
    let (server, _db) = common::binary::start_on_catalog(postgres).await;
    let client = server.client().await;
    let mut setup = client.clone();
    let mut ids = Vec::new();
    for round in 0..6 {
        ids.push(two_versions(&mut setup, &format!("race-{round}.md")).await);
    }
    for id in &ids {
        let mut racers = tokio::task::JoinSet::new();
        for racer in 0..8 {
            let mut client = client.clone();
            let target = if racer % 2 == 0 { Approved } else { Draft };
            let mut request = move_to(id, "2.0.0", target);
            request.expected_state = Review as i32;
            racers.spawn(async move { client.transition_version(request).await.map(|_| target) });
        }
        let mut winners = Vec::new();
        while let Some(result) = racers.join_next().await {
            match result.unwrap() {
                Ok(target) => winners.push(target),
                Err(status) => {
                    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                    assert!(
                        status.message().contains("not review as expected"),
                        "{}",
                        status.message()
                    );
                }
            }
        }
        assert_eq!(winners.len(), 1, "exactly one transition wins: {winners:?}");
        let mut reader = client.clone();
        assert_eq!(state_of(&mut reader, id, "2.0.0").await, winners[0] as i32);
        let changes = history(&mut reader, id).await;
        assert_eq!(changes[0].transitions.len(), 2, "creation and one move");
    }

    // Approval racing deletion: never a deleted artifact with an approved version.
    for round in 0..12 {
        let id = two_versions(&mut setup, &format!("approve-or-delete-{round}.md")).await;
        let (mut approver, mut deleter) = (client.clone(), client.clone());
        let approve = move_to(&id, "2.0.0", Approved);
        let delete = proto::DeleteArtifactRequest {
            tenant: T.into(),
            project: P.into(),
            artifact_id: id.clone(),
        };
        let (approved, deleted) = tokio::join!(
            approver.transition_version(approve),
            deleter.delete_artifact(delete)
        );
        assert!(
            approved.is_ok() != deleted.is_ok(),
            "exactly one of approve and delete succeeds: {approved:?} {deleted:?}"
        );
    }
}

async fn aliases_move_atomically_and_resolve_everywhere(postgres: bool) {
    let (server, _db) = common::binary::start_on_catalog(postgres).await;
    let mut client = server.client().await;
    let id = two_versions(&mut client, "aliased.md").await;
    let alias = |name: &str, version: &str, expected: Option<&str>| SetAliasRequest {
        tenant: T.into(),
        project: P.into(),
        artifact_id: id.clone(),
        alias: name.into(),
        version: version.into(),
        expected_version: expected.map(str::to_owned),
    };
    let set = client
        .set_alias(alias("prod", "1.0.0", Some("")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.alias.unwrap().version, "1.0.0");
    assert_status(
        client.set_alias(alias("prod", "2.0.0", Some(""))).await,
        Code::FailedPrecondition,
        &["\"prod\" exists already and points at 1.0.0"],
    );
    assert_status(
        client.set_alias(alias("prod", "2.0.0", Some("1.5.0"))).await,
        Code::FailedPrecondition,
        &["points at 1.0.0, not 1.5.0"],
    );
    // Get and download accept the alias wherever they accept a version.
    let (header_of, bytes) = download(&mut client, download_request(T, P, &id, "prod"))
        .await
        .unwrap();
    assert_eq!(
        (header_of.version.as_str(), bytes.as_slice()),
        ("1.0.0", b"# One\nfirst\n".as_slice())
    );
    assert_eq!(state_of(&mut client, &id, "prod").await, Draft as i32);
    assert_status(
        download(&mut client, download_request(T, P, &id, "staging")).await,
        Code::NotFound,
        &["no alias \"staging\""],
    );
    for bad in ["1.0", "Prod", "latest-approved", "latest", "with space"] {
        assert_status(
            client.set_alias(alias(bad, "1.0.0", None)).await,
            Code::InvalidArgument,
            &["alias:"],
        );
    }
    assert_status(
        client.set_alias(alias("qa", "7.0.0", None)).await,
        Code::NotFound,
        &["version 7.0.0"],
    );
    assert_status(
        client.set_alias(alias("qa", "prod", None)).await,
        Code::InvalidArgument,
        &["version:"],
    );

    // Concurrent moves from the same expected target: exactly one wins.
    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut client = client.clone();
        let request = alias("prod", "2.0.0", Some("1.0.0"));
        racers.spawn(async move { client.set_alias(request).await.is_ok() });
    }
    let mut won = 0;
    while let Some(ok) = racers.join_next().await {
        won += usize::from(ok.unwrap());
    }
    assert_eq!(won, 1, "exactly one move from 1.0.0 wins");

    // latest-approved follows approvals and archiving.
    assert_status(
        download(&mut client, download_request(T, P, &id, "latest-approved")).await,
        Code::NotFound,
        &["has no approved version"],
    );
    client
        .transition_version(move_to(&id, "1.0.0", Review))
        .await
        .unwrap();
    client
        .transition_version(move_to(&id, "1.0.0", Approved))
        .await
        .unwrap();
    let (approved, _) = download(&mut client, download_request(T, P, &id, "latest-approved"))
        .await
        .unwrap();
    assert_eq!(approved.version, "1.0.0");
    client
        .transition_version(move_to(&id, "2.0.0", Approved))
        .await
        .unwrap();
    assert_eq!(
        state_of(&mut client, &id, "latest-approved").await,
        Approved as i32
    );
    let (approved, _) = download(&mut client, download_request(T, P, &id, "latest-approved"))
        .await
        .unwrap();
    assert_eq!(approved.version, "2.0.0");
    // Transitions accept aliases too: archive whatever latest-approved is.
    client
        .transition_version(move_to(&id, "latest-approved", Archived))
        .await
        .unwrap();
    let (approved, _) = download(&mut client, download_request(T, P, &id, "latest-approved"))
        .await
        .unwrap();
    assert_eq!(approved.version, "1.0.0");

    let listed = client
        .list_aliases(ListAliasesRequest {
            tenant: T.into(),
            project: P.into(),
            artifact_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .aliases;
    let names: Vec<(&str, bool)> = listed.iter().map(|a| (a.name.as_str(), a.maintained)).collect();
    assert_eq!(names, [("latest-approved", true), ("prod", false)]);
    let remove = |expected: Option<&str>| DeleteAliasRequest {
        tenant: T.into(),
        project: P.into(),
        artifact_id: id.clone(),
        alias: "prod".into(),
        expected_version: expected.map(str::to_owned),
    };
    let prod_now = listed.iter().find(|a| a.name == "prod").unwrap().version.clone();
    let other = if prod_now == "1.0.0" { "2.0.0" } else { "1.0.0" };
    assert_status(
        client.delete_alias(remove(Some(other))).await,
        Code::FailedPrecondition,
        &["not"],
    );
    client.delete_alias(remove(Some(&prod_now))).await.unwrap();
    assert_status(
        client.delete_alias(remove(None)).await,
        Code::NotFound,
        &["no alias \"prod\""],
    );
}

async fn history_diffs_and_search_by_state(postgres: bool) {
    let (server, _db) = common::binary::start_on_catalog(postgres).await;
    let mut client = server.client().await;
    let first = "# Checkout PRD\n\nGoals\n- pay by card\n- pay by invoice\n".repeat(50);
    let second = first.replace("pay by invoice", "pay by bank transfer");
    let third = format!("{second}\n## Risks\n- fraud\n");
    let id = create_id(&mut client, header(T, P, "prd", "checkout.md"), first.as_bytes()).await;
    for content in [&second, &third] {
        let mut next = update_header(T, P, &id);
        next.next_version = Some(proto::update_artifact_header::NextVersion::Bump(
            proto::BumpKind::Minor as i32,
        ));
        next.change_message = "revised".into();
        update(&mut client, next, content.as_bytes()).await.unwrap();
    }
    let changes = history(&mut client, &id).await;
    let described: Vec<(&str, &str, i64)> = changes
        .iter()
        .map(|c| {
            (
                c.version.as_ref().unwrap().version.as_str(),
                c.previous_version.as_str(),
                c.size_change,
            )
        })
        .collect();
    assert_eq!(
        described,
        [
            ("1.2.0", "1.1.0", third.len() as i64 - second.len() as i64),
            ("1.1.0", "1.0.0", second.len() as i64 - first.len() as i64),
            ("1.0.0", "", first.len() as i64),
        ]
    );
    for change in &changes {
        let version = change.version.as_ref().unwrap();
        assert_eq!(change.reused_bytes + change.new_bytes, version.stored_size);
    }
    // Paging: one version per page, in the same order.
    let mut token = String::new();
    let mut paged = Vec::new();
    loop {
        let page = client
            .get_change_history(GetChangeHistoryRequest {
                tenant: T.into(),
                project: P.into(),
                artifact_id: id.clone(),
                page_size: 1,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        paged.extend(
            page.changes
                .into_iter()
                .map(|c| (c.version.unwrap().version, c.previous_version)),
        );
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(paged.len(), 3);
    assert_eq!(paged[0], ("1.2.0".to_owned(), "1.1.0".to_owned()));
    assert_eq!(paged[2], ("1.0.0".to_owned(), String::new()));

    let diff_of = |from: &str, to: &str| DiffVersionsRequest {
        tenant: T.into(),
        project: P.into(),
        artifact_id: id.clone(),
        from_version: from.into(),
        to_version: to.into(),
        context_lines: Some(1),
    };
    let diff = client
        .diff_versions(diff_of("1.0.0", "1.2.0"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        diff.diff
            .starts_with("--- checkout.md@1.0.0\n+++ checkout.md@1.2.0\n"),
        "{}",
        diff.diff
    );
    assert!(diff.diff.contains("\n-- pay by invoice\n") && diff.diff.contains("\n+- pay by bank transfer\n"));
    assert_eq!((diff.lines_removed, diff.lines_added), (50, 50 + 3));
    assert!(!diff.truncated);
    let same = client
        .diff_versions(diff_of("1.1.0", "1.1.0"))
        .await
        .unwrap()
        .into_inner();
    assert!(same.diff.is_empty() && same.lines_added == 0);
    let mut wide = diff_of("1.0.0", "1.1.0");
    wide.context_lines = Some(1000);
    assert_status(
        client.diff_versions(wide).await,
        Code::InvalidArgument,
        &["context_lines:"],
    );
    let binary = create_id(
        &mut client,
        header(T, P, "bundle", "bundle.bin"),
        &[0u8, 159, 146, 150, 0, 1],
    )
    .await;
    let mut binary_diff = diff_of("1.0.0", "1.0.0");
    binary_diff.artifact_id = binary;
    assert_status(
        client.diff_versions(binary_diff).await,
        Code::InvalidArgument,
        &["from_version:", "not text", "only text versions can be diffed"],
    );

    // Search and metadata search filter by the latest version's state; archived leaves both.
    client
        .transition_version(move_to(&id, "1.2.0", Review))
        .await
        .unwrap();
    client
        .transition_version(move_to(&id, "1.2.0", Approved))
        .await
        .unwrap();
    let channel = server.channel().await;
    let mut search = SearchServiceClient::new(channel);
    let query = |state: &str| SearchRequest {
        tenant: T.into(),
        project: P.into(),
        query: "checkout".into(),
        state: state.into(),
        ..Default::default()
    };
    let by_metadata = |filters: Vec<MetadataFilter>| SearchByMetadataRequest {
        tenant: T.into(),
        project: P.into(),
        filters,
        ..Default::default()
    };
    let state_is = |state: &str| MetadataFilter {
        field: "state".into(),
        condition: Some(metadata_filter::Condition::Equals(state.into())),
    };
    let name_is = MetadataFilter {
        field: "name".into(),
        condition: Some(metadata_filter::Condition::Equals("checkout.md".into())),
    };
    common::failover::wait_for(
        "the approval to be indexed",
        std::time::Duration::from_secs(20),
        || {
            let mut search = search.clone();
            let request = query("approved");
            async move {
                search
                    .search(request)
                    .await
                    .is_ok_and(|r| r.into_inner().hits.len() == 1)
            }
        },
    )
    .await;
    assert!(
        search
            .search(query("draft"))
            .await
            .unwrap()
            .into_inner()
            .hits
            .is_empty()
    );
    let approved = search
        .search_by_metadata(by_metadata(vec![state_is("approved")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(approved.hits.len(), 1);
    assert_eq!(approved.hits[0].state, "approved");
    assert_status(
        search.search(query("published")).await,
        Code::InvalidArgument,
        &["state:"],
    );

    client
        .transition_version(move_to(&id, "1.2.0", Archived))
        .await
        .unwrap();
    common::failover::wait_for(
        "the archiving to be indexed",
        std::time::Duration::from_secs(20),
        || {
            let mut search = search.clone();
            let request = query("archived");
            async move {
                search
                    .search(request)
                    .await
                    .is_ok_and(|r| r.into_inner().hits.len() == 1)
            }
        },
    )
    .await;
    assert!(
        search
            .search(query(""))
            .await
            .unwrap()
            .into_inner()
            .hits
            .is_empty(),
        "archived leaves default search"
    );
    let default_metadata = search
        .search_by_metadata(by_metadata(vec![name_is.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert!(default_metadata.hits.is_empty(), "and default metadata search");
    let archived = search
        .search_by_metadata(by_metadata(vec![name_is, state_is("archived")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(archived.hits.len(), 1);
}

macro_rules! on_both_catalogs {
    ($($scenario:ident => $sqlite:ident, $postgres:ident;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $sqlite() {
                $scenario(false).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $postgres() {
                $scenario(true).await;
            }
        )*
    };
}

on_both_catalogs! {
    transitions_follow_the_table_and_refusals_write_nothing => transitions_follow_the_table_on_sqlite, transitions_follow_the_table_on_postgres;
    concurrent_transitions_let_exactly_one_win => concurrent_transitions_on_sqlite, concurrent_transitions_on_postgres;
    aliases_move_atomically_and_resolve_everywhere => aliases_on_sqlite, aliases_on_postgres;
    history_diffs_and_search_by_state => history_diffs_and_search_on_sqlite, history_diffs_and_search_on_postgres;
}
