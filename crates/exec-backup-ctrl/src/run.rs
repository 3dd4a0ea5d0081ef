//! What backups and restores share: the Pod of a run, its status transitions, and progress.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use stowage_api::{ExecCommand, ExecPhase, ExecRunStatus, PodTemplate};
use stowage_core::Tally;
use stowage_operator::conditions::{self, to_time};
use stowage_operator::podexec::ExecPodParams;
use stowage_operator::{Context, Error, Result, status};

/// Label on every Pod this controller creates; its value is the run's kind.
pub const RUN_LABEL: &str = "stowage.io/run";
/// Finalizer of runs whose data is deleted with them (`retainPolicy: Delete`).
pub const FINALIZER: &str = stowage_operator::finalizer::DELETE_DATA;
/// How long a run's Pod may take to start its container.
pub const POD_START_TIMEOUT: Duration = Duration::from_secs(300);
/// A command's deadline when the spec gives none.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(3600);
/// How often a running run writes its progress to status.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// The container a command runs in: the named one, else the template's first.
pub fn container(command: &ExecCommand, spec: &PodSpec) -> Result<String> {
    match &command.container {
        Some(name) if spec.containers.iter().any(|c| &c.name == name) => Ok(name.clone()),
        Some(name) => Err(Error::InvalidSpec(format!(
            "container '{name}' is not in template.spec.containers ({})",
            spec.containers
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        None => spec
            .containers
            .first()
            .map(|c| c.name.clone())
            .ok_or_else(|| Error::InvalidSpec("template.spec.containers is empty".into())),
    }
}

/// Checks a command: something to run.
pub fn check_command(command: &ExecCommand, field: &str) -> Result<()> {
    if command.command.is_empty() || command.command[0].trim().is_empty() {
        return Err(Error::InvalidSpec(format!(
            "{field}.command is empty: give the program to run"
        )));
    }
    Ok(())
}

/// The command's deadline.
pub fn deadline(command: &ExecCommand) -> Duration {
    command
        .deadline_seconds
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_DEADLINE)
}

/// The Pod of run `object` (`role`: backup or restore), owned by it and labelled with it.
pub fn pod_params<K: Resource<DynamicType = ()>>(
    object: &K,
    role: &str,
    template: &PodTemplate,
    spec: PodSpec,
) -> ExecPodParams {
    let name = object.name_any();
    let metadata = template.metadata.clone().unwrap_or_default();
    let mut labels = BTreeMap::new();
    labels.insert(RUN_LABEL.to_string(), K::kind(&()).to_lowercase());
    labels.insert(format!("stowage.io/{role}"), label_value(&name));
    ExecPodParams {
        namespace: object.namespace().unwrap_or_default(),
        name: pod_name(&name, role),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(metadata.labels),
                annotations: Some(metadata.annotations),
                ..ObjectMeta::default()
            }),
            spec: Some(spec),
        },
        owner: object.controller_owner_ref(&()),
        labels,
    }
}

/// `<run>-<role>`, kept within the 63 characters a Pod's hostname allows.
pub fn pod_name(run: &str, role: &str) -> String {
    let keep = 63 - role.len() - 1;
    let run = if run.len() > keep {
        run[..keep].trim_end_matches(['-', '.'])
    } else {
        run
    };
    format!("{run}-{role}")
}

/// A label value (at most 63 characters, alphanumeric at both ends).
fn label_value(name: &str) -> String {
    let cut = if name.len() > 63 { &name[..63] } else { name };
    cut.trim_end_matches(['-', '.']).to_string()
}

/// Marks a run Running with its Pod.
pub fn started(status: &mut ExecRunStatus, pod: &str, generation: Option<i64>, ctx: &Context) {
    let now = ctx.now();
    status.phase = ExecPhase::Running;
    status.pod_name = Some(pod.to_string());
    status.start_time = Some(to_time(now));
    status.observed_generation = generation;
    let conditions = &mut status.conditions;
    conditions::set(
        conditions,
        "InProgress",
        true,
        "Running",
        "the command is running",
        generation,
        now,
    );
    conditions::running(conditions, "the run is in progress", generation, now);
}

/// Marks a run Succeeded.
pub fn succeeded(status: &mut ExecRunStatus, message: &str, generation: Option<i64>, ctx: &Context) {
    let now = ctx.now();
    status.phase = ExecPhase::Succeeded;
    status.completion_time = Some(to_time(now));
    status.observed_generation = generation;
    let conditions = &mut status.conditions;
    conditions::set(conditions, "InProgress", false, "Succeeded", message, generation, now);
    conditions::succeeded(conditions, message, generation, now);
    conditions::set(conditions, "Successful", true, "Succeeded", message, generation, now);
}

/// Marks a run Failed with `error`'s reason and message.
pub fn failed(status: &mut ExecRunStatus, error: &Error, generation: Option<i64>, ctx: &Context) {
    let now = ctx.now();
    status.phase = ExecPhase::Failed;
    status.completion_time = Some(to_time(now));
    status.observed_generation = generation;
    let conditions = &mut status.conditions;
    conditions::set(
        conditions,
        "InProgress",
        false,
        error.reason(),
        error.to_string(),
        generation,
        now,
    );
    conditions::failed(conditions, error, generation, now);
}

/// Records a problem that keeps a run Pending until it is fixed (a missing BackupStorage or
/// Secret): Ready False with the reason, phase unchanged.
pub fn waiting(status: &mut ExecRunStatus, error: &Error, generation: Option<i64>, ctx: &Context) {
    status.observed_generation = generation;
    conditions::waiting(&mut status.conditions, error, generation, ctx.now());
}

/// Writes `bytesTransferred` of `object`'s run every 10 s until the reporter is dropped.
pub fn report_progress<K>(api: Api<K>, object: &K, tally: Arc<Tally>) -> status::ProgressReporter
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    status::report_progress(
        api,
        object.clone(),
        PROGRESS_EVERY,
        move || serde_json::json!({ "bytesTransferred": tally.bytes() }),
    )
}

/// Parses the template's Pod spec, or says why it is not one.
pub fn pod_spec(template: &PodTemplate) -> Result<PodSpec> {
    template.pod_spec().map_err(Error::InvalidSpec)
}

/// Deletes a run's Pod (already gone is fine; a failure is logged: the owner reference lets
/// the garbage collector finish the job).
pub async fn delete_pod(ctx: &Context, namespace: &str, name: &str) {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let params = DeleteParams {
        grace_period_seconds: Some(1),
        ..DeleteParams::default()
    };
    match pods.delete(name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(error) => tracing::warn!(%error, %namespace, pod = %name, "deleting the run's Pod failed"),
    }
}

/// Writes the final status of `object`'s run ([`status::patch_final`]). An object deleted as
/// its run ended (perhaps created again already) has nowhere to keep it: the Event about the
/// outcome is then the record.
pub async fn write_final<K, S>(api: &Api<K>, object: &K, state: &S) -> Result<Option<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: serde::Serialize,
{
    match status::patch_final(api, object, state).await {
        Ok(object) => Ok(Some(object)),
        Err(error) if error.is_not_found() => Ok(None),
        Err(error) => Err(error),
    }
}
