-- Extracted metadata shared by versions whose documents extract the same (all but the line
-- count, which stays in the version row), stored once per tenant (zstd) and counted by the
-- versions naming it (src/catalog/extracted.rs). Keep in step with
-- ../postgres/0022_extracted_documents.sql.
CREATE TABLE extracted_documents (
    tenant TEXT NOT NULL,
    digest BLOB NOT NULL,
    body BLOB NOT NULL,
    refs INTEGER NOT NULL,
    PRIMARY KEY (tenant, digest)
);
ALTER TABLE versions ADD COLUMN extracted_digest BLOB;
ALTER TABLE versions ADD COLUMN extracted_lines INTEGER;
