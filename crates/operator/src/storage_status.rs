//! The BackupStorage reconciler every controller may run: it probes each storage (write, read
//! back, delete a small object under its prefix) and reports the result as the `Ready`
//! condition, again every few minutes, so `kubectl get bst` shows a broken bucket or expired
//! credentials before a backup needs them. Several controllers running it write the same
//! condition; a write happens only when something changed.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use stowage_api::{BackupStorage, BackupStorageStatus};

use crate::{Context, Result, conditions, resolve_storage, run_controller, status};

/// How often a working storage is probed again.
const PROBE_EVERY: Duration = Duration::from_secs(300);
/// How soon a failing storage is probed again (its Secret may have just been created).
const RETRY_EVERY: Duration = Duration::from_secs(30);

/// Runs the BackupStorage reconciler until `ctx.shutdown`.
pub async fn run(ctx: Arc<Context>) {
    let controller = Controller::new(
        Api::<BackupStorage>::all(ctx.client.clone()),
        watcher::Config::default(),
    );
    run_controller(controller, ctx.clone(), ctx.shutdown.clone(), reconcile).await;
}

async fn reconcile(storage: Arc<BackupStorage>, ctx: Arc<Context>) -> Result<Action> {
    let name = storage.name_any();
    let generation = storage.metadata.generation;
    let probe = async {
        let resolved = resolve_storage(&ctx, &name, None).await?;
        stowage_core::storage::check(resolved.store.as_ref(), resolved.layout.prefix()).await?;
        Ok::<_, crate::Error>(())
    }
    .await;
    let mut state: BackupStorageStatus = storage.status.clone().unwrap_or_default();
    let was_ready = conditions::is_true(&state.conditions, "Ready");
    let changed = match &probe {
        Ok(()) => conditions::set(
            &mut state.conditions,
            "Ready",
            true,
            "ProbeSucceeded",
            "a probe object was written, read back and deleted",
            generation,
            ctx.now(),
        ),
        Err(error) => conditions::set(
            &mut state.conditions,
            "Ready",
            false,
            error.reason(),
            error.to_string(),
            generation,
            ctx.now(),
        ),
    } || state.observed_generation != generation;
    if changed {
        state.observed_generation = generation;
        let api: Api<BackupStorage> = Api::all(ctx.client.clone());
        status::patch(&api, storage.as_ref(), &state).await?;
        match &probe {
            Ok(()) if !was_ready => ctx.normal(storage.as_ref(), "StorageReady", "the storage works").await,
            Err(error) => ctx.warning(storage.as_ref(), error.reason(), error.to_string()).await,
            Ok(()) => {}
        }
    }
    // Probe again later either way: storage breaks (and heals) without the object changing.
    Ok(Action::requeue(if probe.is_ok() { PROBE_EVERY } else { RETRY_EVERY }))
}
