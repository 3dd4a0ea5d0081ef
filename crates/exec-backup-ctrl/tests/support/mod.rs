//! What the exec controller's end-to-end tests share: a controller running in-process for the
//! test's namespace, a Filesystem BackupStorage, keys made with the stock CLIs, and waits. What
//! every controller's tests share comes from `stowage_e2e::support`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use stowage_api::{ExecBackup, ExecRestore};
use stowage_e2e::support::{InProcess, create, finished};

// Shared with every controller's tests; each test binary uses its own part.
#[allow(unused_imports)]
pub use stowage_e2e::support::{
    StatusLog, age_keygen, condition, create_storage, event_reasons, filesystem_storage, sh, wait_events,
    wait_uid_events,
};

/// The controller, running in-process and watching only `namespace`; stopped on drop.
pub async fn start_controller(client: &kube::Client, namespace: &str) -> anyhow::Result<InProcess> {
    stowage_e2e::support::start_controller(client, namespace, "exec-backup-ctrl", stowage_exec_backup_ctrl::run).await
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

/// Creates ExecBackup `name` with `spec`.
pub async fn create_backup(client: &kube::Client, namespace: &str, name: &str, spec: Value) -> anyhow::Result<()> {
    create::<ExecBackup>(client, namespace, name, spec).await.map(drop)
}

/// Creates ExecRestore `name` with `spec`.
pub async fn create_restore(client: &kube::Client, namespace: &str, name: &str, spec: Value) -> anyhow::Result<()> {
    create::<ExecRestore>(client, namespace, name, spec).await.map(drop)
}

/// Waits until ExecBackup `name` is Succeeded or Failed and returns it.
pub async fn finished_backup(client: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<ExecBackup> {
    finished(client, namespace, name).await
}

/// Waits until ExecRestore `name` is Succeeded or Failed and returns it.
pub async fn finished_restore(client: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<ExecRestore> {
    finished(client, namespace, name).await
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
