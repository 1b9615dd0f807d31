-- Warming a run's next inputs looks up the latest other run that read an artifact. Keep in
-- step with ../postgres/0018_run_inputs_by_artifact.sql.
CREATE INDEX run_inputs_by_artifact ON run_inputs (tenant, artifact_id, recorded_at);
