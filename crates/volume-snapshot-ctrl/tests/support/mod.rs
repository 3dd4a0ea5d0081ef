//! What the VolumeBackup and VolumeRestore tests share: the controller in-process for the
//! test's namespace, claims and workloads on the CSI simulator's volumes (host directories, so
//! a test reads the data where it lies), snapshots, backups and restores, and the files of a
//! directory. What every controller's tests share comes from `stowage_e2e::support`.
// Each test binary uses its own part of these helpers.
#![allow(dead_code)]

pub mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use stowage_api::snapshot_storage::{VolumeSnapshot, VolumeSnapshotContent};
use stowage_api::{VolumeBackup, VolumeBackupPhase};
use stowage_e2e::csi::SNAPSHOT_PATH_ANNOTATION;
use stowage_e2e::support::InProcess;
use stowage_e2e::wait_for;

pub use stowage_e2e::support::{apply, condition, create, filesystem_storage, finished, volume_dir, wait_events};

/// The controller (backups and restores), running in-process and watching only `namespace`;
/// stopped on drop.
pub async fn start_controller(client: &kube::Client, namespace: &str) -> anyhow::Result<InProcess> {
    stowage_e2e::support::start_controller(
        client,
        namespace,
        "volume-snapshot-ctrl",
        stowage_volume_snapshot_ctrl::run,
    )
    .await
}

/// Creates a 1Gi ReadWriteOnce PVC and waits until it is bound; returns its host directory.
pub async fn pvc(client: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<PathBuf> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } },
    }))?;
    pvcs.create(&PostParams::default(), &claim).await?;
    volume_dir(client, namespace, name).await
}

/// A Deployment of one idle Pod mounting PVC `claim` at /data.
pub async fn deployment(client: &kube::Client, namespace: &str, name: &str, claim: &str) -> anyhow::Result<()> {
    let mut template = idle_template(name, "app");
    template["spec"]["volumes"] = json!([{ "name": "data", "persistentVolumeClaim": { "claimName": claim } }]);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": { "replicas": 1, "selector": { "matchLabels": { "app": name } }, "template": template },
    }))?;
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    api.create(&PostParams::default(), &deployment).await?;
    wait_ready(client, namespace, "Deployment", name, 1).await
}

/// A StatefulSet of `replicas` idle Pods, each with its own 1Gi claim from template `data`.
pub async fn statefulset(client: &kube::Client, namespace: &str, name: &str, replicas: i32) -> anyhow::Result<()> {
    let statefulset: StatefulSet = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": { "matchLabels": { "app": name } },
            "template": idle_template(name, "db"),
            "volumeClaimTemplates": [{
                "metadata": { "name": "data" },
                "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } },
            }],
        },
    }))?;
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    api.create(&PostParams::default(), &statefulset).await?;
    wait_ready(client, namespace, "StatefulSet", name, replicas).await
}

/// A Pod template (labelled `app=<app>`) of one idle container mounting volume `data` at /data.
fn idle_template(app: &str, container: &str) -> serde_json::Value {
    json!({
        "metadata": { "labels": { "app": app } },
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": container, "image": "debian:12",
                "command": ["sleep", "100000"],
                "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
            }],
        },
    })
}

/// Waits until the Deployment or StatefulSet runs `replicas` ready Pods of its current spec.
pub async fn wait_ready(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    name: &str,
    replicas: i32,
) -> anyhow::Result<()> {
    wait_for(&format!("{kind} {name} to run {replicas} ready Pods"), || async {
        let ready = if kind == "Deployment" {
            let deployment = Api::<Deployment>::namespaced(client.clone(), namespace)
                .get(name)
                .await?;
            let s = deployment.status.unwrap_or_default();
            let counts = [s.ready_replicas, s.updated_replicas, s.replicas];
            s.observed_generation >= deployment.metadata.generation && counts.iter().all(|n| n.unwrap_or(0) == replicas)
        } else {
            let statefulset = Api::<StatefulSet>::namespaced(client.clone(), namespace)
                .get(name)
                .await?;
            let s = statefulset.status.unwrap_or_default();
            let current = s.observed_generation >= statefulset.metadata.generation;
            current && s.ready_replicas.unwrap_or(0) == replicas && s.replicas == replicas
        };
        Ok(ready.then_some(()))
    })
    .await
}

/// Waits until `count` Pods labelled `app=<app>` run; returns their names.
pub async fn running_pods(
    client: &kube::Client,
    namespace: &str,
    app: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    wait_for(&format!("{count} running Pod(s) of {app}"), || async {
        let list = pods.list(&ListParams::default().labels(&format!("app={app}"))).await?;
        let running: Vec<String> = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .map(ResourceExt::name_any)
            .collect();
        Ok((running.len() == count).then_some(running))
    })
    .await
}

/// Sets annotation `key` to `value` on PVC `claim` (the CSI simulator's knobs).
pub async fn annotate_claim(
    client: &kube::Client,
    namespace: &str,
    claim: &str,
    key: &str,
    value: &str,
) -> anyhow::Result<()> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({ "metadata": { "annotations": { key: value } } });
    claims
        .patch(
            claim,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

/// The claims the running Pods with label `app=<app>` mount, sorted.
pub async fn mounted_claims(client: &kube::Client, namespace: &str, app: &str) -> anyhow::Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut claims: Vec<String> = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .flat_map(|p| p.spec.and_then(|s| s.volumes).unwrap_or_default())
        .filter_map(|v| v.persistent_volume_claim.map(|c| c.claim_name))
        .collect();
    claims.sort();
    Ok(claims)
}

/// The names of the PVCs in `namespace`, sorted.
pub async fn pvc_names(client: &kube::Client, namespace: &str) -> anyhow::Result<Vec<String>> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let mut names: Vec<String> = pvcs
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.name_any())
        .collect();
    names.sort();
    Ok(names)
}

/// Creates a VolumeBackup and waits until it succeeded.
pub async fn backup(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    spec: serde_json::Value,
) -> anyhow::Result<VolumeBackup> {
    create::<VolumeBackup>(client, namespace, name, spec).await?;
    let backup: VolumeBackup = finished(client, namespace, name).await?;
    let state = backup.status.clone().unwrap_or_default();
    anyhow::ensure!(
        state.phase == VolumeBackupPhase::Succeeded,
        "VolumeBackup {name} did not succeed: {state:#?}"
    );
    Ok(backup)
}

/// The VolumeSnapshots in `namespace`, by name.
pub async fn snapshots(client: &kube::Client, namespace: &str) -> anyhow::Result<BTreeMap<String, VolumeSnapshot>> {
    let api: Api<VolumeSnapshot> = Api::namespaced(client.clone(), namespace);
    let list = api.list(&ListParams::default()).await?;
    Ok(list.items.into_iter().map(|s| (s.name_any(), s)).collect())
}

/// A snapshot's content: the host directory of its copy, and its cut time (ns since the epoch).
pub async fn snapshot_content(
    client: &kube::Client,
    namespace: &str,
    snapshot: &str,
) -> anyhow::Result<(PathBuf, i64)> {
    let api: Api<VolumeSnapshot> = Api::namespaced(client.clone(), namespace);
    let snapshot = api.get(snapshot).await?;
    let content_name = snapshot
        .status
        .and_then(|s| s.bound_volume_snapshot_content_name)
        .context("the snapshot is not bound to a content")?;
    let content = Api::<VolumeSnapshotContent>::all(client.clone())
        .get(&content_name)
        .await?;
    let path = content
        .annotations()
        .get(SNAPSHOT_PATH_ANNOTATION)
        .map(PathBuf::from)
        .context("the content has no snapshot path")?;
    let cut = content
        .status
        .and_then(|s| s.creation_time)
        .context("the content has no creation time")?;
    Ok((path, cut))
}

/// Every file under `dir` with its bytes, by relative path.
pub fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if let (Ok(relative), Ok(bytes)) = (path.strip_prefix(root), std::fs::read(&path)) {
                out.insert(relative.to_string_lossy().into_owned(), bytes);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Every file under `dir` with its content as text, by relative path.
pub fn files(dir: &Path) -> BTreeMap<String, String> {
    tree(dir)
        .into_iter()
        .map(|(path, bytes)| (path, String::from_utf8_lossy(&bytes).into_owned()))
        .collect()
}

/// Writes `files` (relative path → content) under `dir`.
pub fn write_files(dir: &Path, files: &[(&str, &str)]) -> anyhow::Result<()> {
    for (path, content) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, content).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
