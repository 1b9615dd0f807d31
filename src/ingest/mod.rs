//! The storage format: content-defined chunking, keyed chunk ids, per-chunk compression,
//! pack objects and manifests. Pure data transformations; no gRPC, no SQL, no network.

pub mod chunk;
pub mod chunker;
pub mod delta;
pub mod extract;
pub mod manifest;
pub mod new_chunks;
pub mod pack;
pub mod resemblance;
pub mod sealing;

pub use chunk::{ChunkId, Codec, TenantKey};
pub use chunker::{ChunkerConfig, StreamChunker};
pub use manifest::{Manifest, ManifestBuilder, ManifestEntry};
pub use new_chunks::NewChunks;
pub use pack::{PackBuilder, PackEntry, PackId, SealedPack};
