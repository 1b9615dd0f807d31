-- The change stream reads the outbox per project; replicas record how far their search index
-- has followed it, so pruning never passes a live replica. Keep in step with
-- ../postgres/0006_change_stream.sql.
CREATE INDEX outbox_by_scope ON outbox (tenant, project, seq);

CREATE TABLE replica_positions (
    replica_id TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
