-- Delta-encoded chunks name the chunk they decode against and how many bases decoding
-- them goes through. Keep in step with ../postgres/0019_delta_chunks.sql.
ALTER TABLE chunks ADD COLUMN base_chunk_id BLOB;
ALTER TABLE chunks ADD COLUMN delta_depth INTEGER NOT NULL DEFAULT 0;
-- What each version's content did not cost: bytes already stored (dedup) and bytes its
-- delta chunks saved against storing those chunks on their own.
ALTER TABLE versions ADD COLUMN dedup_saved_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE versions ADD COLUMN delta_saved_bytes INTEGER NOT NULL DEFAULT 0;
