//! ResourceRestore (cluster-scoped): the objects of a ResourceBackup's archive, applied back
//! to this cluster.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::shared::SecretKeyRef;

/// How many failures and plan entries a status lists at most; counts are always complete.
pub const MAX_LISTED: usize = 100;

/// A restore of a ResourceBackup's archive into this cluster.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stowage.io",
    version = "v1alpha1",
    kind = "ResourceRestore",
    doc = "A restore of the Kubernetes objects in a ResourceBackup's archive: CRDs first, then namespaces, cluster-scoped and namespaced objects, owners before dependents, with ownerReferences re-linked to the new owners. Set dryRun to see the plan without changing anything.",
    plural = "resourcerestores",
    shortname = "rrs",
    category = "stowage",
    status = "ResourceRestoreStatus",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Backup", type_ = "string", json_path = ".spec.backupName"),
    printcolumn(name = "DryRun", type_ = "boolean", json_path = ".spec.dryRun"),
    printcolumn(name = "Created", type_ = "integer", json_path = ".status.counts.created"),
    printcolumn(name = "Updated", type_ = "integer", json_path = ".status.counts.updated"),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.counts.failed"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = one_source)]
pub struct ResourceRestoreSpec {
    /// Name of the ResourceBackup to restore. Give either this or `storage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_name: Option<String>,
    /// An archive in storage, e.g. another cluster's backup. Give either this or `backupName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<ArchiveRef>,
    /// What to do with an object that already exists: `Update` (default) applies the
    /// archive's version over it, `Skip` leaves it as it is.
    #[serde(default)]
    pub existing_resource_policy: ExistingResourcePolicy,
    /// Delete objects that match the backup's ResourceSet but are not in the archive.
    #[serde(default)]
    pub prune: bool,
    /// How long to wait for pruned objects to be gone (finalizers). Default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub delete_timeout_seconds: Option<i64>,
    /// Compute the plan (what would be created, updated, left unchanged and deleted) into
    /// status without changing the cluster.
    #[serde(default)]
    pub dry_run: bool,
    /// Restore objects of a namespace into another one: old name → new name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespace_mapping: BTreeMap<String, String>,
    /// Restore only the objects matching this filter (namespaces are those in the archive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<RestoreFilter>,
    /// Never restore the objects matching this filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<RestoreFilter>,
    /// Name of a Secret in the controller's namespace holding the EncryptionConfiguration
    /// (key `encryption-provider-config.yaml`) whose keys decrypt the archive's encrypted
    /// objects. Any key listed decrypts, so a rotated configuration still works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_config_secret_name: Option<String>,
    /// A key of a Secret in the controller's namespace holding the age identity that decrypts
    /// the archive. Default: the backup's `encryption.decryptionKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decryption_key_secret_ref: Option<SecretKeyRef>,
}

/// The archive comes from a ResourceBackup or from storage, never both.
fn one_source(schema: &mut schemars::Schema) {
    crate::schema::exactly_one_of(schema, &["backupName", "storage"]);
}

/// An archive in a BackupStorage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveRef {
    /// Name of the BackupStorage.
    pub name: String,
    /// Object key of the archive inside the storage (its manifest is `<path>.manifest.json`).
    pub path: String,
}

/// Which objects a filter matches. Fields left out match everything.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreFilter {
    /// Kinds, e.g. `ConfigMap` or `Deployment.apps` (case-insensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// Namespaces as named in the archive (before `namespaceMapping`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// A label selector objects must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
}

/// What a restore does with objects that already exist.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ExistingResourcePolicy {
    /// Apply the archive's version over the live object.
    #[default]
    Update,
    /// Leave the live object as it is.
    Skip,
}

/// Where a ResourceRestore is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ResourceRestorePhase {
    /// Not started yet, or waiting to retry.
    #[default]
    Pending,
    /// Objects are being applied.
    Running,
    /// Every object was restored (or, for a dry run, the plan is complete).
    Succeeded,
    /// Some objects failed; see `failures`.
    PartiallyFailed,
    /// The restore failed before applying anything; see the conditions and Events.
    Failed,
}

/// What the restore did (or, for a dry run, would do).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRestoreStatus {
    /// Pending, Running, Succeeded, PartiallyFailed or Failed.
    #[serde(default)]
    pub phase: ResourceRestorePhase,
    /// `Ready` is True once the restore is complete; its reason says why not otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Object counts per outcome.
    #[serde(default)]
    pub counts: RestoreCounts,
    /// Objects that failed, with why (at most 100 listed; `counts.failed` has them all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<ObjectFailure>,
    /// For a dry run: what the restore would do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<RestorePlan>,
    /// How far the running restore got (updated every 10 seconds, and once at the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ResourceRestoreProgress>,
    /// The archive restored, as `<storage>:<path>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// When the restore started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the restore finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

/// Object counts per outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreCounts {
    /// Objects created.
    #[serde(default)]
    pub created: u64,
    /// Existing objects updated.
    #[serde(default)]
    pub updated: u64,
    /// Existing objects already equal to the archive's version.
    #[serde(default)]
    pub unchanged: u64,
    /// Existing objects left alone (`existingResourcePolicy: Skip`) or filtered out.
    #[serde(default)]
    pub skipped: u64,
    /// Objects deleted by `prune`.
    #[serde(default)]
    pub deleted: u64,
    /// Objects that failed.
    #[serde(default)]
    pub failed: u64,
}

/// One object that could not be restored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectFailure {
    /// The object, as `<kind>.<group> <namespace>/<name>`.
    pub object: String,
    /// Why it failed.
    pub reason: String,
}

/// What a restore would do, object by object (at most 100 listed per list).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestorePlan {
    /// Objects that would be created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub create: Vec<String>,
    /// Objects that would be updated, each with the top-level fields that differ.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub update: Vec<String>,
    /// Objects already equal to the archive's version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unchanged: Vec<String>,
    /// Existing objects that would be left alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip: Vec<String>,
    /// Objects that would be deleted by `prune`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delete: Vec<String>,
    /// True when a list was cut at 100 entries (the counts are complete).
    #[serde(default)]
    pub truncated: bool,
}

/// How far a running restore got. The archive is read once to verify it (nothing is applied
/// before its checksum passed), then again to apply it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRestoreProgress {
    /// Objects of the archive read and verified so far.
    pub verified_objects: u64,
    /// Objects restored (or, for a dry run, planned) so far, whatever the outcome.
    pub objects: u64,
    /// Objects to restore once the archive is verified (after include and exclude).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_user_manifest_parses_with_defaults() {
        let yaml = r#"
backupName: shop-nightly
dryRun: true
namespaceMapping: {shop: shop-copy}
exclude: {kinds: [Secret]}
"#;
        let spec: ResourceRestoreSpec = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(spec.existing_resource_policy, ExistingResourcePolicy::Update);
        assert!(spec.dry_run && !spec.prune);
        assert_eq!(spec.namespace_mapping["shop"], "shop-copy");
        assert_eq!(spec.exclude.unwrap().kinds, ["Secret"]);
    }
}
