//! Encryption at rest: AES-256-GCM over each stored chunk, under keys in three tiers.
//!
//! - A **data key** per pack seals every chunk in it. The nonce is the chunk's offset in the
//!   pack (unique within the pack, and a data key never seals a second pack), and the chunk's
//!   id is the associated data, so a sealed chunk cannot be moved to another place or id.
//! - A **tenant key** wraps the data keys of one tenant. Rotating it re-wraps the data keys
//!   and leaves every pack as it is; destroying it leaves the tenant's packs unreadable.
//! - The **master key** (from a file or the environment, never from the catalog) wraps the
//!   tenant keys.
//!
//! Wrapping is AES-256-GCM too, with a random nonce and associated data naming what the
//! wrapped key is for, so a wrapped key copied onto another row does not open.

use super::chunk::ChunkId;
use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use std::fmt;

/// Bytes a sealed chunk carries beyond its plaintext (the authentication tag).
pub const TAG_LEN: usize = 16;
/// Length of a wrapped key: nonce, key, tag.
pub const WRAPPED_LEN: usize = NONCE_LEN + 32 + TAG_LEN;

/// Why a key or a sealed chunk could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the stored bytes fail authentication: wrong key, or they were altered")]
    Authentication,
    #[error("a wrapped key must be {WRAPPED_LEN} bytes, this one has {0}")]
    WrappedLength(usize),
}

/// Why key material given by an operator is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyMaterialError(String);

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random source works");
    bytes
}

/// 32 bytes of secret key material that wipes itself when dropped.
#[derive(zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
struct KeyBytes([u8; 32]);

/// An AES-256-GCM key and its material (kept to be wrapped itself).
struct AeadKey {
    bytes: KeyBytes,
    aead: LessSafeKey,
}

impl AeadKey {
    fn from_bytes(bytes: [u8; 32]) -> Self {
        let aead =
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &bytes).expect("32 bytes is an AES-256 key"));
        Self {
            bytes: KeyBytes(bytes),
            aead,
        }
    }
}

/// A key that wraps other keys: the master key, or a tenant key.
pub struct WrappingKey(AeadKey);

impl fmt::Debug for WrappingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WrappingKey(..)")
    }
}

impl WrappingKey {
    fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(AeadKey::from_bytes(bytes))
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        Self::from_bytes(random_bytes())
    }

    /// Reads a master key as an operator writes it: 32 bytes in base64 or in hex, surrounding
    /// whitespace ignored.
    pub fn parse(text: &str) -> Result<Self, KeyMaterialError> {
        let text = text.trim();
        let decoded = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|e| KeyMaterialError(e.to_string()))?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| {
                    KeyMaterialError(
                        "a key is 32 bytes written as base64 (44 characters) or hex (64 characters)"
                            .to_owned(),
                    )
                })?
        };
        let bytes: [u8; 32] = decoded.as_slice().try_into().map_err(|_| {
            KeyMaterialError(format!(
                "a key is 32 bytes; this one decodes to {} bytes",
                decoded.len()
            ))
        })?;
        Ok(Self::from_bytes(bytes))
    }

    /// A short public name for the key, so a catalog row can say which key wrapped it
    /// without revealing anything about the key.
    pub fn fingerprint(&self) -> String {
        let digest = blake3::derive_key("artifactd key fingerprint v1", &self.0.bytes.0);
        blake3::Hash::from_bytes(digest).to_hex()[..16].to_owned()
    }

    fn wrap_bytes(&self, secret: &[u8; 32], context: &[u8]) -> Vec<u8> {
        let nonce_bytes: [u8; NONCE_LEN] = random_bytes();
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(secret);
        let tag = self
            .0
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(context),
                &mut out[NONCE_LEN..],
            )
            .expect("sealing 32 bytes cannot overflow");
        out.extend_from_slice(tag.as_ref());
        out
    }

    fn unwrap_bytes(&self, wrapped: &[u8], context: &[u8]) -> Result<[u8; 32], OpenError> {
        if wrapped.len() != WRAPPED_LEN {
            return Err(OpenError::WrappedLength(wrapped.len()));
        }
        let nonce = Nonce::try_assume_unique_for_key(&wrapped[..NONCE_LEN]).expect("nonce length");
        let mut body = wrapped[NONCE_LEN..].to_vec();
        let opened = self
            .0
            .aead
            .open_in_place(nonce, Aad::from(context), &mut body)
            .map_err(|_| OpenError::Authentication)?;
        let bytes: [u8; 32] = (&*opened).try_into().expect("a wrapped key opens to 32 bytes");
        zeroize::Zeroize::zeroize(&mut body);
        Ok(bytes)
    }

    /// Wraps a tenant key under this (master) key, bound to the tenant and the key's id.
    pub fn wrap_tenant_key(&self, key: &WrappingKey, tenant: &str, key_id: &str) -> Vec<u8> {
        self.wrap_bytes(&key.0.bytes.0, &tenant_key_context(tenant, key_id))
    }

    pub fn unwrap_tenant_key(
        &self,
        wrapped: &[u8],
        tenant: &str,
        key_id: &str,
    ) -> Result<WrappingKey, OpenError> {
        self.unwrap_bytes(wrapped, &tenant_key_context(tenant, key_id))
            .map(WrappingKey::from_bytes)
    }

    /// Wraps a pack's data key under this (tenant) key, bound to the pack.
    pub fn wrap_data_key(&self, key: &DataKey, pack_id: &str) -> Vec<u8> {
        self.wrap_bytes(&key.0.bytes.0, &data_key_context(pack_id))
    }

    pub fn unwrap_data_key(&self, wrapped: &[u8], pack_id: &str) -> Result<DataKey, OpenError> {
        self.unwrap_bytes(wrapped, &data_key_context(pack_id))
            .map(DataKey::from_bytes)
    }
}

fn tenant_key_context(tenant: &str, key_id: &str) -> Vec<u8> {
    let mut context = b"artifactd tenant key v1\0".to_vec();
    context.extend_from_slice(tenant.as_bytes());
    context.push(0);
    context.extend_from_slice(key_id.as_bytes());
    context
}

fn data_key_context(pack_id: &str) -> Vec<u8> {
    let mut context = b"artifactd data key v1\0".to_vec();
    context.extend_from_slice(pack_id.as_bytes());
    context
}

/// The key that seals the chunks of one pack.
pub struct DataKey(AeadKey);

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

fn chunk_nonce(offset: u64) -> Nonce {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..8].copy_from_slice(&offset.to_le_bytes());
    Nonce::assume_unique_for_key(nonce)
}

impl DataKey {
    fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(AeadKey::from_bytes(bytes))
    }

    pub fn generate() -> Self {
        Self::from_bytes(random_bytes())
    }

    /// Seals a chunk's stored bytes in place and returns the tag to store after them.
    /// `offset` is where the sealed chunk starts in its pack.
    pub fn seal_chunk(&self, chunk_id: &ChunkId, offset: u64, in_out: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .0
            .aead
            .seal_in_place_separate_tag(chunk_nonce(offset), Aad::from(&chunk_id.0), in_out)
            .expect("a chunk is far below AES-GCM's message limit");
        tag.as_ref().try_into().expect("AES-GCM tags are 16 bytes")
    }

    /// Opens a sealed chunk (its stored bytes including the tag) that sits at `offset` in
    /// its pack.
    pub fn open_chunk(&self, chunk_id: &ChunkId, offset: u64, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        let mut body = sealed.to_vec();
        let len = self
            .0
            .aead
            .open_in_place(chunk_nonce(offset), Aad::from(&chunk_id.0), &mut body)
            .map_err(|_| OpenError::Authentication)?
            .len();
        body.truncate(len);
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_from_base64_and_hex_and_say_what_is_wrong() {
        let hex = "00".repeat(31) + "ff";
        let from_hex = WrappingKey::parse(&format!("  {hex}\n")).unwrap();
        let mut raw = [0u8; 32];
        raw[31] = 0xff;
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        assert_eq!(
            WrappingKey::parse(&b64).unwrap().fingerprint(),
            from_hex.fingerprint()
        );
        let short =
            WrappingKey::parse(&base64::engine::general_purpose::STANDARD.encode([1u8; 16])).unwrap_err();
        assert!(short.to_string().contains("16 bytes"), "{short}");
        assert!(WrappingKey::parse("not a key").is_err());
        assert_ne!(WrappingKey::generate().fingerprint(), from_hex.fingerprint());
    }

    #[test]
    fn wrapped_keys_open_only_with_their_key_and_their_context() {
        let master = WrappingKey::generate();
        let tenant = WrappingKey::generate();
        let wrapped = master.wrap_tenant_key(&tenant, "acme", "k1");
        assert_eq!(wrapped.len(), WRAPPED_LEN);
        let opened = master.unwrap_tenant_key(&wrapped, "acme", "k1").unwrap();
        assert_eq!(opened.fingerprint(), tenant.fingerprint());
        assert_eq!(
            master.unwrap_tenant_key(&wrapped, "globex", "k1").unwrap_err(),
            OpenError::Authentication
        );
        assert!(master.unwrap_tenant_key(&wrapped, "acme", "k2").is_err());
        assert!(
            WrappingKey::generate()
                .unwrap_tenant_key(&wrapped, "acme", "k1")
                .is_err()
        );
        assert_eq!(
            master.unwrap_tenant_key(&wrapped[1..], "acme", "k1").unwrap_err(),
            OpenError::WrappedLength(WRAPPED_LEN - 1)
        );

        let data = DataKey::generate();
        let wrapped = tenant.wrap_data_key(&data, "pack-a");
        let opened = tenant.unwrap_data_key(&wrapped, "pack-a").unwrap();
        assert!(tenant.unwrap_data_key(&wrapped, "pack-b").is_err());
        let mut sealed = b"hello".to_vec();
        let id = ChunkId([9; 32]);
        let tag = data.seal_chunk(&id, 2, &mut sealed);
        sealed.extend_from_slice(&tag);
        assert_eq!(opened.open_chunk(&id, 2, &sealed).unwrap(), b"hello");
    }

    #[test]
    fn a_sealed_chunk_is_bound_to_its_id_and_offset_and_detects_any_flip() {
        let key = DataKey::generate();
        let id = ChunkId([1; 32]);
        let plain = b"the architecture document mentions sealed secrets".to_vec();
        let mut sealed = plain.clone();
        let tag = key.seal_chunk(&id, 0, &mut sealed);
        sealed.extend_from_slice(&tag);
        assert_eq!(sealed.len(), plain.len() + TAG_LEN);
        assert!(!sealed.windows(8).any(|w| plain.windows(8).any(|p| p == w)));
        assert_eq!(key.open_chunk(&id, 0, &sealed).unwrap(), plain);
        assert!(key.open_chunk(&ChunkId([2; 32]), 0, &sealed).is_err());
        assert!(key.open_chunk(&id, 64, &sealed).is_err());
        for i in 0..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[i] ^= 0x10;
            assert!(
                key.open_chunk(&id, 0, &flipped).is_err(),
                "flip at {i} went unnoticed"
            );
        }
    }
}
