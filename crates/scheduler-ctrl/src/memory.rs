//! What this process wrote that the watch caches may not show yet.
//!
//! Only the scheduler writes a schedule's status, so the status it last wrote is the newest
//! there is; the schedule in the controller's cache may be older (the watch has not delivered
//! the patch yet), and a pass that started from it would act on a tick twice or miss that a
//! run finished. Runs this process created or deleted are likewise overlaid on the run store
//! until its watch catches up.
//!
//! Entries are keyed by the schedule's UID (a schedule deleted and created again under the
//! same name starts afresh) and dropped when the schedule is deleted.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kube::{Resource, ResourceExt};
use stowage_api::{BackupSchedule, BackupScheduleStatus};

use crate::retention::Outcome;
use crate::runs::Run;

/// How long a write of ours may stay invisible to the watch before we stop overlaying it:
/// a watch that far behind is broken, and the watcher's relist will tell the truth.
const OVERLAY_FOR: Duration = Duration::from_secs(60);

/// The scheduler's own writes, per schedule.
#[derive(Default)]
pub struct Memory {
    schedules: Mutex<HashMap<String, Written>>,
}

#[derive(Default)]
struct Written {
    status: Option<BackupScheduleStatus>,
    created: Vec<(String, DateTime<Utc>, Instant)>,
    deleted: Vec<(String, Instant)>,
}

impl Memory {
    /// The newest status of `schedule`: the one we last wrote, else the cached object's.
    pub fn status(&self, schedule: &BackupSchedule) -> BackupScheduleStatus {
        let remembered = self
            .lock()
            .get(&uid(schedule))
            .and_then(|written| written.status.clone());
        remembered.or_else(|| schedule.status.clone()).unwrap_or_default()
    }

    /// Records a status written to the API server.
    pub fn wrote_status(&self, schedule: &BackupSchedule, status: &BackupScheduleStatus) {
        self.lock().entry(uid(schedule)).or_default().status = Some(status.clone());
    }

    /// Records run `name` (for `tick`) created for `schedule`.
    pub fn created(&self, schedule: &BackupSchedule, name: &str, tick: DateTime<Utc>) {
        let mut schedules = self.lock();
        let written = schedules.entry(uid(schedule)).or_default();
        written.created.push((name.to_string(), tick, Instant::now()));
    }

    /// Records run `name` of `schedule` deleted.
    pub fn deleted(&self, schedule: &BackupSchedule, name: &str) {
        let mut schedules = self.lock();
        let written = schedules.entry(uid(schedule)).or_default();
        written.deleted.push((name.to_string(), Instant::now()));
    }

    /// Lays our recent writes over `runs` read from the store: runs we created that the store
    /// does not show yet are active; runs we deleted that it still shows are terminating.
    /// Writes the store has caught up with, or that are too old to wait for, are forgotten.
    pub fn overlay(&self, schedule: &BackupSchedule, runs: &mut Vec<Run>) {
        let mut schedules = self.lock();
        let Some(written) = schedules.get_mut(&uid(schedule)) else {
            return;
        };
        let now = Instant::now();
        written.created.retain(|(name, tick, at)| {
            if runs.iter().any(|r| &r.name == name) || now.duration_since(*at) > OVERLAY_FOR {
                return false;
            }
            runs.push(Run {
                name: name.clone(),
                outcome: Outcome::Active,
                phase: None,
                time: *tick,
                pinned: false,
                terminating: false,
                trigger: None,
            });
            true
        });
        written.deleted.retain(|(name, at)| {
            let still_there = runs.iter_mut().find(|r| &r.name == name);
            match still_there {
                Some(run) if now.duration_since(*at) <= OVERLAY_FOR => {
                    run.terminating = true;
                    true
                }
                _ => false,
            }
        });
    }

    /// Forgets a deleted schedule.
    pub fn forget(&self, schedule: &BackupSchedule) {
        self.lock().remove(&uid(schedule));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Written>> {
        self.schedules.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Objects from the API server always have a UID; namespace and name only key fixtures.
fn uid(schedule: &BackupSchedule) -> String {
    schedule
        .meta()
        .uid
        .clone()
        .unwrap_or_else(|| format!("{}/{}", schedule.namespace().unwrap_or_default(), schedule.name_any()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use stowage_operator::conditions::to_time;

    fn schedule(uid: &str) -> BackupSchedule {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "stowage.io/v1alpha1", "kind": "BackupSchedule",
            "metadata": {"name": "db", "namespace": "team", "uid": uid},
            "spec": {"schedule": "@hourly", "template": {"kind": "ExecBackup", "spec": {}}},
            "status": {"lastTrigger": "from-the-cache"},
        }))
        .unwrap()
    }

    #[test]
    fn the_status_we_wrote_wins_over_the_cached_one_until_the_schedule_is_recreated() {
        let memory = Memory::default();
        let cached = schedule("u1");
        assert_eq!(memory.status(&cached).last_trigger.as_deref(), Some("from-the-cache"));
        let tick = DateTime::from_timestamp(1_795_000_000, 0).unwrap();
        let written = BackupScheduleStatus {
            last_schedule_time: Some(to_time(tick)),
            ..BackupScheduleStatus::default()
        };
        memory.wrote_status(&cached, &written);
        assert_eq!(memory.status(&cached), written);
        assert_eq!(
            memory.status(&schedule("u2")).last_trigger.as_deref(),
            Some("from-the-cache")
        );
        memory.forget(&cached);
        assert_eq!(memory.status(&cached).last_trigger.as_deref(), Some("from-the-cache"));
    }

    #[test]
    fn our_creations_and_deletions_show_until_the_store_catches_up() {
        let memory = Memory::default();
        let db = schedule("u1");
        let tick = DateTime::from_timestamp(1_795_000_000, 0).unwrap();
        let old = Run {
            name: "db-1".into(),
            outcome: Outcome::Succeeded,
            phase: Some("Succeeded".into()),
            time: tick,
            pinned: false,
            terminating: false,
            trigger: None,
        };
        memory.created(&db, "db-2", tick);
        memory.deleted(&db, "db-1");
        let mut runs = vec![old.clone()];
        memory.overlay(&db, &mut runs);
        assert_eq!(runs.len(), 2);
        assert!(runs[0].terminating && runs[1].name == "db-2" && runs[1].outcome == Outcome::Active);

        // The store caught up: db-1 gone, db-2 there (finished). Nothing is overlaid any more.
        let mut seen = old.clone();
        seen.name = "db-2".into();
        let mut runs = vec![seen];
        memory.overlay(&db, &mut runs);
        assert_eq!((runs.len(), runs[0].terminating), (1, false));
        let mut runs = vec![old];
        memory.overlay(&db, &mut runs);
        assert_eq!(
            (runs.len(), runs[0].terminating),
            (1, false),
            "forgotten once caught up"
        );
    }
}
