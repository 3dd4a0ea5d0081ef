//! A kubelet stand-in: one simulated Node whose Pods run as host processes.
//!
//! No kubelet, container runtime or scheduler exists on the test machines, so this module plays
//! all three for the test bed. It registers a Node at 127.0.0.1 and keeps it Ready, binds
//! unscheduled Pods to itself, runs every container's command as a host process in a private
//! mount namespace (volumes bind-mounted at their mount paths; the image is ignored), reports Pod
//! status, and completes Pod deletion. Its HTTPS kubelet API lets `pods/exec`, `pods/attach` and
//! `pods/log` work through the real kube-apiserver.
//!
//! Everything it does is written to its own log file ([`NodeSimulator::log_path`]) so that a
//! failing test can show what the "node" saw.
//!
//! Containers run as a v1.3x kubelet with containerd runs them: stdout and stderr are captured
//! per run in CRI log files (`pods/log` with follow, tailLines, limitBytes, sinceSeconds,
//! sinceTime, timestamps and previous), termination messages are read from
//! `terminationMessagePath` (with `FallbackToLogsOnError`), startup, readiness and liveness
//! probes (exec, httpGet, tcpSocket) drive `started`, `ready` and the Pod's conditions or kill
//! the container, init containers run one at a time first, restartPolicy and a CrashLoopBackOff
//! back-off decide restarts (shorter than a kubelet's: 1 s doubling to 30 s), phases follow the
//! kubelet's rules, and deletion runs the preStop hook, sends SIGTERM and SIGKILLs what is left
//! when the deletion's grace period ends (at least 2 s), then reports the terminal phase and
//! removes the Pod. A container with `stdin: true` gets a stdin pipe for `attach`.
//!
//! Exec and attach are served as a kubelet serves them ([`streams`]): over SPDY/3.1 (the
//! channel.k8s.io protocols v1 to v4, as kubectl before 1.30 and a current API server's stream
//! translator speak them) and over WebSocket (v1, v4 and v5, as kube-rs and a current kubectl
//! reach a v1.20 API server's node). When an exec client half-closes stdin or goes away, the
//! command's stdin is closed and the command runs on to its own end (its exit goes to the node
//! log); it dies early only with its container.
//!
//! What it does not simulate: images (a container without `command` idles as `sleep infinity`;
//! `args` without `command` are ignored), HTTPS and gRPC probes, postStart hooks, sidecar
//! (restartable init) containers, readiness gates, resource limits, network namespaces (every
//! Pod shares the host's network, so two Pods listening on one port collide), `fsGroup`, `portForward`,
//! terminals (with `tty=1`, exec and attach send stderr on the one output stream and ignore
//! resize messages, but allocate no terminal), and SPDY/3.1 flow control (which Kubernetes' own
//! SPDY library never enforces). Every Pod's IP is 127.0.0.1, which the API server refuses in
//! Endpoints: a Service lists no Pods of this node (readiness shows in Pod conditions and in
//! workloads' ready replicas). A termination message path outside any volume gets an empty mount
//! point file on the host (e.g. `/dev/termination-log`), since bind mounts need one. As in
//! Kubernetes, `$(VAR)` in command and args is expanded and `$$` becomes `$`.

mod attach;
mod container_logs;
mod containers;
mod cri_log;
mod env;
mod exec;
mod heartbeat;
mod kubelet_api;
mod pod_status;
mod pods;
mod probes;
mod process;
mod spdy;
mod streams;
mod volumes;
mod websocket;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::pods::PodRuntime;

/// A simulated Node: registered with the API server, kept Ready, running its Pods as host
/// processes until it is stopped or dropped.
pub struct NodeSimulator {
    ctx: Arc<NodeContext>,
    port: u16,
    tasks: Vec<JoinHandle<()>>,
}

impl fmt::Debug for NodeSimulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeSimulator")
            .field("name", &self.ctx.name)
            .field("kubelet_port", &self.port)
            .field("log_path", &self.ctx.log.path)
            .finish()
    }
}

impl NodeSimulator {
    /// Registers Node `name`, starts its kubelet API and begins running the Pods bound to it.
    ///
    /// `workdir` receives the node's log (`node-<name>.log`), and per Pod its volumes and
    /// container logs (`pods/<namespace>_<pod>_<uid>/`).
    pub async fn start(client: kube::Client, name: &str, workdir: &Path) -> anyhow::Result<Self> {
        let pods_dir = workdir.join("pods");
        std::fs::create_dir_all(&pods_dir)
            .with_context(|| format!("creating the node's pod directory {}", pods_dir.display()))?;
        let log = NodeLog::create(&workdir.join(format!("node-{name}.log")))?;
        let ctx = Arc::new(NodeContext {
            client,
            name: name.to_owned(),
            pods_dir,
            log,
            pods: Mutex::new(HashMap::new()),
            process_groups: Mutex::new(HashSet::new()),
            shutdown: CancellationToken::new(),
        });
        let (port, server) = kubelet_api::serve(ctx.clone()).await?;
        let mut node = NodeSimulator {
            ctx: ctx.clone(),
            port,
            tasks: vec![server],
        };
        heartbeat::register(&ctx, port).await?;
        node.tasks.push(tokio::spawn(heartbeat::run(ctx.clone(), port)));
        node.tasks.push(tokio::spawn(pods::run(ctx.clone())));
        ctx.log
            .line(format_args!("node {name} started, kubelet API on 127.0.0.1:{port}"));
        Ok(node)
    }

    /// The Node's name.
    pub fn name(&self) -> &str {
        &self.ctx.name
    }

    /// The port of the kubelet API (HTTPS on 127.0.0.1).
    pub fn kubelet_port(&self) -> u16 {
        self.port
    }

    /// The node's own log: every Pod it bound, started, restarted and deleted, and every error.
    pub fn log_path(&self) -> &Path {
        &self.ctx.log.path
    }

    /// Stops heartbeats and the kubelet API and kills every process the node runs.
    /// The Node and its Pods stay in the API server.
    pub async fn stop(mut self) {
        self.shut_down();
        for task in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    fn shut_down(&mut self) {
        self.ctx.shutdown.cancel();
        self.ctx.kill_all_processes();
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for NodeSimulator {
    fn drop(&mut self) {
        if !self.ctx.shutdown.is_cancelled() {
            self.ctx
                .log
                .line(format_args!("node dropped: killing all pod processes"));
        }
        self.shut_down();
    }
}

/// What every part of the node shares.
pub(crate) struct NodeContext {
    client: kube::Client,
    name: String,
    pods_dir: PathBuf,
    log: NodeLog,
    /// The Pods this node runs, by (namespace, name), for the kubelet API.
    pods: Mutex<HashMap<(String, String), Arc<PodRuntime>>>,
    /// Process groups of every running container and exec session, killed when the node stops.
    process_groups: Mutex<HashSet<i32>>,
    shutdown: CancellationToken,
}

impl NodeContext {
    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<PodRuntime>> {
        lock(&self.pods).get(&(namespace.to_owned(), name.to_owned())).cloned()
    }

    fn kill_all_processes(&self) {
        for pgid in lock(&self.process_groups).drain() {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

/// Locks a mutex, ignoring poisoning: the guarded maps stay consistent even if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The node's log file: one timestamped line per event.
pub(crate) struct NodeLog {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl NodeLog {
    fn create(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("creating the node log {}", path.display()))?;
        Ok(NodeLog {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    pub(crate) fn line(&self, message: fmt::Arguments<'_>) {
        let now = k8s_openapi::jiff::Timestamp::now();
        // The log is a debugging aid: a failed write must not break the node.
        let _ = writeln!(lock(&self.file), "{now} {message}");
    }
}
