-- A chunk's resemblance sketch (four keyed features, see src/ingest/resemblance.rs):
-- a new chunk sharing one with a stored chunk is tried as a delta against it. Only
-- compressible chunks long enough have one. Keep in step with ../sqlite/0020_chunk_resemblance.sql.
ALTER TABLE chunks ADD COLUMN resemblance_0 BIGINT;
ALTER TABLE chunks ADD COLUMN resemblance_1 BIGINT;
ALTER TABLE chunks ADD COLUMN resemblance_2 BIGINT;
ALTER TABLE chunks ADD COLUMN resemblance_3 BIGINT;
CREATE INDEX chunks_by_resemblance_0 ON chunks (tenant, resemblance_0) WHERE resemblance_0 IS NOT NULL;
CREATE INDEX chunks_by_resemblance_1 ON chunks (tenant, resemblance_1) WHERE resemblance_1 IS NOT NULL;
CREATE INDEX chunks_by_resemblance_2 ON chunks (tenant, resemblance_2) WHERE resemblance_2 IS NOT NULL;
CREATE INDEX chunks_by_resemblance_3 ON chunks (tenant, resemblance_3) WHERE resemblance_3 IS NOT NULL;
