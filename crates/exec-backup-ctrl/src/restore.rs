//! ExecRestore: find the artifact (an ExecBackup's, or a path in a storage), check its
//! manifest, and stream it, verified, into the restore command's stdin in a Pod.
//!
//! The data path releases bytes only after they are authenticated (age) and gives the command
//! end-of-input only after every check passed. When a check fails mid-stream, the command is
//! killed with its Pod before its stdin closes, so it never sees a clean end of a bad input.

use std::sync::Arc;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use stowage_api::{
    ArtifactStatus, ExecBackup, ExecCommand, ExecPhase, ExecRestore, ExecRunStatus, PodTemplate, SecretKeyRef,
};
use stowage_core::{Identities, Progress, RestoreRequest};
use stowage_operator::cancel::{CANCELLED, Registry, RunGuard, Stop};
use stowage_operator::podexec::{ExecPod, ExecPodParams};
use stowage_operator::{Context, Error, ResolvedStorage, Result, resolve_storage, secrets, status};
use tokio::time::Instant;

use crate::run;

const KIND: &str = "ExecRestore";
/// How often a restore waiting for its backup to finish looks again.
const BACKUP_POLL: std::time::Duration = std::time::Duration::from_secs(10);

/// Everything a restore run needs, checked before its Pod is created.
struct Plan {
    storage: ResolvedStorage,
    path: String,
    identities: Arc<Identities>,
    container: String,
    argv: Vec<String>,
    deadline: std::time::Duration,
    pod: ExecPodParams,
}

/// The restore's source, command and Pod, from the spec and the ExecBackup it names.
struct Source {
    storage: String,
    path: String,
    command: ExecCommand,
    template: PodTemplate,
    decryption_key: Option<SecretKeyRef>,
}

pub async fn reconcile(restore: Arc<ExecRestore>, ctx: Arc<Context>, runs: Registry<ExecRestore>) -> Result<Action> {
    let namespace = restore.namespace().unwrap_or_default();
    let api: Api<ExecRestore> = Api::namespaced(ctx.client.clone(), &namespace);
    if restore
        .status
        .as_ref()
        .is_some_and(|s| matches!(s.phase, ExecPhase::Succeeded | ExecPhase::Failed))
    {
        return Ok(Action::await_change());
    }
    let Some(restore) = status::latest(&api, restore.as_ref()).await?.map(Arc::new) else {
        return Ok(Action::await_change());
    };
    let mut state = restore.status.clone().unwrap_or_default();
    let generation = restore.metadata.generation;
    if restore.metadata.deletion_timestamp.is_some() {
        // Being deleted (held by someone else's finalizer): never start; one Running was run
        // by a controller that stopped, so its command is killed with its Pod.
        if state.phase == ExecPhase::Running {
            if let Some(pod) = &state.pod_name {
                run::delete_pod(&ctx, &namespace, pod).await;
            }
            let error = cancelled_error();
            run::failed(&mut state, &error, generation, &ctx);
            return record_cancelled(&restore, &api, &state, &error, &ctx).await;
        }
        return Ok(Action::await_change());
    }
    match state.phase {
        ExecPhase::Succeeded | ExecPhase::Failed => return Ok(Action::await_change()),
        ExecPhase::Running => {
            // The controller restarted mid-stream: the command got part of the data, and
            // only its owner can judge what that did. Fail loudly rather than feed it twice.
            if let Some(pod) = &state.pod_name {
                run::delete_pod(&ctx, &namespace, pod).await;
            }
            let error = Error::permanent(
                "Interrupted",
                "the controller restarted while the restore command was reading its input; it may have applied part of the backup: check the target, then create a new ExecRestore",
            );
            return fail(&restore, &api, state, error, None, &ctx).await;
        }
        ExecPhase::Pending => {}
    }
    let plan = match prepare(&restore, &ctx).await {
        Ok(Some(plan)) => plan,
        Ok(None) => return Ok(Action::requeue(BACKUP_POLL)),
        Err(error) if error.awaits_change() => return fail(&restore, &api, state, error, None, &ctx).await,
        Err(error) => {
            run::waiting(&mut state, &error, generation, &ctx);
            status::patch(&api, restore.as_ref(), &state).await?;
            ctx.warning(restore.as_ref(), error.reason(), error.to_string()).await;
            return Err(error);
        }
    };
    // Check the manifest before starting a Pod: a missing or incomplete artifact fails here.
    let manifest = match stowage_core::read_manifest(plan.storage.store.as_ref(), &plan.path).await {
        Ok(manifest) => manifest,
        Err(error) => return fail(&restore, &api, state, error.into(), None, &ctx).await,
    };
    if manifest.artifact.encrypted() && plan.identities.is_empty() {
        let error = Error::InvalidSpec(format!(
            "{} is encrypted to {}: set spec.decryptionKey (or the ExecBackup's spec.encryption.decryptionKey) to a Secret key holding one of their private keys",
            plan.path,
            manifest.artifact.recipients.join(", ")
        ));
        return fail(&restore, &api, state, error, None, &ctx).await;
    }

    // Registered before the run starts, so a deletion at any moment from here on cancels it.
    let cancel = runs.register(restore.as_ref(), &ctx.shutdown);
    run::started(&mut state, &plan.pod.name, generation, &ctx);
    state.artifact = Some(ArtifactStatus::new(
        plan.storage.name.clone(),
        manifest.artifact.clone(),
    ));
    // The progress reports start from the object as written, so each takes one request.
    let running = status::patch(&api, restore.as_ref(), &state).await?;
    ctx.normal(
        restore.as_ref(),
        "RestoreStarted",
        format!("restoring {} in Pod {}", plan.path, plan.pod.name),
    )
    .await;
    let started = std::time::Instant::now();
    let in_progress = ctx.metrics.runs_in_progress.with_label_values(&[KIND, "Restore"]);
    in_progress.inc();
    let progress = Progress::default();
    let reporter = run::report_progress(api.clone(), &running, progress.plaintext.clone());
    let outcome = execute(&ctx, plan, progress.clone(), &cancel).await;
    // No progress write may race the final status or the finalizer's removal.
    drop(reporter);
    let stop = match &outcome {
        Ok(_) => cancel.stop(),
        Err(_) => cancel.stop_after_failure(&api, restore.as_ref()).await,
    };
    let outcome = match (outcome, stop) {
        (Err(_), Some(Stop::Deleted)) => Err((cancelled_error(), None)),
        (Err(_), Some(Stop::Shutdown)) => Err((
            Error::permanent(
                "Interrupted",
                "the controller stopped while the restore command was reading its input; the command was killed, and it may have applied part of the backup: check the target, then create a new ExecRestore",
            ),
            None,
        )),
        (outcome, _) => outcome,
    };
    drop(cancel);
    in_progress.dec();
    let seconds = started.elapsed().as_secs_f64();
    state.bytes_transferred = Some(progress.plaintext.bytes());
    match outcome {
        Ok(()) => {
            ctx.metrics.run_finished(KIND, "Restore", "Succeeded", seconds);
            let message = format!(
                "restored {} ({} of plaintext)",
                manifest.artifact.path,
                stowage_core::human_bytes(progress.plaintext.bytes())
            );
            run::succeeded(&mut state, &message, generation, &ctx);
            run::write_final(&api, restore.as_ref(), &state).await?;
            ctx.normal(restore.as_ref(), "RestoreSucceeded", message).await;
            Ok(Action::await_change())
        }
        Err((error, _)) if error.reason() == CANCELLED => {
            ctx.metrics.run_finished(KIND, "Restore", CANCELLED, seconds);
            run::failed(&mut state, &error, generation, &ctx);
            record_cancelled(&restore, &api, &state, &error, &ctx).await
        }
        Err((error, stderr_tail)) => {
            ctx.metrics.run_finished(KIND, "Restore", error.reason(), seconds);
            fail(&restore, &api, state, error, stderr_tail, &ctx).await
        }
    }
}

fn cancelled_error() -> Error {
    Error::permanent(
        CANCELLED,
        "the ExecRestore was deleted while it ran: the restore command was killed before the end of its input, and it may have applied part of the backup: check the target",
    )
}

/// A run cancelled because its object was deleted: an Event, and the status if the object
/// still exists (someone else's finalizer holds it).
async fn record_cancelled(
    restore: &ExecRestore,
    api: &Api<ExecRestore>,
    state: &ExecRunStatus,
    error: &Error,
    ctx: &Context,
) -> Result<Action> {
    // The status first: whoever sees the Event can then read the final phase.
    run::write_final(api, restore, state).await?;
    ctx.normal(restore, "RestoreCancelled", error.to_string()).await;
    Ok(Action::await_change())
}

async fn fail(
    restore: &ExecRestore,
    api: &Api<ExecRestore>,
    mut state: ExecRunStatus,
    error: Error,
    stderr_tail: Option<String>,
    ctx: &Context,
) -> Result<Action> {
    state.stderr_tail = stderr_tail.filter(|tail| !tail.is_empty());
    run::failed(&mut state, &error, restore.metadata.generation, ctx);
    run::write_final(api, restore, &state).await?;
    ctx.warning(restore, "RestoreFailed", format!("{}: {error}", error.reason()))
        .await;
    Ok(Action::await_change())
}

/// The plan, or None while the named ExecBackup has not finished.
async fn prepare(restore: &ExecRestore, ctx: &Context) -> Result<Option<Plan>> {
    let namespace = restore.namespace().unwrap_or_default();
    let Some(source) = source(restore, ctx).await? else {
        return Ok(None);
    };
    run::check_command(&source.command, "spec.restore")?;
    let pod_spec = run::pod_spec(&source.template)?;
    let container = run::container(&source.command, &pod_spec)?;
    let storage = resolve_storage(ctx, &source.storage, Some(&namespace)).await?;
    storage.check_readable("ExecBackup", Some(&namespace), &source.path)?;
    let mut identities = Identities::none();
    if let Some(key) = &source.decryption_key {
        let text = secrets::key(&ctx.client, &namespace, &key.name, &key.key).await?;
        identities.add(&text)?;
    }
    Ok(Some(Plan {
        storage,
        path: source.path,
        identities: Arc::new(identities),
        container,
        argv: source.command.argv(),
        deadline: run::deadline(&source.command),
        pod: run::pod_params(restore, "restore", &source.template, pod_spec),
    }))
}

async fn source(restore: &ExecRestore, ctx: &Context) -> Result<Option<Source>> {
    let spec = &restore.spec;
    let namespace = restore.namespace().unwrap_or_default();
    match (&spec.backup_ref, &spec.storage) {
        (Some(_), Some(_)) => Err(Error::InvalidSpec("give either spec.backupRef or spec.storage, not both".into())),
        (None, None) => Err(Error::InvalidSpec(
            "give spec.backupRef (an ExecBackup in this namespace) or spec.storage (a BackupStorage and the artifact's path)".into(),
        )),
        (Some(reference), None) => {
            let backups: Api<ExecBackup> = Api::namespaced(ctx.client.clone(), &namespace);
            let backup = backups.get_opt(&reference.name).await?.ok_or_else(|| Error::MissingReference {
                reason: "BackupNotFound",
                message: format!("ExecBackup '{}' not found in namespace '{namespace}'", reference.name),
            })?;
            let state = backup.status.clone().unwrap_or_default();
            let artifact = match (state.phase, state.artifact) {
                (ExecPhase::Succeeded, Some(artifact)) => artifact,
                (ExecPhase::Failed, _) => {
                    return Err(Error::permanent(
                        "BackupFailed",
                        format!("ExecBackup '{}' failed: there is nothing to restore", reference.name),
                    ));
                }
                _ => return Ok(None),
            };
            let command = spec.restore.clone().or(backup.spec.restore.clone()).ok_or_else(|| {
                Error::InvalidSpec(format!(
                    "neither this ExecRestore nor ExecBackup '{}' gives a restore command: set spec.restore",
                    reference.name
                ))
            })?;
            Ok(Some(Source {
                storage: artifact.storage,
                path: artifact.artifact.path,
                command,
                template: spec.template.clone().unwrap_or(backup.spec.template),
                decryption_key: spec
                    .decryption_key
                    .clone()
                    .or(backup.spec.encryption.and_then(|e| e.decryption_key)),
            }))
        }
        (None, Some(storage)) => {
            let path = storage.path.clone().filter(|p| !p.is_empty()).ok_or_else(|| {
                Error::InvalidSpec("spec.storage.path is required: the key of the artifact to restore".into())
            })?;
            let command = spec
                .restore
                .clone()
                .ok_or_else(|| Error::InvalidSpec("spec.restore is required with spec.storage".into()))?;
            let template = spec
                .template
                .clone()
                .ok_or_else(|| Error::InvalidSpec("spec.template is required with spec.storage".into()))?;
            Ok(Some(Source {
                storage: storage.name.clone(),
                path,
                command,
                template,
                decryption_key: spec.decryption_key.clone(),
            }))
        }
    }
}

/// Streams the artifact into the command's stdin. Returns the error and the command's
/// stderr tail on failure.
///
/// Once `cancel` fires, the command is killed without seeing the end of its input (as on an
/// integrity failure), or, when its input was complete, stopped with its Pod.
async fn execute(
    ctx: &Context,
    plan: Plan,
    progress: Progress,
    cancel: &RunGuard,
) -> Result<(), (Error, Option<String>)> {
    let mut request = RestoreRequest::new(plan.storage.store.clone(), plan.path.clone());
    request.identities = plan.identities.clone();
    request.progress = progress;
    let (container, argv, deadline) = (plan.container, plan.argv, plan.deadline);
    let result = ExecPod::run(&ctx.client, &plan.pod, |pod| async move {
        let mut stdin = tokio::select! {
            started = async {
                pod.wait_running(&container, run::POD_START_TIMEOUT).await?;
                pod.exec_stdin(&container, argv, Instant::now() + deadline).await
            } => started?,
            _ = cancel.cancelled() => return Err(cancelled_error().into()),
        };
        // The data path only reads from storage: dropping it midway leaves nothing behind.
        let restored = tokio::select! {
            restored = stowage_core::restore(request, &mut stdin) => Some(restored),
            _ = cancel.cancelled() => None,
        };
        let Some(restored) = restored else {
            if let Err(error) = stdin.kill().await {
                tracing::warn!(%error, "killing the cancelled restore command failed");
            }
            return Err(cancelled_error().into());
        };
        match restored {
            Ok(_) => {
                // Dropping the wait on cancel leaves the Pod to `ExecPod::run`, which deletes it.
                let outcome = tokio::select! {
                    outcome = stdin.finish() => outcome?,
                    _ = cancel.cancelled() => return Err(cancelled_error().into()),
                };
                let tail = outcome.stderr_tail.clone();
                outcome
                    .check("the restore command")
                    .map_err(|error| Wrapped(error, Some(tail)))
            }
            // The command broke the pipe (exited early, or the deadline passed): its exit
            // code, stderr or the deadline is the explanation.
            Err(data_error) if data_error.reason() == "SinkFailed" => match stdin.finish().await {
                Err(error) => Err(Wrapped(error, None)),
                Ok(outcome) => {
                    let tail = Some(outcome.stderr_tail.clone());
                    match outcome.check("the restore command") {
                        Err(error) => Err(Wrapped(error, tail)),
                        Ok(()) => Err(Wrapped(data_error.into(), tail)),
                    }
                }
            },
            // A check failed midway: kill the command before its stdin closes, so it never
            // takes a cut-off input for a complete one.
            Err(data_error) => {
                if let Err(error) = stdin.kill().await {
                    tracing::warn!(%error, "killing the restore command failed");
                }
                Err(Wrapped(data_error.into(), None))
            }
        }
    })
    .await;
    result.map_err(|Wrapped(error, tail)| (error, tail))
}

/// The kit's error with the command's stderr tail, as `ExecPod::run` wants one error type.
struct Wrapped(Error, Option<String>);

impl From<Error> for Wrapped {
    fn from(error: Error) -> Self {
        Wrapped(error, None)
    }
}
