//! kube-scheduler's part: bind every unscheduled Pod (of the default scheduler) to the node that
//! fits it best, or mark it unschedulable with the scheduler's own message.
//!
//! Per Pod, in creation order: the PreFilter checks of the volume plugins (every claim exists and
//! is bound, no ReadWriteOncePod claim is in use by another Pod), then [`fit::filter`] on each
//! node, then the best score: preferred node affinity (weight 2) and untolerated PreferNoSchedule
//! taints (weight 3), normalised as kube-scheduler does; ties go to the node running the fewest
//! Pods, so Pods created together spread over the nodes. A Pod that fits nowhere gets
//! `PodScheduled=False`, reason `Unschedulable`, a message like "0/3 nodes are available: …" and
//! a `FailedScheduling` Event; it is tried again on every change in the cluster.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, NodeSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use super::cluster::{ClusterView, claim_names, is_terminal, node_of};
use super::{events, fit};

const SCHEDULER_NAME: &str = "default-scheduler";
/// kube-scheduler's default plugin weights for the two scores that matter here.
const NODE_AFFINITY_WEIGHT: i64 = 2;
const TAINT_TOLERATION_WEIGHT: i64 = 3;

/// Schedules until the cluster simulator stops.
pub(super) async fn run(view: Arc<ClusterView>) {
    let mut scheduler = Scheduler::default();
    let mut passes = view.passes();
    while passes.next().await {
        scheduler.pass(&view).await;
    }
}

#[derive(Default)]
struct Scheduler {
    /// Pods bound by us that the cache does not show bound yet, by UID: their node.
    assumed: HashMap<String, String>,
    /// The last unschedulable message reported per Pod UID, so a Pod that still fits nowhere
    /// for the same reason gets no new condition write or Event.
    reported: HashMap<String, String>,
}

/// What is already placed: Pods per node, and the ReadWriteOncePod claims in use.
#[derive(Default)]
struct Placed {
    pods_per_node: HashMap<String, usize>,
    /// (namespace, claim) of every claim a placed, unfinished Pod uses.
    claims_in_use: HashSet<(String, String)>,
}

impl Placed {
    fn add(&mut self, pod: &Pod, node: &str) {
        *self.pods_per_node.entry(node.to_owned()).or_default() += 1;
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        for claim in claim_names(pod) {
            self.claims_in_use.insert((namespace.clone(), claim.to_owned()));
        }
    }
}

impl Placed {
    /// Whether a claim with access `modes` is ReadWriteOncePod and already used by a placed Pod
    /// (kube-scheduler's VolumeRestrictions: one Pod in the whole cluster).
    fn conflicts_exclusively(&self, namespace: &str, claim: &str, modes: &[String]) -> bool {
        modes.iter().any(|mode| mode == "ReadWriteOncePod")
            && self.claims_in_use.contains(&(namespace.to_owned(), claim.to_owned()))
    }
}

impl Scheduler {
    async fn pass(&mut self, view: &ClusterView) {
        let pods = view.pods.state();
        let mut nodes: Vec<Arc<Node>> = view
            .nodes
            .state()
            .into_iter()
            .filter(|node| node.metadata.deletion_timestamp.is_none())
            .collect();
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        view.log
            .line(format_args!("pass: {} pods, {} nodes", pods.len(), nodes.len()));
        let uid = |pod: &Pod| pod.metadata.uid.clone().unwrap_or_default();
        let live: HashSet<String> = pods.iter().map(|pod| uid(pod)).collect();
        self.assumed.retain(|pod_uid, _| live.contains(pod_uid));
        self.reported.retain(|pod_uid, _| live.contains(pod_uid));

        let mut placed = Placed::default();
        let mut pending = Vec::new();
        for pod in &pods {
            if is_terminal(pod) {
                continue;
            }
            let node = match node_of(pod) {
                // The cache caught up with our binding: no need to assume it any more.
                Some(node) => {
                    self.assumed.remove(&uid(pod));
                    Some(node.to_owned())
                }
                None => self.assumed.get(&uid(pod)).cloned(),
            };
            match node {
                Some(node) => placed.add(pod, &node),
                None if wants_us(pod) => pending.push(pod.clone()),
                None => {}
            }
        }
        pending.sort_by(|a, b| {
            let created = |pod: &Pod| pod.metadata.creation_timestamp.clone().map(|time| time.0);
            created(a)
                .cmp(&created(b))
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        });
        for pod in pending {
            match choose_node(view, &pod, &nodes, &placed) {
                Ok(node) => {
                    if bind(view, &pod, &node).await {
                        self.reported.remove(&uid(&pod));
                        self.assumed.insert(uid(&pod), node.clone());
                        placed.add(&pod, &node);
                    }
                }
                Err(message) => {
                    if self.reported.get(&uid(&pod)) != Some(&message) {
                        report_unschedulable(view, &pod, &message).await;
                        self.reported.insert(uid(&pod), message);
                    }
                }
            }
        }
    }
}

/// An unbound, live Pod that names the default scheduler and is not held back by a gate.
fn wants_us(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    pod.metadata.deletion_timestamp.is_none()
        && matches!(spec.scheduler_name.as_deref(), None | Some("" | SCHEDULER_NAME))
        && spec.scheduling_gates.as_ref().is_none_or(Vec::is_empty)
}

/// The best node for `pod`, or the scheduler's message saying why there is none.
fn choose_node(view: &ClusterView, pod: &Pod, nodes: &[Arc<Node>], placed: &Placed) -> Result<String, String> {
    let no_preemption = format!(
        "preemption: 0/{0} nodes are available: {0} Preemption is not helpful for scheduling.",
        nodes.len()
    );
    let volume_affinities = volume_prefilter(view, pod, placed)
        .map_err(|reason| format!("0/{} nodes are available: {reason}. {no_preemption}", nodes.len()))?;
    let selectors: Vec<&NodeSelector> = volume_affinities.iter().collect();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut feasible = Vec::new();
    for node in nodes {
        match fit::filter(pod, node, &selectors) {
            Ok(()) => feasible.push(node),
            Err(reason) => *reasons.entry(reason).or_default() += 1,
        }
    }
    if feasible.is_empty() {
        let listed: Vec<String> = reasons
            .iter()
            .map(|(reason, count)| format!("{count} {reason}"))
            .collect();
        return Err(format!(
            "0/{} nodes are available: {}. {no_preemption}",
            nodes.len(),
            listed.join(", ")
        ));
    }
    let affinity: Vec<i64> = feasible.iter().map(|node| fit::preferred_affinity(pod, node)).collect();
    let intolerable: Vec<i64> = feasible
        .iter()
        .map(|node| fit::intolerable_preferences(pod, node))
        .collect();
    let max_affinity = affinity.iter().copied().max().unwrap_or(0);
    let max_intolerable = intolerable.iter().copied().max().unwrap_or(0);
    let best = feasible
        .iter()
        .enumerate()
        .map(|(index, node)| {
            // kube-scheduler's DefaultNormalizeScore: each plugin's scores scaled to 0..=100.
            let affinity_score = if max_affinity > 0 {
                affinity[index] * 100 / max_affinity
            } else {
                0
            };
            let taint_score = if max_intolerable > 0 {
                100 - intolerable[index] * 100 / max_intolerable
            } else {
                100
            };
            let score = NODE_AFFINITY_WEIGHT * affinity_score + TAINT_TOLERATION_WEIGHT * taint_score;
            let name = node.metadata.name.clone().unwrap_or_default();
            let running = placed.pods_per_node.get(&name).copied().unwrap_or(0);
            (score, std::cmp::Reverse(running), std::cmp::Reverse(name))
        })
        .max();
    Ok(best.map(|(_, _, std::cmp::Reverse(name))| name).unwrap_or_default())
}

/// The volume plugins' PreFilter: every claim exists and is bound, and no ReadWriteOncePod claim
/// is used by another Pod. Returns the node affinities of the bound volumes.
fn volume_prefilter(view: &ClusterView, pod: &Pod, placed: &Placed) -> Result<Vec<NodeSelector>, String> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut affinities = Vec::new();
    let mut unbound = false;
    for name in claim_names(pod) {
        let claim = view
            .claim(&namespace, name)
            .ok_or_else(|| format!("persistentvolumeclaim \"{name}\" not found"))?;
        let modes = claim
            .spec
            .as_ref()
            .and_then(|spec| spec.access_modes.clone())
            .unwrap_or_default();
        if placed.conflicts_exclusively(&namespace, name, &modes) {
            return Err(
                "node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode".into(),
            );
        }
        match view.bound_volume(&claim) {
            Some(volume) => {
                let required = volume
                    .spec
                    .as_ref()
                    .and_then(|spec| spec.node_affinity.as_ref())
                    .and_then(|affinity| affinity.required.clone());
                affinities.extend(required);
            }
            None => unbound = true,
        }
    }
    if unbound {
        return Err("pod has unbound immediate PersistentVolumeClaims".into());
    }
    Ok(affinities)
}

/// Creates the Pod's Binding (the API server then sets `PodScheduled=True`) and records the
/// `Scheduled` Event. Says whether the Pod is now bound.
async fn bind(view: &ClusterView, pod: &Pod, node: &str) -> bool {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(view.client.clone(), &namespace);
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": { "name": name, "namespace": namespace, "uid": pod.metadata.uid },
        "target": { "apiVersion": "v1", "kind": "Node", "name": node },
    });
    match api
        .create_subresource::<_, serde_json::Value>("binding", &name, &PostParams::default(), &binding)
        .await
    {
        Ok(_) => {
            view.log.line(format_args!("bound pod {namespace}/{name} to {node}"));
            let note = format!("Successfully assigned {namespace}/{name} to {node}");
            if let Err(error) = events::record(
                &view.client,
                pod,
                "Normal",
                "Scheduled",
                "Binding",
                &note,
                SCHEDULER_NAME,
            )
            .await
            {
                view.log.line(format_args!(
                    "recording the Scheduled event of {namespace}/{name} failed: {error:#}"
                ));
            }
            true
        }
        Err(error) => {
            // 409: bound meanwhile (nodeName set by someone else); 404: deleted. Either way the
            // next pass sees the truth.
            view.log
                .line(format_args!("binding pod {namespace}/{name} to {node} failed: {error}"));
            false
        }
    }
}

/// Writes `PodScheduled=False` (reason Unschedulable) and a `FailedScheduling` Event.
async fn report_unschedulable(view: &ClusterView, pod: &Pod, message: &str) {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    view.log
        .line(format_args!("pod {namespace}/{name} is unschedulable: {message}"));
    let condition = json!({
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": message,
        "lastProbeTime": null,
        "lastTransitionTime": Time(Timestamp::now()),
    });
    // A strategic merge keyed by condition type, as kube-scheduler patches it.
    let patch = json!({ "status": { "conditions": [condition] } });
    let api: Api<Pod> = Api::namespaced(view.client.clone(), &namespace);
    if let Err(error) = api
        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
    {
        view.log.line(format_args!(
            "reporting pod {namespace}/{name} unschedulable failed: {error}"
        ));
    }
    if let Err(error) = events::record(
        &view.client,
        pod,
        "Warning",
        "FailedScheduling",
        "Scheduling",
        message,
        SCHEDULER_NAME,
    )
    .await
    {
        view.log.line(format_args!(
            "recording the FailedScheduling event of {namespace}/{name} failed: {error:#}"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_write_once_pod_claim_admits_one_pod_in_the_cluster() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": "db", "namespace": "shop" },
            "spec": {
                "containers": [{ "name": "main" }],
                "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": "data" } }],
            },
        }))
        .expect("a Pod");
        let mut placed = Placed::default();
        let exclusive = vec!["ReadWriteOncePod".to_owned()];
        let shared = vec!["ReadWriteOnce".to_owned()];
        assert!(!placed.conflicts_exclusively("shop", "data", &exclusive));
        placed.add(&pod, "node-a");
        assert!(placed.conflicts_exclusively("shop", "data", &exclusive));
        assert!(
            !placed.conflicts_exclusively("shop", "data", &shared),
            "ReadWriteOnce is the attach-detach controller's concern"
        );
        assert!(
            !placed.conflicts_exclusively("other", "data", &exclusive),
            "claims are namespaced"
        );
        assert_eq!(placed.pods_per_node.get("node-a"), Some(&1));
    }
}
