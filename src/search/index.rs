//! The tantivy schema, writing documents, and the queries.

use super::metadata::{
    self, ArtifactMetadata, Lookup, MetadataSearchRequest, MetadataSort, MetadataTerms, TermField,
};
use super::query;
use crate::domain::{Error, LifecycleState, Result};
use std::collections::VecDeque;
use std::ops::Bound;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tantivy::collector::sort_key::{SortByStaticFastValue, SortByString};
use tantivy::collector::{Count, FacetCollector, SortKeyComputer, TopDocs};
use tantivy::query::{
    Bm25StatisticsProvider, BooleanQuery, ConstScoreQuery, EnableScoring, Occur, Query, QueryParser,
    RangeQuery, Scorer, TermQuery,
};
use tantivy::schema::{
    FAST, Facet, FacetOptions, Field, IndexRecordOption, STORED, STRING, Schema, TantivyDocument,
    TextFieldIndexing, TextOptions, Value,
};
use tantivy::snippet::SnippetGenerator;
use tantivy::{
    DocAddress, DocSet, Index, IndexReader, IndexWriter, Order, ReloadPolicy, Score, Searcher,
    SegmentOrdinal, Term, doc,
};

/// How long a result set stays pinned for paging.
const CURSOR_LIFETIME: Duration = Duration::from_secs(300);
/// Result sets pinned at once; the least recently paged goes first.
const PINNED_SEARCHERS: usize = 64;
/// Paging stops here: a page at offset n costs memory in proportion to n.
pub const MAX_RESULT_WINDOW: usize = 100_000;
/// The index writer: one indexing thread with a 32 MiB budget. Documents are an
/// artifact's metadata and extracted text, committed a batch at a time; every indexing
/// thread holds a segment writer of its own (terms table, arenas, store buffers: 6 MiB or
/// more from its first document to the commit), so a second thread costs that again for
/// throughput only a rebuild of a large index would notice.
const WRITER_THREADS: usize = 1;
const WRITER_MEMORY_BYTES: usize = 32 * 1024 * 1024;
const SNIPPET_CHARS: usize = 200;
/// How many of the best matches of a natural query are ranked again by the words standing
/// together; below them, the words alone decide.
const RESCORE_WINDOW: usize = 200;
/// Fields the query language names.
const OPERATOR_FIELDS: &[&str] = &[
    "artifact_id",
    "title",
    "name",
    "headings",
    "body",
    "front_matter",
    "type",
    "tags",
    "categories",
    "version",
];

#[derive(Clone, Copy)]
struct Fields {
    artifact_id: Field,
    tenant: Field,
    project: Field,
    artifact_type: Field,
    state: Field,
    name: Field,
    tags: Field,
    categories: Field,
    tag_facets: Field,
    title: Field,
    headings: Field,
    body: Field,
    front_matter: Field,
    path_prefixes: Field,
    version: Field,
    updated_at: Field,
    created_at: Field,
    size: Field,
    sort_name: Field,
    sort_version: Field,
    meta_text: Field,
    meta_number: Field,
    meta_time: Field,
    meta_paths: Field,
}

/// Prose fields: English stemming, so "requirement" finds "requirements"; positions for phrases.
fn prose(stored: bool) -> TextOptions {
    let indexing = TextFieldIndexing::default()
        .set_tokenizer(query::PROSE)
        .set_index_option(IndexRecordOption::WithFreqsAndPositions);
    let options = TextOptions::default().set_indexing_options(indexing);
    if stored { options.set_stored() } else { options }
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let fields = Fields {
        artifact_id: builder.add_text_field("artifact_id", STRING | STORED | FAST),
        tenant: builder.add_text_field("tenant", STRING),
        // The project an artifact lives in first, then those it is linked into.
        project: builder.add_text_field("project", STRING | STORED),
        artifact_type: builder.add_text_field("type", STRING | STORED),
        // The latest version's lifecycle state (named so that indexes from before lifecycle
        // states, which held "active" here, have another schema and are rebuilt).
        state: builder.add_text_field("lifecycle_state", STRING | STORED),
        name: builder.add_text_field(
            "name",
            TextOptions::default().set_stored().set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer(query::PLAIN)
                    .set_index_option(IndexRecordOption::WithFreqsAndPositions),
            ),
        ),
        tags: builder.add_text_field("tags", STRING | STORED),
        categories: builder.add_text_field("categories", STRING | STORED),
        tag_facets: builder.add_facet_field("tag_facets", FacetOptions::default()),
        title: builder.add_text_field("title", prose(true)),
        headings: builder.add_text_field("headings", prose(false)),
        // The body without its front matter (snippets come from here); the front matter's
        // text is searched beside it.
        body: builder.add_text_field("body", prose(true)),
        front_matter: builder.add_text_field("front_matter", prose(false)),
        // Every folder a name lies in ("docs/", "docs/stories/"), for path prefix filters.
        path_prefixes: builder.add_text_field("path_prefixes", STRING),
        version: builder.add_text_field("version", STRING | STORED),
        updated_at: builder.add_i64_field("updated_at", FAST | STORED),
        created_at: builder.add_i64_field("created_at", FAST | STORED),
        size: builder.add_u64_field("size", FAST | STORED),
        sort_name: builder.add_text_field("sort_name", STRING | FAST),
        sort_version: builder.add_text_field("sort_version", STRING | FAST),
        meta_text: builder.add_text_field("meta_text", STRING),
        meta_number: builder.add_text_field("meta_number", STRING),
        meta_time: builder.add_text_field("meta_time", STRING),
        meta_paths: builder.add_text_field("meta_paths", STRING),
    };
    (builder.build(), fields)
}

/// How far into the outbox the index is: the position, and a marker of the event there
/// (its artifact and time), so that a catalog whose event at that position differs (another
/// catalog, or one restored from a backup) can be told apart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: i64,
    pub marker: String,
}

impl From<i64> for Checkpoint {
    fn from(seq: i64) -> Self {
        Self {
            seq,
            marker: String::new(),
        }
    }
}

/// What the index holds for one artifact.
#[derive(Debug, Clone)]
pub struct IndexedArtifact {
    pub artifact_id: String,
    pub tenant: String,
    /// The project it lives in.
    pub project: String,
    /// Other projects of the tenant it is linked into, where searches find it too.
    pub linked_into: Vec<String>,
    pub state: String,
    pub tags: Vec<String>,
    pub categories: Vec<String>,
    pub headings: Vec<String>,
    pub body: String,
    /// Name, type, title, version, times, sizes, caller metadata and front matter.
    pub meta: ArtifactMetadata,
}

#[derive(Debug, Clone)]
pub struct SearchHit {
    pub artifact_id: String,
    /// The project it lives in, which differs from the one searched when it is linked there.
    pub project: String,
    pub name: String,
    pub artifact_type: String,
    pub state: String,
    pub tags: Vec<String>,
    pub categories: Vec<String>,
    pub version: String,
    pub title: String,
    pub score: f32,
    /// The best fragment of the body with matches in `<b>…</b>`, HTML-escaped.
    pub snippet: String,
    /// The same fragment as plain text, and where the matches are in it.
    pub snippet_text: String,
    pub highlights: Vec<Highlight>,
    pub size: u64,
    /// Microseconds since the epoch.
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
pub struct SearchPage {
    pub hits: Vec<SearchHit>,
    pub total_hits: u64,
    pub next_page_token: String,
}

#[derive(Debug, Clone, Default)]
pub struct SearchRequest {
    pub tenant: String,
    pub project: String,
    pub query: String,
    pub syntax: QuerySyntax,
    /// Only artifacts whose name starts with this folder path.
    pub path_prefix: String,
    pub artifact_type: String,
    pub state: String,
    pub tags: Vec<String>,
    pub categories: Vec<String>,
    pub page_size: usize,
    pub page_token: String,
}

/// How the text of a query is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QuerySyntax {
    /// Words and phrases; never an error.
    #[default]
    Natural,
    /// The query language: field:value, AND, OR, +/-, quotes.
    Operators,
}

/// One highlighted stretch of a snippet, in characters (Unicode scalar values) from its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Highlight {
    pub start: u32,
    pub end: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagMatch {
    All,
    Any,
}

#[derive(Debug, Clone)]
pub struct TagSearchRequest {
    pub tenant: String,
    pub project: String,
    pub tags: Vec<String>,
    pub categories: Vec<String>,
    pub matching: TagMatch,
    pub page_size: usize,
    pub page_token: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FacetCount {
    pub tag: String,
    pub count: u64,
}

struct Pinned {
    generation: u64,
    since: Instant,
    searcher: Searcher,
}

pub struct SearchIndex {
    index: Index,
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    fields: Fields,
    pinned: Mutex<VecDeque<Pinned>>,
    /// Ranking statistics per tenant and searcher generation.
    statistics: super::stats::StatisticsCache,
    /// Signs page tokens, so that a client cannot forge an offset or a generation.
    token_key: [u8; 32],
    /// The index was created empty (new, unreadable, or of an older schema) and must be
    /// rebuilt from the catalog.
    needs_rebuild: AtomicBool,
}

fn index_error(what: &str, error: impl std::fmt::Display) -> Error {
    Error::Internal(format!("search index: {what}: {error}"))
}

fn facet_of(kind: &str, label: &str) -> Facet {
    Facet::from_path([kind, label])
}

impl SearchIndex {
    /// Opens the index in `dir`. When it is missing, unreadable or of another schema, it is
    /// created empty and [`Self::needs_rebuild`] says so: the catalog is the source of truth.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| index_error("creating its directory", e))?;
        let (schema, fields) = schema();
        let directory =
            tantivy::directory::MmapDirectory::open(dir).map_err(|e| index_error("opening", e))?;
        let existing = match Index::exists(&directory) {
            Ok(true) => match Index::open(directory.clone()) {
                Ok(index) if index.schema() == schema => Some(index),
                Ok(_) => {
                    tracing::warn!(dir = %dir.display(), "the search index has an older schema; rebuilding it");
                    None
                }
                Err(error) => {
                    tracing::warn!(dir = %dir.display(), %error, "the search index cannot be read; rebuilding it");
                    None
                }
            },
            _ => None,
        };
        let needs_rebuild = existing.is_none();
        let index = match existing {
            Some(index) => index,
            None => Index::create(directory, schema, tantivy::IndexSettings::default())
                .map_err(|e| index_error("creating", e))?,
        };
        let opened = Self::from_index(index, fields)?;
        opened.needs_rebuild.store(needs_rebuild, Ordering::SeqCst);
        Ok(opened)
    }

    /// Whether the index must be rebuilt from the catalog before it can follow the outbox.
    pub fn needs_rebuild(&self) -> bool {
        self.needs_rebuild.load(Ordering::SeqCst)
    }

    /// From now until [`Self::rebuilt`], the index is incomplete.
    pub(super) fn rebuild_started(&self) {
        self.needs_rebuild.store(true, Ordering::SeqCst);
    }

    pub(super) fn rebuilt(&self) {
        self.needs_rebuild.store(false, Ordering::SeqCst);
    }

    fn from_index(mut index: Index, fields: Fields) -> Result<Self> {
        query::register_analyzers(&index);
        // Segments are searched in parallel: a long query's latency falls with the cores.
        index
            .set_default_multithread_executor()
            .map_err(|e| index_error("starting its search threads", e))?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|e| index_error("opening a reader", e))?;
        let writer = index
            .writer_with_num_threads(WRITER_THREADS, WRITER_MEMORY_BYTES)
            .map_err(|e| index_error("opening the writer", e))?;
        Ok(Self {
            index,
            reader,
            writer: Mutex::new(writer),
            fields,
            pinned: Mutex::new(VecDeque::new()),
            statistics: Default::default(),
            token_key: rand::random(),
            needs_rebuild: AtomicBool::new(false),
        })
    }

    /// The last outbox position whose changes the index holds (stored with every commit).
    pub fn checkpoint(&self) -> Result<i64> {
        Ok(self.checkpoint_with_marker()?.seq)
    }

    /// The checkpoint with the marker of the event at it.
    pub fn checkpoint_with_marker(&self) -> Result<Checkpoint> {
        let metas = self
            .index
            .load_metas()
            .map_err(|e| index_error("reading its metadata", e))?;
        let payload = metas.payload.unwrap_or_default();
        let (seq, marker) = payload.split_once(' ').unwrap_or((&payload, ""));
        Ok(Checkpoint {
            seq: seq.parse().unwrap_or(0),
            marker: marker.to_owned(),
        })
    }

    /// Replaces (or, with `None`, removes) the document of each artifact, then commits with
    /// `checkpoint` atomically, so a restart resumes exactly where the index stopped. An
    /// artifact may appear more than once: the last entry wins.
    pub fn apply(
        &self,
        changes: Vec<(String, Option<IndexedArtifact>)>,
        checkpoint: impl Into<Checkpoint>,
    ) -> Result<()> {
        let checkpoint = checkpoint.into();
        let f = self.fields;
        let writer = self.writer.lock().expect("index writer lock");
        for (artifact_id, document) in changes {
            writer.delete_term(Term::from_field_text(f.artifact_id, &artifact_id));
            let Some(a) = document else { continue };
            let terms = MetadataTerms::of(&a.meta, &a.state);
            let meta = a.meta;
            let meta_name = meta.name.clone();
            let mut document = doc!(
                f.artifact_id => a.artifact_id,
                f.tenant => a.tenant,
                f.project => a.project,
                f.artifact_type => meta.artifact_type,
                f.state => a.state,
                f.sort_name => meta.name.clone(),
                f.name => meta.name,
                f.title => meta.title,
                f.sort_version => metadata::version_key(&meta.version),
                f.version => meta.version,
                f.updated_at => meta.updated_at,
                f.created_at => meta.created_at,
                f.size => meta.size,
            );
            let (front_matter, body) = crate::ingest::extract::split_front_matter(&a.body);
            document.add_text(f.body, body);
            if let Some(front_matter) = front_matter {
                document.add_text(f.front_matter, front_matter);
            }
            for prefix in path_prefixes(&meta_name) {
                document.add_text(f.path_prefixes, prefix);
            }
            for project in a.linked_into {
                document.add_text(f.project, project);
            }
            for (field, values) in [
                (f.meta_text, terms.text),
                (f.meta_number, terms.numbers),
                (f.meta_time, terms.times),
                (f.meta_paths, terms.paths),
            ] {
                for value in values {
                    document.add_text(field, value);
                }
            }
            for tag in &a.tags {
                document.add_text(f.tags, tag);
                document.add_facet(f.tag_facets, facet_of("tags", tag));
            }
            for category in &a.categories {
                document.add_text(f.categories, category);
                document.add_facet(f.tag_facets, facet_of("categories", category));
            }
            for heading in &a.headings {
                document.add_text(f.headings, heading);
            }
            writer
                .add_document(document)
                .map_err(|e| index_error("adding a document", e))?;
        }
        self.commit(writer, checkpoint)
    }

    /// Commits what the writer holds together with `checkpoint`, then shows it to searches.
    fn commit(
        &self,
        mut writer: std::sync::MutexGuard<'_, IndexWriter>,
        checkpoint: Checkpoint,
    ) -> Result<()> {
        let mut prepared = writer
            .prepare_commit()
            .map_err(|e| index_error("preparing a commit", e))?;
        let payload = if checkpoint.marker.is_empty() {
            checkpoint.seq.to_string()
        } else {
            format!("{} {}", checkpoint.seq, checkpoint.marker)
        };
        prepared.set_payload(&payload);
        prepared.commit().map_err(|e| index_error("committing", e))?;
        drop(writer);
        self.reader.reload().map_err(|e| index_error("reloading", e))
    }

    /// Removes every document (before a rebuild), keeping `checkpoint`.
    pub fn clear(&self, checkpoint: impl Into<Checkpoint>) -> Result<()> {
        let writer = self.writer.lock().expect("index writer lock");
        writer
            .delete_all_documents()
            .map_err(|e| index_error("clearing", e))?;
        self.commit(writer, checkpoint.into())
    }

    /// Waits for background segment merges to finish, then closes the index.
    pub fn close(self) -> Result<()> {
        let writer = self.writer.into_inner().expect("index writer lock");
        writer
            .wait_merging_threads()
            .map_err(|e| index_error("finishing merges", e))
    }

    pub fn document_count(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// A searcher for a new search, or the pinned one a page token refers to, so that paging
    /// through a result set neither skips nor repeats hits while the index changes.
    /// A searcher for a new search, or the pinned one a page token refers to, so that paging
    /// through a result set neither skips nor repeats hits while the index changes. A result
    /// set stays pinned for five minutes after its last page.
    fn searcher_for(
        &self,
        token: &str,
        kind: &str,
        request: &str,
        limit: usize,
    ) -> Result<(Searcher, usize)> {
        let (generation, offset) = if token.is_empty() {
            (None, 0)
        } else {
            let (generation, offset) = self.open_token(token, kind, request)?;
            if offset + limit > MAX_RESULT_WINDOW {
                return Err(Error::invalid(
                    "page_token",
                    format!("paging stops at {MAX_RESULT_WINDOW} hits; narrow the search with filters"),
                ));
            }
            (Some(generation), offset)
        };
        let mut pinned = self.pinned.lock().expect("pinned searchers lock");
        pinned.retain(|p| p.since.elapsed() < CURSOR_LIFETIME);
        let generation = generation.unwrap_or_else(|| self.reader.searcher().generation().generation_id());
        let searcher = match pinned.iter().position(|p| p.generation == generation) {
            Some(position) => pinned.remove(position).expect("a pinned searcher").searcher,
            None if token.is_empty() => self.reader.searcher(),
            None => {
                return Err(Error::FailedPrecondition(
                    "page_token: the result set has expired; start the search again".to_owned(),
                ));
            }
        };
        if pinned.len() >= PINNED_SEARCHERS {
            pinned.pop_front();
        }
        pinned.push_back(Pinned {
            generation: searcher.generation().generation_id(),
            since: Instant::now(),
            searcher: searcher.clone(),
        });
        Ok((searcher, offset))
    }

    /// A token for the page at `offset` of the result set of `request` in `searcher`.
    fn token(&self, kind: &str, searcher: &Searcher, offset: usize, request: &str) -> String {
        use base64::Engine;
        let body = format!("{kind}:{}:{offset}", searcher.generation().generation_id());
        let mac = self.mac(&body, request);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{body}:{mac}"))
    }

    /// The generation and offset a token names, if this index signed it for `request`.
    fn open_token(&self, token: &str, kind: &str, request: &str) -> Result<(u64, usize)> {
        use base64::Engine;
        let invalid = || {
            Error::invalid(
                "page_token",
                "is not a token of this request (a token pages only the request that returned it, \
                 on the server that returned it)",
            )
        };
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| invalid())?;
        let text = String::from_utf8(raw).map_err(|_| invalid())?;
        let (body, mac) = text.rsplit_once(':').ok_or_else(invalid)?;
        if mac != self.mac(body, request) {
            return Err(invalid());
        }
        let mut parts = body.splitn(3, ':');
        if parts.next() != Some(kind) {
            return Err(invalid());
        }
        let generation = parts.next().and_then(|p| p.parse().ok()).ok_or_else(invalid)?;
        let offset = parts.next().and_then(|p| p.parse().ok()).ok_or_else(invalid)?;
        Ok((generation, offset))
    }

    fn mac(&self, body: &str, request: &str) -> String {
        let mut hasher = blake3::Hasher::new_keyed(&self.token_key);
        hasher.update(body.as_bytes());
        hasher.update(b"\0");
        hasher.update(request.as_bytes());
        hasher.finalize().to_hex()[..32].to_owned()
    }

    fn scope_filter(&self, tenant: &str, project: &str) -> Vec<(Occur, Box<dyn Query>)> {
        vec![
            (Occur::Must, self.term(self.fields.tenant, tenant)),
            (Occur::Must, self.term(self.fields.project, project)),
        ]
    }

    /// A filter: it selects documents and adds nothing to their scores.
    fn term(&self, field: Field, value: &str) -> Box<dyn Query> {
        Box::new(ConstScoreQuery::new(
            Box::new(TermQuery::new(
                Term::from_field_text(field, value),
                IndexRecordOption::Basic,
            )),
            0.0,
        ))
    }

    /// The query a search's text stands for, in its syntax.
    fn text_query(&self, text: &str, syntax: QuerySyntax) -> Result<query::Natural> {
        let f = self.fields;
        if text.trim().is_empty() {
            return Err(Error::invalid("query", "must not be empty or only whitespace"));
        }
        if text.len() > query::MAX_QUERY_BYTES {
            return Err(Error::invalid(
                "query",
                format!(
                    "is {} bytes long; the limit is {}",
                    text.len(),
                    query::MAX_QUERY_BYTES
                ),
            ));
        }
        let text_fields = query::TextFields {
            title: f.title,
            name: f.name,
            headings: f.headings,
            body: f.body,
            front_matter: f.front_matter,
        };
        match syntax {
            QuerySyntax::Natural => Ok(query::natural(text_fields, text)),
            QuerySyntax::Operators => {
                query::check_operators(text, OPERATOR_FIELDS)?;
                let mut parser = QueryParser::for_index(
                    &self.index,
                    vec![f.title, f.name, f.headings, f.body, f.front_matter],
                );
                parser.set_field_boost(f.title, 3.0);
                parser.set_field_boost(f.name, 2.0);
                parser.set_field_boost(f.headings, 1.5);
                let matching = parser.parse_query(text.trim()).map_err(|e| {
                    Error::invalid("query", format!("does not parse as the query language: {e}"))
                })?;
                Ok(query::Natural {
                    matching,
                    proximity: Vec::new(),
                })
            }
        }
    }

    /// Full-text search ranked by BM25 over the tenant's own documents, with filters and
    /// highlighted snippets.
    pub fn search(&self, request: &SearchRequest) -> Result<SearchPage> {
        let f = self.fields;
        let query::Natural {
            matching: user_query,
            proximity,
        } = self.text_query(&request.query, request.syntax)?;
        let mut clauses = self.scope_filter(&request.tenant, &request.project);
        clauses.push((Occur::Must, user_query.box_clone()));
        if !request.path_prefix.is_empty() {
            clauses.push((Occur::Must, self.term(f.path_prefixes, &request.path_prefix)));
        }
        if !request.artifact_type.is_empty() {
            clauses.push((Occur::Must, self.term(f.artifact_type, &request.artifact_type)));
        }
        match request.state.as_str() {
            // "active", the one state before versions had lifecycles, means not archived.
            "" | "active" => clauses.push((
                Occur::MustNot,
                self.term(f.state, LifecycleState::Archived.as_str()),
            )),
            state => {
                let state = LifecycleState::parse("state", state)?;
                clauses.push((Occur::Must, self.term(f.state, state.as_str())));
            }
        }
        for tag in &request.tags {
            clauses.push((Occur::Must, self.term(f.tags, tag)));
        }
        for category in &request.categories {
            clauses.push((Occur::Must, self.term(f.categories, category)));
        }
        let query = BooleanQuery::new(clauses);
        let identity = format!(
            "{:?}",
            SearchRequest {
                page_token: String::new(),
                page_size: 0,
                ..request.clone()
            }
        );
        let limit = request.page_size.clamp(1, 1000);
        let (searcher, offset) = self.searcher_for(&request.page_token, "q", &identity, limit)?;
        let statistics = self
            .statistics
            .for_tenant(&searcher, f.tenant, &request.tenant)
            .map_err(|e| index_error("ranking statistics", e))?;
        // The words choose and first rank the documents; the best of them are then ranked
        // again with the evidence of the words standing together, which would cost too much
        // on every match. Their scores only grow, so the order stays one order across pages.
        let window = if proximity.is_empty() { 0 } else { RESCORE_WINDOW };
        let (total, mut ranked) = searcher
            .search_with_statistics_provider(
                &query,
                &(
                    Count,
                    TopDocs::with_limit((offset + limit).max(window)).order_by_score(),
                ),
                &statistics,
            )
            .map_err(|e| index_error("searching", e))?;
        let window = window.min(ranked.len());
        add_scores(&searcher, &statistics, &proximity, &mut ranked[..window])?;
        ranked[..window].sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let snippets = tenant_snippets(&searcher, &statistics, &*user_query, f.body)?;
        let mut hits = ranked
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|(score, address)| self.hit(&searcher, address, score, Some(&snippets)))
            .collect::<Result<Vec<_>>>()?;
        // Equal scores fall in index order, which a rebuild changes; order them by id.
        hits.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.artifact_id.cmp(&b.artifact_id))
        });
        let next = offset + hits.len();
        Ok(SearchPage {
            next_page_token: if (next as u64) < total as u64 {
                self.token("q", &searcher, next, &identity)
            } else {
                String::new()
            },
            total_hits: total as u64,
            hits,
        })
    }

    /// Artifacts carrying all (or any) of `tags` and `categories`, with counts of every tag
    /// and every category among them.
    pub fn search_tags(
        &self,
        request: &TagSearchRequest,
    ) -> Result<(SearchPage, Vec<FacetCount>, Vec<FacetCount>)> {
        let f = self.fields;
        if request.tags.is_empty() && request.categories.is_empty() {
            return Err(Error::invalid("tags", "name at least one tag or category"));
        }
        let occur = if request.matching == TagMatch::All {
            Occur::Must
        } else {
            Occur::Should
        };
        let tag_clauses: Vec<(Occur, Box<dyn Query>)> = request
            .tags
            .iter()
            .map(|tag| (occur, self.term(f.tags, tag)))
            .chain(
                request
                    .categories
                    .iter()
                    .map(|category| (occur, self.term(f.categories, category))),
            )
            .collect();
        let mut clauses = self.scope_filter(&request.tenant, &request.project);
        clauses.push((Occur::Must, Box::new(BooleanQuery::new(tag_clauses))));
        let query = BooleanQuery::new(clauses);
        let identity = format!(
            "{:?}",
            TagSearchRequest {
                page_token: String::new(),
                page_size: 0,
                ..request.clone()
            }
        );
        let limit = request.page_size.clamp(1, 1000);
        let (searcher, offset) = self.searcher_for(&request.page_token, "t", &identity, limit)?;
        let mut facets = FacetCollector::for_field("tag_facets");
        facets.add_facet("/tags");
        facets.add_facet("/categories");
        let (total, top, facet_counts) = searcher
            .search(
                &query,
                &(
                    Count,
                    TopDocs::with_limit(limit).and_offset(offset).order_by_score(),
                    facets,
                ),
            )
            .map_err(|e| index_error("searching", e))?;
        let hits = top
            .into_iter()
            .map(|(score, address)| self.hit(&searcher, address, score, None))
            .collect::<Result<Vec<_>>>()?;
        let counts_of = |root: &str| {
            let mut counts: Vec<FacetCount> = facet_counts
                .get(root)
                .map(|(facet, count)| FacetCount {
                    tag: facet
                        .to_path()
                        .last()
                        .map(|s| (*s).to_owned())
                        .unwrap_or_default(),
                    count,
                })
                .collect();
            counts.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.tag.cmp(&b.tag)));
            counts
        };
        let (tag_counts, category_counts) = (counts_of("/tags"), counts_of("/categories"));
        let next = offset + hits.len();
        let page = SearchPage {
            next_page_token: if (next as u64) < total as u64 {
                self.token("t", &searcher, next, &identity)
            } else {
                String::new()
            },
            total_hits: total as u64,
            hits,
        };
        Ok((page, tag_counts, category_counts))
    }

    /// Artifacts whose metadata meet every filter, in the requested order, ties by id.
    pub fn search_metadata(&self, request: &MetadataSearchRequest) -> Result<SearchPage> {
        let lookups = metadata::compile(&request.filters)?;
        let mut clauses = self.scope_filter(&request.tenant, &request.project);
        // Archived artifacts leave results unless a filter names the state.
        if !request.filters.iter().any(|filter| filter.field == "state") {
            clauses.push((
                Occur::MustNot,
                self.term(self.fields.state, LifecycleState::Archived.as_str()),
            ));
        }
        clauses.extend(lookups.into_iter().map(|lookup| self.lookup_clause(lookup)));
        let query = BooleanQuery::new(clauses);
        let identity = format!(
            "{:?}",
            MetadataSearchRequest {
                page_token: String::new(),
                page_size: 0,
                ..request.clone()
            }
        );
        let limit = request.page_size.clamp(1, 1000);
        let (searcher, offset) = self.searcher_for(&request.page_token, "m", &identity, limit)?;
        let order = if request.descending {
            Order::Desc
        } else {
            Order::Asc
        };
        let top = TopDocs::with_limit(limit).and_offset(offset);
        let (total, top) = match request.sort {
            MetadataSort::Created => sorted(
                &searcher,
                &query,
                top,
                (SortByStaticFastValue::<i64>::for_field("created_at"), order),
            ),
            MetadataSort::Updated => sorted(
                &searcher,
                &query,
                top,
                (SortByStaticFastValue::<i64>::for_field("updated_at"), order),
            ),
            MetadataSort::Size => sorted(
                &searcher,
                &query,
                top,
                (SortByStaticFastValue::<u64>::for_field("size"), order),
            ),
            MetadataSort::Name => sorted(
                &searcher,
                &query,
                top,
                (SortByString::for_field("sort_name"), order),
            ),
            MetadataSort::Version => sorted(
                &searcher,
                &query,
                top,
                (SortByString::for_field("sort_version"), order),
            ),
        }?;
        let hits = top
            .into_iter()
            .map(|address| self.hit(&searcher, address, 0.0, None))
            .collect::<Result<Vec<_>>>()?;
        let next = offset + hits.len();
        Ok(SearchPage {
            next_page_token: if (next as u64) < total as u64 {
                self.token("m", &searcher, next, &identity)
            } else {
                String::new()
            },
            total_hits: total as u64,
            hits,
        })
    }

    fn lookup_clause(&self, lookup: Lookup) -> (Occur, Box<dyn Query>) {
        let f = self.fields;
        let field_of = |field| match field {
            TermField::Text => f.meta_text,
            TermField::Number => f.meta_number,
            TermField::Time => f.meta_time,
        };
        let any = |mut queries: Vec<Box<dyn Query>>| -> Box<dyn Query> {
            if queries.len() == 1 {
                queries.pop().expect("one query")
            } else {
                Box::new(BooleanQuery::new(
                    queries.into_iter().map(|q| (Occur::Should, q)).collect(),
                ))
            }
        };
        match lookup {
            Lookup::AnyTerm(terms) => (
                Occur::Must,
                any(terms
                    .into_iter()
                    .map(|(field, value)| self.term(field_of(field), &value))
                    .collect()),
            ),
            Lookup::Ranges(ranges) => (
                Occur::Must,
                any(ranges
                    .into_iter()
                    .map(|(field, start, end)| -> Box<dyn Query> {
                        let bound = |bytes: &[u8]| {
                            let mut term = Term::from_field_text(field_of(field), "");
                            term.set_bytes(bytes);
                            term
                        };
                        Box::new(RangeQuery::new(
                            Bound::Included(bound(&start)),
                            Bound::Excluded(bound(&end)),
                        ))
                    })
                    .collect()),
            ),
            Lookup::Path(path, present) => (
                if present { Occur::Must } else { Occur::MustNot },
                self.term(f.meta_paths, &path),
            ),
        }
    }

    fn hit(
        &self,
        searcher: &Searcher,
        address: DocAddress,
        score: f32,
        snippets: Option<&SnippetGenerator>,
    ) -> Result<SearchHit> {
        let f = self.fields;
        let document: TantivyDocument = searcher
            .doc(address)
            .map_err(|e| index_error("reading a hit", e))?;
        let text = |field| {
            document
                .get_first(field)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        let (snippet, snippet_text, highlights) = match snippets {
            Some(generator) => snippet_of(generator, &text(f.body)),
            None => Default::default(),
        };
        Ok(SearchHit {
            artifact_id: text(f.artifact_id),
            project: text(f.project),
            name: text(f.name),
            artifact_type: text(f.artifact_type),
            state: text(f.state),
            tags: document
                .get_all(f.tags)
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            categories: document
                .get_all(f.categories)
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            version: text(f.version),
            title: match text(f.title) {
                title if title.trim().is_empty() => text(f.name),
                title => title,
            },
            score,
            snippet,
            snippet_text,
            highlights,
            size: document
                .get_first(f.size)
                .and_then(|v| v.as_u64())
                .unwrap_or_default(),
            created_at: document
                .get_first(f.created_at)
                .and_then(|v| v.as_i64())
                .unwrap_or_default(),
            updated_at: document
                .get_first(f.updated_at)
                .and_then(|v| v.as_i64())
                .unwrap_or_default(),
        })
    }
}

/// The best fragment of `body` for the query: HTML with the matches in `<b>…</b>`, plain
/// text, and the matches' places in it. Without a match in the body (the name or the title
/// matched), the body's opening.
fn snippet_of(generator: &SnippetGenerator, body: &str) -> (String, String, Vec<Highlight>) {
    let snippet = generator.snippet(body);
    if !snippet.is_empty() && !snippet.highlighted().is_empty() {
        let fragment = snippet.fragment();
        let highlights = snippet
            .highlighted()
            .iter()
            .map(|range| Highlight {
                start: fragment[..range.start].chars().count() as u32,
                end: fragment[..range.end].chars().count() as u32,
            })
            .collect();
        return (snippet.to_html(), fragment.to_owned(), highlights);
    }
    let opening: String = body.trim_start().chars().take(SNIPPET_CHARS).collect();
    let opening = match opening.rfind(char::is_whitespace) {
        Some(at) if opening.len() < body.trim_start().len() && at > SNIPPET_CHARS / 2 => {
            opening[..at].to_owned()
        }
        _ => opening,
    };
    (html_escape(&opening), opening, Vec::new())
}

fn html_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#x27;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// A snippet generator that weighs the query's words by how rare they are among the
/// tenant's own documents, as the ranking does: another tenant's content never decides
/// which part of a document is shown.
fn tenant_snippets(
    searcher: &Searcher,
    statistics: &dyn Bm25StatisticsProvider,
    query: &dyn Query,
    field: Field,
) -> Result<SnippetGenerator> {
    let mut terms = std::collections::BTreeSet::new();
    query.query_terms(&mut |term, _| {
        if term.field() == field {
            terms.insert(term.clone());
        }
    });
    let mut weights = std::collections::BTreeMap::new();
    for term in terms {
        let Some(text) = term.value().as_str().map(str::to_owned) else {
            continue;
        };
        let doc_freq = statistics
            .doc_freq(&term)
            .map_err(|e| index_error("snippets", e))?;
        if doc_freq > 0 {
            weights.insert(text, 1.0 / (1.0 + doc_freq as Score));
        }
    }
    let tokenizer = searcher
        .index()
        .tokenizer_for_field(field)
        .map_err(|e| index_error("snippets", e))?;
    Ok(SnippetGenerator::new(weights, tokenizer, field, SNIPPET_CHARS))
}

/// Adds to each candidate's score the scores of the `clauses` it matches, as a boolean
/// query's optional clauses would, visiting the candidates of each segment in document order.
fn add_scores(
    searcher: &Searcher,
    statistics: &dyn Bm25StatisticsProvider,
    clauses: &[Box<dyn Query>],
    candidates: &mut [(Score, DocAddress)],
) -> Result<()> {
    if clauses.is_empty() || candidates.is_empty() {
        return Ok(());
    }
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&at| candidates[at].1);
    let scoring = EnableScoring::enabled_from_statistics_provider(statistics, searcher);
    for clause in clauses {
        let weight = clause.weight(scoring).map_err(|e| index_error("ranking", e))?;
        let mut segment: Option<(SegmentOrdinal, Box<dyn Scorer>)> = None;
        for &at in &order {
            let DocAddress { segment_ord, doc_id } = candidates[at].1;
            let scorer = match &mut segment {
                Some((ord, scorer)) if *ord == segment_ord => scorer,
                _ => {
                    let scorer = weight
                        .scorer(searcher.segment_reader(segment_ord), 1.0)
                        .map_err(|e| index_error("ranking", e))?;
                    &mut segment.insert((segment_ord, scorer)).1
                }
            };
            if scorer.doc() < doc_id {
                scorer.seek(doc_id);
            }
            if scorer.doc() == doc_id {
                candidates[at].0 += scorer.score();
            }
        }
    }
    Ok(())
}

/// Every folder a path name lies in, each ending in '/': "docs/", "docs/stories/".
pub(crate) fn path_prefixes(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices('/').map(move |(at, _)| &name[..=at])
}

/// The page `top` of the hits of `query` in the order of `key`, ties by artifact id, with the
/// number of all hits.
fn sorted<K>(searcher: &Searcher, query: &dyn Query, top: TopDocs, key: K) -> Result<(usize, Vec<DocAddress>)>
where
    K: SortKeyComputer + Send + 'static,
    K::SortKey: Clone + Send + Sync + std::fmt::Debug + 'static,
    (K, (SortByString, Order)): SortKeyComputer<SortKey = (K::SortKey, Option<String>)>,
{
    let by_id = (SortByString::for_field("artifact_id"), Order::Asc);
    let (total, hits) = searcher
        .search(query, &(Count, top.order_by((key, by_id))))
        .map_err(|e| index_error("searching", e))?;
    Ok((total, hits.into_iter().map(|(_, address)| address).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn request(query: &str) -> SearchRequest {
        SearchRequest {
            tenant: "t".into(),
            project: "p".into(),
            query: query.into(),
            page_size: 5,
            ..Default::default()
        }
    }

    fn document(id: &str, body: &str) -> IndexedArtifact {
        IndexedArtifact {
            artifact_id: id.into(),
            tenant: "t".into(),
            project: "p".into(),
            linked_into: Vec::new(),
            state: "active".into(),
            tags: vec!["x".into()],
            categories: Vec::new(),
            headings: vec!["Goals".into()],
            body: body.into(),
            meta: ArtifactMetadata {
                name: format!("{id}.md"),
                ..Default::default()
            },
        }
    }

    #[test]
    fn the_last_entry_for_an_artifact_wins() {
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(dir.path()).unwrap();
        index
            .apply(vec![("a".into(), Some(document("a", "first words")))], 1)
            .unwrap();
        index
            .apply(
                vec![
                    ("a".into(), Some(document("a", "second words"))),
                    ("b".into(), Some(document("b", "other words"))),
                    ("a".into(), Some(document("a", "third words"))),
                    ("b".into(), None),
                ],
                2,
            )
            .unwrap();
        assert_eq!(index.document_count(), 1);
        for (query, hits) in [("first", 0), ("second", 0), ("third", 1), ("other", 0)] {
            assert_eq!(index.search(&request(query)).unwrap().total_hits, hits, "{query}");
        }
        assert_eq!(index.checkpoint().unwrap(), 2);
    }

    #[test]
    fn page_tokens_cannot_be_forged_or_reused_for_another_request() {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(dir.path()).unwrap();
        let documents = (0..10)
            .map(|i| (format!("d{i}"), Some(document(&format!("d{i}"), "shared words"))))
            .collect();
        index.apply(documents, 1).unwrap();
        let mut first = request("shared");
        first.page_size = 2;
        let token = index.search(&first).unwrap().next_page_token;
        let second = SearchRequest {
            page_token: token.clone(),
            ..first.clone()
        };
        assert_eq!(index.search(&second).unwrap().hits.len(), 2);

        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let text = String::from_utf8(engine.decode(&token).unwrap()).unwrap();
        let mut parts: Vec<&str> = text.split(':').collect();
        parts[2] = "10000000000000";
        let forged = engine.encode(parts.join(":"));
        let other_request = SearchRequest {
            query: "words".into(),
            page_token: token,
            ..first.clone()
        };
        for request in [
            SearchRequest {
                page_token: forged,
                ..first.clone()
            },
            other_request,
        ] {
            match index.search(&request) {
                Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "page_token"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_result_set_in_use_stays_pinned_while_many_others_come_and_go() {
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(dir.path()).unwrap();
        let documents = (0..3)
            .map(|i| (format!("d{i}"), Some(document(&format!("d{i}"), "shared words"))))
            .collect();
        index.apply(documents, 1).unwrap();
        let mut kept = request("shared");
        kept.page_size = 1;
        let mut page = index.search(&kept).unwrap();
        let first_id = page.hits[0].artifact_id.clone();
        for i in 0..(PINNED_SEARCHERS * 2) {
            // A new generation, searched by someone else.
            let id = format!("n{i}");
            index
                .apply(
                    vec![(id.clone(), Some(document(&id, "shared words")))],
                    i as i64 + 2,
                )
                .unwrap();
            index.search(&request("shared")).unwrap();
            if i % 8 == 7 && !page.next_page_token.is_empty() {
                // The kept result set is paged now and then: it stays as it was.
                kept.page_token = page.next_page_token.clone();
                kept.page_size = 1;
                page = index.search(&kept).unwrap();
                assert_eq!(page.total_hits, 3, "the pinned result set does not grow");
                assert_ne!(page.hits[0].artifact_id, first_id);
            }
        }
        assert!(page.next_page_token.is_empty(), "all three pages were served");
    }

    /// Whatever the text, a search answers or names the problem in the query.
    #[test]
    fn malformed_queries_are_invalid_arguments_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(dir.path()).unwrap();
        let body = "sprint planning for the payments team";
        index
            .apply(vec![("a".into(), Some(document("a", body)))], 1)
            .unwrap();
        let mut queries: Vec<String> = [
            "[",
            "title:[a TO",
            "\"",
            "((((",
            "*",
            "a^",
            "a^x",
            "a~",
            "-",
            "+",
            "title:",
            ":",
            "AND",
            "OR OR",
            "NOT",
            "a:b:c",
            "\\",
            "[* TO *]",
            "body:{a TO b}",
            "IN [a b]",
            "\"a\"~",
            "title:IN [",
            "tags:",
            "updated_at:>x",
            "updated_at:[1 TO",
            "🦀",
            "a\0b",
        ]
        .map(str::to_owned)
        .to_vec();
        let alphabet: Vec<char> = "ab :\"()[]{}+-^~*\\!<>=TOANDORNOT0123456789.,'/_"
            .chars()
            .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        for _ in 0..3000 {
            let len = rng.random_range(1..24);
            queries.push(
                (0..len)
                    .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                    .collect(),
            );
        }
        for query in &queries {
            match index.search(&request(query)) {
                Ok(_) => {}
                Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "query", "{query:?}"),
                Err(other) => panic!("{query:?}: {other:?}"),
            }
        }
    }

    /// The best matches of a natural query, ranked again by the words standing together,
    /// score exactly as the whole query would; below them the order carries on, page by page.
    #[test]
    fn rescoring_the_best_matches_equals_the_whole_query() {
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(dir.path()).unwrap();
        let vocabulary = [
            "sprint",
            "planning",
            "story",
            "acceptance",
            "criteria",
            "agent",
            "workflow",
            "the",
            "of",
            "review",
            "product",
            "brief",
            "architect",
            "decision",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let total = RESCORE_WINDOW + 150;
        for batch in 0..5 {
            let documents = (0..total / 5)
                .map(|i| {
                    let id = format!("d{:04}", batch * 1000 + i);
                    let body: Vec<&str> = (0..rng.random_range(3..40))
                        .map(|_| vocabulary[rng.random_range(0..vocabulary.len())])
                        .collect();
                    (id.clone(), Some(document(&id, &body.join(" "))))
                })
                .collect();
            index.apply(documents, batch as i64 + 1).unwrap();
        }
        let searcher = index.reader.searcher();
        assert!(
            searcher.segment_readers().len() > 1,
            "the test needs several segments"
        );
        for text in [
            "sprint planning",
            "the acceptance criteria of the story",
            "agent workflow review",
        ] {
            let natural = index.text_query(text, QuerySyntax::Natural).unwrap();
            assert!(!natural.proximity.is_empty(), "{text}");
            let mut whole = index.scope_filter("t", "p");
            whole.push((Occur::Must, natural.matching));
            whole.extend(natural.proximity.into_iter().map(|q| (Occur::Should, q)));
            let statistics = index
                .statistics
                .for_tenant(&searcher, index.fields.tenant, "t")
                .unwrap();
            let expected: std::collections::HashMap<String, f32> = searcher
                .search_with_statistics_provider(
                    &BooleanQuery::new(whole),
                    &TopDocs::with_limit(10_000).order_by_score(),
                    &statistics,
                )
                .unwrap()
                .into_iter()
                .map(|(score, address)| {
                    let hit = index.hit(&searcher, address, score, None).unwrap();
                    (hit.artifact_id, score)
                })
                .collect();
            assert!(
                expected.len() > RESCORE_WINDOW,
                "{text}: too few matches to pass the window"
            );
            let mut page = request(text);
            page.page_size = 37;
            let mut seen = Vec::new();
            loop {
                let found = index.search(&page).unwrap();
                assert_eq!(found.total_hits as usize, expected.len(), "{text}");
                seen.extend(found.hits.into_iter().map(|hit| (hit.artifact_id, hit.score)));
                if found.next_page_token.is_empty() {
                    break;
                }
                page.page_token = found.next_page_token;
            }
            assert_eq!(seen.len(), expected.len(), "{text}: every match once");
            for (rank, pair) in seen.windows(2).enumerate() {
                assert!(
                    pair[0].1 >= pair[1].1,
                    "{text}: scores rise at rank {rank}: {pair:?}"
                );
            }
            for (rank, (id, score)) in seen.iter().enumerate().take(RESCORE_WINDOW) {
                let whole = expected[id];
                assert!(
                    (score - whole).abs() <= 1e-4 * whole.abs().max(1.0),
                    "{text}: {id} at {rank} scores {score}, the whole query {whole}"
                );
            }
            let best = expected.values().copied().fold(f32::MIN, f32::max);
            assert_eq!(
                seen[0].1, best,
                "{text}: the best match of the whole query comes first"
            );
        }
    }
}
