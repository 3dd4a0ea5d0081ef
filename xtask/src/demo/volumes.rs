//! The volumes step: an application writing numbered records into its PVC, with freeze and
//! thaw hooks in its Pod annotations; volume-snapshot-ctrl takes a VolumeBackup of it (a CSI
//! snapshot cut between the hooks, then an encrypted copy of the snapshot's files in the
//! demo's storage). The restore part follows, on the same application.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::DynamicObject;
use kube::discovery::ApiResource;
use serde_json::json;
use stowage_api::{VolumeBackup, VolumeBackupPhase};
use stowage_core::human_bytes;
use stowage_e2e::bed::{TestBed, wait_for};
use stowage_e2e::support::{finished, volume_dir};

use super::{Demo, fresh_namespace};

mod restore;

pub const NAMESPACE: &str = "stowage-demo-volumes";
/// The application: a Deployment of one Pod on one PVC.
pub const APP: &str = "ledger";
pub const PVC: &str = "ledger-data";
/// The VolumeBackup the backup part makes (Succeeded, with a copy).
pub const BACKUP: &str = "ledger-snapshot";
const STORAGE: &str = "volumes-local";

/// Writes the next number to /data/records every 20 ms, unless frozen. A snapshot is cut while
/// the application is frozen, so a volume restored from it holds the freeze flag: a starting Pod
/// is not frozen, so it clears the flag first.
const WRITER: &str = "rm -f /data/frozen; i=$(tail -n 1 /data/records 2>/dev/null || echo 0); \
    while true; do if [ ! -e /data/frozen ]; then i=$((i+1)); echo $i >> /data/records; fi; sleep 0.02; done";
const PRE_HOOK: &str = "touch /data/frozen && sleep 0.2 && wc -l < /data/records > /data/freeze-marker";
const POST_HOOK: &str = "rm -f /data/frozen";

/// What the backup part leaves for the restore part.
pub struct BackedUp {
    /// The application's live volume on the host.
    pub live_dir: PathBuf,
    /// Records in the snapshot (the application's state at the cut).
    pub records_at_cut: usize,
    /// The age identity file that decrypts the copy.
    pub key_file: PathBuf,
}

pub async fn tour(bed: &TestBed, demo: &Demo) -> anyhow::Result<()> {
    let client = bed.client();
    eprintln!("==> volume-snapshot-ctrl, watching namespace {NAMESPACE}");
    fresh_namespace(&client, NAMESPACE).await?;
    let metrics = Arc::new(stowage_operator::Metrics::new()?);
    let ctx = Arc::new(
        stowage_operator::Context::new(client.clone(), "volume-snapshot-ctrl", NAMESPACE, None, metrics)
            .watching(Some(NAMESPACE.to_string())),
    );
    let controller = tokio::spawn(stowage_volume_snapshot_ctrl::run(ctx.clone()));
    let storages = tokio::spawn(stowage_operator::storage_status::run(ctx.clone()));
    let result = async {
        let backed_up = backup(bed, demo, &client).await?;
        eprintln!(
            "==> backed up: {} records at the cut, live volume {}, copy key {}",
            backed_up.records_at_cut,
            backed_up.live_dir.display(),
            backed_up.key_file.display()
        );
        restore::restore(bed, demo, &client, &backed_up).await?;
        anyhow::Ok(())
    }
    .await;
    ctx.shutdown.cancel();
    let _ = controller.await;
    storages.abort();
    result
}

/// The backup part: the application, a VolumeBackup of it with a copy, and what they show.
pub async fn backup(bed: &TestBed, demo: &Demo, client: &kube::Client) -> anyhow::Result<BackedUp> {
    eprintln!("==> Deployment {APP}: one Pod appending numbered records to PVC {PVC}, with hooks");
    apply(
        client,
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": { "name": PVC },
            "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "64Mi" } } },
        }),
    )
    .await?;
    apply(
        client,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": APP },
            "spec": {
                "replicas": 1,
                "strategy": { "type": "Recreate" },
                "selector": { "matchLabels": { "app": APP } },
                "template": {
                    "metadata": {
                        "labels": { "app": APP },
                        "annotations": { "stowage.io/pre-hook": PRE_HOOK, "stowage.io/post-hook": POST_HOOK },
                    },
                    "spec": {
                        "containers": [{
                            "name": "writer", "image": "busybox", "command": ["sh", "-c", WRITER],
                            "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
                        }],
                        "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": PVC } }],
                    },
                },
            },
        }),
    )
    .await?;
    let live_dir = volume_dir(client, NAMESPACE, PVC).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    wait_for("the application's Pod to write records", || async {
        let running = pods
            .list(&ListParams::default().labels(&format!("app={APP}")))
            .await?
            .items
            .iter()
            .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
        Ok((running && count_records(&live_dir) >= 20).then_some(()))
    })
    .await?;

    eprintln!("==> BackupStorage {STORAGE} (Filesystem) and a fresh age key");
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let key_file = demo.dir.join("volumes-key.txt");
    let identity_text = age::secrecy::ExposeSecret::expose_secret(&identity.to_string()).to_string();
    std::fs::write(&key_file, format!("{identity_text}\n"))?;
    apply(
        client,
        json!({
            "apiVersion": "stowage.io/v1alpha1", "kind": "BackupStorage",
            "metadata": { "name": STORAGE },
            "spec": { "type": "Filesystem", "filesystem": { "path": demo.store_dir }, "prefix": "demo" },
        }),
    )
    .await?;

    eprintln!("==> VolumeBackup {BACKUP}: freeze, snapshot, thaw, wait until ready, copy");
    apply(
        client,
        json!({
            "apiVersion": "stowage.io/v1alpha1", "kind": "VolumeBackup",
            "metadata": { "name": BACKUP },
            "spec": {
                "applicationRef": { "kind": "Deployment", "name": APP },
                "maxFreezeSeconds": 30,
                "copy": { "storage": { "name": STORAGE }, "encryption": { "recipients": [recipient] } },
            },
        }),
    )
    .await?;
    let backup: VolumeBackup = finished(client, NAMESPACE, BACKUP).await?;
    let status = backup.status.clone().unwrap_or_default();
    anyhow::ensure!(
        status.phase == VolumeBackupPhase::Succeeded,
        "the backup failed: {status:#?}"
    );
    println!(
        "{}",
        bed.kubectl(["get", "volumebackups", "-n", NAMESPACE, "-o", "wide"])
            .await?
    );
    println!("{}", bed.kubectl(["get", "volumesnapshots", "-n", NAMESPACE]).await?);
    print_events(bed, BACKUP, "BackupSucceeded").await?;

    let volume = status.volumes.first().context("the backup has a volume")?;
    let artifact = volume.artifact.clone().context("the backup has a copy")?.artifact;
    let out = demo.dir.join("volumes-copy");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let untar = format!(
        "age -d -i {} {} | gunzip | tar -x -C {}",
        key_file.display(),
        demo.store_dir.join(&artifact.path).display(),
        out.display()
    );
    let untarred = std::process::Command::new("sh").arg("-c").arg(&untar).status()?;
    anyhow::ensure!(untarred.success(), "`{untar}` failed");
    let records_at_cut = count_records(&out);
    let at_freeze: usize = std::fs::read_to_string(out.join("freeze-marker"))?.trim().parse()?;
    anyhow::ensure!(
        records_at_cut == at_freeze,
        "the copy holds {records_at_cut} records, the application had {at_freeze} when frozen"
    );

    println!("| step | result |");
    println!("|---|---|");
    println!("| application | Deployment `{APP}` appending a record every 20 ms to PVC `{PVC}` |");
    println!(
        "| freeze → thaw | {} ms frozen (pre-hook, snapshot cut, post-hook; maxFreezeSeconds 30) |",
        status.frozen_milliseconds.unwrap_or_default()
    );
    println!(
        "| snapshot | VolumeSnapshot `{}`, ready, restore size {} |",
        volume.volume_snapshot.as_deref().unwrap_or("?"),
        volume.restore_size.as_ref().map(|q| q.0.as_str()).unwrap_or("?")
    );
    println!(
        "| copy | {} ({} stored, gzip + age) |",
        artifact.path,
        human_bytes(artifact.stored_bytes)
    );
    println!(
        "| check | `age -d | gunzip | tar -x` gives {records_at_cut} records, exactly the {at_freeze} written before the freeze; the application has {} by now |",
        count_records(&live_dir)
    );
    Ok(BackedUp {
        live_dir,
        records_at_cut,
        key_file,
    })
}

/// Server-side applies one object (namespaced ones in the demo's namespace).
async fn apply(client: &kube::Client, manifest: serde_json::Value) -> anyhow::Result<()> {
    let api_version = manifest["apiVersion"].as_str().context("apiVersion")?;
    let kind = manifest["kind"].as_str().context("kind")?;
    let name = manifest["metadata"]["name"].as_str().context("metadata.name")?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let resource = ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(group, version, kind));
    let api: Api<DynamicObject> = if kind == "BackupStorage" {
        Api::all_with(client.clone(), &resource)
    } else {
        Api::namespaced_with(client.clone(), NAMESPACE, &resource)
    };
    api.patch(
        name,
        &PatchParams::apply("stowage-demo").force(),
        &Patch::Apply(&manifest),
    )
    .await
    .with_context(|| format!("applying {kind} {name}"))?;
    eprintln!("    applied {kind} {name}");
    Ok(())
}

/// Prints, as `kubectl get events` does, the Events about object `name` in the demo's
/// namespace, oldest first: what the controller did, step by step.
pub async fn print_events(bed: &TestBed, name: &str, last: &str) -> anyhow::Result<()> {
    // The controller writes its last Event just after the final status the demo waited for.
    stowage_e2e::support::wait_events(&bed.client(), NAMESPACE, name, &[last]).await?;
    let selector = format!("involvedObject.name={name}");
    let events = bed
        .kubectl([
            "get",
            "events",
            "-n",
            NAMESPACE,
            "--field-selector",
            &selector,
            "--sort-by",
            ".metadata.creationTimestamp",
        ])
        .await?;
    println!("{events}");
    Ok(())
}

/// Lines in `dir/records`.
pub fn count_records(dir: &std::path::Path) -> usize {
    std::fs::read_to_string(dir.join("records"))
        .map(|text| text.lines().count())
        .unwrap_or(0)
}
