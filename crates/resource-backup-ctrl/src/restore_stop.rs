//! A restore stopped before it finished: its ResourceRestore was deleted (Failed, reason
//! `Cancelled`, and an Event `RestoreCancelled`), or the controller is stopping (a transient
//! `Interrupted`: back to Pending, and the next controller restores it again, which is
//! idempotent). Either way the restore stopped between objects, the workloads it held at zero
//! replicas were scaled back, and what it applied stays applied: the messages say how much.

use kube::api::Api;
use kube::runtime::controller::Action;
use stowage_api::ResourceRestore;
use stowage_api::resource_restore::{ResourceRestorePhase, ResourceRestoreStatus, RestoreCounts};
use stowage_operator::cancel::{CANCELLED, Stop};
use stowage_operator::conditions::to_time;
use stowage_operator::{Error, Result, status};

use crate::ResourceContext;
use crate::reconcile::set_conditions;
use crate::restore::Report;

const KIND: &str = "ResourceRestore";
const INTERRUPTED: &str = "Interrupted";

/// "2 created, 1 updated, …": what a restore did, for status messages and Events.
pub(crate) fn summary(counts: &RestoreCounts) -> String {
    format!(
        "{} created, {} updated, {} unchanged, {} skipped, {} deleted, {} failed",
        counts.created, counts.updated, counts.unchanged, counts.skipped, counts.deleted, counts.failed
    )
}

/// Records a restore that `stop` ended: `outcome` is its report (cancelled, with the counts so
/// far) or the error it failed with just before the stop was seen.
pub(crate) async fn record(
    object: &ResourceRestore,
    api: &Api<ResourceRestore>,
    mut state: ResourceRestoreStatus,
    outcome: crate::Result<Report>,
    stop: Stop,
    seconds: f64,
    rctx: &ResourceContext,
) -> Result<Action> {
    let ctx = &rctx.kit;
    let source = state.source.clone().unwrap_or_default();
    let (done, total) = state.progress.as_ref().map_or((0, None), |p| (p.objects, p.total));
    let total = total.map_or_else(|| "?".to_string(), |t| t.to_string());
    let applied = match &outcome {
        Ok(_) if object.spec.dry_run => {
            format!("the dry run stopped after {done} of {total} objects; nothing was changed")
        }
        Ok(report) => {
            let scaled = match report.scaled_back {
                0 => String::new(),
                n => format!("; the {n} workload(s) held at zero replicas were scaled back"),
            };
            format!(
                "stopped after {done} of {total} objects ({}); what was applied stays applied, nothing is rolled back{scaled}",
                summary(&report.counts)
            )
        }
        Err(error) => format!(
            "it had failed ({error}) after {done} of {total} objects; what was applied stays applied, nothing is rolled back"
        ),
    };
    if let Ok(report) = &outcome
        && !object.spec.dry_run
    {
        rctx.metrics
            .restore_objects
            .with_label_values(&["Deleted"])
            .inc_by(report.counts.deleted);
        state.counts = report.counts.clone();
        state.failures = report.failures.clone();
    }
    let generation = object.metadata.generation;
    if stop == Stop::Shutdown {
        let message = format!(
            "the controller stopped during the restore of {source}: {applied}; the next controller restores it again (restoring is idempotent)"
        );
        ctx.metrics.run_finished(KIND, "Restore", INTERRUPTED, seconds);
        state.phase = ResourceRestorePhase::Pending;
        set_conditions(
            &mut state.conditions,
            false,
            false,
            INTERRUPTED,
            &message,
            generation,
            ctx,
        );
        write(api, object, &state).await?;
        ctx.warning(object, INTERRUPTED, message.clone()).await;
        return Err(Error::transient(INTERRUPTED, message));
    }
    let message = format!("the ResourceRestore was deleted during its restore of {source}: {applied}");
    ctx.metrics.run_finished(KIND, "Restore", CANCELLED, seconds);
    state.phase = ResourceRestorePhase::Failed;
    state.completion_time = Some(to_time(ctx.now()));
    set_conditions(
        &mut state.conditions,
        false,
        false,
        CANCELLED,
        &message,
        generation,
        ctx,
    );
    // The status first, so whoever sees the Event reads the final phase. Without a finalizer
    // the object is usually gone already, and the Event is the record.
    write(api, object, &state).await?;
    ctx.normal(object, "RestoreCancelled", message).await;
    Ok(Action::await_change())
}

/// Writes the final status of `object`; one already gone (deleted, perhaps created again)
/// needs none.
pub(crate) async fn write(
    api: &Api<ResourceRestore>,
    object: &ResourceRestore,
    state: &ResourceRestoreStatus,
) -> Result<()> {
    match status::patch(api, object, state).await {
        Ok(_) => Ok(()),
        Err(error) if error.is_not_found() => Ok(()),
        Err(error) => Err(error),
    }
}
