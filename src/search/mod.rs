//! Search: a tantivy index of the latest version of every live artifact, fed from the
//! catalog's outbox. The index is never the source of truth: every replica of the service
//! can keep its own, and `artifactd reindex` rebuilds it from the catalog.

mod index;
mod indexer;
mod metadata;
pub mod query;
mod stats;

pub use index::{
    Checkpoint, FacetCount, Highlight, IndexedArtifact, QuerySyntax, SearchHit, SearchIndex, SearchPage,
    SearchRequest, TagMatch, TagSearchRequest,
};
pub use indexer::{ContentReader, Indexer};
pub use metadata::{
    ArtifactMetadata, Condition, MetadataFilter, MetadataSearchRequest, MetadataSort, parse_time,
};
