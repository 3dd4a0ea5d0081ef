//! Events about Pods, written as the component that would write them on a real cluster
//! (events.k8s.io/v1, which `kubectl describe pod` and core/v1 readers both show).

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use serde_json::json;

/// One Event about `pod`: `kind` is `Normal` or `Warning`; `controller` the reporting
/// component (`default-scheduler`, `attachdetach-controller`).
pub(super) async fn record(
    client: &kube::Client,
    pod: &Pod,
    kind: &str,
    reason: &str,
    action: &str,
    note: &str,
    controller: &str,
) -> anyhow::Result<()> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let now = Timestamp::now();
    // client-go names Events `<object>.<unix nanoseconds in hex>`.
    let event_name = format!("{name}.{:x}", now.as_nanosecond());
    let event: Event = serde_json::from_value(json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": { "name": event_name, "namespace": namespace },
        "eventTime": MicroTime(now),
        "reportingController": controller,
        "reportingInstance": format!("{controller}-stowage-testbed"),
        "action": action,
        "reason": reason,
        "type": kind,
        "note": note,
        "regarding": {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": namespace,
            "name": name,
            "uid": pod.metadata.uid,
            "resourceVersion": pod.metadata.resource_version,
        },
    }))?;
    Api::<Event>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &event)
        .await?;
    Ok(())
}
