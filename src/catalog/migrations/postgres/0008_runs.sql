-- Workflow runs: the run that produced each version, and what runs read. Keep in step with
-- ../sqlite/0008_runs.sql.
ALTER TABLE versions ADD COLUMN run_id TEXT NOT NULL DEFAULT '';
ALTER TABLE versions ADD COLUMN run_workflow TEXT NOT NULL DEFAULT '';
ALTER TABLE versions ADD COLUMN run_step TEXT NOT NULL DEFAULT '';
ALTER TABLE versions ADD COLUMN run_agent TEXT NOT NULL DEFAULT '';
CREATE INDEX versions_by_run ON versions (run_id);

CREATE TABLE run_inputs (
    tenant TEXT NOT NULL,
    run_id TEXT NOT NULL,
    artifact_id TEXT NOT NULL,
    version TEXT NOT NULL,
    how TEXT NOT NULL CHECK (how IN ('explicit', 'download')),
    recorded_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, run_id, artifact_id, version),
    FOREIGN KEY (artifact_id, version) REFERENCES versions (artifact_id, version) ON DELETE CASCADE
);
