//! Worker threads that run handler calls. Calls are CPU-bound and may run up
//! to their deadline, so they get threads of their own rather than blocking
//! the async runtime; each worker keeps one instance per handler.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::{CallError, Handler, HandlerInstance};
use crate::contract::{Message, Output};

type CallResult = Result<Vec<Output>, CallError>;

/// Messages of one lane, each with the version to handle it, to be handled
/// in order on one worker.
struct Job {
    calls: Vec<(Arc<dyn Handler>, Arc<Message>)>,
    reply: oneshot::Sender<Vec<CallResult>>,
}

/// A fixed set of threads that call handlers.
pub(crate) struct WorkerPool {
    jobs: Option<mpsc::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    /// Starts `workers` threads.
    pub(crate) fn start(workers: usize) -> WorkerPool {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let threads = (0..workers.max(1))
            .map(|i| {
                let queue = queue.clone();
                std::thread::Builder::new()
                    .name(format!("sluice-worker-{i}"))
                    .spawn(move || Worker::default().run(&queue))
                    .expect("spawn worker thread")
            })
            .collect();
        WorkerPool {
            jobs: Some(jobs),
            threads,
        }
    }

    /// Runs each message's handler on it, in order, on one worker, and
    /// returns their outcomes. One round trip per batch keeps thread
    /// hand-offs off the per-message cost.
    pub(crate) async fn call(
        &self,
        calls: Vec<(Arc<dyn Handler>, Arc<Message>)>,
    ) -> Vec<CallResult> {
        let (reply, outcomes) = oneshot::channel();
        self.jobs
            .as_ref()
            .expect("worker pool is running")
            .send(Job { calls, reply })
            .expect("worker threads outlive the pool handle");
        outcomes.await.expect("a worker always replies")
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.jobs.take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One live instance on a worker, with the handler that made it. Weak: the
/// workers' slots must not keep a replaced version alive for each other.
struct Slot {
    handler: Weak<dyn Handler>,
    instance: Box<dyn HandlerInstance>,
    calls: u64,
}

#[derive(Default)]
struct Worker {
    slots: Vec<Slot>,
}

impl Worker {
    fn run(mut self, queue: &Mutex<mpsc::Receiver<Job>>) {
        loop {
            let job = match queue.lock().expect("job queue lock").recv() {
                Ok(job) => job,
                Err(_) => return,
            };
            // Instances of handlers nobody holds any more (replaced versions) go.
            self.slots.retain(|slot| slot.handler.strong_count() > 0);
            let outcomes = job
                .calls
                .iter()
                .map(|(handler, message)| self.call(handler, message))
                .collect();
            // The caller may have gone away (shutdown); nothing to do then.
            let _ = job.reply.send(outcomes);
        }
    }

    fn call(&mut self, handler: &Arc<dyn Handler>, message: &Message) -> CallResult {
        let index = match self
            .slots
            .iter()
            .position(|s| same_handler(&s.handler, handler))
        {
            Some(index) => index,
            None => {
                let instance = handler.instantiate()?;
                self.slots.push(Slot {
                    handler: Arc::downgrade(handler),
                    instance,
                    calls: 0,
                });
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[index];
        let outcome = slot.instance.handle(message);
        slot.calls += 1;
        // A trapped instance may be in any state: never reuse it.
        if matches!(outcome, Err(CallError::Trap(_))) || slot.calls >= handler.calls_per_instance()
        {
            self.slots.swap_remove(index);
        }
        outcome
    }
}

fn same_handler(a: &Weak<dyn Handler>, b: &Arc<dyn Handler>) -> bool {
    std::ptr::addr_eq(a.as_ptr(), Arc::as_ptr(b))
}
