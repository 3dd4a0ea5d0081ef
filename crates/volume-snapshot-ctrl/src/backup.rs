//! VolumeBackup: resolve the claims and Pods, freeze (pre-hooks), cut one VolumeSnapshot per
//! claim, thaw (post-hooks) at once, wait until the snapshots are ready, optionally copy each
//! into storage. Each step is a condition and an Event; the status is written before each
//! step, so a restarted controller knows what to undo or resume.
//!
//! Thawing is guaranteed: on a hook or snapshot failure, when the freeze outlasts
//! `maxFreezeSeconds`, on shutdown, and after a restart (a backup found Running is thawed
//! before anything else). A backup whose snapshots were not all cut fails, and the snapshots it
//! did cut (an inconsistent set) are deleted; one found after its cut resumes.
//!
//! Deleting a running VolumeBackup cancels it after its thaw: the wait for the snapshots and
//! the copies stop (the copy's upload is aborted), an Event `BackupCancelled` records it, and
//! the deletion does not wait hours for a copy nobody wants (`stowage_operator::cancel`).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::{Controller, watcher};
use stowage_api::{ArtifactStatus, RetainPolicy, VolumeBackup, VolumeBackupPhase, VolumeBackupStatus, VolumeStatus};
use stowage_operator::cancel::{self, CANCELLED, Registry, RunGuard, Stop};
use stowage_operator::conditions::{from_time, to_time};
use stowage_operator::{Context, Error, Result, finalizer, status};

use crate::backup_status::{self as step, Step};
use crate::copy::{self, CopyPlan, KIND};
use crate::{backup_cleanup, backup_snapshots as snapshots, hooks, targets};

/// Finalizer of backups whose snapshots and copies go with them (`retainPolicy: Delete`).
pub const FINALIZER: &str = finalizer::DELETE_DATA;
/// How long the snapshots may take to become ready to use after the cut.
const READY_TIMEOUT: Duration = Duration::from_secs(3600);

/// Runs the VolumeBackup controller until `ctx.shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>) {
    // The one watch also tells running backups that their object was deleted.
    let (stream, store, runs) = cancel::watch(ctx.watched::<VolumeBackup>(), watcher::Config::default());
    let backups = Controller::for_stream(stream, store);
    stowage_operator::run_controller(backups, ctx.clone(), ctx.shutdown.clone(), move |backup, ctx| {
        reconcile(backup, ctx, runs.clone())
    })
    .await;
}

/// Reconciles one VolumeBackup. `runs` cancels a running backup whose object is deleted.
pub async fn reconcile(backup: Arc<VolumeBackup>, ctx: Arc<Context>, runs: Registry<VolumeBackup>) -> Result<Action> {
    let namespace = backup.namespace().unwrap_or_default();
    let api: Api<VolumeBackup> = Api::namespaced(ctx.client.clone(), &namespace);
    if backup.metadata.deletion_timestamp.is_some() {
        return backup_cleanup::delete_data(&backup, &api, &ctx).await;
    }
    if backup.spec.retain_policy == RetainPolicy::Delete {
        finalizer::add(&api, backup.as_ref(), FINALIZER).await?;
    }
    if backup.status.as_ref().is_some_and(|s| s.phase.is_final()) {
        return Ok(Action::await_change());
    }
    let Some(backup) = status::latest(&api, backup.as_ref()).await? else {
        return Ok(Action::await_change());
    };
    let state = backup.status.clone().unwrap_or_default();
    // Registered before the run starts, so a deletion at any moment from here on cancels it.
    let cancel = runs.register(&backup, &ctx.shutdown);
    let run = Run {
        backup,
        api,
        ctx,
        state,
        frozen_clock: None,
        cancel,
    };
    match run.state.phase {
        VolumeBackupPhase::Succeeded | VolumeBackupPhase::Failed => Ok(Action::await_change()),
        VolumeBackupPhase::Running => run.resume().await,
        VolumeBackupPhase::Pending => run.start().await,
    }
}

/// One backup in progress: the object, and the status as this controller last wrote it.
pub(crate) struct Run {
    pub backup: VolumeBackup,
    pub api: Api<VolumeBackup>,
    pub ctx: Arc<Context>,
    pub state: VolumeBackupStatus,
    /// When this controller ran the first pre-hook (for a precise frozenMilliseconds).
    frozen_clock: Option<std::time::Instant>,
    /// Fires when the object is deleted (or the controller stops); the steps after the thaw
    /// stop on it.
    cancel: RunGuard,
}

impl Run {
    fn namespace(&self) -> String {
        self.backup.namespace().unwrap_or_default()
    }

    pub(crate) async fn save(&self) -> Result<()> {
        status::patch(&self.api, &self.backup, &self.state).await?;
        Ok(())
    }

    /// Resolves the target and the copy settings, then runs every step.
    async fn start(mut self) -> Result<Action> {
        let namespace = self.namespace();
        let prepared = async {
            let targets = targets::resolve(&self.ctx.client, &namespace, &self.backup.spec).await?;
            let plan = match &self.backup.spec.copy {
                Some(spec) => Some(CopyPlan::prepare(&self.ctx, &self.backup, spec, self.ctx.now()).await?),
                None => None,
            };
            Ok::<_, Error>((targets, plan))
        }
        .await;
        let (targets, plan) = match prepared {
            Ok(prepared) => prepared,
            Err(error) if error.awaits_change() => {
                self.fail(&error, None).await?;
                return Ok(Action::await_change());
            }
            Err(error) => {
                let (generation, now) = (self.generation(), self.ctx.now());
                step::waiting(&mut self.state, &error, generation, now);
                self.save().await?;
                self.ctx.warning(&self.backup, error.reason(), error.to_string()).await;
                return Err(error);
            }
        };
        self.state.pods = targets.pods;
        self.state.volumes = targets.claims.iter().map(step::volume_of).collect();
        self.state.volume_count = Some(self.state.volumes.len() as u32);
        let (generation, now) = (self.generation(), self.ctx.now());
        step::started(&mut self.state, generation, now);
        self.save().await?;
        let message = format!(
            "backing up {} PVC(s) ({}), freezing {} Pod(s)",
            self.state.volumes.len(),
            self.state
                .volumes
                .iter()
                .map(|v| v.pvc.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            self.state.pods.iter().filter(|p| p.pre_hook.is_some()).count()
        );
        self.ctx.normal(&self.backup, "BackupStarted", message).await;
        let started = std::time::Instant::now();
        let shutdown = self.ctx.shutdown.clone();
        let outcome = tokio::select! {
            outcome = self.snapshot_and_copy(plan) => outcome,
            _ = shutdown.cancelled() => Err(Error::permanent("Interrupted", "the controller stopped during the backup")),
        };
        self.finish(outcome, started).await
    }

    /// A backup found Running: the controller stopped during it. Thaw first; then resume after
    /// the cut, or fail before it.
    async fn resume(mut self) -> Result<Action> {
        let frozen = step::may_be_frozen(&self.state);
        if frozen {
            self.thaw("after a controller restart").await?;
        }
        if !step::is_true(&self.state, Step::SnapshotsCreated) {
            let error = Error::permanent(
                "Interrupted",
                "the controller restarted before every snapshot was cut; the application was thawed and the snapshots taken so far were deleted: create a new VolumeBackup to retry",
            );
            self.fail(&error, Some(Step::SnapshotsCreated)).await?;
            return Ok(Action::await_change());
        }
        self.ctx
            .normal(
                &self.backup,
                "BackupResumed",
                "resuming after a controller restart: every snapshot was cut",
            )
            .await;
        let started = std::time::Instant::now();
        let plan = match &self.backup.spec.copy {
            Some(spec) => {
                let began = self.state.start_time.as_ref().map(from_time).unwrap_or_else(Utc::now);
                Some(CopyPlan::prepare(&self.ctx, &self.backup, spec, began).await)
            }
            None => None,
        };
        let shutdown = self.ctx.shutdown.clone();
        let outcome = match plan.transpose() {
            Err(error) => Err(error),
            Ok(plan) => tokio::select! {
                outcome = self.after_cut(plan) => outcome,
                _ = shutdown.cancelled() => Err(Error::permanent("Interrupted", "the controller stopped during the backup")),
            },
        };
        self.finish(outcome, started).await
    }

    /// Every step from the freeze on. A failure before the thaw thaws before returning.
    async fn snapshot_and_copy(&mut self, plan: Option<CopyPlan>) -> Result<()> {
        let max_freeze = self.backup.spec.max_freeze();
        let frozen_window = tokio::time::timeout(max_freeze, self.freeze_and_cut()).await;
        let cut = match frozen_window {
            Ok(result) => result,
            Err(_) => Err(Error::permanent(
                "FreezeTimeout",
                format!(
                    "the snapshots were not all cut within maxFreezeSeconds ({}s) of the freeze",
                    max_freeze.as_secs()
                ),
            )),
        };
        let thawed = self.thaw("").await;
        cut?;
        thawed?;
        self.after_cut(plan).await
    }

    /// Pre-hooks, then one snapshot per claim, waited for until each has its cut point.
    async fn freeze_and_cut(&mut self) -> Result<()> {
        let (client, namespace) = (self.ctx.client.clone(), self.namespace());
        let generation = self.generation();
        self.state.frozen_at = Some(to_time(self.ctx.now()));
        self.frozen_clock = Some(std::time::Instant::now());
        step::set(
            &mut self.state,
            Step::Frozen,
            true,
            "Freezing",
            "running the pre-hooks",
            generation,
            self.ctx.now(),
        );
        // Written before the first hook runs: a controller that restarts from here thaws.
        self.save().await?;
        let timeout = self.backup.spec.hook_timeout();
        let frozen = hooks::freeze(&client, &namespace, &mut self.state.pods, timeout).await;
        self.end_step(Step::Frozen, frozen, |state| {
            let hooked = state.pods.iter().filter(|p| p.pre_hook.is_some()).count();
            format!("ran the pre-hooks of {hooked} Pod(s)")
        })
        .await?;

        let created = async {
            snapshots::create(&client, &self.backup, &mut self.state.volumes).await?;
            self.save().await?;
            snapshots::wait_cut(&client, &namespace, &mut self.state.volumes).await
        }
        .await;
        self.end_step(Step::SnapshotsCreated, created, |state| {
            format!("cut {} VolumeSnapshot(s)", state.volumes.len())
        })
        .await
    }

    /// Records the end of step `which`. A failed `outcome` sets its condition False with the
    /// error and returns the error (the caller saves the status with the backup's failure);
    /// else the condition goes True with the message `done` makes, is saved, and an Event
    /// named after the step says so.
    async fn end_step(
        &mut self,
        which: Step,
        outcome: Result<()>,
        done: impl FnOnce(&VolumeBackupStatus) -> String,
    ) -> Result<()> {
        let generation = self.generation();
        if let Err(error) = outcome {
            step::step_failed(&mut self.state, which, &error, generation, self.ctx.now());
            return Err(error);
        }
        let message = done(&self.state);
        step::set(
            &mut self.state,
            which,
            true,
            which.name(),
            &message,
            generation,
            self.ctx.now(),
        );
        self.save().await?;
        self.ctx.normal(&self.backup, which.name(), message).await;
        Ok(())
    }

    /// Runs the post-hooks of every Pod not yet thawed and records it; `why` is added to the
    /// Event. A failed post-hook is an error (the application may still be frozen).
    async fn thaw(&mut self, why: &str) -> Result<()> {
        let (client, namespace) = (self.ctx.client.clone(), self.namespace());
        let generation = self.generation();
        let timeout = self.backup.spec.hook_timeout();
        let failures = hooks::thaw(&client, &namespace, &mut self.state.pods, timeout).await;
        let now = self.ctx.now();
        self.state.thawed_at = Some(to_time(now));
        if let Some(frozen) = self.frozen_clock.take() {
            self.state.frozen_milliseconds = Some(frozen.elapsed().as_millis() as u64);
        } else if let Some(at) = &self.state.frozen_at {
            self.state.frozen_milliseconds = Some((now - from_time(at)).num_milliseconds().max(0) as u64);
        }
        if !failures.is_empty() {
            let message = failures.join("; ");
            step::set(
                &mut self.state,
                Step::Thawed,
                false,
                "PostHookFailed",
                &message,
                generation,
                now,
            );
            self.save().await?;
            self.ctx.warning(&self.backup, "ThawFailed", message.clone()).await;
            return Err(Error::permanent("ThawFailed", message));
        }
        let hooked = self.state.pods.iter().filter(|p| p.post_hook.is_some()).count();
        let mut message = format!("ran the post-hooks of {hooked} Pod(s)");
        if !why.is_empty() {
            message = format!("{message} {why}");
        }
        if step::is_true(&self.state, Step::Frozen) {
            step::set(
                &mut self.state,
                Step::Frozen,
                false,
                "Thawed",
                &message,
                generation,
                now,
            );
        }
        step::set(&mut self.state, Step::Thawed, true, "Thawed", &message, generation, now);
        self.save().await?;
        self.ctx.normal(&self.backup, "Thawed", message).await;
        Ok(())
    }

    /// After the cut: wait until the snapshots are ready, then copy them.
    async fn after_cut(&mut self, plan: Option<CopyPlan>) -> Result<()> {
        let (client, namespace) = (self.ctx.client.clone(), self.namespace());
        let generation = self.generation();
        let ready = tokio::select! {
            ready = tokio::time::timeout(
                READY_TIMEOUT,
                snapshots::wait_ready(&client, &namespace, &mut self.state.volumes),
            ) => ready.unwrap_or_else(|_| {
                Err(Error::permanent(
                    "SnapshotsNotReady",
                    format!("the snapshots were not ready to use after {}s", READY_TIMEOUT.as_secs()),
                ))
            }),
            () = self.cancel.cancelled() => return Err(cancelled_error()),
        };
        self.end_step(Step::SnapshotsReady, ready, |state| {
            format!("{} VolumeSnapshot(s) ready to use", state.volumes.len())
        })
        .await?;
        let Some(plan) = plan else {
            return Ok(());
        };
        for index in 0..self.state.volumes.len() {
            if self.state.volumes[index].artifact.is_some() {
                continue;
            }
            let volume = self.state.volumes[index].clone();
            let copied = copy::copy_volume(&client, &self.backup, &plan, index, &volume, &self.cancel).await;
            let artifact = match copied {
                Ok(artifact) => artifact,
                Err(_) if self.cancel.stop() == Some(Stop::Deleted) => return Err(cancelled_error()),
                Err(error) => {
                    let message = format!("copying PVC {}: {error}", volume.pvc);
                    step::set(
                        &mut self.state,
                        Step::Copied,
                        false,
                        error.reason(),
                        &message,
                        generation,
                        self.ctx.now(),
                    );
                    return Err(Error::permanent(error.reason(), message));
                }
            };
            let message = format!(
                "copied PVC {} ({} stored) to {}",
                volume.pvc,
                stowage_core::human_bytes(artifact.stored_bytes),
                artifact.path
            );
            self.state.volumes[index].artifact = Some(ArtifactStatus::new(plan.storage.name.clone(), artifact));
            let stored: u64 = self
                .state
                .volumes
                .iter()
                .filter_map(|v| v.artifact.as_ref())
                .map(|a| a.artifact.stored_bytes)
                .sum();
            self.state.copied_size = Some(stowage_core::human_bytes(stored));
            step::set(
                &mut self.state,
                Step::Copied,
                false,
                "Copying",
                &message,
                generation,
                self.ctx.now(),
            );
            self.save().await?;
            self.ctx.normal(&self.backup, "Copied", message).await;
        }
        let message = format!(
            "copied {} volume(s) to storage {}",
            self.state.volumes.len(),
            plan.storage.name
        );
        step::set(
            &mut self.state,
            Step::Copied,
            true,
            "Copied",
            message,
            generation,
            self.ctx.now(),
        );
        Ok(())
    }

    /// Records the outcome. A failure before every snapshot was cut deletes the ones taken.
    async fn finish(mut self, outcome: Result<()>, started: std::time::Instant) -> Result<Action> {
        let seconds = started.elapsed().as_secs_f64();
        match outcome {
            Ok(()) => {
                let message = summary(&self.state.volumes);
                let (generation, now) = (self.generation(), self.ctx.now());
                step::succeeded(&mut self.state, &message, generation, now);
                status::patch_final(&self.api, &self.backup, &self.state).await?;
                self.ctx.metrics.run_finished(KIND, "Backup", "Succeeded", seconds);
                self.ctx.normal(&self.backup, "BackupSucceeded", message).await;
            }
            Err(error) => {
                // A stop during the freeze must not leave the application frozen.
                if step::may_be_frozen(&self.state) {
                    let _ = self.thaw("after the backup stopped").await;
                }
                self.ctx.metrics.run_finished(KIND, "Backup", error.reason(), seconds);
                self.fail(&error, None).await?;
            }
        }
        Ok(Action::await_change())
    }

    /// Marks the backup Failed with `error` (and `failed_step` False), deleting an incomplete
    /// set of snapshots.
    async fn fail(&mut self, error: &Error, failed_step: Option<Step>) -> Result<()> {
        let now = self.ctx.now();
        let generation = self.generation();
        if let Some(failed_step) = failed_step {
            step::step_failed(&mut self.state, failed_step, error, generation, now);
        }
        if !step::is_true(&self.state, Step::SnapshotsCreated) {
            let namespace = self.namespace();
            if let Err(cleanup) = backup_cleanup::delete_snapshots(&self.ctx.client, &namespace, &self.backup).await {
                tracing::warn!(error = %cleanup, "deleting the snapshots of a failed backup");
            }
            for volume in &mut self.state.volumes {
                volume.volume_snapshot = None;
            }
        }
        step::failed(&mut self.state, error, generation, now);
        // Without a finalizer the object may be gone already: the Event is then the record.
        match status::patch_final(&self.api, &self.backup, &self.state).await {
            Err(error) if error.is_not_found() => {}
            written => {
                written?;
            }
        }
        let reason = error.reason();
        if reason == CANCELLED {
            self.ctx
                .normal(&self.backup, "BackupCancelled", error.to_string())
                .await;
            return Ok(());
        }
        self.ctx.warning(&self.backup, reason, error.to_string()).await;
        if reason != "BackupFailed" {
            self.ctx
                .warning(&self.backup, "BackupFailed", format!("{reason}: {error}"))
                .await;
        }
        Ok(())
    }

    fn generation(&self) -> Option<i64> {
        self.backup.metadata.generation
    }
}

fn cancelled_error() -> Error {
    Error::permanent(
        CANCELLED,
        "the VolumeBackup was deleted during its backup (after the thaw): the wait for its snapshots and its copies were stopped, an unfinished copy's upload aborted; retainPolicy decides what happens to the snapshots",
    )
}

/// "3 snapshot(s) ready: data-0 → vb-data-0, …"
fn summary(volumes: &[VolumeStatus]) -> String {
    let list: Vec<String> = volumes
        .iter()
        .map(|v| format!("{} → {}", v.pvc, v.volume_snapshot.as_deref().unwrap_or("?")))
        .collect();
    format!("{} snapshot(s) ready: {}", volumes.len(), list.join(", "))
}
