//! `cargo bench --bench search`: search at 100k artifacts, against Postgres full-text search
//! over the same documents in the same run, printed as `RESULT <name> <value>` lines.
//!
//! The documents are the BMAD docs recombined: each takes the front matter, title and
//! opening of one corpus document and two sections (`## ` to the next `## `) of two others,
//! chosen by a seeded generator, so the 100k are different yet made of real text.
//!
//! - `index_docs_per_s`: documents per second into the tantivy index, in commits of 2,048
//!   (as the indexer commits a backlog), metadata terms and all.
//! - `query_p50_ms`, `query_p95_ms`: a fixed mix of queries (words, phrases, boolean and field
//!   queries, tag and type filters) sent to the release binary over gRPC `Search`, which
//!   counts all hits and returns the top 20 with snippets.
//! - `postgres_p50_ms`, `postgres_p95_ms`: the same queries against Postgres (a stored
//!   weighted tsvector with a GIN index, `websearch_to_tsquery`, `ts_rank`, `ts_headline`),
//!   counting all hits and returning the top 20 with headlines, over a local connection.
//! - `query_p95_vs_postgres_fts`: `query_p95_ms / postgres_p95_ms` (below 1 is faster).
//! - `freshness_p50_ms`, `freshness_p99_ms`: from `CreateArtifact` returning to the artifact
//!   being found by `Search`, for 200 creates on the server holding the 100k index.
//!
//! - `<kind>_recall_at_1`, `<kind>_recall_at_3`, `<kind>_mrr` for the kinds `sentence`,
//!   `title` and `question` of the known-item evaluation (`search_eval/queries.json` over
//!   the BMAD docs, each file named by its path), and the same figures prefixed
//!   `baseline_operators_` for the same text read by the query language.
//!
//! Needs Postgres (the test command starts it; see README), reached as the tests reach it.
//! `ARTIFACTD_BENCH_DOCS` changes the number of documents.

#[path = "../tests/common/mod.rs"]
mod common;

use artifactd::ingest::extract::{ContentShape, extract};
use artifactd::proto::SearchRequest;
use artifactd::proto::search_service_client::SearchServiceClient;
use artifactd::search::{ArtifactMetadata, IndexedArtifact, SearchIndex};
use common::binary::{ServerOptions, ServerProcess};
use common::client::{create, header};
use common::postgres::TestDatabase;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use sqlx::Connection;
use std::path::Path;
use std::time::{Duration, Instant};

const TENANT: &str = "bench";
const PROJECT: &str = "docs";
/// Documents per commit, as the indexer commits a backlog.
const BATCH: usize = 2048;
const ROUNDS: usize = 10;
const FRESHNESS_SAMPLES: usize = 200;
const TYPES: [&str; 5] = ["prd", "architecture", "story", "epic", "guide"];
const TAGS: [&str; 8] = [
    "payments",
    "security",
    "onboarding",
    "platform",
    "mobile",
    "search",
    "infra",
    "billing",
];

/// One query of the mix, as each engine spells it.
struct Query {
    tantivy: &'static str,
    /// websearch_to_tsquery syntax, or to_tsquery when `raw`.
    postgres: &'static str,
    raw: bool,
    tag: Option<&'static str>,
    artifact_type: Option<&'static str>,
}

impl Query {
    /// Whether the tantivy spelling uses the query language rather than natural text.
    fn operators(&self) -> bool {
        self.tantivy.starts_with(['+', '-'])
            || self.tantivy.starts_with("title:")
            || self.tantivy.contains(" OR ")
    }
}

const fn q(tantivy: &'static str, postgres: &'static str) -> Query {
    Query {
        tantivy,
        postgres,
        raw: false,
        tag: None,
        artifact_type: None,
    }
}

fn mix() -> Vec<Query> {
    vec![
        q("workflow", "workflow"),
        q("architecture", "architecture"),
        q("sprint", "sprint"),
        q("persona", "persona"),
        q("checklist", "checklist"),
        q("installer", "installer"),
        q("elicitation", "elicitation"),
        q("brainstorming", "brainstorming"),
        q("sprint planning", "sprint or planning"),
        q("story acceptance criteria", "story or acceptance or criteria"),
        q("+agent +workflow", "agent workflow"),
        q("+architecture +decision", "architecture decision"),
        q("+epic +story -template", "epic story -template"),
        q("\"sprint planning\"", "\"sprint planning\""),
        q("\"acceptance criteria\"", "\"acceptance criteria\""),
        q("\"party mode\"", "\"party mode\""),
        q("\"product brief\"", "\"product brief\""),
        q("validation OR review", "validation or review"),
        // Natural text as agents type it: a sentence, a title, a question.
        q(
            "The PM agent facilitates a structured conversation to produce the PRD.",
            "The PM agent facilitates a structured conversation to produce the PRD.",
        ),
        q(
            "Working Backwards: The PRFAQ Challenge",
            "Working Backwards: The PRFAQ Challenge",
        ),
        q("what's the architect's job?", "what's the architect's job?"),
        Query {
            raw: true,
            ..q("title:architecture", "architectur:A")
        },
        Query {
            raw: true,
            ..q("title:workflow", "workflow:A")
        },
        Query {
            tag: Some("security"),
            ..q("threat", "threat")
        },
        Query {
            tag: Some("payments"),
            ..q("agent", "agent")
        },
        Query {
            artifact_type: Some("story"),
            ..q("implementation", "implementation")
        },
        Query {
            artifact_type: Some("prd"),
            ..q("requirements", "requirements")
        },
    ]
}

struct Source {
    /// Front matter, title and text up to the first `## `.
    opening: String,
    sections: Vec<String>,
}

fn corpus() -> Vec<Source> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(&common::corpus_dir().join("bmad-docs"), &mut paths);
    paths.sort();
    paths
        .into_iter()
        .filter_map(|path| String::from_utf8(std::fs::read(path).ok()?).ok())
        .map(|text| {
            let mut parts = text.split("\n## ");
            let opening = parts.next().unwrap_or_default().to_owned();
            let sections = parts.map(|s| format!("\n## {s}")).collect();
            Source { opening, sections }
        })
        .collect()
}

struct Synthetic {
    id: String,
    name: String,
    artifact_type: &'static str,
    tags: Vec<&'static str>,
    content: String,
}

fn synthesize(sources: &[Source], count: usize) -> Vec<Synthetic> {
    let mut rng = StdRng::seed_from_u64(20_261_128);
    let with_sections: Vec<&Source> = sources.iter().filter(|s| !s.sections.is_empty()).collect();
    (0..count)
        .map(|i| {
            let base = sources.choose(&mut rng).unwrap();
            let mut content = base.opening.clone();
            for _ in 0..2 {
                let other = with_sections.choose(&mut rng).unwrap();
                content.push_str(other.sections.choose(&mut rng).unwrap());
            }
            let tag_count = rng.random_range(1..=3);
            let mut tags: Vec<&'static str> = TAGS.choose_multiple(&mut rng, tag_count).copied().collect();
            tags.sort();
            Synthetic {
                id: format!("{i:08}"),
                name: format!("doc-{i:06}.md"),
                artifact_type: TYPES.choose(&mut rng).unwrap(),
                tags,
                content,
            }
        })
        .collect()
}

fn indexed(doc: &Synthetic) -> IndexedArtifact {
    let bytes = doc.content.as_bytes();
    let mut shape = ContentShape::default();
    shape.observe(bytes, true);
    let extracted = extract("text/markdown", bytes, shape);
    let now = 1_790_000_000_000_000;
    IndexedArtifact {
        artifact_id: doc.id.clone(),
        tenant: TENANT.into(),
        project: PROJECT.into(),
        linked_into: Vec::new(),
        state: "active".into(),
        tags: doc.tags.iter().map(|t| (*t).to_owned()).collect(),
        categories: Vec::new(),
        headings: extracted.headings.clone(),
        body: doc.content.clone(),
        meta: ArtifactMetadata {
            name: doc.name.clone(),
            artifact_type: doc.artifact_type.into(),
            title: extracted.title.clone().unwrap_or_default(),
            content_type: "text/markdown".into(),
            version: "1.0.0".into(),
            size: bytes.len() as u64,
            line_count: extracted.line_count,
            created_at: now,
            updated_at: now,
            metadata: Default::default(),
            front_matter: extracted.front_matter,
        },
    }
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    run().await;
}

/// The known-item evaluation: recall@1, recall@3 and MRR per kind of query, for natural
/// text (the default) and, as the baseline, the same text read by the query language (what
/// every query was before natural text; a query it refuses finds nothing).
fn evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let index = SearchIndex::open(dir.path()).unwrap();
    let names = common::search_eval::load(&index);
    for (label, syntax) in [
        ("", artifactd::search::QuerySyntax::Natural),
        ("baseline_operators_", artifactd::search::QuerySyntax::Operators),
    ] {
        for (kind, f) in common::search_eval::evaluate(&index, &names, syntax) {
            println!("RESULT {label}{kind}_recall_at_1 {:.3}", f.recall_at_1);
            println!("RESULT {label}{kind}_recall_at_3 {:.3}", f.recall_at_3);
            println!("RESULT {label}{kind}_mrr {:.3}", f.mrr);
        }
    }
}

async fn run() {
    evaluation();
    let count: usize = std::env::var("ARTIFACTD_BENCH_DOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let sources = corpus();
    let docs = synthesize(&sources, count);
    let bytes: usize = docs.iter().map(|d| d.content.len()).sum();
    println!(
        "{count} documents from {} corpus files, {:.1} MiB of text",
        sources.len(),
        bytes as f64 / 1048576.0
    );

    // tantivy: build the index the server will open.
    let data = tempfile::tempdir().unwrap();
    let index_dir = data.path().join("index");
    let started = Instant::now();
    {
        let index = SearchIndex::open(&index_dir).unwrap();
        for batch in docs.chunks(BATCH) {
            let changes = batch.iter().map(|d| (d.id.clone(), Some(indexed(d)))).collect();
            // Checkpoint 0: the server's (empty) catalog has no outbox to follow yet.
            index.apply(changes, 0).unwrap();
        }
        index.close().unwrap();
    }
    let index_seconds = started.elapsed().as_secs_f64();
    println!("RESULT index_docs_per_s {:.0}", count as f64 / index_seconds);

    // Postgres: the same documents with a stored tsvector and a GIN index.
    let database = TestDatabase::create().await;
    let mut pg = sqlx::PgConnection::connect(&database.url).await.unwrap();
    let postgres_seconds = load_postgres(&mut pg, &docs).await;
    println!(
        "postgres load: {:.1} s ({:.0} docs/s) with its GIN index",
        postgres_seconds,
        count as f64 / postgres_seconds
    );

    let server = ServerProcess::start_with(ServerOptions {
        data_dir: Some(data.path().to_owned()),
        ..Default::default()
    });
    let mut search = SearchServiceClient::new(server.channel().await);
    let queries = mix();
    let request = |query: &Query| SearchRequest {
        tenant: TENANT.into(),
        project: PROJECT.into(),
        query: query.tantivy.into(),
        syntax: if query.operators() {
            artifactd::proto::QuerySyntax::Operators as i32
        } else {
            artifactd::proto::QuerySyntax::Natural as i32
        },
        tags: query.tag.map(|t| vec![t.to_owned()]).unwrap_or_default(),
        artifact_type: query.artifact_type.unwrap_or_default().into(),
        page_size: 20,
        ..Default::default()
    };
    // Warm both, and show that the two engines find comparable sets.
    for query in &queries {
        let ours = search
            .search(request(query))
            .await
            .unwrap()
            .into_inner()
            .total_hits;
        let theirs = postgres_query(&mut pg, query).await;
        println!(
            "  {:32} artifactd {ours:>6} hits, postgres {theirs:>6}",
            query.tantivy
        );
    }
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        for query in &queries {
            let started = Instant::now();
            search.search(request(query)).await.unwrap();
            ours.push(ms(started.elapsed()));
            let started = Instant::now();
            postgres_query(&mut pg, query).await;
            theirs.push(ms(started.elapsed()));
        }
    }
    let (p50, p95) = (percentile(&mut ours, 50.0), percentile(&mut ours, 95.0));
    let (pg50, pg95) = (percentile(&mut theirs, 50.0), percentile(&mut theirs, 95.0));
    println!("RESULT query_p50_ms {p50:.2}");
    println!("RESULT query_p95_ms {p95:.2}");
    println!("RESULT postgres_p50_ms {pg50:.2}");
    println!("RESULT postgres_p95_ms {pg95:.2}");
    println!("RESULT query_p95_vs_postgres_fts {:.3}", p95 / pg95);
    drop(pg);
    database.drop_database().await;

    // Freshness: create, then search until the new artifact is found.
    let mut client = server.client().await;
    let mut freshness = Vec::new();
    for (i, source) in sources.iter().cycle().take(FRESHNESS_SAMPLES).enumerate() {
        let marker = format!("freshnessmarker{i}");
        let content = format!("{}\n\n{marker}\n", source.opening);
        create(
            &mut client,
            header(TENANT, PROJECT, "guide", &format!("fresh-{i}.md")),
            content.as_bytes(),
        )
        .await
        .unwrap();
        let created = Instant::now();
        loop {
            let found = search
                .search(SearchRequest {
                    tenant: TENANT.into(),
                    project: PROJECT.into(),
                    query: marker.clone(),
                    page_size: 1,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            if found.total_hits == 1 {
                break;
            }
            assert!(
                created.elapsed() < Duration::from_secs(30),
                "{marker} never became searchable"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        freshness.push(ms(created.elapsed()));
    }
    println!("RESULT freshness_p50_ms {:.1}", percentile(&mut freshness, 50.0));
    println!("RESULT freshness_p99_ms {:.1}", percentile(&mut freshness, 99.0));
}

async fn load_postgres(pg: &mut sqlx::PgConnection, docs: &[Synthetic]) -> f64 {
    sqlx::query(
        "CREATE TABLE docs (
            id text PRIMARY KEY,
            tenant text NOT NULL,
            project text NOT NULL,
            artifact_type text NOT NULL,
            tags text[] NOT NULL,
            name text NOT NULL,
            title text NOT NULL,
            headings text NOT NULL,
            body text NOT NULL,
            tsv tsvector GENERATED ALWAYS AS (
                setweight(to_tsvector('english', title), 'A') ||
                setweight(to_tsvector('english', name), 'B') ||
                setweight(to_tsvector('english', headings), 'C') ||
                setweight(to_tsvector('english', body), 'D')
            ) STORED
        )",
    )
    .execute(&mut *pg)
    .await
    .unwrap();
    let started = Instant::now();
    for batch in docs.chunks(500) {
        let extracted: Vec<IndexedArtifact> = batch.iter().map(indexed).collect();
        let column = |f: &dyn Fn(&IndexedArtifact) -> String| extracted.iter().map(f).collect::<Vec<_>>();
        sqlx::query(
            "INSERT INTO docs (id, tenant, project, artifact_type, tags, name, title, headings, body)
             SELECT id, tenant, project, artifact_type, string_to_array(tags, ','), name, title, headings, body
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::text[], $8::text[], $9::text[])
                  AS t(id, tenant, project, artifact_type, tags, name, title, headings, body)",
        )
        .bind(column(&|a| a.artifact_id.clone()))
        .bind(column(&|a| a.tenant.clone()))
        .bind(column(&|a| a.project.clone()))
        .bind(column(&|a| a.meta.artifact_type.clone()))
        .bind(column(&|a| a.tags.join(",")))
        .bind(column(&|a| a.meta.name.clone()))
        .bind(column(&|a| a.meta.title.clone()))
        .bind(column(&|a| a.headings.join("\n")))
        .bind(column(&|a| a.body.clone()))
        .execute(&mut *pg)
        .await
        .unwrap();
    }
    for statement in [
        "CREATE INDEX docs_tsv ON docs USING GIN (tsv)",
        "CREATE INDEX docs_scope ON docs (tenant, project)",
        "CREATE INDEX docs_tags ON docs USING GIN (tags)",
        "VACUUM ANALYZE docs",
    ] {
        sqlx::query(statement).execute(&mut *pg).await.unwrap();
    }
    started.elapsed().as_secs_f64()
}

/// Counts every hit and returns the top 20 by rank with a headline, as `Search` does.
async fn postgres_query(pg: &mut sqlx::PgConnection, query: &Query) -> i64 {
    let parse = if query.raw {
        "to_tsquery"
    } else {
        "websearch_to_tsquery"
    };
    let sql = format!(
        "WITH q AS (SELECT {parse}('english', $1) AS q),
         m AS (
            SELECT d.id, d.body, ts_rank(d.tsv, q.q) AS rank
            FROM docs d, q
            WHERE d.tenant = $2 AND d.project = $3 AND d.tsv @@ q.q
              AND ($4::text IS NULL OR $4 = ANY (d.tags))
              AND ($5::text IS NULL OR d.artifact_type = $5)
         ),
         top AS (SELECT id, body, rank FROM m ORDER BY rank DESC, id LIMIT 20)
         SELECT (SELECT count(*) FROM m) AS total, top.id,
                ts_headline('english', top.body, q.q, 'MaxFragments=1, MaxWords=35') AS snippet
         FROM top, q ORDER BY top.rank DESC, top.id"
    );
    let rows: Vec<(i64, String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(query.postgres)
        .bind(TENANT)
        .bind(PROJECT)
        .bind(query.tag)
        .bind(query.artifact_type)
        .fetch_all(&mut *pg)
        .await
        .unwrap();
    rows.first().map(|r| r.0).unwrap_or(0)
}
