//! kube-controller-manager's attach-detach controller, for the volumes the CSI simulator
//! provisions: such a volume, unless its access modes allow several nodes (ReadWriteMany,
//! ReadOnlyMany), is attached to one node at a time, as block storage is.
//!
//! A volume is attached to the node of the first Pod (by creation time) that runs there and
//! uses it, and stays attached while any unfinished Pod on that node still does. A Pod on another
//! node meanwhile gets a `FailedAttachVolume` Warning Event ("Multi-Attach error for volume …
//! Volume is already used by pod(s) …", as the real controller words it) and its kubelet keeps it
//! in ContainerCreating until the volume is detached and attached to its node. Attachments are
//! written to each Node's `status.volumesAttached`, which is where the kubelet
//! ([`super::volumes`]) looks before it mounts the volume.
//!
//! The scheduler does not steer Pods to where a ReadWriteOnce volume is attached (kube-scheduler
//! does not either): a Pod that must share such a volume with a running Pod must ask for that
//! Pod's node itself, or it waits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, Pod};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::cluster::{ClusterView, claim_names, is_terminal, node_of};
use super::events;

const CONTROLLER_NAME: &str = "attachdetach-controller";

/// The name under which `volume` appears in `status.volumesAttached`, or None when it needs no
/// attachment to one node (not provisioned by the CSI simulator, or multi-node access modes).
pub(super) fn attachment_name(volume: &PersistentVolume) -> Option<String> {
    let provisioner = volume
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get("pv.kubernetes.io/provisioned-by"));
    if provisioner.map(String::as_str) != Some(crate::csi::DRIVER) {
        return None;
    }
    let modes = volume
        .spec
        .as_ref()
        .and_then(|spec| spec.access_modes.clone())
        .unwrap_or_default();
    if modes
        .iter()
        .any(|mode| mode == "ReadWriteMany" || mode == "ReadOnlyMany")
    {
        return None;
    }
    let name = volume.metadata.name.as_deref()?;
    Some(format!("kubernetes.io/csi/{}^{name}", crate::csi::DRIVER))
}

/// Whether `node` lists `attachment` in its `status.volumesAttached`.
pub(super) fn is_attached(node: &Node, attachment: &str) -> bool {
    node.status
        .as_ref()
        .and_then(|status| status.volumes_attached.as_ref())
        .is_some_and(|attached| attached.iter().any(|volume| volume.name == attachment))
}

/// Attaches and detaches until the cluster simulator stops.
pub(super) async fn run(view: Arc<ClusterView>) {
    let mut controller = AttachDetach::default();
    let mut passes = view.passes();
    while passes.next().await {
        controller.pass(&view).await;
    }
}

#[derive(Default)]
struct AttachDetach {
    /// Whether `attached` was read back from the Nodes (after a restart of the bed).
    loaded: bool,
    /// Attachment name → the node the volume is attached to.
    attached: BTreeMap<String, String>,
    /// Each node's `status.volumesAttached` as last written.
    written: HashMap<String, Vec<String>>,
    /// (Pod UID, attachment) pairs whose Multi-Attach error was reported.
    reported: HashSet<(String, String)>,
}

/// A volume a Pod on a node needs attached there.
struct Need {
    attachment: String,
    volume: String,
    node: String,
    pod: Arc<Pod>,
}

impl AttachDetach {
    async fn pass(&mut self, view: &ClusterView) {
        let nodes = view.nodes.state();
        if !self.loaded {
            for node in &nodes {
                let name = node.metadata.name.clone().unwrap_or_default();
                let listed: Vec<String> = node
                    .status
                    .iter()
                    .flat_map(|status| status.volumes_attached.iter().flatten())
                    .map(|volume| volume.name.clone())
                    .collect();
                for attachment in &listed {
                    self.attached.insert(attachment.clone(), name.clone());
                }
                self.written.insert(name, listed);
            }
            self.loaded = true;
        }
        let needs = needs(view);
        let wanted: HashSet<(&str, &str)> = needs
            .iter()
            .map(|need| (need.attachment.as_str(), need.node.as_str()))
            .collect();
        self.attached.retain(|attachment, node| {
            let keep = wanted.contains(&(attachment.as_str(), node.as_str()));
            if !keep {
                view.log.line(format_args!("detached {attachment} from {node}"));
            }
            keep
        });
        for need in &needs {
            match self.attached.get(&need.attachment) {
                None => {
                    view.log
                        .line(format_args!("attached {} to {}", need.attachment, need.node));
                    self.attached.insert(need.attachment.clone(), need.node.clone());
                }
                Some(node) if *node == need.node => {}
                Some(node) => {
                    let key = (
                        need.pod.metadata.uid.clone().unwrap_or_default(),
                        need.attachment.clone(),
                    );
                    if self.reported.insert(key) {
                        let users = users_on(&needs, &need.attachment, node);
                        report_multi_attach(view, need, &users).await;
                    }
                }
            }
        }
        let live: HashSet<String> = view
            .pods
            .state()
            .iter()
            .filter_map(|pod| pod.metadata.uid.clone())
            .collect();
        self.reported.retain(|(uid, _)| live.contains(uid));
        self.write_node_statuses(view, &nodes).await;
    }

    /// Writes `status.volumesAttached` of every node whose attachments changed.
    async fn write_node_statuses(&mut self, view: &ClusterView, nodes: &[Arc<Node>]) {
        let api: Api<Node> = Api::all(view.client.clone());
        for node in nodes {
            let name = node.metadata.name.clone().unwrap_or_default();
            let listed: Vec<String> = self
                .attached
                .iter()
                .filter(|(_, attached_to)| **attached_to == name)
                .map(|(attachment, _)| attachment.clone())
                .collect();
            if self.written.get(&name) == Some(&listed) {
                continue;
            }
            let volumes: Vec<_> = listed
                .iter()
                .map(|attachment| json!({ "name": attachment, "devicePath": "" }))
                .collect();
            let patch = json!({ "status": { "volumesAttached": volumes } });
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {
                    self.written.insert(name, listed);
                }
                Err(error) => view.log.line(format_args!(
                    "writing the attached volumes of node {name} failed: {error}"
                )),
            }
        }
    }
}

/// Every (attachable volume, node) that an unfinished Pod bound to a node uses, oldest Pod first.
fn needs(view: &ClusterView) -> Vec<Need> {
    let mut pods = view.pods.state();
    pods.sort_by(|a, b| {
        let created = |pod: &Pod| pod.metadata.creation_timestamp.clone().map(|time| time.0);
        created(a)
            .cmp(&created(b))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    let mut needs = Vec::new();
    for pod in pods {
        let Some(node) = node_of(&pod).map(str::to_owned) else {
            continue;
        };
        if is_terminal(&pod) {
            continue;
        }
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        for claim_name in claim_names(&pod) {
            let Some(claim) = view.claim(&namespace, claim_name) else {
                continue;
            };
            let Some(volume) = view.bound_volume(&claim) else {
                continue;
            };
            if let Some(attachment) = attachment_name(&volume) {
                needs.push(Need {
                    attachment,
                    volume: volume.metadata.name.clone().unwrap_or_default(),
                    node: node.clone(),
                    pod: pod.clone(),
                });
            }
        }
    }
    needs
}

/// The Pods on `node` that use `attachment`.
fn users_on<'a>(needs: &'a [Need], attachment: &str, node: &str) -> Vec<&'a Pod> {
    needs
        .iter()
        .filter(|need| need.attachment == attachment && need.node == node)
        .map(|need| need.pod.as_ref())
        .collect()
}

/// The attach-detach controller's Warning, worded as its `reportMultiAttachError` words it.
async fn report_multi_attach(view: &ClusterView, need: &Need, users: &[&Pod]) {
    let namespace = need.pod.metadata.namespace.as_deref().unwrap_or_default();
    let same_namespace: Vec<&str> = users
        .iter()
        .filter(|pod| pod.metadata.namespace.as_deref() == Some(namespace))
        .filter_map(|pod| pod.metadata.name.as_deref())
        .collect();
    let detail = if !same_namespace.is_empty() {
        format!("Volume is already used by pod(s) {}", same_namespace.join(", "))
    } else if !users.is_empty() {
        format!(
            "Volume is already used by {} pod(s) in different namespaces",
            users.len()
        )
    } else {
        "Volume is already exclusively attached to one node and can't be attached to another".into()
    };
    let note = format!("Multi-Attach error for volume \"{}\" {detail}", need.volume);
    let name = need.pod.metadata.name.as_deref().unwrap_or_default();
    view.log.line(format_args!("pod {namespace}/{name}: {note}"));
    if let Err(error) = events::record(
        &view.client,
        &need.pod,
        "Warning",
        "FailedAttachVolume",
        "Attach",
        &note,
        CONTROLLER_NAME,
    )
    .await
    {
        view.log.line(format_args!(
            "recording the FailedAttachVolume event of {namespace}/{name} failed: {error:#}"
        ));
    }
}
