//! Storage backends: a user-facing spec (the shape of a BackupStorage's spec)
//! plus credentials → an `ObjectStore`, and a probe that proves it works.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The kind of object storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StorageType {
    /// Amazon S3 or any S3-compatible service (MinIO, Ceph RGW, SeaweedFS…).
    #[default]
    S3,
    /// Google Cloud Storage.
    GCS,
    /// Azure Blob Storage.
    Azure,
    /// A directory on the controller's filesystem (a mounted volume). Needs no cloud account.
    Filesystem,
}

/// Where backups are stored. Secrets are not part of this: see [`Credentials`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// S3, GCS, Azure or Filesystem.
    #[serde(rename = "type")]
    pub storage_type: StorageType,
    /// Settings for type S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Spec>,
    /// Settings for type GCS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<GcsSpec>,
    /// Settings for type Azure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureSpec>,
    /// Settings for type Filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FilesystemSpec>,
    /// Key prefix under which every artifact of this storage is written, e.g. "clusters/prod".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// How requests are retried before an operation fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
}

/// S3 and S3-compatible storage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Spec {
    /// Bucket name.
    pub bucket: String,
    /// Endpoint URL for S3-compatible services, e.g. "https://minio.example:9000". Empty for AWS.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub endpoint: String,
    /// Region, e.g. "eu-central-1". Defaults to "us-east-1".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
    /// Allow plain http endpoints (only for trusted networks).
    #[serde(default)]
    pub allow_http: bool,
    /// Use path-style requests (`endpoint/bucket/key`), as most S3-compatible services need.
    #[serde(default)]
    pub force_path_style: bool,
}

/// Google Cloud Storage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GcsSpec {
    /// Bucket name.
    pub bucket: String,
}

/// Azure Blob Storage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureSpec {
    /// Storage account name.
    pub account: String,
    /// Container name.
    pub container: String,
}

/// A directory on the controller's filesystem.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FilesystemSpec {
    /// Absolute path of the root directory; created if missing.
    pub path: String,
}

/// Request retries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetrySpec {
    /// Retries of one request before it fails (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Give up retrying a request after this many seconds (default 180).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

/// Secret values for a storage. Never logged: `Debug` shows which are set, not their values.
#[derive(Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    /// S3 access key id.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// S3 secret access key.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// S3 session token (temporary credentials).
    #[serde(default)]
    pub session_token: Option<String>,
    /// GCS service account key (JSON).
    #[serde(default)]
    pub service_account_json: Option<String>,
    /// Azure storage account key.
    #[serde(default)]
    pub account_key: Option<String>,
    /// Azure SAS token.
    #[serde(default)]
    pub sas_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: &Option<String>| if v.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("Credentials")
            .field("access_key_id", &set(&self.access_key_id))
            .field("secret_access_key", &set(&self.secret_access_key))
            .field("session_token", &set(&self.session_token))
            .field("service_account_json", &set(&self.service_account_json))
            .field("account_key", &set(&self.account_key))
            .field("sas_token", &set(&self.sas_token))
            .finish()
    }
}

/// Builds the object store for a spec and its credentials.
pub fn build(spec: &StorageSpec, credentials: &Credentials) -> Result<Arc<dyn ObjectStore>> {
    let missing = |what: &str| Error::InvalidStorage(format!("type {:?} needs {what}", spec.storage_type));
    let retry = retry_config(spec.retry.as_ref());
    let store: Arc<dyn ObjectStore> = match spec.storage_type {
        StorageType::S3 => {
            let s3 = spec.s3.as_ref().ok_or_else(|| missing("the s3 section"))?;
            if s3.bucket.is_empty() {
                return Err(missing("s3.bucket"));
            }
            let mut builder = AmazonS3Builder::new()
                .with_bucket_name(&s3.bucket)
                .with_region(if s3.region.is_empty() { "us-east-1" } else { &s3.region })
                .with_allow_http(s3.allow_http)
                .with_virtual_hosted_style_request(!s3.force_path_style)
                .with_retry(retry);
            if !s3.endpoint.is_empty() {
                builder = builder.with_endpoint(&s3.endpoint);
            }
            match (&credentials.access_key_id, &credentials.secret_access_key) {
                (Some(id), Some(secret)) => builder = builder.with_access_key_id(id).with_secret_access_key(secret),
                (None, None) => {} // ambient credentials (IRSA, instance profile)
                _ => return Err(missing("both accessKeyId and secretAccessKey, or neither")),
            }
            if let Some(token) = &credentials.session_token {
                builder = builder.with_token(token);
            }
            Arc::new(builder.build().map_err(|e| Error::InvalidStorage(e.to_string()))?)
        }
        StorageType::GCS => {
            let gcs = spec.gcs.as_ref().ok_or_else(|| missing("the gcs section"))?;
            let mut builder = GoogleCloudStorageBuilder::new()
                .with_bucket_name(&gcs.bucket)
                .with_retry(retry);
            if let Some(key) = &credentials.service_account_json {
                builder = builder.with_service_account_key(key);
            }
            Arc::new(builder.build().map_err(|e| Error::InvalidStorage(e.to_string()))?)
        }
        StorageType::Azure => {
            let azure = spec.azure.as_ref().ok_or_else(|| missing("the azure section"))?;
            let mut builder = MicrosoftAzureBuilder::new()
                .with_account(&azure.account)
                .with_container_name(&azure.container)
                .with_retry(retry);
            if let Some(key) = &credentials.account_key {
                builder = builder.with_access_key(key);
            } else if let Some(sas) = &credentials.sas_token {
                builder = builder.with_config(object_store::azure::AzureConfigKey::SasKey, sas);
            }
            Arc::new(builder.build().map_err(|e| Error::InvalidStorage(e.to_string()))?)
        }
        StorageType::Filesystem => {
            let fs = spec
                .filesystem
                .as_ref()
                .ok_or_else(|| missing("the filesystem section"))?;
            if !fs.path.starts_with('/') {
                return Err(Error::InvalidStorage(format!(
                    "filesystem.path {:?} must be absolute",
                    fs.path
                )));
            }
            std::fs::create_dir_all(&fs.path)
                .map_err(|e| Error::InvalidStorage(format!("cannot create directory {}: {e}", fs.path)))?;
            // Directories emptied by a delete go too (up to the storage's own), as they do not
            // exist in object stores: a run's scratch objects (`<payload>.scratch/…`) would
            // otherwise leave an empty directory beside every payload that had them.
            let store = LocalFileSystem::new_with_prefix(&fs.path).map_err(|e| Error::InvalidStorage(e.to_string()))?;
            Arc::new(store.with_automatic_cleanup(true))
        }
    };
    Ok(store)
}

fn retry_config(spec: Option<&RetrySpec>) -> RetryConfig {
    let mut retry = RetryConfig::default();
    if let Some(spec) = spec {
        if let Some(max) = spec.max_retries {
            retry.max_retries = max as usize;
        }
        if let Some(seconds) = spec.timeout_seconds {
            retry.retry_timeout = Duration::from_secs(seconds);
        }
    }
    retry
}

/// Proves a store works: writes, reads back and deletes a small probe object
/// under `prefix`. The error says which of the three steps failed.
pub async fn check(store: &dyn ObjectStore, prefix: &str) -> Result<()> {
    let nonce = format!("{:016x}", rand_u64());
    let key = if prefix.is_empty() {
        format!(".stowage-probe-{nonce}")
    } else {
        format!("{prefix}/.stowage-probe-{nonce}")
    };
    let path = crate::layout::object_path(&key)?;
    let body = format!("stowage storage probe {nonce}");
    store
        .put(&path, PutPayload::from(body.clone().into_bytes()))
        .await
        .map_err(|e| Error::storage("probe write", &path, e))?;
    let read = store
        .get(&path)
        .await
        .map_err(|e| Error::storage("probe read", &path, e))?;
    let read = read.bytes().await.map_err(|e| Error::storage("probe read", &path, e))?;
    if read.as_ref() != body.as_bytes() {
        return Err(Error::InvalidStorage(format!(
            "probe object {path} read back different bytes than written"
        )));
    }
    store
        .delete(&path)
        .await
        .map_err(|e| Error::storage("probe delete", &path, e))?;
    Ok(())
}

/// A random-enough probe name without another dependency: time and address entropy.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}
