//! Runs first. When many schedules tick together, the API server is the bottleneck, and every
//! write the scheduler sends while runs are being created delays those runs: the status of a
//! schedule whose run was just created, the deletion of a run its history limit no longer
//! keeps, an Event. Those writes wait here while any run creation is in flight (never longer
//! than [`MAX_WAIT`], so a steady stream of creations cannot starve them).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// The longest a write waits for run creations to finish.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// Counts run creations in flight; other writes wait for none to be.
#[derive(Default)]
pub struct RunsFirst {
    creating: AtomicUsize,
    idle: Notify,
}

/// A run creation in flight, until dropped.
pub struct Creating<'a>(&'a RunsFirst);

impl RunsFirst {
    /// Marks a run creation in flight until the guard is dropped.
    pub fn creating(&self) -> Creating<'_> {
        self.creating.fetch_add(1, Ordering::SeqCst);
        Creating(self)
    }

    /// Waits until no run creation is in flight, for at most [`MAX_WAIT`].
    pub async fn after_creations(&self) {
        let idle = async {
            loop {
                // Registered before the check, so a wake-up between the two is not lost.
                let notified = self.idle.notified();
                if self.creating.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(MAX_WAIT, idle).await;
    }
}

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        if self.0.creating.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_wait_for_creations_in_flight_and_go_when_none_are() {
        let gate = std::sync::Arc::new(RunsFirst::default());
        gate.after_creations().await; // nothing in flight: no wait
        let creation = gate.creating();
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.after_creations().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a write went while a creation was in flight");
        drop(creation);
        tokio::time::timeout(Duration::from_secs(60), waiting)
            .await
            .expect("the write was released when the creation ended")
            .expect("the waiting task");
    }
}
