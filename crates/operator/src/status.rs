//! Writing status: a JSON merge patch of the status subresource, so the controller never
//! overwrites the spec a user just changed.
//!
//! Every write is bound to one object, not to its name. A user may delete a running object and
//! create another of the same name at once (`kubectl delete -f x.yaml && kubectl apply -f
//! x.yaml`, or a schedule replacing a run): the old run's last writes (Cancelled, Failed) must
//! not land on the new object, which would then look finished and never run. So each patch
//! carries the `metadata.resourceVersion` of the object as last seen, and the API server
//! refuses it (409 Conflict) when the object changed since; a refused write reads the object
//! again, and one that is missing or has another UID is [`Error::Gone`]. The patch cannot
//! carry the UID instead: for a custom resource's status subresource the API server takes all
//! metadata from the stored object, and ignores a `metadata.uid` in the patch.

use std::fmt::Debug;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// How long [`patch_final`] keeps trying.
const FINAL_ATTEMPTS: u32 = 8;
/// How often [`patch`] tries a write that finds the object changed under it (someone else
/// wrote it meanwhile: a user's label, another controller's condition).
const WRITE_ATTEMPTS: u32 = 5;

/// Replaces `status` of `object` (every field given is set; lists are replaced whole), and
/// returns the object as written. [`Error::Gone`] when the object was deleted, also when
/// another object of the same name took its place.
///
/// The caller's copy of `object` is tried first: when it is current (just read) the write
/// takes one request, else the object is read again.
pub async fn patch<K, S>(api: &Api<K>, object: &K, status: &S) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: Serialize,
{
    let name = object.name_any();
    let mut seen = object.resource_version();
    for attempt in 1..=WRITE_ATTEMPTS {
        if attempt > 1 || seen.is_none() {
            let current = latest(api, object).await?.ok_or_else(|| gone(object))?;
            seen = current.resource_version();
        }
        // Never without a resourceVersion: the write would be unconditional.
        let Some(version) = &seen else { continue };
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": version },
            "status": status,
        });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(kube::Error::Api(response)) if response.code == 409 => {}
            Err(kube::Error::Api(response)) if response.code == 404 => return Err(gone(object)),
            written => return Ok(written?),
        }
    }
    Err(Error::transient(
        "StatusConflict",
        format!(
            "the status of {} '{name}' was not written: the object changed under each of {WRITE_ATTEMPTS} attempts",
            K::kind(&())
        ),
    ))
}

/// The object as the API server has it now; `None` when it is gone, or replaced by another
/// object of the same name (whose own reconcile follows from the watch).
///
/// A reconcile starts from the informer's cache, which can lag behind the server: right after a
/// reconcile finished a run, the one queued by that run's own status writes may still find it
/// Pending (and start it again) or Running (and declare it interrupted). Reconcilers therefore
/// read the object afresh before acting on a phase that is not final.
pub async fn latest<K>(api: &Api<K>, object: &K) -> Result<Option<K>>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let current = api.get_opt(&object.name_any()).await?;
    Ok(current.filter(|current| current.uid() == object.uid()))
}

/// Writes the status that records a run's outcome ([`patch`]), retrying a busy or unreachable
/// API server for about a minute (0.5 s doubling): losing this write would leave a finished
/// run looking interrupted, or a stored artifact unrecorded.
pub async fn patch_final<K, S>(api: &Api<K>, object: &K, status: &S) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: Serialize,
{
    let mut delay = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match patch(api, object, status).await {
            Err(Error::Kube(error)) if attempt < FINAL_ATTEMPTS && retryable(&error) => {
                let name = object.name_any();
                tracing::warn!(%error, %name, attempt, "writing the final status failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Writes the status fields `read` returns (a run's progress) every `every` while they change,
/// until the returned reporter is dropped. Each write is bound to `object` as [`patch`] binds
/// it, and the reports end when the object is gone. A failed write is logged and tried again
/// next time: progress is worth a request every few seconds, not a retry loop.
pub fn report_progress<K>(
    api: Api<K>,
    object: K,
    every: Duration,
    read: impl Fn() -> serde_json::Value + Send + 'static,
) -> ProgressReporter
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    ProgressReporter(tokio::spawn(async move {
        // The object as last written: its resourceVersion makes the next write one request.
        let mut seen = object;
        let mut last = serde_json::Value::Null;
        loop {
            tokio::time::sleep(every).await;
            let fields = read();
            if fields == last {
                continue;
            }
            match patch(&api, &seen, &fields).await {
                Ok(written) => {
                    seen = written;
                    last = fields;
                }
                Err(error) if error.is_not_found() => return,
                Err(error) => tracing::debug!(%error, name = %seen.name_any(), "writing progress failed"),
            }
        }
    }))
}

/// Stops its progress reports when dropped. A write already sent may still land: the run's
/// final status, written next, then finds the object changed and reads it again.
pub struct ProgressReporter(tokio::task::JoinHandle<()>);

impl Drop for ProgressReporter {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn gone<K: Resource<DynamicType = ()>>(object: &K) -> Error {
    Error::Gone {
        kind: K::kind(&()).into_owned(),
        name: object.name_any(),
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
