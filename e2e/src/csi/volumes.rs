//! Provisioning: a PersistentVolume (a host directory) for every pending PVC,
//! binding, and cleanup once the PVC is gone.
//!
//! kube-controller-manager's persistentvolume-binder runs beside the simulator
//! and binds a PVC to a PV pre-bound to it by `claimRef`. The simulator writes
//! the very same end state (PV phase Bound; PVC `spec.volumeName`, the
//! bind-completed annotations, phase Bound with capacity and access modes)
//! with merge patches, so whichever of the two writes first, the other finds
//! nothing left to change.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{DeleteParams, Patch};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt as _};
use serde_json::json;

use super::types::{GROUP, VolumeSnapshot, VolumeSnapshotContent};
use super::{CLEANUP_FINALIZER, DRIVER, MANAGED_BY_LABEL, MANAGER, Sim, disk};

/// How often a PVC waiting for its data source (a snapshot that is not ready,
/// a source PVC that is not bound) looks again.
const WAIT_FOR_SOURCE: Duration = Duration::from_secs(1);

/// The PV the simulator provisions for a claim, named as the upstream external
/// provisioner names it.
pub(super) fn volume_name(claim_uid: &str) -> String {
    format!("pvc-{claim_uid}")
}

/// Provisions and binds one PVC.
pub(super) async fn reconcile_claim(claim: Arc<PersistentVolumeClaim>, sim: Arc<Sim>) -> anyhow::Result<Action> {
    if claim.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let (Some(namespace), Some(uid)) = (claim.namespace(), claim.uid()) else {
        return Ok(Action::await_change());
    };
    let spec = claim.spec.clone().unwrap_or_default();
    let pv_name = volume_name(&uid);
    match spec.volume_name.as_deref() {
        // The user asked for a specific PV, or the binder matched an existing
        // one: not the simulator's business.
        Some(other) if !other.is_empty() && other != pv_name => return Ok(Action::await_change()),
        _ => {}
    }
    let phase = claim.status.as_ref().and_then(|status| status.phase.as_deref());
    if phase == Some("Bound") && spec.volume_name.as_deref() == Some(pv_name.as_str()) {
        return Ok(Action::await_change());
    }

    let volumes = Api::<PersistentVolume>::all(sim.client.clone());
    let volume = match volumes.get_opt(&pv_name).await? {
        Some(volume) => volume,
        None => match provision(&claim, &namespace, &uid, &sim).await? {
            Some(volume) => volume,
            None => return Ok(Action::requeue(WAIT_FOR_SOURCE)),
        },
    };
    bind(&claim, &namespace, &volume, &sim).await?;
    Ok(Action::await_change())
}

/// Fills the claim's directory and creates its PV, or returns None while the
/// data source is not ready.
async fn provision(
    claim: &PersistentVolumeClaim,
    namespace: &str,
    uid: &str,
    sim: &Sim,
) -> anyhow::Result<Option<PersistentVolume>> {
    let name = claim.name_any();
    let pv_name = volume_name(uid);
    let spec = claim.spec.clone().unwrap_or_default();
    let dir = sim.volumes_dir.join(&pv_name);
    let mut capacity = spec
        .resources
        .as_ref()
        .and_then(|resources| resources.requests.as_ref()?.get("storage").cloned())
        .unwrap_or_else(|| Quantity("1Gi".into()));

    // A directory left by an earlier attempt is complete (copies are renamed
    // into place), so it is reused.
    if !dir.exists() {
        match spec.data_source.as_ref() {
            Some(source) if source.kind == "VolumeSnapshot" && source.api_group.as_deref() == Some(GROUP) => {
                let Some((from, restore_size)) = snapshot_copy(namespace, &source.name, sim).await? else {
                    return Ok(None);
                };
                if disk::quantity_bytes(&capacity.0)? < disk::quantity_bytes(&restore_size.0)? {
                    sim.log.line(format_args!(
                        "pvc {namespace}/{name}: requests {} but snapshot {} needs {}: not provisioning",
                        capacity.0, source.name, restore_size.0
                    ));
                    return Ok(None);
                }
                disk::copy_tree(&from, &dir).await?;
                sim.log.line(format_args!(
                    "pvc {namespace}/{name}: restored snapshot {} into {pv_name}",
                    source.name
                ));
            }
            Some(source)
                if source.kind == "PersistentVolumeClaim" && source.api_group.as_deref().unwrap_or("").is_empty() =>
            {
                let Some((from, source_capacity)) = claim_directory(namespace, &source.name, sim).await? else {
                    return Ok(None);
                };
                // A clone is at least as big as its source, as CSI requires.
                if disk::quantity_bytes(&capacity.0)? < disk::quantity_bytes(&source_capacity.0)? {
                    capacity = source_capacity;
                }
                disk::copy_tree(&from, &dir).await?;
                sim.log.line(format_args!(
                    "pvc {namespace}/{name}: cloned pvc {} into {pv_name}",
                    source.name
                ));
            }
            Some(source) => {
                sim.log.line(format_args!(
                    "pvc {namespace}/{name}: unsupported dataSource {}/{} {}: provisioning an empty volume",
                    source.api_group.as_deref().unwrap_or(""),
                    source.kind,
                    source.name
                ));
                disk::create_empty(&dir).await?;
            }
            None => disk::create_empty(&dir).await?,
        }
    }

    let access_modes = spec
        .access_modes
        .clone()
        .filter(|modes| !modes.is_empty())
        .unwrap_or_else(|| vec!["ReadWriteOnce".into()]);
    let volume: PersistentVolume = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": pv_name,
            "labels": {MANAGED_BY_LABEL: MANAGER},
            // Tells the binder an external provisioner owns this PV, so it
            // waits for the simulator to delete it instead of failing it.
            "annotations": {"pv.kubernetes.io/provisioned-by": DRIVER},
            "finalizers": [CLEANUP_FINALIZER],
        },
        "spec": {
            "capacity": {"storage": capacity},
            "accessModes": access_modes,
            "hostPath": {"path": dir, "type": "Directory"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": namespace,
                "name": name,
                "uid": uid,
            },
            "persistentVolumeReclaimPolicy": "Delete",
            // The binder only binds a PV whose class and mode match the claim's.
            "storageClassName": spec.storage_class_name.clone().unwrap_or_default(),
            "volumeMode": spec.volume_mode.clone().unwrap_or_else(|| "Filesystem".into()),
        },
    }))?;
    let volumes = Api::<PersistentVolume>::all(sim.client.clone());
    let created = match volumes.create(&super::post_params(), &volume).await {
        Ok(created) => created,
        Err(kube::Error::Api(status)) if status.is_already_exists() => volumes.get(&pv_name).await?,
        Err(error) => return Err(error).with_context(|| format!("create PV {pv_name}")),
    };
    sim.log.line(format_args!(
        "pvc {namespace}/{name}: provisioned PV {pv_name} at {}",
        dir.display()
    ));
    Ok(Some(created))
}

/// The directory and restore size of a ready snapshot, or None while it is not
/// ready.
async fn snapshot_copy(
    namespace: &str,
    snapshot_name: &str,
    sim: &Sim,
) -> anyhow::Result<Option<(std::path::PathBuf, Quantity)>> {
    let snapshot = Api::<VolumeSnapshot>::namespaced(sim.client.clone(), namespace)
        .get_opt(snapshot_name)
        .await?;
    let Some(status) = snapshot.and_then(|snapshot| snapshot.status) else {
        return Ok(None);
    };
    let (Some(true), Some(content_name)) = (status.ready_to_use, status.bound_volume_snapshot_content_name) else {
        return Ok(None);
    };
    let content = Api::<VolumeSnapshotContent>::all(sim.client.clone())
        .get_opt(&content_name)
        .await?;
    let Some(handle) = content.and_then(|content| content.status?.snapshot_handle) else {
        return Ok(None);
    };
    let restore_size = status.restore_size.unwrap_or_else(|| Quantity("0".into()));
    Ok(Some((sim.snapshots_dir.join(handle), restore_size)))
}

/// The host directory and capacity of a bound PVC, or None while it is not
/// bound.
async fn claim_directory(
    namespace: &str,
    claim_name: &str,
    sim: &Sim,
) -> anyhow::Result<Option<(std::path::PathBuf, Quantity)>> {
    let claim = Api::<PersistentVolumeClaim>::namespaced(sim.client.clone(), namespace)
        .get_opt(claim_name)
        .await?;
    let Some(volume) = bound_volume(claim.as_ref(), sim).await? else {
        return Ok(None);
    };
    let spec = volume.spec.unwrap_or_default();
    let path = spec.host_path.map(|host_path| host_path.path);
    let capacity = spec.capacity.and_then(|capacity| capacity.get("storage").cloned());
    Ok(path.zip(capacity).map(|(path, capacity)| (path.into(), capacity)))
}

/// The PV a claim is bound to, if it is bound.
pub(super) async fn bound_volume(
    claim: Option<&PersistentVolumeClaim>,
    sim: &Sim,
) -> anyhow::Result<Option<PersistentVolume>> {
    let Some(claim) = claim else { return Ok(None) };
    let bound = claim.status.as_ref().and_then(|status| status.phase.as_deref()) == Some("Bound");
    let volume_name = claim
        .spec
        .as_ref()
        .and_then(|spec| spec.volume_name.as_deref())
        .unwrap_or("");
    if !bound || volume_name.is_empty() {
        return Ok(None);
    }
    Ok(Api::<PersistentVolume>::all(sim.client.clone())
        .get_opt(volume_name)
        .await?)
}

/// Writes the bound state the binder would write; each patch is a no-op when
/// the binder got there first.
async fn bind(
    claim: &PersistentVolumeClaim,
    namespace: &str,
    volume: &PersistentVolume,
    sim: &Sim,
) -> anyhow::Result<()> {
    let pv_name = volume.name_any();
    let params = super::patch_params();
    let volumes = Api::<PersistentVolume>::all(sim.client.clone());
    if volume.status.as_ref().and_then(|status| status.phase.as_deref()) != Some("Bound") {
        volumes
            .patch_status(&pv_name, &params, &Patch::Merge(json!({"status": {"phase": "Bound"}})))
            .await
            .with_context(|| format!("mark PV {pv_name} Bound"))?;
    }

    let claims = Api::<PersistentVolumeClaim>::namespaced(sim.client.clone(), namespace);
    let name = claim.name_any();
    let annotations: BTreeMap<&str, &str> = [
        ("pv.kubernetes.io/bind-completed", "yes"),
        ("pv.kubernetes.io/bound-by-controller", "yes"),
    ]
    .into();
    let already = claim.spec.as_ref().and_then(|spec| spec.volume_name.as_deref()) == Some(pv_name.as_str())
        && annotations.keys().all(|key| claim.annotations().contains_key(*key));
    if !already {
        claims
            .patch(
                &name,
                &params,
                &Patch::Merge(json!({"metadata": {"annotations": annotations}, "spec": {"volumeName": pv_name}})),
            )
            .await
            .with_context(|| format!("bind PVC {namespace}/{name} to {pv_name}"))?;
    }

    let volume_spec = volume.spec.clone().unwrap_or_default();
    claims
        .patch_status(
            &name,
            &params,
            &Patch::Merge(json!({"status": {
                "phase": "Bound",
                "capacity": volume_spec.capacity,
                "accessModes": volume_spec.access_modes,
            }})),
        )
        .await
        .with_context(|| format!("mark PVC {namespace}/{name} Bound"))?;
    sim.log.line(format_args!("pvc {namespace}/{name}: bound to {pv_name}"));
    Ok(())
}

/// The PVs to look at when a PVC changes or goes: the one provisioned for it
/// and the one it is bound to.
pub(super) fn volumes_of_claim(claim: PersistentVolumeClaim) -> Vec<ObjectRef<PersistentVolume>> {
    let mut names: Vec<String> = claim.uid().map(|uid| volume_name(&uid)).into_iter().collect();
    if let Some(bound) = claim
        .spec
        .and_then(|spec| spec.volume_name)
        .filter(|name| !name.is_empty())
    {
        names.push(bound);
    }
    names.dedup();
    names.into_iter().map(|name| ObjectRef::new(&name)).collect()
}

/// Deletes a provisioned PV and its directory once its claim is gone (or was
/// bound to another PV).
pub(super) async fn reconcile_volume(volume: Arc<PersistentVolume>, sim: Arc<Sim>) -> anyhow::Result<Action> {
    let pv_name = volume.name_any();
    let dir = sim.volumes_dir.join(&pv_name);
    if volume.metadata.deletion_timestamp.is_some() {
        disk::remove_tree(&dir).await?;
        super::release(&Api::<PersistentVolume>::all(sim.client.clone()), volume.as_ref()).await?;
        return Ok(Action::await_change());
    }
    let Some(claim_ref) = volume.spec.as_ref().and_then(|spec| spec.claim_ref.as_ref()) else {
        return Ok(Action::await_change());
    };
    let namespace = claim_ref.namespace.clone().unwrap_or_default();
    let claim_name = claim_ref.name.clone().unwrap_or_default();
    // Ask the API server, not a cache: deleting data on a stale view would be
    // a bug no test forgives.
    let claim = Api::<PersistentVolumeClaim>::namespaced(sim.client.clone(), &namespace)
        .get_opt(&claim_name)
        .await?;
    let orphaned = match &claim {
        None => true,
        Some(claim) => {
            let other_volume = claim
                .spec
                .as_ref()
                .and_then(|spec| spec.volume_name.as_deref())
                .unwrap_or("");
            claim.uid() != claim_ref.uid || (!other_volume.is_empty() && other_volume != pv_name)
        }
    };
    if !orphaned {
        return Ok(Action::await_change());
    }
    disk::remove_tree(&dir).await?;
    match Api::<PersistentVolume>::all(sim.client.clone())
        .delete(&pv_name, &DeleteParams::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_not_found() => {}
        Err(error) => return Err(error).with_context(|| format!("delete PV {pv_name}")),
    }
    sim.log.line(format_args!(
        "pv {pv_name}: claim {namespace}/{claim_name} is gone: deleted the PV and {}",
        dir.display()
    ));
    Ok(Action::await_change())
}
