//! Writing status: a JSON merge patch of the status subresource, so the controller never
//! overwrites the spec a user just changed.

use std::time::Duration;

use kube::Api;
use kube::api::{Patch, PatchParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Result;

/// How long [`patch_final`] keeps trying.
const FINAL_ATTEMPTS: u32 = 8;

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

/// The object as the API server has it now; `None` when it is gone.
///
/// A reconcile starts from the informer's cache, which can lag behind the server: right after a
/// reconcile finished a run, the one queued by that run's own status writes may still find it
/// Pending (and start it again) or Running (and declare it interrupted). Reconcilers therefore
/// read the object afresh before acting on a phase that is not final.
pub async fn latest<K>(api: &Api<K>, object: &K) -> Result<Option<K>>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    Ok(api.get_opt(&kube::ResourceExt::name_any(object)).await?)
}

/// Writes the status that records a run's outcome, retrying a busy or unreachable API server
/// for about a minute (0.5 s doubling): losing this write would leave a finished run looking
/// interrupted, or a stored artifact unrecorded.
pub async fn patch_final<K, S>(api: &Api<K>, name: &str, status: &S) -> Result<K>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let mut delay = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match patch(api, name, status).await {
            Err(crate::Error::Kube(error)) if attempt < FINAL_ATTEMPTS && retryable(&error) => {
                tracing::warn!(%error, %name, attempt, "writing the final status failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Errors a later attempt may not see: the server was busy, timed out or unreachable.
fn retryable(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}
