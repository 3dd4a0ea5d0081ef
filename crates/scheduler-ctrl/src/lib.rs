//! The scheduler: BackupSchedules create backup runs (ResourceBackup, ExecBackup,
//! VolumeBackup, EtcdBackup) on cron schedules in a time zone, and prune finished runs
//! by history limits and grandfather-father-son retention.
//!
//! The pure parts ([`schedule`], [`naming`], [`retention`]) decide; the reconciler only
//! reads the cluster, asks them, and writes what they decided.

pub mod error;
pub mod naming;
pub mod retention;
pub mod schedule;

pub use error::Error;
pub use schedule::{Due, Plan, Schedule};
