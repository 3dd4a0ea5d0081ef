//! A small pool of threads for CPU-bound block work (compressing and
//! inflating gzip members). Each submitted block gets a [`Ticket`]; callers
//! keep the tickets in submission order, so results come back in order while
//! the blocks are processed on every core.

use std::io;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

type Job<I, O> = (I, SyncSender<O>);

/// Threads that apply one function to submitted blocks.
pub(crate) struct Pool<I, O> {
    jobs: Option<SyncSender<Job<I, O>>>,
    threads: Vec<JoinHandle<()>>,
}

/// The future result of one submitted block.
pub(crate) struct Ticket<O>(Receiver<O>);

impl<O> Ticket<O> {
    /// Waits for the block's result.
    pub(crate) fn wait(self) -> io::Result<O> {
        self.0
            .recv()
            .map_err(|_| io::Error::other("a worker thread stopped before finishing its block"))
    }
}

impl<I: Send + 'static, O: Send + 'static> Pool<I, O> {
    /// Starts `workers` threads. Each makes its own state once (a compressor,
    /// scratch buffers) and then runs `work` on the blocks it is handed.
    /// At most `workers` blocks wait in the queue; [`Pool::submit`] waits while it is full.
    pub(crate) fn new<S, F>(workers: usize, state: impl Fn() -> S + Send + Clone + 'static, work: F) -> Self
    where
        F: Fn(&mut S, I) -> O + Send + Clone + 'static,
    {
        let workers = workers.max(1);
        let (jobs, queue) = sync_channel::<Job<I, O>>(workers);
        let queue = Arc::new(Mutex::new(queue));
        let threads = (0..workers)
            .map(|_| {
                let (queue, state, work) = (queue.clone(), state.clone(), work.clone());
                std::thread::spawn(move || {
                    let mut state = state();
                    loop {
                        // Holding the lock only while receiving hands each job to one idle worker.
                        let job = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        let Ok((input, reply)) = job else { return };
                        // The submitter may have given up on this block; that is not our error.
                        let _ = reply.send(work(&mut state, input));
                    }
                })
            })
            .collect();
        Pool {
            jobs: Some(jobs),
            threads,
        }
    }

    /// Queues a block, waiting while the queue is full.
    pub(crate) fn submit(&self, input: I) -> io::Result<Ticket<O>> {
        let (reply, result) = sync_channel(1);
        self.jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("the worker pool is shut down"))?
            .send((input, reply))
            .map_err(|_| io::Error::other("the worker threads stopped"))?;
        Ok(Ticket(result))
    }
}

impl<I, O> Drop for Pool<I, O> {
    fn drop(&mut self) {
        // Closing the queue lets every idle worker return.
        self.jobs = None;
        for thread in std::mem::take(&mut self.threads) {
            let _ = thread.join();
        }
    }
}
