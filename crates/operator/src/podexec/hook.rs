//! A short command in a container of an existing Pod, with its output captured: what the
//! volume controller's pre- and post-snapshot hooks run (`sh -c <hook>` in the application's
//! Pod).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use super::session::{Session, Streams};
use crate::Result;

/// How a command run by [`exec_in_pod`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// The command's exit code (0: success).
    pub exit_code: i32,
    /// The last [`super::STDOUT_TAIL_BYTES`] of its stdout, lossily decoded as UTF-8.
    pub stdout: String,
    /// The last [`super::STDERR_TAIL_BYTES`] of its stderr, lossily decoded as UTF-8.
    pub stderr_tail: String,
}

/// Runs `command` in `container` of the existing Pod `namespace/pod` and waits up to `timeout`
/// for it to end. Its output is drained as it comes, so a chatty command never blocks, and
/// only the tails are kept.
///
/// Errors: `DeadlineExceeded` past the timeout, `ExecFailed` when the exec could not start
/// (no such Pod or container, container not running) or ended without an exit code. A non-zero
/// exit code is not an error: check [`ExecOutput::exit_code`].
///
/// Past the timeout the exec connection is closed. A kubelet does not kill a command whose
/// connection closed, so a hook that hangs may keep running in the application's container:
/// hooks should bound themselves (e.g. `timeout 30 fsfreeze …`).
pub async fn exec_in_pod<I, S>(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    container: &str,
    command: I,
    timeout: Duration,
) -> Result<ExecOutput>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let command = command.into_iter().map(Into::into).collect();
    let deadline = tokio::time::Instant::now() + timeout;
    let (session, _, _) = Session::start(&api, pod, container, command, Streams::Captured, deadline).await?;
    let ended = session.finish().await?;
    Ok(ExecOutput {
        exit_code: ended.exit_code,
        stdout: String::from_utf8_lossy(&ended.stdout_tail).into_owned(),
        stderr_tail: ended.stderr_tail,
    })
}
