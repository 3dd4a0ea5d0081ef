//! Kubelet stand-ins: simulated Nodes whose Pods run as host processes, and the cluster-wide
//! parts that serve them.
//!
//! No kubelet, container runtime or scheduler exists on the test machines, so this module plays
//! them for the test bed. Each [`NodeSimulator`] registers a Node at 127.0.0.1 (with the
//! well-known hostname, os, arch and zone labels, capacity and allocatable) and keeps it Ready,
//! runs the Pods bound to it, every container's command as a host process in a private mount
//! namespace (volumes bind-mounted at their mount paths; the image is ignored), reports Pod
//! status, and completes Pod deletion. Its HTTPS kubelet API (a port per node) lets `pods/exec`
//! and `pods/log` work through the real kube-apiserver.
//!
//! One [`ClusterSimulator`] serves all nodes: a scheduler (nodeName, nodeSelector, required and
//! preferred node affinity, taints and tolerations, cordoned nodes, PersistentVolume node
//! affinity, ReadWriteOncePod claims, spreading by Pod count; an unschedulable Pod gets
//! kube-scheduler's condition, message and Event; see [`scheduler`]) and an attach-detach
//! controller (a ReadWriteOnce volume of the CSI simulator is attached to one node at a time: a
//! Pod on another node waits in ContainerCreating with a Multi-Attach error Event; see
//! [`attach`]).
//!
//! Containers get the `KUBERNETES_SERVICE_HOST/PORT` (and `KUBERNETES_PORT*`) variables pointing
//! at the API server as the host reaches it, and projected volumes with ServiceAccount tokens
//! from the TokenRequest API, so a process in a Pod can call the API server as its
//! ServiceAccount, with RBAC applied.
//!
//! Everything a node does is written to its own log file ([`NodeSimulator::log_path`]), and the
//! scheduler's decisions to [`ClusterSimulator::log_path`], so that a failing test can show what
//! the "cluster" saw.
//!
//! What it does not simulate: images (a container without `command` idles as `sleep infinity`;
//! `args` without `command` are ignored), probes (a running container is Ready), resource
//! requests and limits (every node has room), network namespaces (every Pod shares the host's
//! network, so two Pods listening on one port collide, whatever their nodes), inter-Pod affinity
//! and topology spread constraints, WaitForFirstConsumer volume binding (the CSI simulator's
//! class binds immediately), token rotation, other Services' environment variables, `fsGroup`,
//! terminal (tty) exec, `attach`, `portForward`, and exec over SPDY (kubectl 1.20's
//! `kubectl exec` speaks only SPDY; kube-rs and newer kubectl use WebSocket). As in Kubernetes,
//! `$(VAR)` in command and args is expanded and `$$` becomes `$`.

mod attach;
mod cluster;
mod container_logs;
mod containers;
mod env;
mod events;
mod exec;
mod fit;
mod heartbeat;
mod kubelet_api;
mod pod_status;
mod pods;
mod process;
mod scheduler;
mod volumes;

pub use self::cluster::ClusterSimulator;

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
    /// Registers Node `name` (labelled with `topology.kubernetes.io/zone` = `zone`), starts its
    /// kubelet API and begins running the Pods bound to it.
    ///
    /// `workdir` receives the node's log (`node-<name>.log`), and per Pod its volumes and
    /// container logs (`pods/<namespace>_<pod>_<uid>/`). Several nodes may share one `workdir`.
    pub async fn start(client: kube::Client, name: &str, zone: &str, workdir: &Path) -> anyhow::Result<Self> {
        let pods_dir = workdir.join("pods");
        std::fs::create_dir_all(&pods_dir)
            .with_context(|| format!("creating the node's pod directory {}", pods_dir.display()))?;
        let log = NodeLog::create(&workdir.join(format!("node-{name}.log")))?;
        let ctx = Arc::new(NodeContext {
            client,
            name: name.to_owned(),
            zone: zone.to_owned(),
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

    /// The node's own log: every Pod it started, restarted and deleted, and every error.
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
    zone: String,
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
