-- Long manifests are stored as content-defined segments of their chunk list, each once per
-- tenant and counted by the versions naming it (src/catalog/manifests.rs); the version's
-- manifest column then holds the segment ids. Keep in step with
-- ../sqlite/0021_manifest_segments.sql.
CREATE TABLE manifest_segments (
    tenant TEXT NOT NULL,
    segment_id BYTEA NOT NULL,
    entries BYTEA NOT NULL,
    refs BIGINT NOT NULL,
    PRIMARY KEY (tenant, segment_id)
);
