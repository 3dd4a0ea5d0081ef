//! Status conditions as Kubernetes tools expect them: one entry per type,
//! `observedGeneration` always current, `lastTransitionTime` moved only when the
//! status flips, so `kubectl wait --for=condition=…` and dashboards see real transitions.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::Error;

/// The condition that says whether an object is done and well: what
/// `kubectl wait --for=condition=Ready` and the printer columns read.
pub const READY: &str = "Ready";
/// The condition a failed run carries, True, with the failure's reason.
pub const FAILED: &str = "Failed";

/// A chrono time as a Kubernetes `Time` (second precision, as the API serialises it).
pub fn to_time(at: DateTime<Utc>) -> Time {
    Time(Timestamp::from_second(at.timestamp()).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// A Kubernetes `Time` as a chrono time.
pub fn from_time(time: &Time) -> DateTime<Utc> {
    DateTime::from_timestamp(time.0.as_second(), 0).unwrap_or_default()
}

/// Sets condition `type_` to `status` with `reason` and `message`, for `generation`.
/// Returns true when anything a user could see changed.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> bool {
    let status = if status { "True" } else { "False" }.to_string();
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            let flipped = existing.status != status;
            let changed = flipped
                || existing.reason != reason
                || existing.message != message
                || existing.observed_generation != generation;
            if flipped {
                existing.last_transition_time = to_time(now);
            }
            existing.status = status;
            existing.reason = reason.to_string();
            existing.message = message;
            existing.observed_generation = generation;
            changed
        }
        None => {
            conditions.push(Condition {
                type_: type_.to_string(),
                status,
                reason: reason.to_string(),
                message,
                observed_generation: generation,
                last_transition_time: to_time(now),
            });
            true
        }
    }
}

/// The condition of type `type_`, if set.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when condition `type_` is set and True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Removes condition `type_`; true when it was there.
pub fn remove(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    conditions.len() != before
}

/// A run in progress: Ready False, reason Running, with `message`.
pub fn running(conditions: &mut Vec<Condition>, message: &str, generation: Option<i64>, now: DateTime<Utc>) -> bool {
    set(conditions, READY, false, "Running", message, generation, now)
}

/// A run that succeeded: Ready True, reason Succeeded, with `message`.
pub fn succeeded(conditions: &mut Vec<Condition>, message: &str, generation: Option<i64>, now: DateTime<Utc>) -> bool {
    set(conditions, READY, true, "Succeeded", message, generation, now)
}

/// A run that failed: Ready False and Failed True, both with `error`'s reason and message.
pub fn failed(conditions: &mut Vec<Condition>, error: &Error, generation: Option<i64>, now: DateTime<Utc>) -> bool {
    let message = error.to_string();
    let ready = set(conditions, READY, false, error.reason(), &message, generation, now);
    let failed = set(conditions, FAILED, true, error.reason(), message, generation, now);
    ready || failed
}

/// A run kept Pending by something it needs that is missing (a BackupStorage, a Secret): Ready
/// False with `error`'s reason and message, retried until it is fixed.
pub fn waiting(conditions: &mut Vec<Condition>, error: &Error, generation: Option<i64>, now: DateTime<Utc>) -> bool {
    set(
        conditions,
        READY,
        false,
        error.reason(),
        error.to_string(),
        generation,
        now,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono::TimeZone;

    fn at(second: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + second, 0).unwrap()
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let mut conditions = Vec::new();
        assert!(set(
            &mut conditions,
            "Ready",
            false,
            "Pending",
            "waiting",
            Some(1),
            at(0)
        ));
        assert!(set(
            &mut conditions,
            "Ready",
            false,
            "StorageUnavailable",
            "down",
            Some(2),
            at(10)
        ));
        assert_eq!(conditions.len(), 1);
        assert_eq!(from_time(&conditions[0].last_transition_time), at(0));
        assert_eq!(conditions[0].observed_generation, Some(2));
        assert!(!set(
            &mut conditions,
            "Ready",
            false,
            "StorageUnavailable",
            "down",
            Some(2),
            at(20)
        ));
        assert!(set(
            &mut conditions,
            "Ready",
            true,
            "Succeeded",
            "done",
            Some(2),
            at(30)
        ));
        assert_eq!(from_time(&conditions[0].last_transition_time), at(30));
        assert!(is_true(&conditions, "Ready"));
        assert!(!is_true(&conditions, "Missing"));
        assert!(remove(&mut conditions, "Ready") && conditions.is_empty());
    }

    #[test]
    fn a_run_goes_running_then_waiting_then_failed_or_succeeded() {
        let mut conditions = Vec::new();
        running(&mut conditions, "the backup is in progress", Some(1), at(0));
        let missing = Error::MissingReference {
            reason: "StorageNotFound",
            message: "BackupStorage 'minio' not found".into(),
        };
        assert!(waiting(&mut conditions, &missing, Some(1), at(5)));
        let ready = find(&conditions, READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "StorageNotFound")
        );
        assert_eq!(ready.message, "BackupStorage 'minio' not found");
        assert_eq!(from_time(&ready.last_transition_time), at(0));

        let mut failing = conditions.clone();
        let error = Error::permanent("SnapshotFailed", "the disk array is on fire");
        assert!(failed(&mut failing, &error, Some(1), at(10)));
        assert!(!failed(&mut failing, &error, Some(1), at(20)));
        let types: Vec<&str> = failing.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [READY, FAILED]);
        assert!(is_true(&failing, FAILED) && !is_true(&failing, READY));
        assert!(
            failing
                .iter()
                .all(|c| c.reason == "SnapshotFailed" && c.message == "the disk array is on fire")
        );

        assert!(succeeded(&mut conditions, "3 snapshot(s) ready", Some(1), at(30)));
        assert!(is_true(&conditions, READY) && find(&conditions, FAILED).is_none());
        assert_eq!(find(&conditions, READY).unwrap().reason, "Succeeded");
        assert_eq!(from_time(&conditions[0].last_transition_time), at(30));
    }
}
