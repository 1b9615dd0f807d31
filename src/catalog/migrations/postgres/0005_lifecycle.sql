-- Lifecycle states of versions, their transitions, and aliases. Keep in step with
-- ../sqlite/0005_lifecycle.sql. Versions from before lifecycle states are drafts.
ALTER TABLE versions ADD COLUMN state TEXT NOT NULL DEFAULT 'draft'
    CHECK (state IN ('draft', 'review', 'approved', 'archived'));
CREATE INDEX versions_by_state ON versions (artifact_id, state, seq);

CREATE TABLE version_transitions (
    id BIGSERIAL PRIMARY KEY,
    artifact_id TEXT NOT NULL,
    version TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    at BIGINT NOT NULL,
    FOREIGN KEY (artifact_id, version) REFERENCES versions (artifact_id, version) ON DELETE CASCADE
);
CREATE INDEX version_transitions_by_version ON version_transitions (artifact_id, version, id);

CREATE TABLE aliases (
    artifact_id TEXT NOT NULL REFERENCES artifacts (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (artifact_id, name),
    FOREIGN KEY (artifact_id, version) REFERENCES versions (artifact_id, version) ON DELETE CASCADE
);

-- What an event changed beyond artifact and version (JSON): a transition's states, an
-- alias's name and targets.
ALTER TABLE outbox ADD COLUMN detail TEXT NOT NULL DEFAULT '{}';

-- Versions from before lifecycle states were created as drafts: record that, so every
-- version's history starts with the state it was created in.
INSERT INTO version_transitions (artifact_id, version, from_state, to_state, actor, reason, at)
    SELECT artifact_id, version, NULL, 'draft', created_by, '', created_at FROM versions ORDER BY seq;
