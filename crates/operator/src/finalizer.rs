//! The data-deletion finalizer of backups with `retainPolicy: Delete`: added while the object
//! lives, so that deleting it waits until its data is gone from storage, then removed.

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::Result;

/// The finalizer every backup kind uses for `retainPolicy: Delete`.
pub const DELETE_DATA: &str = "stowage.io/delete-data";

/// True when `object` carries `finalizer`.
pub fn has<K: Resource>(object: &K, finalizer: &str) -> bool {
    object.finalizers().iter().any(|f| f == finalizer)
}

/// Adds `finalizer` to `object` unless it is there.
pub async fn add<K>(api: &Api<K>, object: &K, finalizer: &str) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    if has(object, finalizer) {
        return Ok(());
    }
    let mut finalizers = object.finalizers().to_vec();
    finalizers.push(finalizer.to_string());
    set(api, object, finalizers).await
}

/// Removes `finalizer` from `object` if it is there (letting a pending deletion finish).
pub async fn remove<K>(api: &Api<K>, object: &K, finalizer: &str) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    if !has(object, finalizer) {
        return Ok(());
    }
    let finalizers = object
        .finalizers()
        .iter()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    set(api, object, finalizers).await
}

async fn set<K>(api: &Api<K>, object: &K, finalizers: Vec<String>) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    // The resourceVersion makes this a compare-and-swap: a finalizer another controller
    // added meanwhile is not lost; the conflict is retried with the fresh object.
    let patch = serde_json::json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": object.resource_version() }
    });
    api.patch(&object.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}
