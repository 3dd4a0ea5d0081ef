//! The safety checks of a VolumeRestore, made before anything changes: the backup finished,
//! its snapshots or copies exist and are complete, the new claim names are free, the storage
//! class and the target workload exist, and the data fits the new volumes. What they find
//! becomes the [`Plan`] the steps carry out.
//!
//! A controller that restarts mid-restore runs the same checks again to rebuild the plan; then
//! claims this restore created already count as free ([`RESTORE_LABEL`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::Api;
use kube::{Resource, ResourceExt};
use stowage_api::snapshot_storage::VolumeSnapshot;
use stowage_api::{
    ApplicationKind, ApplicationRef, RestoreSource, VolumeBackup, VolumeBackupPhase, VolumeRestore, VolumeStatus,
};
use stowage_core::Identities;
use stowage_operator::{Context, Error, ResolvedStorage, Result, resolve_storage, secrets};

use crate::restore_plan::{self as plan, quantity_bytes};
use crate::restore_workload::Workload;

/// Label on every claim a VolumeRestore creates: its name.
pub const RESTORE_LABEL: &str = "stowage.io/volume-restore";
/// Annotation on every claim a VolumeRestore creates: `<volumebackup>/<pvc>` it holds.
pub const RESTORED_FROM_ANNOTATION: &str = "stowage.io/restored-from";
/// The image of the Pod that fills a claim from a copy when the backup names none.
pub const DEFAULT_FILL_IMAGE: &str = "busybox:1.36";

/// Everything a restore does, decided before it starts.
#[derive(Debug)]
pub struct Plan {
    pub namespace: String,
    pub backup: String,
    pub source: RestoreSource,
    pub volumes: Vec<PlannedVolume>,
    pub target: Option<Target>,
    /// Where the copies are, for source Copy.
    pub copies: Option<Copies>,
}

/// One claim to create.
#[derive(Debug, Clone)]
pub struct PlannedVolume {
    /// The backed-up claim.
    pub source_pvc: String,
    /// The new claim.
    pub pvc: String,
    pub snapshot: Option<String>,
    pub artifact_path: Option<String>,
    /// The size to request: the larger of the backed-up claim's and the snapshot's.
    pub capacity: Option<String>,
    pub access_modes: Vec<String>,
    pub storage_class: Option<String>,
}

/// The workload to re-point.
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: ApplicationKind,
    pub name: String,
    /// Old claim → new claim, for the claims the workload mounts.
    pub claims: BTreeMap<String, String>,
    /// Old claim template → new one (StatefulSets only).
    pub claim_templates: BTreeMap<String, String>,
}

/// The storage holding the copies and the keys to read them.
pub struct Copies {
    pub storage: ResolvedStorage,
    pub identities: Arc<Identities>,
    pub image: String,
}

impl std::fmt::Debug for Copies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Copies")
            .field("storage", &self.storage.name)
            .finish_non_exhaustive()
    }
}

/// Why a restore cannot start yet: its backup is still running.
pub struct BackupNotFinished;

/// Runs every check. `Ok(Err(BackupNotFinished))` asks to come back later; an error is the
/// first check that failed (permanent unless the API server failed). `resuming`: the restore
/// already started, so its workload may be re-pointed or (a StatefulSet) being recreated.
pub async fn check(restore: &VolumeRestore, resuming: bool, ctx: &Context) -> Result<Result<Plan, BackupNotFinished>> {
    let namespace = restore.namespace().unwrap_or_default();
    let spec = &restore.spec;
    let name = restore.name_any();
    let backups: Api<VolumeBackup> = Api::namespaced(ctx.client.clone(), &namespace);
    let backup = backups.get_opt(&spec.volume_backup_name).await?.ok_or_else(|| {
        refused(
            "BackupNotFound",
            format!(
                "VolumeBackup '{}' not found in namespace '{namespace}': fix spec.volumeBackupName",
                spec.volume_backup_name
            ),
        )
    })?;
    let state = backup.status.clone().unwrap_or_default();
    match state.phase {
        VolumeBackupPhase::Succeeded => {}
        VolumeBackupPhase::Failed => {
            return Err(refused(
                "BackupFailed",
                format!(
                    "VolumeBackup '{}' failed: there is nothing to restore",
                    spec.volume_backup_name
                ),
            ));
        }
        VolumeBackupPhase::Pending | VolumeBackupPhase::Running => return Ok(Err(BackupNotFinished)),
    }
    if state.volumes.is_empty() {
        return Err(refused(
            "NothingToRestore",
            format!("VolumeBackup '{}' holds no volumes", spec.volume_backup_name),
        ));
    }
    let copies = match spec.source {
        RestoreSource::Snapshot => None,
        RestoreSource::Copy => Some(copies(restore, &backup, ctx).await?),
    };
    if let Some(class) = &spec.storage_class_name {
        let classes: Api<StorageClass> = Api::all(ctx.client.clone());
        if classes.get_opt(class).await?.is_none() {
            return Err(refused(
                "StorageClassNotFound",
                format!("StorageClass '{class}' not found: fix spec.storageClassName or leave it out"),
            ));
        }
    }
    let workload = match spec.target.as_ref().and_then(|t| t.application_ref.as_ref()) {
        Some(reference) => Some(target_workload(reference, &namespace, resuming.then_some(&name), ctx).await?),
        None => None,
    };
    let short_id = plan::short_id(restore.uid().as_deref().unwrap_or_default());
    let template = spec.pvc_name_template.as_deref();
    let mut volumes = Vec::new();
    for volume in &state.volumes {
        let pvc = new_claim_name(volume, workload.as_ref(), template, &short_id)?;
        volumes.push(planned(volume, pvc, spec.source, spec.storage_class_name.clone()));
    }
    let target = match (&workload, spec.target.as_ref().and_then(|t| t.application_ref.as_ref())) {
        (Some(workload), Some(reference)) => Some(target(reference, workload, &volumes, template, &short_id)?),
        _ => None,
    };
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
    for volume in &mut volumes {
        check_name_free(&pvcs, &volume.pvc, &name).await?;
        match spec.source {
            RestoreSource::Snapshot => check_snapshot(volume, &namespace, ctx).await?,
            RestoreSource::Copy => {
                if let Some(copies) = &copies {
                    check_copy(volume, copies).await?;
                }
            }
        }
    }
    Ok(Ok(Plan {
        namespace,
        backup: spec.volume_backup_name.clone(),
        source: spec.source,
        volumes,
        target,
        copies,
    }))
}

/// A check that failed: the restore is refused, and retrying will not change that.
pub fn refused(reason: &'static str, message: impl Into<String>) -> Error {
    Error::permanent(reason, message)
}

/// The storage and keys of the backup's copies.
async fn copies(restore: &VolumeRestore, backup: &VolumeBackup, ctx: &Context) -> Result<Copies> {
    let namespace = restore.namespace().unwrap_or_default();
    let copy = backup.spec.copy.as_ref().ok_or_else(|| {
        refused(
            "NoCopies",
            format!(
                "VolumeBackup '{}' has no spec.copy, so there are no copies to restore: use source Snapshot",
                backup.name_any()
            ),
        )
    })?;
    let storage = resolve_storage(ctx, &copy.storage.name, Some(&namespace)).await?;
    let key = restore
        .spec
        .decryption_key
        .clone()
        .or_else(|| copy.encryption.as_ref().and_then(|e| e.decryption_key.clone()));
    let mut identities = Identities::none();
    if let Some(key) = key {
        let text = secrets::key(&ctx.client, &namespace, &key.name, &key.key).await?;
        identities.add(&text)?;
    }
    Ok(Copies {
        storage,
        identities: Arc::new(identities),
        image: copy.image.clone().unwrap_or_else(|| DEFAULT_FILL_IMAGE.to_string()),
    })
}

/// The workload as it was before the restore: a StatefulSet the restore already recreated is
/// read from what it saved.
async fn target_workload(
    reference: &ApplicationRef,
    namespace: &str,
    resuming: Option<&str>,
    ctx: &Context,
) -> Result<Workload> {
    if let (Some(restore), ApplicationKind::StatefulSet) = (resuming, reference.kind)
        && let Some(saved) =
            crate::restore_workload::saved(&ctx.client, namespace, &saved_statefulset_name(restore)).await?
    {
        return Ok(Workload::StatefulSet(saved));
    }
    Workload::get(&ctx.client, namespace, reference.kind, &reference.name)
        .await?
        .ok_or_else(|| {
            refused(
                "TargetNotFound",
                format!(
                    "{} '{}' not found in namespace '{namespace}': fix spec.target.applicationRef",
                    reference.kind, reference.name
                ),
            )
        })
}

/// The new claim of a backed-up one: for a StatefulSet's own claims, the claim the StatefulSet
/// will look for once its template is renamed; else the name template applied to the claim.
fn new_claim_name(
    volume: &VolumeStatus,
    workload: Option<&Workload>,
    template: Option<&str>,
    short_id: &str,
) -> Result<String> {
    if let Some(Workload::StatefulSet(statefulset)) = workload {
        let name = statefulset.name_any();
        let templates = plan::claim_templates(&statefulset.spec.clone().unwrap_or_default());
        if let Some((claim_template, ordinal)) = plan::statefulset_claim(&volume.pvc, &name, &templates) {
            // The renamed template also names a volume of the Pods: at most 63 characters.
            let renamed = plan::render_name(template, &claim_template, short_id, 63).map_err(Error::InvalidSpec)?;
            return Ok(plan::statefulset_claim_name(&renamed, &name, ordinal));
        }
    }
    plan::render_name(template, &volume.pvc, short_id, 253).map_err(Error::InvalidSpec)
}

fn planned(volume: &VolumeStatus, pvc: String, source: RestoreSource, class: Option<String>) -> PlannedVolume {
    PlannedVolume {
        source_pvc: volume.pvc.clone(),
        pvc,
        snapshot: volume
            .volume_snapshot
            .clone()
            .filter(|_| source == RestoreSource::Snapshot),
        artifact_path: volume
            .artifact
            .as_ref()
            .map(|a| a.artifact.path.clone())
            .filter(|_| source == RestoreSource::Copy),
        capacity: plan::larger_quantity(
            volume.capacity.as_ref().map(|q| q.0.as_str()),
            volume.restore_size.as_ref().map(|q| q.0.as_str()),
        ),
        access_modes: volume.access_modes.clone(),
        storage_class: class.or_else(|| volume.storage_class_name.clone()),
    }
}

/// What re-pointing `workload` changes: the claims it mounts that were backed up.
fn target(
    reference: &ApplicationRef,
    workload: &Workload,
    volumes: &[PlannedVolume],
    template: Option<&str>,
    short_id: &str,
) -> Result<Target> {
    let renames: BTreeMap<String, String> = volumes.iter().map(|v| (v.source_pvc.clone(), v.pvc.clone())).collect();
    let mut claims = BTreeMap::new();
    let mut claim_templates = BTreeMap::new();
    match workload {
        Workload::Deployment(deployment) => {
            let pod = deployment
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.clone())
                .unwrap_or_default();
            let mounted = plan::claims_of(&pod);
            for (old, new) in &renames {
                // A restore that resumes finds the Deployment already re-pointed.
                if mounted.contains(old) || mounted.contains(new) {
                    claims.insert(old.clone(), new.clone());
                }
            }
        }
        Workload::StatefulSet(statefulset) => {
            let name = statefulset.name_any();
            let templates = plan::claim_templates(&statefulset.spec.clone().unwrap_or_default());
            for volume in volumes {
                if let Some((claim_template, _)) = plan::statefulset_claim(&volume.source_pvc, &name, &templates) {
                    let renamed =
                        plan::render_name(template, &claim_template, short_id, 63).map_err(Error::InvalidSpec)?;
                    claim_templates.insert(claim_template, renamed);
                    claims.insert(volume.source_pvc.clone(), volume.pvc.clone());
                }
            }
        }
    }
    if claims.is_empty() {
        return Err(refused(
            "TargetMismatch",
            format!(
                "{} '{}' mounts none of the backed-up PVCs ({}): fix spec.target or leave it out to only create the PVCs",
                reference.kind,
                reference.name,
                volumes
                    .iter()
                    .map(|v| v.source_pvc.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    Ok(Target {
        kind: reference.kind,
        name: reference.name.clone(),
        claims,
        claim_templates,
    })
}

/// Refuses a claim name that exists, unless this restore made that claim (a restart).
async fn check_name_free(pvcs: &Api<PersistentVolumeClaim>, name: &str, restore: &str) -> Result<()> {
    match pvcs.get_opt(name).await? {
        None => Ok(()),
        Some(existing) if existing.labels().get(RESTORE_LABEL) == Some(&label_value(restore)) => Ok(()),
        Some(_) => Err(refused(
            "PVCNameTaken",
            format!("PersistentVolumeClaim '{name}' already exists: choose another spec.pvcNameTemplate or delete it"),
        )),
    }
}

/// The snapshot exists, is ready, and fits the claim.
async fn check_snapshot(volume: &mut PlannedVolume, namespace: &str, ctx: &Context) -> Result<()> {
    let name = volume.snapshot.clone().ok_or_else(|| {
        refused(
            "SnapshotNotFound",
            format!("the backup recorded no VolumeSnapshot of PVC '{}'", volume.source_pvc),
        )
    })?;
    let snapshots: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), namespace);
    let snapshot = snapshots.get_opt(&name).await?.ok_or_else(|| {
        refused(
            "SnapshotNotFound",
            format!("VolumeSnapshot '{name}' of PVC '{}' no longer exists: restore from the copy (source Copy) if the backup has one", volume.source_pvc),
        )
    })?;
    let status = snapshot.status.clone().unwrap_or_default();
    if let Some(error) = status.error.and_then(|e| e.message) {
        return Err(refused(
            "SnapshotFailed",
            format!("VolumeSnapshot '{name}' failed: {error}"),
        ));
    }
    if status.ready_to_use != Some(true) {
        return Err(refused(
            "SnapshotNotReady",
            format!("VolumeSnapshot '{name}' is not ready to use"),
        ));
    }
    // The volume must hold the snapshot: ask for at least its restore size.
    volume.capacity = plan::larger_quantity(
        volume.capacity.as_deref(),
        status.restore_size.as_ref().map(|q| q.0.as_str()),
    );
    Ok(())
}

/// The copy is complete (its manifest, written last, exists) and its files fit the claim.
async fn check_copy(volume: &PlannedVolume, copies: &Copies) -> Result<()> {
    let path = volume.artifact_path.clone().ok_or_else(|| {
        refused(
            "CopyNotFound",
            format!("the backup recorded no copy of PVC '{}'", volume.source_pvc),
        )
    })?;
    let manifest = stowage_core::read_manifest(copies.storage.store.as_ref(), &path)
        .await
        .map_err(|error| {
            refused(
                "CopyNotFound",
                format!("the copy of PVC '{}' cannot be used: {error}", volume.source_pvc),
            )
        })?;
    if manifest.artifact.encrypted() && copies.identities.is_empty() {
        return Err(Error::InvalidSpec(format!(
            "the copy {path} is encrypted to {}: set spec.decryptionKey (or the backup's copy.encryption.decryptionKey) to a Secret key holding one of their private keys",
            manifest.artifact.recipients.join(", ")
        )));
    }
    let capacity = volume.capacity.as_deref().and_then(quantity_bytes);
    if let Some(capacity) = capacity
        && manifest.artifact.plaintext_bytes > capacity
    {
        return Err(refused(
            "VolumeTooSmall",
            format!(
                "the copy of PVC '{}' holds {} but the new volume would have {}",
                volume.source_pvc,
                stowage_core::human_bytes(manifest.artifact.plaintext_bytes),
                volume.capacity.as_deref().unwrap_or_default()
            ),
        ));
    }
    Ok(())
}

/// `<restore>-<suffix>`, within the 63 characters a Pod name allows.
pub fn child_name(restore: &str, suffix: &str) -> String {
    let keep = 63usize.saturating_sub(suffix.len() + 1);
    let restore = if restore.len() > keep {
        restore[..keep].trim_end_matches(['-', '.'])
    } else {
        restore
    };
    format!("{restore}-{suffix}")
}

/// The ConfigMap holding a StatefulSet as it was before the restore recreated it.
pub fn saved_statefulset_name(restore: &str) -> String {
    child_name(restore, "statefulset")
}

/// A label value: at most 63 characters, alphanumeric at both ends.
pub fn label_value(name: &str) -> String {
    let cut = if name.len() > 63 { &name[..63] } else { name };
    cut.trim_end_matches(['-', '.']).to_string()
}

/// The owner reference of objects that live only as long as the restore (its fill Pods and
/// saved StatefulSet), never of the claims it creates.
pub fn owner(restore: &VolumeRestore) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    restore.controller_owner_ref(&())
}

/// "restoring VolumeBackup 'nightly' from its snapshots: data → data-restored-1a2b3, …"
pub fn describe(plan: &Plan) -> String {
    let pairs: Vec<String> = plan
        .volumes
        .iter()
        .map(|v| format!("{} → {}", v.source_pvc, v.pvc))
        .collect();
    let source = match plan.source {
        RestoreSource::Snapshot => "snapshots",
        RestoreSource::Copy => "copies",
    };
    let target = match &plan.target {
        Some(target) => format!(", then {} '{}' moves onto them", target.kind, target.name),
        None => String::new(),
    };
    format!(
        "restoring VolumeBackup '{}' from its {source}: {}{target}",
        plan.backup,
        pairs.join(", ")
    )
}
