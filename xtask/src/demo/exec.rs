//! `cargo xtask demo`: the main job on a local test bed and a local Filesystem storage, with no
//! cloud account and no existing cluster.
//!
//! It starts the test bed (building the control plane the first time, ~12 minutes) and a real
//! PostgreSQL server with an `orders` table, runs exec-backup-ctrl, applies the files of
//! `examples/postgres-local` (a Filesystem BackupStorage, an ExecBackup running `pg_dump`
//! through gzip and age, then an ExecRestore through `psql`) with the demo's own age key and
//! storage directory, drops the table in between, and prints what happened. `--keep` leaves
//! the bed running.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::discovery::Discovery;
use serde::Deserialize as _;
use serde_json::json;
use stowage_api::{ExecBackup, ExecPhase, ExecRestore};
use stowage_core::human_bytes;
use stowage_e2e::bed::{TestBed, wait_for};
use stowage_e2e::databases::{PostgresServer, SAMPLE_TABLE};

const NAMESPACE: &str = "stowage-demo";
const SCENARIO: &str = "examples/postgres-local";
const ROWS: u32 = 20_000;

pub fn run(args: Vec<String>) -> anyhow::Result<()> {
    let keep = args.iter().any(|a| a == "--keep");
    crate::deps::ensure_packages()?;
    eprintln!("==> starting the test bed (the first run builds kube-apiserver from Debian sources: ~12 minutes)");
    let info = crate::envtest::start()?;
    let result = tokio::runtime::Runtime::new()?.block_on(async {
        let bed = TestBed::connect(info.clone()).await?;
        tour(&bed).await
    });
    if keep {
        eprintln!(
            "the test bed keeps running: export KUBECONFIG={}; stop it with `cargo xtask envtest stop`",
            info.kubeconfig.display()
        );
        result
    } else {
        let stopped = crate::envtest::stop();
        result.and(stopped)
    }
}

async fn tour(bed: &TestBed) -> anyhow::Result<()> {
    let client = bed.client();
    let root = crate::deps::workspace_root();
    let demo_dir = root.join("target/stowage-demo");
    let store_dir = demo_dir.join("store");
    std::fs::create_dir_all(&store_dir)?;

    eprintln!("==> a PostgreSQL server with {ROWS} orders");
    let database = PostgresServer::start()?;
    database.fill_table(database.database(), ROWS)?;
    let before = database.checksum(database.database())?;

    eprintln!("==> exec-backup-ctrl, watching namespace {NAMESPACE}");
    fresh_namespace(&client).await?;
    let metrics = Arc::new(stowage_operator::Metrics::new()?);
    let ctx = Arc::new(
        stowage_operator::Context::new(client.clone(), "exec-backup-ctrl", NAMESPACE, None, metrics)
            .watching(Some(NAMESPACE.to_string())),
    );
    let controller = tokio::spawn(stowage_exec_backup_ctrl::run(ctx.clone()));
    // The controller watches only the demo namespace, so probe the cluster's storages here.
    let storages = tokio::spawn(stowage_operator::storage_status::run(ctx.clone()));

    eprintln!("==> Secrets: the database's connection settings and a fresh age key");
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let identity_text = age::secrecy::ExposeSecret::expose_secret(&identity.to_string()).to_string();
    let key_file = demo_dir.join("demo-key.txt");
    std::fs::write(&key_file, format!("{identity_text}\n"))?;
    let env: serde_json::Map<String, serde_json::Value> = database
        .env()
        .into_iter()
        .map(|(key, value)| (key, value.into()))
        .collect();
    create_secret(&client, "postgres-credentials", serde_json::Value::Object(env)).await?;
    create_secret(&client, "backup-key", json!({ "key.txt": identity_text })).await?;

    eprintln!("==> applying {SCENARIO} (storage path and recipient replaced by the demo's)");
    let files = scenario_files(&root.join(SCENARIO))?;
    let discovery = Discovery::new(client.clone()).run().await?;
    let started = Instant::now();
    for file in files.iter().filter(|f| !file_name(f).starts_with("20-")) {
        apply(&client, &discovery, file, &store_dir, &recipient).await?;
    }
    let backups: Api<ExecBackup> = Api::namespaced(client.clone(), NAMESPACE);
    let backup = wait_for("ExecBackup orders to finish", || async {
        let backup = backups.get("orders").await?;
        let done = backup
            .status
            .as_ref()
            .is_some_and(|s| matches!(s.phase, ExecPhase::Succeeded | ExecPhase::Failed));
        Ok(done.then_some(backup))
    })
    .await?;
    let backup_time = started.elapsed();
    let status = backup.status.clone().unwrap_or_default();
    anyhow::ensure!(status.phase == ExecPhase::Succeeded, "the backup failed: {status:#?}");
    let artifact = status.artifact.clone().context("a succeeded backup has an artifact")?;
    println!(
        "{}",
        bed.kubectl(["get", "backupstorages", "local", "-o", "wide"]).await?
    );
    println!(
        "{}",
        bed.kubectl(["get", "execbackups", "-n", NAMESPACE, "-o", "wide"])
            .await?
    );

    eprintln!("==> DROP TABLE {SAMPLE_TABLE}, then the restore");
    database.psql(&format!("DROP TABLE {SAMPLE_TABLE}"))?;
    let started = Instant::now();
    for file in files.iter().filter(|f| file_name(f).starts_with("20-")) {
        apply(&client, &discovery, file, &store_dir, &recipient).await?;
    }
    let restores: Api<ExecRestore> = Api::namespaced(client.clone(), NAMESPACE);
    let restore = wait_for("ExecRestore orders-restore to finish", || async {
        let restore = restores.get("orders-restore").await?;
        let done = restore
            .status
            .as_ref()
            .is_some_and(|s| matches!(s.phase, ExecPhase::Succeeded | ExecPhase::Failed));
        Ok(done.then_some(restore))
    })
    .await?;
    let restore_time = started.elapsed();
    let restored = restore.status.unwrap_or_default();
    anyhow::ensure!(
        restored.phase == ExecPhase::Succeeded,
        "the restore failed: {restored:#?}"
    );
    let after = database.checksum(database.database())?;
    anyhow::ensure!(after == before, "restored rows differ: {before} before, {after} after");
    println!("{}", bed.kubectl(["get", "execrestores", "-n", NAMESPACE]).await?);

    let artifact = artifact.artifact;
    println!("| step | result |");
    println!("|---|---|");
    println!(
        "| storage | BackupStorage `local`: Filesystem at {} |",
        store_dir.display()
    );
    println!(
        "| backup | ExecBackup `orders`: pg_dump in a Pod, exec through kube-apiserver {} |",
        bed.info().apiserver_url
    );
    println!("| artifact | {} |", artifact.path);
    println!(
        "| dump (plaintext) | {}, sha256 {}… |",
        human_bytes(artifact.plaintext_bytes),
        &artifact.plaintext_sha256[..16]
    );
    println!(
        "| stored (gzip + age) | {} ({:.0}% of plaintext) |",
        human_bytes(artifact.stored_bytes),
        100.0 * artifact.stored_bytes as f64 / artifact.plaintext_bytes.max(1) as f64
    );
    println!(
        "| backup run | {:.1} s (Pod start, dump, upload, manifest) |",
        backup_time.as_secs_f64()
    );
    println!(
        "| restore run | {:.1} s, verified against the manifest, fed to psql |",
        restore_time.as_secs_f64()
    );
    println!(
        "| rows | {} before the DROP, {} after the restore: identical |",
        before, after
    );
    println!();
    println!(
        "Read it without Stowage: age -d -i {} {} | gunzip | head",
        key_file.display(),
        store_dir.join(&artifact.path).display()
    );
    ctx.shutdown.cancel();
    let _ = controller.await;
    let _ = storages.await;
    Ok(())
}

/// Recreates the demo namespace and waits for its default ServiceAccount token (Pods need it).
async fn fresh_namespace(client: &kube::Client) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(NAMESPACE).await?.is_some() {
        namespaces.delete(NAMESPACE, &DeleteParams::default()).await?;
        wait_for("the previous demo namespace to go", || async {
            Ok(namespaces.get_opt(NAMESPACE).await?.is_none().then_some(()))
        })
        .await?;
    }
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?,
        )
        .await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NAMESPACE);
    wait_for("the namespace's default ServiceAccount token", || async {
        Ok(accounts
            .get_opt("default")
            .await?
            .and_then(|a| a.secrets)
            .is_some_and(|s| !s.is_empty())
            .then_some(()))
    })
    .await
}

async fn create_secret(client: &kube::Client, name: &str, data: serde_json::Value) -> anyhow::Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let secret: Secret = serde_json::from_value(json!({ "metadata": { "name": name }, "stringData": data }))?;
    secrets.create(&PostParams::default(), &secret).await?;
    Ok(())
}

fn scenario_files(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap_or_default().to_string_lossy().into_owned()
}

/// Server-side applies every object of `file` in the demo namespace, with the storage path
/// and the encryption recipients replaced by the demo's own.
async fn apply(
    client: &kube::Client,
    discovery: &Discovery,
    file: &Path,
    store_dir: &Path,
    recipient: &str,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file)?;
    for document in serde_yaml::Deserializer::from_str(&text) {
        let mut value = serde_json::Value::deserialize(document)?;
        if value.is_null() {
            continue;
        }
        if value["kind"] == "BackupStorage" {
            value["spec"]["filesystem"]["path"] = json!(store_dir);
        }
        if value["spec"]["encryption"]["recipients"].is_array() {
            value["spec"]["encryption"]["recipients"] = json!([recipient]);
        }
        let object: DynamicObject = serde_json::from_value(value)?;
        let gvk = object.types.as_ref().context("an object without apiVersion/kind")?;
        let gvk = kube::core::GroupVersionKind::try_from(gvk)?;
        let (resource, capabilities) = discovery
            .resolve_gvk(&gvk)
            .with_context(|| format!("{gvk:?} is not served"))?;
        let name = object.metadata.name.clone().context("an object without a name")?;
        let api: Api<DynamicObject> = match capabilities.scope {
            kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &resource),
            kube::discovery::Scope::Namespaced => Api::namespaced_with(client.clone(), NAMESPACE, &resource),
        };
        api.patch(
            &name,
            &PatchParams::apply("stowage-demo").force(),
            &Patch::Apply(&object),
        )
        .await?;
        eprintln!("    applied {} {name} from {}", gvk.kind, file_name(file));
    }
    Ok(())
}
