-- Retention policies, legal holds, the trash of versions, and garbage collection. Keep in
-- step with ../postgres/0015_retention.sql.

-- A version in the trash has deleted_at set; it stays readable to restore until the
-- retention period ends, then the purge job removes the row.
ALTER TABLE versions ADD COLUMN deleted_at INTEGER;
ALTER TABLE versions ADD COLUMN deleted_by TEXT NOT NULL DEFAULT '';
-- The last read, recorded at most once per read-tracking interval (not once per download).
ALTER TABLE versions ADD COLUMN last_read_at INTEGER;
ALTER TABLE artifacts ADD COLUMN deleted_by TEXT NOT NULL DEFAULT '';
CREATE INDEX versions_in_trash ON versions (deleted_at) WHERE deleted_at IS NOT NULL;
CREATE INDEX artifacts_in_trash ON artifacts (deleted_at) WHERE deleted_at IS NOT NULL;

-- A hold on an artifact (version '') or one version: no policy, purge or collection
-- removes what it holds.
CREATE TABLE legal_holds (
    artifact_id TEXT NOT NULL REFERENCES artifacts (id) ON DELETE CASCADE,
    version TEXT NOT NULL,
    tenant TEXT NOT NULL,
    project TEXT NOT NULL,
    reason TEXT NOT NULL,
    held_by TEXT NOT NULL,
    held_at INTEGER NOT NULL,
    PRIMARY KEY (artifact_id, version)
);
CREATE INDEX legal_holds_by_project ON legal_holds (tenant, project);

-- A policy's selection, keep rules and action are one JSON document (`spec`), validated
-- by the service before it is stored.
CREATE TABLE retention_policies (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    project TEXT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    revision INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    last_run_at INTEGER,
    UNIQUE (tenant, project, name)
);

CREATE TABLE retention_runs (
    id TEXT PRIMARY KEY,
    policy_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    project TEXT NOT NULL,
    policy_revision INTEGER NOT NULL,
    trigger TEXT NOT NULL,
    dry_run INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    report TEXT NOT NULL
);
CREATE INDEX retention_runs_by_policy ON retention_runs (tenant, project, policy_id, started_at);

-- Packs found unreferenced by a collection run; deleted only if still marked, and still
-- unreferenced, a grace period later. An upload that reuses a chunk of a marked pack
-- removes the mark in its commit.
CREATE TABLE gc_marks (
    pack_id TEXT PRIMARY KEY,
    marked_at INTEGER NOT NULL
);

-- Packs removed from the catalog whose objects are being deleted from the stores. A row
-- stays until a delete succeeded in a run that began a grace period after it was buried,
-- so a copy a replicator wrote late is deleted too.
CREATE TABLE pack_tombstones (
    pack_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    size INTEGER NOT NULL,
    buried_at INTEGER NOT NULL,
    deleted_at INTEGER
);

CREATE TABLE gc_runs (
    id TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    dry_run INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    report TEXT NOT NULL
);
CREATE INDEX gc_runs_by_start ON gc_runs (started_at);

-- One holder at a time for work that must not run twice across replicas.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
