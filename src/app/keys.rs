//! Which keys seal and open a tenant's packs: the master keys from configuration, the
//! tenant keys they wrap (kept in the catalog), and the packs' data keys those wrap.
//!
//! Opening is never cached across requests, so a destroyed or rotated key stops working on
//! every replica at once. Only the key that seals new packs is remembered per tenant; a
//! stale one is caught when its pack is staged ([`Staged::KeyRetired`]) and replaced.

use crate::catalog::{Catalog, ChunkLocation, PackStage, Staged};
use crate::domain::encryption::{
    PackKey, SealedCounts, ShredReport, TenantKeyRecord, TenantKeyState, WrappedTenantKey,
};
use crate::domain::{Error, Result, Timestamp};
use crate::ingest::sealing::{DataKey, WrappingKey};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// The master key and the earlier ones still accepted for opening.
pub struct MasterKeys {
    current_id: String,
    current: WrappingKey,
    previous: Vec<(String, WrappingKey)>,
}

impl fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let previous: Vec<&str> = self.previous.iter().map(|(id, _)| id.as_str()).collect();
        write!(
            f,
            "MasterKeys(current {}, previous {previous:?})",
            self.current_id
        )
    }
}

impl MasterKeys {
    pub fn new(current: WrappingKey, previous: Vec<WrappingKey>) -> Self {
        let current_id = current.fingerprint();
        let previous = previous
            .into_iter()
            .map(|key| (key.fingerprint(), key))
            .filter(|(id, _)| *id != current_id)
            .collect();
        Self {
            current_id,
            current,
            previous,
        }
    }

    /// The current master key's fingerprint.
    pub fn current_id(&self) -> &str {
        &self.current_id
    }

    fn by_id(&self, id: &str) -> Option<&WrappingKey> {
        if id == self.current_id {
            return Some(&self.current);
        }
        self.previous
            .iter()
            .find(|(known, _)| known == id)
            .map(|(_, key)| key)
    }

    fn known_ids(&self) -> String {
        std::iter::once(self.current_id.as_str())
            .chain(self.previous.iter().map(|(id, _)| id.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn wrap_new(&self, tenant: &str, at: Timestamp) -> (TenantKeyRecord, WrappingKey) {
        let key = WrappingKey::generate();
        let key_id = uuid::Uuid::now_v7().to_string();
        let record = TenantKeyRecord {
            material: Some(WrappedTenantKey {
                master_key_id: self.current_id.clone(),
                wrapped: self.current.wrap_tenant_key(&key, tenant, &key_id),
            }),
            key_id,
            tenant: tenant.to_owned(),
            state: TenantKeyState::Active,
            created_at: at,
            retired_at: None,
        };
        (record, key)
    }
}

/// The tenant key new packs are sealed under.
pub(crate) struct SealingKey {
    pub(crate) key_id: String,
    key: WrappingKey,
}

impl SealingKey {
    /// The record of `data`, the key of pack `pack_id`, wrapped under this key.
    pub(crate) fn wrap(&self, data: &DataKey, pack_id: &str) -> PackKey {
        PackKey {
            key_id: self.key_id.clone(),
            wrapped: Some(self.key.wrap_data_key(data, pack_id)),
        }
    }
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub old_key_id: String,
    pub new_key_id: String,
    pub data_keys_rewrapped: u64,
}

/// What moving tenant keys under the current master key did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrap {
    pub rewrapped: u64,
    pub already_current: u64,
}

/// A tenant's encryption as an operator sees it.
#[derive(Debug, Clone)]
pub struct TenantEncryption {
    /// Whether this server seals new packs.
    pub enabled: bool,
    pub master_key_id: Option<String>,
    pub keys: Vec<TenantKeyRecord>,
    pub counts: SealedCounts,
}

pub(crate) struct Keyring {
    masters: Option<Arc<MasterKeys>>,
    sealing: Mutex<HashMap<String, Arc<SealingKey>>>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keyring({:?})", self.masters)
    }
}

fn no_master(tenant: &str) -> Error {
    Error::FailedPrecondition(format!(
        "content of tenant {tenant:?} is encrypted and this server has no master key; set encryption.master_key_file"
    ))
}

impl Keyring {
    pub(crate) fn new(masters: Option<Arc<MasterKeys>>) -> Self {
        Self {
            masters,
            sealing: Mutex::new(HashMap::new()),
        }
    }

    /// The key to seal new packs of `tenant` under, made at its first use; `None` when
    /// encryption is off.
    pub(crate) async fn sealing_key(
        &self,
        catalog: &Catalog,
        tenant: &str,
    ) -> Result<Option<Arc<SealingKey>>> {
        let Some(masters) = &self.masters else {
            return Ok(None);
        };
        if let Some(key) = self.sealing.lock().expect("keyring lock").get(tenant) {
            return Ok(Some(key.clone()));
        }
        let record = match catalog.active_tenant_key(tenant).await? {
            Some(record) => record,
            None => {
                let (record, _) = masters.wrap_new(tenant, Timestamp::now());
                // Another replica may win; the key returned is the one that is active.
                catalog.insert_tenant_key(&record).await?
            }
        };
        let key = Arc::new(SealingKey {
            key: self.open_tenant_key(&record)?,
            key_id: record.key_id,
        });
        self.sealing
            .lock()
            .expect("keyring lock")
            .insert(tenant.to_owned(), key.clone());
        Ok(Some(key))
    }

    /// Stages a sealed pack (see [`Catalog::stage_pack`]), re-wrapping its data key when
    /// the tenant's key changed meanwhile; returns the pack row's generation.
    pub(crate) async fn stage_sealed(
        &self,
        catalog: &Catalog,
        stage: &PackStage<'_>,
        data: &DataKey,
        mut sealing: Arc<SealingKey>,
    ) -> Result<i64> {
        let (tenant, pack_id) = (stage.tenant, stage.pack_id);
        for _ in 0..3 {
            let key = sealing.wrap(data, pack_id);
            if let Staged::Recorded { generation } = catalog.stage_pack(stage, Some(&key)).await? {
                return Ok(generation);
            }
            self.forget(tenant, &sealing.key_id);
            sealing = self
                .sealing_key(catalog, tenant)
                .await?
                .ok_or_else(|| Error::internal("encryption was switched off during an upload"))?;
        }
        Err(Error::Aborted(format!(
            "tenant {tenant:?}'s key kept changing while a pack was stored; retry the upload"
        )))
    }

    /// Drops the key kept for sealing `tenant`'s new packs, whichever it is.
    pub(crate) fn forget_tenant(&self, tenant: &str) {
        self.sealing.lock().expect("keyring lock").remove(tenant);
    }

    fn forget(&self, tenant: &str, key_id: &str) {
        let mut sealing = self.sealing.lock().expect("keyring lock");
        if sealing.get(tenant).is_some_and(|key| key.key_id == key_id) {
            sealing.remove(tenant);
        }
    }

    fn open_tenant_key(&self, record: &TenantKeyRecord) -> Result<WrappingKey> {
        let material = match (&record.state, &record.material) {
            (TenantKeyState::Active, Some(material)) => material,
            (TenantKeyState::Destroyed, _) => {
                return Err(Error::FailedPrecondition(format!(
                    "tenant {:?}'s encryption key {} was destroyed{}; what it protected cannot be read",
                    record.tenant,
                    record.key_id,
                    record
                        .retired_at
                        .map(|at| format!(" at {}", at.to_rfc3339()))
                        .unwrap_or_default()
                )));
            }
            (state, _) => {
                return Err(Error::Aborted(format!(
                    "tenant {:?}'s key {} is {} (rotated meanwhile); retry",
                    record.tenant,
                    record.key_id,
                    state.as_str()
                )));
            }
        };
        let masters = self.masters.as_ref().ok_or_else(|| no_master(&record.tenant))?;
        let master = masters.by_id(&material.master_key_id).ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "tenant {:?}'s key {} is wrapped by master key {}, which this server does not have (it has {}); add it to encryption.previous_master_key_files",
                record.tenant,
                record.key_id,
                material.master_key_id,
                masters.known_ids()
            ))
        })?;
        master
            .unwrap_tenant_key(&material.wrapped, &record.tenant, &record.key_id)
            .map_err(|e| {
                Error::DataLoss(format!(
                    "tenant {:?}'s key {} does not open with master key {}: {e}",
                    record.tenant, record.key_id, material.master_key_id
                ))
            })
    }

    /// Opens the data keys of the sealed packs among `locations`, by pack id.
    pub(crate) async fn data_keys<'a>(
        &self,
        catalog: &Catalog,
        tenant: &str,
        locations: impl Iterator<Item = &'a ChunkLocation>,
    ) -> Result<HashMap<String, Arc<DataKey>>> {
        let mut sealed: HashMap<&str, &PackKey> = HashMap::new();
        for location in locations {
            if let Some(key) = &location.key {
                sealed.insert(&location.pack_id, key);
            }
        }
        if sealed.is_empty() {
            return Ok(HashMap::new());
        }
        let mut key_ids: Vec<&str> = sealed.values().map(|key| key.key_id.as_str()).collect();
        key_ids.sort_unstable();
        key_ids.dedup();
        let records = catalog.tenant_keys_by_id(&key_ids).await?;
        let mut tenant_keys = HashMap::new();
        for id in key_ids {
            let record = records
                .get(id)
                .filter(|record| record.tenant == tenant)
                .ok_or_else(|| {
                    Error::DataLoss(format!(
                        "a pack of tenant {tenant:?} names tenant key {id}, which the catalog does not hold"
                    ))
                })?;
            tenant_keys.insert(id, self.open_tenant_key(record)?);
        }
        sealed
            .into_iter()
            .map(|(pack_id, key)| {
                let wrapped = key.wrapped.as_deref().ok_or_else(|| {
                    Error::FailedPrecondition(format!(
                        "the data key of pack {pack_id} was destroyed with tenant {tenant:?}'s key; it cannot be read"
                    ))
                })?;
                let data = tenant_keys[key.key_id.as_str()]
                    .unwrap_data_key(wrapped, pack_id)
                    .map_err(|e| Error::DataLoss(format!("the data key of pack {pack_id} does not open: {e}")))?;
                Ok((pack_id.to_owned(), Arc::new(data)))
            })
            .collect()
    }

    /// Gives `tenant` a new key and re-wraps every data key under it; the old key is erased.
    /// No pack is rewritten.
    pub(crate) async fn rotate(&self, catalog: &Catalog, tenant: &str) -> Result<Rotation> {
        let masters = self.masters.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(
                "encryption is off on this server: set encryption.master_key_file".to_owned(),
            )
        })?;
        let current = catalog.active_tenant_key(tenant).await?.ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "tenant {tenant:?} has no encryption key yet; it gets one with its first upload"
            ))
        })?;
        let old = self.open_tenant_key(&current)?;
        let (record, new) = masters.wrap_new(tenant, Timestamp::now());
        let moved = catalog
            .rotate_tenant_key(&current.key_id, &record, |pack_id, wrapped| {
                let data = old.unwrap_data_key(wrapped, pack_id).map_err(|e| {
                    Error::DataLoss(format!("the data key of pack {pack_id} does not open: {e}"))
                })?;
                Ok(new.wrap_data_key(&data, pack_id))
            })
            .await?;
        self.sealing.lock().expect("keyring lock").insert(
            tenant.to_owned(),
            Arc::new(SealingKey {
                key_id: record.key_id.clone(),
                key: new,
            }),
        );
        Ok(Rotation {
            old_key_id: current.key_id,
            new_key_id: record.key_id,
            data_keys_rewrapped: moved,
        })
    }

    /// Destroys the tenant's keys: what they sealed is unreadable from then on, on every
    /// replica and in every copy of the store.
    pub(crate) async fn destroy(&self, catalog: &Catalog, tenant: &str) -> Result<ShredReport> {
        let report = catalog.destroy_tenant_keys(tenant, Timestamp::now()).await?;
        self.sealing.lock().expect("keyring lock").remove(tenant);
        Ok(report)
    }

    /// Moves every live tenant key still wrapped by an earlier master key under the current
    /// one. Keys wrapped by a master key this server lacks fail the call, naming them.
    pub(crate) async fn rewrap_all(&self, catalog: &Catalog) -> Result<Rewrap> {
        let masters = self.masters.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(
                "encryption is off on this server: set encryption.master_key_file".to_owned(),
            )
        })?;
        let mut report = Rewrap::default();
        for record in catalog.live_tenant_keys().await? {
            let Some(material) = &record.material else {
                continue;
            };
            if material.master_key_id == masters.current_id {
                report.already_current += 1;
                continue;
            }
            let key = self.open_tenant_key(&record)?;
            let to = WrappedTenantKey {
                master_key_id: masters.current_id.clone(),
                wrapped: masters
                    .current
                    .wrap_tenant_key(&key, &record.tenant, &record.key_id),
            };
            if catalog
                .rewrap_tenant_key(&record.key_id, &material.master_key_id, &to)
                .await?
            {
                report.rewrapped += 1;
            }
        }
        Ok(report)
    }

    pub(crate) async fn status(&self, catalog: &Catalog, tenant: &str) -> Result<TenantEncryption> {
        Ok(TenantEncryption {
            enabled: self.masters.is_some(),
            master_key_id: self.masters.as_ref().map(|m| m.current_id.clone()),
            keys: catalog.tenant_keys(tenant).await?,
            counts: catalog.sealed_counts(tenant).await?,
        })
    }
}
