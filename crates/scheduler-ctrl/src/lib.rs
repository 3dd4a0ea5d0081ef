//! The scheduler: BackupSchedules create backup runs (ResourceBackup, ExecBackup,
//! VolumeBackup, EtcdBackup) on cron schedules in a time zone, and prune finished runs
//! by history limits and grandfather-father-son retention.
//!
//! The pure parts ([`schedule`], [`naming`], [`retention`], [`check`]) decide; the
//! [`reconcile`]r only reads the cluster, asks them, and writes what they decided.
//! [`controller::start`] is what `main` hands to the kit's runner; tests build a
//! [`SchedulerContext`] on their own kit [`Context`](stowage_operator::Context) (with
//! its own namespace and clock) and call [`controller::run`].

pub mod check;
pub mod controller;
pub mod error;
pub mod events;
pub mod memory;
pub mod metrics;
pub mod naming;
pub mod priority;
pub mod reconcile;
pub mod retention;
pub mod runs;
pub mod schedule;
pub mod store;

pub use controller::{CONTROLLER, SchedulerContext, run, start};
pub use error::Error;
pub use schedule::{Due, Plan, Schedule};
