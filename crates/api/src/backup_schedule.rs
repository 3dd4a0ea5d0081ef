//! BackupSchedule (namespaced): creates backup runs of one kind on a cron schedule and
//! prunes them by history limits and grandfather-father-son retention.
//!
//! `///` comments are user documentation (`kubectl explain`); `//` comments are ours.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Label on every run a schedule creates: the schedule's name.
pub const SCHEDULE_LABEL: &str = "stowage.io/schedule";
/// Label on runs of cluster-scoped kinds: the schedule's namespace (they cannot have an owner).
pub const SCHEDULE_NAMESPACE_LABEL: &str = "stowage.io/schedule-namespace";
/// Label that exempts a run from history limits and retention when set to "true".
pub const KEEP_LABEL: &str = "stowage.io/keep";
/// Annotation on a schedule: any new value creates a run now.
pub const TRIGGER_ANNOTATION: &str = "stowage.io/trigger";
/// Annotation on a run: the schedule tick (RFC 3339, UTC) it was created for.
pub const SCHEDULED_AT_ANNOTATION: &str = "stowage.io/scheduled-at";

/// Runs a backup of one kind on a cron schedule, in a time zone, and keeps the history
/// you ask for: history limits for finished runs, and grandfather-father-son retention
/// (keep N hourly, daily, weekly, monthly, yearly) for successful ones.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stowage.io",
    version = "v1alpha1",
    kind = "BackupSchedule",
    doc = "Creates backups (ResourceBackup, ExecBackup, VolumeBackup or EtcdBackup) on a cron schedule and prunes old ones.",
    namespaced,
    plural = "backupschedules",
    shortname = "bsched",
    category = "stowage",
    status = "BackupScheduleStatus",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Kind", type_ = "string", json_path = ".spec.template.kind", priority = "1"),
    printcolumn(name = "Suspend", type_ = "boolean", json_path = ".spec.suspend"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Last", type_ = "date", json_path = ".status.lastScheduleTime"),
    printcolumn(name = "Next", type_ = "string", json_path = ".status.nextScheduleTime"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct BackupScheduleSpec {
    /// When to run, in cron syntax: five fields (minute hour day-of-month month day-of-week),
    /// optionally preceded by a seconds field, or one of `@hourly`, `@daily`, `@weekly`,
    /// `@monthly`, `@yearly`. A `CRON_TZ=<IANA zone> ` prefix sets the time zone, like
    /// `timeZone`. When both day fields are restricted, a day matching either runs.
    /// Examples: `0 2 * * *` (02:00 daily), `*/30 * * * * *` (every 30 seconds),
    /// `CRON_TZ=Europe/Berlin 0 2 * * 1-5`.
    #[schemars(length(min = 1))]
    pub schedule: String,
    /// IANA time zone the schedule is read in, e.g. `Europe/Berlin`. Default: UTC.
    /// A wall-clock time skipped by a daylight-saving change runs at the first instant
    /// after the change; a repeated one runs once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Stops creating runs while true. Runs already created continue; history limits
    /// and retention still apply. Ticks passed while suspended are not caught up.
    #[serde(default)]
    pub suspend: bool,
    /// What to do when a tick comes while a run of this schedule is still active:
    /// `Forbid` (default) skips the tick, `Replace` deletes the active run and starts a
    /// new one, `Allow` starts a new one regardless.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// How late a run may still start after its tick, in seconds (e.g. after the
    /// controller was down). Later ticks are skipped with a MissedSchedule Event. Without
    /// it, the latest missed tick always runs. Never more than one catch-up run is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub starting_deadline_seconds: Option<i64>,
    /// How many successful runs to keep when `retention` is not set. Default 3.
    #[serde(default = "default_successful_limit")]
    #[schemars(range(min = 0))]
    pub successful_runs_history_limit: i32,
    /// How many failed runs to keep. Default 1.
    #[serde(default = "default_failed_limit")]
    #[schemars(range(min = 0))]
    pub failed_runs_history_limit: i32,
    /// Grandfather-father-son retention of successful runs, read like restic's `forget`:
    /// a run kept by any rule is kept. When set, it replaces successfulRunsHistoryLimit.
    /// Deleting a run deletes its data too if the run's retainPolicy says so. A run
    /// labelled `stowage.io/keep: "true"` is never deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// The run to create at each tick.
    pub template: RunTemplate,
}

fn default_successful_limit() -> i32 {
    3
}

fn default_failed_limit() -> i32 {
    1
}

/// What a tick does while a run of the same schedule is active.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Start a new run regardless.
    Allow,
    /// Skip the tick.
    #[default]
    Forbid,
    /// Delete the active run, then start a new one.
    Replace,
}

/// Which successful runs to keep, counted from the most recently completed one.
/// Periods are calendar periods in the schedule's time zone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Keep the N most recent runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_last: Option<u32>,
    /// For the last N hours that have runs, keep the latest run of each hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_hourly: Option<u32>,
    /// For the last N days that have runs, keep the latest run of each day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_daily: Option<u32>,
    /// For the last N ISO weeks that have runs, keep the latest run of each week.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_weekly: Option<u32>,
    /// For the last N months that have runs, keep the latest run of each month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_monthly: Option<u32>,
    /// For the last N years that have runs, keep the latest run of each year.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_yearly: Option<u32>,
    /// Keep every run completed within this duration before the most recent run, as
    /// restic reads it: a combination of years, months, days and hours, e.g. `2y5m7d3h`
    /// or `36h` (`m` is months).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+y)?([0-9]+m)?([0-9]+d)?([0-9]+h)?$"))]
    pub keep_within: Option<String>,
}

/// The run a tick creates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunTemplate {
    /// Kind of the run, in group stowage.io/v1alpha1. ResourceBackup and EtcdBackup are
    /// cluster-scoped: only schedules in the controller's own namespace may create them.
    pub kind: RunKind,
    /// Labels and annotations added to each run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// The run's spec: that kind's spec, exactly as in a run you would create yourself.
    /// It is checked by the API server (a dry-run create) whenever the schedule changes.
    #[schemars(schema_with = "crate::shared::any_object")]
    pub spec: serde_json::Value,
}

/// The kinds a schedule can create.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RunKind {
    /// Kubernetes objects as YAML (cluster-scoped).
    ResourceBackup,
    /// A command's output in a Pod, e.g. a database dump (namespaced).
    ExecBackup,
    /// A snapshot or copy of a PersistentVolumeClaim (namespaced).
    VolumeBackup,
    /// An etcd snapshot (cluster-scoped).
    EtcdBackup,
}

impl RunKind {
    /// Every kind, in declaration order.
    pub const ALL: [RunKind; 4] = [
        RunKind::ResourceBackup,
        RunKind::ExecBackup,
        RunKind::VolumeBackup,
        RunKind::EtcdBackup,
    ];

    /// The kind's name, e.g. `ExecBackup`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::ResourceBackup => "ResourceBackup",
            RunKind::ExecBackup => "ExecBackup",
            RunKind::VolumeBackup => "VolumeBackup",
            RunKind::EtcdBackup => "EtcdBackup",
        }
    }

    /// The kind's plural resource name, e.g. `execbackups`.
    pub fn plural(self) -> &'static str {
        match self {
            RunKind::ResourceBackup => "resourcebackups",
            RunKind::ExecBackup => "execbackups",
            RunKind::VolumeBackup => "volumebackups",
            RunKind::EtcdBackup => "etcdbackups",
        }
    }

    /// True for kinds whose objects live outside any namespace.
    pub fn cluster_scoped(self) -> bool {
        matches!(self, RunKind::ResourceBackup | RunKind::EtcdBackup)
    }
}

impl std::fmt::Display for RunKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Labels and annotations for each run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    /// Labels added to each run (besides `stowage.io/schedule`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to each run.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What the schedule last did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupScheduleStatus {
    /// `Ready` (the schedule is valid and creating runs), `Suspended`, `InvalidSchedule`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec that was last checked (schedule, time zone, template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The tick of the most recent run created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// The most recent tick that did not create a run (an active run under Forbid, or
    /// past startingDeadlineSeconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_skipped_time: Option<Time>,
    /// The next tick, unless suspended or invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// Completion time of the most recent successful run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,
    /// Runs not finished yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<RunReference>,
    /// The value of the `stowage.io/trigger` annotation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_trigger: Option<String>,
}

/// A run created by the schedule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunReference {
    /// Kind of the run.
    pub kind: String,
    /// Name of the run.
    pub name: String,
    /// Namespace of the run; empty for cluster-scoped kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_user_manifest_parses_with_defaults() {
        let yaml = r#"
schedule: "CRON_TZ=Europe/Berlin 0 2 * * *"
retention: {keepDaily: 7, keepWeekly: 4, keepMonthly: 12, keepWithin: 2y5m7d3h}
template:
  kind: ExecBackup
  metadata: {labels: {app: db}}
  spec: {storage: {name: minio}, command: [pg_dumpall]}
"#;
        let spec: BackupScheduleSpec = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(spec.concurrency_policy, ConcurrencyPolicy::Forbid);
        assert_eq!(spec.successful_runs_history_limit, 3);
        assert_eq!(spec.failed_runs_history_limit, 1);
        assert!(!spec.suspend);
        assert_eq!(spec.retention.as_ref().unwrap().keep_daily, Some(7));
        assert_eq!(spec.template.kind, RunKind::ExecBackup);
        assert!(!spec.template.kind.cluster_scoped());
        assert_eq!(spec.template.spec["storage"]["name"], "minio");
    }

    #[test]
    fn the_template_spec_keeps_unknown_fields_in_the_crd() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(BackupSchedule::crd()).unwrap();
        let template = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["template"]
            ["properties"]["spec"];
        assert_eq!(template["x-kubernetes-preserve-unknown-fields"], true);
        assert_eq!(template["type"], "object");
    }
}
