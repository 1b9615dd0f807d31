-- Identity: API keys (only a hash of each secret is kept) and role bindings, which give
-- users and groups a role in a tenant (project '') or one of its projects. Keep in step with
-- ../sqlite/0010_access.sql.
CREATE TABLE api_keys (
    key_id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    -- '' for a server admin key, which reaches every tenant.
    tenant TEXT NOT NULL,
    -- A JSON array of project names; empty means every project of the tenant.
    projects TEXT NOT NULL,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    -- 1 for the key made at the first start; at most one such key ever exists.
    bootstrap BIGINT UNIQUE
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant, created_at);

CREATE TABLE role_bindings (
    tenant TEXT NOT NULL,
    project TEXT NOT NULL,
    subject_kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    role TEXT NOT NULL,
    granted_by TEXT NOT NULL,
    granted_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, project, subject_kind, subject)
);
CREATE INDEX role_bindings_by_subject ON role_bindings (subject_kind, subject);
