#![allow(clippy::unwrap_used)]
//! The exec-backup-ctrl binary as a Deployment runs it: killed mid-run, its successor fails
//! the interrupted run with the reason; stopped with SIGTERM, it fails its run in flight
//! cleanly, releases its Lease and exits 0; a run deleted while no controller ran is cancelled
//! by the next one, which lets the deletion finish. Nothing partial is ever marked complete.

mod support;

use std::process::Stdio;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use stowage_api::{ExecBackup, ExecPhase};
use stowage_core::testing::free_port;
use stowage_e2e::{bed, wait_for};
use support::*;

struct Binary {
    child: tokio::process::Child,
    port: u16,
}

async fn start_binary(bed: &stowage_e2e::TestBed, namespace: &str, log: &std::path::Path) -> anyhow::Result<Binary> {
    let port = free_port()?;
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_exec-backup-ctrl"))
        .arg("--kubeconfig")
        .arg(bed.kubeconfig_path())
        .args(["--namespace", namespace, "--watch-namespace", namespace])
        .args([
            "--admin-address",
            &format!("127.0.0.1:{port}"),
            "--lease-duration-seconds",
            "3",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(log_file.try_clone()?))
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true)
        .spawn()?;
    bed.register_log(&format!("exec-backup-ctrl {namespace}"), log);
    Ok(Binary { child, port })
}

async fn phase_of(api: &Api<ExecBackup>, name: &str, phase: ExecPhase) -> anyhow::Result<ExecBackup> {
    wait_for(&format!("ExecBackup {name} to be {phase:?}"), || async {
        let backup = api.get(name).await?;
        Ok((backup.status.as_ref().map(|s| s.phase) == Some(phase)).then_some(backup))
    })
    .await
}

/// What both tests start from, in namespace `ns`: the CRDs, a filesystem BackupStorage in a
/// temporary directory (kept until this is dropped), and a first controller logging there.
struct Setup {
    _dir: tempfile::TempDir,
    store: std::path::PathBuf,
    storage: String,
    log: std::path::PathBuf,
    api: Api<ExecBackup>,
    first: Binary,
}

async fn setup(bed: &stowage_e2e::TestBed, client: &kube::Client, ns: &str) -> anyhow::Result<Setup> {
    stowage_e2e::crds::apply_crds(client, &stowage_api::crds()).await?;
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    let storage = filesystem_storage(client, ns, &store).await?;
    let log = dir.path().join("controller.log");
    let first = start_binary(bed, ns, &log).await?;
    Ok(Setup {
        _dir: dir,
        store,
        storage,
        log,
        api: Api::namespaced(client.clone(), ns),
        first,
    })
}

/// A backup whose command outlives the test unless something stops it.
fn long_run(storage: &str) -> serde_json::Value {
    json!({
        "backup": { "command": ["sh", "-c", "seq 1 100000; sleep 600"] },
        "storage": { "name": storage },
        "template": idle_template(None, json!([])),
    })
}

#[tokio::test]
async fn a_killed_controller_s_run_is_failed_by_its_successor_and_sigterm_stops_cleanly() {
    let bed = bed().await.unwrap();
    bed.with_namespace("exec-binary", |client, ns| async move {
        let Setup {
            store,
            storage,
            log,
            api,
            mut first,
            _dir,
        } = setup(bed, &client, &ns).await?;
        create_backup(&client, &ns, "killed", long_run(&storage)).await?;
        phase_of(&api, "killed", ExecPhase::Running).await?;
        first.child.start_kill()?;
        first.child.wait().await?;

        let mut second = start_binary(bed, &ns, &log).await?;
        let interrupted = phase_of(&api, "killed", ExecPhase::Failed).await?.status.unwrap();
        assert_eq!(
            condition(&interrupted.conditions, "Failed").1,
            "Interrupted",
            "{interrupted:#?}"
        );
        assert!(interrupted.artifact.is_none());

        create_backup(&client, &ns, "stopped", long_run(&storage)).await?;
        phase_of(&api, "stopped", ExecPhase::Running).await?;
        // The gauge counts the run from just after its Running status and Event.
        wait_for("the run in progress on /metrics", || async {
            let (code, metrics) = http_get(second.port, "/metrics").await?;
            assert_eq!(code, 200);
            Ok(metrics
                .contains(r#"stowage_runs_in_progress{kind="ExecBackup",operation="Backup"} 1"#)
                .then_some(()))
        })
        .await?;
        kill(Pid::from_raw(second.child.id().unwrap() as i32), Signal::SIGTERM)?;
        let exit = second.child.wait().await?;
        assert!(exit.success(), "SIGTERM is a clean stop: {exit}");
        let stopped = api.get("stopped").await?.status.unwrap();
        assert_eq!(stopped.phase, ExecPhase::Failed, "{stopped:#?}");
        assert_eq!(condition(&stopped.conditions, "Failed").1, "Interrupted");
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        let lease = leases.get("exec-backup-ctrl").await?;
        assert_eq!(
            lease.spec.and_then(|s| s.holder_identity).unwrap_or_default(),
            "",
            "the Lease is released"
        );

        // Neither interrupted run left a manifest: nothing partial is marked complete.
        let manifests: Vec<_> = files_under(&store)
            .into_iter()
            .filter(|f| f.to_string_lossy().ends_with(".manifest.json"))
            .collect();
        assert!(manifests.is_empty(), "{manifests:?}");
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_run_deleted_while_its_controller_was_down_is_cancelled_when_a_controller_returns() {
    let bed = bed().await.unwrap();
    bed.with_namespace("exec-binary-deleted", |client, ns| async move {
        let Setup {
            store,
            storage,
            log,
            api,
            mut first,
            _dir,
        } = setup(bed, &client, &ns).await?;
        let mut spec = long_run(&storage);
        spec["retainPolicy"] = json!("Delete");
        create_backup(&client, &ns, "orphaned", spec).await?;
        phase_of(&api, "orphaned", ExecPhase::Running).await?;
        first.child.start_kill()?;
        first.child.wait().await?;

        // Deleted while no controller runs: the finalizer holds it, still Running.
        api.delete("orphaned", &DeleteParams::default()).await?;
        let held = api.get("orphaned").await?;
        assert!(held.metadata.deletion_timestamp.is_some());
        assert_eq!(held.status.map(|s| s.phase), Some(ExecPhase::Running));

        let _second = start_binary(bed, &ns, &log).await?;
        wait_for("the deleted ExecBackup to be gone", || async {
            Ok(api.get_opt("orphaned").await?.is_none().then_some(()))
        })
        .await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        wait_for("its Pod to be gone", || async {
            let list = pods
                .list(&ListParams::default().labels("stowage.io/backup=orphaned"))
                .await?;
            Ok(list.items.is_empty().then_some(()))
        })
        .await?;
        wait_events(&client, &ns, "orphaned", &["BackupCancelled"]).await?;
        assert_eq!(files_under(&store), Vec::<std::path::PathBuf>::new());
        Ok(())
    })
    .await
    .unwrap();
}

/// `GET path` on 127.0.0.1:`port`: (status code, body).
async fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = wait_for("the admin server", || async {
        Ok(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok())
    })
    .await?;
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    tcp.read_to_string(&mut response).await?;
    let code = response.split(' ').nth(1).unwrap_or("0").parse()?;
    Ok((
        code,
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default(),
    ))
}
