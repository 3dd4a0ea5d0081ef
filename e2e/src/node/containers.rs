//! One container's life, as a kubelet and its container runtime lead it: start its process with
//! its output captured in CRI log files (one per run, the previous run's kept), probe it, record
//! its termination message, restart it as the Pod's restartPolicy says with a back-off, and stop
//! it (preStop hook, SIGTERM, SIGKILL after the grace period) when the Pod goes away or a
//! liveness or startup probe fails.
//!
//! The restart back-off starts at 1 s and doubles up to 30 s (a kubelet's goes from 10 s to
//! 5 min: too slow for tests); 10 s of running resets it (a kubelet's, 10 min).

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::ChildStdin;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::cri_log::{LineSplitter, LogStream};
use super::pod_status::{ContainerEvent, Exit};
use super::process::{BindMount, ContainerContext, Process, Stdios, exit_code};
use super::{NodeContext, container_logs, lock, probes};

/// A termination message is the last 4 KiB of the container's file, as a kubelet reads it.
const MAX_TERMINATION_MESSAGE: usize = 4096;
/// `FallbackToLogsOnError`: the last 80 lines of the log, at most 2 KiB of them.
const FALLBACK_LOG_LINES: u64 = 80;
const FALLBACK_LOG_BYTES: usize = 2048;
/// A kubelet never gives a container less than this between SIGTERM and SIGKILL.
const MIN_GRACE: Duration = Duration::from_secs(2);
/// Output chunks kept for `attach` sessions that read slower than the container writes.
const OUTPUT_BACKLOG: usize = 64;
/// How long the output of an exited run may take to reach its log file (a background process
/// that escaped the container's process group could hold the pipe open forever).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// A container of a running Pod, as the kubelet API sees it.
pub(crate) struct ContainerRuntime {
    pub(crate) name: String,
    pub(crate) context: ContainerContext,
    /// Whether a process of this container is running now.
    pub(crate) running: watch::Sender<bool>,
    /// Which runs exist and how far the latest one is; `pods/log` picks its file from this.
    pub(crate) runs: watch::Sender<RunState>,
    /// Why the container waits before its first run, as its status says.
    pub(crate) first_waiting_reason: &'static str,
    log_dir: PathBuf,
    termination: Option<TerminationFile>,
    output: broadcast::Sender<OutputChunk>,
    stdin_mode: StdinMode,
    stdin: Mutex<Option<RunStdin>>,
}

/// How far the container's runs are. A run's number is the restartCount it ran with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RunState {
    /// Runs started so far; the latest is number `started - 1`.
    pub(crate) started: u32,
    /// The latest run ended and all its output is in its log file.
    pub(crate) ended: bool,
    /// The latest run ended and the container waits to start again: its status is waiting and
    /// its lastState is that run.
    pub(crate) restarting: bool,
}

/// A piece of a container's live output, for `attach`.
#[derive(Debug, Clone)]
pub(crate) struct OutputChunk {
    pub(crate) stream: LogStream,
    pub(crate) data: Bytes,
}

/// What a container does with stdin (`stdin`, `stdinOnce` in its spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StdinMode {
    /// No stdin: the process reads /dev/null.
    None,
    /// A pipe that attach sessions write to; it stays open between sessions.
    Open,
    /// A pipe closed (EOF) when the first attach session ends.
    Once,
}

/// The stdin pipe of the current run, fed through a channel so that sessions never share a
/// writer.
struct RunStdin {
    input: mpsc::Sender<Bytes>,
    closed: CancellationToken,
}

/// The host file bind-mounted at the container's terminationMessagePath.
struct TerminationFile {
    host_path: PathBuf,
    fallback_to_logs: bool,
}

/// One attach session's hold on the container's stdin.
pub(crate) struct AttachedStdin {
    input: mpsc::Sender<Bytes>,
    closed: CancellationToken,
    once: bool,
}

impl AttachedStdin {
    /// Writes `data` to the container's stdin, waiting while the process does not read.
    /// Fails once the run ended or stdin was closed.
    pub(crate) async fn write(&self, data: Bytes) -> Result<(), StdinClosed> {
        tokio::select! {
            sent = self.input.send(data) => sent.map_err(|_| StdinClosed),
            () = self.closed.cancelled() => Err(StdinClosed),
        }
    }
}

impl Drop for AttachedStdin {
    /// The session ended: with `stdinOnce` the process now reads EOF.
    fn drop(&mut self) {
        if self.once {
            self.closed.cancel();
        }
    }
}

/// The container's stdin is closed or its run ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StdinClosed;

impl ContainerRuntime {
    /// Prepares `container` of the Pod whose directory is `pod_dir`: its log directory and its
    /// termination message file, bind-mounted into `context`.
    pub(crate) fn new(
        container: &Container,
        mut context: ContainerContext,
        pod_dir: &Path,
        first_waiting_reason: &'static str,
    ) -> std::io::Result<Self> {
        let log_dir = pod_dir.join("logs").join(&container.name);
        std::fs::create_dir_all(&log_dir)?;
        let path = container
            .termination_message_path
            .as_deref()
            .unwrap_or("/dev/termination-log");
        let termination = if path.is_empty() {
            None
        } else {
            let dir = pod_dir.join("termination");
            std::fs::create_dir_all(&dir)?;
            let host_path = dir.join(&container.name);
            std::fs::File::create(&host_path)?;
            // Any user the container runs as may write it, as a kubelet allows.
            std::fs::set_permissions(&host_path, std::fs::Permissions::from_mode(0o666))?;
            context.mounts.push(BindMount {
                source: host_path.clone(),
                target: PathBuf::from(path),
                read_only: false,
            });
            Some(TerminationFile {
                host_path,
                fallback_to_logs: container.termination_message_policy.as_deref() == Some("FallbackToLogsOnError"),
            })
        };
        let stdin_mode = match (container.stdin, container.stdin_once) {
            (Some(true), Some(true)) => StdinMode::Once,
            (Some(true), _) => StdinMode::Open,
            _ => StdinMode::None,
        };
        Ok(ContainerRuntime {
            name: container.name.clone(),
            context,
            running: watch::channel(false).0,
            runs: watch::channel(RunState::default()).0,
            first_waiting_reason,
            log_dir,
            termination,
            output: broadcast::channel(OUTPUT_BACKLOG).0,
            stdin_mode,
            stdin: Mutex::new(None),
        })
    }

    /// The CRI log file of run `run`.
    pub(crate) fn log_file(&self, run: u32) -> PathBuf {
        self.log_dir.join(format!("{run}.log"))
    }

    /// Attach hook: the container's output from now on, every run, as it is written.
    ///
    /// The container never waits for a receiver: one that falls more than 64 chunks behind
    /// gets `RecvError::Lagged` and should end its session, as a kubelet drops a slow attach
    /// client. Watch `running` to learn when the current run ends.
    pub(crate) fn subscribe_output(&self) -> broadcast::Receiver<OutputChunk> {
        self.output.subscribe()
    }

    /// Attach hook: the running container's stdin, if its spec says `stdin: true` and it is
    /// still open. With `stdinOnce` it closes (the process reads EOF) when the first session
    /// holding it drops it; otherwise it stays open for later sessions. A restarted container
    /// gets a new stdin.
    pub(crate) fn attach_stdin(&self) -> Option<AttachedStdin> {
        let slot = lock(&self.stdin);
        let run = slot.as_ref().filter(|run| !run.closed.is_cancelled())?;
        Some(AttachedStdin {
            input: run.input.clone(),
            closed: run.closed.clone(),
            once: self.stdin_mode == StdinMode::Once,
        })
    }

    /// Whether the container's spec asks for a stdin (`stdin: true`).
    pub(crate) fn has_stdin(&self) -> bool {
        self.stdin_mode != StdinMode::None
    }

    /// Whether its stdin closes when the first attach session ends (`stdinOnce: true`).
    pub(crate) fn stdin_once(&self) -> bool {
        self.stdin_mode == StdinMode::Once
    }

    /// The termination message of a run that exited with `code`, as a kubelet builds it.
    async fn termination_message(&self, run: u32, code: i32) -> Option<String> {
        let termination = self.termination.as_ref()?;
        let fallback = termination.fallback_to_logs && code != 0;
        match read_tail(&termination.host_path, MAX_TERMINATION_MESSAGE) {
            Ok(data) if !data.is_empty() => Some(String::from_utf8_lossy(&data).into_owned()),
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Some(format!(
                "Error on reading termination log {}: {error}",
                termination.host_path.display()
            )),
            _ if fallback => {
                let output = container_logs::last_output(&self.log_file(run), FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES)
                    .await
                    .ok()?;
                (!output.is_empty()).then(|| String::from_utf8_lossy(&output).into_owned())
            }
            _ => None,
        }
    }

    /// A fresh log file for run `run` (the one before the previous is removed) and an empty
    /// termination message file.
    fn begin_run(&self, run: u32) -> std::io::Result<std::fs::File> {
        if let Some(old) = run.checked_sub(2) {
            let _ = std::fs::remove_file(self.log_file(old));
        }
        if let Some(termination) = &self.termination {
            std::fs::File::create(&termination.host_path)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(self.log_file(run))
    }
}

/// The last `max` bytes of a file.
fn read_tail(path: &Path, max: usize) -> std::io::Result<Vec<u8>> {
    let data = std::fs::read(path)?;
    Ok(data[data.len().saturating_sub(max)..].to_vec())
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
    /// `name_namespace(uid)` of the Pod, as a kubelet's back-off message names it.
    pub(crate) pod_id: String,
    pub(crate) spec: Container,
    pub(crate) argv: Vec<String>,
    pub(crate) runtime: Arc<ContainerRuntime>,
    pub(crate) restart: Restart,
    pub(crate) events: mpsc::Sender<ContainerEvent>,
    /// Cancelled when the Pod is deleted or the node stops.
    pub(crate) stop: CancellationToken,
    /// Seconds between SIGTERM and SIGKILL when the Pod stops, set before `stop` is cancelled.
    pub(crate) grace_seconds: Arc<AtomicU64>,
    /// The Pod's terminationGracePeriodSeconds, for a container a probe kills.
    pub(crate) pod_grace_seconds: u64,
}

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run this long resets the restart back-off.
const STABLE_RUN: Duration = Duration::from_secs(10);

/// Why a running process is being stopped.
pub(crate) struct KillRequest {
    pub(crate) reason: String,
    pub(crate) grace: Duration,
}

impl ContainerRun {
    pub(crate) async fn run(self) {
        let mut backoff = FIRST_BACKOFF;
        for run in 0.. {
            let began = Instant::now();
            let (exit, stopped) = self.run_once(run).await;
            if began.elapsed() >= STABLE_RUN {
                backoff = FIRST_BACKOFF;
            }
            let restarting = !stopped && self.restart.restarts_after(exit.code);
            self.runtime.runs.send_modify(|state| state.restarting = restarting);
            self.node.log.line(format_args!(
                "container {} of pod {} exited with code {} ({}){}",
                self.spec.name,
                self.pod,
                exit.code,
                exit.reason,
                if restarting { ", restarting" } else { "" }
            ));
            let backoff_message = restarting.then(|| {
                format!(
                    "back-off {}s restarting failed container={} pod={}",
                    backoff.as_secs(),
                    self.spec.name,
                    self.pod_id
                )
            });
            let _ = self
                .events
                .send(ContainerEvent::Exited {
                    name: self.spec.name.clone(),
                    exit,
                    backoff: backoff_message,
                })
                .await;
            if !restarting {
                return;
            }
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One run of the process. Returns how it ended and whether it was stopped by the Pod's end.
    async fn run_once(&self, run: u32) -> (Exit, bool) {
        let started_at = Time(Timestamp::now());
        let runtime = &self.runtime;
        runtime.runs.send_replace(RunState {
            started: run + 1,
            ended: false,
            restarting: false,
        });
        let failed_to_start = |message: String| {
            runtime.runs.send_modify(|state| state.ended = true);
            Exit {
                code: 128,
                signal: None,
                reason: "StartError".into(),
                message: Some(message),
                started_at: started_at.clone(),
                finished_at: Time(Timestamp::now()),
            }
        };
        let log = match runtime.begin_run(run) {
            Ok(log) => Arc::new(Mutex::new(log)),
            Err(error) => return (failed_to_start(format!("creating the container log: {error}")), false),
        };
        let stdios = Stdios {
            stdin: if runtime.has_stdin() {
                Stdio::piped()
            } else {
                Stdio::null()
            },
            stdout: Stdio::piped(),
            stderr: Stdio::piped(),
        };
        let mut process = match runtime.context.spawn(&self.node, &self.argv, stdios) {
            Ok(process) => process,
            Err(error) => return (failed_to_start(format!("{error:#}")), false),
        };
        let pumps = self.start_pumps(&mut process, &log);
        runtime.running.send_replace(true);
        let _ = self
            .events
            .send(ContainerEvent::Started {
                name: self.spec.name.clone(),
                at: started_at.clone(),
            })
            .await;
        let (kill_tx, mut kill_rx) = mpsc::channel(1);
        let prober = probes::start(self, kill_tx);
        let (status, stopped) = tokio::select! {
            status = process.child.wait() => {
                process.reap_group(&self.node);
                (status, false)
            }
            () = self.stop.cancelled() => {
                let grace = Duration::from_secs(self.grace_seconds.load(Ordering::Relaxed));
                (self.kill(&mut process, grace).await, true)
            }
            Some(request) = kill_rx.recv() => {
                self.node.log.line(format_args!("container {} of pod {}: {}", self.spec.name, self.pod, request.reason));
                (self.kill(&mut process, request.grace).await, false)
            }
        };
        if let Some(prober) = prober {
            prober.abort();
        }
        *lock(&runtime.stdin) = None;
        runtime.running.send_replace(false);
        for pump in pumps {
            drain(pump).await;
        }
        runtime.runs.send_modify(|state| state.ended = true);
        let mut exit = match status {
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
        exit.message = runtime.termination_message(run, exit.code).await;
        (exit, stopped)
    }

    /// Copies stdout and stderr to the run's log file and to attach sessions, and feeds stdin
    /// from attach sessions.
    fn start_pumps(&self, process: &mut Process, log: &Arc<Mutex<std::fs::File>>) -> Vec<JoinHandle<()>> {
        let output = &self.runtime.output;
        let mut pumps = Vec::new();
        if let Some(stdout) = process.child.stdout.take() {
            pumps.push(tokio::spawn(pump_output(
                stdout,
                LogStream::Stdout,
                log.clone(),
                output.clone(),
            )));
        }
        if let Some(stderr) = process.child.stderr.take() {
            pumps.push(tokio::spawn(pump_output(
                stderr,
                LogStream::Stderr,
                log.clone(),
                output.clone(),
            )));
        }
        if let Some(stdin) = process.child.stdin.take() {
            let (input, receiver) = mpsc::channel(8);
            let closed = CancellationToken::new();
            tokio::spawn(pump_stdin(stdin, receiver, closed.clone()));
            *lock(&self.runtime.stdin) = Some(RunStdin { input, closed });
        }
        pumps
    }

    /// Stops the process as a kubelet kills a container: the preStop hook, SIGTERM, and SIGKILL
    /// when what is left of `grace` (at least 2 s) has passed.
    async fn kill(&self, process: &mut Process, grace: Duration) -> std::io::Result<std::process::ExitStatus> {
        let began = Instant::now();
        if let Some(command) = pre_stop_command(&self.spec) {
            let outcome = probes::exec_in_container(&self.node, &self.runtime, &command, grace).await;
            self.node.log.line(format_args!(
                "preStop hook of container {} of pod {}: {outcome:?}",
                self.spec.name, self.pod
            ));
        }
        let remaining = grace.saturating_sub(began.elapsed()).max(MIN_GRACE);
        process.terminate(&self.node, remaining).await
    }
}

fn pre_stop_command(spec: &Container) -> Option<Vec<String>> {
    let command = spec
        .lifecycle
        .as_ref()?
        .pre_stop
        .as_ref()?
        .exec
        .as_ref()?
        .command
        .clone()?;
    (!command.is_empty()).then_some(command)
}

/// Waits a little for a pump to reach the end of its pipe, then gives up on it.
async fn drain(pump: JoinHandle<()>) {
    let abort = pump.abort_handle();
    if tokio::time::timeout(DRAIN_TIMEOUT, pump).await.is_err() {
        abort.abort();
    }
}

/// Writes one output stream to the log file as CRI records and to attach sessions as it comes.
async fn pump_output(
    mut pipe: impl AsyncRead + Unpin,
    stream: LogStream,
    log: Arc<Mutex<std::fs::File>>,
    output: broadcast::Sender<OutputChunk>,
) {
    let mut splitter = LineSplitter::new(stream);
    let mut buffer = vec![0_u8; 64 * 1024];
    let mut records = Vec::new();
    loop {
        let read = match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let data = &buffer[..read];
        if output.receiver_count() > 0 {
            let chunk = OutputChunk {
                stream,
                data: Bytes::copy_from_slice(data),
            };
            let _ = output.send(chunk);
        }
        splitter.push(data, Timestamp::now(), &mut records);
        append(&log, &mut records);
    }
    splitter.finish(Timestamp::now(), &mut records);
    append(&log, &mut records);
}

/// Appends whole records in one write, so that stdout and stderr records never interleave.
fn append(log: &Mutex<std::fs::File>, records: &mut Vec<u8>) {
    if !records.is_empty() {
        // A full disk loses log lines, as on a real node; the container runs on.
        let _ = lock(log).write_all(records);
        records.clear();
    }
}

/// Feeds what attach sessions send to the process's stdin until the run ends or stdin closes.
async fn pump_stdin(mut stdin: ChildStdin, mut input: mpsc::Receiver<Bytes>, closed: CancellationToken) {
    loop {
        let data = tokio::select! {
            () = closed.cancelled() => return,
            data = input.recv() => data,
        };
        let Some(data) = data else { return };
        if stdin.write_all(&data).await.is_err() {
            closed.cancel();
            return;
        }
    }
}
