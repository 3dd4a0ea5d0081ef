//! The schedule step: scheduler-ctrl and exec-backup-ctrl in-process, a BackupSchedule that
//! fires every 5 seconds and keeps the last 2 ExecBackups (retainPolicy Delete, so the data of
//! the runs retention deletes leaves the storage too), then a suspend and a manual trigger.
//! `examples/schedules` holds the schedules you would write for real (nightly, hourly).

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use stowage_api::{BackupSchedule, BackupStorage, ExecBackup, ExecPhase};
use stowage_e2e::bed::{TestBed, wait_for};

use super::{Demo, fresh_namespace};

const NAMESPACE: &str = "stowage-demo-schedule";
const STORAGE: &str = "demo-schedules";
const SCHEDULE: &str = "every-5s";

pub async fn tour(bed: &TestBed, demo: &Demo) -> anyhow::Result<()> {
    let client = bed.client();
    eprintln!("==> exec-backup-ctrl and scheduler-ctrl, watching namespace {NAMESPACE}");
    fresh_namespace(&client, NAMESPACE).await?;
    let exec = Arc::new(
        stowage_operator::Context::new(
            client.clone(),
            "exec-backup-ctrl",
            NAMESPACE,
            None,
            Arc::new(stowage_operator::Metrics::new()?),
        )
        .watching(Some(NAMESPACE.to_string())),
    );
    let exec_task = tokio::spawn(stowage_exec_backup_ctrl::run(exec.clone()));
    let kit = Arc::new(
        stowage_operator::Context::new(
            client.clone(),
            stowage_scheduler_ctrl::CONTROLLER,
            NAMESPACE,
            None,
            Arc::new(stowage_operator::Metrics::new()?),
        )
        .watching(Some(NAMESPACE.to_string())),
    );
    let scheduler = Arc::new(stowage_scheduler_ctrl::SchedulerContext::new(kit.clone()).await?);
    let scheduler_task = tokio::spawn(stowage_scheduler_ctrl::run(scheduler.clone()));

    let store = demo.store_dir.join("schedules");
    let _ = std::fs::remove_dir_all(&store);
    let storages: Api<BackupStorage> = Api::all(client.clone());
    let storage = json!({"apiVersion": "stowage.io/v1alpha1", "kind": "BackupStorage",
        "metadata": {"name": STORAGE},
        "spec": {"type": "Filesystem", "filesystem": {"path": demo.store_dir}, "prefix": "schedules"}});
    storages
        .patch(
            STORAGE,
            &PatchParams::apply("stowage-demo").force(),
            &Patch::Apply(&storage),
        )
        .await?;

    eprintln!("==> BackupSchedule {SCHEDULE}: every 5 seconds, keepLast 2, runs with retainPolicy Delete");
    let schedules: Api<BackupSchedule> = Api::namespaced(client.clone(), NAMESPACE);
    let schedule: BackupSchedule = serde_json::from_value(json!({
        "apiVersion": "stowage.io/v1alpha1", "kind": "BackupSchedule",
        "metadata": {"name": SCHEDULE},
        "spec": {"schedule": "*/5 * * * * *", "retention": {"keepLast": 2},
            "template": {"kind": "ExecBackup", "spec": {
                "backup": {"command": ["sh", "-c", "date -u; seq 1 200000"]},
                "storage": {"name": STORAGE},
                "compression": {"algorithm": "gzip", "level": 6},
                "retainPolicy": "Delete",
                "template": {"spec": {"containers": [{"name": "client", "image": "debian:12"}]}}}}},
    }))?;
    schedules.create(&PostParams::default(), &schedule).await?;

    let runs: Api<ExecBackup> = Api::namespaced(client.clone(), NAMESPACE);
    let selector = format!("stowage.io/schedule={SCHEDULE}");
    let mut succeeded = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + stowage_e2e::bed::WAIT_TIMEOUT;
    // Poll until four distinct runs have been seen succeeding (retention deletes older ones).
    while succeeded.len() < 4 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for 4 runs of {SCHEDULE} to succeed (so far: {succeeded:?})"
        );
        let list = runs.list(&ListParams::default().labels(&selector)).await?.items;
        for run in &list {
            if run.status.as_ref().is_some_and(|s| s.phase == ExecPhase::Succeeded) && succeeded.insert(run.name_any())
            {
                let artifact = run.status.as_ref().and_then(|s| s.artifact.as_ref());
                eprintln!(
                    "    {} Succeeded: {}",
                    run.name_any(),
                    artifact.map_or(String::new(), |a| format!("{} at {}", a.size, a.artifact.path))
                );
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    println!(
        "{}",
        bed.kubectl(["get", "backupschedules", "-n", NAMESPACE, "-o", "wide"])
            .await?
    );
    println!("{}", bed.kubectl(["get", "execbackups", "-n", NAMESPACE]).await?);

    eprintln!("==> suspend: no more ticks; retention leaves the 2 newest runs and their data alone");
    let suspend = json!({"spec": {"suspend": true}});
    schedules
        .patch(SCHEDULE, &PatchParams::default(), &Patch::Merge(&suspend))
        .await?;
    let kept = settle(&runs, &selector, 2).await?;
    let files = stored_files(&store);
    println!("{}", bed.kubectl(["get", "execbackups", "-n", NAMESPACE]).await?);
    println!("stored under {}:\n  {}", store.display(), files.join("\n  "));

    eprintln!("==> manual trigger: annotation stowage.io/trigger=demo creates a run now, even while suspended");
    let trigger = json!({"metadata": {"annotations": {"stowage.io/trigger": "demo"}}});
    schedules
        .patch(SCHEDULE, &PatchParams::default(), &Patch::Merge(&trigger))
        .await?;
    let after = wait_for("the triggered run to succeed and retention to settle", || async {
        let list = runs.list(&ListParams::default().labels(&selector)).await?.items;
        let triggered = list.iter().any(|r| {
            r.annotations().get("stowage.io/trigger").is_some_and(|v| v == "demo")
                && r.status.as_ref().is_some_and(|s| s.phase == ExecPhase::Succeeded)
        });
        let settled = list.len() == 2 && list.iter().all(|r| r.metadata.deletion_timestamp.is_none());
        Ok((triggered && settled).then_some(list))
    })
    .await?;
    println!("{}", bed.kubectl(["get", "execbackups", "-n", NAMESPACE]).await?);

    // The scheduler publishes its Events from a queue, after the writes the demo waited for.
    stowage_e2e::support::wait_events(&client, NAMESPACE, SCHEDULE, &["RunCreated", "RunsDeleted"]).await?;
    let events: Api<Event> = Api::namespaced(client.clone(), NAMESPACE);
    let mut reasons: Vec<(String, String)> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(SCHEDULE))
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect();
    reasons.sort();
    reasons.dedup_by(|a, b| a.0 == b.0);
    println!("Events of BackupSchedule {SCHEDULE} (one of each reason):");
    for (reason, message) in &reasons {
        println!("  {reason}: {message}");
    }

    let metrics = scheduler.kit.metrics.render();
    // The sum of the samples of metric `name` whose labels include `label`.
    let sum_with = |name: &str, label: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(label))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>()
            + 0.0
    };
    let sum = |name: &str| sum_with(name, "");
    let lag_count = sum("stowage_schedule_lag_seconds_count");
    let lag_mean = sum("stowage_schedule_lag_seconds_sum") / lag_count.max(1.0);
    println!();
    println!("| step | result |");
    println!("|---|---|");
    println!("| schedule | `*/5 * * * * *`, keepLast 2, ExecBackup runs with retainPolicy Delete |");
    println!(
        "| runs | {:.0} created ({:.0} by ticks, {:.0} by the trigger), {:.0} deleted by retention |",
        sum("stowage_schedule_runs_created_total"),
        sum_with("stowage_schedule_runs_created_total", "reason=\"Scheduled\""),
        sum_with("stowage_schedule_runs_created_total", "reason=\"Manual\""),
        sum("stowage_schedule_runs_deleted_total")
    );
    println!(
        "| lag (tick → run created) | mean {:.0} ms over {lag_count:.0} ticks |",
        lag_mean * 1000.0
    );
    println!(
        "| kept after suspend | {} |",
        kept.iter().map(|r| r.name_any()).collect::<Vec<_>>().join(", ")
    );
    println!(
        "| kept after the trigger | {} |",
        after.iter().map(|r| r.name_any()).collect::<Vec<_>>().join(", ")
    );
    println!(
        "| storage | {} files after suspend (payload + manifest of each kept run), {} now |",
        files.len(),
        stored_files(&store).len()
    );

    kit.shutdown.cancel();
    exec.shutdown.cancel();
    scheduler_task.await.context("the scheduler task")??;
    let _ = exec_task.await;
    Ok(())
}

/// Waits until the schedule's runs are `count`, all finished and none being deleted.
async fn settle(runs: &Api<ExecBackup>, selector: &str, count: usize) -> anyhow::Result<Vec<ExecBackup>> {
    wait_for(&format!("{count} finished runs left"), || async {
        let list = runs.list(&ListParams::default().labels(selector)).await?.items;
        let finished = list.iter().all(|r| {
            r.metadata.deletion_timestamp.is_none()
                && r.status
                    .as_ref()
                    .is_some_and(|s| matches!(s.phase, ExecPhase::Succeeded | ExecPhase::Failed))
        });
        Ok((list.len() == count && finished).then_some(list))
    })
    .await
}

/// The files under `dir`, relative, sorted; storage probe objects are not counted.
fn stored_files(dir: &std::path::Path) -> Vec<String> {
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if !entry.file_name().to_string_lossy().starts_with(".stowage-probe-")
                && let Ok(relative) = path.strip_prefix(root)
            {
                out.push(relative.display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
