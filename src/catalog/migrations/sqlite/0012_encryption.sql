-- Encryption at rest. A tenant has at most one active key; the master key wraps it. Each
-- sealed pack records which tenant key wraps its data key, and the wrapped data key.
-- Rotating a tenant key re-wraps its packs' data keys and erases the old key; destroying
-- it erases the key and leaves the packs unreadable. Keep in step with
-- ../postgres/0012_encryption.sql.
CREATE TABLE tenant_keys (
    key_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'rotated', 'destroyed')),
    -- The master key's fingerprint and the wrapped key; both NULL once the key is erased.
    master_key_id TEXT,
    wrapped BLOB,
    created_at INTEGER NOT NULL,
    -- When the key stopped being active (rotated or destroyed).
    retired_at INTEGER
);
CREATE UNIQUE INDEX tenant_keys_one_active ON tenant_keys (tenant) WHERE state = 'active';
CREATE INDEX tenant_keys_by_tenant ON tenant_keys (tenant, created_at);

ALTER TABLE packs ADD COLUMN key_id TEXT;
ALTER TABLE packs ADD COLUMN wrapped_key BLOB;
CREATE INDEX packs_by_key ON packs (key_id);
