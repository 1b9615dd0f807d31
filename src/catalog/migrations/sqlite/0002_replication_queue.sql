-- Objects written to one object store that must be copied to the other (failover mirror).
CREATE TABLE replication_queue (
    object_key TEXT NOT NULL,
    target TEXT NOT NULL CHECK (target IN ('primary', 'fallback')),
    attempts INTEGER NOT NULL,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    PRIMARY KEY (object_key, target)
);
CREATE INDEX replication_queue_due ON replication_queue (next_attempt_at);
