//! Executing what handlers asked for: one executor per output kind (publish,
//! http, log; timers are kept by `crate::timers`). A message's outputs run in list order. `run` returns once
//! each has been handed over (a publish enqueued, an HTTP request answered),
//! so the next message of its ordering chain can go; `Pending::settle` then
//! waits for the publishes to be confirmed. Transient failures are retried
//! behind the target's circuit breaker; what cannot succeed becomes a
//! `Failure`, which the pipeline dead-letters. Exactly-once routes publish
//! into a `transaction` instead, which confirms, or undoes, all at once.

mod authority;
pub(crate) mod http;
pub(crate) mod publish;

use std::future::Future;
use std::sync::Arc;

use rdkafka::producer::DeliveryFuture;

use crate::config::{BreakerPolicy, RetryPolicy, Route};
use crate::contract::{Header, LogEntry, LogLevel, Message, Output, Publish, Schedule};
use crate::policy::breaker::{Admission, Breaker, Breakers, Outcome, Waiting};
use crate::policy::retry::Retries;
use crate::runtime::{Handler, MAX_LINE};
use crate::store::timers::Timer;
use crate::telemetry::trace::MessageTrace;
use crate::telemetry::{Origin, RecentDeadLetter, Record, Telemetry};
use crate::timers::Timers;
use crate::topics::ReservedTopics;
use crate::wire::{self, DeadLetter, Reason};
use authority::Authority;
use http::HttpClient;
use publish::{Landed, Publisher};
use tracing::Instrument;

/// How an effect attempt failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum EffectError {
    /// Worth retrying: the target may recover.
    #[error("{0}")]
    Transient(String),
    /// Retrying cannot help.
    #[error("{reason}: {detail}")]
    Permanent { reason: Reason, detail: String },
}

/// Why an effect was given up: the dead letter's reason, detail and attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) reason: Reason,
    pub(crate) detail: String,
    pub(crate) attempts: u32,
}

/// A route's settings for its effects.
pub(crate) struct RouteEffects {
    pub(crate) retry: RetryPolicy,
    pub(crate) breaker: BreakerPolicy,
    pub(crate) http: HttpClient,
    /// What its handler's outputs may reach.
    authority: Authority,
    /// Where its publishes and dead letters go.
    publisher: Arc<Publisher>,
    /// Whether they go into an exactly-once transaction (`publisher` is
    /// then the transactional one), which retries as a whole.
    transactional: bool,
}

impl RouteEffects {
    /// An at-least-once route's effects publish with `publisher`; an
    /// exactly-once route's with `transactional`, the producer of the open
    /// transaction. No handler publishes to a `reserved` topic.
    pub(crate) fn new(
        route: &Route,
        reserved: &Arc<ReservedTopics>,
        publisher: &Arc<Publisher>,
        transactional: Option<&Arc<Publisher>>,
    ) -> Result<RouteEffects, reqwest::Error> {
        Ok(RouteEffects {
            retry: route.retry.clone(),
            breaker: route.breaker.clone(),
            http: HttpClient::new(&route.http)?,
            authority: Authority::new(route, reserved.clone(), transactional.is_some()),
            publisher: transactional.unwrap_or(publisher).clone(),
            transactional: transactional.is_some(),
        })
    }
}

/// Runs outputs and dead letters, and records what they did.
pub(crate) struct Effects {
    breakers: Arc<Breakers>,
    timers: Arc<Timers>,
    telemetry: Arc<Telemetry>,
}

/// What a published record is for, to account for it once confirmed.
enum Purpose {
    Output(usize),
    /// A dead letter of the input with this id.
    DeadLetter(DeadLetter, String),
}

/// A record handed to the producer, with its first attempt under way.
struct Sent {
    record: Publish,
    purpose: Purpose,
    breaker: Option<Arc<Breaker>>,
    admission: Option<Admission>,
    delivery: Result<DeliveryFuture, EffectError>,
}

/// A message's publishes that still await confirmation.
#[must_use = "a message is only finished once its pending effects are settled"]
pub(crate) struct Pending {
    origin: Option<Origin>,
    sent: Vec<Sent>,
    publisher: Arc<Publisher>,
    telemetry: Arc<Telemetry>,
}

impl Effects {
    pub(crate) fn new(
        breakers: Arc<Breakers>,
        timers: Arc<Timers>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Effects {
            breakers,
            timers,
            telemetry,
        }
    }

    /// Runs a message's outputs in order until each is handed over; the
    /// publishes' confirmations are left in the returned `Pending`. Stops at
    /// the first output that fails for good (those before it have run).
    /// `waiting` counts the message while it waits for an open breaker.
    pub(crate) async fn run(
        &self,
        route: &RouteEffects,
        waiting: &Waiting,
        message: &Message,
        handler: &dyn Handler,
        outputs: Vec<Output>,
        trace: &MessageTrace,
    ) -> (Pending, Result<(), Failure>) {
        let mut sent = Vec::new();
        // Checked before anything runs: a message's outputs all run, or
        // (beyond what the route allows) none does.
        if let Err(refused) = route.authority.check(&outputs, &route.http) {
            return (self.pending(route, message, handler, sent), Err(refused));
        }
        let mut outcome = Ok(());
        let input = &trace.input;
        for (index, output) in outputs.into_iter().enumerate() {
            match output {
                Output::Log(entry) => {
                    let _output = trace.output(index, None).entered();
                    log(message, handler, &entry);
                }
                Output::Publish(mut record) => {
                    wire::drop_host_headers(&mut record.headers);
                    // traceparent, correlation, sluice-id, handler and version.
                    record.headers.reserve(5);
                    let span = trace.output(index, Some(&mut record.headers));
                    span.record("topic", record.topic.as_str());
                    record
                        .headers
                        .push(Header::new(wire::ID, output_id(input, index)));
                    record
                        .headers
                        .extend(wire::handler_headers(handler.name(), handler.version()));
                    // A transaction retries as a whole; no breaker in between.
                    let breaker = (!route.transactional)
                        .then(|| self.breakers.topic(&record.topic, &route.breaker));
                    let admission = match &breaker {
                        Some(breaker) => Some(breaker.admit(waiting).await),
                        None => None,
                    };
                    let delivery = route.publisher.send(&record).instrument(span).await;
                    if let (Err(EffectError::Permanent { reason, detail }), None) =
                        (&delivery, &breaker)
                    {
                        // Refused before it reached the transaction.
                        outcome = Err(Failure {
                            reason: *reason,
                            detail: detail.clone(),
                            attempts: 1,
                        });
                        break;
                    }
                    sent.push(Sent {
                        record,
                        purpose: Purpose::Output(index),
                        breaker,
                        admission,
                        delivery,
                    });
                }
                Output::Http(mut request) => {
                    wire::drop_host_headers(&mut request.headers);
                    let span = trace.output(index, Some(&mut request.headers));
                    span.record("url", request.url.as_str());
                    let id = output_id(input, index);
                    let result = async {
                        let (url, host) = route.http.check(&request).map_err(|e| failure(e, 0))?;
                        let breaker = self.breakers.host(&host, &route.breaker);
                        let attempt = || route.http.send(&url, &request, &id);
                        admit_and_drive(&breaker, (&route.retry, waiting), attempt).await
                    };
                    if let Err(failed) = result.instrument(span).await {
                        outcome = Err(failed);
                        break;
                    }
                }
                Output::Schedule(Schedule {
                    id,
                    due,
                    publish: mut record,
                }) => {
                    wire::drop_host_headers(&mut record.headers);
                    // traceparent, handler and version; sluice-id when it fires.
                    record.headers.reserve(3);
                    let span = trace.output(index, Some(&mut record.headers));
                    span.record("topic", record.topic.as_str());
                    record
                        .headers
                        .extend(wire::handler_headers(handler.name(), handler.version()));
                    let timer = Timer {
                        route: message.topic.clone(),
                        id,
                        due,
                        record,
                        source: output_id(input, index),
                    };
                    let rules = (&route.retry, &route.breaker);
                    let kept = self.timers.schedule(&timer, rules, waiting);
                    if let Err(failed) = kept.instrument(span).await {
                        outcome = Err(failed);
                        break;
                    }
                    self.keep(message, handler, |origin| Record::Scheduled {
                        origin,
                        output: index,
                        id: timer.id,
                        due: timer.due,
                        topic: timer.record.topic,
                    });
                }
                Output::Cancel(id) => {
                    let span = trace.output(index, None);
                    let rules = (&route.retry, &route.breaker);
                    let cancelled = self.timers.cancel(&message.topic, &id, rules, waiting);
                    if let Err(failed) = cancelled.instrument(span).await {
                        outcome = Err(failed);
                        break;
                    }
                    self.keep(message, handler, |origin| Record::Cancelled {
                        origin,
                        output: index,
                        id,
                    });
                }
            }
        }
        (self.pending(route, message, handler, sent), outcome)
    }

    /// Sends a message to its dead-letter topic (enqueued now, in order;
    /// confirmed, however long it takes, when the `Pending` is settled).
    pub(crate) async fn dead_letter(
        &self,
        route: &RouteEffects,
        message: &Message,
        handler: &dyn Handler,
        dead: DeadLetter,
    ) -> Pending {
        tracing::warn!(
            input = %message.id(),
            handler = handler.name(),
            version = handler.version(),
            stage = dead.stage.as_str(),
            reason = dead.reason.as_str(),
            detail = %dead.detail,
            attempts = dead.attempts,
            topic = %dead.topic,
            "dead-lettering message"
        );
        let input = wire::input_id(message);
        let mut record =
            wire::dead_letter_record(message, &dead, handler.name(), handler.version());
        record
            .headers
            .push(Header::new(wire::ID, output_id(&input, "dead-letter")));
        let delivery = route.publisher.send(&record).await;
        let sent = Sent {
            record,
            purpose: Purpose::DeadLetter(dead, input),
            breaker: None,
            admission: None,
            delivery,
        };
        self.pending(route, message, handler, vec![sent])
    }

    /// The event store's breaker (deciders' loads and appends).
    pub(crate) fn store_breaker(&self, route: &RouteEffects) -> Arc<Breaker> {
        self.breakers.store(&route.breaker)
    }

    /// Accounts for a message skipped by configuration.
    pub(crate) fn skip(&self, message: &Message, handler: &dyn Handler, detail: String) {
        tracing::info!(input = %message.id(), handler = handler.name(), %detail, "skipping message");
        self.telemetry.skipped();
        self.keep(message, handler, |origin| Record::Skipped {
            origin,
            detail,
        });
    }

    /// Keeps a record of what `message` led to, if this run keeps them.
    fn keep(
        &self,
        message: &Message,
        handler: &dyn Handler,
        record: impl FnOnce(Origin) -> Record,
    ) {
        if self.telemetry.keeps_records() {
            let origin = Origin::new(message, handler.name(), handler.version());
            self.telemetry.keep(record(origin));
        }
    }

    fn pending(
        &self,
        route: &RouteEffects,
        message: &Message,
        handler: &dyn Handler,
        sent: Vec<Sent>,
    ) -> Pending {
        Pending {
            origin: self
                .telemetry
                .keeps_records()
                .then(|| Origin::new(message, handler.name(), handler.version())),
            sent,
            publisher: route.publisher.clone(),
            telemetry: self.telemetry.clone(),
        }
    }
}

impl Pending {
    /// Waits until the broker confirmed every record, retrying failed ones
    /// within the route's budget (dead letters without limit). Returns the
    /// first publish that could not be delivered.
    pub(crate) async fn settle(
        self,
        retry: &RetryPolicy,
        waiting: &Waiting,
    ) -> Result<(), Failure> {
        let Pending {
            origin,
            sent,
            publisher,
            telemetry,
        } = self;
        let mut outcome = Ok(());
        for sent in sent {
            let Sent {
                record,
                purpose,
                breaker,
                admission,
                delivery,
            } = sent;
            let first = delivered(delivery);
            let again = || publisher.publish(&record);
            let landed = match (breaker, admission) {
                (Some(breaker), Some(admission)) => {
                    drive(&breaker, (retry, waiting), admission, first, again).await
                }
                // Dead letters have nowhere else to go: never give up.
                _ => match first.await {
                    Ok(landed) => Ok(landed),
                    Err(_) => Ok(publisher.publish_stubbornly(&record).await),
                },
            };
            match landed {
                Ok(landed) => account(&telemetry, origin.as_ref(), &record, purpose, landed),
                Err(failed) => {
                    if outcome.is_ok() {
                        outcome = Err(failed);
                    }
                }
            }
        }
        outcome
    }
}

impl Pending {
    /// After the transaction holding these records committed: accounts for
    /// them (their deliveries are confirmed by then).
    pub(crate) async fn committed(self) {
        for sent in self.sent {
            match delivered(sent.delivery).await {
                Ok(landed) => account(
                    &self.telemetry,
                    self.origin.as_ref(),
                    &sent.record,
                    sent.purpose,
                    landed,
                ),
                Err(error) => {
                    tracing::error!(%error, topic = %sent.record.topic, "no delivery report for a committed record")
                }
            }
        }
    }

    /// After the transaction holding these records was aborted: the first
    /// record the broker refused for good, if any.
    pub(crate) async fn refused(self) -> Option<Failure> {
        for sent in self.sent {
            if let Err(EffectError::Permanent { reason, detail }) = delivered(sent.delivery).await {
                return Some(Failure {
                    reason,
                    detail,
                    attempts: 1,
                });
            }
        }
        None
    }
}

/// Waits for a record's delivery report, if it was enqueued at all.
async fn delivered(delivery: Result<DeliveryFuture, EffectError>) -> Result<Landed, EffectError> {
    publish::delivered(delivery?).await
}

/// Counts a confirmed record, and keeps it if the run keeps records.
fn account(
    telemetry: &Telemetry,
    origin: Option<&Origin>,
    record: &Publish,
    purpose: Purpose,
    landed: Landed,
) {
    {
        match &purpose {
            Purpose::Output(_) => telemetry.published(),
            Purpose::DeadLetter(dead, input) => {
                telemetry.dead_lettered();
                telemetry.dead_lettered_for(dead.stage.as_str(), dead.reason.as_str());
                telemetry.remember_dead_letter(RecentDeadLetter {
                    input: input.clone(),
                    stage: dead.stage.as_str(),
                    reason: dead.reason.as_str(),
                    detail: dead.detail.clone(),
                });
            }
        }
        let Some(origin) = origin.cloned() else {
            return;
        };
        telemetry.keep(match purpose {
            Purpose::Output(output) => Record::Published {
                origin,
                output,
                record: landed.of(record),
            },
            Purpose::DeadLetter(dead, _) => Record::DeadLettered {
                origin,
                topic: dead.topic,
                reason: dead.reason.as_str().to_owned(),
                detail: dead.detail,
            },
        });
    }
}

/// Drives one effect to success, or to the failure that ends it. The first
/// attempt is already under way; each later one is admitted by the target's
/// breaker and retried within the budget. An attempt that was a breaker's
/// probe does not spend the budget: while a target is down nothing is given
/// up on, it only waits.
pub(crate) async fn drive<T, First, Again, Next>(
    breaker: &Breaker,
    (policy, waiting): (&RetryPolicy, &Waiting),
    admission: Admission,
    first: First,
    mut again: Again,
) -> Result<T, Failure>
where
    First: Future<Output = Result<T, EffectError>>,
    Again: FnMut() -> Next,
    Next: Future<Output = Result<T, EffectError>>,
{
    // Most effects succeed at once; the retry budget is only set up when one does not.
    let mut retries: Option<Retries> = None;
    let mut admission = admission;
    let mut result = first.await;
    loop {
        let retries = retries.get_or_insert_with(|| Retries::new(policy));
        retries.admitted(&admission);
        match result {
            Ok(value) => {
                breaker.record(admission, Outcome::Healthy);
                return Ok(value);
            }
            Err(EffectError::Permanent { reason, detail }) => {
                breaker.record(admission, Outcome::Healthy);
                return Err(Failure {
                    reason,
                    detail,
                    attempts: retries.made(),
                });
            }
            Err(EffectError::Transient(detail)) => {
                breaker.record(admission, Outcome::Failed);
                let Some(delay) = retries.next_delay() else {
                    return Err(Failure {
                        reason: Reason::RetriesExhausted,
                        detail,
                        attempts: retries.made(),
                    });
                };
                tracing::warn!(
                    %detail,
                    attempts = retries.made(),
                    delay_ms = delay.as_millis() as u64,
                    "effect failed; retrying"
                );
                breaker.retried();
                tokio::time::sleep(delay).await;
                admission = breaker.admit(waiting).await;
                result = again().await;
            }
        }
    }
}

/// Drives an effect none of whose attempts has started yet: the first is
/// admitted by the target's breaker too, then as `drive`.
pub(crate) async fn admit_and_drive<T, Attempt, Next>(
    breaker: &Breaker,
    (policy, waiting): (&RetryPolicy, &Waiting),
    mut attempt: Attempt,
) -> Result<T, Failure>
where
    Attempt: FnMut() -> Next,
    Next: Future<Output = Result<T, EffectError>>,
{
    let admission = breaker.admit(waiting).await;
    let first = attempt();
    drive(breaker, (policy, waiting), admission, first, attempt).await
}

fn failure(error: EffectError, attempts: u32) -> Failure {
    match error {
        EffectError::Permanent { reason, detail } => Failure {
            reason,
            detail,
            attempts,
        },
        EffectError::Transient(detail) => Failure {
            reason: Reason::RetriesExhausted,
            detail,
            attempts,
        },
    }
}

/// The `sluice-id` of an output (`<topic>/<partition>/<offset>/<index>`):
/// the same on every redelivery, so downstream consumers can drop duplicates.
fn output_id(input: &str, index: impl std::fmt::Display) -> String {
    use std::fmt::Write;
    let mut id = String::with_capacity(input.len() + 12);
    id.push_str(input);
    let _ = write!(id, "/{index}");
    id
}

/// The `log` effect: a `tracing` event tagged with handler and input,
/// within the version's rate limit and cut at `MAX_LINE` bytes.
fn log(message: &Message, handler: &dyn Handler, entry: &LogEntry) {
    if !handler.admit_log_line() {
        return;
    }
    let mut cut = entry.text.len().min(MAX_LINE);
    while !entry.text.is_char_boundary(cut) {
        cut -= 1;
    }
    let text = match cut < entry.text.len() {
        false => std::borrow::Cow::Borrowed(entry.text.as_str()),
        true => format!(
            "{}... ({} bytes cut)",
            &entry.text[..cut],
            entry.text.len() - cut
        )
        .into(),
    };
    let (name, version, input) = (handler.name(), handler.version(), message.id());
    match entry.level {
        LogLevel::Trace => {
            tracing::trace!(target: "sluice::handler", handler = name, version, %input, "{text}")
        }
        LogLevel::Debug => {
            tracing::debug!(target: "sluice::handler", handler = name, version, %input, "{text}")
        }
        LogLevel::Info => {
            tracing::info!(target: "sluice::handler", handler = name, version, %input, "{text}")
        }
        LogLevel::Warn => {
            tracing::warn!(target: "sluice::handler", handler = name, version, %input, "{text}")
        }
        LogLevel::Error => {
            tracing::error!(target: "sluice::handler", handler = name, version, %input, "{text}")
        }
    }
}
