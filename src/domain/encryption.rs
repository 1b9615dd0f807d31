//! Encryption keys as the catalog records them. The key material itself is only ever held
//! wrapped here; `ingest::sealing` does the cryptography and `app::keys` decides.

use super::{Error, Result, Timestamp};

/// Where a tenant key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantKeyState {
    /// The key new packs of the tenant are sealed under. At most one per tenant.
    Active,
    /// Replaced by a newer key that re-wrapped every data key; the material is erased.
    Rotated,
    /// Erased on purpose: what it protected is unreadable for good.
    Destroyed,
}

impl TenantKeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Rotated => "rotated",
            Self::Destroyed => "destroyed",
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "active" => Ok(Self::Active),
            "rotated" => Ok(Self::Rotated),
            "destroyed" => Ok(Self::Destroyed),
            other => Err(Error::internal(format!("unknown tenant key state {other:?}"))),
        }
    }
}

/// A tenant key as stored: wrapped by a master key while it lives, erased afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantKeyRecord {
    pub key_id: String,
    pub tenant: String,
    pub state: TenantKeyState,
    /// The wrapping master key's fingerprint and the wrapped key, while the key lives.
    pub material: Option<WrappedTenantKey>,
    pub created_at: Timestamp,
    pub retired_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedTenantKey {
    pub master_key_id: String,
    pub wrapped: Vec<u8>,
}

/// How a pack's data key is kept: the tenant key that wraps it and the wrapped data key
/// (erased when the tenant key is destroyed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackKey {
    pub key_id: String,
    pub wrapped: Option<Vec<u8>>,
}

/// What destroying a tenant's keys did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShredReport {
    pub keys_destroyed: Vec<String>,
    /// Sealed packs whose data keys are gone.
    pub packs_unreadable: u64,
    /// Chunks taken out of the chunk index, so no upload deduplicates against them.
    pub chunks_forgotten: u64,
    /// Committed packs of the tenant written before encryption was on: not protected.
    pub plain_packs_remaining: u64,
}

/// How much of a tenant's stored content is sealed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealedCounts {
    pub sealed_packs: u64,
    pub sealed_bytes: u64,
    pub plain_packs: u64,
    pub plain_bytes: u64,
}
