//! The storage format: content-defined chunking, keyed chunk ids, per-chunk compression,
//! pack objects and manifests. Data transformations (and an upload's spill file); no gRPC,
//! no SQL, no network.

pub mod chunk;
pub mod chunker;
pub mod delta;
pub mod extract;
pub mod manifest;
pub mod new_chunks;
pub mod pack;
pub mod resemblance;
pub mod sealing;
pub mod spill;

pub use chunk::{ChunkId, Codec, TenantKey};
pub use chunker::{ChunkerConfig, StreamChunker};
pub use manifest::{Manifest, ManifestBuilder, ManifestEntry, ManifestWriter, NewManifest};
pub use new_chunks::NewChunks;
pub use pack::{PackBuilder, PackEntry, PackId, SealedPack};
