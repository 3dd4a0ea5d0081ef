//! The ResourceBackup reconciler: validate, resolve the ResourceSet, storage and keys, stream
//! the objects through core, and record the artifact; delete the archive with the object
//! when `retainPolicy: Delete`. A backup is one run: once Succeeded or Failed it stays so.

use std::sync::Arc;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use stowage_api::resource_backup::{ResourceBackupPhase, ResourceBackupProgress, ResourceBackupStatus, RetainPolicy};
use stowage_api::{ArtifactStatus, ResourceBackup, ResourceSet};
use stowage_core::template::TemplateVars;
use stowage_core::{BackupRequest, PipelineOptions, Recipients, UploadOptions};
use stowage_operator::conditions::to_time;
use stowage_operator::finalizer;
use stowage_operator::{Context, Error, Result, resolve_storage, status};

use crate::ResourceContext;
use crate::reconcile::{CLUSTER, encryption_config, report_progress, set_conditions, to_kit};

const KIND: &str = "ResourceBackup";
/// Finalizer of backups whose archive is deleted with them.
pub const FINALIZER: &str = finalizer::DELETE_DATA;

pub async fn reconcile(backup: Arc<ResourceBackup>, rctx: Arc<ResourceContext>) -> Result<Action> {
    let ctx = rctx.kit.clone();
    let api: Api<ResourceBackup> = Api::all(ctx.client.clone());
    if backup.metadata.deletion_timestamp.is_some() {
        return delete_data(&backup, &api, &ctx).await;
    }
    if backup.spec.retain_policy == RetainPolicy::Delete {
        finalizer::add(&api, backup.as_ref(), FINALIZER).await?;
    }
    let status = backup.status.as_ref();
    if status.is_some_and(|s| matches!(s.phase, ResourceBackupPhase::Succeeded | ResourceBackupPhase::Failed)) {
        return Ok(Action::await_change());
    }
    let Some(backup) = status::latest(&api, backup.as_ref()).await?.map(Arc::new) else {
        return Ok(Action::await_change());
    };
    let mut state = backup.status.clone().unwrap_or_default();
    let generation = backup.metadata.generation;
    state.observed_generation = generation;
    match state.phase {
        ResourceBackupPhase::Succeeded | ResourceBackupPhase::Failed => return Ok(Action::await_change()),
        ResourceBackupPhase::Running => {
            let error = Error::permanent(
                "Interrupted",
                "the controller stopped during the backup; the archive was never committed (no manifest): create a new ResourceBackup to retry",
            );
            return finish_failed(&backup, &api, state, error, &ctx).await;
        }
        ResourceBackupPhase::Pending => {}
    }

    let mut prepared = match prepare(&backup, &ctx).await {
        Ok(prepared) => prepared,
        Err(error) if error.awaits_change() => return finish_failed(&backup, &api, state, error, &ctx).await,
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
            status::patch(&api, backup.as_ref(), &state).await?;
            ctx.warning(backup.as_ref(), error.reason(), message).await;
            return Err(error);
        }
    };

    state.phase = ResourceBackupPhase::Running;
    state.start_time = Some(to_time(ctx.now()));
    let message = format!(
        "backing up ResourceSet {} to {}",
        backup.spec.resource_set_name, prepared.request.path
    );
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
    let running = status::patch(&api, backup.as_ref(), &state).await?;
    ctx.normal(backup.as_ref(), "BackupStarted", message).await;

    let started = std::time::Instant::now();
    let in_progress = ctx.metrics.runs_in_progress.with_label_values(&[KIND, "Backup"]);
    in_progress.inc();
    let storage_name = prepared.storage_name.clone();
    let progress = crate::backup::Progress {
        counter: Some(rctx.metrics.backup_objects.clone()),
        ..Default::default()
    };
    let bytes = prepared.request.progress.clone();
    let snapshot = {
        let (objects, bytes) = (progress.objects.clone(), bytes.clone());
        move || ResourceBackupProgress {
            objects: objects.load(std::sync::atomic::Ordering::Relaxed),
            plaintext_bytes: bytes.plaintext.bytes(),
            stored_bytes: bytes.stored.bytes(),
        }
    };
    let reporter = {
        let snapshot = snapshot.clone();
        report_progress(api.clone(), &running, move || {
            serde_json::to_value(snapshot()).unwrap_or_default()
        })
    };
    prepared.request.progress = bytes;
    let run = crate::backup::run(
        &ctx.client,
        &prepared.resource_set,
        prepared.encryption,
        prepared.request,
        &progress,
    );
    let outcome = tokio::select! {
        outcome = run => outcome.map_err(to_kit),
        _ = ctx.shutdown.cancelled() => Err(Error::permanent("Interrupted", "the controller stopped during the backup; nothing was committed: create a new ResourceBackup to retry")),
    };
    in_progress.dec();
    drop(reporter);
    state.progress = Some(snapshot());
    let seconds = started.elapsed().as_secs_f64();
    match outcome {
        Ok(outcome) => {
            rctx.metrics.backup_encrypted_objects.inc_by(outcome.summary.encrypted);
            ctx.metrics
                .backup_succeeded(KIND, CLUSTER, &schedule(&backup), &outcome.artifact, seconds);
            let message = format!(
                "stored {} objects ({} encrypted) in {} at {}",
                outcome.summary.objects,
                outcome.summary.encrypted,
                stowage_core::human_bytes(outcome.artifact.stored_bytes),
                outcome.artifact.path
            );
            state.phase = ResourceBackupPhase::Succeeded;
            state.completion_time = Some(to_time(ctx.now()));
            state.object_count = Some(outcome.summary.objects);
            state.encrypted_objects = Some(outcome.summary.encrypted);
            state.kinds = outcome.summary.kinds;
            state.cluster_id = Some(outcome.cluster_id);
            state.artifact = Some(ArtifactStatus::new(storage_name, outcome.artifact));
            set_conditions(
                &mut state.conditions,
                true,
                false,
                "Succeeded",
                &message,
                generation,
                &ctx,
            );
            status::patch(&api, backup.as_ref(), &state).await?;
            ctx.normal(backup.as_ref(), "BackupSucceeded", message).await;
            Ok(Action::await_change())
        }
        Err(error) => {
            ctx.metrics.run_finished(KIND, "Backup", error.reason(), seconds);
            finish_failed(&backup, &api, state, error, &ctx).await
        }
    }
}

struct Prepared {
    resource_set: stowage_api::ResourceSetSpec,
    encryption: Option<crate::encryption::EncryptionConfig>,
    request: BackupRequest,
    storage_name: String,
}

/// Everything the run needs, checked before the first object is listed.
async fn prepare(backup: &ResourceBackup, ctx: &Context) -> Result<Prepared> {
    let spec = &backup.spec;
    if spec.resource_set_name.is_empty() {
        return Err(Error::InvalidSpec(
            "spec.resourceSetName is empty: name a ResourceSet".into(),
        ));
    }
    let sets: Api<ResourceSet> = Api::all(ctx.client.clone());
    let set = sets
        .get_opt(&spec.resource_set_name)
        .await?
        .ok_or_else(|| Error::MissingReference {
            reason: "ResourceSetNotFound",
            message: format!(
                "ResourceSet '{}' not found: create it or fix spec.resourceSetName",
                spec.resource_set_name
            ),
        })?;
    crate::selector::Selection::new(&set.spec)
        .map_err(|e| Error::InvalidSpec(format!("ResourceSet '{}': {e}", spec.resource_set_name)))?;
    let encryption = encryption_config(ctx, spec.encryption_config_secret_name.as_deref()).await?;
    let recipients = match &spec.encryption {
        Some(encryption) if !encryption.recipients.is_empty() => Recipients::parse(&encryption.recipients)?,
        _ => Recipients::default(),
    };
    spec.compression.validate()?;
    let storage = resolve_storage(ctx, &spec.storage.name, None).await?;
    let ext = stowage_core::layout::extension(spec.compression.extension(), !recipients.is_empty())
        .map_err(|e| Error::InvalidSpec(format!("spec.compression: {e}")))?;
    let ext = if ext.is_empty() {
        "tar".to_string()
    } else {
        format!("tar.{ext}")
    };
    let vars = TemplateVars {
        now: ctx.now(),
        name: backup.name_any(),
        namespace: String::new(),
        kind: KIND.to_string(),
        schedule_name: backup.labels().get("stowage.io/schedule").cloned().unwrap_or_default(),
    };
    let key = storage.key_for(&vars, spec.storage.path.as_deref(), &ext)?;
    let mut request = BackupRequest::new(
        storage.store.clone(),
        key,
        KIND,
        format!(
            "ResourceBackup {}: ResourceSet {}",
            backup.name_any(),
            spec.resource_set_name
        ),
    );
    request.compression = spec.compression.clone();
    request.recipients = Arc::new(recipients);
    // The API server lists a few MB/s: one 5 MiB part uploading while the next one fills keeps
    // up with it, and holds 10 MiB where core's default (three 8 MiB parts) holds 24 MiB.
    request.upload = UploadOptions {
        part_size: 5 * 1024 * 1024,
        parts_in_flight: 1,
    };
    // Likewise the pipeline: its default reads 4 MiB ahead and keeps 4 MiB compressing, which a
    // source of a few MB/s never needs; on a busy node the queues fill anyway while the
    // compressing threads wait for a core. 256 KiB blocks, one queued and two compressing,
    // hold about 1.25 MiB (4-6 MiB less peak RSS in the resources bench).
    request.pipeline = PipelineOptions::shallow();
    Ok(Prepared {
        resource_set: set.spec,
        encryption,
        request,
        storage_name: storage.name,
    })
}

fn schedule(backup: &ResourceBackup) -> String {
    backup
        .labels()
        .get("stowage.io/schedule")
        .cloned()
        .unwrap_or_else(|| backup.name_any())
}

async fn finish_failed(
    backup: &ResourceBackup,
    api: &Api<ResourceBackup>,
    mut state: ResourceBackupStatus,
    error: Error,
    ctx: &Context,
) -> Result<Action> {
    let message = error.to_string();
    state.phase = ResourceBackupPhase::Failed;
    state.completion_time = Some(to_time(ctx.now()));
    set_conditions(
        &mut state.conditions,
        false,
        false,
        error.reason(),
        &message,
        backup.metadata.generation,
        ctx,
    );
    status::patch(api, backup, &state).await?;
    ctx.warning(backup, "BackupFailed", format!("{}: {message}", error.reason()))
        .await;
    Ok(Action::await_change())
}

/// `retainPolicy: Delete`: the archive goes first (data before record), then the finalizer.
async fn delete_data(backup: &ResourceBackup, api: &Api<ResourceBackup>, ctx: &Context) -> Result<Action> {
    if !finalizer::has(backup, FINALIZER) {
        return Ok(Action::await_change());
    }
    if let Some(artifact) = backup.status.as_ref().and_then(|s| s.artifact.as_ref()) {
        let storage = resolve_storage(ctx, &artifact.storage, None).await?;
        stowage_core::catalog::delete(storage.store.as_ref(), &artifact.artifact.path).await?;
        ctx.normal(
            backup,
            "DataDeleted",
            format!("deleted {} from {}", artifact.artifact.path, artifact.storage),
        )
        .await;
    }
    finalizer::remove(api, backup, FINALIZER).await?;
    Ok(Action::await_change())
}
