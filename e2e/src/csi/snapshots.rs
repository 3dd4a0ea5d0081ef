//! Snapshots: a copy of the volume's directory per VolumeSnapshot, reported in
//! two steps (the cut, then ready to use), and deleted with its snapshot when
//! the deletion policy says so.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt as _};
use serde_json::json;

use super::types::{
    DEFAULT_SNAPSHOT_CLASS_ANNOTATION, DeletionPolicy, VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotContent,
    VolumeSnapshotContentSource, VolumeSnapshotContentSpec,
};
use super::{
    CLEANUP_FINALIZER, DRIVER, FAIL_SNAPSHOT_ANNOTATION, MANAGED_BY_LABEL, MANAGER, READY_DELAY_ANNOTATION,
    SNAPSHOT_PATH_ANNOTATION, Sim, annotation, disk,
};

/// The default time between the cut and `readyToUse: true`.
const DEFAULT_READY_DELAY: Duration = Duration::from_secs(1);
/// How often a snapshot of a PVC that is not bound yet looks again.
const WAIT_FOR_CLAIM: Duration = Duration::from_secs(1);

/// The content the simulator creates for a snapshot, named as the upstream
/// snapshot controller names it.
fn content_name(snapshot_uid: &str) -> String {
    format!("snapcontent-{snapshot_uid}")
}

/// Takes one snapshot, one step per call.
pub(super) async fn reconcile_snapshot(snapshot: Arc<VolumeSnapshot>, sim: Arc<Sim>) -> anyhow::Result<Action> {
    if snapshot.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let (Some(namespace), Some(uid)) = (snapshot.namespace(), snapshot.uid()) else {
        return Ok(Action::await_change());
    };
    let status = snapshot.status.clone().unwrap_or_default();
    if status.ready_to_use == Some(true) {
        return Ok(Action::await_change());
    }
    let name = snapshot.name_any();
    let snapshots = Api::<VolumeSnapshot>::namespaced(sim.client.clone(), &namespace);
    let contents = Api::<VolumeSnapshotContent>::all(sim.client.clone());
    let content_name = content_name(&uid);

    let content = match contents.get_opt(&content_name).await? {
        Some(content) => content,
        None => {
            let Some(claim_name) = snapshot.spec.source.persistent_volume_claim_name.clone() else {
                let message = "the CSI simulator does not bind pre-existing VolumeSnapshotContents \
                               (spec.source.volumeSnapshotContentName): take a snapshot of a PVC instead";
                return fail(&snapshots, &snapshot, message, &sim).await;
            };
            let claims = Api::<PersistentVolumeClaim>::namespaced(sim.client.clone(), &namespace);
            let Some(claim) = claims.get_opt(&claim_name).await? else {
                let message = format!("PersistentVolumeClaim {namespace}/{claim_name} not found");
                fail(&snapshots, &snapshot, &message, &sim).await?;
                return Ok(Action::requeue(WAIT_FOR_CLAIM));
            };
            if let Some(message) = annotation(FAIL_SNAPSHOT_ANNOTATION, snapshot.as_ref(), Some(&claim)) {
                return fail(&snapshots, &snapshot, message, &sim).await;
            }
            let Some(volume) = super::volumes::bound_volume(Some(&claim), &sim).await? else {
                return Ok(Action::requeue(WAIT_FOR_CLAIM));
            };
            let class = snapshot_class(snapshot.spec.volume_snapshot_class_name.as_deref(), &sim).await;
            let class = match class {
                Ok(class) => class,
                Err(error) => {
                    return fail(&snapshots, &snapshot, &format!("{error:#}"), &sim).await;
                }
            };
            let volume_spec = volume.spec.clone().unwrap_or_default();
            let from = volume_spec.host_path.map(|host_path| host_path.path).ok_or_else(|| {
                anyhow!(
                    "PV {} of PVC {namespace}/{claim_name} has no hostPath",
                    volume.name_any()
                )
            })?;
            let size = volume_spec
                .capacity
                .and_then(|capacity| capacity.get("storage").cloned())
                .unwrap_or_else(|| Quantity("0".into()));

            // The cut: the copy is the snapshot. A copy left by an attempt
            // that died before creating the content is not trusted.
            let copy = sim.snapshots_dir.join(&content_name);
            disk::remove_tree(&copy).await?;
            let cut = Timestamp::now();
            disk::copy_tree(from.as_ref(), &copy).await?;
            create_content(&snapshot, &content_name, &volume.name_any(), &class, &sim).await?;
            let content_status = json!({"status": {
                "creationTime": i64::try_from(cut.as_nanosecond()).unwrap_or(i64::MAX),
                "readyToUse": false,
                "restoreSize": disk::quantity_bytes(&size.0)?,
                "snapshotHandle": content_name,
            }});
            contents
                .patch_status(&content_name, &super::patch_params(), &Patch::Merge(content_status))
                .await
                .with_context(|| format!("report the cut on VolumeSnapshotContent {content_name}"))?;
            sim.log.line(format_args!(
                "snapshot {namespace}/{name}: copied pvc {claim_name} ({from}) to {}",
                copy.display()
            ));
            return report_cut(&snapshots, &snapshot, &content_name, cut, size, &sim).await;
        }
    };

    if content.metadata.deletion_timestamp.is_some() {
        // A content being deleted (see below) must be gone before it is retaken.
        return Ok(Action::requeue(WAIT_FOR_CLAIM));
    }
    let content_status = content.status.clone().unwrap_or_default();
    let cut = content_status
        .creation_time
        .and_then(|nanos| Timestamp::from_nanosecond(i128::from(nanos)).ok());
    let Some(cut) = cut else {
        // An attempt died between creating the content and reporting its cut,
        // so when the copy was made is unknown: take the snapshot again.
        Api::<VolumeSnapshotContent>::all(sim.client.clone())
            .delete(&content_name, &DeleteParams::default())
            .await
            .with_context(|| format!("delete the unfinished VolumeSnapshotContent {content_name}"))?;
        return Ok(Action::requeue(WAIT_FOR_CLAIM));
    };
    if status.creation_time.is_none() || status.bound_volume_snapshot_content_name.is_none() {
        // The content exists but the snapshot never heard of it (a conflict or
        // a restart in between): report the cut now.
        let size_bytes = content_status.restore_size.unwrap_or_default();
        return report_cut(
            &snapshots,
            &snapshot,
            &content_name,
            cut,
            Quantity(size_bytes.to_string()),
            &sim,
        )
        .await;
    }

    let delay = ready_delay(&snapshot, &sim).await;
    let since_cut = Timestamp::now().duration_since(cut);
    let since_cut = Duration::try_from(since_cut).unwrap_or_default();
    if since_cut < delay {
        return Ok(Action::requeue(delay - since_cut));
    }
    let ready = json!({"status": {"readyToUse": true}});
    contents
        .patch_status(&content_name, &super::patch_params(), &Patch::Merge(ready.clone()))
        .await
        .with_context(|| format!("mark VolumeSnapshotContent {content_name} ready"))?;
    snapshots
        .patch_status(&name, &super::patch_params(), &Patch::Merge(ready))
        .await
        .with_context(|| format!("mark VolumeSnapshot {namespace}/{name} ready"))?;
    sim.log.line(format_args!(
        "snapshot {namespace}/{name}: ready to use ({content_name})"
    ));
    Ok(Action::await_change())
}

/// The first status step: the snapshot is cut and bound, not yet ready.
async fn report_cut(
    snapshots: &Api<VolumeSnapshot>,
    snapshot: &VolumeSnapshot,
    content_name: &str,
    cut: Timestamp,
    size: Quantity,
    sim: &Sim,
) -> anyhow::Result<Action> {
    let name = snapshot.name_any();
    let status = json!({"status": {
        "boundVolumeSnapshotContentName": content_name,
        "creationTime": Time(cut),
        "readyToUse": false,
        "restoreSize": size,
        "error": null,
    }});
    snapshots
        .patch_status(&name, &super::patch_params(), &Patch::Merge(status))
        .await
        .with_context(|| format!("report the cut on VolumeSnapshot {name}"))?;
    sim.log.line(format_args!(
        "snapshot {}/{name}: cut at {cut}, bound to {content_name}",
        snapshot.namespace().unwrap_or_default()
    ));
    Ok(Action::requeue(ready_delay(snapshot, sim).await))
}

/// Reports a failed snapshot in `status.error`, once per message.
async fn fail(
    snapshots: &Api<VolumeSnapshot>,
    snapshot: &VolumeSnapshot,
    message: &str,
    sim: &Sim,
) -> anyhow::Result<Action> {
    let name = snapshot.name_any();
    let current = snapshot
        .status
        .as_ref()
        .and_then(|status| status.error.as_ref()?.message.as_deref());
    if current != Some(message) {
        let status = json!({"status": {
            "readyToUse": false,
            "error": {"time": Time(Timestamp::now()), "message": message},
        }});
        snapshots
            .patch_status(&name, &super::patch_params(), &Patch::Merge(status))
            .await
            .with_context(|| format!("report the failure of VolumeSnapshot {name}"))?;
        sim.log.line(format_args!(
            "snapshot {}/{name}: failed: {message}",
            snapshot.namespace().unwrap_or_default()
        ));
    }
    Ok(Action::await_change())
}

/// The class a snapshot asks for, or the simulator driver's default class.
async fn snapshot_class(requested: Option<&str>, sim: &Sim) -> anyhow::Result<VolumeSnapshotClass> {
    let classes = Api::<VolumeSnapshotClass>::all(sim.client.clone());
    if let Some(name) = requested {
        let class = classes
            .get_opt(name)
            .await?
            .ok_or_else(|| anyhow!("VolumeSnapshotClass {name} not found"))?;
        if class.spec.driver != DRIVER {
            return Err(anyhow!(
                "VolumeSnapshotClass {name} is for driver {}, not the simulator's {DRIVER}",
                class.spec.driver
            ));
        }
        return Ok(class);
    }
    let defaults: Vec<VolumeSnapshotClass> = classes
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|class| {
            class.spec.driver == DRIVER
                && class
                    .annotations()
                    .get(DEFAULT_SNAPSHOT_CLASS_ANNOTATION)
                    .map(String::as_str)
                    == Some("true")
        })
        .collect();
    match <[VolumeSnapshotClass; 1]>::try_from(defaults) {
        Ok([class]) => Ok(class),
        Err(defaults) if defaults.is_empty() => Err(anyhow!("no default VolumeSnapshotClass for driver {DRIVER}")),
        Err(_) => Err(anyhow!("more than one default VolumeSnapshotClass for driver {DRIVER}")),
    }
}

async fn create_content(
    snapshot: &VolumeSnapshot,
    content_name: &str,
    volume_handle: &str,
    class: &VolumeSnapshotClass,
    sim: &Sim,
) -> anyhow::Result<()> {
    let mut content = VolumeSnapshotContent::new(
        content_name,
        VolumeSnapshotContentSpec {
            deletion_policy: class.spec.deletion_policy,
            driver: DRIVER.into(),
            source: VolumeSnapshotContentSource {
                volume_handle: Some(volume_handle.into()),
                snapshot_handle: None,
            },
            source_volume_mode: Some("Filesystem".into()),
            volume_snapshot_class_name: Some(class.name_any()),
            volume_snapshot_ref: ObjectReference {
                api_version: Some(<VolumeSnapshot as kube::Resource>::api_version(&()).into_owned()),
                kind: Some(<VolumeSnapshot as kube::Resource>::kind(&()).into_owned()),
                namespace: snapshot.namespace(),
                name: Some(snapshot.name_any()),
                uid: snapshot.uid(),
                ..Default::default()
            },
        },
    );
    content.labels_mut().insert(MANAGED_BY_LABEL.into(), MANAGER.into());
    content.finalizers_mut().push(CLEANUP_FINALIZER.into());
    let copy = sim.snapshots_dir.join(content_name);
    content
        .annotations_mut()
        .insert(SNAPSHOT_PATH_ANNOTATION.into(), copy.display().to_string());
    let contents = Api::<VolumeSnapshotContent>::all(sim.client.clone());
    match contents.create(&super::post_params(), &content).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(()),
        Err(error) => Err(error).with_context(|| format!("create VolumeSnapshotContent {content_name}")),
    }
}

/// The delay between the cut and ready, from the snapshot's or its PVC's
/// annotation.
async fn ready_delay(snapshot: &VolumeSnapshot, sim: &Sim) -> Duration {
    let claim = match (
        snapshot.namespace(),
        snapshot.spec.source.persistent_volume_claim_name.as_deref(),
    ) {
        (Some(namespace), Some(claim_name)) => Api::<PersistentVolumeClaim>::namespaced(sim.client.clone(), &namespace)
            .get_opt(claim_name)
            .await
            .ok()
            .flatten(),
        _ => None,
    };
    annotation(READY_DELAY_ANNOTATION, snapshot, claim.as_ref())
        .and_then(|seconds| seconds.trim().parse::<f64>().ok())
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .unwrap_or(DEFAULT_READY_DELAY)
}

/// The content to look at when a snapshot changes or goes.
pub(super) fn contents_of_snapshot(snapshot: VolumeSnapshot) -> Vec<ObjectRef<VolumeSnapshotContent>> {
    let mut names: Vec<String> = snapshot.uid().map(|uid| content_name(&uid)).into_iter().collect();
    if let Some(bound) = snapshot
        .status
        .and_then(|status| status.bound_volume_snapshot_content_name)
    {
        names.push(bound);
    }
    names.dedup();
    names.into_iter().map(|name| ObjectRef::new(&name)).collect()
}

/// Deletes a content with deletionPolicy Delete, and its copy, once its
/// snapshot is gone.
pub(super) async fn reconcile_content(content: Arc<VolumeSnapshotContent>, sim: Arc<Sim>) -> anyhow::Result<Action> {
    let content_name = content.name_any();
    let copy = sim.snapshots_dir.join(&content_name);
    if content.metadata.deletion_timestamp.is_some() {
        disk::remove_tree(&copy).await?;
        super::release(&Api::<VolumeSnapshotContent>::all(sim.client.clone()), content.as_ref()).await?;
        return Ok(Action::await_change());
    }
    if content.spec.deletion_policy != DeletionPolicy::Delete {
        return Ok(Action::await_change());
    }
    let reference = &content.spec.volume_snapshot_ref;
    let (Some(namespace), Some(name)) = (reference.namespace.as_deref(), reference.name.as_deref()) else {
        return Ok(Action::await_change());
    };
    // Ask the API server, not a cache, before deleting data.
    let snapshot = Api::<VolumeSnapshot>::namespaced(sim.client.clone(), namespace)
        .get_opt(name)
        .await?;
    if snapshot.is_some_and(|snapshot| snapshot.uid() == reference.uid) {
        return Ok(Action::await_change());
    }
    disk::remove_tree(&copy).await?;
    match Api::<VolumeSnapshotContent>::all(sim.client.clone())
        .delete(&content_name, &DeleteParams::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_not_found() => {}
        Err(error) => {
            return Err(error).with_context(|| format!("delete VolumeSnapshotContent {content_name}"));
        }
    }
    sim.log.line(format_args!(
        "content {content_name}: snapshot {namespace}/{name} is gone: deleted the content and {}",
        copy.display()
    ));
    Ok(Action::await_change())
}
