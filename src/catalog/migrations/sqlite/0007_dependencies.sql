-- Dependencies a version declares when it is created; immutable with it. Keep in step with
-- ../postgres/0007_dependencies.sql.
CREATE TABLE dependencies (
    artifact_id TEXT NOT NULL,
    version TEXT NOT NULL,
    position INTEGER NOT NULL,
    target_id TEXT NOT NULL REFERENCES artifacts (id) ON DELETE CASCADE,
    requirement TEXT NOT NULL,
    kind TEXT NOT NULL,
    PRIMARY KEY (artifact_id, version, position),
    FOREIGN KEY (artifact_id, version) REFERENCES versions (artifact_id, version) ON DELETE CASCADE
);
CREATE INDEX dependencies_by_target ON dependencies (target_id, artifact_id, version);
