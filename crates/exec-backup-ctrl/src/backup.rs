//! ExecBackup: validate, resolve the storage, run the backup command in a Pod, stream its
//! stdout through core, and record the artifact; delete the data with the object when
//! `retainPolicy: Delete`.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use stowage_api::{ArtifactStatus, ExecBackup, ExecPhase, ExecRunStatus, RetainPolicy};
use stowage_core::template::TemplateVars;
use stowage_core::{Artifact, BackupRequest, Compression, Progress, Recipients};
use stowage_operator::cancel::{CANCELLED, Registry, RunGuard, Stop};
use stowage_operator::podexec::{ExecOutcome, ExecPod, ExecPodParams, reason};
use stowage_operator::{Context, Error, ResolvedStorage, Result, resolve_storage, status};
use stowage_operator::{conditions, finalizer};
use tokio::time::Instant;

use crate::run::{self, FINALIZER};

const KIND: &str = "ExecBackup";

/// Everything a backup run needs, checked before its Pod is created.
struct Plan {
    storage: ResolvedStorage,
    key: String,
    recipients: Arc<Recipients>,
    compression: Compression,
    container: String,
    argv: Vec<String>,
    deadline: std::time::Duration,
    pod: ExecPodParams,
}

/// A failed run: the error, and the command's stderr when it got that far.
struct Failure {
    error: Error,
    stderr_tail: Option<String>,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure {
            error,
            stderr_tail: None,
        }
    }
}

pub async fn reconcile(backup: Arc<ExecBackup>, ctx: Arc<Context>, runs: Registry<ExecBackup>) -> Result<Action> {
    let namespace = backup.namespace().unwrap_or_default();
    let api: Api<ExecBackup> = Api::namespaced(ctx.client.clone(), &namespace);
    if backup.metadata.deletion_timestamp.is_some() {
        return deleted(&backup, &api, &ctx).await;
    }
    if backup.spec.retain_policy == RetainPolicy::Delete {
        finalizer::add(&api, backup.as_ref(), FINALIZER).await?;
    }
    if backup
        .status
        .as_ref()
        .is_some_and(|s| matches!(s.phase, ExecPhase::Succeeded | ExecPhase::Failed))
    {
        return Ok(Action::await_change());
    }
    let Some(backup) = status::latest(&api, backup.as_ref()).await?.map(Arc::new) else {
        return Ok(Action::await_change());
    };
    if backup.metadata.deletion_timestamp.is_some() {
        return deleted(&backup, &api, &ctx).await;
    }
    let mut state = backup.status.clone().unwrap_or_default();
    let generation = backup.metadata.generation;
    match state.phase {
        ExecPhase::Succeeded | ExecPhase::Failed => return Ok(Action::await_change()),
        ExecPhase::Running => return interrupted(&backup, &api, state, &ctx).await,
        ExecPhase::Pending => {}
    }
    let plan = match prepare(&backup, &ctx).await {
        Ok(plan) => plan,
        Err(error) if error.awaits_change() => {
            run::failed(&mut state, &error, generation, &ctx);
            status::patch(&api, backup.as_ref(), &state).await?;
            ctx.warning(backup.as_ref(), error.reason(), error.to_string()).await;
            return Ok(Action::await_change());
        }
        Err(error) => {
            run::waiting(&mut state, &error, generation, &ctx);
            status::patch(&api, backup.as_ref(), &state).await?;
            ctx.warning(backup.as_ref(), error.reason(), error.to_string()).await;
            return Err(error);
        }
    };

    // Registered before the run starts, so a deletion at any moment from here on cancels it.
    let cancel = runs.register(backup.as_ref(), &ctx.shutdown);
    run::started(&mut state, &plan.pod.name, generation, &ctx);
    // The progress reports start from the object as written, so each takes one request.
    let running = status::patch(&api, backup.as_ref(), &state).await?;
    ctx.normal(
        backup.as_ref(),
        "BackupStarted",
        format!("running the backup command in Pod {}", plan.pod.name),
    )
    .await;
    let started = std::time::Instant::now();
    let in_progress = ctx.metrics.runs_in_progress.with_label_values(&[KIND, "Backup"]);
    in_progress.inc();
    let storage_name = plan.storage.name.clone();
    let progress = Progress::default();
    let reporter = run::report_progress(api.clone(), &running, progress.plaintext.clone());
    let outcome = execute(&backup, &ctx, plan, progress, &cancel).await;
    // No progress write may race the final status or the finalizer's removal.
    drop(reporter);
    // A run that failed after it was cancelled failed because it was: say so. One that
    // committed its artifact first keeps it (and its retainPolicy decides what happens to it).
    let stop = match &outcome {
        Ok(_) => cancel.stop(),
        Err(_) => cancel.stop_after_failure(&api, backup.as_ref()).await,
    };
    let outcome = match (outcome, stop) {
        (Err(_), Some(Stop::Deleted)) => Err(Failure::from(cancelled_error())),
        (Err(_), Some(Stop::Shutdown)) => Err(Failure::from(Error::permanent(
            "Interrupted",
            "the controller stopped during the run; the upload was aborted and no artifact was recorded: create a new ExecBackup to retry",
        ))),
        (outcome, _) => outcome,
    };
    drop(cancel);
    in_progress.dec();
    let seconds = started.elapsed().as_secs_f64();
    let schedule = backup
        .labels()
        .get("stowage.io/schedule")
        .cloned()
        .unwrap_or_else(|| backup.name_any());
    match outcome {
        Ok(artifact) => {
            ctx.metrics
                .backup_succeeded(KIND, &namespace, &schedule, &artifact, seconds);
            let message = format!(
                "stored {} ({} of plaintext) at {}",
                stowage_core::human_bytes(artifact.stored_bytes),
                stowage_core::human_bytes(artifact.plaintext_bytes),
                artifact.path
            );
            record_artifact(&mut state, &artifact, restorable(&backup), generation, &ctx);
            state.bytes_transferred = Some(artifact.plaintext_bytes);
            state.artifact = Some(ArtifactStatus::new(storage_name, artifact));
            run::succeeded(&mut state, &message, generation, &ctx);
            run::write_final(&api, backup.as_ref(), &state).await?;
            ctx.normal(backup.as_ref(), "BackupSucceeded", message).await;
        }
        Err(failure) if failure.error.reason() == CANCELLED => {
            ctx.metrics.run_finished(KIND, "Backup", CANCELLED, seconds);
            run::failed(&mut state, &failure.error, generation, &ctx);
            return record_cancelled(&backup, &api, &state, &failure.error, &ctx).await;
        }
        Err(failure) => {
            ctx.metrics
                .run_finished(KIND, "Backup", failure.error.reason(), seconds);
            state.stderr_tail = failure.stderr_tail.filter(|tail| !tail.is_empty());
            run::failed(&mut state, &failure.error, generation, &ctx);
            run::write_final(&api, backup.as_ref(), &state).await?;
            ctx.warning(
                backup.as_ref(),
                "BackupFailed",
                format!("{}: {}", failure.error.reason(), failure.error),
            )
            .await;
        }
    }
    Ok(Action::await_change())
}

/// Checks the spec and resolves what it refers to. Errors that await a change fail the run;
/// the others (a missing BackupStorage or Secret) keep it Pending and are retried.
async fn prepare(backup: &ExecBackup, ctx: &Context) -> Result<Plan> {
    let spec = &backup.spec;
    let namespace = backup.namespace().unwrap_or_default();
    run::check_command(&spec.backup, "spec.backup")?;
    let pod_spec = run::pod_spec(&spec.template)?;
    let container = run::container(&spec.backup, &pod_spec)?;
    spec.compression.validate()?;
    let recipient_list = spec
        .encryption
        .as_ref()
        .map(|e| e.recipients.clone())
        .unwrap_or_default();
    let recipients = Arc::new(Recipients::parse(&recipient_list)?);
    let storage = resolve_storage(ctx, &spec.storage.name, Some(&namespace)).await?;
    let ext = stowage_core::layout::extension(spec.compression.extension(), !recipients.is_empty())
        .map_err(|error| Error::InvalidSpec(error.to_string()))?;
    let vars = TemplateVars {
        now: ctx.now(),
        name: backup.name_any(),
        namespace,
        kind: KIND.to_string(),
        schedule_name: backup.labels().get("stowage.io/schedule").cloned().unwrap_or_default(),
    };
    let key = storage.key_for(&vars, spec.storage.path.as_deref(), &ext)?;
    Ok(Plan {
        storage,
        key,
        recipients,
        compression: spec.compression.clone(),
        container,
        argv: spec.backup.argv(),
        deadline: run::deadline(&spec.backup),
        pod: run::pod_params(backup, "backup", &spec.template, pod_spec),
    })
}

/// Runs the command and streams its stdout into storage. Once `cancel` fires, each step stops
/// the way it would on a failure (the upload is aborted, the payload discarded), so nothing
/// partial is left, and the Pod is deleted by `ExecPod::run`.
async fn execute(
    backup: &ExecBackup,
    ctx: &Context,
    plan: Plan,
    progress: Progress,
    cancel: &RunGuard,
) -> Result<Artifact, Failure> {
    let mut request = BackupRequest::new(
        plan.storage.store.clone(),
        plan.key.clone(),
        KIND,
        format!(
            "ExecBackup {}/{}: {}",
            backup.namespace().unwrap_or_default(),
            backup.name_any(),
            plan.argv.first().map(String::as_str).unwrap_or("")
        ),
    );
    request.compression = plan.compression.clone();
    request.recipients = plan.recipients.clone();
    request.progress = progress;
    let (container, argv, deadline) = (plan.container.clone(), plan.argv.clone(), plan.deadline);
    ExecPod::run(&ctx.client, &plan.pod, |pod| async move {
        let deadline = Instant::now() + deadline;
        let (staged, finished) = pod
            .stream_stdout(&container, argv, run::POD_START_TIMEOUT, deadline, request, cancel)
            .await?;
        settle(staged, finished).await
    })
    .await
}

fn cancelled_error() -> Error {
    Error::permanent(
        CANCELLED,
        "the ExecBackup was deleted while it ran: the command was stopped with its Pod and the upload aborted; nothing was stored",
    )
}

/// Decides a backup's outcome from the data path's result and the command's. A passed deadline
/// comes first (it broke the stream), then the data path's own error, then a non-zero exit
/// code (the payload is discarded: no manifest), else the artifact is committed.
async fn settle(
    staged: stowage_core::Result<stowage_core::Staged>,
    finished: Result<ExecOutcome>,
) -> Result<Artifact, Failure> {
    let discard = |staged: stowage_core::Result<stowage_core::Staged>| async move {
        if let Ok(staged) = staged
            && let Err(error) = staged.discard().await
        {
            tracing::warn!(%error, "discarding an unfinished payload failed");
        }
    };
    match finished {
        Err(error) if error.reason() == reason::DEADLINE_EXCEEDED => {
            discard(staged).await;
            Err(error.into())
        }
        finished => {
            let stderr_tail = finished.as_ref().ok().map(|outcome| outcome.stderr_tail.clone());
            let fail = |error: Error| Failure {
                error,
                stderr_tail: stderr_tail.clone(),
            };
            let staged = match staged {
                Ok(staged) => staged,
                Err(error) => return Err(fail(error.into())),
            };
            let outcome = match finished {
                Ok(outcome) => outcome,
                Err(error) => {
                    discard(Ok(staged)).await;
                    return Err(fail(error));
                }
            };
            if let Err(error) = outcome.check("the backup command") {
                discard(Ok(staged)).await;
                return Err(fail(error));
            }
            staged.commit(BTreeMap::new()).await.map_err(|error| fail(error.into()))
        }
    }
}

/// Whether Stowage alone can restore the backup: Err((reason, message)) when not.
fn restorable(backup: &ExecBackup) -> Result<(), (String, String)> {
    if backup.spec.restore.is_none() {
        return Err((
            "NoRestoreCommand".into(),
            "spec.restore is not set: an ExecRestore must give its own restore command".into(),
        ));
    }
    match &backup.spec.encryption {
        Some(encryption) if !encryption.recipients.is_empty() && encryption.decryption_key.is_none() => Err((
            "NoDecryptionKey".into(),
            "the backup is encrypted and spec.encryption.decryptionKey is not set: a restore needs one of the recipients' private keys".into(),
        )),
        _ => Ok(()),
    }
}

/// The Restorable, Encrypted and Compressed conditions of a stored backup.
fn record_artifact(
    state: &mut ExecRunStatus,
    artifact: &Artifact,
    restorable: Result<(), (String, String)>,
    generation: Option<i64>,
    ctx: &Context,
) {
    let now = ctx.now();
    let conditions = &mut state.conditions;
    match restorable {
        Ok(()) => conditions::set(
            conditions,
            "Restorable",
            true,
            "Restorable",
            "an ExecRestore can restore this backup",
            generation,
            now,
        ),
        Err((reason, message)) => conditions::set(conditions, "Restorable", false, &reason, message, generation, now),
    };
    if artifact.encrypted() {
        let message = format!("age, to {}", artifact.recipients.join(", "));
        conditions::set(conditions, "Encrypted", true, "Encrypted", message, generation, now);
    } else {
        conditions::set(
            conditions,
            "Encrypted",
            false,
            "NotEncrypted",
            "stored in plaintext",
            generation,
            now,
        );
    }
    if artifact.compression.extension().is_empty() {
        conditions::set(
            conditions,
            "Compressed",
            false,
            "NotCompressed",
            "stored uncompressed",
            generation,
            now,
        );
    } else {
        let message = artifact.compression.describe();
        conditions::set(conditions, "Compressed", true, "Compressed", message, generation, now);
    }
}

/// A run cancelled because its object was deleted: an Event, the status while the object
/// still exists (a finalizer holds it), then the finalizer's work. Without a finalizer the
/// object is already gone and the Event is the record.
async fn record_cancelled(
    backup: &ExecBackup,
    api: &Api<ExecBackup>,
    state: &ExecRunStatus,
    error: &Error,
    ctx: &Context,
) -> Result<Action> {
    // The status first: whoever sees the Event can then read the final phase.
    let current = run::write_final(api, backup, state).await?;
    ctx.normal(backup, "BackupCancelled", error.to_string()).await;
    match current {
        Some(current) => delete_data(&current, api, ctx).await,
        None => Ok(Action::await_change()),
    }
}

/// An ExecBackup being deleted, with no run of it in flight in this controller. One still
/// Running was being run by a controller that stopped (a restart): its Pod is deleted and the
/// run recorded as cancelled, then the finalizer does its work, so the deletion never waits
/// for a run nobody will finish.
async fn deleted(backup: &ExecBackup, api: &Api<ExecBackup>, ctx: &Context) -> Result<Action> {
    // The cache may lag behind a run this controller just ended, and its finalizer's removal.
    let Some(backup) = status::latest(api, backup).await? else {
        return Ok(Action::await_change());
    };
    let mut state = backup.status.clone().unwrap_or_default();
    if state.phase != ExecPhase::Running {
        return delete_data(&backup, api, ctx).await;
    }
    if let Some(pod) = &state.pod_name {
        run::delete_pod(ctx, &backup.namespace().unwrap_or_default(), pod).await;
    }
    let error = Error::permanent(
        CANCELLED,
        "the ExecBackup was deleted while its run's controller was stopped: its Pod was deleted and no artifact was recorded (an unfinished multipart upload is left to the storage's lifecycle rules)",
    );
    run::failed(&mut state, &error, backup.metadata.generation, ctx);
    record_cancelled(&backup, api, &state, &error, ctx).await
}

/// A run found Running when no reconcile of it is in flight: the controller restarted during
/// it. The stream cannot be resumed (the command's stdout is gone with the old exec), so the
/// run fails with the reason; no manifest was written, so nothing partial is marked complete.
async fn interrupted(
    backup: &ExecBackup,
    api: &Api<ExecBackup>,
    mut state: ExecRunStatus,
    ctx: &Context,
) -> Result<Action> {
    if let Some(pod) = &state.pod_name {
        run::delete_pod(ctx, &backup.namespace().unwrap_or_default(), pod).await;
    }
    let error = Error::permanent(
        "Interrupted",
        "the controller restarted during the run; the partial upload was abandoned and no artifact was recorded: create a new ExecBackup to retry",
    );
    run::failed(&mut state, &error, backup.metadata.generation, ctx);
    run::write_final(api, backup, &state).await?;
    ctx.warning(backup, "BackupFailed", format!("Interrupted: {error}"))
        .await;
    Ok(Action::await_change())
}

/// `retainPolicy: Delete`: the artifact and its manifest go first, then the finalizer.
async fn delete_data(backup: &ExecBackup, api: &Api<ExecBackup>, ctx: &Context) -> Result<Action> {
    if !finalizer::has(backup, FINALIZER) {
        return Ok(Action::await_change());
    }
    if let Some(artifact) = backup.status.as_ref().and_then(|s| s.artifact.as_ref()) {
        let namespace = backup.namespace().unwrap_or_default();
        let deleted = async {
            let storage = resolve_storage(ctx, &artifact.storage, Some(&namespace)).await?;
            stowage_core::catalog::delete(storage.store.as_ref(), &artifact.artifact.path).await?;
            Ok::<_, Error>(())
        }
        .await;
        if let Err(error) = deleted {
            ctx.warning(
                backup,
                "DeleteFailed",
                format!("deleting {} failed: {error}", artifact.artifact.path),
            )
            .await;
            return Err(error);
        }
        ctx.normal(
            backup,
            "DataDeleted",
            format!("deleted {} from storage {}", artifact.artifact.path, artifact.storage),
        )
        .await;
    }
    finalizer::remove(api, backup, FINALIZER).await?;
    Ok(Action::await_change())
}
