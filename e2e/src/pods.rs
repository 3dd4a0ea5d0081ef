//! What tests read from Pods, as a user reads `kubectl get pod -o yaml`, and a shell in them.

use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus, Pod};
use kube::api::{Api, AttachParams};
use tokio::io::AsyncReadExt as _;

use crate::support::wait_until;

/// The statuses of the Pod's init containers (`init`) or containers.
pub fn statuses(pod: &Pod, init: bool) -> Vec<ContainerStatus> {
    let status = pod.status.clone().unwrap_or_default();
    let statuses = if init {
        status.init_container_statuses
    } else {
        status.container_statuses
    };
    statuses.unwrap_or_default()
}

/// The status of the Pod's first container.
pub fn first(pod: &Pod) -> ContainerStatus {
    statuses(pod, false).into_iter().next().unwrap_or_default()
}

/// The container's terminated state, if it is terminated.
pub fn terminated(status: &ContainerStatus) -> Option<ContainerStateTerminated> {
    status.state.as_ref()?.terminated.clone()
}

/// The Pod's phase ("" before it has one).
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|status| status.phase.as_deref())
        .unwrap_or_default()
}

/// (status, reason, message) of the Pod's condition `kind`.
pub fn condition(pod: &Pod, kind: &str) -> (String, String, String) {
    let conditions = pod
        .status
        .as_ref()
        .and_then(|status| status.conditions.clone())
        .unwrap_or_default();
    conditions
        .into_iter()
        .find(|condition| condition.type_ == kind)
        .map(|condition| {
            (
                condition.status,
                condition.reason.unwrap_or_default(),
                condition.message.unwrap_or_default(),
            )
        })
        .unwrap_or_default()
}

/// Waits until Pod `name` satisfies `done` ("to run": `what` it waited for).
pub async fn wait_pod(
    client: &kube::Client,
    ns: &str,
    name: &str,
    what: &str,
    done: impl Fn(&Pod) -> bool,
) -> anyhow::Result<Pod> {
    wait_until::<Pod>(client, ns, name, what, done).await
}

/// Runs `script` with `sh -c` in the Pod's first container; returns its stdout.
pub async fn exec_sh(pods: &Api<Pod>, name: &str, script: &str) -> anyhow::Result<String> {
    let params = AttachParams::default().stdin(false).stdout(true).stderr(false);
    let mut attached = pods.exec(name, ["sh", "-c", script], &params).await?;
    let mut out = String::new();
    attached
        .stdout()
        .expect("stdout was requested")
        .read_to_string(&mut out)
        .await?;
    attached.join().await?;
    Ok(out)
}
