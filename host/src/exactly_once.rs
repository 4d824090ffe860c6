//! Exactly-once delivery for routes whose outputs are all publishes: every
//! output and dead letter of such a route is produced inside the open
//! transaction of one transactional producer, and the consumed offsets are
//! sent in the same transaction under the consumer group's membership
//! (KIP-447). A commit makes outputs and progress visible together; an abort
//! undoes both.
//!
//! One transaction spans every exactly-once partition of this host. It is
//! committed on the commit interval, sooner when lanes run short of slots,
//! before partitions are revoked and at shutdown. Messages enter it under a
//! shared gate and a commit takes the gate alone, so a transaction never
//! holds half a message. The offset it commits for a partition is one past
//! the last message of it that it holds: an exactly-once route hands its
//! outputs over in offset order, so every message below is in this
//! transaction or an earlier one, and none above.
//!
//! When a commit fails, the transaction is aborted and each of its
//! partitions is rewound to where the transaction began for it: its messages
//! are handled again from the last committed offset. A record the broker
//! refused for good is remembered, and its message is dead-lettered on the
//! re-run instead. A transaction whose commit could not begin well inside
//! `transaction.timeout.ms` (a broker away for that long) is aborted rather
//! than committed: the broker may have aborted it on its own already.
//!
//! It knows its surroundings through two narrow handles: a partition's lane
//! as something to [`Rewind`], and the consumer as its group [`Membership`]
//! (which does not keep the consumer alive). Revoked partitions wait for a
//! commit through [`Transaction::committer`]: a request to the committing
//! task, answered on a plain channel, so librdkafka's rebalance callback
//! never runs the async runtime itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use tokio::sync::{Notify, RwLock, RwLockReadGuard, mpsc, watch};

use crate::effects::publish::{CommitError, Publisher};
use crate::effects::{Failure, Pending};
use crate::policy::retry::Backoff;
use crate::source::kafka::Membership;
use crate::source::offsets::{Offsets, TopicPartition};

/// Backoff between attempts while transactions keep failing.
const RETRY_INITIAL: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// The transactional producer cannot go on (fenced, or in a fatal state);
/// the run stops and its uncommitted messages are handled again elsewhere.
#[derive(Clone, Debug, thiserror::Error)]
#[error("exactly-once producer failed for good: {0}")]
pub struct TransactionFailed(KafkaError);

/// The open transaction and what commits it.
pub(crate) struct Transaction {
    publisher: Arc<Publisher>,
    offsets: Arc<Offsets>,
    /// Shared by messages entering the transaction, taken alone to commit.
    gate: RwLock<()>,
    open: Mutex<Open>,
    /// Records the broker refused for good, by input: dead-lettered when
    /// their message comes round again.
    refused: Mutex<HashMap<(TopicPartition, i64), Failure>>,
    /// The consumer group the offsets are committed under (KIP-447).
    group: Mutex<Option<Membership>>,
    wanted: Notify,
    /// Commits asked for by a caller that waits for the answer.
    requests: mpsc::UnboundedSender<CommitRequest>,
    requested: Mutex<Option<mpsc::UnboundedReceiver<CommitRequest>>>,
    backoff: Mutex<Backoff>,
}

/// What the open transaction holds.
#[derive(Default)]
struct Open {
    partitions: HashMap<TopicPartition, Span>,
    messages: Vec<Enlisted>,
    /// When the first message entered.
    began: Option<Instant>,
}

/// What a transaction needs of a partition's lane: after an abort, to
/// start it over from an offset (the lane drops what it fetched beyond).
pub(crate) trait Rewind: Send + Sync {
    /// Handles the partition again from `offset`.
    fn rewind(&self, offset: i64);
}

/// A commit asked for from outside the committing task, and where its
/// outcome goes.
type CommitRequest = std::sync::mpsc::Sender<Result<(), TransactionFailed>>;

/// A partition's messages in the open transaction.
struct Span {
    lane: Arc<dyn Rewind>,
    /// Where the transaction began for the partition.
    first: i64,
    /// One past the last message: the offset to commit.
    next: i64,
}

/// A message whose outputs went into the open transaction.
struct Enlisted {
    tp: TopicPartition,
    offset: i64,
    pending: Pending,
}

/// A message's pass into the open transaction (the gate, shared).
pub(crate) struct Inside<'a> {
    _gate: RwLockReadGuard<'a, ()>,
}

impl Transaction {
    pub(crate) fn new(publisher: Arc<Publisher>, offsets: Arc<Offsets>) -> Self {
        let (requests, requested) = mpsc::unbounded_channel();
        Transaction {
            publisher,
            offsets,
            gate: RwLock::new(()),
            open: Mutex::default(),
            refused: Mutex::default(),
            group: Mutex::default(),
            wanted: Notify::new(),
            requests,
            requested: Mutex::new(Some(requested)),
            backoff: Mutex::new(Backoff::new(RETRY_INITIAL, RETRY_MAX)),
        }
    }

    /// The producer outputs of exactly-once routes go through.
    pub(crate) fn publisher(&self) -> &Arc<Publisher> {
        &self.publisher
    }

    /// Commits offsets under `group` from now on.
    pub(crate) fn commit_under(&self, group: Membership) {
        *self.group.lock().expect("group lock") = Some(group);
    }

    /// A blocking call that has the committing task (`run`) commit now and
    /// returns once the commit is decided; for threads that are not the
    /// runtime's (librdkafka's rebalance callback). Once the task has ended,
    /// it returns at once: the run is closing, lanes are finished, and the
    /// run's own last `commit` (at close) settles what is left; or the
    /// producer failed for good and nothing can be committed.
    pub(crate) fn committer(
        &self,
    ) -> impl Fn() -> Result<(), TransactionFailed> + Send + Sync + use<> {
        let requests = self.requests.clone();
        move || {
            let (answer, answered) = std::sync::mpsc::channel();
            if requests.send(answer).is_err() {
                return Ok(());
            }
            answered.recv().unwrap_or(Ok(()))
        }
    }

    /// Waits until messages may enter the open transaction (not while it
    /// commits); they are in it while the pass is held.
    pub(crate) async fn enter(&self) -> Inside<'_> {
        Inside {
            _gate: self.gate.read().await,
        }
    }

    /// Whether the broker refused a record of this input for good in an
    /// aborted transaction; the failure, to dead-letter it with. Remembered
    /// until a commit passes the input: the transaction holding the dead
    /// letter may be aborted too.
    pub(crate) fn refused(&self, tp: &TopicPartition, offset: i64) -> Option<Failure> {
        let refused = self.refused.lock().expect("refused lock");
        if refused.is_empty() {
            return None;
        }
        refused.get(&(tp.clone(), offset)).cloned()
    }

    /// Puts a handled message into the open transaction.
    pub(crate) fn enlist<L: Rewind + 'static>(
        &self,
        _inside: &Inside<'_>,
        tp: &TopicPartition,
        lane: &Arc<L>,
        offset: i64,
        pending: Pending,
    ) {
        let mut open = self.open.lock().expect("transaction lock");
        open.began.get_or_insert_with(Instant::now);
        open.partitions
            .entry(tp.clone())
            .and_modify(|span| span.next = offset + 1)
            .or_insert_with(|| Span {
                lane: lane.clone(),
                first: offset,
                next: offset + 1,
            });
        open.messages.push(Enlisted {
            tp: tp.clone(),
            offset,
            pending,
        });
    }

    /// Asks for a commit soon (lanes are short of slots).
    pub(crate) fn want_commit(&self) {
        self.wanted.notify_one();
    }

    /// Commits on the interval and when asked, until `stop`.
    pub(crate) async fn run(
        self: Arc<Self>,
        every: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), TransactionFailed> {
        let mut requests = (self.requested.lock().expect("requests lock").take())
            .expect("one committing task per transaction");
        let mut tick = tokio::time::interval(every);
        loop {
            let answer = tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => return Ok(()),
                Some(answer) = requests.recv() => Some(answer),
                _ = tick.tick() => None,
                _ = self.wanted.notified() => None,
            };
            let committed = self.commit().await;
            if let Some(answer) = answer {
                let _ = answer.send(committed.clone());
            }
            committed?;
        }
    }

    /// Commits what the open transaction holds, or aborts it and rewinds
    /// its partitions if the commit fails. Never to be cancelled: the
    /// producer's calls go on (and hold the transaction) until answered.
    pub(crate) async fn commit(&self) -> Result<(), TransactionFailed> {
        let _alone = self.gate.write().await;
        let open = std::mem::take(&mut *self.open.lock().expect("transaction lock"));
        if open.messages.is_empty() {
            return Ok(());
        }
        let positions: Vec<(TopicPartition, i64)> = open
            .partitions
            .iter()
            .map(|(tp, span)| (tp.clone(), span.next))
            .collect();
        tracing::debug!(
            messages = open.messages.len(),
            ?positions,
            "committing transaction"
        );
        let group = self
            .group
            .lock()
            .expect("group lock")
            .as_ref()
            .and_then(Membership::group_metadata);
        let publisher = self.publisher.clone();
        let committing = positions.clone();
        let began = open.began.unwrap_or_else(Instant::now);
        let committed = tokio::task::spawn_blocking(move || match group {
            Some(group) => publisher.commit_transaction(&committing, &group, began),
            None => Err(CommitError::NotInGroup),
        })
        .await
        .expect("transaction commit does not panic");
        match committed {
            Ok(()) => {
                for (tp, next) in &positions {
                    self.offsets.committed(tp, *next);
                }
                self.refused
                    .lock()
                    .expect("refused lock")
                    .retain(|(tp, offset), _| {
                        positions
                            .iter()
                            .all(|(committed, next)| committed != tp || offset >= next)
                    });
                for message in open.messages {
                    message.pending.committed().await;
                }
                *self.backoff.lock().expect("backoff lock") =
                    Backoff::new(RETRY_INITIAL, RETRY_MAX);
                self.begin()
            }
            Err(CommitError::Kafka(error)) if is_fatal(&error) => Err(TransactionFailed(error)),
            Err(error) => self.abort(open, error).await,
        }
    }

    /// Aborts the open transaction: its partitions go back to where it
    /// began for them, and records refused for good are remembered.
    async fn abort(&self, open: Open, cause: CommitError) -> Result<(), TransactionFailed> {
        let publisher = self.publisher.clone();
        let aborted = tokio::task::spawn_blocking(move || publisher.abort_transaction())
            .await
            .expect("transaction abort does not panic");
        if let Err(error) = aborted {
            return Err(TransactionFailed(error));
        }
        for message in open.messages {
            if let Some(failure) = message.pending.refused().await {
                self.refused
                    .lock()
                    .expect("refused lock")
                    .insert((message.tp, message.offset), failure);
            }
        }
        for (tp, span) in &open.partitions {
            // Slots of the aborted messages go back now; the lane starts
            // over from where the transaction began.
            self.offsets.forget(tp);
            span.lane.rewind(span.first);
        }
        let delay = self.backoff.lock().expect("backoff lock").next_delay();
        tracing::warn!(
            error = %cause,
            partitions = open.partitions.len(),
            retry_in_ms = delay.as_millis() as u64,
            "transaction aborted; its messages will be handled again"
        );
        self.begin()?;
        // Still holding the gate: nothing enters until the wait is over.
        tokio::time::sleep(delay).await;
        Ok(())
    }

    fn begin(&self) -> Result<(), TransactionFailed> {
        self.publisher
            .begin_transaction()
            .map_err(TransactionFailed)
    }
}

/// Whether the producer can no longer be used (fenced by a newer instance,
/// or in librdkafka's fatal state).
fn is_fatal(error: &KafkaError) -> bool {
    match error {
        KafkaError::Transaction(error) => error.is_fatal(),
        _ => false,
    }
}
