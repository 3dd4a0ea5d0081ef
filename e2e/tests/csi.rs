//! Self-tests of the volume and CSI snapshot simulator against the real
//! kube-apiserver and kube-controller-manager of the test bed: provisioning and
//! binding (beside the controller-manager's binder), snapshots in two status
//! steps, failure injection, restores and clones, and cleanup.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::TryStreamExt as _;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};
use serde_json::json;
use stowage_e2e::csi::types::{VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotContent};
use stowage_e2e::csi::{CLASS_NAME, DRIVER, FAIL_SNAPSHOT_ANNOTATION, SNAPSHOT_PATH_ANNOTATION};
use stowage_e2e::{TestBed, bed, wait_for};

/// Every test bed runs the simulator (and lists its log); fail clearly if this
/// one does not.
fn simulator(bed: &TestBed) -> anyhow::Result<()> {
    anyhow::ensure!(
        bed.logs().iter().any(|(name, _)| name == "csi-simulator"),
        "the test bed runs no CSI simulator: start it with `cargo xtask envtest start`, \
         or unset STOWAGE_TESTBED_DIR to let the tests start their own bed"
    );
    Ok(())
}

async fn create_claim(
    client: &Client,
    ns: &str,
    name: &str,
    extra_spec: serde_json::Value,
    annotations: serde_json::Value,
) -> anyhow::Result<PersistentVolumeClaim> {
    let mut spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "1Gi"}},
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        spec.extend(extra.clone());
    }
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": spec,
    }))?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    Ok(claims.create(&PostParams::default(), &claim).await?)
}

/// Waits until the claim is Bound and returns its PV and the PV's directory.
async fn bound(client: &Client, ns: &str, name: &str) -> anyhow::Result<(PersistentVolume, PathBuf)> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    wait_for(&format!("PVC {ns}/{name} Bound"), || async {
        let claim = claims.get(name).await?;
        let phase = claim.status.as_ref().and_then(|status| status.phase.clone());
        let volume_name = claim.spec.as_ref().and_then(|spec| spec.volume_name.clone());
        let (Some("Bound"), Some(volume_name)) = (phase.as_deref(), volume_name) else {
            return Ok(None);
        };
        let volume = volumes.get(&volume_name).await?;
        let path = volume
            .spec
            .as_ref()
            .and_then(|spec| spec.host_path.as_ref())
            .map(|host_path| PathBuf::from(&host_path.path));
        Ok(path.map(|path| (volume, path)))
    })
    .await
}

async fn create_snapshot(
    client: &Client,
    ns: &str,
    name: &str,
    claim: &str,
    annotations: serde_json::Value,
) -> anyhow::Result<VolumeSnapshot> {
    let snapshot: VolumeSnapshot = serde_json::from_value(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"source": {"persistentVolumeClaimName": claim}},
    }))?;
    let snapshots: Api<VolumeSnapshot> = Api::namespaced(client.clone(), ns);
    Ok(snapshots.create(&PostParams::default(), &snapshot).await?)
}

async fn ready(client: &Client, ns: &str, name: &str) -> anyhow::Result<VolumeSnapshot> {
    let snapshots: Api<VolumeSnapshot> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("VolumeSnapshot {ns}/{name} readyToUse"), || async {
        let snapshot = snapshots.get(name).await?;
        let ready = snapshot.status.as_ref().and_then(|status| status.ready_to_use);
        Ok((ready == Some(true)).then_some(snapshot))
    })
    .await
}

async fn content_of(client: &Client, snapshot: &VolumeSnapshot) -> anyhow::Result<VolumeSnapshotContent> {
    let name = snapshot
        .status
        .as_ref()
        .and_then(|status| status.bound_volume_snapshot_content_name.clone())
        .ok_or_else(|| anyhow::anyhow!("snapshot {} is not bound", snapshot.name_any()))?;
    Ok(Api::<VolumeSnapshotContent>::all(client.clone()).get(&name).await?)
}

fn copy_path(content: &VolumeSnapshotContent) -> anyhow::Result<PathBuf> {
    content
        .annotations()
        .get(SNAPSHOT_PATH_ANNOTATION)
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("content {} has no {SNAPSHOT_PATH_ANNOTATION}", content.name_any()))
}

/// The files a test writes into a volume before its snapshot.
fn write_original_files(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("db"))?;
    std::fs::write(dir.join("db/records"), "1\n2\n3\n")?;
    std::fs::set_permissions(dir.join("db/records"), std::fs::Permissions::from_mode(0o600))?;
    std::fs::write(dir.join("doomed"), "deleted after the snapshot")?;
    std::os::unix::fs::symlink("db/records", dir.join("latest"))?;
    Ok(())
}

/// What the application does after the snapshot was cut.
fn change_files(dir: &Path) -> anyhow::Result<()> {
    std::fs::write(dir.join("db/records"), "1\n2\n3\n4\n")?;
    std::fs::remove_file(dir.join("doomed"))?;
    std::fs::write(dir.join("new"), "written after the snapshot")?;
    Ok(())
}

/// `dir` holds exactly the original files.
fn assert_original_files(dir: &Path) -> anyhow::Result<()> {
    assert_eq!(
        std::fs::read_to_string(dir.join("db/records"))?,
        "1\n2\n3\n",
        "in {}",
        dir.display()
    );
    let mode = std::fs::metadata(dir.join("db/records"))?.permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the mode of db/records in {}", dir.display());
    assert_eq!(
        std::fs::read_to_string(dir.join("doomed"))?,
        "deleted after the snapshot"
    );
    assert_eq!(std::fs::read_link(dir.join("latest"))?, Path::new("db/records"));
    assert!(
        !dir.join("new").exists(),
        "{} holds a file written after the cut",
        dir.display()
    );
    Ok(())
}

#[tokio::test]
async fn pvcs_are_bound_to_host_directories_and_stay_bound() -> anyhow::Result<()> {
    let bed = bed().await?;
    simulator(bed)?;
    bed.with_namespace("csi-bind", |client, ns| async move {
        // One claim gets the default class from the admission plugin, one asks
        // for no class at all: the binder must accept both PVs.
        create_claim(&client, &ns, "data", json!({}), json!({})).await?;
        let no_class = json!({"storageClassName": "", "accessModes": ["ReadWriteOnce", "ReadOnlyMany"],
                              "resources": {"requests": {"storage": "2Gi"}}});
        create_claim(&client, &ns, "plain", no_class, json!({})).await?;

        for (name, size, modes) in [
            ("data", "1Gi", vec!["ReadWriteOnce"]),
            ("plain", "2Gi", vec!["ReadWriteOnce", "ReadOnlyMany"]),
        ] {
            let (volume, dir) = bound(&client, &ns, name).await?;
            assert!(dir.is_dir(), "the volume directory {} exists", dir.display());
            let spec = volume.spec.clone().unwrap_or_default();
            assert_eq!(
                spec.capacity
                    .as_ref()
                    .and_then(|c| c.get("storage"))
                    .map(|q| q.0.as_str()),
                Some(size)
            );
            assert_eq!(spec.access_modes.clone().unwrap_or_default(), modes);
            assert_eq!(spec.persistent_volume_reclaim_policy.as_deref(), Some("Delete"));
            let claim_ref = spec.claim_ref.clone().unwrap_or_default();
            assert_eq!(
                (claim_ref.namespace.as_deref(), claim_ref.name.as_deref()),
                (Some(ns.as_str()), Some(name))
            );
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
            let claim = claims.get(name).await?;
            assert_eq!(claim_ref.uid, claim.uid(), "the PV is bound to this very claim");
            let status = claim.status.clone().unwrap_or_default();
            assert_eq!(
                status.capacity.and_then(|c| c.get("storage").cloned()).map(|q| q.0),
                Some(size.to_string())
            );
            assert_eq!(status.access_modes.unwrap_or_default(), modes);
        }
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        let data = claims.get("data").await?;
        assert_eq!(
            data.spec.and_then(|spec| spec.storage_class_name).as_deref(),
            Some(CLASS_NAME)
        );

        // The binder resyncs every 15 s: after a round the binding is unchanged.
        let (volume, _) = bound(&client, &ns, "data").await?;
        tokio::time::sleep(Duration::from_secs(20)).await;
        let (again, _) = bound(&client, &ns, "data").await?;
        assert_eq!(again.name_any(), volume.name_any());
        let phase = again.status.and_then(|status| status.phase);
        assert_eq!(phase.as_deref(), Some("Bound"), "the PV is still Bound");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_snapshot_holds_the_files_at_its_cut_and_reports_cut_then_ready() -> anyhow::Result<()> {
    let bed = bed().await?;
    simulator(bed)?;
    bed.with_namespace("csi-snap", |client, ns| async move {
        create_claim(&client, &ns, "data", json!({}), json!({})).await?;
        let (volume, dir) = bound(&client, &ns, "data").await?;
        write_original_files(&dir)?;

        let snapshots: Api<VolumeSnapshot> = Api::namespaced(client.clone(), &ns);
        let updates = watcher(
            snapshots.clone(),
            watcher::Config::default().fields("metadata.name=snap"),
        )
        .applied_objects();
        let mut updates = Box::pin(updates);
        create_snapshot(&client, &ns, "snap", "data", json!({})).await?;

        // Every status the snapshot goes through, until it is ready.
        let mut statuses = Vec::new();
        let observe = async {
            while let Some(snapshot) = updates.try_next().await? {
                let status = snapshot.status.clone().unwrap_or_default();
                if status.creation_time.is_some() && statuses.is_empty() {
                    // The cut happened: whatever the application writes now is
                    // not in the snapshot.
                    change_files(&dir)?;
                }
                if status.creation_time.is_some() {
                    statuses.push(status.clone());
                }
                if status.ready_to_use == Some(true) {
                    return anyhow::Ok(snapshot);
                }
            }
            anyhow::bail!("the watch of VolumeSnapshot snap ended")
        };
        let snapshot = tokio::time::timeout(Duration::from_secs(120), observe)
            .await
            .map_err(|_| anyhow::anyhow!("timed out waiting for VolumeSnapshot snap to be ready"))??;

        let cut = statuses.first().cloned().unwrap_or_default();
        assert_eq!(
            cut.ready_to_use,
            Some(false),
            "the cut is reported before readiness: {statuses:?}"
        );
        assert!(
            cut.bound_volume_snapshot_content_name.is_some(),
            "bound at the cut: {statuses:?}"
        );
        assert_eq!(cut.restore_size.as_ref().map(|q| q.0.as_str()), Some("1Gi"));
        let status = snapshot.status.clone().unwrap_or_default();
        assert_eq!(status.creation_time, cut.creation_time, "readiness keeps the cut time");
        assert!(status.error.is_none());

        let content = content_of(&client, &snapshot).await?;
        assert_eq!(content.spec.driver, DRIVER);
        assert_eq!(content.spec.source.volume_handle, Some(volume.name_any()));
        assert_eq!(content.spec.volume_snapshot_class_name.as_deref(), Some(CLASS_NAME));
        let reference = &content.spec.volume_snapshot_ref;
        assert_eq!(reference.name.as_deref(), Some("snap"));
        assert_eq!(reference.namespace.as_deref(), Some(ns.as_str()));
        assert_eq!(reference.uid, snapshot.uid());
        let content_status = content.status.clone().unwrap_or_default();
        assert_eq!(content_status.ready_to_use, Some(true));
        assert_eq!(content_status.restore_size, Some(1 << 30));
        assert!(content_status.snapshot_handle.is_some());
        let cut_seconds = content_status.creation_time.unwrap_or_default() / 1_000_000_000;
        let reported = cut.creation_time.map(|time| time.0.as_second()).unwrap_or_default();
        assert_eq!(cut_seconds, reported, "the content and the snapshot agree on the cut");

        assert_original_files(&copy_path(&content)?)?;
        assert_eq!(std::fs::read_to_string(dir.join("new"))?, "written after the snapshot");

        // The CRDs give kubectl the upstream short names and columns.
        let table = bed.kubectl(["get", "vs", "-n", ns.as_str()]).await?;
        assert!(
            table.contains("READYTOUSE") && table.contains("SOURCEPVC") && table.contains("snap"),
            "{table}"
        );
        let table = bed.kubectl(["get", "vsc", content.name_any().as_str()]).await?;
        assert!(table.contains("DELETIONPOLICY") && table.contains(DRIVER), "{table}");
        let table = bed.kubectl(["get", "vsclass", CLASS_NAME]).await?;
        assert!(table.contains(DRIVER) && table.contains("Delete"), "{table}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn an_annotation_fails_snapshots_until_it_is_removed() -> anyhow::Result<()> {
    let bed = bed().await?;
    simulator(bed)?;
    bed.with_namespace("csi-fail", |client, ns| async move {
        let failing = json!({FAIL_SNAPSHOT_ANNOTATION: "injected: disk on fire"});
        create_claim(&client, &ns, "broken", json!({}), failing.clone()).await?;
        create_claim(&client, &ns, "healthy", json!({}), json!({})).await?;
        bound(&client, &ns, "broken").await?;
        bound(&client, &ns, "healthy").await?;
        create_snapshot(&client, &ns, "of-broken", "broken", json!({})).await?;
        create_snapshot(&client, &ns, "annotated", "healthy", failing).await?;

        let snapshots: Api<VolumeSnapshot> = Api::namespaced(client.clone(), &ns);
        for name in ["of-broken", "annotated"] {
            let failed = wait_for(&format!("VolumeSnapshot {name} to fail"), || async {
                let snapshot = snapshots.get(name).await?;
                Ok(snapshot.status.filter(|status| status.error.is_some()))
            })
            .await?;
            let error = failed.error.clone().unwrap_or_default();
            assert_eq!(error.message.as_deref(), Some("injected: disk on fire"));
            assert!(error.time.is_some(), "the error has a time");
            assert_eq!(failed.ready_to_use, Some(false));
            assert!(
                failed.bound_volume_snapshot_content_name.is_none(),
                "no content: {failed:?}"
            );
        }

        // Removing the annotation lets the snapshot be taken, and clears the error.
        let remove = json!({"metadata": {"annotations": {FAIL_SNAPSHOT_ANNOTATION: null}}});
        snapshots
            .patch("annotated", &PatchParams::default(), &Patch::Merge(remove))
            .await?;
        let snapshot = ready(&client, &ns, "annotated").await?;
        assert!(
            snapshot.status.and_then(|status| status.error).is_none(),
            "the error is cleared"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn pvcs_restore_snapshots_and_clone_pvcs() -> anyhow::Result<()> {
    let bed = bed().await?;
    simulator(bed)?;
    bed.with_namespace("csi-restore", |client, ns| async move {
        create_claim(&client, &ns, "data", json!({}), json!({})).await?;
        let (_, dir) = bound(&client, &ns, "data").await?;
        write_original_files(&dir)?;

        // The snapshot starts failed, so the restore must wait for it.
        let failing = json!({FAIL_SNAPSHOT_ANNOTATION: "not yet"});
        create_snapshot(&client, &ns, "snap", "data", failing).await?;
        let from_snapshot = json!({"dataSource": {
            "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"}});
        create_claim(&client, &ns, "restored", from_snapshot, json!({})).await?;
        let snapshots: Api<VolumeSnapshot> = Api::namespaced(client.clone(), &ns);
        wait_for("VolumeSnapshot snap to fail", || async {
            let snapshot = snapshots.get("snap").await?;
            Ok(snapshot.status.and_then(|status| status.error))
        })
        .await?;
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let pending = claims.get("restored").await?;
        let phase = pending.status.and_then(|status| status.phase);
        assert_eq!(
            phase.as_deref(),
            Some("Pending"),
            "a PVC from a snapshot that is not ready waits"
        );

        let remove = json!({"metadata": {"annotations": {FAIL_SNAPSHOT_ANNOTATION: null}}});
        snapshots
            .patch("snap", &PatchParams::default(), &Patch::Merge(remove))
            .await?;
        ready(&client, &ns, "snap").await?;
        change_files(&dir)?;

        let (_, restored) = bound(&client, &ns, "restored").await?;
        assert_ne!(restored, dir);
        assert_original_files(&restored)?;

        // A clone copies the source volume as it is now.
        let from_claim = json!({"dataSource": {"kind": "PersistentVolumeClaim", "name": "data"}});
        create_claim(&client, &ns, "clone", from_claim, json!({})).await?;
        let (_, clone) = bound(&client, &ns, "clone").await?;
        assert_eq!(std::fs::read_to_string(clone.join("db/records"))?, "1\n2\n3\n4\n");
        assert_eq!(
            std::fs::read_to_string(clone.join("new"))?,
            "written after the snapshot"
        );
        assert!(!clone.join("doomed").exists());
        Ok(())
    })
    .await
}

#[tokio::test]
async fn deleting_snapshots_and_pvcs_removes_their_copies_and_volumes() -> anyhow::Result<()> {
    let bed = bed().await?;
    simulator(bed)?;
    bed.with_namespace("csi-delete", |client, ns| async move {
        // A class that retains its contents, to show that Retain keeps them.
        let retain_class = format!("{ns}-retain");
        let class: VolumeSnapshotClass = serde_json::from_value(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
            "metadata": {"name": retain_class}, "driver": DRIVER, "deletionPolicy": "Retain",
        }))?;
        let classes: Api<VolumeSnapshotClass> = Api::all(client.clone());
        classes.create(&PostParams::default(), &class).await?;

        create_claim(&client, &ns, "data", json!({}), json!({})).await?;
        let (volume, dir) = bound(&client, &ns, "data").await?;
        std::fs::write(dir.join("file"), "content")?;
        create_snapshot(&client, &ns, "deleted", "data", json!({})).await?;
        let retained: VolumeSnapshot = serde_json::from_value(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {"name": "retained"},
            "spec": {"source": {"persistentVolumeClaimName": "data"}, "volumeSnapshotClassName": retain_class},
        }))?;
        let snapshots: Api<VolumeSnapshot> = Api::namespaced(client.clone(), &ns);
        snapshots.create(&PostParams::default(), &retained).await?;
        let deleted = content_of(&client, &ready(&client, &ns, "deleted").await?).await?;
        let kept = content_of(&client, &ready(&client, &ns, "retained").await?).await?;
        let (deleted_copy, kept_copy) = (copy_path(&deleted)?, copy_path(&kept)?);
        assert!(deleted_copy.join("file").exists() && kept_copy.join("file").exists());

        snapshots.delete("deleted", &DeleteParams::default()).await?;
        snapshots.delete("retained", &DeleteParams::default()).await?;
        let contents: Api<VolumeSnapshotContent> = Api::all(client.clone());
        wait_for("the content of the deleted snapshot to go", || async {
            Ok(contents.get_opt(&deleted.name_any()).await?.is_none().then_some(()))
        })
        .await?;
        assert!(
            !deleted_copy.exists(),
            "{} is removed with its content",
            deleted_copy.display()
        );
        assert!(
            contents.get_opt(&kept.name_any()).await?.is_some(),
            "Retain keeps the content"
        );
        assert!(kept_copy.join("file").exists(), "Retain keeps the copy");

        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        claims.delete("data", &DeleteParams::default()).await?;
        let volumes: Api<PersistentVolume> = Api::all(client.clone());
        wait_for("the PV of the deleted PVC to go", || async {
            Ok(volumes.get_opt(&volume.name_any()).await?.is_none().then_some(()))
        })
        .await?;
        assert!(!dir.exists(), "{} is removed with its PV", dir.display());

        // Retained contents are the user's to delete; their copies go with them.
        contents.delete(&kept.name_any(), &DeleteParams::default()).await?;
        classes.delete(&retain_class, &DeleteParams::default()).await?;
        wait_for("the retained content to go once deleted", || async {
            Ok(contents.get_opt(&kept.name_any()).await?.is_none().then_some(()))
        })
        .await?;
        assert!(
            !kept_copy.exists(),
            "{} is removed with its content",
            kept_copy.display()
        );
        Ok(())
    })
    .await
}
