//! The Node object and its heartbeats.
//!
//! kube-controller-manager runs the node lifecycle controller: a Node whose Lease and Ready
//! condition go stale for 40 s is marked NotReady and its Pods are evicted. A kubelet renews
//! its Lease every 10 s and posts its status; so do we.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::NodeContext;

const LEASE_NAMESPACE: &str = "kube-node-lease";
const LEASE_DURATION_SECONDS: i32 = 40;
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// Creates (or takes over) the Node and its Lease, and posts a Ready status.
pub(super) async fn register(ctx: &NodeContext, kubelet_port: u16) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": ctx.name, "labels": labels(&ctx.name, &ctx.zone) },
    }))?;
    ignore_conflict(nodes.create(&PostParams::default(), &node).await)
        .with_context(|| format!("registering Node {}", ctx.name))?;
    let started = Time(Timestamp::now());
    let status = node_status(kubelet_port, &started);
    nodes
        .patch_status(&ctx.name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .with_context(|| format!("posting the status of Node {}", ctx.name))?;

    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let namespace: Namespace = serde_json::from_value(
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": LEASE_NAMESPACE } }),
    )?;
    ignore_conflict(namespaces.create(&PostParams::default(), &namespace).await)
        .context("creating namespace kube-node-lease")?;
    let uid = nodes.get(&ctx.name).await?.metadata.uid.unwrap_or_default();
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), LEASE_NAMESPACE);
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": ctx.name,
            "ownerReferences": [{ "apiVersion": "v1", "kind": "Node", "name": ctx.name, "uid": uid }],
        },
        "spec": {
            "holderIdentity": ctx.name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": MicroTime(Timestamp::now()),
        },
    }))?;
    ignore_conflict(leases.create(&PostParams::default(), &lease).await)
        .with_context(|| format!("creating Lease {LEASE_NAMESPACE}/{}", ctx.name))?;
    renew(ctx, kubelet_port, &started).await
}

/// Renews the Lease and the Ready condition every 10 s until the node shuts down.
pub(super) async fn run(ctx: Arc<NodeContext>, kubelet_port: u16) {
    let started = Time(Timestamp::now());
    loop {
        tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            () = tokio::time::sleep(HEARTBEAT_INTERVAL) => {}
        }
        if let Err(error) = renew(&ctx, kubelet_port, &started).await {
            ctx.log.line(format_args!("heartbeat failed: {error:#}"));
        }
    }
}

async fn renew(ctx: &NodeContext, kubelet_port: u16, started: &Time) -> anyhow::Result<()> {
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), LEASE_NAMESPACE);
    let renewal = json!({ "spec": {
        "holderIdentity": ctx.name,
        "leaseDurationSeconds": LEASE_DURATION_SECONDS,
        "renewTime": MicroTime(Timestamp::now()),
    }});
    leases
        .patch(&ctx.name, &PatchParams::default(), &Patch::Merge(renewal))
        .await
        .context("renewing the node Lease")?;
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    nodes
        .patch_status(
            &ctx.name,
            &PatchParams::default(),
            &Patch::Merge(node_status(kubelet_port, started)),
        )
        .await
        .context("posting the node status")?;
    Ok(())
}

/// The well-known labels a kubelet and a cloud provider put on a Node, which nodeSelectors and
/// node affinities select on.
fn labels(name: &str, zone: &str) -> Value {
    json!({
        "kubernetes.io/hostname": name,
        "topology.kubernetes.io/zone": zone,
        "topology.kubernetes.io/region": "stowage-testbed",
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        "beta.kubernetes.io/os": "linux",
        "node.kubernetes.io/instance-type": "stowage-node-simulator",
    })
}

/// A status that passes every check a scheduler or controller makes: Ready, no pressure, ample
/// resources. `started` is the conditions' lastTransitionTime, which must not move on heartbeats.
fn node_status(kubelet_port: u16, started: &Time) -> Value {
    let now = Time(Timestamp::now());
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": started,
        })
    };
    let resources = json!({ "cpu": "32", "memory": "128Gi", "pods": "500", "ephemeral-storage": "1Ti" });
    json!({ "status": {
        "addresses": [{ "type": "InternalIP", "address": "127.0.0.1" }],
        "daemonEndpoints": { "kubeletEndpoint": { "Port": kubelet_port } },
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "node simulator"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "node simulator"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "node simulator"),
            condition("Ready", "True", "KubeletReady", "stowage node simulator is posting ready status"),
        ],
        "nodeInfo": {
            "machineID": "stowage-node-simulator",
            "systemUUID": "stowage-node-simulator",
            "bootID": "stowage-node-simulator",
            "kernelVersion": "",
            "osImage": "stowage node simulator (host processes)",
            "containerRuntimeVersion": "host-process://0",
            "kubeletVersion": "v1.20.2",
            "kubeProxyVersion": "v1.20.2",
            "operatingSystem": "linux",
            "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        },
    }})
}

/// Treats "already exists" as success: the node may be restarted against the same API server.
fn ignore_conflict<T>(result: kube::Result<T>) -> kube::Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(error) => Err(error),
    }
}
