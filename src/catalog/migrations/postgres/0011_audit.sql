-- The audit trail: one hash chain of entries per tenant ('' for requests that named none),
-- its head, and signed checkpoints of it. Keep in step with ../sqlite/0011_audit.sql.
CREATE TABLE audit_log (
    tenant TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    principal_kind TEXT NOT NULL,
    project TEXT NOT NULL,
    target TEXT NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    code TEXT NOT NULL,
    request_id TEXT NOT NULL,
    peer TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (tenant, seq)
);
CREATE INDEX audit_by_target ON audit_log (tenant, target, seq);
CREATE INDEX audit_by_actor ON audit_log (tenant, actor, seq);

CREATE TABLE audit_heads (
    tenant TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);

CREATE TABLE audit_checkpoints (
    tenant TEXT NOT NULL,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    at BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (tenant, seq)
);
