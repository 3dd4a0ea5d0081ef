//! What the VolumeRestore tests share: the controller in-process for the test's namespace,
//! workloads on simulated volumes, the volumes' host directories, backups and restores.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use stowage_api::{BackupStorage, VolumeBackup, VolumeBackupPhase, VolumeRestore};
use stowage_e2e::wait_for;
use stowage_operator::{Context, Metrics};

/// The controller (backups and restores), running in-process and watching only `namespace`;
/// stopped on drop.
pub struct Controller {
    pub ctx: Arc<Context>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.ctx.shutdown.cancel();
        self.task.abort();
    }
}

pub async fn start_controller(client: &kube::Client, namespace: &str) -> anyhow::Result<Controller> {
    stowage_e2e::crds::apply_crds(client, &stowage_api::crds()).await?;
    let ctx = Context::new(
        client.clone(),
        "volume-snapshot-ctrl",
        namespace,
        None,
        Arc::new(Metrics::new()?),
    )
    .watching(Some(namespace.to_string()));
    let ctx = Arc::new(ctx);
    let task = tokio::spawn(stowage_volume_snapshot_ctrl::run(ctx.clone()));
    Ok(Controller { ctx, task })
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

/// The host directory behind PVC `name`, once it is bound.
pub async fn volume_dir(client: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<PathBuf> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    wait_for(&format!("PVC {name} to be bound to a host directory"), || async {
        let claim = pvcs.get(name).await?;
        let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        let Some(volume) = claim.spec.and_then(|s| s.volume_name).filter(|_| bound) else {
            return Ok(None);
        };
        let volume = volumes.get(&volume).await?;
        Ok(volume.spec.and_then(|s| s.host_path).map(|h| PathBuf::from(h.path)))
    })
    .await
}

/// A Deployment of one idle Pod mounting PVC `claim` at /data.
pub async fn deployment(client: &kube::Client, namespace: &str, name: &str, claim: &str) -> anyhow::Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "app", "image": "debian:12",
                        "command": ["sleep", "100000"],
                        "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
                    }],
                    "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": claim } }],
                },
            },
        },
    }))?;
    api.create(&PostParams::default(), &deployment).await?;
    wait_ready(client, namespace, "Deployment", name, 1).await
}

/// A StatefulSet of `replicas` idle Pods, each with its own 1Gi claim from template `data`.
pub async fn statefulset(client: &kube::Client, namespace: &str, name: &str, replicas: i32) -> anyhow::Result<()> {
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let statefulset: StatefulSet = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "db", "image": "debian:12",
                        "command": ["sleep", "100000"],
                        "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
                    }],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": { "name": "data" },
                "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } },
            }],
        },
    }))?;
    api.create(&PostParams::default(), &statefulset).await?;
    wait_ready(client, namespace, "StatefulSet", name, replicas).await
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
            let d = Api::<Deployment>::namespaced(client.clone(), namespace)
                .get(name)
                .await?;
            let s = d.status.unwrap_or_default();
            s.observed_generation >= d.metadata.generation
                && s.ready_replicas.unwrap_or(0) == replicas
                && s.updated_replicas.unwrap_or(0) == replicas
                && s.replicas.unwrap_or(0) == replicas
        } else {
            let s = Api::<StatefulSet>::namespaced(client.clone(), namespace)
                .get(name)
                .await?;
            let st = s.status.unwrap_or_default();
            st.observed_generation >= s.metadata.generation
                && st.ready_replicas.unwrap_or(0) == replicas
                && st.replicas == replicas
        };
        Ok(ready.then_some(()))
    })
    .await
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

/// Creates a VolumeBackup and waits until it succeeded.
pub async fn backup(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    spec: serde_json::Value,
) -> anyhow::Result<VolumeBackup> {
    let api: Api<VolumeBackup> = Api::namespaced(client.clone(), namespace);
    let object: VolumeBackup = serde_json::from_value(json!({
        "apiVersion": "stowage.io/v1alpha1", "kind": "VolumeBackup",
        "metadata": { "name": name }, "spec": spec,
    }))
    .context("a VolumeBackup from the test's JSON")?;
    api.create(&PostParams::default(), &object).await?;
    let backup = wait_for(&format!("VolumeBackup {name} to finish"), || async {
        let backup = api.get(name).await?;
        let phase = backup.status.as_ref().map(|s| s.phase).unwrap_or_default();
        Ok(phase.is_final().then_some(backup))
    })
    .await?;
    let state = backup.status.clone().unwrap_or_default();
    anyhow::ensure!(
        state.phase == VolumeBackupPhase::Succeeded,
        "VolumeBackup {name} did not succeed: {state:#?}"
    );
    Ok(backup)
}

pub async fn create_restore(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    spec: serde_json::Value,
) -> anyhow::Result<()> {
    let api: Api<VolumeRestore> = Api::namespaced(client.clone(), namespace);
    let object: VolumeRestore = serde_json::from_value(json!({
        "apiVersion": "stowage.io/v1alpha1", "kind": "VolumeRestore",
        "metadata": { "name": name }, "spec": spec,
    }))
    .context("a VolumeRestore from the test's JSON")?;
    api.create(&PostParams::default(), &object).await?;
    Ok(())
}

/// Waits until VolumeRestore `name` is Succeeded or Failed and returns it.
pub async fn finished_restore(client: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<VolumeRestore> {
    let api: Api<VolumeRestore> = Api::namespaced(client.clone(), namespace);
    wait_for(&format!("VolumeRestore {name} to finish"), || async {
        let restore = api.get(name).await?;
        let phase = restore.status.as_ref().map(|s| s.phase).unwrap_or_default();
        Ok(phase.is_final().then_some(restore))
    })
    .await
}

/// Condition `type_`: (status, reason, message).
pub fn condition(conditions: &[Condition], type_: &str) -> (String, String, String) {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

/// Reasons of the Events about object `name`, oldest first.
pub async fn event_reasons(client: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<Vec<String>> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    Ok(events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .filter_map(|e| e.reason)
        .collect())
}

/// Every file under `dir` with its content, by relative path.
pub fn files(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if let Ok(relative) = path.strip_prefix(root) {
                let content = std::fs::read_to_string(&path).unwrap_or_else(|e| format!("<unreadable: {e}>"));
                out.insert(relative.to_string_lossy().into_owned(), content);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
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

/// A Filesystem BackupStorage named after the namespace, in `dir`.
pub async fn filesystem_storage(client: &kube::Client, namespace: &str, dir: &Path) -> anyhow::Result<String> {
    let name = format!("{namespace}-fs");
    let storages: Api<BackupStorage> = Api::all(client.clone());
    let storage: BackupStorage = serde_json::from_value(json!({
        "apiVersion": "stowage.io/v1alpha1", "kind": "BackupStorage",
        "metadata": { "name": name },
        "spec": { "type": "Filesystem", "filesystem": { "path": dir }, "prefix": "backups" },
    }))?;
    storages.create(&PostParams::default(), &storage).await?;
    Ok(name)
}
