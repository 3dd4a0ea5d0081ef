//! Restore, streamed: nothing of the archive is held in memory beyond a few bytes per object.
//!
//! Three constraints shape it. The archive must be verified (manifest, size, SHA-256, age key,
//! every encrypted object decryptable) before the first object is applied. Objects must be
//! applied in dependency order (CRDs, Namespaces, other cluster-scoped, namespaced; owners
//! before dependents) with ownerReferences re-linked to the owners' new UIDs. And memory must
//! not grow with the archive (the controller's limit is small). The payload is compressed and
//! encrypted as one stream, so it cannot be read at random: a ranged GET cannot fetch one
//! object, and the index, written last, cannot be read first.
//!
//! So the archive is read more than once, each time as a stream (reader.rs):
//!
//! 1. **Verify.** Stream the whole archive through stowage-core, which checks it against its
//!    manifest, and decrypt and parse every object. Keep, per object, its tier, whether the
//!    include/exclude filters admit it, a 64-bit keyed digest of its bytes, and its UID and
//!    owner UIDs (16 bytes each); plus the ResourceSet, the index's head, the status
//!    subresources of the archive's CRDs and a keyed hash of every object's identity (for
//!    prune). Any failure ends the restore here, with nothing applied.
//! 2. **Apply, pass after pass.** The survey becomes a schedule (schedule.rs) giving each
//!    object a level. Each pass streams the archive again and applies the objects that are
//!    ready (every object of a lower level dispatched, and finished before it is sent), up to
//!    8 at a time, deferring the rest to the next pass. Each object's digest must match what
//!    the verifying pass saw, so an archive replaced in between is refused before its object
//!    is applied. A backup writes types in restore order, so usually one pass applies
//!    everything; a pass stops downloading once nothing is left.
//!
//! A restore stops between objects once `Options::cancel` fires (its ResourceRestore deleted,
//! the controller stopping): the objects in flight finish their requests, nothing more is
//! applied or pruned, the waits (CRDs Established, pruned objects gone, retry pauses) end at
//! once, the archive's download is aborted, and the workloads held at zero replicas are scaled
//! back as after a failure. What was applied stays applied: the report says how much.
//!
//! The alternatives cost more: holding the objects (the old design) grows with the archive;
//! spilling them to disk needs a volume and leaves plaintext behind; reading the index first
//! is impossible without random access. Two downloads of an archive are cheap next to one API
//! call per object.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};
use serde_json::Value;
use stowage_api::resource_restore::{ExistingResourcePolicy, MAX_LISTED, ObjectFailure, RestoreCounts, RestorePlan};
use stowage_api::resource_set::ResourceSetSpec;
use tokio_util::sync::CancellationToken;

use crate::archive;
use crate::backup::{Served, discover};
use crate::encryption::EncryptionConfig;
use crate::error::{Error, Result};
use crate::index::{FORMAT_VERSION, IndexEntry, describe};
use crate::plan::{self, Tier};
use crate::reader::{ArchiveStream, IndexHead, Item, Source};
use crate::schedule::{Schedule, Survey};

/// The field manager of everything a restore writes.
pub const FIELD_MANAGER: &str = "stowage-restore";

/// How to restore.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub selection: plan::Selection,
    pub policy: ExistingResourcePolicy,
    pub prune: bool,
    pub dry_run: bool,
    pub delete_timeout: Duration,
    /// Stops the restore between objects when cancelled (never cancelled by default).
    pub cancel: CancellationToken,
}

/// What a restore did, or would do.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub counts: RestoreCounts,
    pub failures: Vec<ObjectFailure>,
    pub plan: RestorePlan,
    /// Objects restored without an owner that is neither in the archive nor in the cluster.
    pub orphaned: Vec<String>,
    /// Times the archive was read: once to verify it, then once per apply pass.
    pub passes: u32,
    /// Workloads held at zero replicas during the restore and given their replicas back.
    pub scaled_back: u64,
    /// True when the restore was cancelled before it finished: the counts say what was done
    /// until then, and it stays done.
    pub cancelled: bool,
}

impl Report {
    pub(crate) fn fail(&mut self, object: String, reason: String) {
        self.counts.failed += 1;
        if self.failures.len() < MAX_LISTED {
            self.failures.push(ObjectFailure { object, reason });
        }
    }

    pub(crate) fn list(&mut self, which: PlanList, entry: String) {
        let list = which(&mut self.plan);
        if list.len() < MAX_LISTED {
            list.push(entry);
        } else {
            self.plan.truncated = true;
        }
    }
}

/// One of the plan's lists (create, update, …).
pub(crate) type PlanList = fn(&mut RestorePlan) -> &mut Vec<String>;

/// Live counts of a running restore, for status and metrics.
#[derive(Clone, Default)]
pub struct Progress {
    /// Objects read and verified by the first pass.
    pub verified: Arc<AtomicU64>,
    /// Objects restored (or planned), whatever the outcome.
    pub done: Arc<AtomicU64>,
    /// Objects to restore; 0 until the archive is verified.
    pub total: Arc<AtomicU64>,
    /// Counts each object's outcome (`Created`, `Updated`, …) as it happens, when set.
    pub outcomes: Option<prometheus::IntCounterVec>,
}

impl Progress {
    pub(crate) fn outcome(&self, outcome: &str) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if let Some(counter) = &self.outcomes {
            counter.with_label_values(&[outcome]).inc();
        }
    }
}

/// What the verifying pass learnt, a few bytes per object.
pub struct Verified {
    pub schedule: Schedule,
    pub resource_set: ResourceSetSpec,
    pub index: IndexHead,
    /// `group/plural` of the archive's CRDs that have a status subresource.
    pub status_kinds: HashSet<String>,
    pub archived: Archived,
}

/// The identities (group, resource, namespace, name) of the archive's objects as 64-bit keyed
/// hashes: a collision could only keep an extra object from being pruned.
pub struct Archived {
    hasher: RandomState,
    set: HashSet<u64>,
}

impl Archived {
    fn new(hasher: RandomState) -> Archived {
        Archived {
            hasher,
            set: HashSet::new(),
        }
    }

    fn key(&self, group: &str, plural: &str, namespace: Option<&str>, name: &str) -> u64 {
        self.hasher.hash_one((group, plural, namespace, name))
    }

    fn insert(&mut self, entry: &IndexEntry) {
        let key = self.key(
            &entry.resource.group,
            &entry.resource.plural,
            entry.namespace.as_deref(),
            &entry.name,
        );
        self.set.insert(key);
    }

    /// True when the archive holds this object.
    pub fn contains(&self, group: &str, plural: &str, namespace: Option<&str>, name: &str) -> bool {
        self.set.contains(&self.key(group, plural, namespace, name))
    }

    /// A keyed digest of an object's path and bytes (keys random per restore, so an archive
    /// crafted to collide with the verified one cannot be prepared in advance).
    pub(crate) fn digest(&self, path: &str, data: &[u8]) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        path.hash(&mut hasher);
        data.hash(&mut hasher);
        hasher.finish()
    }
}

/// Restores the archive at `source` (or plans it, for a dry run): verify, then apply pass
/// after pass, then prune.
pub async fn run(
    client: &kube::Client,
    source: &Source,
    encryption: Option<&EncryptionConfig>,
    options: &Options,
    progress: &Progress,
) -> Result<Report> {
    options
        .selection
        .validate()
        .map_err(|reason| Error::invalid("spec", reason))?;
    if options.prune && !options.selection.namespace_mapping.is_empty() {
        return Err(Error::invalid(
            "spec.prune",
            "prune compares the backup's own namespaces with the archive and cannot be combined with namespaceMapping",
        ));
    }
    let served = discover(client).await?;
    let verified = verify_with(
        &served,
        source,
        encryption,
        &options.selection,
        progress,
        &options.cancel,
    )
    .await;
    let verified = match verified {
        // Nothing was applied yet.
        Err(Error::Cancelled) => {
            return Ok(Report {
                passes: 1,
                cancelled: true,
                ..Report::default()
            });
        }
        verified => verified?,
    };
    crate::apply::run(client, served, source, encryption, verified, options, progress).await
}

/// Reads the whole archive once and checks it: the data path against the manifest, then
/// every object (decryptable, JSON, where the layout says) and the index. Nothing is applied.
pub async fn verify(
    client: &kube::Client,
    source: &Source,
    encryption: Option<&EncryptionConfig>,
    selection: &plan::Selection,
) -> Result<Verified> {
    let served = discover(client).await?;
    let never = CancellationToken::new();
    verify_with(&served, source, encryption, selection, &Progress::default(), &never).await
}

async fn verify_with(
    served: &[Served],
    source: &Source,
    encryption: Option<&EncryptionConfig>,
    selection: &plan::Selection,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<Verified> {
    let mut survey = Survey::default();
    let mut archived = Archived::new(RandomState::new());
    let mut status_kinds = HashSet::new();
    let (mut resource_set, mut index) = (None, None);
    let mut failure = None;
    let mut stream = ArchiveStream::open_until(source, stowage_core::Progress::default(), cancel.clone());
    while let Some(item) = stream.next().await {
        if failure.is_some() {
            continue; // Read on: the data path's verdict explains a failure best.
        }
        match item {
            Item::Object { path, data, .. } => {
                let digest = archived.digest(&path, &data);
                match read_object(&source.path, served, encryption, path, &data) {
                    Ok((entry, object)) => {
                        let tier = plan::tier(&entry.resource, entry.namespace.as_deref());
                        if tier == Tier::CustomResourceDefinitions
                            && let Some(kind) = status_kind(&object)
                        {
                            status_kinds.insert(kind);
                        }
                        let admitted = selection.admits(&entry, &object);
                        survey.add(tier, admitted, digest, &entry.uid, &entry.owner_uids);
                        archived.insert(&entry);
                        progress.verified.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => failure = Some(error),
                }
            }
            Item::ResourceSet(bytes) => match serde_json::from_slice(&bytes) {
                Ok(set) => resource_set = Some(set),
                Err(e) => failure = Some(bad(source, format!("{}: {e}", archive::RESOURCE_SET_PATH))),
            },
            Item::Index(head) => index = Some(head),
        }
    }
    stream.finish().await?;
    if let Some(error) = failure {
        return Err(error);
    }
    let index = index.ok_or_else(|| {
        bad(
            source,
            format!(
                "it has no {}: not written by a ResourceBackup, or truncated",
                archive::INDEX_PATH
            ),
        )
    })?;
    if index.format_version > FORMAT_VERSION {
        return Err(bad(
            source,
            format!(
                "format version {} is newer than this controller reads ({FORMAT_VERSION}): upgrade Stowage",
                index.format_version
            ),
        ));
    }
    if index.entries != survey.len() as u64 {
        return Err(bad(
            source,
            format!(
                "the index lists {} objects but the tar holds {}",
                index.entries,
                survey.len()
            ),
        ));
    }
    let schedule = survey.finish();
    progress.total.store(schedule.total(), Ordering::Relaxed);
    Ok(Verified {
        schedule,
        resource_set: resource_set.unwrap_or_default(),
        index,
        status_kinds,
        archived,
    })
}

fn bad(source: &Source, reason: String) -> Error {
    Error::Archive {
        path: source.path.clone(),
        reason,
    }
}

/// Decrypts (when encrypted) and parses the object file at `path`.
pub(crate) fn read_object(
    archive_path: &str,
    served: &[Served],
    encryption: Option<&EncryptionConfig>,
    path: String,
    data: &[u8],
) -> Result<(IndexEntry, Value)> {
    let bad = |reason: String| Error::Archive {
        path: archive_path.to_string(),
        reason,
    };
    let parts = archive::parse_path(&path).ok_or_else(|| bad(format!("unexpected entry {path}")))?;
    // The kind names the object in errors before it is decrypted; the object says it after.
    let served_kind = served
        .iter()
        .find(|s| s.resource.group == parts.group && s.resource.plural == parts.plural)
        .map(|s| s.resource.kind.clone())
        .unwrap_or_else(|| parts.plural.clone());
    let decrypted;
    let json = if parts.encrypted {
        let mut entry = IndexEntry::new(path.clone(), parts.clone(), served_kind.clone(), &Value::Null);
        entry.uid.clear();
        let label = describe(&entry);
        let Some(config) = encryption else {
            let (provider, key) = crate::encryption::describe(data).unwrap_or_default();
            return Err(Error::Decrypt {
                object: label,
                provider,
                key,
                tried: "(none)".into(),
                reason: "the archive holds encrypted objects: set spec.encryptionConfigSecretName".into(),
            });
        };
        decrypted = config.open(&label, path.as_bytes(), data)?;
        &decrypted[..]
    } else {
        data
    };
    let object: Value = serde_json::from_slice(json).map_err(|e| bad(format!("{path}: {e}")))?;
    let kind = object["kind"].as_str().map_or(served_kind, String::from);
    Ok((IndexEntry::new(path, parts, kind, &object), object))
}

/// `group/plural` of a CRD with a status subresource in any version.
fn status_kind(crd: &Value) -> Option<String> {
    let has_status = crd["spec"]["versions"]
        .as_array()
        .is_some_and(|versions| versions.iter().any(|v| v["subresources"]["status"].is_object()));
    has_status.then(|| {
        format!(
            "{}/{}",
            crd["spec"]["group"].as_str().unwrap_or_default(),
            crd["spec"]["names"]["plural"].as_str().unwrap_or_default()
        )
    })
}

/// The cluster's custom resource types with a status subresource, added to the archive's.
pub(crate) async fn cluster_status_kinds(client: &kube::Client, kinds: &mut HashSet<String>) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    if let Ok(list) = api.list(&ListParams::default()).await {
        kinds.extend(
            list.items
                .iter()
                .filter_map(|crd| serde_json::to_value(crd).ok())
                .filter_map(|crd| status_kind(&crd)),
        );
    }
}
