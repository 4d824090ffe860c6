//! One message's way from handler call to acknowledgement:
//!
//! 1. handle: the lane's batch goes to a worker in one call, in offset order
//!    (handlers are pure, so calling them early is safe), each message to
//!    the version serving it (`registry`: the active one, or the canary for
//!    its key); a shadow version, if any, gets the same batch on the side
//!    (`shadow`);
//! 2. wait: each message waits for the previous message on its ordering
//!    chain (`schedule::chains`);
//! 3. interpret: its outputs run in order (`effects`), or it is
//!    dead-lettered (`policy`): handler failures at once, effect failures
//!    once permanent or out of retries, and later messages of a parked key
//!    behind it;
//! 4. release: the next message on the chain may go;
//! 5. settle: its publishes are confirmed by the broker;
//! 6. ack: its offset may be committed; its in-flight slot is free once it is.
//!
//! Exactly-once routes go through the same steps in offset order, into the
//! open transaction (`exactly_once`), which settles them all at once.
//!
//! A message served by a decider asks it only for its stream id in step 1;
//! its chain is its stream (across the route's partitions), and in step 3
//! `decider` loads, folds, decides and appends before its outputs run.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use crate::config::{OnDeadLetter, Ordering, Route};
use crate::contract::{Message, Output};
use crate::decider::{DecideError, Decider};
use crate::effects::{EffectError, Effects, Failure, Pending, RouteEffects, admit_and_drive};
use crate::exactly_once::Transaction;
use crate::policy::{self, Disposition};
use crate::registry::Selection;
use crate::runtime::{CallError, Handler, HandlerKind};
use crate::schedule::chains::{Chains, Link};
use crate::schedule::{LaneSettings, PartitionState, Sink, Slot};
use crate::shadow::Shadows;
use crate::source::Delivery;
use crate::telemetry::trace::MessageTrace;
use crate::telemetry::{Outcome, Phase, Telemetry};
use crate::wire::{DeadLetter, Reason, Stage};
use crate::workers::WorkerPool;
use crate::workers::budget::{ByteBudget, HeldBytes};
use tracing::Instrument;

/// A route with the versions of its handler and its effects' settings.
pub(crate) struct RouteHandler {
    pub(crate) route: Route,
    pub(crate) selection: Arc<Selection>,
    pub(crate) effects: RouteEffects,
    /// The open transaction its outputs go into, for an exactly-once route.
    pub(crate) transaction: Option<Arc<Transaction>>,
    /// Decider messages' chains: one per stream, over all partitions.
    pub(crate) streams: Arc<Chains>,
}

/// What the handler call of step 1 gave.
enum Called {
    /// A handler's outputs, or its failure.
    Handled(Result<Vec<Output>, CallError>),
    /// A decider's stream id, or its failure.
    Stream(Result<Option<String>, CallError>),
}

/// Why a message has no outputs to run.
#[derive(Debug)]
enum Refusal {
    /// Its handler (at `Stage::Handle`) or decider (at `Stage::Decide`)
    /// refused, failed or trapped.
    Call(CallError, Stage),
    /// Given up on for another reason (conflicts, a store that stayed down).
    DeadLetter(DeadLetter),
}

/// What is left to do before a message's outputs can run.
enum Work {
    /// Nothing: here is the outcome.
    Done(Result<Vec<Output>, Refusal>),
    /// Decide it on this stream (once its turn on the stream comes).
    Decide(String),
}

/// Everything needed to take a message from its handler to its ack.
pub(crate) struct Pipeline {
    routes: HashMap<String, Arc<RouteHandler>>,
    /// Headers whose value is a message's correlation id, first found wins.
    correlation_headers: Vec<String>,
    pool: Arc<WorkerPool>,
    /// Bytes held for handlers, host-wide.
    budget: Arc<ByteBudget>,
    decider: Arc<Decider>,
    effects: Effects,
    shadows: Arc<Shadows>,
    telemetry: Arc<Telemetry>,
}

/// One message of a batch, from its handler call to its ack: the message,
/// the version serving it, its trace, and what it holds until its ack.
struct Job {
    delivery: Delivery,
    handler: Arc<dyn Handler>,
    trace: MessageTrace,
    slot: Slot,
    /// The bytes its outputs hold in the host's budget.
    held: Option<HeldBytes>,
}

/// A called message that waits in a task of its own (see `finish`).
struct InFlight {
    route: Arc<RouteHandler>,
    partition: Arc<PartitionState>,
    job: Job,
    work: Work,
    /// Its place on its ordering chain.
    link: Link,
}

/// A message whose effects are handed over, waiting for confirmations.
struct Handed {
    job: Job,
    pending: Vec<Pending>,
}

impl Pipeline {
    pub(crate) fn new(
        routes: Vec<RouteHandler>,
        correlation_headers: Vec<String>,
        pool: WorkerPool,
        decider: Arc<Decider>,
        effects: Effects,
        shadows: Arc<Shadows>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let routes = routes
            .into_iter()
            .map(|r| (r.route.topic.clone(), Arc::new(r)))
            .collect();
        Pipeline {
            routes,
            correlation_headers,
            budget: pool.budget().clone(),
            pool: Arc::new(pool),
            decider,
            effects,
            shadows,
            telemetry,
        }
    }

    /// Handles a batch of one lane's messages and sets each on its way.
    ///
    /// A message that may go at once (nothing before it on its chain) and
    /// only publishes and logs hands its effects over right here: that is
    /// quick (publishes are only enqueued) and keeps the common case free of
    /// a task per message. The others (waiting on their chain, or calling
    /// HTTP) get a task each, so slow keys do not hold up the lane. Either
    /// way the acks follow the broker's confirmations.
    ///
    /// Handler calls wait for room in the host's byte budget: when it runs
    /// out mid-batch, the messages called so far go on their way and the
    /// rest wait, uncalled, until effects give bytes back.
    /// `epoch` is the lane's fetch epoch of the batch (see
    /// `PartitionState::rewind`).
    pub(crate) async fn process(
        self: &Arc<Self>,
        partition: &Arc<PartitionState>,
        work: Vec<(Delivery, Slot)>,
        epoch: u64,
    ) {
        let Some((first, _)) = work.first() else {
            return;
        };
        let Some(route) = self.routes.get(&first.message.topic).cloned() else {
            // Sources only deliver routed topics; keep the offsets back if not.
            tracing::error!(input = %first.message.id(), "no route for message; left unacknowledged");
            return;
        };
        // The versions are taken once per batch: a swap applies from the next.
        let serving = route.selection.serving();
        let handlers: Vec<_> = work
            .iter()
            .map(|(d, _)| serving.pick(&d.message).clone())
            .collect();
        let messages: Vec<_> = work.iter().map(|(d, _)| d.message.clone()).collect();
        let traces: Vec<_> = messages
            .iter()
            .zip(&handlers)
            .map(|(m, h)| MessageTrace::open(m, h.as_ref(), &self.correlation_headers))
            .collect();
        let spans: Vec<_> = traces.iter().map(|t| t.span.clone()).collect();
        let mut fetched = work.into_iter().zip(handlers.iter().cloned()).zip(traces);
        let mut start = 0;
        while start < messages.len() {
            if start > 0 {
                // Out of budget: the messages called so far are on their
                // way; the rest wait for their effects to give bytes back.
                if let Some(transaction) = &route.transaction {
                    transaction.want_commit();
                }
                self.budget
                    .room_for(handlers[start].max_output_bytes())
                    .await;
            }
            let range = start..;
            let called = self
                .call(
                    &handlers[range.clone()],
                    &messages[range.clone()],
                    &spans[range],
                )
                .await;
            let end = start + called.len();
            if let Some(shadow) = &serving.shadow
                && shadow.handler.kind() == HandlerKind::Handler
            {
                // Only handlers are shadowed: a decider's outputs depend on its stream.
                let (messages, served) = handlers[start..end]
                    .iter()
                    .zip(&messages[start..end])
                    .zip(&called)
                    .filter_map(|((handler, message), (called, _))| match called {
                        Called::Handled(outcome) => {
                            Some((message.clone(), (handler.clone(), outcome.clone())))
                        }
                        Called::Stream(_) => None,
                    })
                    .unzip();
                self.shadows
                    .compare(&self.pool, shadow.handler.clone(), messages, served);
            }
            let transactional = route.transaction.is_some();
            // `take` first: zip would pull, and drop, one message past the batch.
            let jobs = (&mut fetched).take(called.len()).zip(called).map(
                |((((delivery, slot), handler), trace), (called, held))| {
                    let job = Job {
                        delivery,
                        handler,
                        trace,
                        slot,
                        held,
                    };
                    (job, work_for(&route.route, called, transactional))
                },
            );
            self.dispatch(&route, partition, jobs, epoch).await;
            start = end;
        }
    }

    /// Sets each called message of a batch on its way (see `process`).
    async fn dispatch(
        self: &Arc<Self>,
        route: &Arc<RouteHandler>,
        partition: &Arc<PartitionState>,
        jobs: impl Iterator<Item = (Job, Work)>,
        epoch: u64,
    ) {
        if let Some(transaction) = &route.transaction {
            let jobs = jobs.map(|(job, work)| match work {
                Work::Done(outcome) => (job, outcome),
                Work::Decide(_) => unreachable!("work_for decides nothing in a transaction"),
            });
            return self
                .transact(transaction, route, partition, jobs, epoch)
                .await;
        }
        let mut handed = Vec::new();
        for (job, work) in jobs {
            self.telemetry.consumed();
            let link = match &work {
                Work::Decide(stream) => route.streams.join(Ordering::Key, Some(stream.as_bytes())),
                Work::Done(_) => partition
                    .chains
                    .join(route.route.ordering, job.delivery.message.key.as_deref()),
            };
            let quick = match &work {
                Work::Done(outcome) => outcome
                    .as_ref()
                    .is_ok_and(|outputs| !outputs.iter().any(Output::waits)),
                Work::Decide(_) => false,
            };
            if link.is_free() && quick {
                let Work::Done(outcome) = work else {
                    unreachable!("only a finished outcome is quick")
                };
                let pending = self
                    .interpret(route, partition, &job, outcome)
                    .instrument(job.trace.span.clone())
                    .await;
                drop(link);
                handed.push(Handed { job, pending });
            } else {
                let in_flight = InFlight {
                    route: route.clone(),
                    partition: partition.clone(),
                    job,
                    work,
                    link,
                };
                tokio::spawn(self.clone().finish(in_flight));
            }
        }
        if !handed.is_empty() {
            let pipeline = self.clone();
            let partition = partition.clone();
            let route = route.clone();
            tokio::spawn(async move {
                for handed in handed {
                    let span = handed.job.trace.span.clone();
                    pipeline
                        .conclude(&route, &partition, handed)
                        .instrument(span)
                        .await;
                }
            });
        }
    }

    /// Step 1 for a batch, in one trip to a worker per kind: handlers
    /// handle their messages, deciders name their messages' streams. The
    /// outcomes end before the first handler call the byte budget had no
    /// room for; a handler's outcome comes with the bytes it holds.
    async fn call(
        &self,
        handlers: &[Arc<dyn Handler>],
        messages: &[Arc<Message>],
        spans: &[tracing::Span],
    ) -> Vec<(Called, Option<HeldBytes>)> {
        let of_kind = |kind| -> (Vec<_>, Vec<_>) {
            handlers
                .iter()
                .zip(messages)
                .zip(spans)
                .filter(|((h, _), _)| h.kind() == kind)
                .map(|((h, m), span)| ((h.clone(), m.clone()), span.clone()))
                .unzip()
        };
        let (deciders, decider_spans) = of_kind(HandlerKind::Decider);
        let (calls, call_spans) = of_kind(HandlerKind::Handler);
        let mut handled = match calls.is_empty() {
            true => Vec::new(),
            false => self.pool.call(calls, call_spans).await,
        }
        .into_iter();
        let mut streams = match deciders.is_empty() {
            true => Vec::new(),
            false => self.pool.stream_ids(deciders, decider_spans).await,
        }
        .into_iter();
        handlers
            .iter()
            .map_while(|h| match h.kind() {
                HandlerKind::Handler => handled
                    .next()
                    .map(|(outcome, held)| (Called::Handled(outcome), Some(held))),
                HandlerKind::Decider => Some((
                    Called::Stream(streams.next().expect("one outcome per call")),
                    None,
                )),
            })
            .collect()
    }

    /// An exactly-once route's batch: each message in offset order into the
    /// open transaction, where it is finished (its slot held until the
    /// transaction commits). Messages fetched before a rewind, or of a
    /// partition since revoked, are dropped unacknowledged: they will be
    /// fetched again, here or by the partition's next owner.
    async fn transact(
        &self,
        transaction: &Transaction,
        route: &RouteHandler,
        partition: &Arc<PartitionState>,
        jobs: impl Iterator<Item = (Job, Result<Vec<Output>, Refusal>)>,
        epoch: u64,
    ) {
        let inside = transaction.enter().await;
        for (job, outcome) in jobs {
            self.telemetry.consumed();
            if !partition.is_current(epoch) || !job.delivery.ack.is_current() {
                break;
            }
            let offset = job.delivery.message.offset;
            let pending = match transaction.refused(&partition.tp, offset) {
                Some(failed) => {
                    let dead = interpreted(&route.route, failed);
                    vec![self.dead_letter(route, partition, &job, dead).await]
                }
                None => {
                    self.interpret(route, partition, &job, outcome)
                        .instrument(job.trace.span.clone())
                        .await
                }
            };
            for pending in pending {
                transaction.enlist(&inside, &partition.tp, partition, offset, pending);
            }
            // The transaction holds the records until it commits, and so
            // the bytes with the slot.
            let Job {
                delivery,
                slot,
                held,
                ..
            } = job;
            delivery.ack.finish_holding(Box::new((slot, held)));
        }
    }

    /// A message with a task of its own: waits for its chain and for a turn
    /// (the route's concurrency), hands its effects over, lets the chain go
    /// on, and concludes.
    async fn finish(self: Arc<Self>, in_flight: InFlight) {
        let InFlight {
            route,
            partition,
            mut job,
            work,
            mut link,
        } = in_flight;
        link.wait().await;
        if matches!(work, Work::Decide(_)) {
            // Room for its state and its decision, taken before a turn so
            // that it never holds a turn others with bytes wait for.
            job.held = Some(self.budget.hold(2 * job.handler.max_output_bytes()).await);
        }
        let turn = partition.turn().await;
        let span = job.trace.span.clone();
        let outcome = match work {
            Work::Done(outcome) => outcome,
            Work::Decide(stream) => {
                let decide = tracing::info_span!(parent: &span, "decide", stream = %stream);
                let decided = self
                    .decide(&route, &partition, &job, &stream)
                    .instrument(decide)
                    .instrument(span.clone())
                    .await;
                if let (Some(held), Ok(outputs)) = (&mut job.held, &decided) {
                    held.resize(outputs.iter().map(|o| o.size() as u64).sum());
                }
                decided
            }
        };
        let pending = Box::pin(
            self.interpret(&route, &partition, &job, outcome)
                .instrument(span.clone()),
        )
        .await;
        drop((link, turn));
        let handed = Handed { job, pending };
        Box::pin(self.conclude(&route, &partition, handed).instrument(span)).await;
    }

    /// A decider message's step 3, its stream's turn come: load, fold,
    /// decide, append. A store that fails is retried like an effect's
    /// target, behind its breaker: while it is down, messages wait.
    async fn decide(
        &self,
        route: &RouteHandler,
        partition: &PartitionState,
        job: &Job,
        stream: &str,
    ) -> Result<Vec<Output>, Refusal> {
        let (handler, message) = (&job.handler, &job.delivery.message);
        let started = Instant::now();
        let breaker = self.effects.store_breaker(&route.effects);
        let attempt = || async {
            match self
                .decider
                .decide(&self.pool, handler, message, stream)
                .await
            {
                Err(DecideError::Store(error)) => Err(EffectError::Transient(error.to_string())),
                decided => Ok(decided),
            }
        };
        let retry = (&route.effects.retry, &partition.waiting);
        let driven = admit_and_drive(&breaker, retry, attempt).await;
        self.telemetry
            .phase(Phase::Decide)
            .observe(started.elapsed());
        match driven {
            Ok(Ok(decided)) => Ok(decided.outputs),
            Ok(Err(DecideError::Call(error))) => Err(Refusal::Call(error, Stage::Decide)),
            Ok(Err(DecideError::Conflict { stream, attempts })) => {
                let detail = DecideError::Conflict { stream, attempts }.to_string();
                Err(Refusal::DeadLetter(DeadLetter {
                    topic: route.route.dead_letter_topic(),
                    stage: Stage::Decide,
                    reason: Reason::Conflict,
                    detail,
                    attempts,
                    parks_key: false,
                }))
            }
            // The attempt turned store failures into transient ones; `drive`
            // gave up on them as such (the arm below).
            Ok(Err(DecideError::Store(error))) => {
                unreachable!("a store failure is retried: {error}")
            }
            Err(failed) => Err(Refusal::DeadLetter(interpreted(&route.route, failed))),
        }
    }

    /// The ordered part: runs the outputs (or dead-letters the message) up
    /// to where everything is handed over. Returns what awaits confirmation.
    async fn interpret(
        &self,
        route: &RouteHandler,
        partition: &PartitionState,
        job: &Job,
        outcome: Result<Vec<Output>, Refusal>,
    ) -> Vec<Pending> {
        let started = Instant::now();
        let (served, message) = (&job.handler, job.delivery.message.as_ref());
        let handler = served.as_ref();
        let mut pending = Vec::new();
        let mut skipped = false;
        let dead = if partition
            .parked
            .hold(message.key.as_deref(), message.offset)
        {
            Some(parked(&route.route, message))
        } else {
            match outcome {
                Ok(outputs) => {
                    self.telemetry.succeeded();
                    let (started, result) = self
                        .effects
                        .run(
                            &route.effects,
                            &partition.waiting,
                            message,
                            handler,
                            outputs,
                            &job.trace,
                        )
                        .await;
                    pending.push(started);
                    result.err().map(|failed| interpreted(&route.route, failed))
                }
                Err(Refusal::DeadLetter(dead)) => Some(dead),
                Err(Refusal::Call(error, stage)) => {
                    match policy::on_failure(&route.route, &error, stage) {
                        Disposition::DeadLetter(dead) => Some(dead),
                        Disposition::Skip(detail) => {
                            self.effects.skip(message, handler, detail);
                            skipped = true;
                            None
                        }
                    }
                }
            }
        };
        // A canary is judged by what it dead-letters (a parked key is not its doing).
        let judged = dead.as_ref().is_none_or(|d| d.stage != Stage::Schedule);
        if judged {
            route.selection.observe(served, dead.is_some());
        }
        let ended = match (&dead, skipped) {
            (Some(_), _) => Outcome::DeadLettered,
            (None, true) => Outcome::Skipped,
            (None, false) => Outcome::Handled,
        };
        let topic = &route.route.topic;
        self.telemetry
            .ended(topic, handler.name(), handler.version(), ended);
        job.trace.span.record("outcome", ended.as_str());
        if let Some(dead) = dead {
            pending.push(self.dead_letter(route, partition, job, dead).await);
        }
        self.telemetry
            .phase(Phase::Interpret)
            .observe(started.elapsed());
        pending
    }

    /// Waits for the broker's confirmations (dead-lettering the message if a
    /// publish cannot be delivered), then acknowledges it and frees its slot.
    async fn conclude(&self, route: &RouteHandler, partition: &PartitionState, handed: Handed) {
        let Handed { job, pending } = handed;
        let mut undelivered = None;
        for p in pending {
            if let Err(failed) = p.settle(&route.effects.retry, &partition.waiting).await {
                undelivered.get_or_insert(failed);
            }
        }
        if let Some(failed) = undelivered {
            let dead = interpreted(&route.route, failed);
            let late = self.dead_letter(route, partition, &job, dead).await;
            let _ = late.settle(&route.effects.retry, &partition.waiting).await;
        }
        let Job {
            delivery,
            trace,
            slot,
            held,
            ..
        } = job;
        // Its records are confirmed: the bytes they held go back.
        drop(held);
        // The slot stays taken until the offset may be committed: the work
        // a crash could make sluice redo stays within the in-flight caps.
        delivery.ack.finish_holding(Box::new(slot));
        self.telemetry
            .phase(Phase::EndToEnd)
            .observe(trace.started.elapsed());
    }

    /// Dead-letters a message, parking its key first if the route says so.
    async fn dead_letter(
        &self,
        route: &RouteHandler,
        partition: &PartitionState,
        job: &Job,
        mut dead: DeadLetter,
    ) -> Pending {
        let message = &job.delivery.message;
        let parks = route.route.on_dead_letter == OnDeadLetter::ParkKey;
        // Marked, so that the parking outlives this process (source::parked).
        dead.parks_key = parks;
        if parks
            && partition
                .parked
                .park(message.key.as_deref(), message.offset)
        {
            tracing::warn!(
                input = %message.id(),
                key = %String::from_utf8_lossy(message.key.as_deref().unwrap_or_default()),
                "key parked: its later messages go to the dead-letter topic until re-driven"
            );
        }
        self.effects
            .dead_letter(&route.effects, message, job.handler.as_ref(), dead)
            .await
    }
}

impl Sink for Pipeline {
    fn lane(&self, topic: &str) -> Option<LaneSettings> {
        let route = &self.routes.get(topic)?.route;
        Some(LaneSettings {
            max_in_flight: route.max_in_flight,
            concurrency: route.concurrency,
            parked_from: (route.on_dead_letter == OnDeadLetter::ParkKey)
                .then(|| route.dead_letter_topic()),
        })
    }

    fn batch(
        self: Arc<Self>,
        partition: Arc<PartitionState>,
        batch: Vec<(Delivery, Slot)>,
        epoch: u64,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move { self.process(&partition, batch, epoch).await })
    }
}

/// What is left of a message's step 1 before its outputs can run. A
/// decider cannot take part in a transaction: its append is not in it.
fn work_for(route: &Route, called: Called, transactional: bool) -> Work {
    match called {
        Called::Handled(outcome) => {
            Work::Done(outcome.map_err(|error| Refusal::Call(error, Stage::Handle)))
        }
        Called::Stream(Err(error)) => Work::Done(Err(Refusal::Call(error, Stage::Decide))),
        Called::Stream(Ok(_)) if transactional => Work::Done(Err(Refusal::DeadLetter(DeadLetter {
            topic: route.dead_letter_topic(),
            stage: Stage::Decide,
            reason: Reason::NotTransactional,
            detail: "an exactly-once route cannot run a decider: its appends are not part of the Kafka transaction".into(),
            attempts: 0,
            parks_key: false,
        }))),
        // Nothing to decide: handled, with nothing to do.
        Called::Stream(Ok(None)) => Work::Done(Ok(Vec::new())),
        Called::Stream(Ok(Some(stream))) => Work::Decide(stream),
    }
}

/// The dead letter of a message whose effect failed for good.
fn interpreted(route: &Route, failed: Failure) -> DeadLetter {
    DeadLetter {
        topic: route.dead_letter_topic(),
        stage: Stage::Interpret,
        reason: failed.reason,
        detail: failed.detail,
        attempts: failed.attempts,
        parks_key: false,
    }
}

/// The dead letter of a message held behind its parked key.
fn parked(route: &Route, message: &Message) -> DeadLetter {
    DeadLetter {
        topic: route.dead_letter_topic(),
        stage: Stage::Schedule,
        reason: Reason::KeyParked,
        detail: format!(
            "key parked in partition {} after an earlier message was dead-lettered",
            message.partition
        ),
        attempts: 0,
        parks_key: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::HandleError;

    fn route() -> Route {
        toml::from_str("topic = \"in\"\nhandler = \"h\"").unwrap()
    }

    #[test]
    fn a_decider_message_is_decided_unless_its_route_is_transactional() {
        let stream = || Called::Stream(Ok(Some("s".into())));
        assert!(matches!(work_for(&route(), stream(), false), Work::Decide(s) if s == "s"));
        let Work::Done(Err(Refusal::DeadLetter(dead))) = work_for(&route(), stream(), true) else {
            panic!("a decider on an exactly-once route is refused");
        };
        assert_eq!(
            (dead.stage, dead.reason),
            (Stage::Decide, Reason::NotTransactional)
        );
        assert_eq!(dead.topic, "in.dlq");
        // No stream: handled, with nothing to do; a failing stream-id: refused at `decide`.
        assert!(matches!(
            work_for(&route(), Called::Stream(Ok(None)), false),
            Work::Done(Ok(outputs)) if outputs.is_empty()
        ));
        let failed = Called::Stream(Err(CallError::Handler(HandleError::Failed("x".into()))));
        assert!(matches!(
            work_for(&route(), failed, false),
            Work::Done(Err(Refusal::Call(_, Stage::Decide)))
        ));
        let handled = Called::Handled(Err(CallError::Handler(HandleError::Failed("x".into()))));
        assert!(matches!(
            work_for(&route(), handled, true),
            Work::Done(Err(Refusal::Call(_, Stage::Handle)))
        ));
    }
}
