//! The known-item search evaluation: the BMAD docs corpus indexed with each file's relative
//! path as its name, and the queries of `benches/search_eval/queries.json` (exact sentences,
//! titles as people type them, questions), each with the documents that answer it. A query
//! is found at rank r when the first answer among the hits is the r-th hit.

use artifactd::ingest::extract::{ContentShape, extract};
use artifactd::search::{ArtifactMetadata, IndexedArtifact, QuerySyntax, SearchIndex, SearchRequest};
use std::collections::BTreeMap;
use std::path::Path;

pub const TENANT: &str = "eval";
pub const PROJECT: &str = "docs";
/// Hits read per query for the reciprocal rank.
const DEPTH: usize = 10;

#[derive(Debug, serde::Deserialize)]
pub struct Query {
    pub kind: String,
    pub query: String,
    pub answers: Vec<String>,
}

#[derive(Debug, serde::Deserialize)]
struct QuerySet {
    queries: Vec<Query>,
}

pub fn queries() -> Vec<Query> {
    let path = super::repo_root().join("benches/search_eval/queries.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str::<QuerySet>(&text).unwrap().queries
}

/// The corpus's files: relative path and content, text only.
pub fn corpus(root: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(text) = std::fs::read_to_string(&path) {
                let relative = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                files.push((relative, text));
            }
        }
    }
    files.sort();
    files
}

pub fn document(tenant: &str, project: &str, id: String, name: &str, text: &str) -> IndexedArtifact {
    let bytes = text.as_bytes();
    let mut shape = ContentShape::default();
    shape.observe(bytes, true);
    let content_type = match name.rsplit('.').next() {
        Some("md") => "text/markdown",
        Some("yaml") | Some("yml") => "application/yaml",
        Some("csv") => "text/csv",
        _ => "text/plain",
    };
    let extracted = extract(content_type, bytes, shape);
    IndexedArtifact {
        artifact_id: id,
        tenant: tenant.into(),
        project: project.into(),
        linked_into: Vec::new(),
        state: "draft".into(),
        tags: Vec::new(),
        categories: Vec::new(),
        headings: extracted.headings.clone(),
        body: text.to_owned(),
        meta: ArtifactMetadata {
            name: name.into(),
            artifact_type: "doc".into(),
            title: extracted.title.clone().unwrap_or_default(),
            content_type: content_type.into(),
            version: "1.0.0".into(),
            size: bytes.len() as u64,
            line_count: extracted.line_count,
            created_at: 1,
            updated_at: 1,
            metadata: Default::default(),
            front_matter: extracted.front_matter,
        },
    }
}

/// Indexes the corpus into `index` under [`TENANT`]/[`PROJECT`]; returns id → name.
pub fn load(index: &SearchIndex) -> BTreeMap<String, String> {
    let files = corpus(&super::corpus_dir().join("bmad-docs"));
    let mut names = BTreeMap::new();
    let mut changes = Vec::new();
    for (number, (name, text)) in files.iter().enumerate() {
        let id = format!("doc-{number:04}");
        names.insert(id.clone(), name.clone());
        changes.push((id.clone(), Some(document(TENANT, PROJECT, id, name, text))));
    }
    index.apply(changes, 1).unwrap();
    names
}

#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub queries: usize,
    pub recall_at_1: f64,
    pub recall_at_3: f64,
    pub mrr: f64,
    /// Queries whose answer was not in the top three, with the names ranked first.
    pub misses: Vec<(String, Vec<String>)>,
}

/// Runs every query against the loaded index, read in `syntax`; figures per kind. A query
/// refused as bad syntax finds nothing.
pub fn evaluate(
    index: &SearchIndex,
    names: &BTreeMap<String, String>,
    syntax: QuerySyntax,
) -> BTreeMap<String, Figures> {
    let mut by_kind: BTreeMap<String, Figures> = BTreeMap::new();
    for query in queries() {
        let page = index.search(&SearchRequest {
            tenant: TENANT.into(),
            project: PROJECT.into(),
            query: query.query.clone(),
            syntax,
            page_size: DEPTH,
            ..Default::default()
        });
        let ranked: Vec<String> = match page {
            Ok(page) => page
                .hits
                .iter()
                .map(|hit| names[&hit.artifact_id].clone())
                .collect(),
            Err(artifactd::domain::Error::InvalidArgument { .. }) if syntax == QuerySyntax::Operators => {
                Vec::new()
            }
            Err(error) => panic!("{:?} failed: {error}", query.query),
        };
        let rank = ranked.iter().position(|name| query.answers.contains(name));
        let figures = by_kind.entry(query.kind.clone()).or_default();
        figures.queries += 1;
        if rank == Some(0) {
            figures.recall_at_1 += 1.0;
        }
        if rank.is_some_and(|r| r < 3) {
            figures.recall_at_3 += 1.0;
        } else {
            figures
                .misses
                .push((query.query.clone(), ranked.iter().take(3).cloned().collect()));
        }
        if let Some(r) = rank {
            figures.mrr += 1.0 / (r + 1) as f64;
        }
    }
    for figures in by_kind.values_mut() {
        let n = figures.queries as f64;
        figures.recall_at_1 /= n;
        figures.recall_at_3 /= n;
        figures.mrr /= n;
    }
    by_kind
}
