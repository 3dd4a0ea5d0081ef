//! What the VolumeBackup tests share: the controller in-process for the test's namespace, an
//! application that writes numbered records into its volume and honours freeze and thaw
//! hooks, the volumes' and snapshots' host directories, and waits.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use serde_json::json;
use stowage_api::snapshot_storage::{VolumeSnapshot, VolumeSnapshotContent};
use stowage_api::{BackupStorage, VolumeBackup};
use stowage_e2e::csi::SNAPSHOT_PATH_ANNOTATION;
use stowage_e2e::wait_for;
use stowage_operator::{Context, Metrics};

/// The controller, running in-process and watching only `namespace`; stopped on drop.
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

/// Server-side applies `manifest` (any kind) in `namespace`.
pub async fn apply(client: &kube::Client, namespace: &str, manifest: serde_json::Value) -> anyhow::Result<()> {
    let api_version = manifest["apiVersion"].as_str().context("apiVersion")?;
    let kind = manifest["kind"].as_str().context("kind")?;
    let name = manifest["metadata"]["name"].as_str().context("metadata.name")?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    api.patch(
        name,
        &PatchParams::apply("stowage-test").force(),
        &Patch::Apply(&manifest),
    )
    .await
    .with_context(|| format!("applying {kind} {name}"))?;
    Ok(())
}

/// The writer: every 20 ms, unless `/data/frozen` exists, appends the next number to
/// `/data/records` (restarting from the last one written, so a restarted container goes on).
pub const WRITER: &str = "i=$(tail -n 1 /data/records 2>/dev/null || echo 0); \
    while true; do if [ ! -e /data/frozen ]; then i=$((i+1)); echo $i >> /data/records; fi; sleep 0.02; done";
/// Freeze: stop the writer, give it time to finish a write, then note the time (ns) and the
/// number of records.
pub const PRE_HOOK: &str =
    "touch /data/frozen && sleep 0.2 && echo \"$(date +%s%N) $(wc -l < /data/records)\" > /data/freeze-marker";
/// Thaw: note the time (ns), then let the writer go on.
pub const POST_HOOK: &str = "date +%s%N > /data/thaw-marker && rm -f /data/frozen";

/// A Pod template of the writer mounting `claim` at /data, with the hooks in `annotations`.
pub fn writer_template(app: &str, claim: Option<&str>, annotations: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({
        "containers": [{
            "name": "writer",
            "image": "busybox",
            "command": ["sh", "-c", WRITER],
            "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
        }],
    });
    if let Some(claim) = claim {
        spec["volumes"] = json!([{ "name": "data", "persistentVolumeClaim": { "claimName": claim } }]);
    }
    json!({ "metadata": { "labels": { "app": app }, "annotations": annotations }, "spec": spec })
}

/// The hooks as Pod annotations.
pub fn hooks(pre: &str, post: &str) -> serde_json::Value {
    json!({ "stowage.io/pre-hook": pre, "stowage.io/post-hook": post })
}

/// A 64Mi PVC `name` (with `annotations`), waited for until bound; returns its host directory.
pub async fn claim(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    annotations: serde_json::Value,
) -> anyhow::Result<PathBuf> {
    apply(
        client,
        namespace,
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": { "name": name, "annotations": annotations, "labels": { "backup": "yes" } },
            "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "64Mi" } } },
        }),
    )
    .await?;
    volume_dir(client, namespace, name).await
}

/// A Deployment `name` of one writer Pod on `claim`, with the given hooks; waits until its Pod
/// runs and has written a few records.
pub async fn writer_deployment(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    claim_name: &str,
    annotations: serde_json::Value,
) -> anyhow::Result<PathBuf> {
    let dir = claim(client, namespace, claim_name, json!({})).await?;
    apply(
        client,
        namespace,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": name },
            "spec": {
                "replicas": 1,
                "selector": { "matchLabels": { "app": name } },
                "template": writer_template(name, Some(claim_name), annotations),
            },
        }),
    )
    .await?;
    running_pods(client, namespace, name, 1).await?;
    records_at_least(&dir, 5).await?;
    Ok(dir)
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

/// Waits until `dir/records` holds at least `count` lines.
pub async fn records_at_least(dir: &Path, count: usize) -> anyhow::Result<Vec<u64>> {
    wait_for(&format!("{count} records in {}", dir.display()), || async {
        let records = records(dir)?;
        Ok((records.len() >= count).then_some(records))
    })
    .await
}

/// The numbers in `dir/records` (none if there is no such file).
pub fn records(dir: &Path) -> anyhow::Result<Vec<u64>> {
    let text = std::fs::read_to_string(dir.join("records")).unwrap_or_default();
    text.lines()
        .filter(|line| !line.is_empty())
        .map(|line| line.trim().parse().with_context(|| format!("record {line:?}")))
        .collect()
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

/// Creates VolumeBackup `name` with `spec`.
pub async fn create_backup(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    spec: serde_json::Value,
) -> anyhow::Result<()> {
    apply(
        client,
        namespace,
        json!({ "apiVersion": "stowage.io/v1alpha1", "kind": "VolumeBackup", "metadata": { "name": name }, "spec": spec }),
    )
    .await
}

/// Waits until VolumeBackup `name` is Succeeded or Failed and returns it.
pub async fn finished_backup(client: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<VolumeBackup> {
    let api: Api<VolumeBackup> = Api::namespaced(client.clone(), namespace);
    wait_for(&format!("VolumeBackup {name} to finish"), || async {
        let backup = api.get(name).await?;
        let finished = backup.status.as_ref().is_some_and(|s| s.phase.is_final());
        Ok(finished.then_some(backup))
    })
    .await
}

/// The condition `type_`: (status, reason, message); empty strings when unset.
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

/// The VolumeSnapshots in `namespace`, by name.
pub async fn snapshots(client: &kube::Client, namespace: &str) -> anyhow::Result<BTreeMap<String, VolumeSnapshot>> {
    let api: Api<VolumeSnapshot> = Api::namespaced(client.clone(), namespace);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|s| (s.name_any(), s))
        .collect())
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

/// The first number in `dir/name` (a marker file written by a hook).
pub fn marker(dir: &Path, name: &str) -> anyhow::Result<Vec<i64>> {
    let text = std::fs::read_to_string(dir.join(name)).with_context(|| format!("reading {name}"))?;
    text.split_whitespace()
        .map(|word| word.parse().with_context(|| format!("{name}: {text:?}")))
        .collect()
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
    storages.create(&Default::default(), &storage).await?;
    Ok(name)
}

/// An age key pair made by `age-keygen`: (identity file text, public key).
pub fn age_keygen() -> anyhow::Result<(String, String)> {
    let output = Command::new("age-keygen")
        .output()
        .context("running age-keygen (install it: apt-get install age)")?;
    anyhow::ensure!(output.status.success(), "age-keygen failed");
    let text = String::from_utf8(output.stdout)?;
    let public = String::from_utf8(output.stderr)?
        .lines()
        .chain(text.lines())
        .find_map(|line| line.split("public key: ").nth(1).map(str::to_string))
        .context("age-keygen printed no public key")?;
    Ok((text, public.trim().to_string()))
}

/// Runs `sh -c script` on the host and returns its stdout.
pub fn sh(script: &str) -> anyhow::Result<Vec<u8>> {
    let output = Command::new("sh").arg("-c").arg(script).output()?;
    anyhow::ensure!(
        output.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output.stdout)
}

/// Every file under `dir` with its contents, by relative path.
pub fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if let (Ok(relative), Ok(bytes)) = (path.strip_prefix(root), std::fs::read(&path)) {
                out.insert(relative.to_path_buf(), bytes);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}
