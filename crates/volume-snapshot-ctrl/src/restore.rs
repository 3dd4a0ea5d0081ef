//! VolumeRestore: new claims from a VolumeBackup's snapshots or copies, and the application
//! moved onto them.
//!
//! The safety checks come first ([`crate::restore_checks`]); when one fails, the restore is
//! refused and nothing has changed. Then, step by step, each recorded in status as a condition
//! and an Event: the former replicas are recorded and the workload scaled to zero (ScaledDown,
//! once its Pods are gone), the claims created and filled (PVCsCreated), the workload pointed
//! at them (Repointed), scaled back and awaited (ScaledUp), and optionally the old claims
//! deleted (OldPVCsDeleted).
//!
//! Every step is idempotent, so a controller that restarts mid-restore runs the steps again
//! and finishes. A failure after the scale-down rolls back: the workload goes back to its old
//! claims and replicas, and the new claims are deleted (RolledBack). A rollback interrupted by a
//! restart is finished first. Deleting a running restore stops its waits and takes the same
//! rollback ([`crate::restore_cancel`]).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use kube::runtime::controller::Action;
use kube::runtime::{Controller, watcher};
use stowage_api::{
    ApplicationKind, RestoreSource, RestoredVolume, VolumeRestore, VolumeRestorePhase, VolumeRestoreStatus,
};
use stowage_operator::cancel::{self, CANCELLED, Registry, RunGuard, Stop};
use stowage_operator::conditions::{self, to_time};
use stowage_operator::{Context, Error, Result, status};

use crate::restore_cancel::{self as cancelling, until_cancelled};
use crate::restore_checks::{self as checks, Plan, PlannedVolume};
use crate::restore_claims as claims;
use crate::restore_fill::{self as fill, Fill};
use crate::restore_workload::{self as workload, TargetWorkload};

const KIND: &str = "VolumeRestore";
/// How often a restore waiting for its backup to finish looks again.
const BACKUP_POLL: Duration = Duration::from_secs(10);
/// How long the workload's Pods may take to go after the scale-down.
const PODS_GONE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a new claim may take to be bound (a snapshot restore copies the data first).
const BOUND_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the workload may take to be ready again.
const READY_TIMEOUT: Duration = Duration::from_secs(600);

/// The steps, as condition types; a True condition marks a step done.
mod step {
    pub const CHECKED: &str = "Checked";
    pub const SCALED_DOWN: &str = "ScaledDown";
    pub const PVCS_CREATED: &str = "PVCsCreated";
    pub const REPOINTED: &str = "Repointed";
    pub const SCALED_UP: &str = "ScaledUp";
    pub const OLD_PVCS_DELETED: &str = "OldPVCsDeleted";
    /// True while a rollback is under way (so a restart finishes it), then False.
    pub const ROLLING_BACK: &str = "RollingBack";
    pub const READY: &str = "Ready";
}

/// Runs the VolumeRestore controller until `ctx.shutdown` is cancelled. A restore is one long
/// reconcile that waits for the workload and claims itself, so no other watches are needed;
/// the one watch also tells a running restore that its object was deleted.
pub async fn run(ctx: Arc<Context>) {
    let (stream, store, runs) = cancel::watch(ctx.watched::<VolumeRestore>(), watcher::Config::default());
    let restores = Controller::for_stream(stream, store);
    stowage_operator::run_controller(restores, ctx.clone(), ctx.shutdown.clone(), move |restore, ctx| {
        reconcile(restore, ctx, runs.clone())
    })
    .await;
}

/// Reconciles one VolumeRestore. `runs` cancels a running restore whose object is deleted.
pub async fn reconcile(
    restore: Arc<VolumeRestore>,
    ctx: Arc<Context>,
    runs: Registry<VolumeRestore>,
) -> Result<Action> {
    if restore.status.as_ref().is_some_and(|s| s.phase.is_final()) {
        return Ok(Action::await_change());
    }
    let api: Api<VolumeRestore> = Api::namespaced(ctx.client.clone(), &restore.namespace().unwrap_or_default());
    // The cache may lag behind our own status writes: act on the object as it is now.
    let Some(restore) = status::latest(&api, restore.as_ref()).await? else {
        return Ok(Action::await_change());
    };
    // Registered before anything changes, so a deletion at any moment from here on cancels it.
    let cancel = runs.register(&restore, &ctx.shutdown);
    let run = Run {
        state: restore.status.clone().unwrap_or_default(),
        restore,
        api,
        ctx,
        cancel,
        original_statefulset: None,
    };
    match run.state.phase {
        VolumeRestorePhase::Succeeded | VolumeRestorePhase::Failed => Ok(Action::await_change()),
        VolumeRestorePhase::Running if conditions::is_true(&run.state.conditions, step::ROLLING_BACK) => {
            let reason = conditions::find(&run.state.conditions, step::ROLLING_BACK)
                .map(|c| c.message.clone())
                .unwrap_or_default();
            let error = Error::permanent("RestoreFailed", reason);
            run.roll_back(error).await
        }
        phase => run.go(phase == VolumeRestorePhase::Running).await,
    }
}

/// One reconcile of one restore.
struct Run {
    restore: VolumeRestore,
    api: Api<VolumeRestore>,
    ctx: Arc<Context>,
    state: VolumeRestoreStatus,
    /// Fires when the object is deleted (or the controller stops); every wait stops on it.
    cancel: RunGuard,
    /// The StatefulSet as it was before its re-point, for the rollback of a deleted restore
    /// (whose saved copy the garbage collector deletes with it).
    original_statefulset: Option<StatefulSet>,
}

impl Run {
    fn name(&self) -> String {
        self.restore.name_any()
    }

    fn namespace(&self) -> String {
        self.restore.namespace().unwrap_or_default()
    }

    /// Writes the status. Without a finalizer a deleted restore is gone (perhaps created again)
    /// while its run still rolls back: that must go on, and its Events are then the record.
    async fn save(&self) -> Result<()> {
        match status::patch(&self.api, &self.restore, &self.state).await {
            Err(error) if error.is_not_found() => Ok(()),
            written => written.map(drop),
        }
    }

    /// Marks `type_` done (or not) with `reason` and `message`.
    fn set(&mut self, type_: &str, done: bool, reason: &str, message: impl Into<String>) {
        let generation = self.restore.metadata.generation;
        conditions::set(
            &mut self.state.conditions,
            type_,
            done,
            reason,
            message,
            generation,
            self.ctx.now(),
        );
    }

    /// Records a finished step in status and as an Event.
    async fn done(&mut self, type_: &str, message: String) -> Result<()> {
        self.set(type_, true, type_, message.clone());
        self.save().await?;
        self.ctx.normal(&self.restore, type_, message).await;
        Ok(())
    }

    /// Checks, then starts (`resuming`: continues) the restore.
    async fn go(mut self, resuming: bool) -> Result<Action> {
        let plan = match checks::check(&self.restore, resuming, &self.ctx).await {
            Ok(Ok(plan)) => plan,
            Ok(Err(checks::BackupNotFinished)) => {
                let message = format!(
                    "waiting for VolumeBackup '{}' to finish",
                    self.restore.spec.volume_backup_name
                );
                self.set(step::READY, false, "WaitingForBackup", message);
                self.save().await?;
                return Ok(Action::requeue(BACKUP_POLL));
            }
            Err(error) if transient(&error) => return Err(error),
            // A BackupStorage or Secret the user may still create: wait for it (with backoff)
            // rather than fail a restore that has not changed anything yet.
            Err(error @ Error::MissingReference { .. }) if !resuming => {
                self.set(step::READY, false, error.reason(), error.to_string());
                self.save().await?;
                self.ctx.warning(&self.restore, error.reason(), error.to_string()).await;
                return Err(error);
            }
            Err(error) if resuming => return self.roll_back(error).await,
            Err(error) => return self.refuse(error).await,
        };
        if !resuming {
            self.start(&plan).await?;
        }
        let started = std::time::Instant::now();
        let shutdown = self.ctx.shutdown.clone();
        let outcome = tokio::select! {
            outcome = self.steps(&plan) => outcome,
            // Stop where we are, even between waits: every step so far is in status.
            _ = shutdown.cancelled() => Err(cancelling::interrupted()),
        };
        let stop = match &outcome {
            Ok(()) => None,
            Err(_) => self.cancel.stop_after_failure(&self.api, &self.restore).await,
        };
        match (outcome, stop) {
            // Done before the deletion reached a wait: the restore stands.
            (Ok(()), _) => {
                self.succeed(&plan, started.elapsed()).await?;
                Ok(Action::await_change())
            }
            // The next controller resumes it.
            (Err(_), Some(Stop::Shutdown)) => Err(cancelling::interrupted()),
            (Err(error), Some(Stop::Deleted)) => self.roll_back(cancelling::deleted(&error)).await,
            (Err(error), None) if transient(&error) => Err(error),
            (Err(error), None) => self.roll_back(error).await,
        }
    }

    /// Records the plan: Running, the new claims, Checked.
    async fn start(&mut self, plan: &Plan) -> Result<()> {
        self.state.phase = VolumeRestorePhase::Running;
        self.state.start_time = Some(to_time(self.ctx.now()));
        self.state.observed_generation = self.restore.metadata.generation;
        self.state.volumes = plan
            .volumes
            .iter()
            .map(|v| RestoredVolume {
                source_pvc: v.source_pvc.clone(),
                pvc: v.pvc.clone(),
                volume_snapshot: v.snapshot.clone(),
                artifact_path: v.artifact_path.clone(),
                restored: false,
            })
            .collect();
        let what = checks::describe(plan);
        self.set(
            step::CHECKED,
            true,
            "Checked",
            format!("the safety checks passed: {what}"),
        );
        self.set(step::READY, false, "Running", "the restore is in progress");
        self.save().await?;
        self.ctx.normal(&self.restore, "RestoreStarted", what).await;
        Ok(())
    }

    /// A safety check failed before anything changed.
    async fn refuse(mut self, error: Error) -> Result<Action> {
        let message = error.to_string();
        self.set(step::CHECKED, false, error.reason(), message.clone());
        self.finish_failed(&error, format!("refused: {message}; nothing was changed"))
            .await?;
        self.ctx
            .warning(
                &self.restore,
                "RestoreRefused",
                format!("{}: {message}", error.reason()),
            )
            .await;
        Ok(Action::await_change())
    }

    async fn steps(&mut self, plan: &Plan) -> Result<()> {
        let workload = plan.target.as_ref().map(|target| TargetWorkload {
            client: self.ctx.client.clone(),
            namespace: plan.namespace.clone(),
            kind: target.kind,
            name: target.name.clone(),
        });
        if let Some(workload) = &workload
            && !conditions::is_true(&self.state.conditions, step::SCALED_DOWN)
        {
            if self.state.previous_replicas.is_none() {
                let replicas = match workload.get_opt().await? {
                    Some(current) => current.replicas(),
                    None => {
                        return Err(Error::permanent(
                            "TargetNotFound",
                            format!("{} '{}' is gone", workload.kind, workload.name),
                        ));
                    }
                };
                // Recorded before the scale-down, so that a restart can scale back.
                self.state.previous_replicas = Some(replicas);
                self.save().await?;
            }
            workload.scale(0).await?;
            until_cancelled(&self.cancel, workload.wait_pods_gone(PODS_GONE_TIMEOUT)).await?;
            let message = format!(
                "{} '{}' scaled from {} to 0 replicas; its Pods are gone",
                workload.kind,
                workload.name,
                self.state.previous_replicas.unwrap_or_default()
            );
            self.done(step::SCALED_DOWN, message).await?;
        }

        if !conditions::is_true(&self.state.conditions, step::PVCS_CREATED) {
            for (index, volume) in plan.volumes.iter().enumerate() {
                if self.state.volumes.get(index).is_some_and(|v| v.restored) {
                    continue;
                }
                self.create_claim(plan, volume, index).await?;
                if let Some(recorded) = self.state.volumes.get_mut(index) {
                    recorded.restored = true;
                }
                self.save().await?;
            }
            let names: Vec<&str> = plan.volumes.iter().map(|v| v.pvc.as_str()).collect();
            let from = match plan.source {
                RestoreSource::Snapshot => "the snapshots",
                RestoreSource::Copy => "the copies",
            };
            self.done(
                step::PVCS_CREATED,
                format!(
                    "created {} from {from} of VolumeBackup '{}'",
                    names.join(", "),
                    plan.backup
                ),
            )
            .await?;
        }

        let (Some(workload), Some(target)) = (&workload, &plan.target) else {
            return Ok(());
        };
        if !conditions::is_true(&self.state.conditions, step::REPOINTED) {
            match target.kind {
                ApplicationKind::Deployment => workload.repoint_deployment(&target.claims).await?,
                ApplicationKind::StatefulSet => {
                    let saved = checks::saved_statefulset_name(&self.name());
                    let owner = checks::owner(&self.restore);
                    let original = workload
                        .recreate_statefulset(&target.claim_templates, true, &saved, owner, None)
                        .await?;
                    self.original_statefulset = Some(original);
                }
            }
            let moves: Vec<String> = target
                .claims
                .iter()
                .map(|(old, new)| format!("{new} (was {old})"))
                .collect();
            self.done(
                step::REPOINTED,
                format!("{} '{}' now mounts {}", target.kind, target.name, moves.join(", ")),
            )
            .await?;
        } else if target.kind == ApplicationKind::StatefulSet {
            // Resumed after the re-point: the original, for a rollback after a deletion.
            let saved = checks::saved_statefulset_name(&self.name());
            self.original_statefulset = workload::saved(&self.ctx.client, &plan.namespace, &saved).await?;
        }
        if !conditions::is_true(&self.state.conditions, step::SCALED_UP) {
            let replicas = self.state.previous_replicas.unwrap_or(1);
            workload.scale(replicas).await?;
            // A deletion while the workload starts on the restored claims rolls back too, as a
            // failure here does: until it runs ready, nothing shows the restored data works,
            // and the user who deleted the restore no longer wants it. Its old claims are
            // untouched until then (deleteOldPVCs comes after), so the application goes back
            // to a state known to run rather than being left on claims nobody vouched for.
            until_cancelled(&self.cancel, workload.wait_ready(replicas, READY_TIMEOUT)).await?;
            self.done(
                step::SCALED_UP,
                format!(
                    "{} '{}' runs {replicas} ready replica(s) on the restored volumes",
                    target.kind, target.name
                ),
            )
            .await?;
        }
        if self.restore.spec.delete_old_pvcs && !conditions::is_true(&self.state.conditions, step::OLD_PVCS_DELETED) {
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(self.ctx.client.clone(), &plan.namespace);
            for old in target.claims.keys() {
                match pvcs.delete(old, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(error) => return Err(error.into()),
                }
            }
            let old: Vec<&str> = target.claims.keys().map(String::as_str).collect();
            self.done(
                step::OLD_PVCS_DELETED,
                format!("deleted the old PVCs {}", old.join(", ")),
            )
            .await?;
        }
        Ok(())
    }

    /// Creates one claim (unless this restore already did) and waits until it holds the data.
    async fn create_claim(&self, plan: &Plan, volume: &PlannedVolume, index: usize) -> Result<()> {
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(self.ctx.client.clone(), &plan.namespace);
        claims::create(&pvcs, volume, &plan.backup, &self.name()).await?;
        until_cancelled(&self.cancel, claims::wait_bound(&pvcs, &volume.pvc, BOUND_TIMEOUT)).await?;
        if let (RestoreSource::Copy, Some(copies), Some(path)) = (plan.source, &plan.copies, &volume.artifact_path) {
            let fill = Fill {
                storage: &copies.storage,
                identities: copies.identities.clone(),
                path,
                image: &copies.image,
                pvc: &volume.pvc,
                index,
            };
            fill::fill(&self.restore, fill, &self.ctx, &self.cancel).await?;
        }
        Ok(())
    }

    async fn succeed(&mut self, plan: &Plan, took: Duration) -> Result<()> {
        let now = self.ctx.now();
        self.state.phase = VolumeRestorePhase::Succeeded;
        self.state.completion_time = Some(to_time(now));
        let message = match &plan.target {
            Some(target) => format!(
                "restored {}; {} '{}' runs on them",
                volume_list(&self.state.volumes),
                target.kind,
                target.name
            ),
            None => format!("restored {}", volume_list(&self.state.volumes)),
        };
        self.set(step::READY, true, "Succeeded", message.clone());
        self.save_final().await?;
        self.ctx
            .metrics
            .run_finished(KIND, "Restore", "Succeeded", took.as_secs_f64());
        self.ctx.normal(&self.restore, "RestoreSucceeded", message).await;
        self.forget_saved_statefulset().await;
        Ok(())
    }

    /// Puts the workload back on its old claims and replicas, deletes the new claims, and fails
    /// the restore with `error` (Cancelled: its object was deleted).
    async fn roll_back(mut self, error: Error) -> Result<Action> {
        let deleted = error.reason() == CANCELLED;
        if !conditions::is_true(&self.state.conditions, step::ROLLING_BACK) {
            let message = format!("{}: {error}", error.reason());
            self.set(step::ROLLING_BACK, true, error.reason(), error.to_string());
            match self.save().await {
                // Nothing would resume a deleted restore's rollback: it goes on regardless.
                Err(save_error) if deleted => tracing::warn!(%save_error, "recording the rollback"),
                saved => saved?,
            }
            self.ctx.warning(&self.restore, "RollingBack", message).await;
        }
        let mut undone = self.undo().await;
        // A deleted restore is never reconciled again: a busy API server is waited for here,
        // not by a later attempt, or the application could stay scaled to zero.
        let mut attempts = 1;
        while deleted && attempts < cancelling::ROLLBACK_ATTEMPTS && undone.as_ref().is_err_and(transient) {
            tokio::time::sleep(cancelling::ROLLBACK_RETRY).await;
            undone = self.undo().await;
            attempts += 1;
        }
        let outcome = match &undone {
            Ok(summary) => summary.clone(),
            Err(undo_error) if transient(undo_error) => {
                return Err(Error::transient("RollbackRetrying", undo_error.to_string()));
            }
            Err(undo_error) => format!("the rollback failed too, check the workload and claims by hand: {undo_error}"),
        };
        self.set(step::ROLLING_BACK, false, "RolledBack", outcome.clone());
        self.finish_failed(&error, format!("{error}; {outcome}")).await?;
        if deleted {
            let message = format!("{error}; {outcome}");
            self.ctx.normal(&self.restore, "RestoreCancelled", message).await;
        } else {
            let message = format!("{}: {error}; {outcome}", error.reason());
            self.ctx.warning(&self.restore, "RestoreFailed", message).await;
        }
        self.forget_saved_statefulset().await;
        Ok(Action::await_change())
    }

    /// The rollback itself; returns what it did.
    async fn undo(&self) -> Result<String> {
        let namespace = self.namespace();
        let mut done = Vec::new();
        let reference = self
            .restore
            .spec
            .target
            .as_ref()
            .and_then(|t| t.application_ref.as_ref());
        if let Some(reference) = reference {
            let workload = TargetWorkload {
                client: self.ctx.client.clone(),
                namespace: namespace.clone(),
                kind: reference.kind,
                name: reference.name.clone(),
            };
            match reference.kind {
                ApplicationKind::Deployment => {
                    let back = self
                        .state
                        .volumes
                        .iter()
                        .map(|v| (v.pvc.clone(), v.source_pvc.clone()))
                        .collect();
                    workload.repoint_deployment(&back).await?;
                }
                ApplicationKind::StatefulSet => {
                    let saved = checks::saved_statefulset_name(&self.name());
                    let known = self.original_statefulset.as_ref();
                    if known.is_some() || workload::saved(&self.ctx.client, &namespace, &saved).await?.is_some() {
                        let none = Default::default();
                        workload.recreate_statefulset(&none, false, &saved, None, known).await?;
                    }
                }
            }
            done.push(format!(
                "{} '{}' is back on its old claims",
                reference.kind, reference.name
            ));
        }
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(self.ctx.client.clone(), &namespace);
        let ours: Vec<String> = self.state.volumes.iter().map(|v| v.pvc.clone()).collect();
        let deleted = claims::delete_ours(&pvcs, &self.name(), &ours).await?;
        if !deleted.is_empty() {
            done.push(format!("deleted the new PVCs {}", deleted.join(", ")));
        }
        if let (Some(reference), Some(replicas)) = (reference, self.state.previous_replicas) {
            let workload = TargetWorkload {
                client: self.ctx.client.clone(),
                namespace,
                kind: reference.kind,
                name: reference.name.clone(),
            };
            if workload.get_opt().await?.is_some() {
                workload.scale(replicas).await?;
                match workload.wait_ready(replicas, READY_TIMEOUT).await {
                    Ok(()) => done.push(format!("scaled back to {replicas} ready replicas")),
                    Err(error) => done.push(format!("scaled back to {replicas} replicas, but {error}")),
                }
            }
        }
        if done.is_empty() {
            done.push("nothing had changed".into());
        }
        Ok(format!("rolled back: {}", done.join("; ")))
    }

    async fn finish_failed(&mut self, error: &Error, message: String) -> Result<()> {
        self.state.phase = VolumeRestorePhase::Failed;
        self.state.completion_time = Some(to_time(self.ctx.now()));
        self.state.observed_generation = self.restore.metadata.generation;
        self.set(step::READY, false, error.reason(), message);
        self.save_final().await?;
        self.ctx.metrics.run_finished(KIND, "Restore", error.reason(), 0.0);
        Ok(())
    }

    /// Writes the status that records the outcome; see [`Run::save`] for a deleted restore.
    async fn save_final(&self) -> Result<()> {
        match status::patch_final(&self.api, &self.restore, &self.state).await {
            Err(error) if error.is_not_found() => Ok(()),
            written => written.map(drop),
        }
    }

    /// The saved StatefulSet is no longer needed (it also goes with the restore).
    async fn forget_saved_statefulset(&self) {
        let configmaps: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), &self.namespace());
        let _ = configmaps
            .delete(&checks::saved_statefulset_name(&self.name()), &DeleteParams::default())
            .await;
    }
}

/// Errors a later attempt may not see (the API server busy or unreachable): the reconcile is
/// retried and resumes. Everything else fails the restore.
fn transient(error: &Error) -> bool {
    match error {
        Error::Kube(kube::Error::Api(status)) => status.code == 429 || status.code >= 500,
        Error::Kube(_) => true,
        Error::Failed { transient, .. } => *transient,
        _ => false,
    }
}

fn volume_list(volumes: &[RestoredVolume]) -> String {
    volumes
        .iter()
        .map(|v| format!("{} → {}", v.source_pvc, v.pvc))
        .collect::<Vec<_>>()
        .join(", ")
}
