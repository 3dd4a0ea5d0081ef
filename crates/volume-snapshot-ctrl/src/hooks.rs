//! Freeze and thaw: the Pods' `stowage.io/pre-hook` and `stowage.io/post-hook`, run with
//! `sh -c` in the hook container through the API server's exec.

use std::time::Duration;

use futures::future::join_all;
use kube::Client;
use stowage_api::PodHookStatus;
use stowage_operator::podexec::exec_in_pod;
use stowage_operator::{Error, Result};

/// Runs every pre-hook at once (the application is frozen as briefly as possible) and marks
/// the Pods whose hook succeeded `frozen`. The first failure is returned; the caller thaws.
pub async fn freeze(client: &Client, namespace: &str, pods: &mut [PodHookStatus], timeout: Duration) -> Result<()> {
    let runs = pods.iter().map(|pod| async move {
        match &pod.pre_hook {
            Some(hook) => run_hook(client, namespace, pod, hook, "pre-hook", timeout).await,
            None => Ok(()),
        }
    });
    let results = join_all(runs).await;
    let mut first_error = None;
    for (pod, result) in pods.iter_mut().zip(results) {
        match result {
            Ok(()) => pod.frozen = true,
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Runs every post-hook at once, whatever happened before (a Pod whose pre-hook failed or
/// never ran is thawed too: thawing an application that is not frozen is harmless, leaving one
/// frozen is not). Marks the Pods `thawed`; returns the failures' messages.
pub async fn thaw(client: &Client, namespace: &str, pods: &mut [PodHookStatus], timeout: Duration) -> Vec<String> {
    let runs = pods.iter().map(|pod| async move {
        match (&pod.post_hook, pod.thawed) {
            (Some(hook), false) => run_hook(client, namespace, pod, hook, "post-hook", timeout).await,
            _ => Ok(()),
        }
    });
    let results = join_all(runs).await;
    let mut failures = Vec::new();
    for (pod, result) in pods.iter_mut().zip(results) {
        match result {
            Ok(()) => pod.thawed = true,
            Err(error) => failures.push(error.to_string()),
        }
    }
    failures
}

/// Runs one hook; a non-zero exit is a failure quoting the hook's stderr.
async fn run_hook(
    client: &Client,
    namespace: &str,
    pod: &PodHookStatus,
    hook: &str,
    which: &str,
    timeout: Duration,
) -> Result<()> {
    let reason = if which == "pre-hook" {
        "PreHookFailed"
    } else {
        "PostHookFailed"
    };
    let command = ["sh", "-c", hook];
    let output = exec_in_pod(client, namespace, &pod.pod, &pod.container, command, timeout)
        .await
        .map_err(|error| {
            Error::permanent(
                reason,
                format!("{which} of Pod {} (container {}): {error}", pod.pod, pod.container),
            )
        })?;
    if output.exit_code != 0 {
        let stderr = output.stderr_tail.trim();
        return Err(Error::permanent(
            reason,
            format!(
                "{which} of Pod {} (container {}) exited with code {}{}",
                pod.pod,
                pod.container,
                output.exit_code,
                if stderr.is_empty() {
                    String::new()
                } else {
                    format!(": {stderr}")
                }
            ),
        ));
    }
    tracing::debug!(pod = %pod.pod, which, "hook succeeded");
    Ok(())
}
