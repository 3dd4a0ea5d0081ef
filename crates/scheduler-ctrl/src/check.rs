//! The first step of a reconcile, pure: can this schedule work as written, and may it
//! create its kind from its namespace?

use chrono_tz::Tz;
use stowage_api::BackupScheduleSpec;

use crate::retention::{Policy, Rules};
use crate::schedule::Schedule;

/// A schedule that can run: its parsed cron expression and cleanup policy.
#[derive(Debug, Clone)]
pub struct Checked {
    pub schedule: Schedule,
    pub policy: Policy,
}

/// Why a schedule creates no runs until it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable PascalCase reason: condition reason, Event reason.
    pub reason: &'static str,
    /// For the user: what is wrong and what to do.
    pub message: String,
}

/// Reason of a tenant schedule asking for a cluster-scoped kind.
pub const CLUSTER_SCOPED_FORBIDDEN: &str = "ClusterScopedKindForbidden";
/// Reason of a schedule whose cron expression or time zone cannot be used.
pub const INVALID_SCHEDULE: &str = "InvalidSchedule";
/// Reason of a schedule whose template or retention is invalid.
pub const INVALID_SPEC: &str = "InvalidSpec";

/// Checks `spec` of a schedule in `namespace`; `controller_namespace` is the only
/// namespace whose schedules may create cluster-scoped kinds, since a tenant who may
/// write schedules in its namespace must not trigger cluster-wide backups.
pub fn check(spec: &BackupScheduleSpec, namespace: &str, controller_namespace: &str) -> Result<Checked, Refusal> {
    let schedule = Schedule::parse(&spec.schedule, spec.time_zone.as_deref()).map_err(|error| Refusal {
        reason: INVALID_SCHEDULE,
        message: error.to_string(),
    })?;
    let kind = spec.template.kind;
    if kind.cluster_scoped() && namespace != controller_namespace {
        return Err(Refusal {
            reason: CLUSTER_SCOPED_FORBIDDEN,
            message: format!(
                "{kind} is cluster-scoped: only BackupSchedules in namespace '{controller_namespace}' may create it; \
                 ask a cluster administrator to create this schedule there"
            ),
        });
    }
    if !spec.template.spec.is_object() {
        return Err(Refusal {
            reason: INVALID_SPEC,
            message: format!("template.spec must be an object: a {kind} spec"),
        });
    }
    let retention = spec
        .retention
        .as_ref()
        .map(Rules::from_api)
        .transpose()
        .map_err(|error| Refusal {
            reason: INVALID_SPEC,
            message: error.to_string(),
        })?;
    let zone: Tz = schedule.zone();
    Ok(Checked {
        policy: Policy {
            successful_limit: usize::try_from(spec.successful_runs_history_limit).unwrap_or(0),
            failed_limit: usize::try_from(spec.failed_runs_history_limit).unwrap_or(0),
            retention,
            zone,
        },
        schedule,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(yaml: &str) -> BackupScheduleSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn tenants_may_not_schedule_cluster_scoped_kinds() {
        let etcd = spec("{schedule: '@hourly', template: {kind: EtcdBackup, spec: {}}}");
        let refusal = check(&etcd, "team-a", "stowage-system").unwrap_err();
        assert_eq!(refusal.reason, CLUSTER_SCOPED_FORBIDDEN);
        assert!(refusal.message.contains("'stowage-system'"), "{}", refusal.message);
        assert!(check(&etcd, "stowage-system", "stowage-system").is_ok());
        let exec = spec("{schedule: '@hourly', template: {kind: ExecBackup, spec: {}}}");
        assert!(check(&exec, "team-a", "stowage-system").is_ok());
    }

    #[test]
    fn bad_schedules_templates_and_retention_are_refused() {
        let cron = spec("{schedule: '99 * * * *', template: {kind: ExecBackup, spec: {}}}");
        assert_eq!(check(&cron, "a", "a").unwrap_err().reason, INVALID_SCHEDULE);
        let zone = spec("{schedule: '@daily', timeZone: Nowhere, template: {kind: ExecBackup, spec: {}}}");
        assert_eq!(check(&zone, "a", "a").unwrap_err().reason, INVALID_SCHEDULE);
        let template = spec("{schedule: '@daily', template: {kind: ExecBackup, spec: [1]}}");
        assert_eq!(check(&template, "a", "a").unwrap_err().reason, INVALID_SPEC);
        let within = spec("{schedule: '@daily', retention: {keepWithin: 7w}, template: {kind: ExecBackup, spec: {}}}");
        assert_eq!(check(&within, "a", "a").unwrap_err().reason, INVALID_SPEC);
        let fine = spec(
            "{schedule: 'CRON_TZ=Europe/Berlin 0 2 * * *', retention: {keepDaily: 7}, \
             template: {kind: ExecBackup, spec: {}}}",
        );
        let checked = check(&fine, "a", "a").unwrap();
        assert_eq!(checked.policy.zone, chrono_tz::Europe::Berlin);
        assert_eq!(checked.policy.retention.unwrap().daily, 7);
    }
}
