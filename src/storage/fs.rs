//! `FsStore`: the embedded default. Objects are files under a root directory, written to a
//! temporary file, fsynced, then renamed into place so that readers never see a partial file.

use super::{BlobStore, GetOptions, ObjectMeta, StoreError, check_range, validate_key};
use async_trait::async_trait;
use bytes::Bytes;
use std::io::Write;
use std::path::{Path, PathBuf};

const TEMP_DIR: &str = ".tmp";

#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
    name: String,
}

impl FsStore {
    /// Opens (creating if needed) a store rooted at `root`. Leftover temporary files from a
    /// crash are removed: they were never visible under a key.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        let name = format!("fs:{}", root.display());
        let temp = root.join(TEMP_DIR);
        if temp.exists() {
            std::fs::remove_dir_all(&temp).map_err(|e| failed(&name, "clearing temp dir", e))?;
        }
        std::fs::create_dir_all(&temp).map_err(|e| failed(&name, "creating root", e))?;
        Ok(Self { root, name })
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        validate_key(key)?;
        if key == TEMP_DIR || key.starts_with(&format!("{TEMP_DIR}/")) {
            return Err(StoreError::InvalidKey {
                key: key.to_owned(),
                reason: "the .tmp prefix is reserved",
            });
        }
        Ok(self.root.join(key))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&FsStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || work(&this))
            .await
            .map_err(|e| StoreError::Failed {
                store: self.name.clone(),
                message: format!("blocking task failed: {e}"),
            })?
    }

    fn put_blocking(&self, key: &str, data: &[u8]) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        let parent = path.parent().expect("keys are below the root");
        std::fs::create_dir_all(parent).map_err(|e| failed(&self.name, "creating directory", e))?;
        let temp_path = self.root.join(TEMP_DIR).join(uuid::Uuid::now_v7().to_string());
        let result = (|| {
            let mut file = std::fs::File::create(&temp_path)?;
            file.write_all(data)?;
            file.sync_all()?;
            std::fs::rename(&temp_path, &path)?;
            // Make the rename itself durable.
            std::fs::File::open(parent)?.sync_all()
        })();
        if let Err(error) = result {
            let _ = std::fs::remove_file(&temp_path);
            return Err(failed(&self.name, "writing object", error));
        }
        Ok(())
    }

    fn get_blocking(&self, key: &str, options: &GetOptions) -> Result<Bytes, StoreError> {
        let path = self.path_of(key)?;
        let mut file = std::fs::File::open(&path).map_err(|e| self.map_open_error(key, e))?;
        let size = file
            .metadata()
            .map_err(|e| failed(&self.name, "reading metadata", e))?
            .len();
        let range = options.range.clone().unwrap_or(0..size);
        check_range(&self.name, key, &range, size)?;
        options
            .read_file(&mut file, &range)
            .map_err(|e| failed(&self.name, "reading object", e))
    }

    fn map_open_error(&self, key: &str, error: std::io::Error) -> StoreError {
        if error.kind() == std::io::ErrorKind::NotFound {
            StoreError::NotFound {
                store: self.name.clone(),
                key: key.to_owned(),
            }
        } else {
            failed(&self.name, "opening object", error)
        }
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        // Walk only the directory the prefix points into.
        let start_dir = match prefix.rfind('/') {
            Some(slash) => self.root.join(&prefix[..slash]),
            None => self.root.clone(),
        };
        let mut found = Vec::new();
        let mut pending = vec![start_dir];
        while let Some(dir) = pending.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(failed(&self.name, "listing", e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| failed(&self.name, "listing", e))?;
                let path = entry.path();
                let key = relative_key(&self.root, &path);
                if key == TEMP_DIR {
                    continue;
                }
                let file_type = entry.file_type().map_err(|e| failed(&self.name, "listing", e))?;
                if file_type.is_dir() {
                    if key.starts_with(prefix) || prefix.starts_with(&format!("{key}/")) {
                        pending.push(path);
                    }
                } else if key.starts_with(prefix) {
                    let size = entry
                        .metadata()
                        .map_err(|e| failed(&self.name, "listing", e))?
                        .len();
                    found.push(ObjectMeta { key, size });
                }
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }
}

fn relative_key(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .expect("walk stays below the root")
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn failed(store: &str, what: &str, error: std::io::Error) -> StoreError {
    StoreError::Failed {
        store: store.to_owned(),
        message: format!("{what}: {error}"),
    }
}

#[async_trait]
impl BlobStore for FsStore {
    fn name(&self) -> &str {
        &self.name
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let key = key.to_owned();
        self.blocking(move |store| store.put_blocking(&key, &data)).await
    }

    async fn get(&self, key: &str, options: GetOptions) -> Result<Bytes, StoreError> {
        let owned_key = key.to_owned();
        self.blocking(move |store| store.get_blocking(&owned_key, &options))
            .await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let path = self.path_of(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_file() => Ok(Some(ObjectMeta {
                key: key.to_owned(),
                size: meta.len(),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(failed(&self.name, "reading metadata", e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(failed(&self.name, "deleting object", e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let prefix = prefix.to_owned();
        self.blocking(move |store| store.list_blocking(&prefix)).await
    }
}
