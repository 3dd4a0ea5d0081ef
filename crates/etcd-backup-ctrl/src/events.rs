//! Events about EtcdBackups through the core/v1 Event API.
//!
//! The kit publishes through events.k8s.io/v1, whose validation before Kubernetes 1.22 refuses
//! every Event about a cluster-scoped object ("involvedObject.namespace does not match
//! event.namespace"). core/v1 accepts them in the `default` namespace on every version, which
//! is where `kubectl describe etcdbackup` looks for them.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};
use stowage_api::EtcdBackup;
use stowage_operator::Context;
use stowage_operator::conditions::to_time;
use stowage_operator::context::truncate;

/// Where Events about cluster-scoped objects live.
const EVENT_NAMESPACE: &str = "default";
/// Kubernetes limits an Event's message to 1 kB.
const MAX_MESSAGE: usize = 1000;

/// Publishes a Normal Event about `backup`.
pub async fn normal(ctx: &Context, backup: &EtcdBackup, reason: &str, message: impl Into<String>) {
    publish(ctx, backup, "Normal", reason, message.into()).await;
}

/// Publishes a Warning Event about `backup`.
pub async fn warning(ctx: &Context, backup: &EtcdBackup, reason: &str, message: impl Into<String>) {
    publish(ctx, backup, "Warning", reason, message.into()).await;
}

/// An Event that fails to publish is logged, never fatal: the status carries the same facts.
async fn publish(ctx: &Context, backup: &EtcdBackup, type_: &str, reason: &str, message: String) {
    let kind = EtcdBackup::kind(&());
    ctx.metrics.events.with_label_values(&[&kind, type_, reason]).inc();
    let now = to_time(ctx.now());
    let name = backup.name_any();
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}.")),
            namespace: Some(EVENT_NAMESPACE.to_string()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some(EtcdBackup::api_version(&()).into_owned()),
            kind: Some(kind.to_string()),
            name: Some(name.clone()),
            uid: backup.metadata.uid.clone(),
            resource_version: backup.metadata.resource_version.clone(),
            ..ObjectReference::default()
        },
        type_: Some(type_.to_string()),
        reason: Some(reason.to_string()),
        message: Some(truncate(message, MAX_MESSAGE)),
        count: Some(1),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        source: Some(EventSource {
            component: Some(ctx.controller.clone()),
            host: None,
        }),
        reporting_component: Some(ctx.controller.clone()),
        reporting_instance: Some(ctx.controller.clone()),
        ..Event::default()
    };
    let events: Api<Event> = Api::namespaced(ctx.client.clone(), EVENT_NAMESPACE);
    if let Err(error) = events.create(&PostParams::default(), &event).await {
        tracing::warn!(%error, %name, reason, "publishing an Event failed");
    }
}
