-- Backups, their pins on packs, backup schedules, and the journal that point-in-time
-- restore reads. Keep in step with ../postgres/0017_backups.sql.

-- One backup: its objects on the store (JSON list) and what they hold. A backup's rows
-- are rebuilt from its objects when a catalog is restored from them.
CREATE TABLE backups (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    -- '' for a backup of a whole tenant.
    project TEXT NOT NULL,
    -- '' unless one artifact was backed up.
    artifact_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('tenant', 'project', 'artifact')),
    -- 'manual', or 'schedule' for one the project's schedule took (and may expire).
    trigger TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    summary TEXT NOT NULL
);
CREATE INDEX backups_by_scope ON backups (tenant, project, created_at);

-- Packs a backup needs: garbage collection keeps them while the backup exists.
CREATE TABLE backup_pins (
    backup_id TEXT NOT NULL REFERENCES backups (id) ON DELETE CASCADE,
    pack_id TEXT NOT NULL,
    PRIMARY KEY (backup_id, pack_id)
);
CREATE INDEX backup_pins_by_pack ON backup_pins (pack_id);

CREATE TABLE backup_schedules (
    tenant TEXT NOT NULL,
    project TEXT NOT NULL,
    interval_seconds INTEGER NOT NULL,
    keep INTEGER NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    last_run_at INTEGER,
    PRIMARY KEY (tenant, project)
);

-- The state of an artifact after each change (labels, metadata, deletion, aliases, which
-- versions are in the trash), written with the change. Lifecycle states come from
-- version_transitions; together they give the artifact as it was at any time since.
CREATE TABLE artifact_journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    artifact_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    project TEXT NOT NULL,
    at INTEGER NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX artifact_journal_by_artifact ON artifact_journal (artifact_id, at, id);
CREATE INDEX artifact_journal_by_project ON artifact_journal (tenant, project, at);
