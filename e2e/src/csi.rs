//! The volume and CSI snapshot simulator: the test bed's storage system.
//!
//! It plays the parts a CSI driver, the external provisioner and the snapshot
//! controller play in a real cluster, with host directories as volumes:
//!
//! - **Provisioning.** A pending PVC (any storage class, or none) gets a
//!   PersistentVolume `pvc-<uid>` whose `spec.hostPath.path` is
//!   `<workdir>/volumes/pvc-<uid>`, pre-bound to the claim; the simulator then
//!   completes the binding exactly as kube-controller-manager's binder does, so
//!   whichever of the two gets there first, the end state is the same. A PVC
//!   whose `dataSource` is a VolumeSnapshot starts as a copy of the snapshot
//!   (and stays Pending until the snapshot is ready to use); one whose
//!   `dataSource` is another PVC starts as a copy of that PVC's volume. When the
//!   PVC is gone, its PV and directory are deleted.
//! - **Snapshots.** A VolumeSnapshot of a bound PVC copies the volume's
//!   directory to `<workdir>/snapshots/snapcontent-<uid>`, creates the
//!   VolumeSnapshotContent and then reports in two status updates: first the
//!   cut (`boundVolumeSnapshotContentName`, `creationTime`, `restoreSize`,
//!   `readyToUse: false`), then, [`READY_DELAY_ANNOTATION`] seconds later
//!   (default 1), `readyToUse: true`. Deleting a VolumeSnapshot whose content
//!   has deletionPolicy Delete deletes the content and the copy.
//! - **Failure injection.** [`FAIL_SNAPSHOT_ANNOTATION`] on a PVC or a
//!   VolumeSnapshot fails the snapshot with `status.error`.
//!
//! It also creates the default StorageClass and VolumeSnapshotClass
//! [`CLASS_NAME`], and installs the snapshot CRDs if they are missing.

pub mod types;

mod disk;
mod snapshots;
mod volumes;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, CustomResourceExt as _, ResourceExt as _};
use tokio::task::JoinHandle;

use self::types::{
    DEFAULT_SNAPSHOT_CLASS_ANNOTATION, DeletionPolicy, VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotClassFields,
    VolumeSnapshotContent,
};

/// The CSI driver name the simulator answers to.
pub const DRIVER: &str = "sim.csi.stowage.io";
/// The default StorageClass and default VolumeSnapshotClass it creates.
pub const CLASS_NAME: &str = "stowage-sim";
/// On a PVC or a VolumeSnapshot: snapshots of it fail with this message.
pub const FAIL_SNAPSHOT_ANNOTATION: &str = "sim.stowage.io/fail-snapshot";
/// On a PVC or a VolumeSnapshot: seconds (a decimal number) between the cut
/// (`creationTime`) and `readyToUse: true`. Default 1.
pub const READY_DELAY_ANNOTATION: &str = "sim.stowage.io/ready-delay-seconds";
/// On every VolumeSnapshotContent the simulator creates: the host directory
/// holding the snapshot's copy, so tests can look at it.
pub const SNAPSHOT_PATH_ANNOTATION: &str = "sim.stowage.io/snapshot-path";
/// Finalizer on every PV and VolumeSnapshotContent the simulator creates, so
/// that their directories go with them however they are deleted.
pub const CLEANUP_FINALIZER: &str = "sim.stowage.io/cleanup";
/// Label on every PV and VolumeSnapshotContent the simulator creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`].
pub const MANAGER: &str = "stowage-csi-simulator";

/// A running simulator. Dropping it (or [`CsiSimulator::stop`]) stops it.
pub struct CsiSimulator {
    tasks: Vec<JoinHandle<()>>,
    log_path: PathBuf,
    volumes_dir: PathBuf,
    snapshots_dir: PathBuf,
}

impl CsiSimulator {
    /// Installs the snapshot CRDs if missing, creates the default classes and
    /// starts the simulator's controllers on the current tokio runtime. Volumes
    /// live in `workdir/volumes`, snapshots in `workdir/snapshots`, and the log
    /// in `workdir/csi-simulator.log`.
    pub async fn start(client: Client, workdir: &Path) -> anyhow::Result<CsiSimulator> {
        let volumes_dir = workdir.join("volumes");
        let snapshots_dir = workdir.join("snapshots");
        for dir in [&volumes_dir, &snapshots_dir] {
            tokio::fs::create_dir_all(dir)
                .await
                .with_context(|| format!("create {}", dir.display()))?;
        }
        let log_path = workdir.join("csi-simulator.log");
        let log = SimLog::open(&log_path)?;

        install_crds(&client).await?;
        create_classes(&client).await?;
        log.line(format_args!(
            "started: volumes in {}, snapshots in {}",
            volumes_dir.display(),
            snapshots_dir.display()
        ));

        let sim = Arc::new(Sim {
            client: client.clone(),
            volumes_dir: volumes_dir.clone(),
            snapshots_dir: snapshots_dir.clone(),
            log,
        });
        let tasks = vec![
            spawn_claims(&sim),
            spawn_volumes(&sim),
            spawn_snapshots(&sim),
            spawn_contents(&sim),
        ];
        Ok(CsiSimulator {
            tasks,
            log_path,
            volumes_dir,
            snapshots_dir,
        })
    }

    /// The simulator's log: one line per action and per error.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Where volume directories live (`<workdir>/volumes`).
    pub fn volumes_dir(&self) -> &Path {
        &self.volumes_dir
    }

    /// Where snapshot copies live (`<workdir>/snapshots`).
    pub fn snapshots_dir(&self) -> &Path {
        &self.snapshots_dir
    }

    /// Stops the controllers and waits until they have stopped.
    pub async fn stop(mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks.drain(..) {
            // A cancelled task reports JoinError::Cancelled: that is the point.
            let _ = task.await;
        }
    }
}

impl Drop for CsiSimulator {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What every reconciler shares.
struct Sim {
    client: Client,
    volumes_dir: PathBuf,
    snapshots_dir: PathBuf,
    log: SimLog,
}

/// The simulator's log file. Lines are short and rare, so a blocking write
/// under a mutex is fine.
struct SimLog {
    file: Mutex<std::fs::File>,
}

impl SimLog {
    fn open(path: &Path) -> anyhow::Result<SimLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("open the CSI simulator log {}", path.display()))?;
        Ok(SimLog { file: Mutex::new(file) })
    }

    fn line(&self, message: std::fmt::Arguments<'_>) {
        use std::io::Write as _;
        tracing::info!(target: "stowage_e2e::csi", "{message}");
        let now = k8s_openapi::jiff::Timestamp::now();
        if let Ok(mut file) = self.file.lock() {
            // A log line that cannot be written must not stop the simulator.
            let _ = writeln!(file, "{now} {message}");
        }
    }
}

/// A reconciler's error: the controller runtime wants a std error, the
/// simulator's code speaks anyhow.
#[derive(Debug)]
struct Failure(anyhow::Error);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Failure {}

/// Runs a controller to completion, logging every reconcile error. Errors are
/// retried after a short fixed delay: the simulator's only failures are
/// conflicts with the binder and objects not yet visible, which clear quickly.
async fn drive<K>(
    sim: Arc<Sim>,
    stream: impl futures::Stream<
        Item = Result<
            (kube::runtime::reflector::ObjectRef<K>, Action),
            kube::runtime::controller::Error<Failure, watcher::Error>,
        >,
    >,
) where
    K: kube::Resource,
    K::DynamicType: std::fmt::Debug,
{
    stream
        .for_each(|result| {
            // A trigger for an object that does not exist (yet) is how the
            // watches above work, not an error worth a log line.
            if let Err(error) = result
                && !matches!(error, kube::runtime::controller::Error::ObjectNotFound(_))
            {
                sim.log.line(format_args!("error: {error}: {}", source_chain(&error)));
            }
            futures::future::ready(())
        })
        .await;
}

fn source_chain(error: &dyn std::error::Error) -> String {
    let mut chain = Vec::new();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push(cause.to_string());
        source = cause.source();
    }
    chain.join(": ")
}

fn retry_soon<K>(_object: Arc<K>, _error: &Failure, _sim: Arc<Sim>) -> Action {
    Action::requeue(Duration::from_secs(1))
}

fn spawn_claims(sim: &Arc<Sim>) -> JoinHandle<()> {
    let claims = Api::<PersistentVolumeClaim>::all(sim.client.clone());
    let stream = Controller::new(claims, watcher::Config::default()).run(
        |claim, sim| async move { volumes::reconcile_claim(claim, sim).await.map_err(Failure) },
        retry_soon,
        sim.clone(),
    );
    tokio::spawn(drive(sim.clone(), stream))
}

fn spawn_volumes(sim: &Arc<Sim>) -> JoinHandle<()> {
    let ours = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));
    let volumes = Api::<PersistentVolume>::all(sim.client.clone());
    let claims = Api::<PersistentVolumeClaim>::all(sim.client.clone());
    let stream = Controller::new(volumes, ours)
        .watches(claims, watcher::Config::default(), volumes::volumes_of_claim)
        .run(
            |volume, sim| async move { volumes::reconcile_volume(volume, sim).await.map_err(Failure) },
            retry_soon,
            sim.clone(),
        );
    tokio::spawn(drive(sim.clone(), stream))
}

fn spawn_snapshots(sim: &Arc<Sim>) -> JoinHandle<()> {
    let snapshots = Api::<VolumeSnapshot>::all(sim.client.clone());
    let stream = Controller::new(snapshots, watcher::Config::default()).run(
        |snapshot, sim| async move { snapshots::reconcile_snapshot(snapshot, sim).await.map_err(Failure) },
        retry_soon,
        sim.clone(),
    );
    tokio::spawn(drive(sim.clone(), stream))
}

fn spawn_contents(sim: &Arc<Sim>) -> JoinHandle<()> {
    let ours = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));
    let contents = Api::<VolumeSnapshotContent>::all(sim.client.clone());
    let snapshots = Api::<VolumeSnapshot>::all(sim.client.clone());
    let stream = Controller::new(contents, ours)
        .watches(snapshots, watcher::Config::default(), snapshots::contents_of_snapshot)
        .run(
            |content, sim| async move { snapshots::reconcile_content(content, sim).await.map_err(Failure) },
            retry_soon,
            sim.clone(),
        );
    tokio::spawn(drive(sim.clone(), stream))
}

/// Installs the snapshot CRDs (a no-op when the test bed already has) and waits
/// until the API server serves them.
async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let apply = PatchParams::apply(MANAGER);
    for crd in [
        VolumeSnapshot::crd(),
        VolumeSnapshotContent::crd(),
        VolumeSnapshotClass::crd(),
    ] {
        let name = crd.name_any();
        if crds.get_opt(&name).await?.is_none() {
            crds.patch(&name, &apply, &Patch::Apply(&crd))
                .await
                .with_context(|| format!("install CRD {name}"))?;
        }
        let established = kube::runtime::wait::await_condition(
            crds.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(60), established)
            .await
            .with_context(|| format!("CRD {name} was not Established within 60 s"))??;
    }
    Ok(())
}

/// The default StorageClass and VolumeSnapshotClass, so that PVCs and
/// VolumeSnapshots that name no class land on the simulator.
async fn create_classes(client: &Client) -> anyhow::Result<()> {
    let apply = PatchParams::apply(MANAGER).force();
    let storage_class: StorageClass = serde_json::from_value(serde_json::json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": CLASS_NAME,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": DRIVER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }))?;
    Api::<StorageClass>::all(client.clone())
        .patch(CLASS_NAME, &apply, &Patch::Apply(&storage_class))
        .await
        .context("create the default StorageClass")?;

    let mut snapshot_class = VolumeSnapshotClass::new(
        CLASS_NAME,
        VolumeSnapshotClassFields {
            driver: DRIVER.into(),
            deletion_policy: DeletionPolicy::Delete,
            parameters: None,
        },
    );
    snapshot_class
        .annotations_mut()
        .insert(DEFAULT_SNAPSHOT_CLASS_ANNOTATION.into(), "true".into());
    Api::<VolumeSnapshotClass>::all(client.clone())
        .patch(CLASS_NAME, &apply, &Patch::Apply(&snapshot_class))
        .await
        .context("create the default VolumeSnapshotClass")?;
    Ok(())
}

/// The value of an annotation on either of two objects, the first winning.
fn annotation<'a>(
    key: &str,
    first: &'a impl kube::Resource,
    second: Option<&'a impl kube::Resource>,
) -> Option<&'a str> {
    first
        .meta()
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(key))
        .or_else(|| second.and_then(|object| object.meta().annotations.as_ref()?.get(key)))
        .map(String::as_str)
}

/// Removes [`CLEANUP_FINALIZER`] from an object being deleted. The patch
/// carries the resourceVersion it was computed from, so a finalizer another
/// controller removed at the same moment is not put back (the patch conflicts
/// and the reconcile retries).
async fn release<K>(api: &Api<K>, object: &K) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let current = object.meta().finalizers.clone().unwrap_or_default();
    if !current.iter().any(|finalizer| finalizer == CLEANUP_FINALIZER) {
        return Ok(());
    }
    let remaining: Vec<&String> = current
        .iter()
        .filter(|finalizer| *finalizer != CLEANUP_FINALIZER)
        .collect();
    let patch = serde_json::json!({"metadata": {
        "resourceVersion": object.meta().resource_version,
        "finalizers": remaining,
    }});
    match api
        .patch(&object.name_any(), &patch_params(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(error) => Err(error).with_context(|| format!("remove the finalizer of {}", object.name_any())),
    }
}

/// Patches name the simulator as their field manager, so `managedFields` shows
/// who wrote what (the simulator or kube-controller-manager's binder).
fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    }
}

fn post_params() -> kube::api::PostParams {
    kube::api::PostParams {
        field_manager: Some(MANAGER.into()),
        ..kube::api::PostParams::default()
    }
}
