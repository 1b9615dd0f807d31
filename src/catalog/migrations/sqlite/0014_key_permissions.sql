-- An API key may hold an explicit list of permissions (a JSON list of read, write,
-- maintain) instead of everything its role holds; NULL means the role's.
-- Keep in step with ../postgres/0014_key_permissions.sql.
ALTER TABLE api_keys ADD COLUMN permissions TEXT;
