//! The ResourceRestore reconciler: find the archive (a ResourceBackup's, or a path in a
//! BackupStorage), fetch and verify it whole, then apply or plan it and record the counts,
//! the bounded failure list and, for dry runs, the plan. A restore is one run, cancelled
//! between objects when its ResourceRestore is deleted (restore_stop.rs).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kube::api::Api;
use kube::runtime::controller::Action;
use stowage_api::resource_backup::ResourceBackupPhase;
use stowage_api::resource_restore::{ResourceRestorePhase, ResourceRestoreProgress, ResourceRestoreStatus};
use stowage_api::{ResourceBackup, ResourceRestore};
use stowage_core::Identities;
use stowage_operator::cancel::Registry;
use stowage_operator::conditions::to_time;
use stowage_operator::{Context, Error, Result, resolve_storage, secrets, status};

use crate::ResourceContext;
use crate::plan::Selection;
use crate::reader::Source;
use crate::reconcile::{encryption_config, report_progress, set_conditions, to_kit};
use crate::restore::{self, Options};
use crate::restore_stop;

const KIND: &str = "ResourceRestore";
const DEFAULT_DELETE_TIMEOUT: Duration = Duration::from_secs(60);

/// Reconciles one ResourceRestore. `runs` cancels a running restore whose object is deleted.
pub async fn reconcile(
    object: Arc<ResourceRestore>,
    rctx: Arc<ResourceContext>,
    runs: Registry<ResourceRestore>,
) -> Result<Action> {
    let ctx = rctx.kit.clone();
    let api: Api<ResourceRestore> = Api::all(ctx.client.clone());
    let status = object.status.as_ref();
    if status.is_some_and(|s| {
        matches!(
            s.phase,
            ResourceRestorePhase::Succeeded | ResourceRestorePhase::PartiallyFailed | ResourceRestorePhase::Failed
        )
    }) {
        return Ok(Action::await_change());
    }
    let Some(object) = status::latest(&api, object.as_ref()).await?.map(Arc::new) else {
        return Ok(Action::await_change());
    };
    let mut state = object.status.clone().unwrap_or_default();
    let generation = object.metadata.generation;
    state.observed_generation = generation;
    match state.phase {
        ResourceRestorePhase::Succeeded | ResourceRestorePhase::PartiallyFailed | ResourceRestorePhase::Failed => {
            return Ok(Action::await_change());
        }
        ResourceRestorePhase::Running => {
            let error = Error::permanent(
                "Interrupted",
                "the controller stopped during the restore; some objects may have been applied: create a new ResourceRestore to finish it (restoring is idempotent)",
            );
            return finish_failed(&object, &api, state, error, &ctx).await;
        }
        ResourceRestorePhase::Pending => {}
    }
    // Being deleted (held by someone else's finalizer): a restore nobody wants never starts.
    if object.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let (source, store, path, identities, encryption) = match prepare(&object, &ctx).await {
        Ok(prepared) => prepared,
        Err(error) if error.awaits_change() => return finish_failed(&object, &api, state, error, &ctx).await,
        Err(error) => {
            let message = error.to_string();
            set_conditions(
                &mut state.conditions,
                false,
                false,
                error.reason(),
                &message,
                generation,
                &ctx,
            );
            status::patch(&api, object.as_ref(), &state).await?;
            ctx.warning(object.as_ref(), error.reason(), message).await;
            return Err(error);
        }
    };

    // Registered before the run starts, so a deletion at any moment from here on cancels it.
    let cancel = runs.register(object.as_ref(), &ctx.shutdown);
    state.phase = ResourceRestorePhase::Running;
    state.start_time = Some(to_time(ctx.now()));
    state.source = Some(source.clone());
    let verb = if object.spec.dry_run {
        "planning a restore of"
    } else {
        "restoring"
    };
    let message = format!("{verb} {source}");
    set_conditions(
        &mut state.conditions,
        false,
        true,
        "Running",
        &message,
        generation,
        &ctx,
    );
    // The progress reports start from the object as written, so each takes one request.
    let running = status::patch(&api, object.as_ref(), &state).await?;
    ctx.normal(object.as_ref(), "RestoreStarted", message).await;

    let started = std::time::Instant::now();
    let mut options = options(&object);
    options.cancel = cancel.token();
    let progress = restore::Progress {
        outcomes: Some(rctx.metrics.restore_objects.clone()),
        ..Default::default()
    };
    let snapshot = {
        let progress = progress.clone();
        move || {
            let total = progress.total.load(Ordering::Relaxed);
            ResourceRestoreProgress {
                verified_objects: progress.verified.load(Ordering::Relaxed),
                objects: progress.done.load(Ordering::Relaxed),
                total: (total > 0).then_some(total),
            }
        }
    };
    let reporter = {
        let snapshot = snapshot.clone();
        report_progress(api.clone(), &running, move || {
            serde_json::to_value(snapshot()).unwrap_or_default()
        })
    };
    let in_progress = ctx.metrics.runs_in_progress.with_label_values(&[KIND, "Restore"]);
    in_progress.inc();
    let archive = Source::new(store, &path, identities);
    // The controller stopping cancels the run too, between objects: its workloads are scaled
    // back before the controller goes.
    let outcome = restore::run(&ctx.client, &archive, encryption.as_ref(), &options, &progress).await;
    in_progress.dec();
    // No progress write may race the final status.
    drop(reporter);
    state.progress = Some(snapshot());
    let seconds = started.elapsed().as_secs_f64();
    // A restore that finished is recorded as such, even if its object was deleted meanwhile.
    let stop = match &outcome {
        Ok(report) if !report.cancelled => None,
        Ok(_) => cancel.stop(),
        Err(_) => cancel.stop_after_failure(&api, object.as_ref()).await,
    };
    drop(cancel);
    let report = match (outcome, stop) {
        (outcome, Some(stop)) => {
            return restore_stop::record(&object, &api, state, outcome, stop, seconds, &rctx).await;
        }
        (Ok(report), None) => report,
        (Err(error), None) => {
            let error = to_kit(error);
            ctx.metrics.run_finished(KIND, "Restore", error.reason(), seconds);
            return finish_failed(&object, &api, state, error, &ctx).await;
        }
    };
    let counts = &report.counts;
    if !object.spec.dry_run {
        rctx.metrics
            .restore_objects
            .with_label_values(&["Deleted"])
            .inc_by(counts.deleted);
    }
    let summary = restore_stop::summary(counts);
    let (phase, reason, message) = match (counts.failed, object.spec.dry_run) {
        (0, true) => (
            ResourceRestorePhase::Succeeded,
            "DryRunCompleted",
            format!("dry run of {source}: would be {summary}"),
        ),
        (0, false) => (
            ResourceRestorePhase::Succeeded,
            "RestoreSucceeded",
            format!("restored {source}: {summary}"),
        ),
        (_, _) => (
            ResourceRestorePhase::PartiallyFailed,
            "RestorePartiallyFailed",
            format!("{source}: {summary}; see status.failures"),
        ),
    };
    ctx.metrics.run_finished(KIND, "Restore", reason, seconds);
    state.phase = phase;
    state.completion_time = Some(to_time(ctx.now()));
    state.counts = report.counts.clone();
    state.failures = report.failures.clone();
    state.plan = object.spec.dry_run.then(|| report.plan.clone());
    set_conditions(
        &mut state.conditions,
        phase == ResourceRestorePhase::Succeeded,
        false,
        reason,
        &message,
        generation,
        &ctx,
    );
    restore_stop::write(&api, object.as_ref(), &state).await?;
    if phase == ResourceRestorePhase::Succeeded {
        ctx.normal(object.as_ref(), reason, message).await;
    } else {
        ctx.warning(object.as_ref(), reason, message).await;
    }
    for orphan in report.orphaned.iter().take(10) {
        ctx.warning(object.as_ref(), "OwnerNotFound", orphan.clone()).await;
    }
    Ok(Action::await_change())
}

fn options(object: &ResourceRestore) -> Options {
    let spec = &object.spec;
    Options {
        selection: Selection {
            namespace_mapping: spec.namespace_mapping.clone(),
            include: spec.include.clone(),
            exclude: spec.exclude.clone(),
        },
        policy: spec.existing_resource_policy,
        prune: spec.prune,
        dry_run: spec.dry_run,
        delete_timeout: spec
            .delete_timeout_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(DEFAULT_DELETE_TIMEOUT, Duration::from_secs),
        cancel: Default::default(),
    }
}

type Prepared = (
    String,
    Arc<dyn object_store::ObjectStore>,
    String,
    Identities,
    Option<crate::encryption::EncryptionConfig>,
);

/// The archive's storage and path, the age identity and the EncryptionConfiguration.
async fn prepare(object: &ResourceRestore, ctx: &Context) -> Result<Prepared> {
    let spec = &object.spec;
    Selection {
        namespace_mapping: spec.namespace_mapping.clone(),
        include: spec.include.clone(),
        exclude: spec.exclude.clone(),
    }
    .validate()
    .map_err(Error::InvalidSpec)?;
    let (storage_name, path, backup_key) = match (&spec.backup_name, &spec.storage) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(Error::InvalidSpec(
                "give exactly one of spec.backupName and spec.storage".into(),
            ));
        }
        (Some(backup_name), None) => {
            let backups: Api<ResourceBackup> = Api::all(ctx.client.clone());
            let backup = backups
                .get_opt(backup_name)
                .await?
                .ok_or_else(|| Error::MissingReference {
                    reason: "BackupNotFound",
                    message: format!("ResourceBackup '{backup_name}' not found: create it or fix spec.backupName"),
                })?;
            let status = backup.status.unwrap_or_default();
            match (status.phase, status.artifact) {
                (ResourceBackupPhase::Succeeded, Some(artifact)) => (
                    artifact.storage,
                    artifact.artifact.path,
                    backup.spec.encryption.and_then(|e| e.decryption_key),
                ),
                (ResourceBackupPhase::Failed, _) => {
                    return Err(Error::InvalidSpec(format!(
                        "ResourceBackup '{backup_name}' failed: there is nothing to restore"
                    )));
                }
                _ => {
                    return Err(Error::MissingReference {
                        reason: "BackupNotReady",
                        message: format!("ResourceBackup '{backup_name}' has not succeeded yet"),
                    });
                }
            }
        }
        (None, Some(archive)) => (archive.name.clone(), archive.path.clone(), None),
    };
    let storage = resolve_storage(ctx, &storage_name, None).await?;
    let mut identities = Identities::none();
    if let Some(key) = spec.decryption_key_secret_ref.as_ref().or(backup_key.as_ref()) {
        let text = secrets::key(&ctx.client, &ctx.namespace, &key.name, &key.key).await?;
        identities.add(&text)?;
    }
    let encryption = encryption_config(ctx, spec.encryption_config_secret_name.as_deref()).await?;
    Ok((
        format!("{storage_name}:{path}"),
        storage.store,
        path,
        identities,
        encryption,
    ))
}

async fn finish_failed(
    object: &ResourceRestore,
    api: &Api<ResourceRestore>,
    mut state: ResourceRestoreStatus,
    error: Error,
    ctx: &Context,
) -> Result<Action> {
    let message = error.to_string();
    state.phase = ResourceRestorePhase::Failed;
    state.completion_time = Some(to_time(ctx.now()));
    set_conditions(
        &mut state.conditions,
        false,
        false,
        error.reason(),
        &message,
        object.metadata.generation,
        ctx,
    );
    status::patch(api, object, &state).await?;
    ctx.warning(object, "RestoreFailed", format!("{}: {message}", error.reason()))
        .await;
    Ok(Action::await_change())
}
