//! The etcd step: etcd-backup-ctrl backs up the test bed's own etcd (the one its kube-apiserver
//! stores everything in) into the demo's Filesystem store, encrypted to a fresh age key; then
//! `stowctl etcd list` reads the catalog from the storage alone (a storage file, no cluster),
//! and `stowctl etcd restore` rebuilds a data directory from the backup, which a new etcd
//! serves with the same keys as the live one at the backup's revision.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser as _;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use stowage_api::{BackupStorage, EtcdBackup, EtcdBackupPhase};
use stowage_core::human_bytes;
use stowage_e2e::bed::{TestBed, wait_for};
use stowage_e2e::process::{ManagedChild, free_port, wait_for_port};
use stowage_e2e::support::finished_in;

use super::Demo;

/// The controller's namespace (Events about cluster-scoped objects go to `default`).
const NAMESPACE: &str = "stowage-system";
const STORAGE: &str = "etcd-demo";
const BACKUP: &str = "demo-etcd";
const MEMBER: &str = "demo-restored";

pub async fn tour(bed: &TestBed, demo: &Demo) -> anyhow::Result<()> {
    let client = bed.client();
    let endpoint = bed.info().etcd_endpoint.clone();

    eprintln!("==> etcd-backup-ctrl, in-process");
    let metrics = Arc::new(stowage_operator::Metrics::new()?);
    let kit = Arc::new(stowage_operator::Context::new(
        client.clone(),
        stowage_etcd_backup_ctrl::CONTROLLER,
        NAMESPACE,
        None,
        metrics,
    ));
    let ctx = Arc::new(stowage_etcd_backup_ctrl::EtcdContext::new(kit.clone())?);
    let controller = tokio::spawn(stowage_etcd_backup_ctrl::run(ctx));

    eprintln!(
        "==> a fresh age key, and BackupStorage {STORAGE}: Filesystem at {}",
        demo.store_dir.display()
    );
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let key_file = demo.dir.join("etcd-key.txt");
    std::fs::write(
        &key_file,
        format!("{}\n", age::secrecy::ExposeSecret::expose_secret(&identity.to_string())),
    )?;
    // The same storage as a file: what stowctl reads when there is no cluster.
    let storage_file = demo.dir.join("etcd-storage.yaml");
    std::fs::write(
        &storage_file,
        format!("type: Filesystem\nfilesystem:\n  path: {}\n", demo.store_dir.display()),
    )?;
    // Backups of earlier demo runs would only lengthen the catalog below.
    let _ = std::fs::remove_dir_all(demo.store_dir.join("etcdbackup/_cluster").join(BACKUP));
    let apply = PatchParams::apply("stowage-demo").force();
    let storage: BackupStorage = serde_json::from_value(json!({
        "apiVersion": "stowage.io/v1alpha1", "kind": "BackupStorage",
        "metadata": {"name": STORAGE},
        "spec": {"type": "Filesystem", "filesystem": {"path": demo.store_dir}},
    }))?;
    Api::<BackupStorage>::all(client.clone())
        .patch(STORAGE, &apply, &Patch::Apply(&storage))
        .await?;

    // As examples/etcd-backup/10-one-off-backup.yaml, but for the bed's etcd: plain http on
    // loopback, so no client certificate Secret and no certsDir.
    eprintln!("==> EtcdBackup {BACKUP} of the test bed's own etcd at {endpoint}");
    let backups: Api<EtcdBackup> = Api::all(client.clone());
    if backups.get_opt(BACKUP).await?.is_some() {
        backups.delete(BACKUP, &DeleteParams::default()).await?;
        wait_for("the previous demo EtcdBackup to go", || async {
            Ok(backups.get_opt(BACKUP).await?.is_none().then_some(()))
        })
        .await?;
    }
    let backup: EtcdBackup = serde_json::from_value(json!({
        "apiVersion": "stowage.io/v1alpha1", "kind": "EtcdBackup",
        "metadata": {"name": BACKUP},
        "spec": {
            "endpoints": [endpoint],
            "storage": {"name": STORAGE},
            "encryption": {"recipients": [recipient]},
            "retainPolicy": "Retain",
        },
    }))?;
    let started = Instant::now();
    backups.patch(BACKUP, &apply, &Patch::Apply(&backup)).await?;
    let backup = finished_in(&backups, BACKUP).await?;
    let backup_time = started.elapsed();
    let status = backup.status.clone().unwrap_or_default();
    anyhow::ensure!(
        status.phase == EtcdBackupPhase::Succeeded,
        "the backup failed: {status:#?}"
    );
    let artifact = status
        .artifact
        .clone()
        .context("a succeeded backup has an artifact")?
        .artifact;
    let revision = status.revision.context("a succeeded backup has a revision")?;
    println!("{}", bed.kubectl(["get", "etcdbackups", BACKUP, "-o", "wide"]).await?);
    kit.shutdown.cancel();
    let _ = controller.await;

    println!("$ stowctl etcd list --storage {}", storage_file.display());
    stowctl(&["etcd", "list", "--storage", &path_text(&storage_file)]).await?;

    // A scratch data directory, as an administrator would restore on a control-plane node.
    let data_dir = demo.dir.join("etcd-restored");
    let snapshot = demo.dir.join("etcd-snapshot.db");
    let _ = std::fs::remove_dir_all(&data_dir);
    let _ = std::fs::remove_file(&snapshot);
    let peer = format!("http://127.0.0.1:{}", free_port()?);
    let initial_cluster = format!("{MEMBER}={peer}");
    let restore_args = [
        "etcd".to_string(),
        "restore".into(),
        "--storage".into(),
        path_text(&storage_file),
        "--path".into(),
        artifact.path.clone(),
        "--identity".into(),
        path_text(&key_file),
        "--data-dir".into(),
        path_text(&data_dir),
        "--name".into(),
        MEMBER.into(),
        "--initial-cluster".into(),
        initial_cluster,
        "--initial-advertise-peer-urls".into(),
        peer.clone(),
        "--keep-snapshot".into(),
        path_text(&snapshot),
    ];
    println!("\n$ stowctl {}", restore_args.join(" "));
    let started = Instant::now();
    stowctl(&restore_args.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    let restore_time = started.elapsed();

    println!("$ etcdctl snapshot status {} -w table", snapshot.display());
    print!(
        "{}",
        etcdctl(&["snapshot", "status", &path_text(&snapshot), "-w", "table"])?
    );
    std::fs::remove_file(&snapshot)?; // it holds every Secret of the cluster

    eprintln!("==> a new etcd member on {}", data_dir.display());
    let restored = serve(&data_dir, &demo.dir, &peer).await?;
    let restored_keys = count_keys(&restored.endpoint, None)?;
    let live_keys = count_keys(&endpoint, Some(revision))
        .map(|count| format!("{count} at revision {revision}"))
        .unwrap_or_else(|error| format!("unknown ({error:#})"));
    drop(restored);
    std::fs::remove_dir_all(&data_dir)?;

    println!("\n| step | result |");
    println!("|---|---|");
    println!(
        "| etcd | the test bed's own, {endpoint} (etcd {}) |",
        status.etcd_version.unwrap_or_default()
    );
    println!("| backup | EtcdBackup `{BACKUP}`: snapshot streamed, checked against etcd's SHA-256, gzip + age |");
    println!("| artifact | {} in BackupStorage `{STORAGE}` |", artifact.path);
    println!(
        "| snapshot | {}, revision {revision}, cluster {} |",
        human_bytes(artifact.plaintext_bytes),
        status.cluster_id.unwrap_or_default()
    );
    println!(
        "| stored (gzip + age) | {} ({:.0}% of the snapshot) |",
        human_bytes(artifact.stored_bytes),
        100.0 * artifact.stored_bytes as f64 / artifact.plaintext_bytes.max(1) as f64
    );
    println!("| backup run | {:.1} s |", backup_time.as_secs_f64());
    println!(
        "| restore | {:.1} s: download, verify, decrypt, gunzip, etcdctl snapshot restore |",
        restore_time.as_secs_f64()
    );
    println!("| keys under /registry | restored member: {restored_keys}; live etcd: {live_keys} |");
    println!();
    println!(
        "Read it without Stowage: age -d -i {} {} | gunzip > snapshot.db",
        key_file.display(),
        demo.store_dir.join(&artifact.path).display()
    );
    Ok(())
}

/// Runs stowctl in-process, as `stowctl ARGS` would.
async fn stowctl(args: &[&str]) -> anyhow::Result<()> {
    let cli = stowctl::Cli::try_parse_from(std::iter::once("stowctl").chain(args.iter().copied()))?;
    stowctl::run(cli).await.map_err(|e| anyhow::anyhow!("stowctl: {e}"))
}

fn path_text(path: &Path) -> String {
    path.display().to_string()
}

/// etcdctl (API v3) with `args`; its stdout.
fn etcdctl(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(args)
        .output()
        .context("running etcdctl (apt-get install etcd-client)")?;
    anyhow::ensure!(
        output.status.success(),
        "etcdctl {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Keys under /registry (everything kube-apiserver stores), now or at `revision` (etcdctl 3.4
/// has no --count-only; its JSON reply carries the count).
fn count_keys(endpoint: &str, revision: Option<i64>) -> anyhow::Result<u64> {
    let endpoints = format!("--endpoints={endpoint}");
    let mut args = vec![
        endpoints.as_str(),
        "get",
        "/registry",
        "--prefix",
        "--keys-only",
        "-w",
        "json",
    ];
    let rev = revision.map(|r| format!("--rev={r}"));
    args.extend(rev.as_deref());
    let reply: serde_json::Value = serde_json::from_str(&etcdctl(&args)?)?;
    reply["count"].as_u64().context("etcdctl's reply has no count")
}

/// An etcd member serving a restored data directory; killed when dropped.
struct Restored {
    endpoint: String,
    _process: ManagedChild,
}

/// Starts etcd on the restored directory as the member it was restored as, and waits until it
/// answers (a single member elects itself leader first).
async fn serve(data_dir: &Path, log_dir: &Path, peer: &str) -> anyhow::Result<Restored> {
    let port = free_port()?;
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut command = Command::new("/usr/bin/etcd");
    command
        .arg(format!("--name={MEMBER}"))
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!("--listen-client-urls={endpoint}"))
        .arg(format!("--advertise-client-urls={endpoint}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster={MEMBER}={peer}"));
    let mut process = ManagedChild::spawn("restored etcd", command, &log_dir.join("etcd-restored.log"))?;
    wait_for_port(&mut process, port, Duration::from_secs(60))?;
    let endpoints = format!("--endpoints={endpoint}");
    wait_for("the restored etcd member to be healthy", || async {
        Ok(etcdctl(&[endpoints.as_str(), "endpoint", "health"]).ok().map(|_| ()))
    })
    .await?;
    Ok(Restored {
        endpoint,
        _process: process,
    })
}
