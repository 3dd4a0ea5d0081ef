//! The cluster-wide parts that no node owns: kube-scheduler ([`super::scheduler`]) and
//! kube-controller-manager's attach-detach controller ([`super::attach`]). One instance serves
//! every simulated node, as one scheduler serves a real cluster (nodes racing to bind Pods to
//! themselves would place them by luck).
//!
//! Both read one shared view of the cluster (reflector caches of Pods, Nodes, claims and
//! volumes) and run a pass whenever any of it changes, and every few seconds besides.

use std::fmt::Debug;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::NodeLog;

/// How long a loop waits for a change before it looks again anyway (a Pod that fits nowhere is
/// retried at least this often, as kube-scheduler flushes its unschedulable queue).
const RESCAN_INTERVAL: Duration = Duration::from_secs(5);

/// The scheduler and the attach-detach controller of the simulated nodes.
pub struct ClusterSimulator {
    log_path: PathBuf,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Debug for ClusterSimulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSimulator")
            .field("log_path", &self.log_path)
            .finish_non_exhaustive()
    }
}

impl ClusterSimulator {
    /// Starts scheduling unscheduled Pods onto the cluster's Nodes and attaching their volumes.
    /// Its log is `workdir/scheduler.log`.
    pub fn start(client: kube::Client, workdir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(workdir)?;
        let log_path = workdir.join("scheduler.log");
        let log = Arc::new(NodeLog::create(&log_path)?);
        let (changes, _) = watch::channel(0_u64);
        let mut tasks = Vec::new();
        let pods = reflect(Api::all(client.clone()), &changes, &log, &mut tasks);
        let nodes = reflect(Api::all(client.clone()), &changes, &log, &mut tasks);
        let claims = reflect(Api::all(client.clone()), &changes, &log, &mut tasks);
        let volumes = reflect(Api::all(client.clone()), &changes, &log, &mut tasks);
        let shutdown = CancellationToken::new();
        let view = Arc::new(ClusterView {
            client,
            log,
            pods,
            nodes,
            claims,
            volumes,
            changes,
            shutdown: shutdown.clone(),
        });
        tasks.push(tokio::spawn(super::scheduler::run(view.clone())));
        tasks.push(tokio::spawn(super::attach::run(view)));
        Ok(ClusterSimulator {
            log_path,
            shutdown,
            tasks,
        })
    }

    /// Every binding, unschedulable Pod, attach and detach, and every error.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Stops both loops and their watches.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for ClusterSimulator {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What the scheduler and the attach-detach controller see of the cluster.
pub(super) struct ClusterView {
    pub(super) client: kube::Client,
    pub(super) log: Arc<NodeLog>,
    pub(super) pods: Store<Pod>,
    pub(super) nodes: Store<Node>,
    pub(super) claims: Store<PersistentVolumeClaim>,
    pub(super) volumes: Store<PersistentVolume>,
    /// Bumped on every watch event of any of the four kinds.
    changes: watch::Sender<u64>,
    shutdown: CancellationToken,
}

impl ClusterView {
    /// When to run passes: `while passes.next().await { … }` runs the first pass once the caches
    /// are filled, then one after every change (or [`RESCAN_INTERVAL`]) until shutdown.
    pub(super) fn passes(&self) -> Passes<'_> {
        Passes {
            view: self,
            changes: self.changes.subscribe(),
            started: false,
        }
    }

    /// The claim `name` in `namespace`, from the cache.
    pub(super) fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>> {
        self.claims.get(&reflector::ObjectRef::new(name).within(namespace))
    }

    /// The volume a claim is bound to, from the cache.
    pub(super) fn bound_volume(&self, claim: &PersistentVolumeClaim) -> Option<Arc<PersistentVolume>> {
        let name = claim
            .spec
            .as_ref()?
            .volume_name
            .as_deref()
            .filter(|name| !name.is_empty())?;
        self.volumes.get(&reflector::ObjectRef::new(name))
    }
}

/// See [`ClusterView::passes`].
pub(super) struct Passes<'a> {
    view: &'a ClusterView,
    changes: watch::Receiver<u64>,
    started: bool,
}

impl Passes<'_> {
    /// Waits until the next pass is due; false once the simulator stops.
    pub(super) async fn next(&mut self) -> bool {
        let view = self.view;
        let due = async {
            if self.started {
                tokio::select! {
                    _ = self.changes.changed() => {}
                    () = tokio::time::sleep(RESCAN_INTERVAL) => {}
                }
            } else {
                let _ = view.pods.wait_until_ready().await;
                let _ = view.nodes.wait_until_ready().await;
                let _ = view.claims.wait_until_ready().await;
                let _ = view.volumes.wait_until_ready().await;
            }
        };
        tokio::select! {
            () = view.shutdown.cancelled() => return false,
            () = due => {}
        }
        self.started = true;
        self.changes.mark_unchanged();
        true
    }
}

/// A reflector cache of every `K`, bumping `changes` on each event.
fn reflect<K>(
    api: Api<K>,
    changes: &watch::Sender<u64>,
    log: &Arc<NodeLog>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Store<K>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let changes = changes.clone();
    let log = log.clone();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff());
    tasks.push(tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            // Errors are retried by the backoff; the caches stay as they were meanwhile.
            if let Err(error) = event {
                log.line(format_args!(
                    "watching {} failed (retrying): {error}",
                    K::plural(&K::DynamicType::default())
                ));
            }
            changes.send_modify(|count| *count = count.wrapping_add(1));
        }
    }));
    reader
}

/// The claims a Pod's volumes name.
pub(super) fn claim_names(pod: &Pod) -> impl Iterator<Item = &str> {
    pod.spec
        .iter()
        .flat_map(|spec| spec.volumes.iter().flatten())
        .filter_map(|volume| volume.persistent_volume_claim.as_ref())
        .map(|claim| claim.claim_name.as_str())
}

/// A Pod that has finished (its volumes are no longer in use).
pub(super) fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|status| status.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The node a Pod is bound to, if any.
pub(super) fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.node_name.as_deref())
        .filter(|node| !node.is_empty())
}
