//! Runs as the API server sees them: objects of the template's kind, handled as
//! `DynamicObject`s so the scheduler needs no Rust type of any run kind.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::{Resource, ResourceExt};
use stowage_api::backup_schedule::{
    KEEP_LABEL, SCHEDULE_LABEL, SCHEDULE_NAMESPACE_LABEL, SCHEDULED_AT_ANNOTATION, TRIGGER_ANNOTATION,
};
use stowage_api::{BackupSchedule, RunKind, RunReference};
use stowage_operator::conditions::from_time;

use crate::retention::{Outcome, RunRecord};

/// The API resource of a run kind (group stowage.io, version v1alpha1).
pub fn api_resource(kind: RunKind) -> ApiResource {
    let gvk = GroupVersionKind::gvk(stowage_api::GROUP, stowage_api::VERSION, kind.as_str());
    ApiResource::from_gvk_with_plural(&gvk, kind.plural())
}

/// The Api the runs of `kind` created by a schedule in `namespace` live in.
pub fn api(client: &kube::Client, kind: RunKind, namespace: &str) -> Api<DynamicObject> {
    let resource = api_resource(kind);
    if kind.cluster_scoped() {
        Api::all_with(client.clone(), &resource)
    } else {
        Api::namespaced_with(client.clone(), namespace, &resource)
    }
}

/// The label selector of the runs of schedule `name` in `namespace`.
pub fn selector(kind: RunKind, namespace: &str, name: &str) -> String {
    if kind.cluster_scoped() {
        format!("{SCHEDULE_LABEL}={name},{SCHEDULE_NAMESPACE_LABEL}={namespace}")
    } else {
        format!("{SCHEDULE_LABEL}={name}")
    }
}

/// What a run is, as far as the schedule cares.
#[derive(Debug, Clone)]
pub struct Run {
    pub name: String,
    pub outcome: Outcome,
    /// Succeeded or Failed as the run's status says (for Events), if finished.
    pub phase: Option<String>,
    /// completionTime, or creation time when the run has none.
    pub time: DateTime<Utc>,
    pub pinned: bool,
    /// Being deleted: neither active nor a candidate for cleanup.
    pub terminating: bool,
    /// The `stowage.io/trigger` value of a manually triggered run.
    pub trigger: Option<String>,
}

impl Run {
    /// Reads a run object. Phases Succeeded, Failed and PartiallyFailed are finished;
    /// anything else (none yet, Pending, Running) is active.
    pub fn from_object(object: &DynamicObject) -> Run {
        let status = object.data.get("status");
        let phase = status
            .and_then(|s| s.get("phase"))
            .and_then(|p| p.as_str())
            .map(str::to_string);
        let outcome = match phase.as_deref() {
            Some("Succeeded") => Outcome::Succeeded,
            Some("Failed" | "PartiallyFailed") => Outcome::Failed,
            _ => Outcome::Active,
        };
        let completion = status
            .and_then(|s| s.get("completionTime"))
            .and_then(|t| t.as_str())
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        let created = object.metadata.creation_timestamp.as_ref().map(from_time);
        Run {
            name: object.name_any(),
            phase: (outcome != Outcome::Active).then_some(phase).flatten(),
            outcome,
            time: completion.or(created).unwrap_or_default(),
            pinned: object.labels().get(KEEP_LABEL).is_some_and(|v| v == "true"),
            terminating: object.metadata.deletion_timestamp.is_some(),
            trigger: object.annotations().get(TRIGGER_ANNOTATION).cloned(),
        }
    }

    /// The run as the cleanup planner sees it.
    pub fn record(&self) -> RunRecord {
        RunRecord {
            name: self.name.clone(),
            time: self.time,
            outcome: self.outcome,
            pinned: self.pinned,
        }
    }

    /// The status entry of an active run.
    pub fn reference(&self, kind: RunKind, namespace: &str) -> RunReference {
        RunReference {
            kind: kind.to_string(),
            name: self.name.clone(),
            namespace: (!kind.cluster_scoped()).then(|| namespace.to_string()),
        }
    }
}

/// Why a run is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause<'a> {
    /// A schedule tick.
    Tick,
    /// The `stowage.io/trigger` annotation, with its value.
    Manual(&'a str),
}

/// The run object of `schedule` for `tick`, named `name`: the template's labels,
/// annotations and spec, labelled with the schedule, and owned by it when namespaced
/// (a cluster-scoped object cannot have a namespaced owner).
pub fn build(schedule: &BackupSchedule, name: &str, tick: DateTime<Utc>, cause: Cause<'_>) -> DynamicObject {
    let template = &schedule.spec.template;
    let kind = template.kind;
    let namespace = schedule.namespace().unwrap_or_default();
    let mut labels: BTreeMap<String, String> = template.metadata.as_ref().map(|m| m.labels.clone()).unwrap_or_default();
    labels.insert(SCHEDULE_LABEL.to_string(), schedule.name_any());
    let mut annotations: BTreeMap<String, String> = template
        .metadata
        .as_ref()
        .map(|m| m.annotations.clone())
        .unwrap_or_default();
    annotations.insert(
        SCHEDULED_AT_ANNOTATION.to_string(),
        tick.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    if let Cause::Manual(value) = cause {
        annotations.insert(TRIGGER_ANNOTATION.to_string(), value.to_string());
    }
    let mut object = DynamicObject::new(name, &api_resource(kind)).data(serde_json::json!({
        "spec": template.spec,
    }));
    if kind.cluster_scoped() {
        labels.insert(SCHEDULE_NAMESPACE_LABEL.to_string(), namespace);
    } else {
        object = object.within(&namespace);
        object.metadata.owner_references = owner(schedule).map(|o| vec![o]);
    }
    object.metadata.labels = Some(labels);
    object.metadata.annotations = Some(annotations);
    object
}

fn owner(schedule: &BackupSchedule) -> Option<OwnerReference> {
    let mut reference = schedule.controller_owner_ref(&())?;
    reference.block_owner_deletion = Some(true);
    Some(reference)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_finished_run_reads_its_completion_time_and_a_pending_one_is_active() {
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "stowage.io/v1alpha1", "kind": "ExecBackup",
            "metadata": {"name": "n-1", "creationTimestamp": "2026-11-23T00:00:00Z",
                         "labels": {"stowage.io/keep": "true"}},
            "status": {"phase": "PartiallyFailed", "completionTime": "2026-11-23T00:05:00Z"},
        }))
        .unwrap();
        let run = Run::from_object(&object);
        assert_eq!(run.outcome, Outcome::Failed);
        assert_eq!(run.time.to_rfc3339(), "2026-11-23T00:05:00+00:00");
        assert!(run.pinned && !run.terminating);
        let pending: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "stowage.io/v1alpha1", "kind": "ExecBackup",
            "metadata": {"name": "n-2", "creationTimestamp": "2026-11-23T00:00:00Z"},
            "status": {"phase": "Running"},
        }))
        .unwrap();
        assert_eq!(Run::from_object(&pending).outcome, Outcome::Active);
    }

    #[test]
    fn runs_of_cluster_scoped_kinds_carry_the_schedule_namespace_instead_of_an_owner() {
        let schedule: BackupSchedule = serde_json::from_value(serde_json::json!({
            "apiVersion": "stowage.io/v1alpha1", "kind": "BackupSchedule",
            "metadata": {"name": "etcd", "namespace": "stowage-system", "uid": "u1"},
            "spec": {"schedule": "@hourly", "template": {"kind": "EtcdBackup",
                     "metadata": {"labels": {"team": "ops"}}, "spec": {"storage": {"name": "s3"}}}},
        }))
        .unwrap();
        let tick = DateTime::from_timestamp(1_795_000_000, 0).unwrap();
        let run = build(&schedule, "etcd-1795000000", tick, Cause::Tick);
        assert_eq!(run.metadata.namespace, None);
        assert_eq!(run.metadata.owner_references, None);
        let labels = run.metadata.labels.unwrap();
        assert_eq!(labels["stowage.io/schedule"], "etcd");
        assert_eq!(labels["stowage.io/schedule-namespace"], "stowage-system");
        assert_eq!(labels["team"], "ops");
        assert_eq!(run.data["spec"]["storage"]["name"], "s3");
        assert_eq!(run.types.unwrap().kind, "EtcdBackup");

        let mut namespaced = schedule.clone();
        namespaced.spec.template.kind = RunKind::ExecBackup;
        let run = build(&namespaced, "etcd-1795000000", tick, Cause::Manual("now"));
        assert_eq!(run.metadata.namespace.as_deref(), Some("stowage-system"));
        let owner = &run.metadata.owner_references.unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.controller), ("BackupSchedule", Some(true)));
        assert_eq!(run.metadata.annotations.unwrap()["stowage.io/trigger"], "now");
    }
}
