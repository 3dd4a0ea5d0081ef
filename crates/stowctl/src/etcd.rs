//! `stowctl etcd`: the catalog of etcd backups from storage alone, and a restore into a new
//! etcd data directory with the stock tool (`etcdutl snapshot restore`, or
//! `etcdctl snapshot restore` on etcd 3.4).

use std::path::{Path, PathBuf};
use std::process::Command;

use stowage_core::etcd_details::{CERTIFICATES, KIND, SNAPSHOT};
use stowage_core::{EtcdDetails, catalog, human_bytes, read_manifest};

use crate::artifact;
use crate::error::{Error, Result};
use crate::storage::OpenedStorage;

/// One etcd backup found in storage.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdEntry {
    pub path: String,
    /// False when the payload has no (valid) manifest: the backup never completed.
    pub complete: bool,
    pub completed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub stored_bytes: u64,
    pub encrypted: bool,
    pub details: EtcdDetails,
    /// Why an incomplete entry is incomplete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The etcd snapshots under the storage's EtcdBackup scope, newest first. Certificates' tars
/// are not listed (each snapshot names its own); incomplete payloads only with `all`.
pub async fn list(storage: &OpenedStorage, all: bool) -> Result<Vec<EtcdEntry>> {
    let scope = storage.layout.scope(KIND, None);
    let mut entries: Vec<EtcdEntry> = catalog::list(storage.store.as_ref(), &scope)
        .await?
        .into_iter()
        .filter_map(|entry| match entry.manifest {
            Some(manifest) => {
                let details = EtcdDetails::from_map(&manifest.details)?;
                (manifest.kind == KIND && details.content == SNAPSHOT).then(|| EtcdEntry {
                    path: entry.path,
                    complete: true,
                    completed_at: Some(manifest.artifact.completed_at),
                    stored_bytes: manifest.artifact.stored_bytes,
                    encrypted: manifest.artifact.encrypted(),
                    details,
                    problem: None,
                })
            }
            None => (all && !entry.path.contains("-certs.tar")).then(|| EtcdEntry {
                path: entry.path,
                complete: false,
                completed_at: None,
                stored_bytes: entry.size,
                encrypted: false,
                details: EtcdDetails::default(),
                problem: entry.problem,
            }),
        })
        .collect();
    entries.sort_by(|a, b| b.completed_at.cmp(&a.completed_at).then_with(|| b.path.cmp(&a.path)));
    Ok(entries)
}

/// The catalog as a table.
pub fn table(entries: &[EtcdEntry]) -> String {
    let mut rows = vec![[
        "COMPLETED".to_string(),
        "REVISION".to_string(),
        "SIZE".to_string(),
        "ETCD".to_string(),
        "CERTS".to_string(),
        "BACKUP".to_string(),
        "PATH".to_string(),
    ]];
    for entry in entries {
        rows.push([
            entry.completed_at.map_or_else(
                || "INCOMPLETE".to_string(),
                |at| at.format("%Y-%m-%d %H:%M:%SZ").to_string(),
            ),
            entry
                .details
                .revision
                .map_or_else(|| "-".to_string(), |r| r.to_string()),
            human_bytes(entry.stored_bytes),
            dash(&entry.details.etcd_version),
            if entry.details.certs_path.is_some() { "yes" } else { "-" }.to_string(),
            dash(&entry.details.backup),
            entry.path.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                if c == 6 {
                    cell.clone()
                } else {
                    format!("{cell:<w$}", w = widths[c])
                }
            })
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

fn dash(text: &str) -> String {
    if text.is_empty() { "-".into() } else { text.to_string() }
}

/// What `etcd restore` needs beyond the storage.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    pub path: String,
    pub data_dir: PathBuf,
    pub identities: Vec<PathBuf>,
    /// Passed to the restore tool as `--name`, `--initial-cluster`,
    /// `--initial-advertise-peer-urls` and `--initial-cluster-token` when given.
    pub name: Option<String>,
    pub initial_cluster: Option<String>,
    pub initial_advertise_peer_urls: Option<String>,
    pub initial_cluster_token: Option<String>,
    /// Keep the decrypted snapshot file here instead of deleting it after the restore.
    pub keep_snapshot: Option<PathBuf>,
    /// The restore tool to run instead of looking for etcdutl, then etcdctl, on PATH.
    pub tool: Option<PathBuf>,
}

/// Downloads, verifies, decrypts and decompresses the snapshot into a file, runs the stock
/// restore tool into a new data directory, and returns the next steps for the administrator.
pub async fn restore(storage: &OpenedStorage, storage_arg: &str, options: &RestoreOptions) -> Result<String> {
    check_data_dir(&options.data_dir)?;
    let manifest = read_manifest(storage.store.as_ref(), &options.path).await?;
    let details = EtcdDetails::from_map(&manifest.details).unwrap_or_default();
    if manifest.kind != KIND || details.content == CERTIFICATES {
        return Err(Error::Refused(format!(
            "{} is not an etcd snapshot (kind {}, content {:?}): restore certificates with `stowctl extract`",
            options.path, manifest.kind, details.content
        )));
    }
    let tool = restore_tool(options.tool.as_deref())?;
    let identities = artifact::identities(&options.identities)?;
    if manifest.artifact.encrypted() && identities.is_empty() {
        return Err(stowage_core::Error::KeyRequired {
            recipients: manifest.artifact.recipients.join(", "),
        }
        .into());
    }

    let snapshot_file = options.keep_snapshot.clone().unwrap_or_else(|| {
        let name = options
            .data_dir
            .file_name()
            .map_or_else(|| "etcd".into(), |n| n.to_string_lossy().into_owned());
        options.data_dir.with_file_name(format!(".{name}.snapshot.db"))
    });
    artifact::restore_to_file(storage, &options.path, identities, &snapshot_file).await?;
    let outcome = run_restore_tool(&tool, &snapshot_file, options);
    if options.keep_snapshot.is_none() {
        let _ = std::fs::remove_file(&snapshot_file);
    }
    outcome?;
    Ok(next_steps(storage_arg, options, &details))
}

/// Refuses a data directory with anything in it; an empty one is removed, because the
/// restore tools refuse to write into an existing directory.
fn check_data_dir(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::Refused(format!(
                    "data directory {} is not empty: restore into a new directory (never over a member's live data)",
                    dir.display()
                )));
            }
            std::fs::remove_dir(dir).map_err(Error::io(format!("removing the empty {}", dir.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("reading {}", dir.display()))(e)),
    }
}

/// The restore command: the given tool, else `etcdutl` (3.5+), else `etcdctl` (3.4) on PATH.
fn restore_tool(given: Option<&Path>) -> Result<Command> {
    let find = |name: &str| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        })
    };
    let (program, is_etcdctl) = match given {
        Some(tool) => (tool.to_path_buf(), tool.file_name().is_some_and(|n| n == "etcdctl")),
        None => match (find("etcdutl"), find("etcdctl")) {
            (Some(etcdutl), _) => (etcdutl, false),
            (None, Some(etcdctl)) => (etcdctl, true),
            (None, None) => {
                return Err(Error::Tool(
                    "neither etcdutl nor etcdctl is on PATH: install etcd's client tools (Debian: apt-get install etcd-client) or pass --tool".into(),
                ));
            }
        },
    };
    let mut command = Command::new(program);
    if is_etcdctl {
        command.env("ETCDCTL_API", "3");
    }
    command.args(["snapshot", "restore"]);
    Ok(command)
}

fn run_restore_tool(tool: &Command, snapshot: &Path, options: &RestoreOptions) -> Result<()> {
    let mut command = Command::new(tool.get_program());
    command.envs(tool.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))));
    command.args(tool.get_args()).arg(snapshot);
    command.arg(format!("--data-dir={}", options.data_dir.display()));
    for (flag, value) in [
        ("--name", &options.name),
        ("--initial-cluster", &options.initial_cluster),
        ("--initial-advertise-peer-urls", &options.initial_advertise_peer_urls),
        ("--initial-cluster-token", &options.initial_cluster_token),
    ] {
        if let Some(value) = value {
            command.arg(format!("{flag}={value}"));
        }
    }
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command
        .output()
        .map_err(|e| Error::Tool(format!("running {program}: {e}")))?;
    if !output.status.success() {
        return Err(Error::Tool(format!(
            "{program} snapshot restore failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(())
}

fn next_steps(storage_arg: &str, options: &RestoreOptions, details: &EtcdDetails) -> String {
    let dir = options.data_dir.display();
    let name = options.name.as_deref().unwrap_or("default");
    let mut text = format!(
        "Restored {} (revision {}, cluster {}, etcd {}) into {dir}.\n\nNext steps:\n",
        options.path,
        details
            .revision
            .map_or_else(|| "unknown".to_string(), |r| r.to_string()),
        dash(&details.cluster_id),
        dash(&details.etcd_version),
    );
    text.push_str(
        "  1. Stop the kube-apiserver and the etcd member on this node (kubeadm: move kube-apiserver.yaml and\n     etcd.yaml out of /etc/kubernetes/manifests and wait until both containers are gone).\n",
    );
    text.push_str(&format!(
        "  2. Point the member at the restored data: swap {dir} in for its data directory\n     (kubeadm: /var/lib/etcd), or change the etcd-data hostPath in etcd.yaml to {dir}.\n     Start it with --name={name} and the same --initial-cluster and --initial-advertise-peer-urls as this restore.\n"
    ));
    text.push_str(
        "  3. Several members: restore the same snapshot on each, with its own --name and --initial-advertise-peer-urls\n     and the same --initial-cluster, before starting any of them.\n",
    );
    match &details.certs_path {
        Some(certs) => text.push_str(&format!(
            "  4. If the certificates were lost too, restore them first:\n     stowctl extract --storage {storage_arg} --path {certs} --identity <key> --to /etc/kubernetes/pki\n"
        )),
        None => text.push_str("  4. This backup has no certificates (no certsDir): keep the node's /etc/kubernetes/pki.\n"),
    }
    text.push_str(
        "  5. Put the manifests back (etcd first, then kube-apiserver) and check: etcdctl endpoint status, kubectl get nodes.\n",
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_empty_data_dir_is_refused_and_an_empty_one_removed() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        check_data_dir(&data).unwrap();
        assert!(!data.exists());
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("member"), "x").unwrap();
        let error = check_data_dir(&data).unwrap_err();
        assert!(error.to_string().contains("is not empty"), "{error}");
        check_data_dir(&dir.path().join("missing")).unwrap();
    }
}
