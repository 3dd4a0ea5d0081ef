//! Deleting a running VolumeRestore cancels it (`stowage_operator::cancel`).
//!
//! A restore is one long reconcile, and kube never reconciles an object while its reconcile
//! runs: without this, a deletion would wait for the whole restore (a fill from a copy can take
//! hours). The controller's watch cancels the run instead; every wait of the restore (the old
//! Pods gone, a claim bound, the fill Pod started, the fill's stream, the workload ready) stops
//! at once with [`stopped`], and the restore then takes its failure path: the rollback puts the
//! workload back on its old claims and replicas and deletes the new claims, so an application
//! is never left scaled to zero by a deletion. A controller shutting down stops the same waits,
//! but leaves the restore Running for the next controller to resume ([`interrupted`]).

use std::future::Future;
use std::time::Duration;

use stowage_operator::cancel::{CANCELLED, RunGuard};
use stowage_operator::{Error, Result};

/// How often a deleted restore's rollback retries a busy or unreachable API server, and how
/// long in all: nothing reconciles a deleted object again, so the retries happen here.
pub const ROLLBACK_RETRY: Duration = Duration::from_secs(2);
pub const ROLLBACK_ATTEMPTS: u32 = 30;

/// `wait`'s result, or [`stopped`] as soon as the run is cancelled (`wait` is then dropped).
pub async fn until_cancelled<T>(cancel: &RunGuard, wait: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::select! {
        result = wait => result,
        () = cancel.cancelled() => Err(stopped()),
    }
}

/// What a wait stopped by the cancellation returns; [`RunGuard::stop`] says why it was.
pub fn stopped() -> Error {
    Error::permanent(CANCELLED, "the restore was stopped")
}

/// The error a restore whose object was deleted rolls back with. `error` is how the run
/// ended: stopped by the deletion, or failed on its own just before (then the message says so,
/// since the deletion was not what ended it).
pub fn deleted(error: &Error) -> Error {
    let message = if error.reason() == CANCELLED {
        "the VolumeRestore was deleted during its restore, which was stopped".to_string()
    } else {
        format!(
            "the VolumeRestore was deleted during its restore, which had failed ({}: {error})",
            error.reason()
        )
    };
    Error::permanent(CANCELLED, message)
}

/// A restore stopped by the controller's shutdown: its steps so far are in status, and the
/// next controller (Running, resumed) finishes it; retried like any transient error.
pub fn interrupted() -> Error {
    Error::transient(
        "Interrupted",
        "the controller stopped during the restore; every step so far is in status, and the next controller resumes it",
    )
}
