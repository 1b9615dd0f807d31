//! The catalog: every SQL statement of the service. One query layer serves both dialects
//! (SQLite, the embedded default, and PostgreSQL in production) through sqlx's `Any` driver;
//! the statements use only syntax both understand, and `$n` placeholders, which both accept.
//! Migrations live per dialect under `migrations/`.

mod access;
mod audit;
mod backup;
mod counted;
mod dependencies;
mod events;
mod extracted;
mod gc;
mod keys;
mod lifecycle;
mod links;
mod manifests;
pub use manifests::{ManifestReader, SharedRowAudit};
mod records;
mod replication;
mod retention;
mod runs;

pub use audit::AuditQuery;
pub use backup::{BackupRow, Content, Export, Locate, RestoreArtifact, Restored, ScheduleRow};
pub use dependencies::{DependentRow, VersionBrief};
pub use events::{EventBatch, OutboxRange};
pub use gc::{GcPack, LeaseHeld, PackUse, Tombstoned};
pub use keys::{PackStage, Staged};
pub use records::*;
pub use retention::Purged;
pub use runs::RunInputRecord;

use crate::domain::event::EventKind;
use crate::domain::{
    Artifact, ArtifactVersion, Error, LifecycleState, NameHolder, Result, StorageStats, Timestamp, Transition,
};
use crate::ingest::ChunkId;
use crate::ingest::resemblance::Sketch;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, AssertSqlSafe, Executor};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("src/catalog/migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("src/catalog/migrations/postgres");

/// Most rows a single statement binds; well below both dialects' parameter limits.
const BATCH_ROWS: usize = 200;
/// Most ids one lookup's `IN (…)` lists bind: a power of two, so a full batch needs no
/// padding ([`in_list_len`]).
const ID_LIST_MAX: usize = 512;

/// An upload's new chunks are indexed sorted by id this many at a time (about 2.5 MiB of
/// rows, held inside the commit; a 256 MiB upload of 16 KiB chunks is one window). Rows in
/// the content's order land on random pages of the index; sorted, they walk it in order.
/// Measured on SQLite, 256 MiB pushes to a server on moto: the inserts of each commit
/// took 140-165 ms in the content's order, 80-95 ms sorted.
const SORTED_INSERT_ROWS: usize = 16 * 1024;

/// One of an upload's new chunks as the index takes it: its pack, its place there, its
/// depth of deltas and its resemblance sketch.
type NewChunkRow<'a> = (&'a str, crate::ingest::PackEntry, u8, Option<Sketch>);

/// The default of `catalog.sqlite_cache_bytes`: what the page caches of all of an SQLite
/// catalog's connections hold together. SQLite's own default (2 MiB a connection) made
/// 20 MiB of a server's heap at its peak under 16 concurrent downloads (heaptrack); the
/// chunk index's lookups are spread over the whole file, so the operating system's page
/// cache serves most of them either way.
pub const DEFAULT_SQLITE_CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// The smallest `catalog.sqlite_cache_bytes`.
pub const MIN_SQLITE_CACHE_BYTES: u64 = 256 * 1024;

/// See [`Catalog::similar_chunks`].
pub const SIMILAR_PER_SKETCH: usize = 8;

/// A stored chunk resembling a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimilarChunk {
    pub chunk_id: ChunkId,
    pub depth: u8,
    pub sketch: Sketch,
}

const ARTIFACT_COLUMNS: &str = "id, tenant, project, artifact_type, name, description, tags, categories, \
     metadata, latest_version, version_count, created_by, created_at, updated_at, deleted_at";
/// Every query reading versions through these says `FROM versions` (not aliased): the
/// extracted metadata is the row's own or its shared document (see `extracted.rs`).
const VERSION_COLUMNS: &str = "artifact_id, version, seq, size, stored_size, new_stored_size, \
     dedup_saved_bytes, delta_saved_bytes, blake3, chunk_count, created_by, created_at, change_message, metadata, content_type, \
     extracted, (SELECT d.body FROM extracted_documents d WHERE d.digest = versions.extracted_digest \
     AND d.tenant = (SELECT a.tenant FROM artifacts a WHERE a.id = versions.artifact_id)) AS extracted_shared, \
     extracted_lines, state, run_id, run_workflow, run_step, run_agent";

/// The sums behind [`StorageStats`], cast so both dialects return 64-bit integers.
const STATS_SUMS: &str = "COUNT(*), CAST(COALESCE(SUM(v.size), 0) AS BIGINT), \
     CAST(COALESCE(SUM(v.new_stored_size), 0) AS BIGINT), CAST(COALESCE(SUM(v.dedup_saved_bytes), 0) AS BIGINT), \
     CAST(COALESCE(SUM(v.delta_saved_bytes), 0) AS BIGINT)";

fn stats_of((versions, logical, stored, dedup, delta): (i64, i64, i64, i64, i64)) -> StorageStats {
    StorageStats {
        versions: versions.max(0) as u64,
        logical_bytes: logical.max(0) as u64,
        stored_bytes: stored.max(0) as u64,
        dedup_saved_bytes: dedup.max(0) as u64,
        delta_saved_bytes: delta.max(0) as u64,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// How many values an `IN (…)` list binds for a batch of `len` (at least 1): the next power of
/// two, made up by repeating the batch's last value ([`padded`]), which changes no answer.
/// Each statement text is a statement that every pooled connection prepares and keeps (up to
/// 100 each, 8-20 KB apiece in SQLite); with a text per batch length, the chunk lookups of
/// long uploads and downloads kept a statement for every length they met on every
/// connection, and prepared again whatever had been pushed out. Every `IN (…)` list of bound
/// values in the catalog takes its length from here.
fn in_list_len(len: usize) -> usize {
    debug_assert!(len > 0, "an IN list of nothing");
    len.next_power_of_two()
}

/// `batch` and then its last value again, [`in_list_len`] values in all.
fn padded<T>(batch: &[T]) -> impl Iterator<Item = &T> {
    let pad = in_list_len(batch.len()) - batch.len();
    batch
        .iter()
        .chain(std::iter::repeat_n(batch.last(), pad).flatten())
}

/// Whether a statement of `rows` rows, from batches of at most `full`, stays prepared on its
/// connection: full batches and powers of two do (a few shapes, met again and again). Any
/// other length is prepared for its one use and then finalized: kept, a statement per
/// length (a 100-row chunk insert holds 140 KB in SQLite) would fill every connection's
/// statement cache over a long run.
fn keep_prepared(rows: usize, full: usize) -> bool {
    rows == full || rows.is_power_of_two()
}

impl Dialect {
    /// `count` comma-separated placeholders numbered from `first`. SQLite gets anonymous
    /// `?`s: it resolves each `$n` by a linear search, which makes statements with hundreds
    /// of parameters quadratic. A statement must take all its placeholders from here, since
    /// sqlx numbers anonymous placeholders without regard to `$n` ones.
    fn placeholders(self, first: usize, count: usize) -> String {
        (first..first + count)
            .map(|n| match self {
                Dialect::Sqlite => "?".to_owned(),
                Dialect::Postgres => format!("${n}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `rows` parenthesized groups of `columns` placeholders, numbered from 1, for a
    /// multi-row `VALUES` list.
    fn value_rows(self, rows: usize, columns: usize) -> String {
        (0..rows)
            .map(|row| format!("({})", self.placeholders(row * columns + 1, columns)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The advisory lock that orders outbox events by commit ("artf").
const OUTBOX_LOCK: i64 = 0x6172_7466;

#[derive(Debug, Clone)]
pub struct Catalog {
    pub(crate) pool: AnyPool,
    dialect: Dialect,
    /// Signalled after each commit that wrote an outbox event, so this process's indexer
    /// follows at once instead of at its next poll.
    changes: Arc<tokio::sync::Notify>,
    /// Counts this process's commits of outbox events, for any number of change streams.
    commits: Arc<tokio::sync::watch::Sender<u64>>,
    /// SQLite's writers take turns here, in arrival order (see [`Catalog::write_turn`]).
    write_turns: Arc<tokio::sync::Mutex<()>>,
}

/// This process's turn to write to a SQLite catalog; nothing on Postgres.
pub(crate) type WriteTurn = Option<tokio::sync::OwnedMutexGuard<()>>;

/// A catalog transaction: the connection it runs on, and for one that writes to SQLite,
/// the turn it holds until it ends (committed, or rolled back when dropped).
pub(crate) struct Tx {
    transaction: sqlx::Transaction<'static, sqlx::Any>,
    // Declared after the transaction so that it is let go of after the transaction ends.
    _turn: WriteTurn,
}

impl std::ops::Deref for Tx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &sqlx::AnyConnection {
        &self.transaction
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.transaction
    }
}

impl Tx {
    pub(crate) async fn commit(self) -> std::result::Result<(), sqlx::Error> {
        self.transaction.commit().await
    }
}

/// Maps a database failure onto the service's errors: connection trouble is retryable
/// `Unavailable`, everything else is a bug or corruption and therefore `Internal`.
pub(crate) fn db_error(context: &str, error: sqlx::Error) -> Error {
    match &error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => {
            Error::Unavailable(format!("catalog unavailable while {context}: {error}"))
        }
        sqlx::Error::Database(db) if transient_code(db.as_ref()) == Some(Transient::Retry) => {
            Error::Aborted(format!("catalog conflict while {context}, retry: {error}"))
        }
        sqlx::Error::Database(db) if transient_code(db.as_ref()) == Some(Transient::Unavailable) => {
            Error::Unavailable(format!("catalog unavailable while {context}: {error}"))
        }
        sqlx::Error::Protocol(_) => {
            Error::Unavailable(format!("catalog connection failed while {context}: {error}"))
        }
        sqlx::Error::Database(db) if is_busy(db.as_ref()) => {
            Error::Unavailable(format!("catalog busy while {context}: {error}"))
        }
        _ => Error::Internal(format!("catalog failed while {context}: {error}")),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Transient {
    Retry,
    Unavailable,
}

/// Postgres SQLSTATE classes that say "try again": 40 (serialization failure, deadlock);
/// 08 (connection), 53 (insufficient resources) and 57 (operator intervention, shutdown).
fn transient_code(error: &dyn sqlx::error::DatabaseError) -> Option<Transient> {
    let postgres = error.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()?;
    match postgres.code().get(..2)? {
        "40" => Some(Transient::Retry),
        "08" | "53" | "57" => Some(Transient::Unavailable),
        _ => None,
    }
}

/// SQLite's SQLITE_BUSY (5) and SQLITE_LOCKED (6), whatever their extended code: another
/// connection holds what this statement needs.
fn is_busy(error: &dyn sqlx::error::DatabaseError) -> bool {
    error
        .try_downcast_ref::<sqlx::sqlite::SqliteError>()
        .and_then(sqlx::error::DatabaseError::code)
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, 5 | 6))
}
fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn artifact_not_found(scope: &Scope, artifact_id: &str) -> Error {
    Error::not_found(format!(
        "artifact {artifact_id:?} not found in {}/{}",
        scope.tenant, scope.project
    ))
}

/// States as SQL literals for `IN (…)`: the names are the enum's own, never caller text.
/// No states match nothing.
fn state_list(states: &[LifecycleState]) -> String {
    if states.is_empty() {
        return "NULL".to_owned();
    }
    states
        .iter()
        .map(|state| format!("'{}'", state.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a change is about, for the audit trail: an artifact, or `artifact@version`.
fn change_target(artifact_id: &str, version: &str) -> String {
    if version.is_empty() {
        artifact_id.to_owned()
    } else {
        format!("{artifact_id}@{version}")
    }
}

fn tags_json(tags: &[String]) -> String {
    serde_json::to_string(tags).expect("strings serialize")
}

fn map_json(map: &std::collections::BTreeMap<String, String>) -> String {
    serde_json::to_string(map).expect("strings serialize")
}

impl Catalog {
    /// Connects and applies the dialect's migrations. `sqlite://` URLs create the database
    /// file when missing; `postgres://` URLs need an existing database.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        Self::connect_with(url, max_connections, DEFAULT_SQLITE_CACHE_BYTES).await
    }

    /// [`Catalog::connect`], with the page caches of an SQLite catalog's connections
    /// holding `sqlite_cache_bytes` together at most.
    pub async fn connect_with(url: &str, max_connections: u32, sqlite_cache_bytes: u64) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(Error::invalid(
                "catalog.url",
                format!("{url:?} is neither a sqlite: nor a postgres: URL"),
            ));
        };
        let url = match dialect {
            Dialect::Sqlite if !url.contains('?') && !url.contains(":memory:") => {
                format!("{url}?mode=rwc")
            }
            _ => url.to_owned(),
        };
        let options = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10));
        // SQLite takes a negative cache size as KiB.
        let cache_kib =
            sqlite_cache_bytes.max(MIN_SQLITE_CACHE_BYTES) / 1024 / u64::from(max_connections.max(1));
        let options = if dialect == Dialect::Sqlite {
            options.after_connect(move |connection, _| {
                Box::pin(async move {
                    // WAL lets readers run beside the single writer; NORMAL is durable in WAL
                    // mode except for the last transactions before a power cut.
                    connection.execute("PRAGMA journal_mode = WAL").await?;
                    connection.execute("PRAGMA synchronous = NORMAL").await?;
                    connection.execute("PRAGMA busy_timeout = 15000").await?;
                    connection.execute("PRAGMA foreign_keys = ON").await?;
                    connection
                        .execute(AssertSqlSafe(format!(
                            "PRAGMA cache_size = -{}",
                            cache_kib.max(1)
                        )))
                        .await?;
                    Ok(())
                })
            })
        } else {
            options
        };
        let pool = options
            .connect(&url)
            .await
            .map_err(|e| db_error("connecting", e))?;
        let migrator = match dialect {
            Dialect::Sqlite => &SQLITE_MIGRATIONS,
            Dialect::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&pool)
            .await
            .map_err(|e| Error::Internal(format!("catalog migration failed: {e}")))?;
        Ok(Self {
            pool,
            dialect,
            changes: Arc::new(tokio::sync::Notify::new()),
            commits: Arc::new(tokio::sync::watch::Sender::new(0)),
            write_turns: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// After a commit that wrote an outbox event: wakes this process's indexer and change
    /// streams.
    fn announce_commit(&self) {
        self.changes.notify_one();
        self.commits.send_modify(|count| *count = count.wrapping_add(1));
    }

    /// Changes whenever this process commits an outbox event; other processes' events are
    /// only seen by reading the outbox.
    pub fn subscribe_commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commits.subscribe()
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Waits for this process's turn to write. SQLite has one writer at a time, and a
    /// writer that finds the lock taken polls for it (`busy_timeout`), in no order: behind
    /// a queue of long commits (16 uploads of 2 GiB finishing together take longer than the
    /// timeout between them), a poller fails with "database is locked" although nothing is
    /// wrong. Writers of this process therefore queue here first, in arrival order and
    /// without a time limit (a caller that goes away leaves the queue), and meet SQLite's
    /// lock only with other processes. Taken before a pool connection, so that waiting
    /// writers do not hold the connections readers need. Postgres locks rows, not the
    /// database: no turn.
    pub(crate) async fn write_turn(&self) -> WriteTurn {
        if self.dialect != Dialect::Sqlite {
            return None;
        }
        let started = std::time::Instant::now();
        let turn = self.write_turns.clone().lock_owned().await;
        metrics::histogram!(crate::telemetry::names::CATALOG_WRITE_WAIT_SECONDS)
            .record(started.elapsed().as_secs_f64());
        Some(turn)
    }

    /// Begins a transaction that writes (in its turn, on SQLite).
    pub(crate) async fn begin_write(&self) -> Result<Tx> {
        let turn = self.write_turn().await;
        let transaction = self.pool.begin().await.map_err(|e| db_error("beginning", e))?;
        Ok(Tx {
            transaction,
            _turn: turn,
        })
    }

    /// Begins a transaction that only reads: readers never wait for writers' turns.
    pub(crate) async fn begin_read(&self) -> Result<Tx> {
        let transaction = self.pool.begin().await.map_err(|e| db_error("beginning", e))?;
        Ok(Tx {
            transaction,
            _turn: None,
        })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A cheap round trip, for health checks.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| db_error("pinging", e))
    }

    /// The service-wide secret that per-tenant chunk keys derive from. Created once, on first
    /// use, and kept in the catalog because chunk ids are only meaningful together with it.
    pub async fn service_secret(&self) -> Result<[u8; 32]> {
        let _turn = self.write_turn().await;
        let candidate: [u8; 32] = rand::random();
        sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind("chunk_id_secret")
            .bind(blake3::Hash::from_bytes(candidate).to_hex().to_string())
            .execute(&self.pool)
            .await
            .map_err(|e| db_error("creating the service secret", e))?;
        let stored: String = sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
            .bind("chunk_id_secret")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error("reading the service secret", e))?;
        let hash = blake3::Hash::from_hex(&stored)
            .map_err(|_| Error::internal("service secret in the catalog is not 64 hex digits"))?;
        Ok(*hash.as_bytes())
    }

    // ---- artifacts -------------------------------------------------------------------------

    /// An artifact by id within a scope. Soft-deleted artifacts only when asked for.
    pub async fn artifact_by_id(
        &self,
        scope: &Scope,
        id: &str,
        include_deleted: bool,
    ) -> Result<Option<Artifact>> {
        let sql = format!(
            "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE id = $1 AND tenant = $2 AND project = $3"
        );
        let record: Option<ArtifactRecord> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(id)
            .bind(&scope.tenant)
            .bind(&scope.project)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("reading an artifact", e))?;
        Ok(record
            .filter(|r| include_deleted || r.deleted_at.is_none())
            .map(Artifact::from))
    }

    /// A live artifact of `scope`, or linked into it, by type and name.
    pub async fn artifact_by_name(
        &self,
        scope: &Scope,
        artifact_type: &str,
        name: &str,
    ) -> Result<Option<Artifact>> {
        let sql = format!(
            "SELECT {ARTIFACT_COLUMNS} FROM artifacts \
             WHERE tenant = $1 AND project = $2 AND artifact_type = $3 AND name = $4 AND deleted_at IS NULL"
        );
        let own: Option<ArtifactRecord> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(&scope.tenant)
            .bind(&scope.project)
            .bind(artifact_type)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("reading an artifact", e))?;
        if let Some(own) = own {
            return Ok(Some(own.into()));
        }
        self.linked_artifact(
            scope,
            "l.artifact_type = $3 AND l.name = $4",
            &[artifact_type, name],
        )
        .await
    }

    /// Live artifacts of a project, its own and those linked into it, whose latest version is
    /// in one of `states`, ordered by (name, id), starting after `after`.
    pub async fn list_artifacts(
        &self,
        scope: &Scope,
        artifact_type: Option<&str>,
        path_prefix: &str,
        states: &[LifecycleState],
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<Artifact>> {
        let (after_name, after_id) = after.unwrap_or(("", ""));
        let columns = links::joined_columns();
        // Both branches keep the filters and the order so that each can walk its index.
        let filters = format!(
            "a.deleted_at IS NULL AND ($3 = '' OR a.artifact_type = $3) \
             AND (a.name > $4 OR (a.name = $4 AND a.id > $5)) \
             AND ($7 = '' OR substr(a.name, 1, length($7)) = $7) \
             AND (SELECT v.state FROM versions v WHERE v.artifact_id = a.id AND v.version = a.latest_version) IN ({})",
            state_list(states)
        );
        let sql = format!(
            "SELECT * FROM ( \
               SELECT {columns}, CAST(NULL AS TEXT) AS link_project, CAST(NULL AS TEXT) AS link_by, \
                      CAST(NULL AS BIGINT) AS link_at \
               FROM artifacts a WHERE a.tenant = $1 AND a.project = $2 AND {filters} \
               UNION ALL \
               SELECT {columns}, l.project, l.linked_by, l.linked_at \
               FROM artifact_links l JOIN artifacts a ON a.id = l.target_id \
               WHERE l.tenant = $1 AND l.project = $2 AND {filters} \
             ) seen ORDER BY name, id LIMIT $6"
        );
        let rows: Vec<SeenArtifactRecord> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(&scope.tenant)
            .bind(&scope.project)
            .bind(artifact_type.unwrap_or(""))
            .bind(after_name)
            .bind(after_id)
            .bind(i64::from(limit))
            .bind(path_prefix)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("listing artifacts", e))?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Creates an artifact with its first version: artifact row, version row with manifest,
    /// chunk index entries, pack states and an outbox event, all in one transaction.
    pub async fn create_artifact(
        &self,
        artifact: &NewArtifact,
        version: &NewVersion,
    ) -> Result<(Artifact, ArtifactVersion)> {
        let mut tx = self.begin_write().await?;
        self.lock_name(&mut tx, &artifact.scope, &artifact.artifact_type, &artifact.name)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO artifacts (id, tenant, project, artifact_type, name, description, tags, \
             metadata, latest_version, version_count, created_by, created_at, updated_at, deleted_at, categories) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, $10, $11, $11, NULL, $12)",
        )
        .bind(&artifact.id)
        .bind(&artifact.scope.tenant)
        .bind(&artifact.scope.project)
        .bind(&artifact.artifact_type)
        .bind(&artifact.name)
        .bind(&artifact.description)
        .bind(tags_json(&artifact.tags))
        .bind(map_json(&version.metadata))
        .bind(&version.version)
        .bind(&version.created_by)
        .bind(version.created_at)
        .bind(tags_json(&artifact.categories))
        .execute(&mut *tx)
        .await;
        if let Err(error) = inserted {
            drop(tx);
            if is_unique_violation(&error) {
                let holder = self
                    .name_holder(&artifact.scope, &artifact.artifact_type, &artifact.name)
                    .await?
                    .unwrap_or(NameHolder::DeletedArtifact);
                return Err(holder.conflict(&artifact.scope, &artifact.artifact_type, &artifact.name));
            }
            return Err(db_error("creating an artifact", error));
        }
        // The insert took SQLite's write lock (and Postgres holds the name's lock): a link
        // committed before this point is seen, and none can commit after it.
        if let Some(holder) =
            links::link_holder_on(&mut tx, &artifact.scope, &artifact.artifact_type, &artifact.name).await?
        {
            drop(tx);
            return Err(holder.conflict(&artifact.scope, &artifact.artifact_type, &artifact.name));
        }
        self.write_version(&mut tx, &artifact.scope, &artifact.id, 1, version)
            .await?;
        self.write_event(
            &mut tx,
            EventKind::ArtifactCreated,
            &artifact.scope,
            &artifact.id,
            &version.version,
            version.created_at,
        )
        .await?;
        tx.commit().await.map_err(|e| db_error("committing", e))?;
        self.announce_commit();
        self.committed_pair(&artifact.scope, &artifact.id, &version.version)
            .await
    }

    /// Adds a version if and only if the artifact's latest version is still
    /// `expected_latest`: of two concurrent updates from the same version exactly one wins,
    /// and the loser writes nothing.
    pub async fn add_version(
        &self,
        scope: &Scope,
        artifact_id: &str,
        expected_latest: &str,
        version: &NewVersion,
    ) -> Result<(Artifact, ArtifactVersion)> {
        let mut tx = self.begin_write().await?;
        // The compare-and-set comes first so that SQLite takes its write lock before reading.
        let seq: Option<i64> = sqlx::query_scalar(
            "UPDATE artifacts SET latest_version = $1, version_count = version_count + 1, \
             metadata = $2, updated_at = $3, tags = COALESCE($8, tags), categories = COALESCE($9, categories) \
             WHERE id = $4 AND tenant = $5 AND project = $6 AND latest_version = $7 AND deleted_at IS NULL \
             RETURNING version_count",
        )
        .bind(&version.version)
        .bind(map_json(&version.metadata))
        .bind(version.created_at)
        .bind(artifact_id)
        .bind(&scope.tenant)
        .bind(&scope.project)
        .bind(expected_latest)
        .bind(version.labels.as_ref().map(|labels| tags_json(&labels.tags)))
        .bind(version.labels.as_ref().map(|labels| tags_json(&labels.categories)))
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| db_error("updating an artifact", e))?;
        let Some(seq) = seq else {
            drop(tx);
            return Err(match self.artifact_by_id(scope, artifact_id, true).await? {
                None => artifact_not_found(scope, artifact_id),
                Some(current) if current.deleted_at.is_some() => Error::FailedPrecondition(format!(
                    "artifact {artifact_id:?} was deleted; undelete it before adding versions"
                )),
                Some(current) => Error::Aborted(format!(
                    "artifact {artifact_id:?} changed during the upload: it is now at version {}, not {expected_latest}; nothing was written",
                    current.latest_version
                )),
            });
        };
        self.write_version(&mut tx, scope, artifact_id, seq, version)
            .await?;
        self.write_event(
            &mut tx,
            EventKind::VersionAdded,
            scope,
            artifact_id,
            &version.version,
            version.created_at,
        )
        .await?;
        tx.commit().await.map_err(|e| db_error("committing", e))?;
        self.announce_commit();
        self.committed_pair(scope, artifact_id, &version.version).await
    }

    async fn committed_pair(
        &self,
        scope: &Scope,
        artifact_id: &str,
        version: &str,
    ) -> Result<(Artifact, ArtifactVersion)> {
        let artifact = self
            .artifact_by_id(scope, artifact_id, true)
            .await?
            .ok_or_else(|| Error::internal("committed artifact vanished"))?;
        let version = self
            .version(artifact_id, version)
            .await?
            .ok_or_else(|| Error::internal("committed version vanished"))?;
        Ok((artifact, version))
    }

    async fn write_version(
        &self,
        tx: &mut Tx,
        scope: &Scope,
        artifact_id: &str,
        seq: i64,
        version: &NewVersion,
    ) -> Result<()> {
        let manifest = self.store_manifest(tx, &scope.tenant, &version.manifest).await?;
        let extracted = self
            .store_extracted(tx, &scope.tenant, &version.extracted)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO versions (artifact_id, version, seq, size, stored_size, new_stored_size, \
             blake3, chunk_count, created_by, created_at, change_message, metadata, content_type, extracted, manifest, state, \
             run_id, run_workflow, run_step, run_agent, dedup_saved_bytes, delta_saved_bytes, extracted_digest, extracted_lines) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)",
        )
        .bind(artifact_id)
        .bind(&version.version)
        .bind(seq)
        .bind(version.size as i64)
        .bind(version.stored_size as i64)
        .bind(version.new_stored_size as i64)
        .bind(&version.blake3)
        .bind(version.chunk_count as i64)
        .bind(&version.created_by)
        .bind(version.created_at)
        .bind(&version.change_message)
        .bind(map_json(&version.metadata))
        .bind(&version.content_type)
        .bind(&extracted.inline)
        .bind(manifest)
                .bind(version.state.as_str())
        .bind(version.produced_by.as_ref().map_or("", |r| r.run_id.as_str()))
        .bind(version.produced_by.as_ref().map_or("", |r| r.workflow.as_str()))
        .bind(version.produced_by.as_ref().map_or("", |r| r.step.as_str()))
        .bind(version.produced_by.as_ref().map_or("", |r| r.agent.as_str()))
        .bind(version.dedup_saved_bytes as i64)
        .bind(version.delta_saved_bytes as i64)
        .bind(extracted.digest)
        .bind(extracted.lines)
        .execute(&mut **tx)
        .await;
        if let Err(error) = inserted {
            if is_unique_violation(&error) {
                return Err(Error::AlreadyExists(format!(
                    "version {} of artifact {artifact_id:?} already exists",
                    version.version
                )));
            }
            return Err(db_error("writing a version", error));
        }
        let mut lost_races: Vec<ChunkId> = Vec::new();
        let mut new_chunks = version.new_chunks.iter().peekable();
        while new_chunks.peek().is_some() {
            let mut window: Vec<NewChunkRow> = new_chunks
                .by_ref()
                .take(SORTED_INSERT_ROWS)
                .collect::<std::io::Result<_>>()
                .map_err(|e| Error::internal(format!("reading the upload's chunk list: {e}")))?;
            window.sort_unstable_by_key(|(_, entry, ..)| entry.chunk_id);
            for batch in window.chunks(BATCH_ROWS) {
                lost_races.extend(self.index_new_chunks(tx, &scope.tenant, batch).await?);
            }
        }
        let pack_ids: Vec<String> = version.packs.iter().map(|p| p.pack_id.clone()).collect();
        let key_destroyed = self.check_content_alive(tx, &scope.tenant, &pack_ids).await?;
        let mut reused = version.reused_chunks.clone();
        reused.extend(lost_races);
        // What this version's delta chunks decode against must still be there too.
        reused.extend_from_slice(version.new_chunks.bases());
        reused.sort_unstable();
        reused.dedup();
        self.claim_reused(tx, &scope.tenant, &reused, &pack_ids, key_destroyed)
            .await?;
        for StagedPack { pack_id, generation } in &version.packs {
            // Any state: a pack of identical bytes staged by another upload is this one too.
            // The generation is the row this upload staged: a row made again after a
            // collection took the one it staged is not it.
            let committed =
                sqlx::query("UPDATE packs SET state = 'committed' WHERE pack_id = $1 AND created_at = $2")
                    .bind(pack_id)
                    .bind(generation)
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| db_error("committing packs", e))?
                    .rows_affected();
            if committed == 0 {
                return Err(Error::Aborted(format!(
                    "pack {pack_id} of this upload was garbage-collected while the upload ran (longer than the collection grace period); nothing was committed"
                )));
            }
        }
        let created_in = Transition {
            from: None,
            to: version.state,
            actor: version.created_by.clone(),
            reason: String::new(),
            at: Timestamp(version.created_at),
        };
        lifecycle::record_transition(tx, artifact_id, &version.version, &created_in).await?;
        dependencies::write_dependencies(tx, artifact_id, &version.version, &version.dependencies).await
    }

    /// Indexes one batch of an upload's new chunks and returns those another upload
    /// indexed first: two uploads racing on the same new chunk both stored it, the first
    /// index entry wins and the other copy becomes garbage. A lost chunk is this version's
    /// through the winner's pack: reused, as far as garbage collection is concerned.
    async fn index_new_chunks(
        &self,
        tx: &mut Tx,
        tenant: &str,
        batch: &[NewChunkRow<'_>],
    ) -> Result<Vec<ChunkId>> {
        let mut sql = format!(
            "INSERT INTO chunks (tenant, chunk_id, pack_id, pack_offset, stored_length, raw_length, codec, \
             base_chunk_id, delta_depth, resemblance_0, resemblance_1, resemblance_2, resemblance_3) VALUES {}",
            self.dialect.value_rows(batch.len(), 13)
        );
        sql.push_str(" ON CONFLICT (tenant, chunk_id) DO NOTHING");
        let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(keep_prepared(batch.len(), BATCH_ROWS));
        for (pack_id, entry, depth, sketch) in batch {
            query = query
                .bind(tenant)
                .bind(entry.chunk_id.0.to_vec())
                .bind(*pack_id)
                .bind(entry.offset as i64)
                .bind(i64::from(entry.stored_len))
                .bind(i64::from(entry.raw_len))
                .bind(entry.codec as i64)
                .bind(entry.base.map(|base| base.0.to_vec()))
                .bind(i64::from(*depth));
            for slot in 0..crate::ingest::resemblance::FEATURES {
                query = query.bind(sketch.map(|sketch| sketch.0[slot]));
            }
        }
        let inserted = query
            .execute(&mut **tx)
            .await
            .map_err(|e| db_error("indexing chunks", e))?
            .rows_affected();
        if inserted == batch.len() as u64 {
            return Ok(Vec::new());
        }
        // Some rows were there already: those that name another place than this upload's
        // are the lost races (a pack of identical bytes another upload staged is this
        // upload's pack too, and its row is as good as this one's).
        let sql = format!(
            "SELECT chunk_id, pack_id, pack_offset FROM chunks WHERE tenant = {} AND chunk_id IN ({})",
            self.dialect.placeholders(1, 1),
            self.dialect.placeholders(2, batch.len())
        );
        let mut query = sqlx::query_as::<_, (Vec<u8>, String, i64)>(AssertSqlSafe(sql)).bind(tenant);
        for (_, entry, ..) in batch {
            query = query.bind(entry.chunk_id.0.to_vec());
        }
        let indexed: HashMap<Vec<u8>, (String, i64)> = query
            .fetch_all(&mut **tx)
            .await
            .map_err(|e| db_error("looking up raced chunks", e))?
            .into_iter()
            .map(|(id, pack_id, offset)| (id, (pack_id, offset)))
            .collect();
        Ok(batch
            .iter()
            .filter(|(pack_id, entry, ..)| {
                indexed
                    .get(entry.chunk_id.0.as_slice())
                    .is_none_or(|(indexed_pack, offset)| {
                        indexed_pack != pack_id || *offset != entry.offset as i64
                    })
            })
            .map(|(_, entry, ..)| entry.chunk_id)
            .collect())
    }

    async fn write_event(
        &self,
        tx: &mut Tx,
        event_type: EventKind,
        scope: &Scope,
        artifact_id: &str,
        version: &str,
        at: i64,
    ) -> Result<()> {
        self.write_event_with(
            tx,
            event_type,
            scope,
            artifact_id,
            version,
            at,
            &serde_json::json!({}),
        )
        .await
    }

    /// An outbox event with what it changed beyond artifact and version.
    #[allow(clippy::too_many_arguments)]
    async fn write_event_with(
        &self,
        tx: &mut Tx,
        event_type: EventKind,
        scope: &Scope,
        artifact_id: &str,
        version: &str,
        at: i64,
        detail: &serde_json::Value,
    ) -> Result<()> {
        if self.dialect == Dialect::Postgres {
            // Readers follow the outbox by `seq`. A sequence hands out numbers in the order
            // transactions ask, not the order they commit, so a reader could pass seq 6 while
            // seq 5 is still uncommitted and never see 5. Holding this lock from the event to
            // the commit (it is the last statement) makes seq order commit order. SQLite
            // serialises writers already.
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(OUTBOX_LOCK)
                .execute(&mut **tx)
                .await
                .map_err(|e| db_error("ordering the outbox", e))?;
        }
        sqlx::query(
            "INSERT INTO outbox (event_type, tenant, project, artifact_id, version, created_at, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(event_type.as_str())
        .bind(&scope.tenant)
        .bind(&scope.project)
        .bind(artifact_id)
        .bind(version)
        .bind(at)
        .bind(detail.to_string())
        .execute(&mut **tx)
        .await
        .map_err(|e| db_error("writing an outbox event", e))?;
        // The change's audit entry commits with it, or neither does.
        let record = crate::audit::change_record(
            &scope.tenant,
            &scope.project,
            change_target(artifact_id, version),
            event_type.as_str(),
            Timestamp(at),
        );
        self.append_audit_in(tx, &record).await?;
        if !artifact_id.is_empty() && event_type.changes_journaled_state() {
            // What point-in-time restore reads: the artifact's state after this change.
            backup::journal_change(tx, artifact_id, at).await?;
        }
        Ok(())
    }

    /// Ends a transaction that changed one artifact row: records the outbox event, commits,
    /// and returns the artifact as it is now. Nothing changed means the artifact is not there.
    #[allow(clippy::too_many_arguments)]
    async fn finish_change(
        &self,
        mut tx: Tx,
        changed: bool,
        event_type: EventKind,
        scope: &Scope,
        artifact_id: &str,
        now: i64,
        include_deleted: bool,
    ) -> Result<Artifact> {
        if !changed {
            drop(tx);
            return Err(artifact_not_found(scope, artifact_id));
        }
        self.write_event(&mut tx, event_type, scope, artifact_id, "", now)
            .await?;
        tx.commit().await.map_err(|e| db_error("committing", e))?;
        self.announce_commit();
        self.artifact_by_id(scope, artifact_id, include_deleted)
            .await?
            .ok_or_else(|| {
                Error::internal(format!(
                    "artifact {artifact_id:?} vanished after {}",
                    event_type.as_str()
                ))
            })
    }

    /// Replaces a live artifact's tags and categories without a new version.
    pub async fn update_labels(
        &self,
        scope: &Scope,
        artifact_id: &str,
        labels: &Labels,
        now: i64,
    ) -> Result<Artifact> {
        let mut tx = self.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE artifacts SET tags = $1, categories = $2, updated_at = $3 \
             WHERE id = $4 AND tenant = $5 AND project = $6 AND deleted_at IS NULL",
        )
        .bind(tags_json(&labels.tags))
        .bind(tags_json(&labels.categories))
        .bind(now)
        .bind(artifact_id)
        .bind(&scope.tenant)
        .bind(&scope.project)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("updating labels", e))?
        .rows_affected();
        self.finish_change(
            tx,
            changed == 1,
            EventKind::LabelsChanged,
            scope,
            artifact_id,
            now,
            false,
        )
        .await
    }

    /// Soft-deletes a live artifact that has no approved version; `actor` is recorded as who
    /// moved it to the trash.
    pub async fn soft_delete(
        &self,
        scope: &Scope,
        artifact_id: &str,
        actor: &str,
        now: i64,
    ) -> Result<Artifact> {
        let mut tx = self.begin_write().await?;
        // The row lock comes first: a transition locks the same row before it changes a
        // version, so the check below sees every approval committed before this delete.
        let changed = sqlx::query(
            "UPDATE artifacts SET deleted_at = $1, updated_at = $1, deleted_by = $5 \
             WHERE id = $2 AND tenant = $3 AND project = $4 AND deleted_at IS NULL",
        )
        .bind(now)
        .bind(artifact_id)
        .bind(&scope.tenant)
        .bind(&scope.project)
        .bind(actor)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("deleting an artifact", e))?
        .rows_affected();
        if changed == 1 {
            if let Some(hold) = retention::hold_on(&mut tx, artifact_id, None).await? {
                drop(tx);
                return Err(Error::FailedPrecondition(format!(
                    "artifact {artifact_id:?} cannot be deleted: {hold}"
                )));
            }
            let approved: Vec<String> = sqlx::query_scalar(
                "SELECT version FROM versions WHERE artifact_id = $1 AND state = 'approved' AND deleted_at IS NULL ORDER BY seq",
            )
            .bind(artifact_id)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| db_error("checking approved versions", e))?;
            if !approved.is_empty() {
                drop(tx);
                return Err(Error::FailedPrecondition(format!(
                    "artifact {artifact_id:?} has approved versions ({}); archive them before deleting it",
                    approved.join(", ")
                )));
            }
        }
        self.finish_change(
            tx,
            changed == 1,
            EventKind::ArtifactDeleted,
            scope,
            artifact_id,
            now,
            true,
        )
        .await
    }

    /// Restores an artifact deleted at or after `deleted_since`; older deletions have run
    /// out of retention.
    pub async fn undelete(
        &self,
        scope: &Scope,
        artifact_id: &str,
        deleted_since: i64,
        now: i64,
    ) -> Result<Artifact> {
        let mut tx = self.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE artifacts SET deleted_at = NULL, deleted_by = '', updated_at = $1 \
             WHERE id = $2 AND tenant = $3 AND project = $4 AND deleted_at IS NOT NULL AND deleted_at >= $5",
        )
        .bind(now)
        .bind(artifact_id)
        .bind(&scope.tenant)
        .bind(&scope.project)
        .bind(deleted_since)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("restoring an artifact", e))?
        .rows_affected();
        if changed == 0 {
            drop(tx);
            return Err(match self.artifact_by_id(scope, artifact_id, true).await? {
                None => artifact_not_found(scope, artifact_id),
                Some(current) if current.deleted_at.is_none() => {
                    Error::FailedPrecondition(format!("artifact {artifact_id:?} is not deleted"))
                }
                Some(_) => Error::FailedPrecondition(format!(
                    "artifact {artifact_id:?} was deleted longer ago than the retention period and can no longer be restored"
                )),
            });
        }
        self.write_event(&mut tx, EventKind::ArtifactRestored, scope, artifact_id, "", now)
            .await?;
        tx.commit().await.map_err(|e| db_error("committing", e))?;
        self.announce_commit();
        self.artifact_by_id(scope, artifact_id, false)
            .await?
            .ok_or_else(|| Error::internal("restored artifact vanished"))
    }

    // ---- versions --------------------------------------------------------------------------

    pub async fn version(&self, artifact_id: &str, version: &str) -> Result<Option<ArtifactVersion>> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM versions WHERE artifact_id = $1 AND version = $2 AND deleted_at IS NULL"
        );
        let rows: Option<VersionRecord> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(artifact_id)
            .bind(version)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("reading a version", e))?;
        Ok(rows.map(Into::into))
    }

    /// The live version that follows the one numbered `after_seq`, in the order they were
    /// added.
    pub async fn next_version(&self, artifact_id: &str, after_seq: i64) -> Result<Option<ArtifactVersion>> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM versions WHERE artifact_id = $1 AND seq > $2 \
             AND deleted_at IS NULL ORDER BY seq LIMIT 1"
        );
        let row: Option<VersionRecord> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(artifact_id)
            .bind(after_seq)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("reading the next version", e))?;
        Ok(row.map(Into::into))
    }

    /// Versions newest first, starting below `before_seq`.
    pub async fn list_versions(
        &self,
        artifact_id: &str,
        states: &[LifecycleState],
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ArtifactVersion>> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM versions WHERE artifact_id = $1 AND seq < $2 AND state IN ({}) \
             AND deleted_at IS NULL ORDER BY seq DESC LIMIT $3",
            state_list(states)
        );
        let rows: Vec<VersionRecord> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(artifact_id)
            .bind(before_seq.unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("listing versions", e))?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// A version's manifest, whole (its stored form, as `Manifest::decode` reads it).
    pub async fn manifest(&self, artifact_id: &str, version: &str) -> Result<Vec<u8>> {
        let mut connection = self
            .pool
            .acquire()
            .await
            .map_err(|e| db_error("reading a manifest", e))?;
        let row: Option<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT a.tenant, v.manifest FROM versions v JOIN artifacts a ON a.id = v.artifact_id \
             WHERE v.artifact_id = $1 AND v.version = $2",
        )
        .bind(artifact_id)
        .bind(version)
        .fetch_optional(&mut *connection)
        .await
        .map_err(|e| db_error("reading a manifest", e))?;
        let (tenant, stored) = row.ok_or_else(|| {
            Error::not_found(format!("version {version} of artifact {artifact_id:?} not found"))
        })?;
        let mut whole = self
            .whole_manifests(&mut connection, &tenant, vec![stored])
            .await?;
        Ok(whole.pop().expect("one manifest"))
    }

    // ---- chunks and packs ------------------------------------------------------------------

    /// Which of `ids` the tenant's chunk index already holds, with their stored sizes.
    pub async fn known_chunks(&self, tenant: &str, ids: &[ChunkId]) -> Result<HashMap<ChunkId, u64>> {
        let mut found = HashMap::new();
        for batch in ids.chunks(ID_LIST_MAX) {
            let sql = format!(
                "SELECT chunk_id, stored_length FROM chunks WHERE tenant = {} AND chunk_id IN ({})",
                self.dialect.placeholders(1, 1),
                self.dialect.placeholders(2, in_list_len(batch.len()))
            );
            let mut query = sqlx::query_as::<_, (Vec<u8>, i64)>(AssertSqlSafe(sql)).bind(tenant);
            for id in padded(batch) {
                query = query.bind(id.0.to_vec());
            }
            let rows = query
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error("looking up chunks", e))?;
            found.extend(
                rows.iter()
                    .filter_map(|(raw, stored)| Some((chunk_id_from_row(raw)?, *stored as u64))),
            );
        }
        Ok(found)
    }

    /// The tenant's stored chunks that share a feature with one of `sketches`, with
    /// their sketches and delta depths: where a new chunk may find a delta base. At most
    /// [`SIMILAR_PER_SKETCH`] chunks a sketch on average are returned (near-copies of one
    /// chunk all match; a few of them are enough to choose from). Chunks in packs collection
    /// found unneeded are left out: a delta against one would keep its whole pack alive.
    pub async fn similar_chunks(&self, tenant: &str, sketches: &[Sketch]) -> Result<Vec<SimilarChunk>> {
        use crate::ingest::resemblance::FEATURES;
        let mut found = Vec::new();
        // Four lists of the batch (one per feature).
        for batch in sketches.chunks(ID_LIST_MAX / 4) {
            let count = in_list_len(batch.len());
            let terms: Vec<String> = (0..FEATURES)
                .map(|slot| {
                    format!(
                        "resemblance_{slot} IN ({})",
                        self.dialect.placeholders(2 + slot * count, count)
                    )
                })
                .collect();
            let sql = format!(
                "SELECT chunk_id, delta_depth, resemblance_0, resemblance_1, resemblance_2, resemblance_3 FROM chunks \
                 WHERE tenant = {} AND ({}) \
                 AND NOT EXISTS (SELECT 1 FROM gc_marks m WHERE m.pack_id = chunks.pack_id) LIMIT {}",
                self.dialect.placeholders(1, 1),
                terms.join(" OR "),
                self.dialect.placeholders(2 + FEATURES * count, 1)
            );
            type Row = (Vec<u8>, i64, Option<i64>, Option<i64>, Option<i64>, Option<i64>);
            let mut query = sqlx::query_as::<_, Row>(AssertSqlSafe(sql)).bind(tenant);
            for slot in 0..FEATURES {
                for sketch in padded(batch) {
                    query = query.bind(sketch.0[slot]);
                }
            }
            query = query.bind((batch.len() * SIMILAR_PER_SKETCH) as i64);
            let rows = query
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error("looking up similar chunks", e))?;
            found.extend(rows.into_iter().filter_map(|(raw, depth, r0, r1, r2, r3)| {
                Some(SimilarChunk {
                    chunk_id: chunk_id_from_row(&raw)?,
                    depth: depth as u8,
                    sketch: Sketch([r0?, r1?, r2?, r3?]),
                })
            }));
        }
        Ok(found)
    }

    /// Where each of `ids` is stored. Ids missing from the index are missing from the map.
    ///
    /// A download asks for every chunk of a window at once (thousands of rows a second), so
    /// each statement answers with one row: the batch's locations as a JSON array built by
    /// the database. A row per chunk costs more in the driver (a copy of every column, a
    /// hand-off per row) than the lookup costs in the database.
    pub async fn chunk_locations(
        &self,
        tenant: &str,
        ids: &[ChunkId],
    ) -> Result<HashMap<ChunkId, ChunkLocation>> {
        let mut unique: Vec<ChunkId> = ids.to_vec();
        unique.sort();
        unique.dedup();
        let mut found = HashMap::with_capacity(unique.len());
        let aggregate = match self.dialect {
            // SQLite's hex() of NULL is '' and Postgres's encode() of NULL is NULL: both read
            // as "none" below.
            Dialect::Sqlite => {
                "json_group_array(json_array(hex(c.chunk_id), c.pack_id, c.pack_offset, c.stored_length, \
                 c.raw_length, c.codec, hex(c.base_chunk_id), c.delta_depth, p.key_id, hex(p.wrapped_key)))"
            }
            Dialect::Postgres => {
                "COALESCE(json_agg(json_build_array(encode(c.chunk_id, 'hex'), c.pack_id, c.pack_offset, \
                 c.stored_length, c.raw_length, c.codec, encode(c.base_chunk_id, 'hex'), c.delta_depth, \
                 p.key_id, encode(p.wrapped_key, 'hex')))::text, '[]')"
            }
        };
        for batch in unique.chunks(ID_LIST_MAX) {
            let sql = format!(
                "SELECT {aggregate} FROM chunks c LEFT JOIN packs p ON p.pack_id = c.pack_id \
                 WHERE c.tenant = {} AND c.chunk_id IN ({})",
                self.dialect.placeholders(1, 1),
                self.dialect.placeholders(2, in_list_len(batch.len()))
            );
            let mut query = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql)).bind(tenant);
            for id in padded(batch) {
                query = query.bind(id.0.to_vec());
            }
            let json = query
                .fetch_one(&self.pool)
                .await
                .map_err(|e| db_error("locating chunks", e))?;
            let rows: Vec<LocationJson> = serde_json::from_str(&json)
                .map_err(|e| Error::Internal(format!("decoding chunk locations: {e}")))?;
            for row in rows {
                let (id, location) = row
                    .decode()
                    .map_err(|what| Error::Internal(format!("decoding a chunk location: {what}")))?;
                found.insert(id, location);
            }
        }
        Ok(found)
    }

    /// The storage figures of a project's versions, or of one artifact's (by id, wherever
    /// it lives) when `artifact_id` is given.
    pub async fn storage_stats(&self, scope: &Scope, artifact_id: Option<&str>) -> Result<StorageStats> {
        let mut sql =
            format!("SELECT {STATS_SUMS} FROM versions v JOIN artifacts a ON a.id = v.artifact_id WHERE ");
        let row: (i64, i64, i64, i64, i64) = match artifact_id {
            Some(id) => {
                sql.push_str("a.id = $1");
                sqlx::query_as(AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_one(&self.pool)
                    .await
            }
            None => {
                sql.push_str("a.tenant = $1 AND a.project = $2");
                sqlx::query_as(AssertSqlSafe(sql))
                    .bind(&scope.tenant)
                    .bind(&scope.project)
                    .fetch_one(&self.pool)
                    .await
            }
        }
        .map_err(|e| db_error("summing storage figures", e))?;
        Ok(stats_of(row))
    }

    /// The storage figures of every tenant's versions.
    pub async fn tenant_storage_stats(&self) -> Result<Vec<(String, StorageStats)>> {
        let sql = format!(
            "SELECT a.tenant, {STATS_SUMS} FROM versions v JOIN artifacts a ON a.id = v.artifact_id \
             GROUP BY a.tenant ORDER BY a.tenant"
        );
        let rows: Vec<(String, i64, i64, i64, i64, i64)> = sqlx::query_as(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("summing storage figures", e))?;
        Ok(rows
            .into_iter()
            .map(|(tenant, a, b, c, d, e)| (tenant, stats_of((a, b, c, d, e))))
            .collect())
    }

    /// Marks the packs of a failed upload for garbage collection.
    pub async fn abandon_upload(&self, upload_id: &str) -> Result<u64> {
        let _turn = self.write_turn().await;
        sqlx::query("UPDATE packs SET state = 'abandoned' WHERE upload_id = $1 AND state = 'staged'")
            .bind(upload_id)
            .execute(&self.pool)
            .await
            .map(|done| done.rows_affected())
            .map_err(|e| db_error("abandoning an upload", e))
    }

    pub async fn packs_in_state(&self, state: &str) -> Result<Vec<PackRecord>> {
        sqlx::query_as(
            "SELECT pack_id, tenant, size, upload_id, state, created_at FROM packs WHERE state = $1 ORDER BY pack_id",
        )
        .bind(state)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing packs", e))
    }

    /// Every version (deleted artifacts' and versions in the trash too) with its manifest, of
    /// one tenant or of all, `limit` at a time in (artifact id, seq) order after `after`.
    pub async fn stored_manifests(
        &self,
        tenant: Option<&str>,
        after: Option<(&str, i64)>,
        limit: u32,
    ) -> Result<Vec<StoredManifest>> {
        let (after_id, after_seq) = after.unwrap_or(("", -1));
        let of_tenant = if tenant.is_some() {
            "a.tenant = $4 AND "
        } else {
            ""
        };
        let sql = format!(
            "SELECT a.tenant, a.project, v.artifact_id, v.version, v.seq, v.manifest FROM versions v \
             JOIN artifacts a ON a.id = v.artifact_id \
             WHERE {of_tenant}(v.artifact_id > $1 OR (v.artifact_id = $1 AND v.seq > $2)) \
             ORDER BY v.artifact_id, v.seq LIMIT $3"
        );
        let mut query =
            sqlx::query_as::<_, (String, String, String, String, i64, Vec<u8>)>(AssertSqlSafe(sql))
                .bind(after_id)
                .bind(after_seq)
                .bind(i64::from(limit));
        if let Some(tenant) = tenant {
            query = query.bind(tenant);
        }
        let mut connection = self
            .pool
            .acquire()
            .await
            .map_err(|e| db_error("reading manifests", e))?;
        let rows = query
            .fetch_all(&mut *connection)
            .await
            .map_err(|e| db_error("reading manifests", e))?;
        // Segmented manifests put back together, a tenant at a time.
        let mut by_tenant: HashMap<String, Vec<usize>> = HashMap::new();
        for (at, (tenant, ..)) in rows.iter().enumerate() {
            by_tenant.entry(tenant.clone()).or_default().push(at);
        }
        let mut manifests: Vec<std::result::Result<crate::ingest::Manifest, String>> =
            vec![Err(String::new()); rows.len()];
        for (tenant, positions) in by_tenant {
            let stored = positions.iter().map(|&at| rows[at].5.clone()).collect();
            let whole = self.each_whole_manifest(&mut connection, &tenant, stored).await?;
            for (at, manifest) in positions.into_iter().zip(whole) {
                manifests[at] = manifest
                    .map_err(|error| error.to_string())
                    .and_then(crate::ingest::Manifest::decode);
            }
        }
        Ok(rows
            .into_iter()
            .zip(manifests)
            .map(
                |((tenant, project, artifact_id, version, seq, _), manifest)| StoredManifest {
                    scope: Scope::new(tenant, project),
                    artifact_id,
                    version,
                    seq,
                    manifest,
                },
            )
            .collect())
    }

    /// Every pack the catalog knows, in any state.
    pub async fn all_packs(&self) -> Result<Vec<PackRecord>> {
        sqlx::query_as(
            "SELECT pack_id, tenant, size, upload_id, state, created_at FROM packs ORDER BY pack_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing packs", e))
    }

    /// Total bytes of committed packs: what the store holds for live content.
    pub async fn committed_pack_bytes(&self) -> Result<u64> {
        let total: Option<i64> =
            sqlx::query_scalar("SELECT CAST(SUM(size) AS BIGINT) FROM packs WHERE state = 'committed'")
                .fetch_one(&self.pool)
                .await
                .map_err(|e| db_error("summing packs", e))?;
        Ok(total.unwrap_or(0) as u64)
    }

    // ---- outbox ----------------------------------------------------------------------------

    /// The newest outbox position (0 when empty).
    /// Resolves after this process commits an outbox event (at once if one was committed
    /// since the last call). Other processes' events are only seen by reading the outbox.
    pub async fn outbox_written(&self) {
        self.changes.notified().await;
    }

    pub async fn max_outbox_seq(&self) -> Result<i64> {
        let max: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM outbox")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error("reading the outbox", e))?;
        Ok(max.unwrap_or(0))
    }

    /// When the oldest outbox event after `seq` was written (µs), if there is one.
    pub async fn oldest_outbox_event_after(&self, seq: i64) -> Result<Option<i64>> {
        sqlx::query_scalar("SELECT MIN(created_at) FROM outbox WHERE seq > $1")
            .bind(seq)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error("reading the outbox", e))
    }

    /// Live artifacts of every tenant ordered by id, for rebuilding derived data.
    pub async fn live_artifacts_after(&self, after_id: &str, limit: u32) -> Result<Vec<Artifact>> {
        let sql = format!(
            "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE id > $1 AND deleted_at IS NULL ORDER BY id LIMIT $2"
        );
        let rows: Vec<ArtifactRecord> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(after_id)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("listing artifacts", e))?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub async fn outbox_event(&self, seq: i64) -> Result<Option<OutboxEvent>> {
        sqlx::query_as(
            "SELECT seq, event_type, tenant, project, artifact_id, version, created_at, detail FROM outbox \
             WHERE seq = $1",
        )
        .bind(seq)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("reading the outbox", e))
    }

    pub async fn outbox_after(&self, after_seq: i64, limit: u32) -> Result<Vec<OutboxEvent>> {
        sqlx::query_as(
            "SELECT seq, event_type, tenant, project, artifact_id, version, created_at, detail FROM outbox \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("reading the outbox", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_lists_take_few_shapes_and_pad_with_the_last_value() {
        let shapes: std::collections::BTreeSet<usize> = (1..=ID_LIST_MAX).map(in_list_len).collect();
        assert!(shapes.len() <= 10, "{shapes:?}");
        assert_eq!(
            in_list_len(ID_LIST_MAX),
            ID_LIST_MAX,
            "a full batch is not padded"
        );
        for len in 1..=ID_LIST_MAX {
            let batch: Vec<usize> = (0..len).collect();
            let listed: Vec<usize> = padded(&batch).copied().collect();
            assert_eq!(listed.len(), in_list_len(len));
            assert_eq!(listed[..len], batch[..]);
            assert!(
                listed[len..].iter().all(|&value| value == len - 1),
                "{len}: {listed:?}"
            );
        }
    }

    /// Every connection of an SQLite catalog's pool gets its share of the page cache, so the
    /// caches together stay within `sqlite_cache_bytes` however many connections are open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_page_caches_share_the_configured_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
        let catalog = Catalog::connect_with(&url, 4, 2 * 1024 * 1024).await.unwrap();
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut connection = catalog.pool.acquire().await.unwrap();
            let size: i64 = sqlx::query_scalar("PRAGMA cache_size")
                .fetch_one(&mut *connection)
                .await
                .unwrap();
            assert_eq!(size, -512, "each of 4 connections holds 2 MiB / 4 in KiB");
            held.push(connection);
        }
        drop(held);
        let small = Catalog::connect_with(&url, 8, 0).await.unwrap();
        let size: i64 = sqlx::query_scalar("PRAGMA cache_size")
            .fetch_one(&small.pool)
            .await
            .unwrap();
        assert_eq!(
            size,
            -((MIN_SQLITE_CACHE_BYTES / 1024 / 8) as i64),
            "never below the minimum"
        );
    }

    /// Writers queued behind a transaction that holds SQLite's lock for longer than its busy
    /// timeout (15 s) all succeed once it ends, and readers are served meanwhile: waiting
    /// writers hold neither the lock nor a connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_writers_wait_their_turn_however_long_and_readers_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
        let catalog = Catalog::connect(&url, 3).await.unwrap();
        let mut long = catalog.begin_write().await.unwrap();
        sqlx::query("INSERT INTO settings (name, value) VALUES ('long', 'held')")
            .execute(&mut *long)
            .await
            .unwrap();
        let mut writers = tokio::task::JoinSet::new();
        for n in 0..6i64 {
            let catalog = catalog.clone();
            writers.spawn(async move {
                if n % 2 == 0 {
                    catalog
                        .record_replica_position(&format!("replica-{n}"), n, n)
                        .await
                } else {
                    catalog.prune_outbox(0, 0).await.map(|_| ())
                }
            });
        }
        let held_for = Duration::from_secs(16);
        let until = tokio::time::Instant::now() + held_for;
        while tokio::time::Instant::now() < until {
            // Three connections: the long transaction's and two for readers, however many
            // writers wait.
            tokio::time::timeout(Duration::from_secs(2), catalog.outbox_range())
                .await
                .expect("a read while writers wait for their turn")
                .unwrap();
            assert!(
                writers.try_join_next().is_none(),
                "a writer went ahead of the transaction holding the lock"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        long.commit().await.unwrap();
        let done = tokio::time::timeout(Duration::from_secs(10), writers.join_all())
            .await
            .expect("the writers after the long transaction");
        for outcome in done {
            outcome.expect("a writer that waited longer than SQLite's busy timeout");
        }
        let positions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM replica_positions")
            .fetch_one(&catalog.pool)
            .await
            .unwrap();
        assert_eq!(positions, 3);
    }

    /// Another process holding SQLite's lock past the busy timeout is a retryable
    /// UNAVAILABLE, told apart by SQLite's result code.
    #[tokio::test]
    async fn a_lock_held_by_another_process_is_unavailable() {
        use sqlx::Connection;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("catalog.db").display());
        let mut holder = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let mut other = sqlx::SqliteConnection::connect(&url).await.unwrap();
        for connection in [&mut holder, &mut other] {
            sqlx::raw_sql("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 0; CREATE TABLE IF NOT EXISTS t (n INTEGER)")
                .execute(&mut *connection)
                .await
                .unwrap();
        }
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut holder)
            .await
            .unwrap();
        let refused = sqlx::query("INSERT INTO t (n) VALUES (1)")
            .execute(&mut other)
            .await
            .expect_err("the lock is held");
        let error = db_error("writing", refused);
        assert!(matches!(error, Error::Unavailable(_)), "{error:?}");
        let malformed = sqlx::query("INSERT INTO missing (n) VALUES (1)")
            .execute(&mut other)
            .await
            .expect_err("no such table");
        assert!(matches!(db_error("writing", malformed), Error::Internal(_)));
    }
}
