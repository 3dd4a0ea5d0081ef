//! The waits of a restore's apply passes and prune: retry pauses, CRDs becoming Established,
//! pruned objects going away. Each ends at once when the restore is cancelled, so a deleted
//! ResourceRestore is not kept running by a pause (the requests themselves always finish).

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::selector::ResourceType;

const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(60);
const ATTEMPTS: u32 = 4;
/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(250);

/// Sleeps for `duration`, or fails with [`Error::Cancelled`] as soon as `cancel` fires.
pub(crate) async fn pause(cancel: &CancellationToken, duration: Duration) -> Result<()> {
    tokio::select! {
        () = tokio::time::sleep(duration) => Ok(()),
        () = cancel.cancelled() => Err(Error::Cancelled),
    }
}

/// Retries transient API errors (throttling, server errors, conflicts, and a custom resource
/// type not served yet right after its CRD) a few times with growing pauses. A cancelled
/// restore makes no further attempt: the object keeps the error of its last one.
pub(crate) async fn retry<T, F, Fut>(
    resource: &ResourceType,
    cancel: &CancellationToken,
    mut call: F,
) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let custom = resource.group.contains('.') && !resource.group.ends_with("k8s.io");
    let mut attempt = 1;
    loop {
        let result = call().await;
        let transient = matches!(
            &result,
            Err(kube::Error::Api(status))
                if matches!(status.code, 409 | 429 | 500 | 502 | 503 | 504) || (custom && status.code == 404)
        );
        if !transient || attempt >= ATTEMPTS || pause(cancel, Duration::from_millis(500 << attempt)).await.is_err() {
            return result;
        }
        attempt += 1;
    }
}

/// Waits until CRD `name` is Established: true when it is, false after [`ESTABLISH_TIMEOUT`].
pub(crate) async fn established(client: &kube::Client, name: &str, cancel: &CancellationToken) -> Result<bool> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + ESTABLISH_TIMEOUT;
    loop {
        let established = api.get_opt(name).await.ok().flatten().is_some_and(|crd| {
            crd.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        if established {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        pause(cancel, POLL).await?;
    }
}

/// The message of a CRD that [`established`] gave up on.
pub(crate) fn not_established() -> String {
    format!("not Established after {ESTABLISH_TIMEOUT:?}: its custom resources may fail")
}

/// Waits until the object `name` of `api` is gone: true when it is, false at `deadline`.
pub(crate) async fn gone(
    api: &Api<kube::api::DynamicObject>,
    name: &str,
    deadline: tokio::time::Instant,
    cancel: &CancellationToken,
) -> Result<bool> {
    loop {
        match api.get_opt(name).await {
            Ok(None) => return Ok(true),
            _ if tokio::time::Instant::now() >= deadline => return Ok(false),
            _ => pause(cancel, POLL).await?,
        }
    }
}
