//! The status of a VolumeBackup: one condition per step, plus Ready and Failed for the whole.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt;
use stowage_api::{VolumeBackupPhase, VolumeBackupStatus, VolumeStatus};
use stowage_operator::Error;
use stowage_operator::conditions::{self, to_time};

/// The steps of a backup, each a condition type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// True while the application may be frozen (pre-hooks started, post-hooks not yet run).
    Frozen,
    /// Every snapshot has its cut point.
    SnapshotsCreated,
    /// The post-hooks ran.
    Thawed,
    /// Every snapshot is ready to use.
    SnapshotsReady,
    /// Every snapshot's files are in storage (with `copy`).
    Copied,
}

impl Step {
    /// The condition type, which is also the reason and the Event reason of the step done.
    pub fn name(self) -> &'static str {
        match self {
            Step::Frozen => "Frozen",
            Step::SnapshotsCreated => "SnapshotsCreated",
            Step::Thawed => "Thawed",
            Step::SnapshotsReady => "SnapshotsReady",
            Step::Copied => "Copied",
        }
    }
}

/// Sets the condition of `step`.
pub fn set(
    state: &mut VolumeBackupStatus,
    step: Step,
    value: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: DateTime<Utc>,
) {
    conditions::set(
        &mut state.conditions,
        step.name(),
        value,
        reason,
        message,
        generation,
        now,
    );
}

/// `step`'s condition False with `error`'s reason and message.
pub fn step_failed(
    state: &mut VolumeBackupStatus,
    step: Step,
    error: &Error,
    generation: Option<i64>,
    now: DateTime<Utc>,
) {
    set(state, step, false, error.reason(), error.to_string(), generation, now);
}

/// True when `step`'s condition is True.
pub fn is_true(state: &VolumeBackupStatus, step: Step) -> bool {
    conditions::is_true(&state.conditions, step.name())
}

/// True when a freeze began (the Frozen condition was set, whatever its status: a pre-hook
/// that failed may have frozen its application all the same) and no thaw has succeeded since.
pub fn may_be_frozen(state: &VolumeBackupStatus) -> bool {
    conditions::find(&state.conditions, Step::Frozen.name()).is_some() && !is_true(state, Step::Thawed)
}

/// The status record of a claim, with what a restore needs to recreate it.
pub fn volume_of(claim: &PersistentVolumeClaim) -> VolumeStatus {
    let spec = claim.spec.as_ref();
    VolumeStatus {
        pvc: claim.name_any(),
        storage_class_name: spec.and_then(|s| s.storage_class_name.clone()),
        access_modes: spec.and_then(|s| s.access_modes.clone()).unwrap_or_default(),
        capacity: spec
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage").cloned()),
        ..VolumeStatus::default()
    }
}

/// Running, with the start time.
pub fn started(state: &mut VolumeBackupStatus, generation: Option<i64>, now: DateTime<Utc>) {
    state.phase = VolumeBackupPhase::Running;
    state.start_time = Some(to_time(now));
    state.observed_generation = generation;
    conditions::running(&mut state.conditions, "the backup is in progress", generation, now);
}

/// Succeeded.
pub fn succeeded(state: &mut VolumeBackupStatus, message: &str, generation: Option<i64>, now: DateTime<Utc>) {
    state.phase = VolumeBackupPhase::Succeeded;
    state.completion_time = Some(to_time(now));
    state.observed_generation = generation;
    conditions::succeeded(&mut state.conditions, message, generation, now);
}

/// Failed with `error`'s reason.
pub fn failed(state: &mut VolumeBackupStatus, error: &Error, generation: Option<i64>, now: DateTime<Utc>) {
    state.phase = VolumeBackupPhase::Failed;
    state.completion_time = Some(to_time(now));
    state.observed_generation = generation;
    conditions::failed(&mut state.conditions, error, generation, now);
}

/// Still Pending: something it needs is missing (retried).
pub fn waiting(state: &mut VolumeBackupStatus, error: &Error, generation: Option<i64>, now: DateTime<Utc>) {
    state.observed_generation = generation;
    conditions::waiting(&mut state.conditions, error, generation, now);
}
