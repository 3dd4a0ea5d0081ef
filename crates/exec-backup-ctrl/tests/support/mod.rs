//! What the exec controller's end-to-end tests share: a controller running in-process for the
//! test's namespace, a Filesystem BackupStorage, keys made with the stock CLIs, and waits.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use stowage_api::{BackupStorage, ExecBackup, ExecPhase, ExecRestore};
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
        "exec-backup-ctrl",
        namespace,
        None,
        Arc::new(Metrics::new()?),
    )
    .watching(Some(namespace.to_string()));
    let ctx = Arc::new(ctx);
    let task = tokio::spawn(stowage_exec_backup_ctrl::run(ctx.clone()));
    Ok(Controller { ctx, task })
}

/// A Filesystem BackupStorage named after the namespace, in a directory of the test's.
pub async fn filesystem_storage(client: &kube::Client, namespace: &str, dir: &Path) -> anyhow::Result<String> {
    let name = format!("{namespace}-fs");
    create_storage(
        client,
        &name,
        json!({ "type": "Filesystem", "filesystem": { "path": dir }, "prefix": "backups" }),
    )
    .await?;
    Ok(name)
}

pub async fn create_storage(client: &kube::Client, name: &str, spec: serde_json::Value) -> anyhow::Result<()> {
    let storages: Api<BackupStorage> = Api::all(client.clone());
    let storage: BackupStorage = serde_json::from_value(json!({
        "apiVersion": "stowage.io/v1alpha1", "kind": "BackupStorage",
        "metadata": { "name": name }, "spec": spec,
    }))?;
    storages.create(&PostParams::default(), &storage).await?;
    Ok(())
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

/// An ed25519 SSH key pair made by `ssh-keygen`: (private key text, public key line).
pub fn ssh_keygen(dir: &Path) -> anyhow::Result<(String, String)> {
    let path = dir.join("id_ed25519");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "stowage-test", "-f"])
        .arg(&path)
        .status()
        .context("running ssh-keygen (install it: apt-get install openssh-client)")?;
    anyhow::ensure!(status.success(), "ssh-keygen failed");
    Ok((
        std::fs::read_to_string(&path)?,
        std::fs::read_to_string(path.with_extension("pub"))?.trim().to_string(),
    ))
}

/// Creates Secret `name` with `data` (string values) in `namespace`.
pub async fn secret(client: &kube::Client, namespace: &str, name: &str, data: serde_json::Value) -> anyhow::Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret: Secret = serde_json::from_value(json!({ "metadata": { "name": name }, "stringData": data }))?;
    secrets.create(&PostParams::default(), &secret).await?;
    Ok(())
}

/// An idle Pod template (the node simulator runs a container without a command as
/// `sleep infinity`), with `volumes` and the container's `volumeMounts` and `env`.
pub fn idle_template(volume_dir: Option<&Path>, env: serde_json::Value) -> serde_json::Value {
    let mut container = json!({ "name": "client", "image": "debian:12", "env": env });
    let mut spec = json!({ "containers": [] });
    if let Some(dir) = volume_dir {
        container["volumeMounts"] = json!([{ "name": "out", "mountPath": "/out" }]);
        spec["volumes"] = json!([{ "name": "out", "hostPath": { "path": dir } }]);
    }
    spec["containers"] = json!([container]);
    json!({ "metadata": { "labels": { "app": "exec-test" } }, "spec": spec })
}

pub async fn create_backup(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    spec: serde_json::Value,
) -> anyhow::Result<()> {
    let api: Api<ExecBackup> = Api::namespaced(client.clone(), namespace);
    let object: ExecBackup = serde_json::from_value(json!({
        "apiVersion": "stowage.io/v1alpha1", "kind": "ExecBackup",
        "metadata": { "name": name }, "spec": spec,
    }))
    .context("an ExecBackup from the test's JSON")?;
    api.create(&PostParams::default(), &object).await?;
    Ok(())
}

pub async fn create_restore(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    spec: serde_json::Value,
) -> anyhow::Result<()> {
    let api: Api<ExecRestore> = Api::namespaced(client.clone(), namespace);
    let object: ExecRestore = serde_json::from_value(json!({
        "apiVersion": "stowage.io/v1alpha1", "kind": "ExecRestore",
        "metadata": { "name": name }, "spec": spec,
    }))
    .context("an ExecRestore from the test's JSON")?;
    api.create(&PostParams::default(), &object).await?;
    Ok(())
}

/// Waits until ExecBackup `name` is Succeeded or Failed and returns it.
pub async fn finished_backup(client: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<ExecBackup> {
    let api: Api<ExecBackup> = Api::namespaced(client.clone(), namespace);
    wait_for(&format!("ExecBackup {name} to finish"), || async {
        let backup = api.get(name).await?;
        let phase = backup.status.as_ref().map(|s| s.phase).unwrap_or_default();
        Ok(matches!(phase, ExecPhase::Succeeded | ExecPhase::Failed).then_some(backup))
    })
    .await
}

/// Waits until ExecRestore `name` is Succeeded or Failed and returns it.
pub async fn finished_restore(client: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<ExecRestore> {
    let api: Api<ExecRestore> = Api::namespaced(client.clone(), namespace);
    wait_for(&format!("ExecRestore {name} to finish"), || async {
        let restore = api.get(name).await?;
        let phase = restore.status.as_ref().map(|s| s.phase).unwrap_or_default();
        Ok(matches!(phase, ExecPhase::Succeeded | ExecPhase::Failed).then_some(restore))
    })
    .await
}

/// The condition `type_` of a run's status: (status, reason, message).
pub fn condition(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> (String, String, String) {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

/// Reasons of the Events about object `name` in `namespace`.
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

/// The files under `dir`, relative, sorted; BackupStorage probe objects (written and deleted
/// at once by the storage reconciler of any controller in the cluster) are not counted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with(".stowage-probe-"))
            {
                continue;
            } else if let Ok(relative) = path.strip_prefix(root) {
                out.push(relative.to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
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
