-- Extracted metadata shared by versions whose documents extract the same (all but the line
-- count, which stays in the version row), stored once per tenant (zstd) and counted by the
-- versions naming it (src/catalog/extracted.rs). Keep in step with
-- ../sqlite/0022_extracted_documents.sql.
CREATE TABLE extracted_documents (
    tenant TEXT NOT NULL,
    digest BYTEA NOT NULL,
    body BYTEA NOT NULL,
    refs BIGINT NOT NULL,
    PRIMARY KEY (tenant, digest)
);
ALTER TABLE versions ADD COLUMN extracted_digest BYTEA;
ALTER TABLE versions ADD COLUMN extracted_lines BIGINT;
