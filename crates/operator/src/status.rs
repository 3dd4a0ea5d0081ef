//! Writing status: a JSON merge patch of the status subresource, so the controller never
//! overwrites the spec a user just changed.

use kube::Api;
use kube::api::{Patch, PatchParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Result;

/// Replaces `status` of object `name` (every field given is set; lists are replaced whole).
pub async fn patch<K, S>(api: &Api<K>, name: &str, status: &S) -> Result<K>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let patch = serde_json::json!({ "status": status });
    Ok(api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?)
}
