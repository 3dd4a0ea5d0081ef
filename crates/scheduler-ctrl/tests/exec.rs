//! The scheduler with the real exec controller: both run in-process, watching the test's
//! namespace, against the test bed. Runs are ExecBackups whose commands the node simulator
//! executes and whose data lands in a Filesystem BackupStorage of the test's own, so
//! concurrency policies are seen on real run times and history limits on real artifacts.
//! Nothing here measures time: waits are for conditions, with generous timeouts.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use stowage_api::{BackupSchedule, BackupStorage, ExecBackup, ExecPhase};
use stowage_e2e::{bed, wait_for};
use stowage_operator::{Context, Metrics};
use support::*;

/// exec-backup-ctrl running in-process for one namespace; stopped on drop.
struct ExecController {
    ctx: Arc<Context>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for ExecController {
    fn drop(&mut self) {
        self.ctx.shutdown.cancel();
        self.task.abort();
    }
}

async fn start_exec(client: &kube::Client, namespace: &str) -> anyhow::Result<ExecController> {
    let metrics = Arc::new(Metrics::new()?);
    let ctx = Context::new(client.clone(), "exec-backup-ctrl", namespace, None, metrics)
        .watching(Some(namespace.to_string()));
    let ctx = Arc::new(ctx);
    let task = tokio::spawn(stowage_exec_backup_ctrl::run(ctx.clone()));
    Ok(ExecController { ctx, task })
}

/// A Filesystem BackupStorage named after the namespace, writing under `dir`.
async fn filesystem_storage(client: &kube::Client, namespace: &str, dir: &Path) -> anyhow::Result<String> {
    let name = format!("{namespace}-fs");
    let storages: Api<BackupStorage> = Api::all(client.clone());
    let storage: BackupStorage = serde_json::from_value(json!({
        "apiVersion": "stowage.io/v1alpha1", "kind": "BackupStorage",
        "metadata": {"name": name},
        "spec": {"type": "Filesystem", "filesystem": {"path": dir}, "prefix": "backups"},
    }))?;
    storages.create(&PostParams::default(), &storage).await?;
    Ok(name)
}

/// An ExecBackup template running `script` in an idle Pod (the node simulator runs a
/// container without a command as `sleep infinity`).
fn run_template(storage: &str, script: &str, retain_policy: &str) -> Value {
    json!({"kind": "ExecBackup", "spec": {
        "backup": {"command": ["sh", "-c", script]},
        "storage": {"name": storage},
        "retainPolicy": retain_policy,
        "template": {"metadata": {"labels": {"app": "sched-exec"}},
                     "spec": {"containers": [{"name": "client", "image": "debian:12"}]}},
    }})
}

/// Every run of schedule `name`, those being deleted included, by name (= tick order).
async fn all_runs(client: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<Vec<ExecBackup>> {
    let api: Api<ExecBackup> = Api::namespaced(client.clone(), namespace);
    let selector = format!("stowage.io/schedule={name}");
    let mut runs = api.list(&ListParams::default().labels(&selector)).await?.items;
    runs.sort_by_key(|run| run.name_any());
    Ok(runs)
}

fn exec_phase(run: &ExecBackup) -> ExecPhase {
    run.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

fn finished(run: &ExecBackup) -> bool {
    matches!(exec_phase(run), ExecPhase::Succeeded | ExecPhase::Failed)
}

fn artifact_path(run: &ExecBackup) -> Option<String> {
    Some(run.status.as_ref()?.artifact.as_ref()?.artifact.path.clone())
}

/// Watches the runs of `name` until `count` have succeeded; returns each succeeded run's
/// artifact path by run name (polling is fast enough: a run is deleted by history limits
/// only once newer ones succeeded, seconds later).
async fn succeeded_runs(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    count: usize,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut seen = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + stowage_e2e::bed::WAIT_TIMEOUT;
    while seen.len() < count {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {count} runs of {name} to succeed (succeeded so far: {seen:?})"
        );
        for run in all_runs(client, namespace, name).await? {
            let failed = exec_phase(&run) == ExecPhase::Failed;
            anyhow::ensure!(!failed, "run {} failed: {:#?}", run.name_any(), run.status);
            if exec_phase(&run) == ExecPhase::Succeeded
                && let Some(path) = artifact_path(&run)
            {
                seen.insert(run.name_any(), path);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(seen)
}

/// Suspends schedule `name` and waits until every run it created has finished; returns them.
async fn suspend_and_settle(client: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<Vec<ExecBackup>> {
    patch_spec(client, namespace, name, json!({"suspend": true})).await?;
    wait_condition(client, namespace, name, "Suspended", "True", "Suspended").await?;
    wait_for(&format!("every run of {name} to finish"), || async {
        let runs = all_runs(client, namespace, name).await?;
        Ok(runs.iter().all(finished).then_some(runs))
    })
    .await
}

/// The files under `dir`, relative; BackupStorage probe objects are not counted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if !entry.file_name().to_string_lossy().starts_with(".stowage-probe-")
                && let Ok(relative) = path.strip_prefix(root)
            {
                out.push(relative.to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The payload and manifest files of the given artifact paths.
fn artifact_files<'a>(paths: impl IntoIterator<Item = &'a String>) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = paths
        .into_iter()
        .flat_map(|path| [PathBuf::from(path), PathBuf::from(format!("{path}.manifest.json"))])
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn a_seconds_schedule_runs_exec_backups_and_history_limits_delete_their_data() {
    let bed = bed().await.unwrap();
    install_crds(&bed.client()).await.unwrap();
    bed.with_namespace("sched-exec", |client, namespace| async move {
        let _exec = start_exec(&client, &namespace).await?;
        let scheduler = Scheduler::start(&client, &namespace, "stowage-system", None).await?;
        let dir = tempfile::tempdir()?;
        let store = dir.path().join("store");
        let storage = filesystem_storage(&client, &namespace, &store).await?;
        let spec = json!({"schedule": "*/2 * * * * *", "successfulRunsHistoryLimit": 2,
            "template": run_template(&storage, "seq 1 1000", "Delete")});
        create_schedule(&client, &namespace, "db", spec).await?;

        let seen = succeeded_runs(&client, &namespace, "db", 5).await?;
        let runs = suspend_and_settle(&client, &namespace, "db").await?;
        assert!(runs.iter().all(|r| exec_phase(r) == ExecPhase::Succeeded), "{runs:#?}");

        // The history limit leaves the two newest; the others go with their data.
        let survivors = wait_for("the history limit to leave two runs", || async {
            let runs = all_runs(&client, &namespace, "db").await?;
            let done = runs.len() == 2 && runs.iter().all(|r| r.metadata.deletion_timestamp.is_none());
            Ok(done.then_some(runs))
        })
        .await?;
        let kept: Vec<String> = survivors.iter().filter_map(artifact_path).collect();
        assert_eq!(kept.len(), 2, "{survivors:#?}");
        let expected = artifact_files(&kept);
        wait_for("the deleted runs' data to leave the storage", || async {
            Ok((files_under(&store) == expected).then_some(()))
        })
        .await?;
        let deleted: Vec<&String> = seen
            .iter()
            .filter(|(name, _)| !survivors.iter().any(|s| s.name_any() == **name))
            .map(|(name, _)| name)
            .collect();
        assert!(deleted.len() >= 3, "seen {seen:?}, kept {kept:?}");
        for name in &deleted {
            assert!(!store.join(&seen[*name]).exists(), "{name}'s payload is still stored");
            let events = events(&client, &namespace, name).await?;
            assert!(
                events.iter().any(|(reason, _)| reason == "DataDeleted"),
                "{name}: {events:?}"
            );
        }
        let message = wait_event(&client, &namespace, "db", "RunsDeleted").await?;
        assert!(message.contains("history limits"), "{message}");
        wait_event(&client, &namespace, "db", "RunSucceeded").await?;
        // Written by the pass after the last run finished, which may follow these Events.
        wait_for("a last success and no active run", || async {
            let status = get_schedule(&client, &namespace, "db").await?.status;
            Ok(status
                .filter(|s| s.last_successful_time.is_some() && s.active.is_empty())
                .map(|_| ()))
        })
        .await?;
        scheduler.stop().await
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn forbid_never_overlaps_runs_of_a_slow_command() {
    let bed = bed().await.unwrap();
    install_crds(&bed.client()).await.unwrap();
    bed.with_namespace("sched-exec-forbid", |client, namespace| async move {
        let _exec = start_exec(&client, &namespace).await?;
        let scheduler = Scheduler::start(&client, &namespace, "stowage-system", None).await?;
        let dir = tempfile::tempdir()?;
        let storage = filesystem_storage(&client, &namespace, &dir.path().join("store")).await?;
        let spec = json!({"schedule": "*/2 * * * * *", "concurrencyPolicy": "Forbid",
            "successfulRunsHistoryLimit": 10,
            "template": run_template(&storage, "sleep 3; seq 1 100", "Retain")});
        create_schedule(&client, &namespace, "slow", spec).await?;

        succeeded_runs(&client, &namespace, "slow", 2).await?;
        let message = wait_event(&client, &namespace, "slow", "TickSkipped").await?;
        assert!(message.contains("concurrencyPolicy Forbid"), "{message}");
        let mut runs = suspend_and_settle(&client, &namespace, "slow").await?;
        assert!(runs.len() >= 2, "{runs:#?}");
        // Each run started after the one before it completed.
        runs.sort_by_key(|r| r.status.as_ref().and_then(|s| s.start_time.clone()).map(|t| t.0));
        for pair in runs.windows(2) {
            let (before, after) = (pair[0].status.as_ref().unwrap(), pair[1].status.as_ref().unwrap());
            let (completed, started) = (
                before.completion_time.as_ref().unwrap(),
                after.start_time.as_ref().unwrap(),
            );
            assert!(
                started.0 >= completed.0,
                "{} started at {started:?}, before {} completed at {completed:?}",
                pair[1].name_any(),
                pair[0].name_any()
            );
        }
        scheduler.stop().await
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn replace_deletes_the_running_run_and_its_data_goes_with_it() {
    let bed = bed().await.unwrap();
    install_crds(&bed.client()).await.unwrap();
    bed.with_namespace("sched-exec-replace", |client, namespace| async move {
        let _exec = start_exec(&client, &namespace).await?;
        let scheduler = Scheduler::start(&client, &namespace, "stowage-system", None).await?;
        let dir = tempfile::tempdir()?;
        let store = dir.path().join("store");
        let storage = filesystem_storage(&client, &namespace, &store).await?;
        let spec = json!({"schedule": "*/2 * * * * *", "concurrencyPolicy": "Replace",
            "template": run_template(&storage, "sleep 4; seq 1 100", "Delete")});
        create_schedule(&client, &namespace, "slow", spec).await?;

        let first = wait_for("the first run to be Running", || async {
            let runs = all_runs(&client, &namespace, "slow").await?;
            Ok(runs
                .into_iter()
                .find(|r| exec_phase(r) == ExecPhase::Running)
                .map(|r| r.name_any()))
        })
        .await?;
        wait_for("a RunReplaced Event naming the first run", || async {
            let events = events(&client, &namespace, "slow").await?;
            Ok(events
                .iter()
                .any(|(reason, message)| reason == "RunReplaced" && message.contains(&first))
                .then_some(()))
        })
        .await?;
        suspend_and_settle(&client, &namespace, "slow").await?;

        // Replaced runs are deleted (their retainPolicy Delete removes whatever they
        // stored once their command ends); the run of the last tick stays and succeeds.
        let survivor = wait_for("one run left, the last tick's", || async {
            let runs = all_runs(&client, &namespace, "slow").await?;
            Ok((runs.len() == 1 && runs[0].metadata.deletion_timestamp.is_none()).then(|| runs[0].clone()))
        })
        .await?;
        assert_ne!(survivor.name_any(), first);
        assert_eq!(exec_phase(&survivor), ExecPhase::Succeeded, "{:#?}", survivor.status);
        let expected = artifact_files(&[artifact_path(&survivor).unwrap()]);
        wait_for("only the surviving run's data in the storage", || async {
            Ok((files_under(&store) == expected).then_some(()))
        })
        .await?;
        scheduler.stop().await
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn allow_runs_a_slow_command_side_by_side() {
    let bed = bed().await.unwrap();
    install_crds(&bed.client()).await.unwrap();
    bed.with_namespace("sched-exec-allow", |client, namespace| async move {
        let _exec = start_exec(&client, &namespace).await?;
        let scheduler = Scheduler::start(&client, &namespace, "stowage-system", None).await?;
        let dir = tempfile::tempdir()?;
        let storage = filesystem_storage(&client, &namespace, &dir.path().join("store")).await?;
        let spec = json!({"schedule": "*/2 * * * * *", "concurrencyPolicy": "Allow",
            "successfulRunsHistoryLimit": 10,
            "template": run_template(&storage, "sleep 5; seq 1 100", "Retain")});
        create_schedule(&client, &namespace, "slow", spec).await?;

        let running = wait_for("two runs Running at once", || async {
            let runs = all_runs(&client, &namespace, "slow").await?;
            let running: Vec<String> = runs
                .iter()
                .filter(|r| exec_phase(r) == ExecPhase::Running)
                .map(|r| r.name_any())
                .collect();
            Ok((running.len() >= 2).then_some(running))
        })
        .await?;
        let runs = suspend_and_settle(&client, &namespace, "slow").await?;
        for name in &running {
            let run = runs.iter().find(|r| r.name_any() == *name).unwrap();
            assert_eq!(exec_phase(run), ExecPhase::Succeeded, "{:#?}", run.status);
        }
        scheduler.stop().await
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_manual_trigger_runs_an_exec_backup_now() {
    let bed = bed().await.unwrap();
    install_crds(&bed.client()).await.unwrap();
    bed.with_namespace("sched-exec-trigger", |client, namespace| async move {
        let _exec = start_exec(&client, &namespace).await?;
        let scheduler = Scheduler::start(&client, &namespace, "stowage-system", None).await?;
        let dir = tempfile::tempdir()?;
        let storage = filesystem_storage(&client, &namespace, &dir.path().join("store")).await?;
        let spec = json!({"schedule": "@yearly", "template": run_template(&storage, "seq 1 100", "Retain")});
        create_schedule(&client, &namespace, "yearly", spec).await?;
        wait_condition(&client, &namespace, "yearly", "Ready", "True", "Scheduled").await?;

        let api: Api<BackupSchedule> = Api::namespaced(client.clone(), &namespace);
        for (count, value) in [(1, "first"), (2, "second")] {
            let trigger = json!({"metadata": {"annotations": {"stowage.io/trigger": value}}});
            api.patch("yearly", &PatchParams::default(), &Patch::Merge(&trigger))
                .await?;
            let seen = succeeded_runs(&client, &namespace, "yearly", count).await?;
            assert_eq!(seen.len(), count, "one run per trigger value: {seen:?}");
        }
        let runs = all_runs(&client, &namespace, "yearly").await?;
        let triggers: Vec<&str> = runs
            .iter()
            .filter_map(|r| r.annotations().get("stowage.io/trigger").map(String::as_str))
            .collect();
        assert_eq!(triggers.len(), 2, "{triggers:?}");
        assert!(triggers.contains(&"first") && triggers.contains(&"second"));
        let metrics = scheduler.metrics();
        assert!(metrics.contains("reason=\"Manual\""), "{metrics}");
        scheduler.stop().await
    })
    .await
    .unwrap();
}
