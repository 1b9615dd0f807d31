-- No table changes. From here on a long manifest's row (versions.manifest) lists each
-- segment's id with the bytes of content it covers (row form 3, src/catalog/manifests.rs),
-- so reads from an offset skip the segments before it. Binaries built before this cannot
-- read that form: this migration makes them refuse to start against a catalog that may
-- hold it, rather than report its versions as damaged. Keep in step with
-- ../postgres/0023_manifest_segment_lengths.sql.
SELECT 1;
