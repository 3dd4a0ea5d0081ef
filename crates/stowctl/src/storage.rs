//! Opening a storage: from a configuration file (no cluster needed), or from a BackupStorage
//! in the cluster of the current kubeconfig.
//!
//! The file is a BackupStorage's spec (or the whole BackupStorage object) with an optional
//! `credentials` section; without it, credentials come from the environment:
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` (S3),
//! `GOOGLE_SERVICE_ACCOUNT_JSON` (GCS), `AZURE_STORAGE_ACCOUNT_KEY` or `AZURE_STORAGE_SAS_TOKEN`
//! (Azure), or the ambient credentials of the machine.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::ObjectStore;
use stowage_core::{Credentials, Layout, StorageSpec};

use crate::error::{Error, Result};

/// A storage ready to read from.
pub struct OpenedStorage {
    /// What the user called it: the file or the BackupStorage's name.
    pub name: String,
    pub store: Arc<dyn ObjectStore>,
    pub layout: Layout,
}

/// Where `--storage` points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageArg {
    /// A configuration file.
    File(PathBuf),
    /// A BackupStorage in the cluster.
    Cluster(String),
}

impl StorageArg {
    /// An existing file, or anything that looks like a path, is a file; else a BackupStorage name.
    pub fn parse(value: &str) -> StorageArg {
        let path = Path::new(value);
        let looks_like_path = value.contains('/') || value.ends_with(".yaml") || value.ends_with(".yml");
        if path.is_file() || looks_like_path {
            StorageArg::File(path.to_path_buf())
        } else {
            StorageArg::Cluster(value.to_string())
        }
    }
}

/// Opens the storage `arg` names.
pub async fn open(arg: &StorageArg, kubeconfig: Option<&Path>) -> Result<OpenedStorage> {
    match arg {
        StorageArg::File(path) => open_file(path),
        StorageArg::Cluster(name) => open_cluster(name, kubeconfig).await,
    }
}

/// Opens the storage a configuration file describes.
pub fn open_file(path: &Path) -> Result<OpenedStorage> {
    let config_error = |reason: String| Error::Config {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| config_error(format!("cannot be read: {e}")))?;
    let mut value: serde_json::Value =
        serde_saphyr::from_str(&text).map_err(|e| config_error(format!("not YAML: {e}")))?;
    if let Some(spec) = value.get("spec").cloned() {
        value = spec; // a whole BackupStorage object
    }
    let credentials = match value.get("credentials") {
        Some(section) => serde_json::from_value::<Credentials>(section.clone())
            .map_err(|e| config_error(format!("credentials: {e}")))?,
        None => credentials_from_env(),
    };
    let spec: StorageSpec = serde_json::from_value(value).map_err(|e| {
        config_error(format!(
            "not a BackupStorage spec ({e}); expected e.g. `type: S3`, `s3: {{bucket: …, endpoint: …}}`, `prefix: …`"
        ))
    })?;
    let store = stowage_core::storage::build(&spec, &credentials)?;
    let layout = Layout::new(&spec.prefix).map_err(stowage_core::Error::from)?;
    Ok(OpenedStorage {
        name: path.display().to_string(),
        store,
        layout,
    })
}

fn credentials_from_env() -> Credentials {
    let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    Credentials {
        access_key_id: var("AWS_ACCESS_KEY_ID"),
        secret_access_key: var("AWS_SECRET_ACCESS_KEY"),
        session_token: var("AWS_SESSION_TOKEN"),
        service_account_json: var("GOOGLE_SERVICE_ACCOUNT_JSON"),
        account_key: var("AZURE_STORAGE_ACCOUNT_KEY"),
        sas_token: var("AZURE_STORAGE_SAS_TOKEN"),
    }
}

/// Opens BackupStorage `name` of the current cluster, with its credentials Secret, as the
/// controllers do.
pub async fn open_cluster(name: &str, kubeconfig: Option<&Path>) -> Result<OpenedStorage> {
    let client = stowage_operator::runner::client(kubeconfig, stowage_operator::runner::DEFAULT_REQUESTS_IN_FLIGHT)
        .await
        .map_err(|e| Error::Cluster(format!("{e:#} (or pass a storage configuration file to --storage)")))?;
    let metrics = stowage_operator::Metrics::new().map_err(|e| Error::Cluster(format!("metrics: {e}")))?;
    let ctx = stowage_operator::Context::new(client, "stowctl", "stowage-system", None, Arc::new(metrics));
    let resolved = stowage_operator::resolve_storage(&ctx, name, None)
        .await
        .map_err(|e| Error::Cluster(e.to_string()))?;
    Ok(OpenedStorage {
        name: resolved.name,
        store: resolved.store,
        layout: resolved.layout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_names_are_told_apart() {
        assert_eq!(
            StorageArg::parse("storage.yaml"),
            StorageArg::File("storage.yaml".into())
        );
        assert_eq!(StorageArg::parse("./s"), StorageArg::File("./s".into()));
        assert_eq!(StorageArg::parse("minio"), StorageArg::Cluster("minio".into()));
    }

    #[test]
    fn a_whole_backup_storage_object_with_credentials_opens() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("storage.yaml");
        let root = dir.path().join("root");
        std::fs::write(
            &file,
            format!(
                "apiVersion: stowage.io/v1alpha1\nkind: BackupStorage\nmetadata: {{name: fs}}\nspec:\n  type: Filesystem\n  filesystem: {{path: {}}}\n  prefix: clusters/prod\n",
                root.display()
            ),
        )
        .unwrap();
        let opened = open_file(&file).unwrap();
        assert_eq!(opened.layout.prefix(), "clusters/prod");
        let error = open_file(&dir.path().join("missing.yaml")).err().unwrap();
        assert!(error.to_string().contains("cannot be read"), "{error}");
    }
}
