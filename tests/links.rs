//! Read-only links over gRPC against the built binary, on both catalogs: an artifact of one
//! project made visible in another without copying, read there with its origin, refused
//! changes there, one name per project between artifacts and links (also when linking and
//! creating race), and links seen by listings, search, dependencies and the change stream.

mod common;

use artifactd::proto::search_service_client::SearchServiceClient;
use artifactd::proto::{
    self, DeleteArtifactRequest, DependencyCoordinates, DependencySpec, EventKind, GetArtifactRequest,
    LifecycleState, LinkArtifactRequest, ListArtifactsRequest, ListVersionsRequest,
    ResolveDependenciesRequest, SearchRequest, SetAliasRequest, TransitionVersionRequest,
    UndeleteArtifactRequest, UnlinkArtifactRequest, UpdateArtifactLabelsRequest, WatchEventsRequest,
    dependency_spec, get_artifact_request, watch_events_response,
};
use common::client::{
    Client, assert_status, create, create_id, download, download_request, header, update, update_header,
};
use std::time::Duration;
use tonic::Code;

const T: &str = "acme";
const HOME: &str = "platform";
const SHARED: &str = "checkout";

fn link_request(project: &str, artifact_id: &str, target: &str) -> LinkArtifactRequest {
    LinkArtifactRequest {
        tenant: T.into(),
        project: project.into(),
        artifact_id: artifact_id.into(),
        target_project: target.into(),
    }
}

fn bumped(project: &str, artifact_id: &str) -> proto::UpdateArtifactHeader {
    let mut next = update_header(T, project, artifact_id);
    next.next_version = Some(proto::update_artifact_header::NextVersion::Bump(
        proto::BumpKind::Minor as i32,
    ));
    next
}

fn by_id(project: &str, artifact_id: &str) -> GetArtifactRequest {
    GetArtifactRequest {
        tenant: T.into(),
        project: project.into(),
        selector: Some(get_artifact_request::Selector::ArtifactId(artifact_id.into())),
        version: String::new(),
    }
}

fn by_name(project: &str, artifact_type: &str, name: &str) -> GetArtifactRequest {
    GetArtifactRequest {
        tenant: T.into(),
        project: project.into(),
        selector: Some(get_artifact_request::Selector::Coordinates(
            proto::ArtifactCoordinates {
                artifact_type: artifact_type.into(),
                name: name.into(),
            },
        )),
        version: String::new(),
    }
}

async fn listed(client: &mut Client, project: &str, page_size: u32) -> Vec<proto::Artifact> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_artifacts(ListArtifactsRequest {
                tenant: T.into(),
                project: project.into(),
                page_size,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.artifacts);
        if page.next_page_token.is_empty() {
            return all;
        }
        token = page.next_page_token;
    }
}

async fn search_ids(
    search: &mut SearchServiceClient<common::binary::Authed>,
    project: &str,
    query: &str,
) -> Vec<(String, String)> {
    search
        .search(SearchRequest {
            tenant: T.into(),
            project: project.into(),
            query: query.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hits
        .into_iter()
        .map(|hit| (hit.artifact_id, hit.project))
        .collect()
}

async fn wait_search(
    search: &SearchServiceClient<common::binary::Authed>,
    project: &str,
    query: &str,
    what: &str,
    expected: Vec<(String, String)>,
) {
    let search = search.clone();
    common::failover::wait_for(what, Duration::from_secs(20), || {
        let mut search = search.clone();
        let expected = expected.clone();
        async move { search_ids(&mut search, project, query).await == expected }
    })
    .await;
}

async fn links_show_an_artifact_read_only_in_another_project(postgres: bool) {
    let (server, _db) = common::binary::start_on_catalog(postgres).await;
    let mut client = server.client().await;
    let mut search = SearchServiceClient::new(server.channel().await);
    let content = b"# Payment API\n\nThe ledger reconciles every settlement nightly.\n".to_vec();
    let api = create_id(
        &mut client,
        header(T, HOME, "architecture", "payment-api.md"),
        &content,
    )
    .await;
    create_id(
        &mut client,
        header(T, SHARED, "story", "basket.md"),
        b"# Basket\n",
    )
    .await;
    let other = create_id(
        &mut client,
        header(T, SHARED, "story", "refunds.md"),
        b"# Refunds\n",
    )
    .await;

    let linked = client
        .link_artifact(link_request(HOME, &api, SHARED))
        .await
        .unwrap()
        .into_inner()
        .artifact
        .unwrap();
    assert_eq!(
        (linked.id.as_str(), linked.project.as_str()),
        (api.as_str(), HOME)
    );
    let link = linked.link.clone().unwrap();
    assert_eq!(link.project, SHARED);
    assert!(link.linked_at.is_some());

    // Read where it is linked, by id and by name: the artifact itself, with its origin.
    for request in [
        by_id(SHARED, &api),
        by_name(SHARED, "architecture", "payment-api.md"),
    ] {
        let got = client.get_artifact(request).await.unwrap().into_inner();
        let artifact = got.artifact.unwrap();
        assert_eq!(
            (artifact.id.as_str(), artifact.project.as_str()),
            (api.as_str(), HOME)
        );
        assert_eq!(artifact.link.unwrap().project, SHARED);
        assert_eq!(got.version.unwrap().version, "1.0.0");
    }
    let at_home = client.get_artifact(by_id(HOME, &api)).await.unwrap().into_inner();
    assert_eq!(at_home.artifact.unwrap().link, None, "at home it is not a link");
    let (_, bytes) = download(&mut client, download_request(T, SHARED, &api, ""))
        .await
        .unwrap();
    assert_eq!(bytes, content);

    // Listings merge own artifacts and links by name, across pages of every size.
    for page_size in [1, 2, 50] {
        let names: Vec<(String, String)> = listed(&mut client, SHARED, page_size)
            .await
            .into_iter()
            .map(|a| (a.name, a.project))
            .collect();
        assert_eq!(
            names,
            [
                ("basket.md", SHARED),
                ("payment-api.md", HOME),
                ("refunds.md", SHARED)
            ]
            .map(|(n, p)| (n.to_owned(), p.to_owned()))
        );
    }
    assert_eq!(
        listed(&mut client, HOME, 10).await.len(),
        1,
        "the origin's listing is unchanged"
    );

    // A new version at the origin is what the link shows.
    update(
        &mut client,
        bumped(HOME, &api),
        b"# Payment API v2\n\nReconciles hourly.\n",
    )
    .await
    .unwrap();
    let through = client
        .get_artifact(by_id(SHARED, &api))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(through.version.unwrap().version, "1.1.0");
    let versions = client
        .list_versions(ListVersionsRequest {
            tenant: T.into(),
            project: SHARED.into(),
            artifact_id: api.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(versions.versions.len(), 2);
    // The project it is linked into hears of its changes, with where they were made.
    let mut changes = client
        .watch_events(WatchEventsRequest {
            tenant: T.into(),
            project: SHARED.into(),
            from_oldest: true,
            kinds: vec![EventKind::VersionAdded as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let added = loop {
        let message = tokio::time::timeout(Duration::from_secs(10), changes.message())
            .await
            .expect("the new version's event arrives")
            .unwrap()
            .unwrap();
        if let Some(watch_events_response::Message::Event(event)) = message.message {
            break event;
        }
    };
    assert_eq!(
        (
            added.artifact_id.as_str(),
            added.version.as_str(),
            added.origin_project.as_str()
        ),
        (api.as_str(), "1.1.0", HOME)
    );
    drop(changes);

    // Search in the project it is linked into finds it, naming where it lives.
    wait_search(
        &search,
        SHARED,
        "reconciles hourly",
        "the link to reach the index",
        vec![(api.clone(), HOME.to_owned())],
    )
    .await;
    assert_eq!(
        search_ids(&mut search, HOME, "reconciles hourly").await,
        vec![(api.clone(), HOME.to_owned())]
    );

    // Nothing changes it through the link; each refusal names where to change it.
    let before = client
        .get_artifact(by_id(HOME, &api))
        .await
        .unwrap()
        .into_inner()
        .artifact
        .unwrap();
    assert_status(
        update(&mut client, bumped(SHARED, &api), b"# through the link\n").await,
        Code::FailedPrecondition,
        &["read-only", HOME],
    );
    assert_status(
        client
            .transition_version(TransitionVersionRequest {
                tenant: T.into(),
                project: SHARED.into(),
                artifact_id: api.clone(),
                version: "1.1.0".into(),
                target_state: LifecycleState::Review as i32,
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        &["read-only", HOME],
    );
    assert_status(
        client
            .set_alias(SetAliasRequest {
                tenant: T.into(),
                project: SHARED.into(),
                artifact_id: api.clone(),
                alias: "prod".into(),
                version: "1.1.0".into(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        &["read-only"],
    );
    assert_status(
        client
            .update_artifact_labels(UpdateArtifactLabelsRequest {
                tenant: T.into(),
                project: SHARED.into(),
                artifact_id: api.clone(),
                labels: Some(proto::Labels {
                    tags: vec!["x".into()],
                    categories: vec![],
                }),
            })
            .await,
        Code::FailedPrecondition,
        &["read-only"],
    );
    assert_status(
        client
            .delete_artifact(DeleteArtifactRequest {
                tenant: T.into(),
                project: SHARED.into(),
                artifact_id: api.clone(),
            })
            .await,
        Code::FailedPrecondition,
        &["read-only", HOME],
    );
    let after = client
        .get_artifact(by_id(HOME, &api))
        .await
        .unwrap()
        .into_inner()
        .artifact
        .unwrap();
    assert_eq!(before, after, "a refused change wrote nothing");

    // One name per project, between artifacts and links.
    assert_status(
        create(
            &mut client,
            header(T, SHARED, "architecture", "payment-api.md"),
            b"copy",
        )
        .await,
        Code::AlreadyExists,
        &["linked", HOME, "unlink"],
    );
    assert_status(
        client.link_artifact(link_request(HOME, &api, SHARED)).await,
        Code::AlreadyExists,
        &["already linked"],
    );
    let clash = create_id(
        &mut client,
        header(T, HOME, "story", "basket.md"),
        b"# Other basket\n",
    )
    .await;
    assert_status(
        client.link_artifact(link_request(HOME, &clash, SHARED)).await,
        Code::AlreadyExists,
        &["basket.md", "already exists"],
    );
    assert_status(
        client.link_artifact(link_request(HOME, &api, HOME)).await,
        Code::InvalidArgument,
        &["target_project", "lives in"],
    );
    // Linking from where it is linked links the artifact itself; into its home it is refused.
    assert_status(
        client.link_artifact(link_request(SHARED, &api, HOME)).await,
        Code::InvalidArgument,
        &["target_project"],
    );
    let third = client
        .link_artifact(link_request(SHARED, &api, "mobile"))
        .await
        .unwrap()
        .into_inner()
        .artifact
        .unwrap();
    assert_eq!(
        (third.project.as_str(), third.link.unwrap().project.as_str()),
        (HOME, "mobile")
    );
    assert_status(
        client.link_artifact(link_request(HOME, &api, "no spaces")).await,
        Code::InvalidArgument,
        &["target_project"],
    );
    assert_status(
        client
            .link_artifact(link_request(HOME, "0190a7c8-0000-7000-8000-000000000000", SHARED))
            .await,
        Code::NotFound,
        &["0190a7c8"],
    );
    assert_status(
        client
            .unlink_artifact(UnlinkArtifactRequest {
                tenant: T.into(),
                project: SHARED.into(),
                artifact_id: other.clone(),
            })
            .await,
        Code::NotFound,
        &["not linked", "own project"],
    );

    // A dependency by type and name in the project it is linked into resolves to it.
    let mut story = header(T, SHARED, "story", "settle.md");
    story.dependencies = vec![DependencySpec {
        target: Some(dependency_spec::Target::Coordinates(DependencyCoordinates {
            project: String::new(),
            artifact_type: "architecture".into(),
            name: "payment-api.md".into(),
        })),
        requirement: "^1".into(),
        kind: "implements".into(),
    }];
    let story = create_id(&mut client, story, b"# Settle\n").await;
    let resolved = client
        .resolve_dependencies(ResolveDependenciesRequest {
            tenant: T.into(),
            project: SHARED.into(),
            artifact_id: story,
            admit_states: vec![LifecycleState::Draft as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        resolved
            .resolved
            .iter()
            .any(|a| a.artifact_id == api && a.version == "1.1.0"),
        "{resolved:?}"
    );

    // Deleted at home, it disappears where it is linked; restored, it is back.
    client
        .delete_artifact(DeleteArtifactRequest {
            tenant: T.into(),
            project: HOME.into(),
            artifact_id: api.clone(),
        })
        .await
        .unwrap();
    assert_status(
        client.get_artifact(by_id(SHARED, &api)).await,
        Code::NotFound,
        &[],
    );
    assert!(listed(&mut client, SHARED, 10).await.iter().all(|a| a.id != api));
    client
        .undelete_artifact(UndeleteArtifactRequest {
            tenant: T.into(),
            project: HOME.into(),
            artifact_id: api.clone(),
        })
        .await
        .unwrap();
    assert!(client.get_artifact(by_id(SHARED, &api)).await.is_ok());

    // Unlinked, it is gone from that project and its search, and stays at home.
    let unlinked = client
        .unlink_artifact(UnlinkArtifactRequest {
            tenant: T.into(),
            project: SHARED.into(),
            artifact_id: api.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unlinked.origin_project, HOME);
    assert_status(
        client.get_artifact(by_id(SHARED, &api)).await,
        Code::NotFound,
        &[],
    );
    wait_search(
        &search,
        SHARED,
        "reconciles hourly",
        "the unlink to reach the index",
        vec![],
    )
    .await;
    assert!(client.get_artifact(by_id(HOME, &api)).await.is_ok());
    assert!(
        client.get_artifact(by_id("mobile", &api)).await.is_ok(),
        "other links stay"
    );
    // The name is free again.
    create(
        &mut client,
        header(T, SHARED, "architecture", "payment-api.md"),
        b"own copy",
    )
    .await
    .unwrap();

    // The change stream of the project it was linked into says what happened, and from where.
    let mut stream = client
        .watch_events(WatchEventsRequest {
            tenant: T.into(),
            project: SHARED.into(),
            from_oldest: true,
            kinds: vec![
                EventKind::ArtifactLinked as i32,
                EventKind::ArtifactUnlinked as i32,
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("link events arrive")
            .unwrap()
            .unwrap();
        if let Some(watch_events_response::Message::Event(event)) = message.message {
            seen.push((event.kind, event.artifact_id, event.origin_project, event.name));
        }
    }
    assert_eq!(
        seen,
        vec![
            (
                EventKind::ArtifactLinked as i32,
                api.clone(),
                HOME.to_owned(),
                "payment-api.md".to_owned()
            ),
            (
                EventKind::ArtifactUnlinked as i32,
                api.clone(),
                HOME.to_owned(),
                "payment-api.md".to_owned()
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_show_an_artifact_read_only_in_another_project_on_sqlite() {
    links_show_an_artifact_read_only_in_another_project(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_show_an_artifact_read_only_in_another_project_on_postgres() {
    links_show_an_artifact_read_only_in_another_project(true).await;
}

/// Links and creations of the same name sent at once through the server, many rounds
/// together: in each round exactly one of them wins, and the project shows exactly that one.
/// (The catalog conformance suite races the two transactions themselves.)
async fn a_name_goes_to_exactly_one_of_racing_links_and_creations(postgres: bool) {
    const ROUNDS: usize = 12;
    const CONTENDERS: usize = 3;
    let (server, _db) = common::binary::start_on_catalog(postgres).await;
    let client = server.client().await;
    // Per round: CONTENDERS origins of the same type and name in different projects.
    let mut origins = Vec::new();
    for round in 0..ROUNDS {
        let mut ids = Vec::new();
        for contender in 0..CONTENDERS {
            let mut c = client.clone();
            let project = format!("home-{contender}");
            ids.push(
                create_id(
                    &mut c,
                    header(T, &project, "prd", &format!("prd-{round}.md")),
                    b"# PRD\n",
                )
                .await,
            );
        }
        origins.push(ids);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (round, ids) in origins.iter().enumerate() {
        for (contender, id) in ids.iter().enumerate() {
            let mut c = client.clone();
            let id = id.clone();
            tasks.spawn(async move {
                let result = c
                    .link_artifact(link_request(&format!("home-{contender}"), &id, SHARED))
                    .await
                    .map(|r| r.into_inner().artifact.unwrap().id);
                (round, result)
            });
        }
        for _ in 0..3 {
            let mut c = client.clone();
            tasks.spawn(async move {
                let result = create(
                    &mut c,
                    header(T, SHARED, "prd", &format!("prd-{round}.md")),
                    b"own",
                )
                .await
                .map(|r| r.artifact.unwrap().id);
                (round, result)
            });
        }
    }
    let mut winners = vec![Vec::new(); ROUNDS];
    while let Some(joined) = tasks.join_next().await {
        let (round, result) = joined.unwrap();
        match result {
            Ok(id) => winners[round].push(id),
            Err(status) => assert_eq!(status.code(), Code::AlreadyExists, "{status:?}"),
        }
    }
    let mut c = client.clone();
    let shown = listed(&mut c, SHARED, 1000).await;
    assert_eq!(shown.len(), ROUNDS, "one artifact per name: {shown:?}");
    for (round, won) in winners.iter().enumerate() {
        assert_eq!(won.len(), 1, "round {round}: exactly one winner, got {won:?}");
        let name = format!("prd-{round}.md");
        let holder = shown.iter().find(|a| a.name == name).unwrap();
        assert_eq!(holder.id, won[0], "round {round}: the listing shows the winner");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_goes_to_exactly_one_of_racing_links_and_creations_on_sqlite() {
    a_name_goes_to_exactly_one_of_racing_links_and_creations(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_goes_to_exactly_one_of_racing_links_and_creations_on_postgres() {
    a_name_goes_to_exactly_one_of_racing_links_and_creations(true).await;
}
