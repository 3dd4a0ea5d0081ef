//! The reconciler. One EtcdBackup is one run, like a Job: it goes Pending → Running →
//! Succeeded or Failed and then stays as the catalog record. Transient failures (etcd or
//! storage unreachable, a Secret not there yet) are retried with backoff up to a limit;
//! mistakes in the spec fail at once and run again when the spec changes. With retainPolicy
//! Delete a finalizer makes deleting the object delete its data first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Api;
use kube::runtime::controller::Action;
use serde_json::json;
use stowage_api::etcd_backup::{EtcdBackupProgress, RetainPolicy};
use stowage_api::{ArtifactStatus, EtcdBackup, EtcdBackupPhase, EtcdBackupStatus};
use stowage_core::{catalog, human_bytes};
use stowage_operator::cancel::{CANCELLED, Registry, Stop};
use stowage_operator::conditions::{self, to_time};
use stowage_operator::finalizer;
use stowage_operator::{Error as KitError, resolve_storage};

use crate::backup::{self, BackupOutcome, KIND};
use crate::controller::EtcdContext;
use crate::inputs::{self, Prepared};

/// Makes deleting an EtcdBackup with retainPolicy Delete remove its data first.
pub const FINALIZER: &str = finalizer::DELETE_DATA;
/// The condition every EtcdBackup carries.
pub const READY: &str = "Ready";
/// How often a running backup writes its progress into status.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// Reconciles one EtcdBackup. `runs` cancels a running backup whose object is deleted.
pub async fn reconcile(
    backup: Arc<EtcdBackup>,
    ctx: Arc<EtcdContext>,
    runs: Registry<EtcdBackup>,
) -> Result<Action, KitError> {
    let name = backup
        .metadata
        .name
        .clone()
        .ok_or_else(|| KitError::InvalidSpec("an EtcdBackup without a name".into()))?;
    let api: Api<EtcdBackup> = Api::all(ctx.kit.client.clone());
    if backup.metadata.deletion_timestamp.is_some() {
        return finalize(&backup, &api, &ctx).await;
    }
    sync_finalizer(&backup, &api).await?;
    if backup
        .status
        .as_ref()
        .is_some_and(|s| s.phase == EtcdBackupPhase::Succeeded)
    {
        return Ok(Action::await_change());
    }
    let Some(backup) = stowage_operator::status::latest(&api, backup.as_ref()).await? else {
        return Ok(Action::await_change());
    };
    let status = backup.status.clone().unwrap_or_default();
    let changed_since = |status: &EtcdBackupStatus| status.observed_generation < backup.metadata.generation;
    match status.phase {
        EtcdBackupPhase::Succeeded => Ok(Action::await_change()),
        EtcdBackupPhase::Failed if !changed_since(&status) => Ok(Action::await_change()),
        _ => attempt(&backup, &name, &api, &ctx, status, &runs).await,
    }
}

/// One attempt: check the inputs, stream, record the outcome.
async fn attempt(
    backup: &EtcdBackup,
    name: &str,
    api: &Api<EtcdBackup>,
    ctx: &EtcdContext,
    mut status: EtcdBackupStatus,
    runs: &Registry<EtcdBackup>,
) -> Result<Action, KitError> {
    let kit = &ctx.kit;
    match status.phase {
        // Reconciles of one object never overlap, so a Running status found here was left by a
        // controller that stopped mid-stream. Its upload has no manifest and is ignored.
        EtcdBackupPhase::Running => {
            status.attempts = Some(status.attempts.unwrap_or(0) + 1);
            kit.warning(
                backup,
                "Interrupted",
                "the controller stopped during the backup; its partial upload has no manifest and is ignored",
            )
            .await;
            if status.attempts.unwrap_or(0) >= ctx.max_attempts {
                let error = KitError::transient("Interrupted", "the controller stopped during every attempt");
                return fail(backup, api, ctx, status, error, None).await;
            }
        }
        // The spec changed after a failure: start over.
        EtcdBackupPhase::Failed => status.attempts = None,
        EtcdBackupPhase::Pending | EtcdBackupPhase::Succeeded => {}
    }

    let now = kit.now();
    let Prepared { plan, target, storage } = match inputs::prepare(kit, backup, name, now).await {
        Ok(prepared) => prepared,
        Err(error) => return fail(backup, api, ctx, status, error, None).await,
    };
    let generation = backup.metadata.generation;
    // Registered before the run starts, so a deletion at any moment from here on cancels it.
    let cancel = runs.register(backup, &kit.shutdown);
    status.phase = EtcdBackupPhase::Running;
    status.start_time = Some(to_time(now));
    status.completion_time = None;
    status.progress = Some(EtcdBackupProgress::default());
    status.observed_generation = generation;
    let endpoints = target.endpoints.join(", ");
    let message = format!(
        "streaming a snapshot of {endpoints} to BackupStorage '{}'",
        storage.name
    );
    conditions::set(
        &mut status.conditions,
        READY,
        false,
        "Running",
        &message,
        generation,
        now,
    );
    // The progress reports start from the object as written, so each takes one request.
    let running = write_status(api, backup, &status).await?;
    kit.normal(backup, "BackupStarted", &message).await;

    let in_progress = kit.metrics.runs_in_progress.with_label_values(&[KIND, "Backup"]);
    in_progress.inc();
    let started = Instant::now();
    let progress = plan.progress.clone();
    let reporter = stowage_operator::status::report_progress(api.clone(), running, PROGRESS_INTERVAL, move || {
        json!({"progress": {
            "plaintextBytes": progress.plaintext.bytes(),
            "storedBytes": progress.stored.bytes(),
        }})
    });
    let result = backup::run(plan, &target, name, &cancel.token()).await;
    drop(reporter);
    in_progress.dec();
    let stop = match &result {
        Ok(_) => cancel.stop(),
        Err(_) => cancel.stop_after_failure(api, backup).await,
    };
    drop(cancel);
    let elapsed = started.elapsed();
    match (result, stop) {
        // A backup that committed before its deletion was seen keeps its artifact, and the
        // finalizer then does what its retainPolicy says.
        (Ok(outcome), _) => succeed(backup, name, api, ctx, status, &storage.name, outcome, elapsed).await,
        (Err(error), Some(Stop::Deleted)) => {
            // Failed on its own before the cancellation reached it: say how, too.
            let failure = (!matches!(error, crate::error::Error::Cancelled)).then(|| error.to_string());
            cancelled(backup, api, ctx, status, failure, elapsed).await
        }
        (Err(_), Some(Stop::Shutdown)) => {
            let error = KitError::transient(
                "Interrupted",
                "the controller stopped during the backup; its uploads were aborted, and the next controller runs it again",
            );
            fail(backup, api, ctx, status, error, Some(elapsed)).await
        }
        (Err(error), None) => fail(backup, api, ctx, status, error.into_kit(), Some(elapsed)).await,
    }
}

/// A backup stopped because its EtcdBackup was deleted: the status while the object still
/// exists (the finalizer holds it), an Event, then the finalizer's work. Nothing was stored,
/// so the deletion does not wait for a snapshot nobody wants.
async fn cancelled(
    backup: &EtcdBackup,
    api: &Api<EtcdBackup>,
    ctx: &EtcdContext,
    mut status: EtcdBackupStatus,
    failure: Option<String>,
    elapsed: Duration,
) -> Result<Action, KitError> {
    let kit = &ctx.kit;
    let now = kit.now();
    let message = match failure {
        None => "the EtcdBackup was deleted during its backup: the snapshot stream was stopped and its uploads aborted; nothing was stored".to_string(),
        Some(failure) => format!("the EtcdBackup was deleted during its backup, which had failed ({failure}); nothing was stored"),
    };
    status.phase = EtcdBackupPhase::Failed;
    status.progress = None;
    status.completion_time = Some(to_time(now));
    let generation = backup.metadata.generation;
    conditions::set(
        &mut status.conditions,
        READY,
        false,
        CANCELLED,
        &message,
        generation,
        now,
    );
    kit.metrics
        .run_finished(KIND, "Backup", CANCELLED, elapsed.as_secs_f64());
    // The status first, so whoever sees the Event reads the final phase. Without a finalizer
    // the object may be gone already, and the Event is the record.
    let current = match write_status(api, backup, &status).await {
        Ok(current) => Some(current),
        Err(error) if error.is_not_found() => None,
        Err(error) => return Err(error),
    };
    kit.normal(backup, "BackupCancelled", &message).await;
    match current {
        Some(current) if current.metadata.deletion_timestamp.is_some() => finalize(&current, api, ctx).await,
        _ => Ok(Action::await_change()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn succeed(
    backup: &EtcdBackup,
    name: &str,
    api: &Api<EtcdBackup>,
    ctx: &EtcdContext,
    mut status: EtcdBackupStatus,
    storage: &str,
    outcome: BackupOutcome,
    elapsed: Duration,
) -> Result<Action, KitError> {
    let kit = &ctx.kit;
    let now = kit.now();
    let snapshot = &outcome.snapshot;
    let message = format!(
        "snapshot of {} at revision {} ({} stored, {} from etcd {}) in BackupStorage '{storage}' at {}{}",
        outcome.member.endpoint,
        outcome.revision,
        human_bytes(snapshot.stored_bytes),
        human_bytes(snapshot.plaintext_bytes),
        outcome.member.version,
        snapshot.path,
        outcome
            .certs
            .as_ref()
            .map_or_else(String::new, |certs| format!("; certificates at {}", certs.path)),
    );
    status.phase = EtcdBackupPhase::Succeeded;
    status.progress = Some(EtcdBackupProgress {
        plaintext_bytes: snapshot.plaintext_bytes,
        stored_bytes: snapshot.stored_bytes,
    });
    status.artifact = Some(ArtifactStatus::new(storage, snapshot.clone()));
    status.certs_artifact = outcome.certs.clone().map(|certs| ArtifactStatus::new(storage, certs));
    status.revision = Some(outcome.revision);
    status.cluster_id = Some(outcome.member.cluster_id_hex());
    status.member_id = Some(outcome.member.member_id_hex());
    status.endpoint = Some(outcome.member.endpoint.clone());
    status.etcd_version = Some(outcome.member.version.clone());
    status.completion_time = Some(to_time(now));
    let generation = backup.metadata.generation;
    conditions::set(
        &mut status.conditions,
        READY,
        true,
        "BackupSucceeded",
        &message,
        generation,
        now,
    );
    write_status(api, backup, &status).await?;
    kit.normal(backup, "BackupSucceeded", &message).await;

    let schedule = inputs::schedule_of(backup, name);
    let seconds = elapsed.as_secs_f64();
    kit.metrics.backup_succeeded(KIND, "", &schedule, snapshot, seconds);
    let labels = [schedule.as_str()];
    let as_gauge = |bytes: u64| i64::try_from(bytes).unwrap_or(i64::MAX);
    ctx.metrics
        .snapshot_bytes
        .with_label_values(&labels)
        .set(as_gauge(snapshot.plaintext_bytes));
    ctx.metrics
        .snapshot_stored_bytes
        .with_label_values(&labels)
        .set(as_gauge(snapshot.stored_bytes));
    ctx.metrics
        .snapshot_revision
        .with_label_values(&labels)
        .set(outcome.revision);
    ctx.metrics
        .last_success
        .with_label_values(&labels)
        .set(now.timestamp() as f64);
    ctx.metrics.snapshot_duration.observe(seconds);
    Ok(Action::await_change())
}

/// Records a failed attempt. A user's mistake, or the last allowed attempt, fails the backup
/// for good (until the spec changes); anything else waits for the kit's backoff and retries.
async fn fail(
    backup: &EtcdBackup,
    api: &Api<EtcdBackup>,
    ctx: &EtcdContext,
    mut status: EtcdBackupStatus,
    error: KitError,
    elapsed: Option<Duration>,
) -> Result<Action, KitError> {
    let kit = &ctx.kit;
    let now = kit.now();
    let attempts = status.attempts.unwrap_or(0) + 1;
    let reason = error.reason();
    let message = error.to_string();
    let final_failure = error.awaits_change() || attempts >= ctx.max_attempts;
    let generation = backup.metadata.generation;
    status.attempts = Some(attempts);
    status.progress = None;
    status.observed_generation = generation;
    if final_failure {
        status.phase = EtcdBackupPhase::Failed;
        status.completion_time = Some(to_time(now));
        conditions::set(&mut status.conditions, READY, false, reason, &message, generation, now);
        write_status(api, backup, &status).await?;
        kit.warning(backup, "BackupFailed", format!("{reason}: {message}"))
            .await;
        let seconds = elapsed.map_or(0.0, |e| e.as_secs_f64());
        kit.metrics.run_finished(KIND, "Backup", reason, seconds);
        return Ok(Action::await_change());
    }
    status.phase = EtcdBackupPhase::Pending;
    let retrying = format!("{message} (attempt {attempts} of {}; retrying)", ctx.max_attempts);
    conditions::set(&mut status.conditions, READY, false, reason, &retrying, generation, now);
    write_status(api, backup, &status).await?;
    kit.warning(backup, reason, &retrying).await;
    Err(error)
}

/// Deletion: with retainPolicy Delete, the data goes first (manifest before payload, so an
/// interrupted delete leaves nothing that looks complete), then the finalizer.
async fn finalize(backup: &EtcdBackup, api: &Api<EtcdBackup>, ctx: &EtcdContext) -> Result<Action, KitError> {
    if !finalizer::has(backup, FINALIZER) {
        return Ok(Action::await_change());
    }
    let kit = &ctx.kit;
    let status = backup.status.clone().unwrap_or_default();
    let paths: Vec<String> = [status.certs_artifact, status.artifact]
        .into_iter()
        .flatten()
        .map(|artifact| artifact.artifact.path)
        .collect();
    if backup.spec.retain_policy == RetainPolicy::Delete && !paths.is_empty() {
        match resolve_storage(kit, &backup.spec.storage.name, None).await {
            Ok(storage) => {
                for path in &paths {
                    catalog::delete(storage.store.as_ref(), path).await?;
                }
                let message = format!("deleted {} from BackupStorage '{}'", paths.join(" and "), storage.name);
                kit.normal(backup, "DataDeleted", message).await;
            }
            Err(error) if error.reason() == "StorageNotFound" => {
                let message = format!("{error}; {} stays in storage", paths.join(" and "));
                kit.warning(backup, "DataNotDeleted", message).await;
            }
            Err(error) => return Err(error),
        }
    }
    finalizer::remove(api, backup, FINALIZER).await?;
    Ok(Action::await_change())
}

/// The finalizer is there exactly when retainPolicy is Delete.
async fn sync_finalizer(backup: &EtcdBackup, api: &Api<EtcdBackup>) -> Result<(), KitError> {
    if backup.spec.retain_policy == RetainPolicy::Delete {
        finalizer::add(api, backup, FINALIZER).await
    } else {
        finalizer::remove(api, backup, FINALIZER).await
    }
}

/// Writes the whole status of `backup` ([`stowage_operator::status::patch`]: never onto another
/// EtcdBackup of the same name): fields that are unset are removed (a merge patch leaves out
/// what it does not mention).
async fn write_status(
    api: &Api<EtcdBackup>,
    backup: &EtcdBackup,
    status: &EtcdBackupStatus,
) -> Result<EtcdBackup, KitError> {
    let mut value = serde_json::to_value(status).map_err(|e| KitError::transient("InternalError", e.to_string()))?;
    if let Some(fields) = value.as_object_mut() {
        for field in [
            "progress",
            "attempts",
            "artifact",
            "certsArtifact",
            "revision",
            "clusterId",
            "memberId",
            "endpoint",
            "etcdVersion",
            "startTime",
            "completionTime",
        ] {
            fields.entry(field).or_insert(serde_json::Value::Null);
        }
    }
    stowage_operator::status::patch(api, backup, &value).await
}
