//! Worker threads that run handler calls. Calls are CPU-bound and may run up
//! to their deadline, so they get threads of their own rather than blocking
//! the async runtime; each worker keeps one instance per handler. A call
//! first reserves, in the host-wide `budget`, the bytes its outputs may hold.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;

use std::time::Instant;

use tokio::sync::oneshot;

pub(crate) mod budget;

use crate::contract::{Message, Output};
use crate::runtime::{CallError, Handler, HandlerInstance, decider_of};
use crate::telemetry::Histogram;
use budget::{ByteBudget, HeldBytes};

type CallResult = Result<Vec<Output>, CallError>;

/// Work for one worker: it runs on the worker's thread, with its instances.
type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// A fixed set of threads that call handlers.
#[doc(hidden)]
pub struct WorkerPool {
    jobs: Option<mpsc::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    /// Where the time of each `handle` and `stream-id` call goes.
    timings: Arc<Histogram>,
    /// What the outputs of `handle` calls may hold (unbounded unless set).
    budget: Arc<ByteBudget>,
}

impl WorkerPool {
    /// Starts `workers` threads.
    pub fn start(workers: usize) -> WorkerPool {
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
            timings: Arc::default(),
            budget: ByteBudget::new(u64::MAX),
        }
    }

    /// Makes `handle` calls only within `budget` (see `call`).
    pub(crate) fn within(mut self, budget: Arc<ByteBudget>) -> Self {
        self.budget = budget;
        self
    }

    /// The budget the outputs of its calls are held in.
    pub(crate) fn budget(&self) -> &Arc<ByteBudget> {
        &self.budget
    }

    /// Records the time of every `handle` and `stream-id` call in `timings`.
    pub(crate) fn timed(mut self, timings: Arc<Histogram>) -> Self {
        self.timings = timings;
        self
    }

    /// Runs each message's handler on it, in order, on one worker, and
    /// returns their outcomes with the bytes each holds in the pool's
    /// budget. One round trip per batch keeps thread hand-offs off the
    /// per-message cost. A call is made only once what it may return is
    /// held in the budget; at
    /// the first that does not fit, the rest are left uncalled (the outcomes
    /// end there). Each call runs in a `handle` span, child of the
    /// message's span in `spans` (if given).
    pub(crate) async fn call(
        &self,
        calls: Vec<(Arc<dyn Handler>, Arc<Message>)>,
        spans: Vec<tracing::Span>,
    ) -> Vec<(CallResult, HeldBytes)> {
        let timings = self.timings.clone();
        let budget = self.budget.clone();
        self.run(move |worker| {
            let mut outcomes = Vec::with_capacity(calls.len());
            for (i, (handler, message)) in calls.iter().enumerate() {
                let Some(mut held) = budget.try_hold(handler.max_output_bytes()) else {
                    break;
                };
                let handle = || tracing::info_span!("handle");
                let outcome = worker.timed(&timings, spans.get(i), handle, handler, |instance| {
                    instance.handle(message)
                });
                let returned = outcome
                    .as_ref()
                    .map_or(0, |outputs| outputs.iter().map(|o| o.size() as u64).sum());
                held.resize(returned);
                outcomes.push((outcome, held));
            }
            outcomes
        })
        .await
    }

    /// Asks each message's decider for its stream id, in one trip to a
    /// worker, in a `stream-id` span child of the message's.
    pub(crate) async fn stream_ids(
        &self,
        calls: Vec<(Arc<dyn Handler>, Arc<Message>)>,
        spans: Vec<tracing::Span>,
    ) -> Vec<Result<Option<String>, CallError>> {
        self.each(
            calls,
            spans,
            || tracing::info_span!("stream-id"),
            |instance, message| decider_of(instance)?.stream_id(message),
        )
        .await
    }

    /// Makes one call per message, in order, on one worker: each timed, in
    /// a span (`call_span`) inside the message's span, if it has one.
    async fn each<R: Send + 'static>(
        &self,
        calls: Vec<(Arc<dyn Handler>, Arc<Message>)>,
        spans: Vec<tracing::Span>,
        call_span: fn() -> tracing::Span,
        call: fn(&mut dyn HandlerInstance, &Message) -> Result<R, CallError>,
    ) -> Vec<Result<R, CallError>> {
        let timings = self.timings.clone();
        self.run(move |worker| {
            calls
                .iter()
                .enumerate()
                .map(|(i, (handler, message))| {
                    worker.timed(&timings, spans.get(i), call_span, handler, |instance| {
                        call(instance, message)
                    })
                })
                .collect()
        })
        .await
    }

    /// Runs `work` on one worker, with an instance of `handler` (dropped if
    /// a call on it trapped, counted as one call against its recycling).
    pub async fn with_instance<R: Send + 'static>(
        &self,
        handler: &Arc<dyn Handler>,
        work: impl FnOnce(&mut dyn HandlerInstance) -> Result<R, CallError> + Send + 'static,
    ) -> Result<R, CallError> {
        let handler = handler.clone();
        self.run(move |worker| worker.with_instance(&handler, work))
            .await
    }

    async fn run<R: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Worker) -> R + Send + 'static,
    ) -> R {
        let (reply, outcome) = oneshot::channel();
        let job: Job = Box::new(move |worker| {
            // The caller may have gone away (shutdown); nothing to do then.
            let _ = reply.send(work(worker));
        });
        self.jobs
            .as_ref()
            .expect("worker pool is running")
            .send(job)
            .expect("worker threads outlive the pool handle");
        outcome.await.expect("a worker always replies")
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
            job(&mut self);
        }
    }

    /// One call, timed, in a span (`call_span`) inside the message's span
    /// (`span`), if it has one.
    fn timed<R>(
        &mut self,
        timings: &Histogram,
        span: Option<&tracing::Span>,
        call_span: fn() -> tracing::Span,
        handler: &Arc<dyn Handler>,
        work: impl FnOnce(&mut dyn HandlerInstance) -> Result<R, CallError>,
    ) -> Result<R, CallError> {
        // Inside the message's span, so that the call's span closes there too.
        let _message = span.map(|span| span.enter());
        let _call = span.map(|_| call_span().entered());
        let started = Instant::now();
        let outcome = self.with_instance(handler, work);
        timings.observe(started.elapsed());
        outcome
    }

    fn with_instance<R>(
        &mut self,
        handler: &Arc<dyn Handler>,
        work: impl FnOnce(&mut dyn HandlerInstance) -> Result<R, CallError>,
    ) -> Result<R, CallError> {
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
        let outcome = work(slot.instance.as_mut());
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
