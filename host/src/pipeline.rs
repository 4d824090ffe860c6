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
//! open transaction (`effects::transaction`), which settles them all at once.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{OnDeadLetter, Route};
use crate::contract::{Message, Output};
use crate::effects::transaction::Transaction;
use crate::effects::{Effects, Failure, Pending, RouteEffects};
use crate::policy::{self, DeadLetter, Disposition, Stage};
use crate::registry::Selection;
use crate::runtime::{CallError, Handler, WorkerPool};
use crate::schedule::chains::Link;
use crate::schedule::{PartitionState, Slot};
use crate::shadow::Shadows;
use crate::source::Delivery;
use crate::telemetry::{Outcome, Telemetry};

/// A route with the versions of its handler and its effects' settings.
pub(crate) struct RouteHandler {
    pub(crate) route: Route,
    pub(crate) selection: Arc<Selection>,
    pub(crate) effects: RouteEffects,
}

/// Everything needed to take a message from its handler to its ack.
pub(crate) struct Pipeline {
    routes: HashMap<String, Arc<RouteHandler>>,
    pool: Arc<WorkerPool>,
    effects: Effects,
    shadows: Arc<Shadows>,
    telemetry: Arc<Telemetry>,
}

/// A handled message on its way through its effects.
struct InFlight {
    route: Arc<RouteHandler>,
    handler: Arc<dyn Handler>,
    partition: Arc<PartitionState>,
    delivery: Delivery,
    outcome: Result<Vec<Output>, CallError>,
    link: Link,
    slot: Slot,
}

/// A message whose effects are handed over, waiting for confirmations.
struct Handed {
    handler: Arc<dyn Handler>,
    delivery: Delivery,
    pending: Vec<Pending>,
    slot: Slot,
}

impl Pipeline {
    pub(crate) fn new(
        routes: Vec<RouteHandler>,
        pool: WorkerPool,
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
            pool: Arc::new(pool),
            effects,
            shadows,
            telemetry,
        }
    }

    /// The route of a topic.
    pub(crate) fn route(&self, topic: &str) -> Option<&Arc<RouteHandler>> {
        self.routes.get(topic)
    }

    /// Handles a batch of one lane's messages and sets each on its way.
    ///
    /// A message that may go at once (nothing before it on its chain) and
    /// only publishes and logs hands its effects over right here: that is
    /// quick (publishes are only enqueued) and keeps the common case free of
    /// a task per message. The others (waiting on their chain, or calling
    /// HTTP) get a task each, so slow keys do not hold up the lane. Either
    /// way the acks follow the broker's confirmations.
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
        let messages = || work.iter().map(|(d, _)| d.message.clone());
        let calls = handlers.iter().cloned().zip(messages()).collect();
        let outcomes = self.pool.call(calls).await;
        if let Some(shadow) = &serving.shadow {
            let served = handlers
                .iter()
                .cloned()
                .zip(outcomes.iter().cloned())
                .collect();
            self.shadows.compare(
                &self.pool,
                shadow.handler.clone(),
                messages().collect(),
                served,
            );
        }
        let work = work.into_iter().zip(handlers).zip(outcomes);
        if let Some(transaction) = &route.effects.transaction {
            return self
                .transact(transaction, &route, partition, work, epoch)
                .await;
        }
        let mut handed = Vec::new();
        for (((delivery, slot), handler), outcome) in work {
            self.telemetry.consumed();
            let link = partition
                .chains
                .join(route.route.ordering, delivery.message.key.as_deref());
            let calls_out = outcome
                .as_ref()
                .is_ok_and(|outputs| outputs.iter().any(|o| matches!(o, Output::Http(_))));
            if link.is_free() && !calls_out {
                let pending = self
                    .interpret(&route, &handler, partition, &delivery.message, outcome)
                    .await;
                drop(link);
                handed.push(Handed {
                    handler,
                    delivery,
                    pending,
                    slot,
                });
            } else {
                let in_flight = InFlight {
                    route: route.clone(),
                    handler,
                    partition: partition.clone(),
                    delivery,
                    outcome,
                    link,
                    slot,
                };
                tokio::spawn(self.clone().finish(in_flight));
            }
        }
        if !handed.is_empty() {
            let pipeline = self.clone();
            let partition = partition.clone();
            tokio::spawn(async move {
                for handed in handed {
                    pipeline.conclude(&route, &partition, handed).await;
                }
            });
        }
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
        work: impl Iterator<
            Item = (
                ((Delivery, Slot), Arc<dyn Handler>),
                Result<Vec<Output>, CallError>,
            ),
        >,
        epoch: u64,
    ) {
        let inside = transaction.enter().await;
        for (((delivery, slot), handler), outcome) in work {
            self.telemetry.consumed();
            if !partition.is_current(epoch) || !delivery.ack.is_current() {
                break;
            }
            let message = &delivery.message;
            let pending = match transaction.refused(&partition.tp, message.offset) {
                Some(failed) => {
                    let dead = interpreted(&route.route, failed);
                    vec![
                        self.dead_letter(route, &handler, partition, message, dead)
                            .await,
                    ]
                }
                None => {
                    self.interpret(route, &handler, partition, message, outcome)
                        .await
                }
            };
            for pending in pending {
                transaction.enlist(&inside, partition, message.offset, pending);
            }
            delivery.ack.finish_holding(Box::new(slot));
        }
    }

    /// A message with a task of its own: waits for its chain and for a turn
    /// (the route's concurrency), hands its effects over, lets the chain go
    /// on, and concludes.
    async fn finish(self: Arc<Self>, in_flight: InFlight) {
        let InFlight {
            route,
            handler,
            partition,
            delivery,
            outcome,
            mut link,
            slot,
        } = in_flight;
        link.wait().await;
        let turn = partition.turn().await;
        let pending =
            Box::pin(self.interpret(&route, &handler, &partition, &delivery.message, outcome))
                .await;
        drop((link, turn));
        let handed = Handed {
            handler,
            delivery,
            pending,
            slot,
        };
        Box::pin(self.conclude(&route, &partition, handed)).await;
    }

    /// The ordered part: runs the outputs (or dead-letters the message) up
    /// to where everything is handed over. Returns what awaits confirmation.
    async fn interpret(
        &self,
        route: &RouteHandler,
        served: &Arc<dyn Handler>,
        partition: &PartitionState,
        message: &Message,
        outcome: Result<Vec<Output>, CallError>,
    ) -> Vec<Pending> {
        let handler = served.as_ref();
        let mut pending = Vec::new();
        let mut skipped = false;
        let dead = if partition
            .parked
            .is_parked(message.key.as_deref(), message.offset)
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
                        )
                        .await;
                    pending.push(started);
                    result.err().map(|failed| interpreted(&route.route, failed))
                }
                Err(error) => match policy::on_failure(&route.route, &error) {
                    Disposition::DeadLetter(dead) => Some(dead),
                    Disposition::Skip(detail) => {
                        self.effects.skip(message, handler, detail);
                        skipped = true;
                        None
                    }
                },
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
        self.telemetry
            .ended(handler.name(), handler.version(), ended);
        if let Some(dead) = dead {
            pending.push(
                self.dead_letter(route, served, partition, message, dead)
                    .await,
            );
        }
        pending
    }

    /// Waits for the broker's confirmations (dead-lettering the message if a
    /// publish cannot be delivered), then acknowledges it and frees its slot.
    async fn conclude(&self, route: &RouteHandler, partition: &PartitionState, handed: Handed) {
        let Handed {
            handler,
            delivery: Delivery { message, ack },
            pending,
            slot,
        } = handed;
        let mut undelivered = None;
        for p in pending {
            if let Err(failed) = p.settle(&route.effects.retry, &partition.waiting).await {
                undelivered.get_or_insert(failed);
            }
        }
        if let Some(failed) = undelivered {
            let dead = interpreted(&route.route, failed);
            let late = self
                .dead_letter(route, &handler, partition, &message, dead)
                .await;
            let _ = late.settle(&route.effects.retry, &partition.waiting).await;
        }
        // The slot stays taken until the offset may be committed: the work
        // a crash could make sluice redo stays within the in-flight caps.
        ack.finish_holding(Box::new(slot));
    }

    /// Dead-letters a message, parking its key first if the route says so.
    async fn dead_letter(
        &self,
        route: &RouteHandler,
        handler: &Arc<dyn Handler>,
        partition: &PartitionState,
        message: &Message,
        mut dead: DeadLetter,
    ) -> Pending {
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
            .dead_letter(&route.effects, message, handler.as_ref(), dead)
            .await
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
        reason: "key-parked",
        detail: format!(
            "key parked in partition {} after an earlier message was dead-lettered",
            message.partition
        ),
        attempts: 0,
        parks_key: false,
    }
}
