//! Search over the real BMAD documents, through the binary over gRPC.

mod common;

use artifactd::proto::metadata_filter::Condition;
use artifactd::proto::search_service_client::SearchServiceClient;
use artifactd::proto::{
    DeleteArtifactRequest, MetadataFilter, MetadataSort, NumberRange, QuerySyntax, SearchByMetadataRequest,
    SearchByTagsRequest, SearchHit, SearchRequest, SearchResponse, TagMatch, TimeRange,
};
use common::binary::{ServerOptions, ServerProcess};
use common::client::{Client, create, header};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const T: &str = "bmad";
const P: &str = "method";

struct Doc {
    name: String,
    content: String,
    tags: Vec<String>,
}

fn corpus_docs() -> Vec<Doc> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let root = common::corpus_dir().join("bmad-docs");
    let mut paths = Vec::new();
    walk(&root, &mut paths);
    paths.sort();
    paths
        .into_iter()
        .filter_map(|path| {
            let relative = path.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
            let content = String::from_utf8(std::fs::read(&path).ok()?).ok()?;
            let extension = path.extension()?.to_string_lossy().into_owned();
            let top = relative.split('/').next().unwrap().to_owned();
            Some(Doc {
                name: relative.replace('/', " » "),
                content,
                tags: vec![
                    "bmad".to_owned(),
                    extension,
                    format!("dir-{}", top.trim_end_matches(".md")),
                ],
            })
        })
        .collect()
}

async fn upload_all(client: &mut Client, tenant: &str, docs: &[Doc]) -> BTreeMap<String, String> {
    let mut ids = BTreeMap::new();
    for doc in docs {
        let mut h = header(tenant, P, "doc", &doc.name);
        h.tags = doc.tags.clone();
        // Caller metadata as text, one of them numeric: filters read it as a number too.
        h.metadata.insert("bytes".into(), doc.content.len().to_string());
        if let Some(dir) = doc.tags.get(2) {
            h.metadata.insert("dir".into(), dir.clone());
        }
        let created = create(client, h, doc.content.as_bytes()).await.unwrap();
        ids.insert(doc.name.clone(), created.artifact.unwrap().id);
    }
    ids
}

async fn search_client(server: &ServerProcess) -> SearchServiceClient<common::binary::Authed> {
    SearchServiceClient::new(server.channel().await)
}

async fn search(
    client: &mut SearchServiceClient<common::binary::Authed>,
    tenant: &str,
    query: &str,
) -> SearchResponse {
    client
        .search(SearchRequest {
            tenant: tenant.into(),
            project: P.into(),
            query: query.into(),
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn tagged_count(
    client: &mut SearchServiceClient<common::binary::Authed>,
    tenant: &str,
    tag: &str,
) -> u64 {
    client
        .search_by_tags(SearchByTagsRequest {
            tenant: tenant.into(),
            project: P.into(),
            tags: vec![tag.into()],
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .total_hits
}

async fn wait_indexed(client: &mut SearchServiceClient<common::binary::Authed>, tenant: &str, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let count = tagged_count(client, tenant, "bmad").await;
        if count == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the index holds {count} of {expected} documents"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The YAML front matter of a Markdown document, parsed here independently of the service.
fn front_matter(doc: &Doc) -> serde_json::Map<String, Value> {
    let Some(rest) = doc.content.strip_prefix("---\n") else {
        return Default::default();
    };
    let Some(end) = rest.find("\n---") else {
        return Default::default();
    };
    serde_norway::from_str::<Value>(&rest[..end])
        .ok()
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
}

fn filter(field: &str, condition: Condition) -> MetadataFilter {
    MetadataFilter {
        field: field.into(),
        condition: Some(condition),
    }
}

/// Every hit of a metadata search, paging through it.
async fn by_metadata(
    client: &mut SearchServiceClient<common::binary::Authed>,
    tenant: &str,
    filters: Vec<MetadataFilter>,
    sort: MetadataSort,
    descending: bool,
) -> Vec<SearchHit> {
    let mut hits = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .search_by_metadata(SearchByMetadataRequest {
                tenant: tenant.into(),
                project: P.into(),
                filters: filters.clone(),
                sort: sort as i32,
                descending,
                page_size: 40,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        hits.extend(page.hits);
        assert!(page.total_hits >= hits.len() as u64);
        if page.next_page_token.is_empty() {
            assert_eq!(page.total_hits, hits.len() as u64, "paging covers every hit");
            return hits;
        }
        token = page.next_page_token;
    }
}

fn names(hits: &[SearchHit]) -> Vec<String> {
    let mut names: Vec<String> = hits.iter().map(|h| h.name.clone()).collect();
    names.sort();
    names
}

fn expected_names(docs: &[Doc], keep: impl Fn(&Doc) -> bool) -> Vec<String> {
    let mut names: Vec<String> = docs.iter().filter(|d| keep(d)).map(|d| d.name.clone()).collect();
    names.sort();
    names
}

fn at(path: &[&str], map: &serde_json::Map<String, Value>) -> Option<Value> {
    let (first, rest) = path.split_first()?;
    let value = map.get(*first)?;
    if rest.is_empty() {
        Some(value.clone())
    } else {
        at(rest, value.as_object()?)
    }
}

fn date(text: &str) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: artifactd::search::parse_time(text).unwrap() / 1_000_000,
        nanos: 0,
    }
}

/// Front matter and caller metadata filters, sorting and paging, checked against what the
/// corpus files themselves say. Returns how many artifacts it added.
async fn check_metadata_search(
    client: &mut Client,
    search_api: &mut SearchServiceClient<common::binary::Authed>,
    docs: &[Doc],
) -> usize {
    let sort = MetadataSort::Name;
    // Equality on a front matter field.
    let hits = by_metadata(
        search_api,
        T,
        vec![filter(
            "front_matter.metadata.lifecycle",
            Condition::Equals("shim".into()),
        )],
        sort,
        false,
    )
    .await;
    let expected = expected_names(docs, |d| {
        at(&["metadata", "lifecycle"], &front_matter(d)) == Some(Value::from("shim"))
    });
    assert!(expected.len() > 2, "{expected:?}");
    assert_eq!(names(&hits), expected, "front_matter.metadata.lifecycle = shim");

    // A numeric range on a nested front matter field.
    let hits = by_metadata(
        search_api,
        T,
        vec![filter(
            "front_matter.sidebar.order",
            Condition::NumberRange(NumberRange {
                min: Some(2.0),
                max: Some(4.0),
            }),
        )],
        sort,
        false,
    )
    .await;
    let expected = expected_names(docs, |d| {
        at(&["sidebar", "order"], &front_matter(d))
            .and_then(|v| v.as_f64())
            .is_some_and(|n| (2.0..=4.0).contains(&n))
    });
    assert!(expected.len() > 20, "{} documents", expected.len());
    assert_eq!(names(&hits), expected, "2 <= front_matter.sidebar.order <= 4");

    // Presence of a nested key, through its parent.
    let hits = by_metadata(
        search_api,
        T,
        vec![filter("front_matter.sidebar", Condition::Exists(true))],
        sort,
        false,
    )
    .await;
    let expected = expected_names(docs, |d| front_matter(d).contains_key("sidebar"));
    assert!(expected.len() > 100, "{} documents", expected.len());
    assert_eq!(names(&hits), expected, "front_matter.sidebar exists");

    // Presence, absence and prefix together.
    let hits = by_metadata(
        search_api,
        T,
        vec![
            filter("name", Condition::Prefix("docs » ".into())),
            filter("front_matter.sidebar", Condition::Exists(false)),
            filter("content_type", Condition::Equals("text/markdown".into())),
        ],
        sort,
        false,
    )
    .await;
    let expected = expected_names(docs, |d| {
        d.name.starts_with("docs » ") && d.name.ends_with(".md") && !front_matter(d).contains_key("sidebar")
    });
    assert!(!expected.is_empty());
    assert_eq!(names(&hits), expected, "docs without a sidebar");

    // Date ranges: the corpus's templates filled in as an agent fills them, dated by
    // day and by RFC 3339 time, in a tenant of their own.
    let research = docs
        .iter()
        .find(|d| d.name.ends_with("research.template.md"))
        .unwrap();
    let prfaq = docs
        .iter()
        .find(|d| d.name.ends_with("prfaq-template.md"))
        .unwrap();
    let filled: Vec<Doc> = [
        (research, "{date}", "2025-03-01"),
        (research, "{date}", "2025-11-20"),
        (research, "{date}", "2026-02-10"),
        (prfaq, "{timestamp}", "2025-06-30T09:00:00Z"),
        (prfaq, "{timestamp}", "2026-01-01T01:30:00+02:00"),
    ]
    .into_iter()
    .map(|(template, placeholder, when)| Doc {
        name: format!("{when} {}", template.name),
        content: template.content.replace(placeholder, when),
        tags: vec!["bmad".into(), "md".into(), "dir-filled".into()],
    })
    .collect();
    // Each at its own version, to check the version order (1.10.0 after 1.2.0, a release
    // candidate before its release).
    let versions = ["1.2.0", "1.0.0", "0.9.0", "1.10.0", "1.0.0-rc.1"];
    for (doc, version) in filled.iter().zip(versions) {
        let mut h = header("filled", P, "doc", &doc.name);
        h.tags = doc.tags.clone();
        h.initial_version = version.into();
        create(client, h, doc.content.as_bytes()).await.unwrap();
    }
    wait_indexed(search_api, "filled", filled.len() as u64).await;
    let hits = by_metadata(
        search_api,
        "filled",
        vec![filter(
            "front_matter.created",
            Condition::TimeRange(TimeRange {
                from: Some(date("2025-01-01")),
                until: Some(date("2026-01-01")),
            }),
        )],
        MetadataSort::Name,
        false,
    )
    .await;
    // 2026-01-01T01:30:00+02:00 is 2025-12-31T23:30:00Z: inside the range.
    let in_2025 = expected_names(&filled, |d| !d.name.starts_with("2026-02"));
    assert_eq!(names(&hits), in_2025, "front_matter.created in 2025");
    let by_version = by_metadata(search_api, "filled", Vec::new(), MetadataSort::Version, false).await;
    let in_order: Vec<&str> = by_version.iter().map(|h| h.version.as_str()).collect();
    assert_eq!(
        in_order,
        ["0.9.0", "1.0.0-rc.1", "1.0.0", "1.2.0", "1.10.0"],
        "semver order"
    );

    // Caller metadata given as text compares as a number; sorted by size, largest first.
    let hits = by_metadata(
        search_api,
        T,
        vec![
            filter(
                "metadata.bytes",
                Condition::NumberRange(NumberRange {
                    min: Some(10_000.0),
                    max: None,
                }),
            ),
            filter("metadata.dir", Condition::Equals("dir-src".into())),
        ],
        MetadataSort::Size,
        true,
    )
    .await;
    let expected = expected_names(docs, |d| d.content.len() >= 10_000 && d.tags[2] == "dir-src");
    assert!(expected.len() > 10);
    assert_eq!(names(&hits), expected, "metadata.bytes >= 10000 in src");
    assert!(hits.windows(2).all(|w| w[0].size >= w[1].size), "largest first");
    assert_eq!(
        hits[0].size as usize,
        docs.iter()
            .filter(|d| d.tags[2] == "dir-src")
            .map(|d| d.content.len())
            .max()
            .unwrap()
    );

    // Sorting by name pages through the whole project in name order.
    let all = by_metadata(search_api, T, Vec::new(), MetadataSort::Name, false).await;
    let in_order: Vec<String> = all.iter().map(|h| h.name.clone()).collect();
    assert_eq!(in_order, expected_names(docs, |_| true), "name order");
    let newest_first = by_metadata(search_api, T, Vec::new(), MetadataSort::Created, true).await;
    assert!(
        newest_first.windows(2).all(|w| {
            let time = |h: &SearchHit| h.created_at.map(|t| (t.seconds, t.nanos));
            time(&w[0]) >= time(&w[1])
        }),
        "newest first"
    );
    assert_eq!(newest_first.len(), docs.len());

    // Bad filters and tokens are named.
    let bad = |filters: Vec<MetadataFilter>, token: &str| SearchByMetadataRequest {
        tenant: T.into(),
        project: P.into(),
        filters,
        page_token: token.into(),
        ..Default::default()
    };
    let first = search_api
        .search_by_metadata(SearchByMetadataRequest {
            page_size: 5,
            ..bad(Vec::new(), "")
        })
        .await
        .unwrap()
        .into_inner();
    let cases = [
        bad(vec![filter("colour", Condition::Equals("red".into()))], ""),
        bad(
            vec![filter("name", Condition::NumberRange(NumberRange::default()))],
            "",
        ),
        bad(
            vec![MetadataFilter {
                field: "size".into(),
                condition: None,
            }],
            "",
        ),
        bad(
            vec![filter("size", Condition::Prefix("1".into()))],
            &first.next_page_token,
        ),
        bad(Vec::new(), "not-a-token"),
    ];
    for request in cases {
        let error = search_api.search_by_metadata(request.clone()).await.unwrap_err();
        assert_eq!(
            error.code(),
            tonic::Code::InvalidArgument,
            "{request:?}: {error:?}"
        );
        let message = error.message();
        assert!(
            message.starts_with("filters") || message.starts_with("page_token"),
            "{message}"
        );
    }
    filled.len()
}

/// A phrase of eight words from the document that no other document contains.
fn distinctive_phrase(doc: &Doc, docs: &[Doc]) -> Option<String> {
    for line in doc.content.lines() {
        let words: Vec<&str> = line
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.len() > 2 && w.chars().all(|c| c.is_ascii_alphabetic()))
            .collect();
        for window in words.windows(8) {
            let phrase = window.join(" ");
            let normalized = |text: &str| {
                text.split(|c: char| !c.is_alphanumeric())
                    .filter(|w| !w.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase()
            };
            let needle = phrase.to_lowercase();
            let occurrences = docs
                .iter()
                .filter(|d| normalized(&d.content).contains(&needle))
                .count();
            if occurrences == 1 {
                return Some(phrase);
            }
        }
    }
    None
}

fn first_h1(content: &str) -> Option<String> {
    content
        .lines()
        .find_map(|line| line.strip_prefix("# ").map(|t| t.trim().to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_the_bmad_corpus() {
    let docs = corpus_docs();
    assert!(docs.len() > 300, "the corpus has {} documents", docs.len());
    let data = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start_with(ServerOptions {
        data_dir: Some(data.path().to_owned()),
        ..Default::default()
    });
    let mut client = server.client().await;
    let ids = upload_all(&mut client, T, &docs).await;
    let mut search_api = search_client(&server).await;
    wait_indexed(&mut search_api, T, docs.len() as u64).await;

    // Known items: a distinctive phrase finds its document first.
    let mut checked = 0;
    for doc in docs
        .iter()
        .filter(|d| d.name.ends_with(".md"))
        .step_by(17)
        .take(12)
    {
        let Some(phrase) = distinctive_phrase(doc, &docs) else {
            continue;
        };
        let found = search(&mut search_api, T, &format!("\"{phrase}\"")).await;
        assert_eq!(
            found.hits.first().map(|h| h.artifact_id.as_str()),
            Some(ids[&doc.name].as_str()),
            "the phrase {phrase:?} should find {} first: {:?}",
            doc.name,
            found.hits.iter().map(|h| &h.name).collect::<Vec<_>>()
        );
        assert!(
            found.hits[0].snippet.contains("<b>"),
            "snippets highlight: {}",
            found.hits[0].snippet
        );
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} known-item phrases checked");

    // A document's title finds it among the first three.
    let titles: Vec<(&Doc, String)> = docs
        .iter()
        .filter_map(|d| first_h1(&d.content).map(|t| (d, t)))
        .filter(|(_, t)| t.split_whitespace().count() >= 3)
        .collect();
    let unique_titles: Vec<&(&Doc, String)> = titles
        .iter()
        .filter(|(_, t)| titles.iter().filter(|(_, other)| other == t).count() == 1)
        .step_by(9)
        .take(12)
        .collect();
    assert!(unique_titles.len() >= 8);
    for (doc, title) in unique_titles {
        let query: String = title
            .chars()
            .map(|c| if c.is_alphanumeric() || c == ' ' { c } else { ' ' })
            .collect();
        let found = search(&mut search_api, T, &query).await;
        let top3: Vec<&str> = found
            .hits
            .iter()
            .take(3)
            .map(|h| h.artifact_id.as_str())
            .collect();
        assert!(
            top3.contains(&ids[&doc.name].as_str()),
            "the title {title:?} should find {} in the top 3: {:?}",
            doc.name,
            found
                .hits
                .iter()
                .take(3)
                .map(|h| (&h.name, h.score))
                .collect::<Vec<_>>()
        );
    }

    // Tags with facets: AND narrows, ANY widens, counts cover the whole result set.
    let markdown = docs.iter().filter(|d| d.tags.contains(&"md".to_owned())).count() as u64;
    let yaml = docs
        .iter()
        .filter(|d| d.tags.contains(&"yaml".to_owned()))
        .count() as u64;
    assert_eq!(tagged_count(&mut search_api, T, "md").await, markdown);
    let any = search_api
        .search_by_tags(SearchByTagsRequest {
            tenant: T.into(),
            project: P.into(),
            tags: vec!["md".into(), "yaml".into()],
            r#match: TagMatch::Any as i32,
            page_size: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(any.total_hits, markdown + yaml);
    let facet = |name: &str| any.facets.iter().find(|f| f.tag == name).map(|f| f.count);
    assert_eq!(facet("md"), Some(markdown));
    assert_eq!(facet("yaml"), Some(yaml));
    assert_eq!(facet("bmad"), Some(markdown + yaml));
    let both = search_api
        .search_by_tags(SearchByTagsRequest {
            tenant: T.into(),
            project: P.into(),
            tags: vec!["md".into(), "yaml".into()],
            r#match: TagMatch::All as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(both.total_hits, 0, "no document is both");

    // Filters and paging through a stable result set.
    let broad = "agent OR workflow OR story";
    let mut seen = HashSet::new();
    let mut token = String::new();
    let mut total;
    loop {
        let page = search_api
            .search(SearchRequest {
                tenant: T.into(),
                project: P.into(),
                query: broad.into(),
                tags: vec!["md".into()],
                page_size: 25,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        total = page.total_hits;
        for hit in &page.hits {
            assert!(hit.tags.contains(&"md".to_owned()));
            assert!(
                seen.insert(hit.artifact_id.clone()),
                "{} repeated across pages",
                hit.name
            );
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len() as u64, total);
    assert!(total > 25, "the broad query spans pages: {total}");

    let filled = check_metadata_search(&mut client, &mut search_api, &docs).await;

    // Tenant isolation: another tenant's document is invisible.
    let secret = Doc {
        name: "globex-plan.md".into(),
        content: "# Globex plan\n\nzanzibar quokka migration strategy\n".into(),
        tags: vec!["bmad".into()],
    };
    upload_all(&mut client, "globex", std::slice::from_ref(&secret)).await;
    wait_indexed(&mut search_api, "globex", 1).await;
    assert_eq!(
        search(&mut search_api, "globex", "zanzibar quokka")
            .await
            .total_hits,
        1
    );
    assert_eq!(search(&mut search_api, T, "zanzibar quokka").await.total_hits, 0);
    assert_eq!(search(&mut search_api, T, "globex").await.total_hits, 0);
    // The query language names no tenant: only the request's tenant is searched.
    let field = search_api
        .search(SearchRequest {
            tenant: T.into(),
            project: P.into(),
            query: "tenant:globex".into(),
            syntax: QuerySyntax::Operators as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(field.code(), tonic::Code::InvalidArgument);
    assert!(field.message().contains("no field \"tenant\""), "{field:?}");
    let named = |name: &str| vec![filter("name", Condition::Equals(name.into()))];
    for (tenant, expected) in [("globex", 1), (T, 0)] {
        let hits = by_metadata(
            &mut search_api,
            tenant,
            named("globex-plan.md"),
            MetadataSort::Name,
            false,
        )
        .await;
        assert_eq!(hits.len(), expected, "metadata search in {tenant}");
    }

    // Deleted artifacts vanish.
    let victim = &docs.iter().find(|d| d.name == "SECURITY.md").unwrap();
    client
        .delete_artifact(DeleteArtifactRequest {
            tenant: T.into(),
            project: P.into(),
            artifact_id: ids[&victim.name].clone(),
        })
        .await
        .unwrap();
    wait_indexed(&mut search_api, T, docs.len() as u64 - 1).await;
    let found = search(&mut search_api, T, "\"Security Policy\"").await;
    assert!(
        found.hits.iter().all(|h| h.artifact_id != ids[&victim.name]),
        "deleted artifacts vanish"
    );
    let named_victim = by_metadata(
        &mut search_api,
        T,
        named("SECURITY.md"),
        MetadataSort::Name,
        false,
    )
    .await;
    assert!(
        named_victim.is_empty(),
        "deleted artifacts vanish from metadata search"
    );

    // Bad queries in the query language are named with their place, never a panic.
    for (bad, place) in [
        ("title:\"unterminated", "character 7"),
        ("nosuchfield:x", "character 1"),
        ("(agent OR", "character 1"),
        ("", ""),
    ] {
        let error = search_api
            .search(SearchRequest {
                tenant: T.into(),
                project: P.into(),
                query: bad.into(),
                syntax: QuerySyntax::Operators as i32,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument, "{bad:?}: {error:?}");
        assert!(
            error.message().starts_with("query") && error.message().contains(place),
            "{error:?}"
        );
    }
    // In natural text, the default, the same text is words: never an error.
    for text in [
        "title:\"unterminated",
        "nosuchfield:x",
        "(agent OR",
        "what's the architect's job?",
        "Working Backwards: The PRFAQ Challenge",
        "a AND",
        "+-!@#$%^&*()[]{}",
    ] {
        search_api
            .search(SearchRequest {
                tenant: T.into(),
                project: P.into(),
                query: text.into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{text:?}: {e:?}"));
    }
    for blank in ["", "   \t\n"] {
        let error = search_api
            .search(SearchRequest {
                tenant: T.into(),
                project: P.into(),
                query: blank.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(error.message().starts_with("query:"), "{error:?}");
    }

    // Rebuilding the index from the catalog gives the same results.
    let probes = [
        "\"sprint planning\"",
        "architecture AND decision",
        "installer",
        "tags:md AND agent",
    ];
    let everything = |query: &str| SearchRequest {
        tenant: T.into(),
        project: P.into(),
        query: query.into(),
        page_size: 1000,
        syntax: QuerySyntax::Operators as i32,
        ..Default::default()
    };
    let mut before = Vec::new();
    for probe in probes {
        let result = search_api.search(everything(probe)).await.unwrap().into_inner();
        before.push((
            result.total_hits,
            result.hits.into_iter().map(|h| h.artifact_id).collect::<Vec<_>>(),
        ));
    }
    let ordered_probe = || {
        vec![filter(
            "front_matter.sidebar.order",
            Condition::NumberRange(NumberRange {
                min: Some(1.0),
                max: None,
            }),
        )]
    };
    let ids_of = |hits: Vec<SearchHit>| hits.into_iter().map(|h| h.artifact_id).collect::<Vec<_>>();
    let metadata_before =
        ids_of(by_metadata(&mut search_api, T, ordered_probe(), MetadataSort::Updated, true).await);
    assert!(server.terminate().success());
    let output = common::binary::command()
        .arg("reindex")
        .env("ARTIFACTD_DATA_DIR", data.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reported = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        reported.contains(&format!("reindexed {} artifacts", docs.len() - 1 + 1 + filled)),
        "{reported}"
    );
    let server = ServerProcess::start_with(ServerOptions {
        data_dir: Some(data.path().to_owned()),
        ..Default::default()
    });
    let mut search_api = search_client(&server).await;
    // The same hits and the same best hit. BM25 statistics count deleted documents until
    // their segments merge, so hits whose scores differ in the last digits may trade places.
    for (probe, (total, expected)) in probes.iter().zip(&before) {
        let result = search_api.search(everything(probe)).await.unwrap().into_inner();
        let ids: Vec<String> = result.hits.into_iter().map(|h| h.artifact_id).collect();
        assert_eq!(result.total_hits, *total, "{probe} after reindex");
        assert_eq!(
            ids.first(),
            expected.first(),
            "{probe}: the best hit after reindex"
        );
        let sorted = |ids: &[String]| {
            let mut ids = ids.to_vec();
            ids.sort();
            ids
        };
        assert_eq!(sorted(&ids), sorted(expected), "{probe}: the hits after reindex");
    }
    assert_eq!(
        ids_of(by_metadata(&mut search_api, T, ordered_probe(), MetadataSort::Updated, true).await),
        metadata_before,
        "metadata search after reindex"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_resumes_indexing_without_loss_or_duplicates() {
    let docs: Vec<Doc> = corpus_docs()
        .into_iter()
        .filter(|d| d.name.ends_with(".md"))
        .take(60)
        .collect();
    let data = tempfile::tempdir().unwrap();
    let options = || ServerOptions {
        data_dir: Some(data.path().to_owned()),
        ..Default::default()
    };
    let mut server = ServerProcess::start_with(options());
    let mut client = server.client().await;
    let ids = upload_all(&mut client, T, &docs).await;
    // Killed without any chance to finish indexing what it was told about.
    server.kill();
    let server = ServerProcess::start_with(options());
    let mut search_api = search_client(&server).await;
    wait_indexed(&mut search_api, T, docs.len() as u64).await;
    for (name, id) in ids.iter().step_by(6) {
        let found = search_api
            .search(SearchRequest {
                tenant: T.into(),
                project: P.into(),
                query: format!("artifact_id:{id} OR name:\"{}\"", name.replace('"', " ")),
                syntax: QuerySyntax::Operators as i32,
                page_size: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let copies = found.hits.iter().filter(|h| &h.artifact_id == id).count();
        assert_eq!(copies, 1, "{name} is indexed exactly once");
    }

    // An index that cannot be read is rebuilt from the catalog on start.
    let mut server = server;
    assert!(server.terminate().success());
    let index = data.path().join("index");
    std::fs::remove_dir_all(&index).unwrap();
    std::fs::create_dir_all(&index).unwrap();
    std::fs::write(index.join("meta.json"), b"{ not json").unwrap();
    let mut server = ServerProcess::start_with(options());
    let mut search_api = search_client(&server).await;
    wait_indexed(&mut search_api, T, docs.len() as u64).await;

    // An index ahead of its catalog (here: a new, empty catalog) is rebuilt rather than
    // followed from a position the catalog has not reached, which would skip new changes.
    assert!(server.terminate().success());
    for file in std::fs::read_dir(data.path()).unwrap().flatten() {
        if file.file_name().to_string_lossy().starts_with("catalog.db") {
            std::fs::remove_file(file.path()).unwrap();
        }
    }
    let server = ServerProcess::start_with(options());
    let mut client = server.client().await;
    let mut search_api = search_client(&server).await;
    upload_all(&mut client, T, &docs[..3]).await;
    wait_indexed(&mut search_api, T, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_and_categories_are_editable_without_a_new_version() {
    use artifactd::proto::{Labels, UpdateArtifactLabelsRequest, update_artifact_header};
    let server = ServerProcess::start();
    let mut client = server.client().await;
    let mut search_api = search_client(&server).await;
    let mut first = header(T, P, "story", "story-1.md");
    first.tags = vec!["payments".into(), "bmad".into()];
    first.categories = vec!["epic-1".into()];
    let created = create(&mut client, first, b"# Story one\n\nrefund flow\n")
        .await
        .unwrap();
    let id = created.artifact.unwrap().id;
    let mut second = header(T, P, "story", "story-2.md");
    second.tags = vec!["bmad".into()];
    second.categories = vec!["epic-1".into(), "epic-2".into()];
    create(&mut client, second, b"# Story two\n\nchargebacks\n")
        .await
        .unwrap();
    wait_indexed(&mut search_api, T, 2).await;

    let by_category = search_api
        .search_by_tags(SearchByTagsRequest {
            tenant: T.into(),
            project: P.into(),
            categories: vec!["epic-1".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_category.total_hits, 2);
    let epic2 = by_category
        .category_facets
        .iter()
        .find(|f| f.tag == "epic-2")
        .map(|f| f.count);
    assert_eq!(epic2, Some(1));
    assert_eq!(
        by_category
            .facets
            .iter()
            .find(|f| f.tag == "payments")
            .map(|f| f.count),
        Some(1)
    );

    // Relabel without a version.
    let relabelled = client
        .update_artifact_labels(UpdateArtifactLabelsRequest {
            tenant: T.into(),
            project: P.into(),
            artifact_id: id.clone(),
            labels: Some(Labels {
                tags: vec!["bmad".into(), "refunds".into()],
                categories: vec!["epic-3".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .artifact
        .unwrap();
    assert_eq!(relabelled.version_count, 1, "no version was created");
    assert_eq!(relabelled.categories, vec!["epic-3"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = search_api
            .search(SearchRequest {
                tenant: T.into(),
                project: P.into(),
                query: "refund".into(),
                categories: vec!["epic-3".into()],
                tags: vec!["refunds".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if found.total_hits == 1 {
            assert_eq!(found.hits[0].categories, vec!["epic-3"]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the relabelling never reached the index"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Labels can change with a version too; bad labels are named.
    let mut next = common::client::update_header(T, P, &id);
    next.next_version = Some(update_artifact_header::NextVersion::Bump(
        artifactd::proto::BumpKind::Minor as i32,
    ));
    next.labels = Some(Labels {
        tags: vec!["bmad".into()],
        categories: vec![],
    });
    let updated = common::client::update(&mut client, next, b"# Story one\n\nv2\n")
        .await
        .unwrap();
    let artifact = updated.artifact.unwrap();
    assert_eq!(
        (artifact.tags, artifact.categories, artifact.version_count),
        (vec!["bmad".to_owned()], vec![], 2)
    );
    let error = client
        .update_artifact_labels(UpdateArtifactLabelsRequest {
            tenant: T.into(),
            project: P.into(),
            artifact_id: id,
            labels: Some(Labels {
                tags: vec![],
                categories: vec!["bad,category".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(error.message().starts_with("categories"), "{error:?}");
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> HashSet<PathBuf> {
    let mut files = HashSet::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.insert(path);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_whose_content_is_lost_is_indexed_by_metadata_and_stops_nothing() {
    let docs: Vec<Doc> = corpus_docs()
        .into_iter()
        .filter(|d| d.name.ends_with(".md") && d.content.len() > 2000)
        .take(4)
        .collect();
    let data = tempfile::tempdir().unwrap();
    let options = || ServerOptions {
        data_dir: Some(data.path().to_owned()),
        ..Default::default()
    };
    let blobs = data.path().join("blobs");
    let mut server = ServerProcess::start_with(options());
    let mut client = server.client().await;
    let lost = upload_all(&mut client, T, &docs[..1]).await;
    let lost_packs = files_under(&blobs);
    assert!(
        !lost_packs.is_empty(),
        "the first upload wrote packs under {}",
        blobs.display()
    );
    upload_all(&mut client, T, &docs[1..3]).await;
    assert!(server.terminate().success());

    // The first artifact's packs are lost and the index must be rebuilt from the catalog.
    for pack in &lost_packs {
        std::fs::remove_file(pack).unwrap();
    }
    std::fs::remove_dir_all(data.path().join("index")).unwrap();
    let server = ServerProcess::start_with(options());
    let mut client = server.client().await;
    let mut search_api = search_client(&server).await;
    wait_indexed(&mut search_api, T, 3).await;
    // The indexer goes on following the catalog.
    upload_all(&mut client, T, &docs[3..]).await;
    wait_indexed(&mut search_api, T, 4).await;

    let lost_name = &docs[0].name;
    let hits = by_metadata(
        &mut search_api,
        T,
        vec![filter("name", Condition::Equals(lost_name.clone()))],
        MetadataSort::Name,
        false,
    )
    .await;
    assert_eq!(hits.len(), 1, "{lost_name} is still found by its metadata");
    assert_eq!(hits[0].artifact_id, lost[lost_name]);
    for doc in &docs[1..] {
        let phrase = distinctive_phrase(doc, &docs).expect("a distinctive phrase");
        let found = search(&mut search_api, T, &format!("\"{phrase}\"")).await;
        assert_eq!(found.total_hits, 1, "{} is found by its text", doc.name);
    }
}

/// Copies (or, with `to` as the live name, restores) the SQLite catalog files of a stopped server.
fn copy_catalog(data: &Path, from_prefix: &str, to_prefix: &str) {
    for entry in std::fs::read_dir(data).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(to_prefix) {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    for entry in std::fs::read_dir(data).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix(from_prefix) {
            std::fs::copy(entry.path(), data.join(format!("{to_prefix}{rest}"))).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_is_rebuilt_when_the_catalog_is_restored_from_an_older_backup() {
    let docs: Vec<Doc> = corpus_docs()
        .into_iter()
        .filter(|d| d.name.ends_with(".md") && d.content.len() > 2000)
        .take(5)
        .collect();
    let data = tempfile::tempdir().unwrap();
    let options = |index: &str| {
        ServerOptions {
            data_dir: Some(data.path().to_owned()),
            ..Default::default()
        }
        .env(
            "ARTIFACTD_SEARCH__INDEX_DIR",
            data.path().join(index).to_string_lossy(),
        )
    };

    // A, then the backup, then B and C: the index ends at the event of C.
    let mut server = ServerProcess::start_with(options("index"));
    let mut client = server.client().await;
    upload_all(&mut client, T, &docs[..1]).await;
    assert!(server.terminate().success());
    copy_catalog(data.path(), "catalog.db", "backup.db");
    let mut server = ServerProcess::start_with(options("index"));
    let mut client = server.client().await;
    let mut search_api = search_client(&server).await;
    upload_all(&mut client, T, &docs[1..3]).await;
    wait_indexed(&mut search_api, T, 3).await;
    assert!(server.terminate().success());

    // The catalog goes back to the backup, and new changes (X and Y) take the numbers B
    // and C had, while this index is elsewhere.
    copy_catalog(data.path(), "backup.db", "catalog.db");
    let mut server = ServerProcess::start_with(options("elsewhere"));
    let mut client = server.client().await;
    upload_all(&mut client, T, &docs[3..5]).await;
    assert!(server.terminate().success());

    // Back on the first index: its checkpoint's position exists in the catalog but holds
    // another event, so it is rebuilt: A, X and Y, and not B or C.
    // The old index also holds three documents (A, B and C) until the indexer finds its
    // checkpoint stale and rebuilds: wait for the rebuilt set, not for a count.
    let server = ServerProcess::start_with(options("index"));
    let mut search_api = search_client(&server).await;
    let expected = [1, 0, 0, 1, 1];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut found = Vec::new();
        for doc in &docs {
            let phrase = distinctive_phrase(doc, &docs).expect("a distinctive phrase");
            found.push(
                search(&mut search_api, T, &format!("\"{phrase}\""))
                    .await
                    .total_hits,
            );
        }
        if found == expected {
            break;
        }
        let names: Vec<&str> = docs.iter().map(|doc| doc.name.as_str()).collect();
        assert!(
            Instant::now() < deadline,
            "hits per document {names:?}: {found:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Names that are paths, listed and searched by folder; snippets from the body, never the
/// front matter, with highlight positions and their escaping said; a title for every hit;
/// versions with or without a leading `v`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_snippets_titles_and_versions() {
    let server = ServerProcess::start();
    let mut client = server.client().await;
    let mut search_api = search_client(&server).await;
    let docs = [
        (
            "docs/stories/1.1.story.md",
            "---\ntitle: Story 1.1\nowner: zebrafinch\n---\n# Story 1.1: Login\n\nAs a user I sign in with <b>passkeys</b> & a fallback code.\n",
        ),
        (
            "docs/stories/1.2.story.md",
            "# Story 1.2: Logout\n\nThe session ends; passkeys stay registered.\n",
        ),
        (
            "docs/prd/epic-2.md",
            "# Epic 2\n\nShips with release v6.3.0 of the platform.\n",
        ),
        (
            "notes/release.md",
            "# Release notes\n\nVersion 7.1.2 fixes passkeys on tablets.\n",
        ),
        ("data/agents.csv", "name,role\nquinn,qa\nmary,analyst passkeys\n"),
        ("config/team.yaml", "team: quokka\nmembers:\n  - mary\n"),
    ];
    for (name, content) in docs {
        let mut h = header(T, P, "doc", name);
        h.tags = vec!["bmad".into()];
        create(&mut client, h, content.as_bytes()).await.unwrap();
    }
    wait_indexed(&mut search_api, T, docs.len() as u64).await;

    // Folders list and filter, sub-folders included; a bad folder is named.
    let listed = |prefix: &str| artifactd::proto::ListArtifactsRequest {
        tenant: T.into(),
        project: P.into(),
        path_prefix: prefix.into(),
        ..Default::default()
    };
    let names = |artifacts: Vec<artifactd::proto::Artifact>| {
        artifacts.into_iter().map(|a| a.name).collect::<Vec<_>>()
    };
    let stories = client
        .list_artifacts(listed("docs/stories/"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        names(stories.artifacts),
        ["docs/stories/1.1.story.md", "docs/stories/1.2.story.md"]
    );
    let all_docs = client.list_artifacts(listed("docs/")).await.unwrap().into_inner();
    assert_eq!(all_docs.artifacts.len(), 3);
    for bad in ["docs", "/docs/", "docs/../"] {
        let error = client.list_artifacts(listed(bad)).await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument, "{bad:?}");
        assert!(error.message().starts_with("path_prefix:"), "{error:?}");
    }
    let in_folder = |query: &str, prefix: &str| SearchRequest {
        tenant: T.into(),
        project: P.into(),
        query: query.into(),
        path_prefix: prefix.into(),
        ..Default::default()
    };
    let found = search_api
        .search(in_folder("passkeys", "docs/stories/"))
        .await
        .unwrap()
        .into_inner();
    let mut found_names: Vec<String> = found.hits.iter().map(|h| h.name.clone()).collect();
    found_names.sort();
    assert_eq!(
        found_names,
        ["docs/stories/1.1.story.md", "docs/stories/1.2.story.md"]
    );
    assert_eq!(search(&mut search_api, T, "passkeys").await.total_hits, 4);
    let error = search_api
        .search(in_folder("passkeys", "docs"))
        .await
        .unwrap_err();
    assert!(error.message().starts_with("path_prefix:"), "{error:?}");

    // The snippet is the body's, not the front matter's; highlights point into the plain text.
    let login = search(&mut search_api, T, "sign in passkeys").await;
    let hit = &login.hits[0];
    assert_eq!(hit.name, "docs/stories/1.1.story.md");
    assert!(
        !hit.snippet_text.contains("owner:") && !hit.snippet_text.contains("---"),
        "{hit:?}"
    );
    assert!(
        hit.snippet.contains("&lt;b&gt;") && hit.snippet_text.contains("<b>passkeys</b> & a"),
        "{hit:?}"
    );
    assert!(!hit.highlights.is_empty());
    let chars: Vec<char> = hit.snippet_text.chars().collect();
    for h in &hit.highlights {
        let word: String = chars[h.start as usize..h.end as usize]
            .iter()
            .collect::<String>()
            .to_lowercase();
        assert!(
            ["sign", "in", "passkeys"].contains(&word.as_str()),
            "highlight {word:?} in {hit:?}"
        );
    }
    // Front matter is still searchable, it just is not the snippet.
    assert_eq!(
        search(&mut search_api, T, "zebrafinch").await.hits[0].name,
        "docs/stories/1.1.story.md"
    );

    // CSV and YAML hits have a title (the name) and a snippet.
    for (query, name) in [("analyst", "data/agents.csv"), ("members", "config/team.yaml")] {
        let found = search(&mut search_api, T, query).await;
        let hit = found
            .hits
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("{query}: {found:?}"));
        assert_eq!(hit.title, name);
        assert!(!hit.snippet_text.is_empty() && !hit.snippet.is_empty(), "{hit:?}");
    }
    // A hit on the name alone still shows the opening of the body.
    let by_name = search(&mut search_api, T, "epic").await;
    assert!(
        by_name.hits.iter().all(|h| !h.snippet_text.is_empty()),
        "{by_name:?}"
    );

    // Versions match with or without the `v`.
    for (query, name) in [
        ("6.3.0", "docs/prd/epic-2.md"),
        ("v7.1.2", "notes/release.md"),
        ("V6.3.0", "docs/prd/epic-2.md"),
    ] {
        let found = search(&mut search_api, T, query).await;
        assert_eq!(
            found.hits.first().map(|h| h.name.as_str()),
            Some(name),
            "{query}: {found:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_small_creates_shares_index_commits_and_stays_fresh() {
    let server = ServerProcess::start();
    let mut client = server.client().await;
    let mut searcher = search_client(&server).await;
    // Let the start-up commits settle, then count from here.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = common::metric(server.http, "artifactd_index_commits_total").await;
    let creates = 150;
    let started = Instant::now();
    for n in 0..creates {
        let content = format!("# Note {n}\n\nstreamword{n} is written down.\n");
        create(
            &mut client,
            header(T, P, "note", &format!("note-{n}.md")),
            content.as_bytes(),
        )
        .await
        .unwrap();
    }
    let elapsed = started.elapsed();
    // The last one is searchable within the freshness goal.
    let last = format!("streamword{}", creates - 1);
    while search(&mut searcher, T, &last).await.total_hits != 1 {
        assert!(
            started.elapsed() - elapsed < Duration::from_secs(1),
            "the last create was not searchable within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let commits = common::metric(server.http, "artifactd_index_commits_total").await - before;
    // Commits are at least 100 ms apart under a stream: however fast or slow this machine,
    // no more than one per 100 ms of the stream (and a couple at its edges).
    let allowed = (started.elapsed().as_millis() / 100) as f64 + 3.0;
    assert!(
        commits <= allowed,
        "{commits} commits for {creates} creates in {elapsed:?}"
    );
    assert!(
        commits < creates as f64,
        "{commits} commits for {creates} creates"
    );
    // Every create is found.
    let first = search(&mut searcher, T, "streamword0").await;
    assert_eq!(first.total_hits, 1);
}
