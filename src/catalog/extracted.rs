//! Extracted metadata as the catalog keeps it. What an upload extracts (title, headings,
//! front matter, keys) is mostly the same from one version of a document to the next, while
//! its line count changes with nearly every edit. So the line count is kept in the version's
//! row, and the rest, when it is large enough to matter, is stored once per tenant in
//! `extracted_documents` (zstd-compressed: heading lists shrink about threefold; counted by
//! the versions naming it, as manifest segments are) and named by its digest. Reads put the two back together; nothing outside the catalog sees
//! the split (`VERSION_COLUMNS` reads a row's own document or its shared one).

use super::counted::{CountedTable, counted};
use super::{Catalog, db_error};
use crate::domain::Result;
use sqlx::AnyConnection;
use std::collections::BTreeMap;

/// Documents shorter than this stay in the version's row: a row of their own would cost
/// about as much.
pub const INLINE_MAX_BYTES: usize = 256;

/// A shared document is compressed at this level: documents are small, written once and
/// read often.
const LEVEL: i32 = 19;

/// Extracted metadata is bounded (1 MiB of text examined, at most 200 headings): a shared
/// document that decompresses to more is damage.
const MAX_DOCUMENT_BYTES: usize = 4 << 20;

pub(super) const DOCUMENTS: CountedTable = CountedTable {
    table: "extracted_documents",
    id: "digest",
    body: "body",
    what: "extracted metadata",
};

/// How a version row stores its extracted metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StoredExtracted {
    /// The `extracted` column: the whole document, or empty when shared.
    pub inline: String,
    pub digest: Option<Vec<u8>>,
    /// The line count, kept apart from a shared document.
    pub lines: Option<i64>,
}

/// Splits a version's extracted metadata (JSON of `ingest::extract::Extracted`) into what
/// its row keeps and the shared document, if it gets one.
fn split(extracted: &str) -> (StoredExtracted, Option<String>) {
    let inline = StoredExtracted {
        inline: extracted.to_owned(),
        digest: None,
        lines: None,
    };
    if extracted.len() < INLINE_MAX_BYTES {
        return (inline, None);
    }
    let Ok(serde_json::Value::Object(mut document)) = serde_json::from_str(extracted) else {
        return (inline, None);
    };
    let lines = document
        .get("line_count")
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(0);
    document.insert("line_count".to_owned(), serde_json::Value::from(0));
    let body = serde_json::Value::Object(document).to_string();
    let digest = blake3::hash(body.as_bytes()).as_bytes().to_vec();
    (
        StoredExtracted {
            inline: String::new(),
            digest: Some(digest),
            lines: Some(lines),
        },
        Some(body),
    )
}

/// A read row's extracted metadata: its own document, or the shared one (compressed) with
/// the row's line count put back. A shared document that does not read back is logged and
/// read as empty (it only feeds search and display; the content is unaffected).
pub(super) fn joined(
    extracted: &str,
    shared: Option<&[u8]>,
    lines: Option<i64>,
) -> crate::ingest::extract::Extracted {
    let Some(shared) = shared else {
        return serde_json::from_str(extracted).unwrap_or_default();
    };
    let document = zstd::bulk::decompress(shared, MAX_DOCUMENT_BYTES)
        .map_err(|e| e.to_string())
        .and_then(|json| {
            serde_json::from_slice::<crate::ingest::extract::Extracted>(&json).map_err(|e| e.to_string())
        });
    match document {
        Ok(mut document) => {
            document.line_count = lines.unwrap_or(0).max(0) as u64;
            document
        }
        Err(error) => {
            tracing::error!(%error, "a shared extracted metadata document does not read back");
            crate::ingest::extract::Extracted::default()
        }
    }
}

impl Catalog {
    /// What a version's row stores for `extracted`, counting its shared document.
    pub(super) async fn store_extracted(
        &self,
        connection: &mut AnyConnection,
        tenant: &str,
        extracted: &str,
    ) -> Result<StoredExtracted> {
        let (stored, body) = split(extracted);
        if let (Some(digest), Some(body)) = (&stored.digest, body) {
            let compressed = zstd::bulk::compress(body.as_bytes(), LEVEL).map_err(|e| {
                crate::domain::Error::internal(format!("compressing extracted metadata: {e}"))
            })?;
            let rows = BTreeMap::from([(digest.clone(), (compressed, 1))]);
            self.add_references(connection, DOCUMENTS, tenant, &rows).await?;
        }
        Ok(stored)
    }

    /// Releases the shared documents of versions about to be deleted (their digests).
    pub(super) async fn release_extracted(
        &self,
        connection: &mut AnyConnection,
        tenant: &str,
        digests: Vec<Vec<u8>>,
    ) -> Result<()> {
        let counts = counted(digests);
        self.drop_references(connection, DOCUMENTS, tenant, &counts).await
    }

    /// Forgets every shared document of `tenant` (its keys were destroyed: what was extracted
    /// from its content goes with it).
    pub(super) async fn erase_extracted(&self, connection: &mut AnyConnection, tenant: &str) -> Result<()> {
        sqlx::query("DELETE FROM extracted_documents WHERE tenant = $1")
            .bind(tenant)
            .execute(&mut *connection)
            .await
            .map_err(|e| db_error("erasing extracted metadata", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::extract::Extracted;

    fn document(lines: u64, headings: usize) -> String {
        serde_json::to_string(&Extracted {
            is_text: true,
            line_count: lines,
            title: Some("Product requirements".into()),
            headings: (0..headings).map(|n| format!("Requirement {n}")).collect(),
            ..Extracted::default()
        })
        .unwrap()
    }

    #[test]
    fn large_documents_are_shared_whatever_their_line_count_and_read_back_whole() {
        let (first, body) = split(&document(120, 30));
        let (second, same_body) = split(&document(125, 30));
        assert!(first.inline.is_empty() && first.digest.is_some());
        assert_eq!(first.digest, second.digest, "only the line count changed");
        assert_eq!(body, same_body);
        assert_eq!(
            joined(
                "",
                Some(&zstd::bulk::compress(body.unwrap().as_bytes(), LEVEL).unwrap()),
                second.lines
            ),
            serde_json::from_str(&document(125, 30)).unwrap()
        );
        assert_eq!(joined("", Some(b"not zstd"), Some(1)), Extracted::default());
        let (other, _) = split(&document(125, 31));
        assert_ne!(other.digest, first.digest);
    }

    #[test]
    fn small_or_unparsable_documents_stay_in_the_row() {
        let small = document(3, 0);
        assert!(small.len() < INLINE_MAX_BYTES);
        assert_eq!(
            split(&small),
            (
                StoredExtracted {
                    inline: small.clone(),
                    digest: None,
                    lines: None
                },
                None
            )
        );
        let odd = "x".repeat(INLINE_MAX_BYTES);
        assert_eq!(split(&odd).0.inline, odd);
        assert_eq!(joined(&small, None, None), serde_json::from_str(&small).unwrap());
    }
}
