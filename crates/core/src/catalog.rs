//! The catalog: what storage itself says was backed up. Object storage is the
//! source of truth, so a new cluster (or `stowctl` with no cluster) can list
//! and restore everything from the bucket alone.

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::ObjectStoreExt;

use crate::error::{Error, Result};
use crate::layout::{Layout, object_path};
use crate::record::Manifest;

const MANIFEST_SUFFIX: &str = ".manifest.json";

/// One payload found under a prefix.
#[derive(Clone, Debug)]
pub struct CatalogEntry {
    /// Object key of the payload.
    pub path: String,
    /// Size of the payload object.
    pub size: u64,
    /// When the payload object was last written.
    pub last_modified: DateTime<Utc>,
    /// Its manifest; `None` when the backup never completed.
    pub manifest: Option<Manifest>,
    /// Why the manifest could not be used, when it exists but is unreadable.
    pub problem: Option<String>,
}

impl CatalogEntry {
    /// True when the payload has a valid manifest.
    pub fn is_complete(&self) -> bool {
        self.manifest.is_some()
    }
}

/// Lists every payload under `prefix` with its manifest, newest first.
pub async fn list(store: &dyn ObjectStore, prefix: &str) -> Result<Vec<CatalogEntry>> {
    let location = if prefix.is_empty() {
        None
    } else {
        Some(object_path(prefix)?)
    };
    let objects: Vec<_> = store
        .list(location.as_ref())
        .try_collect()
        .await
        .map_err(|e| Error::storage("list", prefix, e))?;
    let manifests: std::collections::HashSet<String> = objects
        .iter()
        .filter_map(|o| o.location.as_ref().strip_suffix(MANIFEST_SUFFIX).map(str::to_string))
        .collect();
    // A run's scratch objects (Layout::scratch_key) are neither artifacts nor incomplete ones.
    let payloads = objects.into_iter().filter(|o| {
        let key = o.location.as_ref();
        !key.ends_with(MANIFEST_SUFFIX) && !Layout::is_scratch_key(key)
    });
    let mut entries: Vec<CatalogEntry> = futures::stream::iter(payloads)
        .map(|object| {
            let path = object.location.to_string();
            let has_manifest = manifests.contains(&path);
            async move {
                let (manifest, problem) = if has_manifest {
                    match crate::restore::read_manifest(store, &path).await {
                        Ok(manifest) => (Some(manifest), None),
                        Err(e) => (None, Some(e.to_string())),
                    }
                } else {
                    (None, Some("no manifest: the backup did not complete".to_string()))
                };
                CatalogEntry {
                    path,
                    size: object.size,
                    last_modified: object.last_modified,
                    manifest,
                    problem,
                }
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    entries.sort_by(|a, b| b.last_modified.cmp(&a.last_modified).then_with(|| b.path.cmp(&a.path)));
    Ok(entries)
}

/// Deletes an artifact: the manifest first, so that an interrupted delete
/// leaves an incomplete payload (ignored by every reader) rather than a
/// manifest promising data that is gone. Deleting what is already gone succeeds.
pub async fn delete(store: &dyn ObjectStore, path: &str) -> Result<()> {
    for key in [Layout::manifest_key(path), path.to_string()] {
        let location = object_path(&key)?;
        match store.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(Error::storage("delete", &location, e)),
        }
    }
    Ok(())
}
