//! Events (core/v1), a repeated one folded into a single Event that shows its latest message
//! and a count.
//!
//! kube's `Recorder` (events.k8s.io/v1) folds an Event that repeats (same object, type and
//! reason) into a series, but keeps the note of the first one: a schedule's `RunCreated` went
//! on naming its first run at every tick, and a failure whose cause changed went on showing the
//! old cause. It cannot do otherwise: through events.k8s.io/v1 an API server since 1.22 lets an
//! update change only `series` (the note, count and timestamps are immutable there; see
//! `ValidateEventUpdate`). Through core/v1 the same update keeps the legacy rules, under which
//! `message`, `count` and `lastTimestamp` may change, as client-go's core/v1 aggregation does
//! ("combined from similar events"). So Events go through core/v1, on 1.20 and on current
//! servers alike: `kubectl get events` and `kubectl describe` show the latest message with its
//! count (events.k8s.io/v1 readers see the same Event with `deprecatedCount`), and an object
//! that repeats itself every minute still has one Event per reason rather than one per repeat.
//!
//! Events about cluster-scoped objects go into `default`, where `kubectl describe` looks for
//! them.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::conditions::to_time;

/// Where Events about cluster-scoped objects live.
const CLUSTER_EVENTS_NAMESPACE: &str = "default";
/// A series not repeated for this long ends; the next repeat starts a new Event (kube's
/// and client-go's window).
const SERIES_WINDOW: Duration = Duration::minutes(6);
/// Series remembered at most (client-go's cache size); the stalest is forgotten first.
const MAX_SERIES: usize = 4096;

/// Publishes Events for one controller and remembers its recent series.
pub(super) struct Recorder {
    client: kube::Client,
    controller: String,
    instance: String,
    series: Mutex<HashMap<Key, Series>>,
}

/// What makes two Events the same Event: the object, the type and the reason.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    namespace: String,
    kind: String,
    name: String,
    uid: String,
    type_: String,
    reason: String,
}

/// An Event already published: where it is, how often, and when last.
#[derive(Clone)]
struct Series {
    name: String,
    count: i32,
    last: DateTime<Utc>,
}

impl Recorder {
    pub(super) fn new(client: kube::Client, controller: &str, instance: Option<String>) -> Recorder {
        Recorder {
            client,
            controller: controller.to_string(),
            instance: instance.unwrap_or_else(|| controller.to_string()),
            series: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes an Event about `regarding`, or repeats the one with the same type and reason
    /// if it was published within the series window: its message becomes `note`, its count
    /// grows and its `lastTimestamp` moves on.
    pub(super) async fn publish(
        &self,
        regarding: ObjectReference,
        type_: &str,
        reason: &str,
        note: String,
    ) -> Result<(), kube::Error> {
        // Real time, not the context's clock: the API server expires Events in real time.
        let now = Utc::now();
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| CLUSTER_EVENTS_NAMESPACE.to_string());
        let key = Key {
            namespace: namespace.clone(),
            kind: regarding.kind.clone().unwrap_or_default(),
            name: regarding.name.clone().unwrap_or_default(),
            uid: regarding.uid.clone().unwrap_or_default(),
            type_: type_.to_string(),
            reason: reason.to_string(),
        };
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        if let Some(known) = self.recent(&key, now) {
            let count = known.count + 1;
            let patch = json!({"message": note, "count": count, "lastTimestamp": to_time(now)});
            match events
                .patch(&known.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.remember(
                        key,
                        Series {
                            name: known.name,
                            count,
                            last: now,
                        },
                    );
                    return Ok(());
                }
                // Expired (the API server keeps Events for an hour) or deleted: start anew.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(error),
            }
        }
        let time: Time = to_time(now);
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:x}",
                    key.name,
                    now.timestamp_nanos_opt().unwrap_or_default()
                )),
                namespace: Some(namespace),
                ..ObjectMeta::default()
            },
            involved_object: regarding,
            type_: Some(type_.to_string()),
            reason: Some(reason.to_string()),
            action: Some(reason.to_string()),
            message: Some(note),
            count: Some(1),
            first_timestamp: Some(time.clone()),
            last_timestamp: Some(time),
            source: Some(EventSource {
                component: Some(self.controller.clone()),
                host: None,
            }),
            reporting_component: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        let created = events.create(&PostParams::default(), &event).await?;
        let name = created.metadata.name.unwrap_or_default();
        self.remember(
            key,
            Series {
                name,
                count: 1,
                last: now,
            },
        );
        Ok(())
    }

    /// The series of `key`, if it was repeated within the window.
    fn recent(&self, key: &Key, now: DateTime<Utc>) -> Option<Series> {
        let series = self.series.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        series.get(key).filter(|s| now - s.last < SERIES_WINDOW).cloned()
    }

    /// Remembers `key`'s series, forgetting ended series (and, when still full, the stalest).
    fn remember(&self, key: Key, latest: Series) {
        let mut series = self.series.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if series.len() >= MAX_SERIES && !series.contains_key(&key) {
            let now = latest.last;
            series.retain(|_, s| now - s.last < SERIES_WINDOW);
            if series.len() >= MAX_SERIES
                && let Some(stalest) = series.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| k.clone())
            {
                series.remove(&stalest);
            }
        }
        series.insert(key, latest);
    }
}
