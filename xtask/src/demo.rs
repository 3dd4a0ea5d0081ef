//! `cargo xtask demo`: the data path end to end on a local test bed and a local
//! filesystem store, with no cloud account and no existing cluster.
//!
//! It starts the test bed (building the control plane the first time, ~12
//! minutes), runs a database-like Pod, execs a dump command in it through the
//! real kube-apiserver, streams the dump through gzip and age into a Filesystem
//! storage, restores it through the stowage pipeline, and prints what happened.
//! The controllers join the demo as they are built; `--keep` leaves the bed running.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, AttachParams, DeleteParams, PostParams};
use serde_json::json;
use stowage_core::storage::{self, StorageSpec};
use stowage_core::testing::{HashingSink, filesystem_spec};
use stowage_core::{BackupRequest, Identities, Layout, Recipients, RestoreRequest, backup, human_bytes, restore};
use stowage_e2e::bed::{TestBed, wait_for};

const NAMESPACE: &str = "stowage-demo";
const DUMP: &str = "for i in $(seq 1 200000); do echo \"INSERT INTO orders VALUES ($i, 'customer-$((i % 977))', $((i * 7 % 10000)).99);\"; done";

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
    let store_dir = crate::deps::workspace_root().join("target/stowage-demo/store");
    std::fs::create_dir_all(&store_dir)?;
    let spec: StorageSpec = filesystem_spec(&store_dir);
    let store = storage::build(&spec, &Default::default())?;
    storage::check(store.as_ref(), "")
        .await
        .context("the demo storage does not work")?;

    eprintln!("==> a database-like Pod in namespace {NAMESPACE}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(NAMESPACE).await?.is_none() {
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?,
            )
            .await?;
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NAMESPACE);
    wait_for("the namespace's default ServiceAccount token", || async {
        Ok(accounts
            .get_opt("default")
            .await?
            .and_then(|a| a.secrets)
            .is_some_and(|s| !s.is_empty())
            .then_some(()))
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let _ = pods.delete("demo-db", &DeleteParams::default().grace_period(0)).await;
    wait_for("the previous demo Pod to go", || async {
        Ok(pods.get_opt("demo-db").await?.is_none().then_some(()))
    })
    .await?;
    let pod =
        json!({"metadata": {"name": "demo-db"}, "spec": {"containers": [{"name": "db", "image": "postgres:16"}]}});
    pods.create(&PostParams::default(), &serde_json::from_value(pod)?)
        .await?;
    wait_for("Pod demo-db to run", || async {
        let phase = pods.get("demo-db").await?.status.and_then(|s| s.phase);
        Ok((phase.as_deref() == Some("Running")).then_some(()))
    })
    .await?;

    eprintln!("==> backup: exec the dump through the API server → gzip → age → Filesystem storage");
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let identity_text = age::secrecy::ExposeSecret::expose_secret(&identity.to_string()).to_string();
    let key_file = store_dir.with_file_name("demo-key.txt");
    std::fs::write(&key_file, format!("{identity_text}\n"))?;
    let key = Layout::new("demo")?.default_key("ExecBackup", Some(NAMESPACE), "demo-db", chrono::Utc::now(), "gz.age");
    let mut request = BackupRequest::new(
        store.clone(),
        &key,
        "ExecBackup",
        format!("exec {NAMESPACE}/demo-db: a SQL dump"),
    );
    request.recipients = Arc::new(Recipients::parse(&[recipient])?);
    let started = Instant::now();
    let mut process = pods
        .exec(
            "demo-db",
            ["sh", "-c", DUMP],
            &AttachParams::default()
                .container("db")
                .stdout(true)
                .stderr(false)
                .max_stdout_buf_size(1 << 20),
        )
        .await?;
    let stdout = process.stdout().context("exec gave no stdout")?;
    let artifact = backup(request, stdout).await?;
    let status = process.take_status().context("exec gave no status")?.await;
    anyhow::ensure!(
        status.as_ref().and_then(|s| s.status.as_deref()) == Some("Success"),
        "the dump command failed: {status:?}"
    );
    let backup_time = started.elapsed();

    eprintln!("==> restore: storage → verify → age → gunzip");
    let started = Instant::now();
    let mut sink = HashingSink::default();
    let identities = Identities::parse(&identity_text)?;
    let request = RestoreRequest {
        identities: Arc::new(identities),
        ..RestoreRequest::new(store, &key)
    };
    restore(request, &mut sink).await?;
    let restore_time = started.elapsed();
    anyhow::ensure!(
        sink.sha256() == artifact.plaintext_sha256,
        "restored bytes differ from the backup"
    );

    println!();
    println!("| step | result |");
    println!("|---|---|");
    println!("| storage | Filesystem at {} |", store_dir.display());
    println!("| artifact | {} |", artifact.path);
    println!("| manifest | {} |", artifact.manifest_path);
    println!(
        "| dump (plaintext) | {} , sha256 {}… |",
        human_bytes(artifact.plaintext_bytes),
        &artifact.plaintext_sha256[..16]
    );
    println!(
        "| stored (gzip + age) | {} ({:.0}% of plaintext) |",
        human_bytes(artifact.stored_bytes),
        100.0 * artifact.stored_bytes as f64 / artifact.plaintext_bytes.max(1) as f64
    );
    println!(
        "| backup | {:.2} s, exec through kube-apiserver {} |",
        backup_time.as_secs_f64(),
        bed.info().apiserver_url
    );
    println!(
        "| restore | {:.2} s, {} verified against the manifest |",
        restore_time.as_secs_f64(),
        human_bytes(sink.bytes())
    );
    println!();
    println!(
        "Read it without Stowage: age -d -i {} {}/{} | gunzip | head",
        key_file.display(),
        store_dir.display(),
        artifact.path
    );
    pods.delete("demo-db", &DeleteParams::default()).await?;
    Ok(())
}
