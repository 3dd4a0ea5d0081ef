//! The exec step: a real PostgreSQL server with an `orders` table, exec-backup-ctrl, and the
//! files of `examples/postgres-local` (a Filesystem BackupStorage, an ExecBackup running
//! `pg_dump` through gzip and age, then an ExecRestore through `psql`) applied with the demo's
//! own age key and storage directory; the table is dropped in between.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use kube::discovery::Discovery;
use serde_json::json;
use stowage_api::{ExecBackup, ExecPhase, ExecRestore};
use stowage_core::human_bytes;
use stowage_e2e::bed::TestBed;
use stowage_e2e::databases::{PostgresServer, SAMPLE_TABLE};
use stowage_e2e::support::finished;

use super::{Demo, apply, create_secret, file_name, fresh_namespace, scenario_files};

const NAMESPACE: &str = "stowage-demo";
const SCENARIO: &str = "examples/postgres-local";
const ROWS: u32 = 20_000;

pub async fn tour(bed: &TestBed, demo: &Demo) -> anyhow::Result<()> {
    let client = bed.client();
    let store_dir = &demo.store_dir;

    eprintln!("==> a PostgreSQL server with {ROWS} orders");
    let database = PostgresServer::start()?;
    database.fill_table(database.database(), ROWS)?;
    let before = database.checksum(database.database())?;

    eprintln!("==> exec-backup-ctrl, watching namespace {NAMESPACE}");
    fresh_namespace(&client, NAMESPACE).await?;
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
    let key_file = demo.dir.join("demo-key.txt");
    std::fs::write(&key_file, format!("{identity_text}\n"))?;
    let env: serde_json::Map<String, serde_json::Value> = database
        .env()
        .into_iter()
        .map(|(key, value)| (key, value.into()))
        .collect();
    create_secret(
        &client,
        NAMESPACE,
        "postgres-credentials",
        serde_json::Value::Object(env),
    )
    .await?;
    create_secret(&client, NAMESPACE, "backup-key", json!({ "key.txt": identity_text })).await?;

    eprintln!("==> applying {SCENARIO} (storage path and recipient replaced by the demo's)");
    let files = scenario_files(&demo.root.join(SCENARIO))?;
    let discovery = Discovery::new(client.clone()).run().await?;
    let started = Instant::now();
    for file in files.iter().filter(|f| !file_name(f).starts_with("20-")) {
        apply(&client, &discovery, file, NAMESPACE, store_dir, &recipient).await?;
    }
    let backup: ExecBackup = finished(&client, NAMESPACE, "orders").await?;
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
        apply(&client, &discovery, file, NAMESPACE, store_dir, &recipient).await?;
    }
    let restore: ExecRestore = finished(&client, NAMESPACE, "orders-restore").await?;
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
