-- Catalog schema, PostgreSQL dialect. Keep in step with ../sqlite/0001_initial.sql.
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
    version_count BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted_at BIGINT,
    UNIQUE (tenant, project, artifact_type, name)
);
CREATE INDEX artifacts_by_project_name ON artifacts (tenant, project, name, id);

CREATE TABLE versions (
    artifact_id TEXT NOT NULL REFERENCES artifacts (id) ON DELETE CASCADE,
    version TEXT NOT NULL,
    seq BIGINT NOT NULL,
    size BIGINT NOT NULL,
    stored_size BIGINT NOT NULL,
    new_stored_size BIGINT NOT NULL,
    blake3 TEXT NOT NULL,
    chunk_count BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    change_message TEXT NOT NULL,
    metadata TEXT NOT NULL,
    content_type TEXT NOT NULL,
    manifest BYTEA NOT NULL,
    PRIMARY KEY (artifact_id, version),
    UNIQUE (artifact_id, seq)
);

CREATE TABLE packs (
    pack_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    size BIGINT NOT NULL,
    upload_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('staged', 'committed', 'abandoned')),
    created_at BIGINT NOT NULL
);
CREATE INDEX packs_by_upload ON packs (upload_id);
CREATE INDEX packs_by_state ON packs (state, created_at);

CREATE TABLE chunks (
    tenant TEXT NOT NULL,
    chunk_id BYTEA NOT NULL,
    pack_id TEXT NOT NULL REFERENCES packs (pack_id),
    pack_offset BIGINT NOT NULL,
    stored_length BIGINT NOT NULL,
    raw_length BIGINT NOT NULL,
    codec BIGINT NOT NULL,
    PRIMARY KEY (tenant, chunk_id)
);
CREATE INDEX chunks_by_pack ON chunks (pack_id);

CREATE TABLE outbox (
    seq BIGSERIAL PRIMARY KEY,
    event_type TEXT NOT NULL,
    tenant TEXT NOT NULL,
    project TEXT NOT NULL,
    artifact_id TEXT NOT NULL,
    version TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
