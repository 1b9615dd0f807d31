-- Read-only links: an artifact of one project made visible in another project of the same
-- tenant without copying. A link holds the artifact's type and name in the project it is
-- linked into, so it and that project's own artifacts never share a name. Keep in step with
-- ../postgres/0009_links.sql.
CREATE TABLE artifact_links (
    tenant TEXT NOT NULL,
    project TEXT NOT NULL,
    artifact_type TEXT NOT NULL,
    name TEXT NOT NULL,
    target_id TEXT NOT NULL REFERENCES artifacts (id) ON DELETE CASCADE,
    linked_by TEXT NOT NULL,
    linked_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, project, artifact_type, name)
);
CREATE UNIQUE INDEX artifact_links_by_target ON artifact_links (target_id, tenant, project);
-- The change stream of a project follows the artifacts linked into it by their events.
CREATE INDEX outbox_by_artifact ON outbox (artifact_id, seq);
