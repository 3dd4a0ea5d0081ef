//! The reconcile context every controller shares: the client, the controller's
//! identity and namespace, Event publishing, metrics, a clock, and per-object backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use kube::Resource;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use recorder::Recorder;

mod recorder;

/// What time it is. Injectable so schedule logic can be tested against the real
/// apiserver with a clock the test controls.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Kubernetes limits an Event's note to 1 kB.
const MAX_EVENT_NOTE: usize = 1000;

/// Shared state of one controller process.
pub struct Context {
    /// Client for the cluster.
    pub client: kube::Client,
    /// The controller's name, e.g. `exec-backup-ctrl`: the Events' reporting controller.
    pub controller: String,
    /// The namespace the controller runs in (Secrets it may read for cluster-wide kinds live here).
    pub namespace: String,
    /// Shared metrics; controllers may register more in `metrics.registry`.
    pub metrics: Arc<Metrics>,
    /// Only watch namespaced kinds in this namespace (None: every namespace). Lets a team run
    /// its own controller for its namespace, and tests run controllers side by side.
    pub watch_namespace: Option<String>,
    /// Cancelled when the controller must stop (SIGTERM, lost leadership). Long runs watch it
    /// to abort their uploads cleanly and record why, rather than be killed mid-write.
    pub shutdown: CancellationToken,
    recorder: Recorder,
    clock: Clock,
    pub(crate) failures: Mutex<HashMap<String, u32>>,
}

impl AsRef<Context> for Context {
    fn as_ref(&self) -> &Context {
        self
    }
}

impl Context {
    /// A context for `controller` running in `namespace`. `instance` (the Pod name) tells
    /// replicas apart in Events.
    pub fn new(
        client: kube::Client,
        controller: &str,
        namespace: &str,
        instance: Option<String>,
        metrics: Arc<Metrics>,
    ) -> Context {
        Context {
            recorder: Recorder::new(client.clone(), controller, instance),
            client,
            controller: controller.to_string(),
            namespace: namespace.to_string(),
            metrics,
            watch_namespace: None,
            shutdown: CancellationToken::new(),
            clock: Arc::new(Utc::now),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The same context reading time from `clock`.
    pub fn with_clock(mut self, clock: Clock) -> Context {
        self.clock = clock;
        self
    }

    /// The same context watching only `namespace`.
    pub fn watching(mut self, namespace: Option<String>) -> Context {
        self.watch_namespace = namespace;
        self
    }

    /// The Api a controller of namespaced kind `K` watches: one namespace or all.
    pub fn watched<K>(&self) -> kube::Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match &self.watch_namespace {
            Some(namespace) => kube::Api::namespaced(self.client.clone(), namespace),
            None => kube::Api::all(self.client.clone()),
        }
    }

    /// The current time, from the context's clock.
    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// Publishes a Normal Event about `object`. `reason` is a stable PascalCase word (it is
    /// also the metric label); `message` is for people and must never carry a secret.
    pub async fn normal<K: Resource<DynamicType = ()>>(&self, object: &K, reason: &str, message: impl Into<String>) {
        self.publish(object, "Normal", reason, message.into()).await;
    }

    /// Publishes a Warning Event about `object`.
    pub async fn warning<K: Resource<DynamicType = ()>>(&self, object: &K, reason: &str, message: impl Into<String>) {
        self.publish(object, "Warning", reason, message.into()).await;
    }

    /// An Event that fails to publish is logged, never fatal: the status carries the same facts.
    async fn publish<K: Resource<DynamicType = ()>>(&self, object: &K, type_: &str, reason: &str, note: String) {
        let kind = K::kind(&());
        self.metrics.events.with_label_values(&[&kind, type_, reason]).inc();
        let note = truncate(note, MAX_EVENT_NOTE);
        let published = self.recorder.publish(object.object_ref(&()), type_, reason, note).await;
        if let Err(error) = published {
            tracing::warn!(%error, kind = %kind, name = object.meta().name.as_deref().unwrap_or(""), reason, "publishing an Event failed");
        }
    }
}

/// `text` cut to at most `max` bytes on a character boundary, marked when cut.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_character_boundaries() {
        assert_eq!(truncate("short".into(), 10), "short");
        let cut = truncate("ééééééééé".into(), 8);
        assert!(cut.len() <= 8 && cut.ends_with('…'), "{cut}");
    }
}
