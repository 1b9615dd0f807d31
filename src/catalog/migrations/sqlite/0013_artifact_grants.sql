-- Roles on one artifact, beside the roles in its project: for a user (or an API key as
-- key:<id>), a group, or every caller with a role in another project of the tenant.
-- Keep in step with ../postgres/0013_artifact_grants.sql.
CREATE TABLE artifact_grants (
    tenant TEXT NOT NULL,
    artifact_id TEXT NOT NULL,
    subject_kind TEXT NOT NULL CHECK (subject_kind IN ('user', 'group', 'project')),
    subject TEXT NOT NULL,
    role TEXT NOT NULL,
    granted_by TEXT NOT NULL,
    granted_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, artifact_id, subject_kind, subject)
);
