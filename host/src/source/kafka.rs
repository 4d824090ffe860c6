//! The Kafka source: one consumer-group member subscribed to every routed
//! topic. Each assigned partition is split onto its own queue, which feeds
//! that partition's lane, so partitions never wait on each other.
//!
//! Offsets are committed by sluice itself, never automatically: the
//! watermark of each partition (every message below it finished), on the
//! commit interval, sooner when lanes run short of in-flight slots, before
//! partitions are revoked and at shutdown. Commits are synchronous (on a
//! blocking thread): librdkafka answers sluice's own asynchronous commits to
//! no one, and the answer is what gives back the slots of the messages a
//! commit covers. Partitions of exactly-once routes are
//! left out: their offsets commit inside the producer's transactions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance,
    StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};

use super::Delivery;
use super::Pause;
use super::offsets::{Offsets, Starving, TopicPartition};
use super::parked::{self, ParkedKeys};
use crate::config::Config;
use crate::contract::{Header, Message};
use crate::telemetry::Health;
use crate::telemetry::client_logs::ClientLogs;

/// How long a committed-offsets query may take before it counts as failed.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long each lag query may take: it is asked again every second, and a
/// stop waits for the one running.
const LAG_QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a revoke checks whether the partition's messages are done.
const REVOKE_POLL: Duration = Duration::from_millis(5);

type SourceConsumer = StreamConsumer<SourceContext>;

/// What the consumer tells the run loop.
pub(crate) enum SourceEvent {
    /// A partition was assigned; its messages arrive on this feed.
    Assigned(TopicPartition, PartitionFeed),
    /// A partition was revoked.
    Revoked(TopicPartition),
}

/// Work to finish before revoked partitions are let go: deciding the
/// exactly-once transaction that holds their offsets. It blocks.
pub(crate) type BeforeRelease = Box<dyn Fn() + Send + Sync>;

/// Consumer callbacks: split assigned partitions onto their own queues, and
/// keep the watermarks and the group's offsets in step with assignment.
pub(crate) struct SourceContext {
    offsets: Arc<Offsets>,
    consumer: OnceLock<Weak<SourceConsumer>>,
    events: mpsc::UnboundedSender<SourceEvent>,
    /// How each assigned partition's lane is told it was revoked.
    revocations: Mutex<HashMap<TopicPartition, watch::Sender<bool>>>,
    revoke_timeout: Duration,
    /// Topics whose offsets the consumer never commits (exactly-once routes).
    transactional: Arc<HashSet<String>>,
    before_release: OnceLock<BeforeRelease>,
    /// Settings for reading dead-letter topics back (`parked`).
    reader: Arc<ClientConfig>,
    /// Told when the group is joined (readiness), and each partition's lag.
    health: Arc<Health>,
    /// The consumer's logs, said once (`client_logs`).
    logs: ClientLogs,
    /// Where a partition with no committed offset starts: its beginning
    /// (`auto.offset.reset` earliest, sluice's default) or its end.
    from_beginning: bool,
}

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.logs.log(level, facility, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.logs.error(&error, reason)
    }
}

impl ConsumerContext for SourceContext {
    // Runs before librdkafka (incrementally) assigns or revokes. A queue split
    // off before the assignment is never forwarded to the main queue, so the
    // split has to happen here, not after.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(_) = rebalance {
            // Even an empty assignment means the group took this member in.
            self.health.joined();
        }
        match rebalance {
            Rebalance::Assign(assigned) if assigned.count() > 0 => {
                let Some(stream) = self.consumer.get().and_then(Weak::upgrade) else {
                    return;
                };
                let partitions = partitions_of(assigned);
                tracing::info!(partitions = %list(&partitions), "partitions assigned");
                for tp in partitions {
                    self.offsets.open(&tp);
                    match stream.split_partition_queue(&tp.0, tp.1) {
                        Some(queue) => {
                            let (revoke, revoked) = watch::channel(false);
                            self.revocations
                                .lock()
                                .expect("revocations lock")
                                .insert(tp.clone(), revoke);
                            let feed = PartitionFeed {
                                queue,
                                offsets: self.offsets.clone(),
                                consumer: stream.clone(),
                                tp: tp.clone(),
                                revoked,
                                reader: self.reader.clone(),
                            };
                            let _ = self.events.send(SourceEvent::Assigned(tp, feed));
                        }
                        None => {
                            tracing::error!(topic = %tp.0, partition = tp.1, "cannot split assigned partition")
                        }
                    }
                }
            }
            Rebalance::Revoke(revoked) if revoked.count() > 0 => {
                let partitions = partitions_of(revoked);
                tracing::info!(partitions = %list(&partitions), "partitions revoked");
                // Waiting for the partitions' messages blocks this thread (the
                // one serving the consumer): the runtime's other tasks are
                // moved off it meanwhile.
                tokio::task::block_in_place(|| self.release(consumer, &partitions));
                for tp in partitions {
                    let _ = self.events.send(SourceEvent::Revoked(tp));
                }
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance failed"),
            Rebalance::Assign(_) | Rebalance::Revoke(_) => {}
        }
    }
}

impl SourceContext {
    /// Lets revoked partitions go: stops their lanes, waits (up to the
    /// revoke timeout) for their messages in flight, and commits what is
    /// finished. Blocking here is what holds the rebalance until the
    /// partitions are done with.
    fn release(&self, consumer: &BaseConsumer<Self>, partitions: &[TopicPartition]) {
        self.drain(partitions);
        let watermarks: Vec<_> = partitions
            .iter()
            .filter(|tp| !self.transactional.contains(&tp.0))
            .filter_map(|tp| self.offsets.watermark(tp).map(|w| (tp.clone(), w)))
            .collect();
        // From here on, messages of these partitions still in flight no
        // longer count, and cannot enter a transaction.
        for tp in partitions {
            self.offsets.forget(tp);
        }
        if let Some(before_release) = self.before_release.get() {
            before_release();
        }
        commit(consumer, &self.offsets, &watermarks);
    }

    /// Stops the lanes of revoked partitions and waits, up to the revoke
    /// timeout, for their messages in flight to finish. Closing them first
    /// makes "nothing new begins" and "nothing is in flight" one fact: a
    /// message a lane takes from the queue after this is left unhandled.
    fn drain(&self, partitions: &[TopicPartition]) {
        for tp in partitions {
            self.offsets.close(tp);
        }
        {
            let mut revocations = self.revocations.lock().expect("revocations lock");
            for tp in partitions {
                if let Some(revoke) = revocations.remove(tp) {
                    revoke.send_replace(true);
                }
            }
        }
        let deadline = Instant::now() + self.revoke_timeout;
        while self.offsets.in_flight_of(partitions) > 0 {
            if Instant::now() >= deadline {
                tracing::warn!(
                    in_flight = self.offsets.in_flight_of(partitions),
                    timeout_ms = self.revoke_timeout.as_millis() as u64,
                    "revoke timeout: letting partitions go with messages in flight"
                );
                return;
            }
            std::thread::sleep(REVOKE_POLL);
        }
    }
}

/// One assigned partition's own queue of messages.
pub(crate) struct PartitionFeed {
    queue: StreamPartitionQueue<SourceContext>,
    offsets: Arc<Offsets>,
    consumer: Arc<SourceConsumer>,
    tp: TopicPartition,
    revoked: watch::Receiver<bool>,
    reader: Arc<ClientConfig>,
}

impl PartitionFeed {
    /// Reads the keys of this partition parked by earlier runs, as the
    /// dead letters in `dead_letters` say; to run on a blocking thread.
    pub(crate) fn parked_keys(
        &self,
        dead_letters: &str,
    ) -> impl FnOnce() -> KafkaResult<ParkedKeys> + Send + 'static {
        let (reader, dead_letters, tp) = (
            self.reader.clone(),
            dead_letters.to_owned(),
            self.tp.clone(),
        );
        move || parked::read(&reader, &dead_letters, &tp)
    }

    /// A signal that fires when the partition is revoked.
    pub(crate) fn revocation(&self) -> watch::Receiver<bool> {
        self.revoked.clone()
    }

    /// Stops fetching the partition.
    pub(crate) fn pause(&self, why: Pause) {
        let (topic, partition, reason) = (&self.tp.0, self.tp.1, why.as_str());
        match why {
            Pause::TargetDown | Pause::Operator | Pause::OutputBytes => {
                tracing::info!(topic, partition, "partition paused: {reason}")
            }
            Pause::InFlightCap => tracing::debug!(topic, partition, "partition paused: {reason}"),
        }
        if let Err(error) = self.consumer.pause(&self.list()) {
            tracing::warn!(%error, topic = %self.tp.0, partition = self.tp.1, "cannot pause partition");
        }
    }

    /// Fetches the partition again.
    pub(crate) fn resume(&self) {
        tracing::debug!(topic = %self.tp.0, partition = self.tp.1, "partition resumed");
        if let Err(error) = self.consumer.resume(&self.list()) {
            tracing::warn!(%error, topic = %self.tp.0, partition = self.tp.1, "cannot resume partition");
        }
    }

    fn list(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.tp.0, self.tp.1);
        tpl
    }

    /// Asks for a commit soon (the lane is short of slots).
    pub(crate) fn want_commit(&self) {
        self.offsets.want_commit();
    }

    /// Marks the lane as waiting for slots while the guard lives.
    pub(crate) fn starving(&self) -> Starving<'_> {
        self.offsets.starving()
    }

    /// Fetches the partition again from `offset`: messages fetched before
    /// are discarded by librdkafka, and what this host knew of the
    /// partition's offsets is forgotten.
    pub(crate) fn rewind(&self, offset: i64) {
        self.offsets.forget(&self.tp);
        // No waiting: librdkafka drops outdated messages from the queue as
        // of this call, and fetches from `offset` next.
        if let Err(error) = self.consumer.seek(
            &self.tp.0,
            self.tp.1,
            Offset::Offset(offset),
            Duration::ZERO,
        ) {
            tracing::error!(%error, topic = %self.tp.0, partition = self.tp.1, offset, "cannot rewind partition");
        }
    }

    /// Waits for a message, then takes what else is ready, up to `max`; each
    /// is registered as in flight.
    pub(crate) async fn next_batch(&mut self, batch: &mut Vec<Delivery>, max: usize) -> usize {
        let mut stream = self.queue.stream();
        let mut fetched = Vec::with_capacity(max);
        loop {
            while fetched.len() < max {
                let next = if fetched.is_empty() {
                    stream.next().await
                } else {
                    match stream.next().now_or_never() {
                        Some(next) => next,
                        None => break,
                    }
                };
                match next {
                    Some(Ok(message)) => fetched.push(owned(&message)),
                    // librdkafka recovers from fetch errors by itself.
                    Some(Err(error)) => tracing::warn!(%error, "partition consumer error"),
                    None => break,
                }
            }
            if fetched.is_empty() {
                return 0;
            }
            // One trip through the offsets' lock per batch, not per message:
            // every lane's messages begin and settle under that lock.
            let offsets = fetched.iter().map(|m| m.offset);
            match self.offsets.begin_all(self.tp.clone(), offsets) {
                Some(acks) => {
                    let received = fetched.len();
                    batch.extend(
                        fetched
                            .into_iter()
                            .zip(acks)
                            .map(|(message, ack)| Delivery {
                                message: Arc::new(message),
                                ack,
                            }),
                    );
                    return received;
                }
                // The partition is being let go: its messages are left for
                // its next owner, and the lane waits for its stop.
                None => fetched.clear(),
            }
        }
    }
}

/// A message that arrived on the main queue instead of its partition's:
/// the split did not take, and the run stops rather than process it out of
/// order or lose it.
#[derive(Debug, thiserror::Error)]
#[error("message {topic}[{partition}]@{offset} arrived outside its partition queue")]
pub struct UnsplitMessage {
    topic: String,
    partition: i32,
    offset: i64,
}

/// A consumer-group member feeding the pipeline.
pub(crate) struct KafkaSource {
    consumer: Arc<SourceConsumer>,
    offsets: Arc<Offsets>,
    events: mpsc::UnboundedReceiver<SourceEvent>,
}

impl KafkaSource {
    /// Joins the group and subscribes to every routed topic.
    pub(crate) fn connect(
        config: &Config,
        brokers: &str,
        offsets: Arc<Offsets>,
        health: Arc<Health>,
    ) -> KafkaResult<KafkaSource> {
        let mut client = consumer_client(config, brokers);
        let from_beginning = matches!(
            client.get("auto.offset.reset"),
            Some("earliest" | "smallest" | "beginning")
        );
        let reader = Arc::new(parked::reader(&client, &config.group_id));
        client
            .set("group.id", &config.group_id)
            // Aborted transactions (an exactly-once host's, upstream) never count.
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let (events, events_received) = mpsc::unbounded_channel();
        let consumer: Arc<SourceConsumer> =
            Arc::new(client.create_with_context(SourceContext {
                offsets: offsets.clone(),
                health,
                consumer: OnceLock::new(),
                events,
                revocations: Mutex::default(),
                revoke_timeout: config.revoke_timeout,
                transactional: Arc::new(config.transactional_topics()),
                before_release: OnceLock::new(),
                reader,
                from_beginning,
                logs: ClientLogs::new("consumer"),
            })?);
        let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
        let topics: Vec<&str> = config.routes.iter().map(|r| r.topic.as_str()).collect();
        consumer.subscribe(&topics)?;
        tracing::info!(brokers, group = %config.group_id, topics = %topics.join(","), "subscribed");
        Ok(KafkaSource {
            consumer,
            offsets,
            events: events_received,
        })
    }

    /// Serves the consumer's events (rebalances run in here) and returns the
    /// next one. Messages all go to partition queues;
    /// one here is an error.
    pub(crate) async fn next_event(&mut self) -> Result<SourceEvent, UnsplitMessage> {
        loop {
            tokio::select! {
                biased;
                Some(event) = self.events.recv() => return Ok(event),
                received = self.consumer.recv() => match received {
                    Ok(message) => {
                        return Err(UnsplitMessage {
                            topic: message.topic().to_owned(),
                            partition: message.partition(),
                            offset: message.offset(),
                        });
                    }
                    // librdkafka recovers from broker and network errors by itself.
                    Err(error) => self.consumer.context().logs.error(&error, ""),
                },
            }
        }
    }

    /// A handle for storing and committing offsets, usable from blocking
    /// threads while the source loop goes on.
    pub(crate) fn committer(&self) -> Committer {
        Committer {
            consumer: self.consumer.clone(),
            offsets: self.offsets.clone(),
            transactional: self.consumer.context().transactional.clone(),
        }
    }

    /// The consumer's group membership, for exactly-once transactions.
    pub(crate) fn membership(&self) -> Membership {
        Membership {
            consumer: Arc::downgrade(&self.consumer),
        }
    }

    /// Sets what must happen before revoked partitions are let go.
    pub(crate) fn before_release(&self, work: BeforeRelease) {
        let _ = self.consumer.context().before_release.set(work);
    }
}

/// The group membership exactly-once transactions commit offsets under
/// (KIP-447). It does not keep the consumer alive: the consumer holds the
/// transaction (to commit before a revoke), and must still close when the
/// source is dropped.
#[derive(Clone)]
pub(crate) struct Membership {
    consumer: Weak<SourceConsumer>,
}

impl Membership {
    /// The group's current generation and member id; none once the
    /// consumer is closed or has no group.
    pub(crate) fn group_metadata(&self) -> Option<ConsumerGroupMetadata> {
        self.consumer.upgrade()?.group_metadata()
    }
}

/// Commits finished offsets, and tells whether everything is.
#[derive(Clone)]
pub(crate) struct Committer {
    consumer: Arc<SourceConsumer>,
    offsets: Arc<Offsets>,
    transactional: Arc<HashSet<String>>,
}

impl Committer {
    /// Commits every watermark ahead of its last commit now (blocks).
    pub(crate) fn commit_now(&self) {
        commit(&*self.consumer, &self.offsets, &self.uncommitted());
    }

    fn uncommitted(&self) -> Vec<(TopicPartition, i64)> {
        self.offsets
            .uncommitted(|topic| self.transactional.contains(topic))
    }

    /// Whether every assigned partition is consumed and committed up to its
    /// end. Blocks on broker round trips.
    pub(crate) fn drained(&self) -> KafkaResult<bool> {
        let assignment = self.consumer.assignment()?;
        if assignment.count() == 0 || self.behind(&assignment) {
            return Ok(false);
        }
        self.commit_now();
        let committed = self.consumer.committed_offsets(assignment, QUERY_TIMEOUT)?;
        let drained = committed.elements().iter().all(|element| {
            let Some((low, high)) = self.cached_watermarks(element.topic(), element.partition())
            else {
                return false;
            };
            let done = match element.offset() {
                Offset::Offset(offset) => offset,
                _ => low,
            };
            done >= high
        });
        // Lists from the consumer must go before the consumer does (see kafka.md).
        drop(committed);
        Ok(drained)
    }

    /// Whether a partition of `assignment` is known, without a broker round
    /// trip, to hold messages not yet finished here: its watermark is below
    /// its high watermark. Partitions with nothing received yet are left to
    /// the committed offsets.
    fn behind(&self, assignment: &TopicPartitionList) -> bool {
        assignment.elements().iter().any(|element| {
            let tp = (element.topic().to_owned(), element.partition());
            let watermark = self.offsets.watermark(&tp);
            let high = self.cached_watermarks(element.topic(), element.partition());
            matches!((watermark, high), (Some(watermark), Some((_, high))) if watermark < high)
        })
    }

    /// Measures every assigned partition's lag (`lags`) for `/metrics` and
    /// the status page. Blocks on broker round trips.
    pub(crate) fn measure_lags(&self) {
        let context = self.consumer.context();
        match self.lags() {
            Ok(Some(lags)) => {
                context.logs.answered();
                context.health.lags(lags)
            }
            Ok(None) => context.health.lags(BTreeMap::new()),
            // The last measure stands until the broker answers again.
            Err(error) => tracing::debug!(%error, "lag query failed; will ask again"),
        }
    }

    /// Each assigned partition's backlog: its end (the last stable offset,
    /// as only committed records are read) minus the group's committed
    /// offset, which is what a restart would resume from and what Kafka's
    /// own tools call lag. Asked of the broker, not taken from fetches, so
    /// a partition that is paused or has not fetched yet shows what waits
    /// in it. With nothing committed, the backlog counts from where the
    /// consumer starts. `None` with nothing assigned: no broker was asked.
    fn lags(&self) -> KafkaResult<Option<BTreeMap<TopicPartition, i64>>> {
        let assignment = self.consumer.assignment()?;
        if assignment.count() == 0 {
            return Ok(None);
        }
        // Committed first: an end read after it is never below it.
        let mut starts = self
            .consumer
            .committed_offsets(assignment.clone(), LAG_QUERY_TIMEOUT)?;
        let ends = self.offsets_at(assignment, Offset::End)?;
        let mut uncommitted = TopicPartitionList::new();
        for element in starts.elements() {
            if !matches!(element.offset(), Offset::Offset(_)) {
                uncommitted.add_partition(element.topic(), element.partition());
            }
        }
        if uncommitted.count() > 0 {
            let from = if self.consumer.context().from_beginning {
                self.offsets_at(uncommitted, Offset::Beginning)?
            } else {
                ends.clone()
            };
            for element in from.elements() {
                starts.set_partition_offset(
                    element.topic(),
                    element.partition(),
                    element.offset(),
                )?;
            }
        }
        let mut lags = BTreeMap::new();
        for end in ends.elements() {
            let (topic, partition) = (end.topic(), end.partition());
            let start = starts.find_partition(topic, partition).map(|s| s.offset());
            if let (Offset::Offset(end), Some(Offset::Offset(start))) = (end.offset(), start) {
                lags.insert((topic.to_owned(), partition), (end - start).max(0));
            }
        }
        // Lists from the consumer must go before the consumer does (see kafka.md).
        drop((starts, ends));
        Ok(Some(lags))
    }

    /// The offsets of `partitions` at their beginning or end, asked of
    /// their leaders in one round trip each.
    fn offsets_at(
        &self,
        mut partitions: TopicPartitionList,
        place: Offset,
    ) -> KafkaResult<TopicPartitionList> {
        partitions.set_all_offsets(place)?;
        self.consumer
            .offsets_for_times(partitions, LAG_QUERY_TIMEOUT)
    }

    /// A partition's low and high watermarks as of the latest fetch response
    /// (no broker round trip; `fetch_watermarks` costs one per partition).
    fn cached_watermarks(&self, topic: &str, partition: i32) -> Option<(i64, i64)> {
        let topic = std::ffi::CString::new(topic).ok()?;
        let (mut low, mut high) = (-1, -1);
        // SAFETY: the client handle is alive for `&self`, `topic` is a valid
        // C string for the call, and the out-pointers point at locals.
        let error = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
                &mut low,
                &mut high,
            )
        };
        (error == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            && low >= 0
            && high >= 0)
            .then_some((low, high))
    }
}

/// The consumer's settings before the group's: sluice's defaults, then
/// `[kafka.common]` and `[kafka.consumer]` over them.
pub(crate) fn consumer_client(config: &Config, brokers: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    // Defaults a user may override through [kafka.consumer]. Prefetch is
    // kept small per partition: a backlog should wait in the broker, and
    // a partition at its in-flight cap is paused anyway.
    client
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("queued.max.messages.kbytes", "4096")
        .set("queued.min.messages", "5000")
        // A partition whose prefetch is full is fetched again this soon
        // (librdkafka's default is 1 s): with a prefetch this small the
        // lanes empty it well within a second and would then sit idle;
        // that held P1 at about half the native consumer's rate.
        .set("fetch.queue.backoff.ms", "20")
        // A broker back from an outage is tried again within a second
        // (librdkafka's default backs off to 10 s), as the Java client does.
        .set("reconnect.backoff.max.ms", "1000");
    for (key, value) in &config.kafka.for_consumer() {
        client.set(key, value);
    }
    client.set("bootstrap.servers", brokers);
    client
}

/// Copies a borrowed Kafka message into the host's message type.
fn owned(msg: &BorrowedMessage<'_>) -> Message {
    let headers = msg
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| Header::new(h.key, h.value.unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    Message {
        topic: msg.topic().to_owned(),
        partition: msg.partition(),
        offset: msg.offset(),
        key: msg.key().map(<[u8]>::to_vec),
        payload: msg.payload().unwrap_or_default().to_vec(),
        headers,
        timestamp: msg.timestamp().to_millis().map_or(0, |ms| ms.max(0) as u64),
    }
}

fn partitions_of(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

fn list(partitions: &[TopicPartition]) -> String {
    partitions
        .iter()
        .map(|(topic, partition)| format!("{topic}[{partition}]"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Commits these offsets and, once confirmed, releases what they cover.
fn commit<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    offsets: &Offsets,
    watermarks: &[(TopicPartition, i64)],
) {
    if watermarks.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), next) in watermarks {
        if let Err(error) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
            tracing::warn!(%error, topic, partition, "cannot list offset to commit");
        }
    }
    match consumer.commit(&tpl, CommitMode::Sync) {
        Ok(()) => release_committed(offsets, &tpl),
        // A partition revoked in the meantime refuses the commit; its new
        // owner starts from the last commit, so nothing is lost.
        Err(error) => tracing::warn!(%error, "commit failed; offsets will be committed later"),
    }
}

/// Releases what the messages covered by a confirmed commit hold.
fn release_committed(offsets: &Offsets, committed: &TopicPartitionList) {
    for element in committed.elements() {
        if let (Offset::Offset(offset), Ok(())) = (element.offset(), element.error()) {
            offsets.committed(&(element.topic().to_owned(), element.partition()), offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer_setting(extra: &str, key: &str) -> Option<String> {
        consumer_client(&Config::with_one_route(extra), "localhost:9092")
            .get(key)
            .map(str::to_owned)
    }

    #[test]
    fn common_kafka_properties_reach_the_consumer_and_its_own_override_them() {
        let common = "[kafka.common]\n\"security.protocol\" = \"SASL_SSL\"\n\"reconnect.backoff.max.ms\" = \"500\"\n";
        assert_eq!(
            consumer_setting(common, "security.protocol").as_deref(),
            Some("SASL_SSL")
        );
        assert_eq!(
            consumer_setting(common, "reconnect.backoff.max.ms").as_deref(),
            Some("500")
        );
        assert_eq!(
            consumer_setting("", "reconnect.backoff.max.ms").as_deref(),
            Some("1000")
        );
        let own = format!("{common}[kafka.consumer]\n\"security.protocol\" = \"SSL\"\n");
        assert_eq!(
            consumer_setting(&own, "security.protocol").as_deref(),
            Some("SSL")
        );
    }
}
