//! Events about schedules, published off the reconcile path.
//!
//! A tick's pass must not wait for its Events: with 1,000 schedules ticking together, three
//! awaited Event writes per schedule stood between the ticks of later schedules and their
//! runs. Events go into a bounded queue that a few tasks publish from, after the runs being
//! created (see [`crate::priority`]); they are facts for people (the status and the metrics
//! carry the same), so when the queue is full one is dropped with a warning rather than
//! slowing the schedules down.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use stowage_api::BackupSchedule;
use stowage_operator::Context;
use tokio::sync::{Notify, Semaphore, mpsc};

use crate::priority::RunsFirst;

/// Events waiting to be published, at most.
const QUEUE: usize = 10_000;
/// Event writes in flight at once: few, so they never crowd out the runs' creation.
const PUBLISHERS: usize = 4;

/// One Event to publish.
struct Note {
    schedule: Arc<BackupSchedule>,
    warning: bool,
    reason: &'static str,
    message: String,
}

/// The queue of Events and its publishers.
pub struct EventQueue {
    sender: mpsc::Sender<Note>,
    pending: Arc<Pending>,
}

#[derive(Default)]
struct Pending {
    count: AtomicUsize,
    drained: Notify,
}

impl EventQueue {
    /// A queue publishing through `kit` from a background task, which ends when the
    /// queue is dropped and everything in it is published.
    pub fn start(kit: Arc<Context>, runs_first: Arc<RunsFirst>) -> EventQueue {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let pending = Arc::new(Pending::default());
        tokio::spawn(publish(kit, runs_first, receiver, pending.clone()));
        EventQueue { sender, pending }
    }

    /// Queues a Normal Event about `schedule`.
    pub fn normal(&self, schedule: &Arc<BackupSchedule>, reason: &'static str, message: impl Into<String>) {
        self.push(schedule, false, reason, message.into());
    }

    /// Queues a Warning Event about `schedule`.
    pub fn warning(&self, schedule: &Arc<BackupSchedule>, reason: &'static str, message: impl Into<String>) {
        self.push(schedule, true, reason, message.into());
    }

    fn push(&self, schedule: &Arc<BackupSchedule>, warning: bool, reason: &'static str, message: String) {
        let note = Note {
            schedule: schedule.clone(),
            warning,
            reason,
            message,
        };
        self.pending.count.fetch_add(1, Ordering::SeqCst);
        if let Err(error) = self.sender.try_send(note) {
            self.pending.done();
            let name = schedule.metadata.name.as_deref().unwrap_or("");
            tracing::warn!(schedule = name, reason, %error, "Event not published: the Event queue is full");
        }
    }

    /// Waits until every queued Event is published, for at most `limit`: on shutdown, so
    /// the last Events are not lost with the process.
    pub async fn flush(&self, limit: Duration) {
        let drained = async {
            loop {
                let notified = self.pending.drained.notified();
                if self.pending.count.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(limit, drained).await.is_err() {
            let left = self.pending.count.load(Ordering::SeqCst);
            tracing::warn!(left, "stopping with Events not yet published");
        }
    }
}

impl Pending {
    fn done(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.drained.notify_waiters();
        }
    }
}

async fn publish(
    kit: Arc<Context>,
    runs_first: Arc<RunsFirst>,
    mut receiver: mpsc::Receiver<Note>,
    pending: Arc<Pending>,
) {
    let publishers = Arc::new(Semaphore::new(PUBLISHERS));
    while let Some(note) = receiver.recv().await {
        runs_first.after_creations().await;
        let Ok(permit) = publishers.clone().acquire_owned().await else {
            break;
        };
        let kit = kit.clone();
        let pending = pending.clone();
        tokio::spawn(async move {
            let schedule = note.schedule.as_ref();
            if note.warning {
                kit.warning(schedule, note.reason, note.message).await;
            } else {
                kit.normal(schedule, note.reason, note.message).await;
            }
            drop(permit);
            pending.done();
        });
    }
}
