//! How far a Pod is from having a container to exec into, read from its status alone.
//!
//! Pure logic, so every state a kubelet reports is tested without a cluster. The rule: a
//! running container is ready; a Pod that can no longer run the container fails at once with
//! the kubelet's own words; a container that a kubelet keeps retrying for a reason that needs
//! the user (a wrong image, a missing Secret) fails at once too, since the controller retries
//! the whole run with backoff anyway; everything else is waited for, and its last description
//! goes into the timeout error.

use k8s_openapi::api::core::v1::{ContainerState, ContainerStatus, Pod};

use super::reason;

/// Waiting reasons that do not go away without the user: fail now rather than at the timeout.
/// `ErrImagePull` is not among them: a registry hiccup shows it once, a wrong image turns it
/// into `ImagePullBackOff` within seconds.
const IMAGE_REASONS: &[&str] = &["ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"];
const CONFIG_REASONS: &[&str] = &["CreateContainerConfigError", "CreateContainerError"];

/// Where a Pod stands on the way to a running container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StartState {
    /// The container runs: exec may start.
    Running,
    /// Not yet; the text says what the Pod is waiting for.
    Waiting(String),
    /// It never will. `exited` names the container whose output explains why, if one ran.
    Failed {
        reason: &'static str,
        message: String,
        exited: Option<String>,
    },
    /// The Pod has no container of that name: the template is wrong.
    NoSuchContainer(String),
}

/// The start state of `container` in `pod` (`None`: the Pod does not exist).
pub(crate) fn start_state(pod: Option<&Pod>, container: &str) -> StartState {
    let Some(pod) = pod else {
        return failed("the Pod was deleted before the container ran".into(), None);
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return failed("the Pod is being deleted".into(), None);
    }
    let spec = pod.spec.clone().unwrap_or_default();
    if !spec.containers.iter().any(|c| c.name == container) {
        let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        return StartState::NoSuchContainer(format!(
            "the Pod template has no container named {container:?} (it has {names:?})"
        ));
    }
    let status = pod.status.clone().unwrap_or_default();
    let own = status.container_statuses.iter().flatten().find(|c| c.name == container);
    let own_state = own.and_then(|c| c.state.as_ref());
    if own_state.is_some_and(|state| state.running.is_some()) {
        return StartState::Running;
    }
    if let Some(exit) = own.and_then(terminated) {
        return exit;
    }
    // An init container that failed explains a Failed Pod better than its phase does.
    for init in status.init_container_statuses.iter().flatten() {
        if let Some(exit @ StartState::Failed { .. }) = terminated(init).filter(|_| exited_non_zero(init)) {
            return exit;
        }
    }
    if let Some(phase @ ("Failed" | "Succeeded")) = status.phase.as_deref() {
        let why = [status.reason.as_deref(), status.message.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": ");
        let why = if why.is_empty() {
            String::new()
        } else {
            format!(" ({why})")
        };
        return failed(
            format!("the Pod is {phase}{why} before container {container} ran"),
            None,
        );
    }
    for candidate in status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(own)
        .filter_map(|c| waiting(c).map(|w| (c, w)))
    {
        let (status, (why, message)) = candidate;
        let kind = if IMAGE_REASONS.contains(&why) {
            reason::IMAGE_PULL_FAILED
        } else if CONFIG_REASONS.contains(&why) {
            reason::CONTAINER_CONFIG_ERROR
        } else {
            continue;
        };
        let image = if kind == reason::IMAGE_PULL_FAILED {
            format!(" (image {:?})", status.image)
        } else {
            String::new()
        };
        return StartState::Failed {
            reason: kind,
            message: format!("container {} cannot start{image}: {why}: {message}", status.name),
            exited: None,
        };
    }
    StartState::Waiting(waiting_for(pod, own))
}

fn failed(message: String, exited: Option<String>) -> StartState {
    StartState::Failed {
        reason: reason::POD_FAILED,
        message,
        exited,
    }
}

fn exited_non_zero(status: &ContainerStatus) -> bool {
    status
        .state
        .as_ref()
        .and_then(|state| state.terminated.as_ref())
        .is_some_and(|t| t.exit_code != 0)
}

/// A container that ended for good (a restarting one shows `waiting` with a `lastState`).
fn terminated(status: &ContainerStatus) -> Option<StartState> {
    let done = status.state.as_ref()?.terminated.as_ref()?;
    let mut message = format!("container {} exited with code {}", status.name, done.exit_code);
    let why = [done.reason.as_deref(), done.message.as_deref()]
        .into_iter()
        .flatten()
        .filter(|text| !text.is_empty())
        .collect::<Vec<_>>()
        .join(": ");
    if !why.is_empty() {
        message.push_str(&format!(" ({why})"));
    }
    message.push_str(" before the command could run");
    if done.exit_code == 0 {
        message.push_str(": the container must keep running for exec, e.g. with command [sleep, infinity]");
    }
    Some(failed(message, Some(status.name.clone())))
}

fn waiting(status: &ContainerStatus) -> Option<(&str, &str)> {
    let ContainerState { waiting, .. } = status.state.as_ref()?;
    let waiting = waiting.as_ref()?;
    Some((
        waiting.reason.as_deref().unwrap_or("Waiting"),
        waiting.message.as_deref().unwrap_or(""),
    ))
}

/// What a Pending Pod waits for, in the scheduler's or kubelet's words when it has them.
fn waiting_for(pod: &Pod, own: Option<&ContainerStatus>) -> String {
    let status = pod.status.clone().unwrap_or_default();
    let scheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|condition| condition.type_ == "PodScheduled");
    let bound = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.node_name.as_deref())
        .is_some_and(|node| !node.is_empty());
    if let Some(condition) = scheduled.filter(|condition| condition.status == "False") {
        let reason = condition.reason.as_deref().unwrap_or("NotScheduled");
        let message = condition.message.as_deref().unwrap_or("");
        return format!("the Pod is not scheduled: {reason}: {message}");
    }
    if !bound {
        return "the Pod is not scheduled to a node yet".into();
    }
    if let Some(own) = own
        && let Some((reason, message)) = waiting(own)
    {
        let message = if message.is_empty() {
            String::new()
        } else {
            format!(": {message}")
        };
        return format!("container {} is waiting: {reason}{message}", own.name);
    }
    let phase = status.phase.unwrap_or_else(|| "Pending".into());
    format!("the Pod is {phase} and its container has not started")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": "run-1" },
            "spec": { "nodeName": "node-1", "containers": [{ "name": "main", "image": "postgres:16" }] },
            "status": status,
        }))
        .expect("a valid Pod")
    }

    fn main_state(state: serde_json::Value) -> Pod {
        pod(json!({
            "phase": "Pending",
            "containerStatuses": [{ "name": "main", "image": "postgres:16", "imageID": "", "ready": false, "restartCount": 0, "state": state }],
        }))
    }

    #[test]
    fn a_running_container_is_ready_for_exec() {
        let pod = main_state(json!({ "running": { "startedAt": "2026-01-01T00:00:00Z" } }));
        assert_eq!(start_state(Some(&pod), "main"), StartState::Running);
    }

    #[test]
    fn a_container_that_exited_fails_with_its_exit_code() {
        let pod = main_state(json!({ "terminated": { "exitCode": 3, "reason": "Error" } }));
        let StartState::Failed {
            reason,
            message,
            exited,
        } = start_state(Some(&pod), "main")
        else {
            panic!("expected a failure");
        };
        assert_eq!(reason, "PodFailed");
        assert_eq!(
            message,
            "container main exited with code 3 (Error) before the command could run"
        );
        assert_eq!(exited.as_deref(), Some("main"));
    }

    #[test]
    fn a_container_that_completed_says_it_must_keep_running() {
        let pod = main_state(json!({ "terminated": { "exitCode": 0, "reason": "Completed" } }));
        let StartState::Failed { message, .. } = start_state(Some(&pod), "main") else {
            panic!("expected a failure");
        };
        assert!(message.contains("must keep running"), "{message}");
    }

    #[test]
    fn image_pull_back_off_fails_at_once_naming_the_image() {
        let pod = main_state(
            json!({ "waiting": { "reason": "ImagePullBackOff", "message": "Back-off pulling image \"postgres:16\"" } }),
        );
        let StartState::Failed { reason, message, .. } = start_state(Some(&pod), "main") else {
            panic!("expected a failure");
        };
        assert_eq!(reason, "ImagePullFailed");
        assert_eq!(
            message,
            "container main cannot start (image \"postgres:16\"): ImagePullBackOff: Back-off pulling image \"postgres:16\""
        );
    }

    #[test]
    fn err_image_pull_is_waited_for_and_described() {
        let pod = main_state(json!({ "waiting": { "reason": "ErrImagePull", "message": "timeout" } }));
        assert_eq!(
            start_state(Some(&pod), "main"),
            StartState::Waiting("container main is waiting: ErrImagePull: timeout".into())
        );
    }

    #[test]
    fn a_missing_secret_fails_as_a_config_error() {
        let pod = main_state(
            json!({ "waiting": { "reason": "CreateContainerConfigError", "message": "secret \"db\" not found" } }),
        );
        let StartState::Failed { reason, message, .. } = start_state(Some(&pod), "main") else {
            panic!("expected a failure");
        };
        assert_eq!(reason, "ContainerConfigError");
        assert_eq!(
            message,
            "container main cannot start: CreateContainerConfigError: secret \"db\" not found"
        );
    }

    #[test]
    fn an_unschedulable_pod_is_waited_for_with_the_schedulers_words() {
        let mut pod = pod(json!({
            "phase": "Pending",
            "conditions": [{ "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient memory." }],
        }));
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = None;
        }
        assert_eq!(
            start_state(Some(&pod), "main"),
            StartState::Waiting(
                "the Pod is not scheduled: Unschedulable: 0/3 nodes are available: 3 Insufficient memory.".into()
            )
        );
    }

    #[test]
    fn a_failed_pod_without_container_status_fails_with_its_reason() {
        let pod =
            pod(json!({ "phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory." }));
        let StartState::Failed {
            reason,
            message,
            exited,
        } = start_state(Some(&pod), "main")
        else {
            panic!("expected a failure");
        };
        assert_eq!(reason, "PodFailed");
        assert_eq!(
            message,
            "the Pod is Failed (Evicted: The node was low on resource: memory.) before container main ran"
        );
        assert_eq!(exited, None);
    }

    #[test]
    fn a_failed_init_container_is_named() {
        let pod = pod(json!({
            "phase": "Failed",
            "initContainerStatuses": [{ "name": "fetch", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
                "state": { "terminated": { "exitCode": 1, "reason": "Error" } } }],
        }));
        let StartState::Failed { message, exited, .. } = start_state(Some(&pod), "main") else {
            panic!("expected a failure");
        };
        assert_eq!(
            message,
            "container fetch exited with code 1 (Error) before the command could run"
        );
        assert_eq!(exited.as_deref(), Some("fetch"));
    }

    #[test]
    fn a_deleted_pod_fails() {
        assert!(matches!(
            start_state(None, "main"),
            StartState::Failed {
                reason: "PodFailed",
                ..
            }
        ));
    }

    #[test]
    fn an_unknown_container_is_a_template_error() {
        let pod = main_state(json!({ "running": {} }));
        assert_eq!(
            start_state(Some(&pod), "dump"),
            StartState::NoSuchContainer("the Pod template has no container named \"dump\" (it has [\"main\"])".into())
        );
    }

    #[test]
    fn a_bound_pod_without_status_waits_for_its_container() {
        let pod = pod(json!({ "phase": "Pending" }));
        assert_eq!(
            start_state(Some(&pod), "main"),
            StartState::Waiting("the Pod is Pending and its container has not started".into())
        );
        let mut unbound = pod.clone();
        if let Some(spec) = unbound.spec.as_mut() {
            spec.node_name = None;
        }
        assert_eq!(
            start_state(Some(&unbound), "main"),
            StartState::Waiting("the Pod is not scheduled to a node yet".into())
        );
    }
}
