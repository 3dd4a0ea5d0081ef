//! The BackupSchedule reconciler, as named steps: check the spec, check the template
//! with the API server, read the runs, follow suspend and the manual trigger, act on the
//! due tick, clean up, write status, and requeue for the next tick.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use stowage_api::backup_schedule::TRIGGER_ANNOTATION;
use stowage_api::{BackupSchedule, BackupScheduleStatus, ConcurrencyPolicy, RunKind};
use stowage_operator::conditions::{self, from_time, to_time};
use stowage_operator::{Context, Error, Result};

use crate::check::{self, Checked, INVALID_SCHEDULE, INVALID_SPEC, Refusal};
use crate::controller::SchedulerContext;
use crate::naming::{manual_run_name, run_name};
use crate::retention::{self, Outcome};
use crate::runs::{self, Cause, Run};
use crate::schedule::Due;

/// How often a schedule with active runs of a kind the controller does not watch
/// (its CRD appeared after start) looks at them again.
const POLL_UNWATCHED: Duration = Duration::from_secs(10);
/// Timers never fire early, but the wall clock and the timer clock may disagree by a hair.
const TICK_MARGIN: Duration = Duration::from_millis(20);

/// Condition messages are never empty: the API server (1.20) reads an empty string in a
/// merge patch as null, and a condition's message is a required string.
const VALID_SCHEDULE: &str = "the schedule and its time zone are valid";

/// One schedule being reconciled: what every step needs.
struct Pass<'a> {
    kit: &'a Context,
    ctx: &'a SchedulerContext,
    schedule: &'a Arc<BackupSchedule>,
    namespace: String,
    name: String,
    generation: Option<i64>,
    kind: RunKind,
    runs_api: Api<DynamicObject>,
    status: BackupScheduleStatus,
}

/// Reconciles one BackupSchedule.
pub async fn reconcile(schedule: Arc<BackupSchedule>, ctx: Arc<SchedulerContext>) -> Result<Action> {
    let kit = ctx.kit.as_ref();
    let namespace = schedule
        .namespace()
        .ok_or_else(|| Error::InvalidSpec("a BackupSchedule without a namespace".into()))?;
    let kind = schedule.spec.template.kind;
    let mut pass = Pass {
        kit,
        ctx: &ctx,
        schedule: &schedule,
        name: schedule.name_any(),
        generation: schedule.meta().generation,
        kind,
        runs_api: runs::api(&kit.client, kind, &namespace),
        status: ctx.memory.status(&schedule),
        namespace,
    };
    let before = pass.status.clone();
    let now = kit.now();

    let checked = match check::check(&schedule.spec, &pass.namespace, &kit.namespace) {
        Ok(checked) => checked,
        Err(refusal) => return pass.refuse(refusal, &before, now).await,
    };
    if pass.status.observed_generation != pass.generation
        && let Some(refusal) = pass.dry_run(now).await?
    {
        return pass.refuse(refusal, &before, now).await;
    }
    let mut runs = pass.list_runs().await?;
    pass.follow_suspend(&checked, &before, now);
    pass.follow_trigger(&mut runs, now).await?;
    // The run comes first, Events about earlier runs after: lag is from the tick to the run.
    let next = if schedule.spec.suspend {
        None
    } else {
        pass.act_on_tick(&checked, &mut runs, now).await?
    };
    pass.observe_finished(&runs, &before);
    pass.clean_up(&checked, &mut runs).await?;
    pass.ready(&runs, next, now);
    if pass.status != before {
        pass.patch_status().await?;
    }
    Ok(requeue(ctx.as_ref(), kind, &runs, next, kit.now()))
}

impl Pass<'_> {
    /// Records why the schedule cannot run (condition, and an Event when that is news);
    /// nothing happens until the schedule changes.
    async fn refuse(mut self, refusal: Refusal, before: &BackupScheduleStatus, now: DateTime<Utc>) -> Result<Action> {
        let invalid_schedule = refusal.reason == INVALID_SCHEDULE;
        let valid_reason = if invalid_schedule {
            INVALID_SCHEDULE
        } else {
            "ScheduleValid"
        };
        let generation = self.generation;
        let conditions = &mut self.status.conditions;
        conditions::set(
            conditions,
            "InvalidSchedule",
            invalid_schedule,
            valid_reason,
            if invalid_schedule {
                refusal.message.as_str()
            } else {
                VALID_SCHEDULE
            },
            generation,
            now,
        );
        let news = conditions::set(
            conditions,
            "Ready",
            false,
            refusal.reason,
            &refusal.message,
            generation,
            now,
        );
        self.status.next_schedule_time = None;
        if news {
            self.ctx.events.warning(self.schedule, refusal.reason, refusal.message);
        }
        if self.status != *before {
            self.patch_status().await?;
        }
        Ok(Action::await_change())
    }

    /// Asks the API server whether the template makes a valid run (a dry-run create),
    /// once per generation. An invalid template is a refusal, not a stream of failed runs.
    async fn dry_run(&mut self, now: DateTime<Utc>) -> Result<Option<Refusal>> {
        let ready = conditions::find(&self.status.conditions, "Ready");
        if ready.is_some_and(|c| c.reason == INVALID_SPEC && c.observed_generation == self.generation) {
            return Ok(Some(Refusal {
                reason: INVALID_SPEC,
                message: ready.map(|c| c.message.clone()).unwrap_or_default(),
            }));
        }
        let probe = runs::build(self.schedule, &run_name(&self.name, now), now, Cause::Tick);
        let params = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        match self.runs_api.create(&params, &probe).await {
            Ok(_) => Ok(None),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
            Err(kube::Error::Api(status)) if status.code == 400 || status.code == 422 => Ok(Some(Refusal {
                reason: INVALID_SPEC,
                message: format!("template is not a valid {}: {}", self.kind, status.message),
            })),
            Err(kube::Error::Api(status)) if status.code == 404 => {
                let message = format!(
                    "the {} CustomResourceDefinition is not installed: apply deploy/crds",
                    self.kind
                );
                conditions::set(
                    &mut self.status.conditions,
                    "Ready",
                    false,
                    "RunKindNotInstalled",
                    &message,
                    self.generation,
                    now,
                );
                self.patch_status().await?;
                Err(Error::MissingReference {
                    reason: "RunKindNotInstalled",
                    message,
                })
            }
            Err(error) => Err(error.into()),
        }
    }

    /// The schedule's runs: from the run store (no read at all), with the runs this process
    /// created or deleted that the store does not show yet. A kind installed after the
    /// scheduler started is not watched; its runs are listed from the API server's watch
    /// cache (a quorum read would decode every run of the namespace). A run created twice for
    /// one tick is refused by its name anyway.
    async fn list_runs(&self) -> Result<Vec<Run>> {
        let mut runs = match self.ctx.runs.runs(self.kind, &self.namespace, &self.name) {
            Some(runs) => runs,
            None => {
                let selector = runs::selector(self.kind, &self.namespace, &self.name);
                let params = ListParams::default().labels(&selector).match_any();
                let objects = self.runs_api.list(&params).await?;
                objects.items.iter().map(Run::from_object).collect()
            }
        };
        self.ctx.memory.overlay(self.schedule, &mut runs);
        Ok(runs)
    }

    /// Events for runs that finished since the last pass; the last successful time.
    fn observe_finished(&mut self, runs: &[Run], before: &BackupScheduleStatus) {
        for run in runs.iter().filter(|r| r.outcome != Outcome::Active) {
            if !before.active.iter().any(|active| active.name == run.name) {
                continue;
            }
            let phase = run.phase.as_deref().unwrap_or("finished");
            let events = &self.ctx.events;
            if run.outcome == Outcome::Succeeded {
                let message = format!("{} {} succeeded", self.kind, run.name);
                events.normal(self.schedule, "RunSucceeded", message);
            } else {
                let message = format!("{} {} {phase}", self.kind, run.name);
                events.warning(self.schedule, "RunFailed", message);
            }
        }
        let latest = runs
            .iter()
            .filter(|r| r.outcome == Outcome::Succeeded)
            .map(|r| r.time)
            .chain(self.status.last_successful_time.as_ref().map(from_time))
            .max();
        if let Some(latest) = latest {
            self.status.last_successful_time = Some(to_time(latest));
            self.kit
                .metrics
                .last_success
                .with_label_values(&[self.kind.as_str(), &self.namespace, &self.name])
                .set(latest.timestamp() as f64);
        }
    }

    /// The Suspended condition; on resume, ticks that passed while suspended are skipped.
    fn follow_suspend(&mut self, checked: &Checked, before: &BackupScheduleStatus, now: DateTime<Utc>) {
        let suspend = self.schedule.spec.suspend;
        let was_suspended = conditions::is_true(&before.conditions, "Suspended");
        let (reason, message) = if suspend {
            ("Suspended", "spec.suspend is true: no runs are created")
        } else {
            ("Active", "runs are created on schedule")
        };
        conditions::set(
            &mut self.status.conditions,
            "Suspended",
            suspend,
            reason,
            message,
            self.generation,
            now,
        );
        if suspend && !was_suspended {
            self.ctx.events.normal(self.schedule, "Suspended", message);
        }
        if !suspend && was_suspended {
            let missed = checked
                .schedule
                .latest_at_or_before(now)
                .filter(|tick| *tick > self.handled_until());
            if let Some(tick) = missed {
                self.status.last_skipped_time = Some(to_time(tick));
                self.skipped("Suspended");
            }
            let message = "runs are created again from the next tick";
            self.ctx.events.normal(self.schedule, "Resumed", message);
        }
    }

    /// A new value of the `stowage.io/trigger` annotation creates a run now, whatever
    /// the concurrency policy: the user asked for it.
    async fn follow_trigger(&mut self, runs: &mut Vec<Run>, now: DateTime<Utc>) -> Result<()> {
        let Some(value) = self.schedule.annotations().get(TRIGGER_ANNOTATION).cloned() else {
            return Ok(());
        };
        // A run carrying the value means an earlier pass acted on it (this pass may read a
        // cached schedule whose status does not show it yet).
        let done = self.status.last_trigger.as_deref() == Some(value.as_str())
            || runs.iter().any(|r| r.trigger.as_deref() == Some(value.as_str()));
        if !done {
            self.create_run(runs, now, Cause::Manual(&value), "").await?;
        }
        self.status.last_trigger = Some(value);
        Ok(())
    }

    /// Acts on the due tick, if any; returns the next tick.
    async fn act_on_tick(
        &mut self,
        checked: &Checked,
        runs: &mut Vec<Run>,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>> {
        let deadline = self
            .schedule
            .spec
            .starting_deadline_seconds
            .map(chrono::Duration::seconds);
        let plan = checked.schedule.plan(now, self.handled_until(), deadline);
        match plan.due {
            None => {}
            Some(Due::TooLate {
                tick,
                late_by,
                missed_earlier,
            }) => {
                self.status.last_skipped_time = Some(to_time(tick));
                self.skipped("MissedDeadline");
                let earlier = if missed_earlier { " (and earlier ticks)" } else { "" };
                let message = format!(
                    "missed the tick at {tick}{earlier} by {}s, more than startingDeadlineSeconds: waiting for the next",
                    late_by.num_seconds()
                );
                self.ctx.events.warning(self.schedule, "MissedSchedule", message);
            }
            Some(Due::Run { tick, .. }) if runs.iter().any(|r| r.name == run_name(&self.name, tick)) => {
                // Created by an earlier pass whose status this (cached) schedule does not show yet.
                self.status.last_schedule_time = Some(to_time(tick));
            }
            Some(Due::Run { tick, missed_earlier }) => {
                let active: Vec<String> = runs
                    .iter()
                    .filter(|r| r.outcome == Outcome::Active && !r.terminating)
                    .map(|r| r.name.clone())
                    .collect();
                let policy = self.schedule.spec.concurrency_policy;
                if !active.is_empty() && policy == ConcurrencyPolicy::Forbid {
                    self.status.last_skipped_time = Some(to_time(tick));
                    self.skipped("ConcurrencyForbid");
                    let message = format!(
                        "skipped the tick at {tick}: {} still active (concurrencyPolicy Forbid)",
                        active.join(", ")
                    );
                    self.ctx.events.normal(self.schedule, "TickSkipped", message);
                    return Ok(plan.next);
                }
                if !active.is_empty() && policy == ConcurrencyPolicy::Replace {
                    self.replace(runs, &active).await?;
                }
                let note = if missed_earlier {
                    " (earlier ticks were missed; only the latest runs)"
                } else {
                    ""
                };
                self.create_run(runs, tick, Cause::Tick, note).await?;
                self.status.last_schedule_time = Some(to_time(tick));
            }
        }
        Ok(plan.next)
    }

    /// Deletes the active runs under concurrencyPolicy Replace.
    async fn replace(&mut self, runs: &mut [Run], active: &[String]) -> Result<()> {
        for name in active {
            self.delete_run(name).await?;
            if let Some(run) = runs.iter_mut().find(|r| &r.name == name) {
                run.terminating = true;
            }
            let message = format!(
                "deleted active {} {name} to start a new run (concurrencyPolicy Replace)",
                self.kind
            );
            self.ctx.events.normal(self.schedule, "RunReplaced", message);
        }
        Ok(())
    }

    /// Creates the run for `tick`. A run of that name already there was created by an
    /// earlier pass (e.g. before a restart): the tick is not fired twice.
    async fn create_run(
        &mut self,
        runs: &mut Vec<Run>,
        tick: DateTime<Utc>,
        cause: Cause<'_>,
        note: &str,
    ) -> Result<()> {
        let name = match cause {
            Cause::Manual(value) => manual_run_name(&self.name, tick, value),
            Cause::Tick => run_name(&self.name, tick),
        };
        let object = runs::build(self.schedule, &name, tick, cause);
        let creating = self.ctx.runs_first.creating();
        let created = self.runs_api.create(&PostParams::default(), &object).await;
        drop(creating);
        match created {
            Ok(_) => {
                self.ctx.memory.created(self.schedule, &name, tick);
                let reason = if matches!(cause, Cause::Manual(_)) {
                    "Manual"
                } else {
                    "Scheduled"
                };
                let metrics = &self.ctx.metrics;
                metrics
                    .runs_created
                    .with_label_values(&[&self.namespace, &self.name, reason])
                    .inc();
                if cause == Cause::Tick {
                    let lag = (self.kit.now() - tick).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
                    metrics.lag.with_label_values(&[self.kind.as_str()]).observe(lag);
                    // Every run's exact lag, for `cargo xtask bench scheduler` (the histogram has buckets).
                    tracing::debug!(run = %name, lag_seconds = lag, "run created");
                }
                let message = format!("created {} {name}{note}", self.kind);
                self.ctx.events.normal(self.schedule, "RunCreated", message);
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tracing::debug!(run = %name, "run already exists: created by an earlier pass");
            }
            Err(error) => return Err(error.into()),
        }
        if !runs.iter().any(|r| r.name == name) {
            runs.push(Run {
                name,
                outcome: Outcome::Active,
                phase: None,
                time: tick,
                pinned: false,
                terminating: false,
                trigger: match cause {
                    Cause::Manual(value) => Some(value.to_string()),
                    Cause::Tick => None,
                },
            });
        }
        Ok(())
    }

    /// Deletes the finished runs the history limits and retention do not keep. The run's
    /// own controller decides, by its retainPolicy, whether its data goes too.
    async fn clean_up(&mut self, checked: &Checked, runs: &mut [Run]) -> Result<()> {
        let records: Vec<_> = runs.iter().filter(|r| !r.terminating).map(Run::record).collect();
        let cleanup = retention::plan(&records, &checked.policy);
        if cleanup.delete.is_empty() {
            return Ok(());
        }
        self.ctx.runs_first.after_creations().await;
        for name in &cleanup.delete {
            self.delete_run(name).await?;
            if let Some(run) = runs.iter_mut().find(|r| &r.name == name) {
                run.terminating = true;
            }
        }
        self.ctx
            .metrics
            .runs_deleted
            .with_label_values(&[&self.namespace, &self.name])
            .inc_by(cleanup.delete.len() as u64);
        let rule = if checked.policy.retention.is_some() {
            "retention"
        } else {
            "history limits"
        };
        let message = format!(
            "deleted {} run(s) by {rule}: {}",
            cleanup.delete.len(),
            cleanup.delete.join(", ")
        );
        self.ctx.events.normal(self.schedule, "RunsDeleted", message);
        Ok(())
    }

    /// Status of a schedule that works: active runs, next tick, conditions.
    fn ready(&mut self, runs: &[Run], next: Option<DateTime<Utc>>, now: DateTime<Utc>) {
        let mut active: Vec<_> = runs
            .iter()
            .filter(|r| r.outcome == Outcome::Active && !r.terminating)
            .map(|r| r.reference(self.kind, &self.namespace))
            .collect();
        active.sort_by(|a, b| a.name.cmp(&b.name));
        self.status.active = active;
        self.status.next_schedule_time = next.map(to_time);
        let generation = self.generation;
        let conditions = &mut self.status.conditions;
        conditions::set(
            conditions,
            "InvalidSchedule",
            false,
            "ScheduleValid",
            VALID_SCHEDULE,
            generation,
            now,
        );
        let message = format!(
            "creates {} runs on schedule '{}'",
            self.kind, self.schedule.spec.schedule
        );
        conditions::set(conditions, "Ready", true, "Scheduled", message, generation, now);
        self.status.observed_generation = generation;
    }

    /// Every tick up to this instant is dealt with: the schedule's creation, its last
    /// run, its last skipped tick.
    fn handled_until(&self) -> DateTime<Utc> {
        [
            self.schedule.meta().creation_timestamp.as_ref(),
            self.status.last_schedule_time.as_ref(),
            self.status.last_skipped_time.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(from_time)
        .max()
        .unwrap_or_default()
    }

    async fn delete_run(&self, name: &str) -> Result<()> {
        match self.runs_api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error.into()),
        }
        self.ctx.memory.deleted(self.schedule, name);
        Ok(())
    }

    /// Writes the status, and remembers it: the cached schedule may not show it on the next pass.
    async fn patch_status(&self) -> Result<()> {
        self.ctx.runs_first.after_creations().await;
        patch_status(self.kit, self.schedule, &self.status).await?;
        self.ctx.memory.wrote_status(self.schedule, &self.status);
        Ok(())
    }

    fn skipped(&self, reason: &str) {
        self.ctx
            .metrics
            .ticks_skipped
            .with_label_values(&[&self.namespace, &self.name, reason])
            .inc();
    }
}

/// Wakes at the next tick, or sooner to look at active runs whose kind is not watched.
fn requeue(
    ctx: &SchedulerContext,
    kind: RunKind,
    runs: &[Run],
    next: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Action {
    let until_next = next.map(|next| (next - now).to_std().unwrap_or_default() + TICK_MARGIN);
    let polling = (!ctx.watches(kind) && runs.iter().any(|r| r.outcome == Outcome::Active)).then_some(POLL_UNWATCHED);
    match (until_next, polling) {
        (Some(a), Some(b)) => Action::requeue(a.min(b)),
        (Some(wait), None) | (None, Some(wait)) => Action::requeue(wait),
        (None, None) => Action::await_change(),
    }
}

/// Writes the whole status with a merge patch; fields that are now empty are sent as
/// null so they are removed rather than left at their old value. Never onto another schedule
/// of the same name ([`stowage_operator::status::patch`]): a schedule deleted and created
/// again during a pass must not inherit the old one's last schedule time and active runs.
async fn patch_status(kit: &Context, schedule: &BackupSchedule, status: &BackupScheduleStatus) -> Result<()> {
    let mut value = serde_json::to_value(status).map_err(|e| Error::transient("StatusError", e.to_string()))?;
    if let Some(fields) = value.as_object_mut() {
        for key in [
            "conditions",
            "observedGeneration",
            "lastScheduleTime",
            "lastSkippedTime",
            "nextScheduleTime",
            "lastSuccessfulTime",
            "active",
            "lastTrigger",
        ] {
            fields.entry(key).or_insert(serde_json::Value::Null);
        }
    }
    let api: Api<BackupSchedule> = Api::namespaced(kit.client.clone(), &schedule.namespace().unwrap_or_default());
    stowage_operator::status::patch(&api, schedule, &value).await?;
    Ok(())
}
