//! The Pods of this node: run the ones bound to it, finish their deletion.
//!
//! One watch, of the Pods with `spec.nodeName` = this node (binding is the scheduler's job, see
//! [`super::scheduler`]), feeds one loop. Each bound Pod gets a worker task that prepares its
//! volumes and environment, runs its init containers then its containers, reports status after
//! every change, and on deletion stops the processes and removes the Pod as a kubelet does.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::containers::{ContainerRun, ContainerRuntime, Restart};
use super::pod_status::{ContainerEvent, PodStatusModel};
use super::process::ContainerContext;
use super::{NodeContext, env, lock, volumes};

/// A Pod this node runs, as the kubelet API sees it.
pub(crate) struct PodRuntime {
    pub(crate) uid: String,
    pub(crate) containers: Mutex<HashMap<String, Arc<ContainerRuntime>>>,
    /// Cancelled when the Pod's processes must stop; exec sessions stop with them.
    pub(crate) stop: CancellationToken,
}

struct WorkerHandle {
    updates: watch::Sender<Arc<Pod>>,
    gone: CancellationToken,
    task: JoinHandle<()>,
}

/// Watches the Pods bound to this node until the node shuts down.
pub(super) async fn run(ctx: Arc<NodeContext>) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let bound_here = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.name));
    let mut events = std::pin::pin!(watcher(api, bound_here).default_backoff());
    let mut workers: HashMap<String, WorkerHandle> = HashMap::new();
    let mut relisted: HashSet<String> = HashSet::new();
    loop {
        let event = tokio::select! {
            () = ctx.shutdown.cancelled() => break,
            event = events.next() => event,
        };
        let event = match event {
            None => break,
            Some(Err(error)) => {
                ctx.log.line(format_args!("pod watch error (retrying): {error}"));
                continue;
            }
            Some(Ok(event)) => event,
        };
        match event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                relisted.insert(uid(&pod));
                on_bound_pod(&ctx, &mut workers, pod);
            }
            watcher::Event::Delete(pod) => {
                if let Some(worker) = workers.remove(&uid(&pod)) {
                    worker.gone.cancel();
                }
            }
            watcher::Event::Init => relisted.clear(),
            watcher::Event::InitDone => {
                // Pods deleted while the watch was down: their workers must stop.
                workers.retain(|uid, worker| {
                    let present = relisted.contains(uid);
                    if !present {
                        worker.gone.cancel();
                    }
                    present
                });
            }
        }
    }
    for (_, worker) in workers {
        let _ = worker.task.await;
    }
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn on_bound_pod(ctx: &Arc<NodeContext>, workers: &mut HashMap<String, WorkerHandle>, pod: Pod) {
    let pod_uid = uid(&pod);
    if let Some(worker) = workers.get(&pod_uid) {
        worker.updates.send_replace(Arc::new(pod));
        return;
    }
    let phase = pod.status.as_ref().and_then(|status| status.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        // Finished before this node (re)started: nothing runs, only a deletion to complete.
        if pod.metadata.deletion_timestamp.is_some() {
            tokio::spawn({
                let ctx = ctx.clone();
                async move { complete_deletion(&ctx, &pod).await }
            });
        }
        return;
    }
    let pod = Arc::new(pod);
    let (updates, receiver) = watch::channel(pod.clone());
    let gone = CancellationToken::new();
    let task = tokio::spawn(Worker::new(ctx.clone(), pod, receiver, gone.clone()).run());
    workers.insert(pod_uid, WorkerHandle { updates, gone, task });
}

/// Removes a Pod whose processes are gone, as a kubelet does once it has stopped a Pod.
async fn complete_deletion(ctx: &NodeContext, pod: &Pod) {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => ctx.log.line(format_args!("pod {namespace}/{name} deleted")),
        Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => {}
        Err(error) => ctx.log.line(format_args!(
            "completing the deletion of pod {namespace}/{name} failed: {error}"
        )),
    }
}

/// Why a worker stops running its Pod.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// The Pod has a deletionTimestamp: stop it and remove it.
    Deleted,
    /// The Pod is gone from the API server.
    Gone,
    /// The node is stopping.
    Shutdown,
}

struct Worker {
    ctx: Arc<NodeContext>,
    pod: Arc<Pod>,
    label: String,
    dir: PathBuf,
    updates: watch::Receiver<Arc<Pod>>,
    gone: CancellationToken,
    runtime: Arc<PodRuntime>,
    model: PodStatusModel,
    grace_seconds: Arc<AtomicU64>,
    containers: JoinSet<()>,
}

impl Worker {
    fn new(ctx: Arc<NodeContext>, pod: Arc<Pod>, updates: watch::Receiver<Arc<Pod>>, gone: CancellationToken) -> Self {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let pod_uid = uid(&pod);
        Worker {
            dir: ctx.pods_dir.join(format!("{namespace}_{name}_{pod_uid}")),
            label: format!("{namespace}/{name}"),
            runtime: Arc::new(PodRuntime {
                uid: pod_uid,
                containers: Mutex::new(HashMap::new()),
                stop: ctx.shutdown.child_token(),
            }),
            model: PodStatusModel::new(&pod),
            grace_seconds: Arc::new(AtomicU64::new(30)),
            containers: JoinSet::new(),
            ctx,
            pod,
            updates,
            gone,
        }
    }

    fn key(&self) -> (String, String) {
        (
            self.pod.metadata.namespace.clone().unwrap_or_default(),
            self.pod.metadata.name.clone().unwrap_or_default(),
        )
    }

    async fn run(mut self) {
        self.ctx
            .log
            .line(format_args!("running pod {} (uid {})", self.label, self.runtime.uid));
        lock(&self.ctx.pods).insert(self.key(), self.runtime.clone());
        let ending = self.live().await;
        let grace = termination_grace(&self.pod);
        self.ctx.log.line(format_args!(
            "stopping pod {} ({ending:?}, grace {grace} s)",
            self.label
        ));
        self.grace_seconds.store(grace, Ordering::Relaxed);
        self.runtime.stop.cancel();
        while self.containers.join_next().await.is_some() {}
        if ending == Ending::Deleted {
            complete_deletion(&self.ctx, &self.pod).await;
        }
        let key = self.key();
        let mut pods = lock(&self.ctx.pods);
        if pods
            .get(&key)
            .is_some_and(|runtime| Arc::ptr_eq(runtime, &self.runtime))
        {
            pods.remove(&key);
        }
        drop(pods);
        if ending != Ending::Shutdown {
            // Volumes go with the Pod; container logs stay for post-mortems.
            let _ = std::fs::remove_dir_all(self.dir.join("volumes"));
        }
    }

    /// Runs the Pod until it must stop.
    async fn live(&mut self) -> Ending {
        loop {
            if self.pod.metadata.deletion_timestamp.is_some() {
                return Ending::Deleted;
            }
            match self.prepare().await {
                Ok(()) => break,
                Err((reason, error)) => {
                    self.ctx
                        .log
                        .line(format_args!("pod {} waits: {reason}: {error:#}", self.label));
                    self.model.set_waiting(reason, &format!("{error:#}"));
                    self.report().await;
                    if let Some(ending) = self.wait_for_change(Duration::from_secs(2)).await {
                        return ending;
                    }
                }
            }
        }
        let spec = self.pod.spec.clone().unwrap_or_default();
        let init_containers = spec.init_containers.clone().unwrap_or_default();
        let restart = Restart::from_policy(spec.restart_policy.as_deref());
        let (events_tx, mut events) = mpsc::channel(64);
        let mut next_init = 0;
        self.start_next_stage(&spec.containers, &init_containers, &mut next_init, restart, &events_tx);
        self.report().await;
        loop {
            tokio::select! {
                Some(event) = events.recv() => {
                    self.model.apply(&event);
                    if let ContainerEvent::Exited { name, exit, restarting: false } = &event
                        && exit.code == 0
                        && init_containers.iter().any(|init| init.name == *name)
                    {
                        self.start_next_stage(&spec.containers, &init_containers, &mut next_init, restart, &events_tx);
                    }
                    self.report().await;
                }
                ending = self.wait_for_change(Duration::MAX) => {
                    if let Some(ending) = ending {
                        return ending;
                    }
                }
            }
        }
    }

    /// Waits up to `timeout` for the Pod to change; says whether the worker must stop.
    async fn wait_for_change(&mut self, timeout: Duration) -> Option<Ending> {
        tokio::select! {
            () = tokio::time::sleep(timeout) => None,
            changed = self.updates.changed() => match changed {
                Err(_) => Some(Ending::Shutdown),
                Ok(()) => {
                    self.pod = self.updates.borrow_and_update().clone();
                    self.pod.metadata.deletion_timestamp.is_some().then_some(Ending::Deleted)
                }
            },
            () = self.gone.cancelled() => Some(Ending::Gone),
            () = self.ctx.shutdown.cancelled() => Some(Ending::Shutdown),
        }
    }

    /// Volumes, environment and mounts of every container. The error carries the waiting reason
    /// a kubelet would show.
    async fn prepare(&mut self) -> Result<(), (&'static str, anyhow::Error)> {
        let client = &self.ctx.client;
        let volumes = volumes::prepare(client, &self.pod, &self.dir)
            .await
            .map_err(|e| ("ContainerCreating", e))?;
        let logs = self.dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| ("ContainerCreating", e.into()))?;
        let spec = self.pod.spec.clone().unwrap_or_default();
        let pod_security = spec.security_context.clone().unwrap_or_default();
        let mut prepared = HashMap::new();
        for container in spec.init_containers.iter().flatten().chain(&spec.containers) {
            let config_error = |e| ("CreateContainerConfigError", e);
            let env = env::resolve(client, &self.pod, container).await.map_err(config_error)?;
            let mounts = volumes.mounts_for(container).map_err(config_error)?;
            let security = container.security_context.clone().unwrap_or_default();
            let context = ContainerContext {
                env,
                mounts,
                working_dir: container
                    .working_dir
                    .as_ref()
                    .filter(|dir| !dir.is_empty())
                    .map(PathBuf::from),
                run_as_user: security
                    .run_as_user
                    .or(pod_security.run_as_user)
                    .and_then(|id| u32::try_from(id).ok()),
                run_as_group: security
                    .run_as_group
                    .or(pod_security.run_as_group)
                    .and_then(|id| u32::try_from(id).ok()),
            };
            let log_path = logs.join(format!("{}.log", container.name));
            let runtime = ContainerRuntime {
                context,
                log_path,
                running: watch::channel(false).0,
            };
            prepared.insert(container.name.clone(), Arc::new(runtime));
        }
        *lock(&self.runtime.containers) = prepared;
        Ok(())
    }

    /// Starts the next init container, or all containers once the init containers are done.
    fn start_next_stage(
        &mut self,
        containers: &[Container],
        init_containers: &[Container],
        next_init: &mut usize,
        restart: Restart,
        events: &mpsc::Sender<ContainerEvent>,
    ) {
        if let Some(init) = init_containers.get(*next_init) {
            *next_init += 1;
            // Init containers are never restarted after success.
            let init_restart = if restart == Restart::Never {
                Restart::Never
            } else {
                Restart::OnFailure
            };
            self.start_container(init, init_restart, events);
        } else if *next_init == init_containers.len() {
            *next_init += 1;
            for container in containers {
                self.start_container(container, restart, events);
            }
        }
    }

    fn start_container(&mut self, container: &Container, restart: Restart, events: &mpsc::Sender<ContainerEvent>) {
        let Some(runtime) = lock(&self.runtime.containers).get(&container.name).cloned() else {
            return;
        };
        let argv = command_line(container, &runtime.context.env);
        self.ctx.log.line(format_args!(
            "starting container {} of pod {}: {argv:?}",
            container.name, self.label
        ));
        let run = ContainerRun {
            node: self.ctx.clone(),
            pod: self.label.clone(),
            name: container.name.clone(),
            argv,
            runtime,
            restart,
            events: events.clone(),
            stop: self.runtime.stop.clone(),
            grace_seconds: self.grace_seconds.clone(),
        };
        self.containers.spawn(run.run());
    }

    /// Writes the model's status to the Pod's status subresource.
    async fn report(&mut self) {
        let (namespace, name) = self.key();
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &namespace);
        let patch = json!({ "status": self.model.status() });
        if let Err(error) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            self.ctx.log.line(format_args!(
                "reporting the status of pod {} failed: {error}",
                self.label
            ));
        } else if self.model.is_terminal() {
            self.ctx
                .log
                .line(format_args!("pod {} is {}", self.label, self.model.phase()));
        }
    }
}

/// The container's command and args with `$(VAR)` expanded. Without a command the image's
/// entrypoint would run; images are ignored here, so the container idles (and stays Running).
fn command_line(container: &Container, env: &[(String, String)]) -> Vec<String> {
    let command = container.command.clone().unwrap_or_default();
    if command.is_empty() {
        return vec!["sleep".into(), "infinity".into()];
    }
    command
        .iter()
        .chain(container.args.iter().flatten())
        .map(|part| env::expand(part, env))
        .collect()
}

/// Seconds between SIGTERM and SIGKILL: what the deletion asked for, else the Pod's setting.
fn termination_grace(pod: &Pod) -> u64 {
    let seconds = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| pod.spec.as_ref().and_then(|spec| spec.termination_grace_period_seconds))
        .unwrap_or(30);
    u64::try_from(seconds).unwrap_or(0)
}
