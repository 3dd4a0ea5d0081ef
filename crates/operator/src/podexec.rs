//! The pod exec transport: run a command in a Pod and stream its stdout out or its stdin in.
//!
//! The exec-backup controller runs the user's backup command in a Pod made from the user's
//! template and hands the command's stdout to the data path; a restore feeds the data path's
//! output to the restore command's stdin. The volume controller runs hooks in the
//! application's own Pods ([`exec_in_pod`]).
//!
//! ```ignore
//! ExecPod::run(&client, &params, |pod| async move {
//!     pod.wait_running("main", start_timeout).await?;
//!     let mut stdout = pod.exec_stdout("main", command, deadline).await?;
//!     let staged = stowage_core::stream_payload(request, &mut stdout).await;
//!     let outcome = stdout.finish().await;
//!     // Which error to report: a passed deadline first (it broke the stream), then the data
//!     // path's (finish() only says the command was abandoned), then a non-zero exit code
//!     // (discard `staged`), else commit.
//! })
//! .await
//! ```
//! For a restore, `exec_stdin` gives the AsyncWrite for `stowage_core::restore`. When the
//! restore succeeded, `finish()` closes stdin and returns the exit code. When it failed, look at
//! why: a command that exits early breaks the pipe (the data path reports `SinkFailed`), and
//! `finish()` then returns its exit code and stderr, the real cause; a data path that failed on
//! its own (storage, integrity) must not end the command's input cleanly, or the command would
//! take a cut-off input for a complete one: call `ExecStdin::kill()`, which deletes the Pod at
//! once and kills the command with it.
//!
//! The Pod is deleted at the end whatever happened, on three levels: [`ExecPod::run`] deletes
//! it after its body returns (success, error or a non-zero exit); dropping an [`ExecPod`]
//! without [`ExecPod::delete`] (a cancelled reconcile, a panic) deletes it in the background;
//! and its owner reference to the run object lets Kubernetes' garbage collector delete it if
//! the controller died in between. A scoped `run` alone could not cover cancellation, and an
//! explicit `delete` alone could be forgotten.

mod hook;
mod session;
mod start;

use std::collections::BTreeMap;
use std::ops::Deref;
use std::pin::pin;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, LogParams, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;
use stowage_core::{BackupRequest, Staged};
use tokio::time::Instant;

pub use self::hook::{ExecOutput, exec_in_pod};
pub use self::session::{ExecOutcome, ExecStdin, ExecStdout, STDERR_TAIL_BYTES, STDOUT_TAIL_BYTES};
use self::session::{Session, Streams};
use self::start::{StartState, start_state};
use crate::cancel::{CANCELLED, RunGuard};
use crate::{Error, Result};

/// The stable reasons of the transport's [`Error::Exec`] errors (Event reasons, metric labels).
pub mod reason {
    /// The Pod ended, was deleted, or its container exited before the command could run.
    pub const POD_FAILED: &str = "PodFailed";
    /// The container was not running within the start timeout; the message says what it waited for.
    pub const POD_START_TIMEOUT: &str = "PodStartTimeout";
    /// The container's image cannot be pulled (ImagePullBackOff, InvalidImageName, ErrImageNeverPull).
    pub const IMAGE_PULL_FAILED: &str = "ImagePullFailed";
    /// The container cannot be created as specified (e.g. a Secret or key it needs is missing).
    pub const CONTAINER_CONFIG_ERROR: &str = "ContainerConfigError";
    /// The exec could not start or ended without an exit code, or stdout was left unread.
    pub const EXEC_FAILED: &str = "ExecFailed";
    /// The command exited with a non-zero code ([`super::ExecOutcome::check`]).
    pub const COMMAND_FAILED: &str = "CommandFailed";
    /// The command did not finish before its deadline and was abandoned.
    pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
}

/// Lines and bytes of a failed container's log quoted in its error.
const LOG_TAIL_LINES: i64 = 10;
const LOG_TAIL_BYTES: i64 = 2048;
/// Seconds a deleted Pod's containers get to stop.
const DELETE_GRACE_SECONDS: u32 = 1;
/// How long a refused exec looks for the Pod's own explanation.
const EXPLAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for a leftover Pod of the same name to go away.
const REPLACE_TIMEOUT: Duration = Duration::from_secs(60);

/// What Pod to create for a run.
#[derive(Debug, Clone, Default)]
pub struct ExecPodParams {
    pub namespace: String,
    pub name: String,
    /// The user's template: its labels and annotations are kept, its spec is used as written
    /// except `restartPolicy`, which is always `Never` (a restarted container would lose the
    /// exec in progress).
    pub template: PodTemplateSpec,
    /// The run object the Pod belongs to, so that deleting the run deletes the Pod.
    pub owner: Option<OwnerReference>,
    /// Labels added to the template's (ours win), e.g. `stowage.io/backup: <run>`.
    pub labels: BTreeMap<String, String>,
}

/// A Pod of this transport to wait for and exec into; cheap to clone.
#[derive(Clone)]
pub struct PodHandle {
    api: Api<Pod>,
    namespace: String,
    name: String,
}

/// A Pod created for one run: deleted by [`ExecPod::delete`], or in the background when
/// dropped without it. Derefs to its [`PodHandle`].
pub struct ExecPod {
    handle: PodHandle,
    deleted: bool,
}

impl ExecPod {
    /// Creates the Pod from `params.template`. A leftover Pod of the same name (from a run
    /// interrupted by a controller restart) is deleted first and replaced.
    pub async fn create(client: &kube::Client, params: &ExecPodParams) -> Result<ExecPod> {
        let pod = pod_from_template(params)?;
        let api: Api<Pod> = Api::namespaced(client.clone(), &params.namespace);
        let handle = PodHandle {
            api: api.clone(),
            namespace: params.namespace.clone(),
            name: params.name.clone(),
        };
        match api.create(&PostParams::default(), &pod).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tracing::info!(pod = %handle, "replacing a leftover Pod of an earlier attempt");
                handle.delete_and_wait_gone().await?;
                api.create(&PostParams::default(), &pod).await?;
            }
            Err(err) => return Err(err.into()),
        }
        tracing::debug!(pod = %handle, "created exec Pod");
        Ok(ExecPod { handle, deleted: false })
    }

    /// Creates the Pod, runs `body` with it, and deletes it whatever `body` returned. A failed
    /// deletion is logged, not returned: the run's own result matters more, and the owner
    /// reference lets the garbage collector finish the job. `E` is the caller's error type
    /// (a controller's own, wrapping the kit's).
    pub async fn run<T, E, F, Fut>(client: &kube::Client, params: &ExecPodParams, body: F) -> Result<T, E>
    where
        E: From<Error>,
        F: FnOnce(PodHandle) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let pod = ExecPod::create(client, params).await?;
        let result = body(pod.handle.clone()).await;
        if let Err(err) = pod.delete().await {
            tracing::warn!(pod = %params.namespace, name = %params.name, error = %err, "deleting the exec Pod failed");
        }
        result
    }

    /// Deletes the Pod (already gone is fine). Does not wait for its containers to stop.
    pub async fn delete(mut self) -> Result<()> {
        self.deleted = true;
        self.handle.delete().await
    }
}

impl Deref for ExecPod {
    type Target = PodHandle;

    fn deref(&self) -> &PodHandle {
        &self.handle
    }
}

impl Drop for ExecPod {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        let handle = self.handle.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(err) = handle.delete().await {
                        tracing::warn!(pod = %handle, error = %err, "deleting a dropped exec Pod failed");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(pod = %handle, "exec Pod dropped outside a runtime: left to the garbage collector")
            }
        }
    }
}

impl PodHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Watches the Pod until `container` runs. Fails at once, with the kubelet's or the Pod's
    /// own words, when it never will (reasons `PodFailed`, `ImagePullFailed`,
    /// `ContainerConfigError`; a template without that container is `InvalidSpec`), and after
    /// `timeout` with `PodStartTimeout` saying what it was still waiting for (e.g. the
    /// scheduler's Unschedulable message).
    pub async fn wait_running(&self, container: &str, timeout: Duration) -> Result<()> {
        let mut waiting_for = String::from("no status of the Pod was seen");
        let watch = async {
            let mut events = pin!(watcher::watch_object(self.api.clone(), &self.name).default_backoff());
            while let Some(event) = events.next().await {
                let pod = match event {
                    Ok(pod) => pod,
                    Err(err) => {
                        tracing::debug!(pod = %self, error = %err, "watching the exec Pod (retrying)");
                        continue;
                    }
                };
                match start_state(pod.as_ref(), container) {
                    StartState::Running => return Ok(()),
                    StartState::Waiting(what) => waiting_for = what,
                    failed => return Err(self.start_error(failed).await),
                }
            }
            Err(Error::Exec {
                reason: reason::POD_FAILED,
                message: format!("Pod {self}: the watch ended"),
            })
        };
        match tokio::time::timeout(timeout, watch).await {
            Ok(result) => result,
            Err(_) => Err(Error::Exec {
                reason: reason::POD_START_TIMEOUT,
                message: format!(
                    "Pod {self}: container {container} was not running after {}s: {waiting_for}",
                    timeout.as_secs()
                ),
            }),
        }
    }

    /// Starts `command` in `container`; its stdout is the returned [`ExecStdout`]. The command
    /// is abandoned at `deadline` (reads fail, `finish` returns `DeadlineExceeded`).
    pub async fn exec_stdout<I, S>(&self, container: &str, command: I, deadline: Instant) -> Result<ExecStdout>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let command = command.into_iter().map(Into::into).collect();
        let started = Session::start(&self.api, &self.name, container, command, Streams::Stdout, deadline).await;
        let (session, stdout, _) = match started {
            Ok(started) => started,
            Err(err) => return Err(self.explain_exec_failure(container, err).await),
        };
        let stdout = stdout.ok_or_else(|| Error::Exec {
            reason: reason::EXEC_FAILED,
            message: format!("the exec in Pod {self} has no stdout"),
        })?;
        Ok(ExecStdout::new(session, stdout))
    }

    /// Waits until `container` runs (at most `start_timeout`), starts `command` in it and
    /// streams its stdout into storage as `request` says. Once `cancel` fires, each step stops
    /// the way a failure does: the source fails (so core aborts the upload) and the command's
    /// result is a [`CANCELLED`] error (callers say why, from [`RunGuard::stop`]). Returns the data path's result and the command's, for the
    /// caller to commit or discard the payload; an error when the command never started.
    pub async fn stream_stdout<I, S>(
        &self,
        container: &str,
        command: I,
        start_timeout: Duration,
        deadline: Instant,
        request: BackupRequest,
        cancel: &RunGuard,
    ) -> Result<(stowage_core::Result<Staged>, Result<ExecOutcome>)>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let cancelled = || Error::permanent(CANCELLED, "the run was cancelled");
        let mut stdout = tokio::select! {
            started = async {
                self.wait_running(container, start_timeout).await?;
                self.exec_stdout(container, command, deadline).await
            } => started?,
            () = cancel.cancelled() => return Err(cancelled()),
        };
        let staged = stowage_core::stream_payload(request, cancel.reader(&mut stdout)).await;
        let finished = tokio::select! {
            finished = stdout.finish() => finished,
            () = cancel.cancelled() => Err(cancelled()),
        };
        let finished = if cancel.stop().is_some() {
            Err(cancelled())
        } else {
            finished
        };
        Ok((staged, finished))
    }

    /// Starts `command` in `container`; the returned [`ExecStdin`] is its stdin (its stdout is
    /// discarded). The command is abandoned at `deadline` (writes fail, `finish` returns
    /// `DeadlineExceeded`).
    pub async fn exec_stdin<I, S>(&self, container: &str, command: I, deadline: Instant) -> Result<ExecStdin>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let command = command.into_iter().map(Into::into).collect();
        let started = Session::start(&self.api, &self.name, container, command, Streams::Stdin, deadline).await;
        let (session, _, stdin) = match started {
            Ok(started) => started,
            Err(err) => return Err(self.explain_exec_failure(container, err).await),
        };
        let stdin = stdin.ok_or_else(|| Error::Exec {
            reason: reason::EXEC_FAILED,
            message: format!("the exec in Pod {self} has no stdin"),
        })?;
        Ok(ExecStdin::new(session, stdin))
    }

    /// The error of a Pod that cannot run its container, quoting the output of the container
    /// that exited, if any.
    async fn start_error(&self, state: StartState) -> Error {
        match state {
            StartState::Failed {
                reason,
                message,
                exited,
            } => {
                let output = match exited {
                    Some(exited) => self.log_tail(&exited).await,
                    None => String::new(),
                };
                Error::Exec {
                    reason,
                    message: format!("Pod {self}: {message}{output}"),
                }
            }
            StartState::NoSuchContainer(message) => Error::InvalidSpec(message),
            StartState::Running | StartState::Waiting(_) => Error::Exec {
                reason: reason::POD_FAILED,
                message: format!("Pod {self} cannot run the command"),
            },
        }
    }

    /// An exec refused because the container just stopped is better explained by the Pod's
    /// status (exit code, output), which the kubelet reports moments later: look for it a
    /// little while, else keep the exec's own error.
    async fn explain_exec_failure(&self, container: &str, err: Error) -> Error {
        if !matches!(
            err,
            Error::Exec {
                reason: reason::EXEC_FAILED,
                ..
            }
        ) {
            return err;
        }
        let give_up = Instant::now() + EXPLAIN_TIMEOUT;
        while Instant::now() < give_up {
            match self.api.get_opt(&self.name).await {
                Ok(pod) => match start_state(pod.as_ref(), container) {
                    StartState::Running | StartState::Waiting(_) => {}
                    failed => return self.start_error(failed).await,
                },
                Err(read_error) => {
                    tracing::debug!(pod = %self, error = %read_error, "reading the Pod to explain a refused exec");
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        err
    }

    async fn delete(&self) -> Result<()> {
        let params = DeleteParams {
            grace_period_seconds: Some(DELETE_GRACE_SECONDS),
            ..DeleteParams::default()
        };
        match self.api.delete(&self.name, &params).await {
            Ok(_) => {
                tracing::debug!(pod = %self, "deleted exec Pod");
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    async fn delete_and_wait_gone(&self) -> Result<()> {
        self.delete().await?;
        let gone = async {
            loop {
                if self.api.get_opt(&self.name).await?.is_none() {
                    return Ok::<(), Error>(());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        tokio::time::timeout(REPLACE_TIMEOUT, gone).await.unwrap_or_else(|_| {
            Err(Error::Exec {
                reason: reason::POD_FAILED,
                message: format!(
                    "Pod {self} of an earlier attempt was still being deleted after {}s",
                    REPLACE_TIMEOUT.as_secs()
                ),
            })
        })
    }

    /// The end of a failed container's log, as a suffix for its error ("" if there is none).
    async fn log_tail(&self, container: &str) -> String {
        let params = LogParams {
            container: Some(container.to_owned()),
            tail_lines: Some(LOG_TAIL_LINES),
            limit_bytes: Some(LOG_TAIL_BYTES),
            ..LogParams::default()
        };
        match tokio::time::timeout(Duration::from_secs(10), self.api.logs(&self.name, &params)).await {
            Ok(Ok(log)) if !log.trim().is_empty() => format!("; its last output: {}", log.trim()),
            _ => String::new(),
        }
    }
}

impl std::fmt::Display for PodHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl std::fmt::Debug for PodHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PodHandle({self})")
    }
}

impl std::fmt::Debug for ExecPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ExecPod({})", self.handle)
    }
}

/// The Pod of a run: the template's metadata and spec, our name, labels and owner, and
/// `restartPolicy: Never`.
fn pod_from_template(params: &ExecPodParams) -> Result<Pod> {
    let template_meta = params.template.metadata.clone().unwrap_or_default();
    let spec = params.template.spec.clone().filter(|spec| !spec.containers.is_empty());
    let Some(mut spec) = spec else {
        return Err(Error::InvalidSpec(format!(
            "the Pod template of {}/{} has no containers",
            params.namespace, params.name
        )));
    };
    spec.restart_policy = Some("Never".into());
    let mut labels = template_meta.labels.unwrap_or_default();
    labels.extend(params.labels.clone());
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(params.name.clone()),
            namespace: Some(params.namespace.clone()),
            labels: Some(labels),
            annotations: template_meta.annotations,
            owner_references: params.owner.clone().map(|owner| vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn params(template: serde_json::Value) -> ExecPodParams {
        ExecPodParams {
            namespace: "db".into(),
            name: "nightly-1-exec".into(),
            template: serde_json::from_value(template).expect("a valid template"),
            owner: Some(OwnerReference {
                api_version: "stowage.io/v1alpha1".into(),
                kind: "ExecBackup".into(),
                name: "nightly-1".into(),
                uid: "uid-1".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }),
            labels: BTreeMap::from([("stowage.io/backup".to_string(), "nightly-1".to_string())]),
        }
    }

    #[test]
    fn the_pod_keeps_the_template_and_adds_name_labels_owner_and_never_restarts() {
        let params = params(json!({
            "metadata": { "name": "ignored", "labels": { "app": "dump", "stowage.io/backup": "theirs" }, "annotations": { "note": "kept" } },
            "spec": { "restartPolicy": "Always", "containers": [{ "name": "main", "image": "postgres:16" }] },
        }));
        let pod = pod_from_template(&params).expect("a Pod");
        let expected: Pod = serde_json::from_value(json!({
            "metadata": {
                "name": "nightly-1-exec",
                "namespace": "db",
                "labels": { "app": "dump", "stowage.io/backup": "nightly-1" },
                "annotations": { "note": "kept" },
                "ownerReferences": [{ "apiVersion": "stowage.io/v1alpha1", "kind": "ExecBackup", "name": "nightly-1", "uid": "uid-1", "controller": true, "blockOwnerDeletion": true }],
            },
            "spec": { "restartPolicy": "Never", "containers": [{ "name": "main", "image": "postgres:16" }] },
        }))
        .expect("a valid Pod");
        assert_eq!(pod, expected);
    }

    #[test]
    fn a_template_without_containers_is_an_invalid_spec() {
        let err = pod_from_template(&params(json!({ "spec": { "containers": [] } }))).expect_err("no containers");
        assert_eq!(err.reason(), "InvalidSpec");
        assert_eq!(
            err.to_string(),
            "the Pod template of db/nightly-1-exec has no containers"
        );
    }
}
