//! One container's life: start its process, wait for it, restart it as the Pod's restartPolicy
//! says, and stop it (SIGTERM, then SIGKILL after the grace period) when the Pod goes away.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::NodeContext;
use super::pod_status::{ContainerEvent, Exit};
use super::process::{ContainerContext, Stdios, exit_code};

/// A container of a running Pod, as the kubelet API sees it.
pub(crate) struct ContainerRuntime {
    pub(crate) context: ContainerContext,
    /// stdout and stderr of every run of the container, appended.
    pub(crate) log_path: PathBuf,
    /// Whether a process of this container is running now.
    pub(crate) running: watch::Sender<bool>,
}

/// When a container that exited is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Restart {
    Always,
    OnFailure,
    Never,
}

impl Restart {
    pub(crate) fn from_policy(policy: Option<&str>) -> Self {
        match policy {
            Some("Never") => Restart::Never,
            Some("OnFailure") => Restart::OnFailure,
            _ => Restart::Always,
        }
    }

    fn restarts_after(self, code: i32) -> bool {
        match self {
            Restart::Always => true,
            Restart::OnFailure => code != 0,
            Restart::Never => false,
        }
    }
}

/// How to run one container.
pub(crate) struct ContainerRun {
    pub(crate) node: Arc<NodeContext>,
    /// `namespace/name` of the Pod, for the node log.
    pub(crate) pod: String,
    pub(crate) name: String,
    pub(crate) argv: Vec<String>,
    pub(crate) runtime: Arc<ContainerRuntime>,
    pub(crate) restart: Restart,
    pub(crate) events: mpsc::Sender<ContainerEvent>,
    /// Cancelled when the Pod is deleted or the node stops.
    pub(crate) stop: CancellationToken,
    /// Seconds between SIGTERM and SIGKILL, set before `stop` is cancelled.
    pub(crate) grace_seconds: Arc<AtomicU64>,
}

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run this long resets the restart backoff, as a kubelet's does after 10 minutes.
const STABLE_RUN: Duration = Duration::from_secs(10);

impl ContainerRun {
    pub(crate) async fn run(self) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let began = Instant::now();
            let (exit, stopped) = self.run_once().await;
            let restarting = !stopped && self.restart.restarts_after(exit.code);
            self.node.log.line(format_args!(
                "container {} of pod {} exited with code {} ({}){}",
                self.name,
                self.pod,
                exit.code,
                exit.reason,
                if restarting { ", restarting" } else { "" }
            ));
            let _ = self
                .events
                .send(ContainerEvent::Exited {
                    name: self.name.clone(),
                    exit,
                    restarting,
                })
                .await;
            if !restarting {
                return;
            }
            if began.elapsed() >= STABLE_RUN {
                backoff = FIRST_BACKOFF;
            }
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One run of the process. Returns how it ended and whether it was stopped by us.
    async fn run_once(&self) -> (Exit, bool) {
        let started_at = Time(Timestamp::now());
        let failed_to_start = |message: String| Exit {
            code: 128,
            signal: None,
            reason: "StartError".into(),
            message: Some(message),
            started_at: started_at.clone(),
            finished_at: Time(Timestamp::now()),
        };
        let stdios = match self.log_stdios() {
            Ok(stdios) => stdios,
            Err(error) => return (failed_to_start(format!("opening the container log: {error}")), false),
        };
        let mut process = match self.runtime.context.spawn(&self.node, &self.argv, stdios) {
            Ok(process) => process,
            Err(error) => {
                // Visible through `pods/log`, as a runtime's error would be.
                let message = format!("{error:#}");
                let _ = std::fs::write(&self.runtime.log_path, format!("node simulator: {message}\n"));
                return (failed_to_start(message), false);
            }
        };
        self.runtime.running.send_replace(true);
        let _ = self
            .events
            .send(ContainerEvent::Started {
                name: self.name.clone(),
                at: started_at.clone(),
            })
            .await;
        let (status, stopped) = tokio::select! {
            status = process.child.wait() => {
                process.reap_group(&self.node);
                (status, false)
            }
            () = self.stop.cancelled() => {
                let grace = Duration::from_secs(self.grace_seconds.load(Ordering::Relaxed));
                (process.terminate(&self.node, grace).await, true)
            }
        };
        self.runtime.running.send_replace(false);
        let exit = match status {
            Ok(status) => Exit {
                code: exit_code(&status),
                signal: status.signal(),
                reason: if status.success() { "Completed" } else { "Error" }.into(),
                message: None,
                started_at,
                finished_at: Time(Timestamp::now()),
            },
            Err(error) => failed_to_start(format!("waiting for the process: {error}")),
        };
        (exit, stopped)
    }

    /// stdout and stderr both go, in order, to the container's log file.
    fn log_stdios(&self) -> std::io::Result<Stdios> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.runtime.log_path)?;
        Ok(Stdios {
            stdin: Stdio::null(),
            stdout: log.try_clone()?.into(),
            stderr: log.into(),
        })
    }
}
