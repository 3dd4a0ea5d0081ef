//! What the scheduler's e2e tests share: an in-process scheduler, and helpers that create
//! schedules, read runs, play the run kind's controller and wait for Events and conditions.
#![allow(clippy::unwrap_used)]
// Each test binary uses its own part of these helpers.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use stowage_api::{BackupSchedule, RunKind};
pub use stowage_e2e::support::events;
use stowage_e2e::wait_for;
use stowage_operator::conditions::find;
use stowage_operator::{Context, Metrics};
use stowage_scheduler_ctrl::{SchedulerContext, runs};
use tokio_util::sync::CancellationToken;

/// The scheduler running in-process for one test.
pub struct Scheduler {
    ctx: Arc<SchedulerContext>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Scheduler {
    /// Starts a scheduler for the schedules of `namespace`, running as if installed in
    /// `controller_namespace`, reading time from `clock` (the system clock when None).
    pub async fn start(
        client: &Client,
        namespace: &str,
        controller_namespace: &str,
        clock: Option<DateTime<Utc>>,
    ) -> anyhow::Result<Scheduler> {
        // The scheduler's log goes to the test's output, shown when a test fails.
        stowage_operator::runner::init_tracing("text");
        let metrics = Arc::new(Metrics::new()?);
        let mut kit = Context::new(client.clone(), "scheduler-ctrl", controller_namespace, None, metrics)
            .watching(Some(namespace.to_string()));
        if let Some(at) = clock {
            kit = kit.with_clock(Arc::new(move || at));
        }
        let shutdown = kit.shutdown.clone();
        let ctx = Arc::new(SchedulerContext::new(Arc::new(kit)).await?);
        let task = tokio::spawn(stowage_scheduler_ctrl::run(ctx.clone()));
        Ok(Scheduler { ctx, shutdown, task })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await?
    }

    pub fn metrics(&self) -> String {
        self.ctx.kit.metrics.render()
    }
}

/// Installs Stowage's CRDs (the run kinds' real ones: runs are validated as users' are).
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    stowage_e2e::crds::apply_crds(client, &stowage_api::crds()).await
}

/// A run template of the kind's real shape, for synthetic runs nobody executes.
pub fn exec_template() -> Value {
    json!({"kind": "ExecBackup", "metadata": {"labels": {"app": "db"}},
           "spec": {"backup": {"command": ["pg_dumpall"]}, "storage": {"name": "nowhere"},
                    "template": {"spec": {"containers": [{"name": "db", "image": "postgres:16"}]}}}})
}

pub async fn create_schedule(
    client: &Client,
    namespace: &str,
    name: &str,
    spec: Value,
) -> anyhow::Result<BackupSchedule> {
    create_schedule_with(client, namespace, json!({"name": name}), spec).await
}

pub async fn create_schedule_with(
    client: &Client,
    namespace: &str,
    metadata: Value,
    spec: Value,
) -> anyhow::Result<BackupSchedule> {
    let api: Api<BackupSchedule> = Api::namespaced(client.clone(), namespace);
    let schedule: BackupSchedule = serde_json::from_value(json!({
        "apiVersion": "stowage.io/v1alpha1", "kind": "BackupSchedule",
        "metadata": metadata, "spec": spec,
    }))?;
    Ok(api.create(&PostParams::default(), &schedule).await?)
}

pub async fn patch_spec(client: &Client, namespace: &str, name: &str, spec: Value) -> anyhow::Result<()> {
    let api: Api<BackupSchedule> = Api::namespaced(client.clone(), namespace);
    api.patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": spec})))
        .await?;
    Ok(())
}

pub async fn get_schedule(client: &Client, namespace: &str, name: &str) -> anyhow::Result<BackupSchedule> {
    Ok(Api::<BackupSchedule>::namespaced(client.clone(), namespace)
        .get(name)
        .await?)
}

/// The runs of schedule `name`, oldest tick first (names end in the tick's unix time).
pub async fn list_runs(
    client: &Client,
    kind: RunKind,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Vec<DynamicObject>> {
    let api = runs::api(client, kind, namespace);
    let selector = runs::selector(kind, namespace, name);
    let mut items = api.list(&ListParams::default().labels(&selector)).await?.items;
    items.retain(|run| run.metadata.deletion_timestamp.is_none());
    items.sort_by_key(|run| run.name_any());
    Ok(items)
}

pub fn phase(run: &DynamicObject) -> Option<&str> {
    run.data.get("status")?.get("phase")?.as_str()
}

/// Plays the run's controller: the run finishes with `phase` at `completed`.
pub async fn finish(
    client: &Client,
    namespace: &str,
    run: &str,
    phase: &str,
    completed: DateTime<Utc>,
) -> anyhow::Result<()> {
    let api = runs::api(client, RunKind::ExecBackup, namespace);
    let status = json!({"status": {"phase": phase,
        "completionTime": completed.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}});
    api.patch_status(run, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// Waits for an Event with `reason` about schedule `name`; returns its message.
pub async fn wait_event(client: &Client, namespace: &str, name: &str, reason: &str) -> anyhow::Result<String> {
    wait_for(&format!("a {reason} Event about {name}"), || async {
        let events = events(client, namespace, name).await?;
        Ok(events
            .into_iter()
            .find(|(r, _)| r == reason)
            .map(|(_, message)| message))
    })
    .await
}

/// Waits until condition `type_` of schedule `name` has `status` and `reason`.
pub async fn wait_condition(
    client: &Client,
    namespace: &str,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> anyhow::Result<BackupSchedule> {
    wait_for(&format!("{name} condition {type_}={status} ({reason})"), || async {
        let schedule = get_schedule(client, namespace, name).await?;
        let conditions = schedule
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let found = find(&conditions, type_).is_some_and(|c| c.status == status && c.reason == reason);
        Ok(found.then_some(schedule))
    })
    .await
}

/// Waits until schedule `name` has at least `count` runs; returns them.
pub async fn wait_runs(
    client: &Client,
    namespace: &str,
    name: &str,
    count: usize,
) -> anyhow::Result<Vec<DynamicObject>> {
    wait_for(&format!("{count} run(s) of {name}"), || async {
        let runs = list_runs(client, RunKind::ExecBackup, namespace, name).await?;
        Ok((runs.len() >= count).then_some(runs))
    })
    .await
}

/// Finishes each run of `name` as it appears, with the phase `phase_of(index)` for the
/// index-th finished run, until `count` are finished; then suspends the schedule and
/// finishes what is left as Succeeded. Returns every (name, phase, completion) finished.
pub async fn finish_runs(
    client: &Client,
    namespace: &str,
    name: &str,
    count: usize,
    phase_of: impl Fn(usize) -> &'static str,
) -> anyhow::Result<Vec<(String, &'static str, DateTime<Utc>)>> {
    let mut finished: Vec<(String, &'static str, DateTime<Utc>)> = Vec::new();
    let mut suspended = false;
    let deadline = tokio::time::Instant::now() + stowage_e2e::bed::WAIT_TIMEOUT;
    loop {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {count} runs of {name} to be created (finished so far: {finished:?})"
        );
        let runs = list_runs(client, RunKind::ExecBackup, namespace, name).await?;
        let pending: Vec<String> = runs
            .iter()
            .filter(|r| phase(r).is_none() && !finished.iter().any(|(n, _, _)| *n == r.name_any()))
            .map(|r| r.name_any())
            .collect();
        for run in pending {
            let phase = if suspended {
                "Succeeded"
            } else {
                phase_of(finished.len())
            };
            let completed = Utc::now();
            finish(client, namespace, &run, phase, completed).await?;
            finished.push((run, phase, to_second(completed)));
        }
        if finished.len() >= count && !suspended {
            patch_spec(client, namespace, name, json!({"suspend": true})).await?;
            wait_condition(client, namespace, name, "Suspended", "True", "Suspended").await?;
            suspended = true;
            continue; // finish the runs created before the suspend took effect
        }
        if suspended {
            return Ok(finished);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn to_second(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(at.timestamp(), 0).unwrap()
}

/// The newest `keep` of `finished` with `phase`, newest completion first (ties: later name),
/// as the scheduler orders them.
pub fn newest(finished: &[(String, &str, DateTime<Utc>)], phase: &str, keep: usize) -> Vec<String> {
    let mut runs: Vec<_> = finished.iter().filter(|(_, p, _)| *p == phase).collect();
    runs.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| b.0.cmp(&a.0)));
    let mut names: Vec<String> = runs.iter().take(keep).map(|(n, _, _)| n.clone()).collect();
    names.sort();
    names
}
