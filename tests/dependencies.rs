//! Dependencies over gRPC against the built binary, on both catalogs: declaring them (and
//! every refusal), resolution with policies, unsatisfiable requirements, cycles and bounds,
//! reverse lookups and impact analysis; and the BMAD documentation imported with a
//! dependency for every relative Markdown link, its files' real version histories as
//! versions, checked against closures computed here independently.

mod common;

use artifactd::proto::{
    self, DependencyCoordinates, DependencySpec, GetChangeHistoryRequest, ListDependentsRequest,
    ResolveDependenciesRequest, TransitionVersionRequest, dependency_spec, update_artifact_header,
};
use common::client::{Client, assert_status, create, header, update, update_header};
use proto::LifecycleState::{Approved, Draft, Review};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use tonic::Code;

const T: &str = "acme";
const P: &str = "deps";

fn on(name: &str, requirement: &str, kind: &str) -> DependencySpec {
    DependencySpec {
        target: Some(dependency_spec::Target::Coordinates(DependencyCoordinates {
            project: String::new(),
            artifact_type: "doc".into(),
            name: name.into(),
        })),
        requirement: requirement.into(),
        kind: kind.into(),
    }
}

async fn new_doc(
    client: &mut Client,
    name: &str,
    version: &str,
    deps: Vec<DependencySpec>,
) -> Result<String, tonic::Status> {
    let mut first = header(T, P, "doc", name);
    first.initial_version = version.into();
    first.dependencies = deps;
    create(client, first, format!("# {name}\n").as_bytes())
        .await
        .map(|r| r.artifact.unwrap().id)
}

async fn add_version(
    client: &mut Client,
    id: &str,
    version: &str,
    content: &[u8],
    deps: Vec<DependencySpec>,
) -> Result<(), tonic::Status> {
    let mut next = update_header(T, P, id);
    next.next_version = Some(update_artifact_header::NextVersion::ExplicitVersion(
        version.into(),
    ));
    next.dependencies = deps;
    update(client, next, content).await.map(|_| ())
}

async fn approve(client: &mut Client, id: &str, version: &str) {
    for target in [Review, Approved] {
        client
            .transition_version(TransitionVersionRequest {
                tenant: T.into(),
                project: P.into(),
                artifact_id: id.into(),
                version: version.into(),
                target_state: target as i32,
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

fn resolve(id: &str) -> ResolveDependenciesRequest {
    ResolveDependenciesRequest {
        tenant: T.into(),
        project: P.into(),
        artifact_id: id.into(),
        ..Default::default()
    }
}

async fn declaring_and_resolving(postgres: bool) {
    let (server, _db) = common::binary::start_on_catalog(postgres).await;
    let mut client = server.client().await;
    // base 1.0.0 (approved), 1.4.0 (approved), 2.0.0-rc.1 (draft), 2.0.0 (draft)
    let base = new_doc(&mut client, "base.md", "1.0.0", vec![]).await.unwrap();
    approve(&mut client, &base, "1.0.0").await;
    add_version(&mut client, &base, "1.4.0", b"# base 1.4\n", vec![])
        .await
        .unwrap();
    approve(&mut client, &base, "1.4.0").await;
    add_version(&mut client, &base, "2.0.0-rc.1", b"# base rc\n", vec![])
        .await
        .unwrap();
    add_version(&mut client, &base, "2.0.0", b"# base 2\n", vec![])
        .await
        .unwrap();

    // Refusals name what is wrong, and write nothing.
    let cases: Vec<(Vec<DependencySpec>, Code, &str)> = vec![
        (
            vec![on("base.md", ">=2, <x", "references")],
            Code::InvalidArgument,
            "dependencies[0].requirement \">=2, <x\"",
        ),
        (
            vec![on("base.md", "^1", "Refs")],
            Code::InvalidArgument,
            "dependencies[0].kind",
        ),
        (
            vec![on("nowhere.md", "^1", "references")],
            Code::NotFound,
            "no artifact of type \"doc\" named \"nowhere.md\"",
        ),
        (
            vec![on("base.md", "^3", "references")],
            Code::NotFound,
            "no version of doc/base.md matches ^3",
        ),
        (
            vec![
                on("base.md", "^1", "references"),
                on("base.md", "^2", "implements"),
            ],
            Code::InvalidArgument,
            "declared twice",
        ),
        (
            vec![on("self.md", "*", "references")],
            Code::InvalidArgument,
            "cannot depend on its own artifact",
        ),
        (
            (0..65).map(|_| on("base.md", "*", "references")).collect(),
            Code::InvalidArgument,
            "at most 64",
        ),
        (
            vec![DependencySpec {
                target: Some(dependency_spec::Target::Coordinates(DependencyCoordinates {
                    project: "no such project!".into(),
                    artifact_type: "doc".into(),
                    name: "base.md".into(),
                })),
                requirement: "*".into(),
                kind: "references".into(),
            }],
            Code::InvalidArgument,
            "dependencies[0].project:",
        ),
    ];
    for (deps, code, needle) in cases {
        assert_status(
            new_doc(&mut client, "self.md", "1.0.0", deps).await,
            code,
            &[needle],
        );
    }
    let mut listed = client
        .list_artifacts(proto::ListArtifactsRequest {
            tenant: T.into(),
            project: P.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .artifacts;
    listed.retain(|a| a.name == "self.md");
    assert!(listed.is_empty(), "refused creates wrote nothing");

    // app 1.0.0 -> base ^1 (derived-from); lib -> base ~1.4; app 1.0.0 -> lib *
    let lib = new_doc(
        &mut client,
        "lib.md",
        "1.0.0",
        vec![on("base.md", "~1.4", "implements")],
    )
    .await
    .unwrap();
    approve(&mut client, &lib, "1.0.0").await;
    let app = new_doc(
        &mut client,
        "app.md",
        "1.0.0",
        vec![
            on("base.md", "^1", "derived-from"),
            on("lib.md", "*", "references"),
        ],
    )
    .await
    .unwrap();
    let got = client
        .get_artifact(proto::GetArtifactRequest {
            tenant: T.into(),
            project: P.into(),
            selector: Some(proto::get_artifact_request::Selector::ArtifactId(app.clone())),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let declared: Vec<(&str, &str, &str)> = got
        .dependencies
        .iter()
        .map(|d| (d.name.as_str(), d.requirement.as_str(), d.kind.as_str()))
        .collect();
    assert_eq!(
        declared,
        [("base.md", "^1", "derived-from"), ("lib.md", "*", "references")]
    );

    // Default policy: the highest approved version meeting every requirement (^1 and ~1.4).
    let resolved = client
        .resolve_dependencies(resolve(&app))
        .await
        .unwrap()
        .into_inner();
    let chosen: BTreeMap<String, String> = resolved
        .resolved
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    assert_eq!(
        chosen,
        BTreeMap::from([
            ("base.md".into(), "1.4.0".into()),
            ("lib.md".into(), "1.0.0".into())
        ])
    );
    assert!(resolved.unsatisfied.is_empty() && resolved.cycles.is_empty() && !resolved.truncated);
    let base_entry = resolved.resolved.iter().find(|r| r.name == "base.md").unwrap();
    assert_eq!(base_entry.required_by.len(), 2, "required by app and lib");

    // A policy admitting drafts and prereleases; a requirement nothing admitted meets.
    let lifted = new_doc(
        &mut client,
        "lifted.md",
        "1.0.0",
        vec![on("base.md", ">=2.0.0-rc.1", "references")],
    )
    .await
    .unwrap();
    let strict = client
        .resolve_dependencies(resolve(&lifted))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(strict.unsatisfied.len(), 1);
    let why = &strict.unsatisfied[0];
    assert_eq!(why.name, "base.md");
    assert!(
        why.explanation.contains(">=2.0.0-rc.1 from lifted.md@1.0.0"),
        "{}",
        why.explanation
    );
    assert!(why.explanation.contains("2.0.0 is draft"), "{}", why.explanation);
    assert_eq!(why.available.len(), 4);
    let mut loose = resolve(&lifted);
    loose.admit_states = vec![Draft as i32, Approved as i32];
    let loose = client.resolve_dependencies(loose).await.unwrap().into_inner();
    assert_eq!(loose.resolved[0].version, "2.0.0");

    // A cycle: cyc-a -> cyc-b -> cyc-a (b's second version closes it).
    let a = new_doc(&mut client, "cyc-a.md", "1.0.0", vec![]).await.unwrap();
    new_doc(
        &mut client,
        "cyc-b.md",
        "1.0.0",
        vec![on("cyc-a.md", "*", "references")],
    )
    .await
    .unwrap();
    add_version(
        &mut client,
        &a,
        "1.1.0",
        b"# a\n",
        vec![on("cyc-b.md", "*", "references")],
    )
    .await
    .unwrap();
    let mut any_state = resolve(&a);
    any_state.admit_states = vec![Draft as i32];
    let cyclic = client
        .resolve_dependencies(any_state.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cyclic.cycles.len(), 1, "{:?}", cyclic.cycles);
    assert_eq!(
        cyclic.cycles[0].path,
        ["doc/cyc-a.md@1.1.0", "doc/cyc-b.md@1.0.0", "doc/cyc-a.md@1.1.0"]
    );
    // Bounds.
    let mut shallow = any_state.clone();
    shallow.max_depth = 1;
    let cut = client.resolve_dependencies(shallow).await.unwrap().into_inner();
    assert!(
        cut.truncated && cut.truncated_reason.contains("max_depth 1"),
        "{cut:?}"
    );
    let mut too_deep = any_state;
    too_deep.max_depth = 100_000;
    assert_status(
        client.resolve_dependencies(too_deep).await,
        Code::InvalidArgument,
        &["max_depth:"],
    );

    // A dependency deleted since: named as unsatisfied, not silently dropped.
    let doomed = new_doc(&mut client, "doomed.md", "1.0.0", vec![]).await.unwrap();
    let orphan = new_doc(
        &mut client,
        "orphan.md",
        "1.0.0",
        vec![on("doomed.md", "^1", "references")],
    )
    .await
    .unwrap();
    client
        .delete_artifact(proto::DeleteArtifactRequest {
            tenant: T.into(),
            project: P.into(),
            artifact_id: doomed,
        })
        .await
        .unwrap();
    let mut drafts = resolve(&orphan);
    drafts.admit_states = vec![Draft as i32];
    let dangling = client.resolve_dependencies(drafts).await.unwrap().into_inner();
    assert!(dangling.resolved.is_empty());
    assert_eq!(dangling.unsatisfied.len(), 1);
    assert!(
        dangling.unsatisfied[0]
            .explanation
            .contains("doc/doomed.md is deleted"),
        "{dangling:?}"
    );

    // Reverse lookups and impact analysis: who depends on base, and who would take 2.0.0.
    let dependents = |version: &str, transitive: bool| ListDependentsRequest {
        tenant: T.into(),
        project: P.into(),
        artifact_id: base.clone(),
        version: version.into(),
        transitive,
        max_depth: 0,
    };
    let direct = client
        .list_dependents(dependents("", false))
        .await
        .unwrap()
        .into_inner();
    let names: BTreeSet<String> = direct.dependents.iter().map(|d| d.name.clone()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["app.md".into(), "lib.md".into(), "lifted.md".into()])
    );
    let impact = client
        .list_dependents(dependents("2.0.0", false))
        .await
        .unwrap()
        .into_inner();
    let accepting: BTreeSet<String> = impact.dependents.iter().map(|d| d.name.clone()).collect();
    let rejecting: BTreeSet<String> = impact.rejecting.iter().map(|d| d.name.clone()).collect();
    assert_eq!(accepting, BTreeSet::from(["lifted.md".into()]));
    assert_eq!(rejecting, BTreeSet::from(["app.md".into(), "lib.md".into()]));
    // Transitively: app and lib accept 1.4.2 directly; lifted's >=2.0.0-rc.1 does not; app
    // also depends on lib 1.0.0, but it is reported once, at its shortest distance.
    let transitive = client
        .list_dependents(dependents("1.4.2", true))
        .await
        .unwrap()
        .into_inner();
    let found: BTreeSet<(String, u32)> = transitive
        .dependents
        .iter()
        .map(|d| (d.name.clone(), d.depth))
        .collect();
    assert_eq!(
        found,
        BTreeSet::from([("app.md".into(), 1), ("lib.md".into(), 1)])
    );
    // The same through SearchService, with filters and paging.
    let mut search =
        artifactd::proto::search_service_client::SearchServiceClient::new(server.channel().await);
    let by_id = |id: &str| artifactd::proto::ArtifactRef {
        target: Some(artifactd::proto::artifact_ref::Target::ArtifactId(id.into())),
    };
    let query = |relation| artifactd::proto::SearchByDependenciesRequest {
        tenant: T.into(),
        project: P.into(),
        relation: Some(relation),
        ..Default::default()
    };
    use artifactd::proto::search_by_dependencies_request::Relation;
    let hit_names = |hits: &[artifactd::proto::DependencyHit]| -> Vec<String> {
        hits.iter()
            .map(|h| format!("{}@{}:{}", h.name, h.version, h.kind))
            .collect()
    };
    let accepting = artifactd::proto::SearchByDependenciesRequest {
        accepts_version: "2.0.0".into(),
        ..query(Relation::DependsOn(by_id(&base)))
    };
    let found = search
        .search_by_dependencies(accepting)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hit_names(&found.hits), ["lifted.md@1.0.0:references"]);
    let of_app = query(Relation::DependedOnBy(by_id(&app)));
    let found = search
        .search_by_dependencies(of_app.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        hit_names(&found.hits),
        ["base.md@1.4.0:derived-from", "lib.md@1.0.0:references"],
        "direct: the highest version meeting the requirement, in any state"
    );
    let transitive = artifactd::proto::SearchByDependenciesRequest {
        transitive: true,
        kinds: vec!["implements".into()],
        ..of_app.clone()
    };
    let found = search
        .search_by_dependencies(transitive)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        hit_names(&found.hits),
        ["base.md@1.4.0:implements"],
        "lib's ~1.4 on base"
    );
    let approved_only = artifactd::proto::SearchByDependenciesRequest {
        states: vec![Approved as i32],
        ..of_app.clone()
    };
    let found = search
        .search_by_dependencies(approved_only)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        hit_names(&found.hits),
        ["base.md@1.4.0:derived-from", "lib.md@1.0.0:references"]
    );
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = search
            .search_by_dependencies(artifactd::proto::SearchByDependenciesRequest {
                page_size: 1,
                page_token: token,
                ..query(Relation::DependsOn(by_id(&base)))
            })
            .await
            .unwrap()
            .into_inner();
        paged.extend(hit_names(&page.hits));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(paged.len(), 3, "{paged:?}");
    assert_status(
        search
            .search_by_dependencies(artifactd::proto::SearchByDependenciesRequest {
                accepts_version: "2.0.0".into(),
                ..of_app
            })
            .await,
        Code::InvalidArgument,
        &["accepts_version:"],
    );
    assert_status(
        search
            .search_by_dependencies(artifactd::proto::SearchByDependenciesRequest {
                tenant: T.into(),
                project: P.into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &["relation:"],
    );

    assert_status(
        client.list_dependents(dependents("two", false)).await,
        Code::InvalidArgument,
        &["version:"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declaring_and_resolving_on_sqlite() {
    declaring_and_resolving(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declaring_and_resolving_on_postgres() {
    declaring_and_resolving(true).await;
}

// ---- the BMAD documentation as a dependency graph --------------------------------------------

/// Markdown files of the corpus by their path relative to `bmad-docs`.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, root: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, root, found);
            } else if path.extension().is_some_and(|e| e == "md") {
                found.push(path.strip_prefix(root).unwrap().to_owned());
            }
        }
    }
    let mut found = Vec::new();
    walk(root, root, &mut found);
    found.sort();
    found
}

/// `a/b/../c.md` → `a/c.md`; `None` when it climbs out of the corpus.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for component in path.components() {
        match component {
            std::path::Component::ParentDir => {
                parts.pop()?;
            }
            std::path::Component::Normal(part) => parts.push(part),
            _ => {}
        }
    }
    Some(parts.iter().collect())
}

/// Each file's relative links to other Markdown files of the corpus.
fn link_graph(root: &Path, files: &[PathBuf]) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let known: BTreeSet<&PathBuf> = files.iter().collect();
    let mut graph = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(root.join(file)).unwrap_or_default();
        let mut targets = BTreeSet::new();
        for (start, _) in text.match_indices("](") {
            let rest = &text[start + 2..];
            let Some(end) = rest.find(')') else { continue };
            let link = rest[..end].split('#').next().unwrap_or("").trim();
            if link.is_empty() || link.contains("://") || link.starts_with('/') || !link.ends_with(".md") {
                continue;
            }
            let joined = file.parent().unwrap_or(Path::new("")).join(link);
            if let Some(target) = normalize(&joined)
                && known.contains(&target)
                && target != *file
            {
                targets.insert(target);
            }
        }
        graph.insert(file.clone(), targets);
    }
    graph
}

fn artifact_name(path: &Path) -> String {
    path.to_string_lossy().replace('/', "__")
}

/// Everything reachable from `start` along `edges`, without `start` unless a cycle returns.
fn reachable(edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>, start: &Path) -> (BTreeSet<PathBuf>, bool) {
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([start.to_owned()]);
    let mut cyclic = false;
    while let Some(next) = queue.pop_front() {
        for target in edges.get(&next).into_iter().flatten() {
            if target == start {
                cyclic = true;
            }
            if seen.insert(target.clone()) {
                queue.push_back(target.clone());
            }
        }
    }
    seen.remove(start);
    (seen, cyclic)
}

async fn the_bmad_docs_link_graph(postgres: bool) {
    let corpus = common::corpus_dir();
    let docs = corpus.join("bmad-docs");
    let history = corpus.join("bmad-history");
    let files = markdown_files(&docs);
    let links = link_graph(&docs, &files);
    let edges: usize = links.values().map(BTreeSet::len).sum();
    assert!(
        files.len() > 300 && edges > 100,
        "{} files, {edges} links",
        files.len()
    );

    let (server, _db) = common::binary::start_on_catalog(postgres).await;
    let mut client = server.client().await;
    let mut ids: HashMap<PathBuf, String> = HashMap::new();
    let mut versions_of: HashMap<PathBuf, Vec<Vec<u8>>> = HashMap::new();
    // Every file first, as its oldest known content: the history's first version where it
    // has one (folder name: its path with '/' as '_'), else today's.
    for file in &files {
        let past = history.join(file.to_string_lossy().replace('/', "_"));
        let mut contents: Vec<Vec<u8>> = Vec::new();
        if past.is_dir() {
            let mut numbered: Vec<PathBuf> = std::fs::read_dir(&past)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "md"))
                .collect();
            numbered.sort();
            contents.extend(numbered.iter().map(|p| std::fs::read(p).unwrap()));
        }
        if contents.is_empty() {
            contents.push(std::fs::read(docs.join(file)).unwrap());
        }
        let mut first = header(T, P, "doc", &artifact_name(file));
        first.initial_version = "1.0.0".into();
        let id = create(&mut client, first, &contents[0])
            .await
            .unwrap()
            .artifact
            .unwrap()
            .id;
        for (n, content) in contents.iter().enumerate().skip(1) {
            add_version(&mut client, &id, &format!("1.{n}.0"), content, vec![])
                .await
                .unwrap();
        }
        ids.insert(file.clone(), id);
        versions_of.insert(file.clone(), contents);
    }
    // Then today's content as 2.0.0, declaring a "references" dependency per link.
    for (file, targets) in &links {
        if targets.is_empty() {
            continue;
        }
        let deps = targets
            .iter()
            .map(|target| DependencySpec {
                target: Some(dependency_spec::Target::ArtifactId(ids[target].clone())),
                requirement: ">=1".into(),
                kind: "references".into(),
            })
            .collect();
        let today = std::fs::read(docs.join(file)).unwrap();
        add_version(&mut client, &ids[file], "2.0.0", &today, deps)
            .await
            .unwrap();
    }

    // A file's real history: every version, and each size change as the files say.
    let (file, contents) = versions_of.iter().max_by_key(|(_, c)| c.len()).unwrap();
    assert!(
        contents.len() > 20,
        "{} has {} versions",
        file.display(),
        contents.len()
    );
    let mut changes = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .get_change_history(GetChangeHistoryRequest {
                tenant: T.into(),
                project: P.into(),
                artifact_id: ids[file].clone(),
                page_size: 50,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        changes.extend(page.changes);
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let mut expected: Vec<Vec<u8>> = contents.clone();
    if !links[file].is_empty() {
        expected.push(std::fs::read(docs.join(file)).unwrap());
    }
    assert_eq!(changes.len(), expected.len());
    for (i, change) in changes.iter().rev().enumerate() {
        let before = if i == 0 { 0 } else { expected[i - 1].len() as i64 };
        assert_eq!(
            change.size_change,
            expected[i].len() as i64 - before,
            "version {i}"
        );
    }

    // Every file's closure and dependents against the link graph, walked here.
    let mut reverse: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for (file, targets) in &links {
        for target in targets {
            reverse.entry(target.clone()).or_default().insert(file.clone());
        }
    }
    let name_to_file: HashMap<String, PathBuf> =
        files.iter().map(|f| (artifact_name(f), f.clone())).collect();
    let mut checked = 0;
    for file in files
        .iter()
        .filter(|f| !links[*f].is_empty() || reverse.contains_key(*f))
    {
        let (expected, cyclic) = reachable(&links, file);
        let mut request = resolve(&ids[file]);
        request.admit_states = vec![Draft as i32];
        let resolution = client.resolve_dependencies(request).await.unwrap().into_inner();
        let got: BTreeSet<PathBuf> = resolution
            .resolved
            .iter()
            .map(|r| name_to_file[&r.name].clone())
            .collect();
        assert_eq!(got, expected, "closure of {}", file.display());
        assert!(resolution.unsatisfied.is_empty());
        for chosen in &resolution.resolved {
            let target = &name_to_file[&chosen.name];
            let highest = if links[target].is_empty() {
                format!("1.{}.0", versions_of[target].len() - 1)
            } else {
                "2.0.0".to_owned()
            };
            assert_eq!(chosen.version, highest, "{}", chosen.name);
        }
        // Cycles: reported when the links make one back to the root, and each reported one is
        // a real cycle of links.
        if cyclic {
            assert!(!resolution.cycles.is_empty(), "{} is on a cycle", file.display());
        }
        for cycle in &resolution.cycles {
            let steps: Vec<PathBuf> = cycle
                .path
                .iter()
                .map(|entry| {
                    let name = entry.trim_start_matches("doc/").rsplit_once('@').unwrap().0;
                    name_to_file[name].clone()
                })
                .collect();
            assert_eq!(steps.first(), steps.last(), "{cycle:?}");
            for pair in steps.windows(2) {
                assert!(links[&pair[0]].contains(&pair[1]), "{cycle:?} follows no link");
            }
        }

        let (expected_dependents, _) = reachable(&reverse, file);
        let dependents = client
            .list_dependents(ListDependentsRequest {
                tenant: T.into(),
                project: P.into(),
                artifact_id: ids[file].clone(),
                version: String::new(),
                transitive: true,
                max_depth: 256,
            })
            .await
            .unwrap()
            .into_inner();
        let mut got: BTreeSet<PathBuf> = dependents
            .dependents
            .iter()
            .map(|d| name_to_file[&d.name].clone())
            .collect();
        got.remove(file);
        assert_eq!(got, expected_dependents, "dependents of {}", file.display());
        checked += 1;
    }
    assert!(checked > 100, "{checked} files checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bmad_docs_link_graph_on_sqlite() {
    the_bmad_docs_link_graph(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bmad_docs_link_graph_on_postgres() {
    the_bmad_docs_link_graph(true).await;
}
