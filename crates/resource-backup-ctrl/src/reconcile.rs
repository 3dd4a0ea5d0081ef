//! What both reconcilers share: conditions for a run's phases, reading the Secrets of the
//! controller's namespace, and this crate's errors in the kit's terms.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use stowage_api::resource_backup::ENCRYPTION_CONFIG_KEY;
use stowage_operator::{Context, conditions, secrets};

use crate::encryption::EncryptionConfig;
use crate::error::Error;

/// Label value for cluster-scoped kinds in metrics.
pub const CLUSTER: &str = "_cluster";

/// This crate's error as the kit's: user errors wait for a change, missing references and
/// everything else are retried with backoff.
pub fn to_kit(error: Error) -> stowage_operator::Error {
    match error {
        Error::Missing { reason, message } => stowage_operator::Error::MissingReference { reason, message },
        Error::Core(core) => stowage_operator::Error::Core(core),
        other if other.awaits_change() => stowage_operator::Error::permanent(other.reason(), other.to_string()),
        other => stowage_operator::Error::transient(other.reason(), other.to_string()),
    }
}

/// Loads the EncryptionConfiguration from Secret `name` in the controller's namespace.
pub async fn encryption_config(
    ctx: &Context,
    name: Option<&str>,
) -> Result<Option<EncryptionConfig>, stowage_operator::Error> {
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Ok(None);
    };
    let source = format!("Secret '{}/{name}'", ctx.namespace);
    let text = secrets::key(&ctx.client, &ctx.namespace, name, ENCRYPTION_CONFIG_KEY).await?;
    EncryptionConfig::parse(&source, &text).map(Some).map_err(to_kit)
}

/// Sets Ready and InProgress for a run that is `phase` with `reason`.
pub fn set_conditions(
    list: &mut Vec<Condition>,
    ready: bool,
    in_progress: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    ctx: &Context,
) {
    let now = ctx.now();
    conditions::set(list, "Ready", ready, reason, message, generation, now);
    conditions::set(list, "InProgress", in_progress, reason, message, generation, now);
}

/// How often a running backup or restore writes its progress to status.
pub const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Writes `status.progress` of `object` (as `read` gives it) every 10 s while the run lasts:
/// the reports stop when the returned reporter is dropped.
pub fn report_progress<K>(
    api: kube::Api<K>,
    object: &K,
    read: impl Fn() -> serde_json::Value + Send + 'static,
) -> stowage_operator::status::ProgressReporter
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    stowage_operator::status::report_progress(
        api,
        object.clone(),
        PROGRESS_EVERY,
        move || serde_json::json!({ "progress": read() }),
    )
}
