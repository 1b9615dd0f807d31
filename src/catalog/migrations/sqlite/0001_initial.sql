-- Catalog schema, SQLite dialect. Keep in step with ../postgres/0001_initial.sql.
-- Timestamps are microseconds since the Unix epoch (UTC).

CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE artifacts (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    project TEXT NOT NULL,
    artifact_type TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    tags TEXT NOT NULL,
    metadata TEXT NOT NULL,
    latest_version TEXT NOT NULL,
    version_count INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    deleted_at INTEGER,
    UNIQUE (tenant, project, artifact_type, name)
);
CREATE INDEX artifacts_by_project_name ON artifacts (tenant, project, name, id);

CREATE TABLE versions (
    artifact_id TEXT NOT NULL REFERENCES artifacts (id) ON DELETE CASCADE,
    version TEXT NOT NULL,
    seq INTEGER NOT NULL,
    size INTEGER NOT NULL,
    stored_size INTEGER NOT NULL,
    new_stored_size INTEGER NOT NULL,
    blake3 TEXT NOT NULL,
    chunk_count INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    change_message TEXT NOT NULL,
    metadata TEXT NOT NULL,
    content_type TEXT NOT NULL,
    manifest BLOB NOT NULL,
    PRIMARY KEY (artifact_id, version),
    UNIQUE (artifact_id, seq)
);

CREATE TABLE packs (
    pack_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    size INTEGER NOT NULL,
    upload_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('staged', 'committed', 'abandoned')),
    created_at INTEGER NOT NULL
);
CREATE INDEX packs_by_upload ON packs (upload_id);
CREATE INDEX packs_by_state ON packs (state, created_at);

CREATE TABLE chunks (
    tenant TEXT NOT NULL,
    chunk_id BLOB NOT NULL,
    pack_id TEXT NOT NULL REFERENCES packs (pack_id),
    pack_offset INTEGER NOT NULL,
    stored_length INTEGER NOT NULL,
    raw_length INTEGER NOT NULL,
    codec INTEGER NOT NULL,
    PRIMARY KEY (tenant, chunk_id)
);
CREATE INDEX chunks_by_pack ON chunks (pack_id);

CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_type TEXT NOT NULL,
    tenant TEXT NOT NULL,
    project TEXT NOT NULL,
    artifact_id TEXT NOT NULL,
    version TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
