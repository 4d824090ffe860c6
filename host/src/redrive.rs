//! `sluice redrive`: dead-lettered messages run again through the version of
//! their handler serving now. Handlers are pure, so this is safe once the
//! cause is fixed (a new version, a target back up).
//!
//! The dead-letter topic is read from where this redrive's group
//! (`<group>-redrive`) left off to its end as it was at the start. Each dead
//! letter gives back the message it holds (original key, payload, headers,
//! source offset and timestamp), which then goes through the same lanes,
//! effects, retries and dead-lettering as in `sluice run`, keeping key order.
//! A message that fails again is dead-lettered again, after the end this
//! redrive reads to. Progress is committed for the group as the messages
//! finish.
//!
//! A key parked by its dead letters (`park-key`) is un-parked once they all
//! went through: a marker on the dead-letter topic tells hosts that read
//! parked keys back, and a running host is told at once over its admin
//! server (`POST /routes/{topic}/unpark`, with the admin token).
//!
//! With `key`, only that key's dead letters run and nothing is committed
//! (the others are still to do); its marker makes a later full redrive skip
//! them. A dry run runs the handler on each and prints its outputs, as
//! `sluice replay` does, executing nothing.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::config::{Config, DeliveryMode, Route};
use crate::contract::{Message, Publish};
use crate::registry::Registry;
use crate::replay::canonical;
use crate::run::{Host, RunError, RunOptions, Serve, finish};
use crate::runtime::{CallError, HandlerKind, Runtime};
use crate::schedule::Queued;
use crate::source::Delivery;
use crate::source::dead_letters::{self, Entry, Letter};
use crate::source::offsets::Hold;
use crate::source::range::{Position, TopicRange};
use crate::telemetry::{RunReport, Stop};

/// How many records the reading thread may be ahead of the lanes.
const READ_AHEAD: usize = 256;
/// How long a running host's admin server may take to answer.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What to re-drive, and how.
#[derive(Debug, Clone)]
pub struct RedriveOptions {
    /// The dead-letter topic.
    pub dlq: String,
    /// Only this key's dead letters (UTF-8).
    pub key: Option<String>,
    /// Running hosts' admin addresses to un-park keys in (default: the
    /// config's `admin.listen`).
    pub admin: Vec<String>,
}

/// Why a redrive could not run.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// No route of the config dead-letters to the topic.
    #[error("no route dead-letters to {0:?}; routes dead-letter to: {1}")]
    NoRoute(String, String),
    /// The embedded broker lives only as long as its run.
    #[error("redrive needs a broker: the embedded one lives only as long as its `sluice run`")]
    Embedded,
    /// The dead-letter topic cannot be read or committed.
    #[error("reading {topic}: {source}")]
    Read {
        /// The topic.
        topic: String,
        /// What the client said.
        source: KafkaError,
    },
    /// The host could not be set up or stopped with a failure.
    #[error(transparent)]
    Run(#[from] RunError),
    /// Lines could not be written.
    #[error("cannot write output: {0}")]
    Write(#[from] std::io::Error),
}

/// What a redrive did.
#[derive(Debug, Default)]
pub struct RedriveReport {
    /// Dead letters run again (in a dry run: through the handler only).
    pub redriven: u64,
    /// Markers of earlier redrives, skipped.
    pub markers: u64,
    /// Dead letters a `--key` redrive did before.
    pub already: u64,
    /// Records that are not dead letters of this route (each said on stderr).
    pub foreign: u64,
    /// Keys un-parked, and what running hosts said.
    pub unparked: Vec<String>,
    /// The run's counts (not for a dry run).
    pub run: Option<RunReport>,
}

impl RedriveReport {
    /// A few lines for a person.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{} dead letters re-driven; skipped: {} markers, {} re-driven before, {} not dead letters of this route\n",
            self.redriven, self.markers, self.already, self.foreign
        );
        if let Some(run) = &self.run {
            out.push_str(&run.summary());
        }
        for line in &self.unparked {
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

/// One record of the dead-letter topic, sorted.
enum Item {
    /// Run it.
    Letter(Letter),
    /// Skip it, for this reason.
    Skip(Skip),
}

enum Skip {
    Marker,
    Already,
    OtherKey,
    Foreign(String),
}

/// Reads the dead-letter topic and sorts its records.
struct Reader {
    client: ClientConfig,
    route: Route,
    key: Option<Vec<u8>>,
    /// Per (partition, key): dead letters below this offset were re-driven.
    redriven: HashMap<(i32, Option<Vec<u8>>), i64>,
    ends: HashMap<i32, i64>,
}

impl Reader {
    /// Looks for earlier markers up to the current end (the first pass).
    fn open(config: &Config, options: &RedriveOptions) -> Result<Reader, RedriveError> {
        let route = config
            .routes
            .iter()
            .find(|r| r.dead_letter_topic() == options.dlq)
            .cloned()
            .ok_or_else(|| {
                let topics: Vec<String> =
                    config.routes.iter().map(Route::dead_letter_topic).collect();
                RedriveError::NoRoute(options.dlq.clone(), topics.join(", "))
            })?;
        let mut client = ClientConfig::new();
        for (key, value) in &config.kafka.for_consumer() {
            client.set(key, value);
        }
        client
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", format!("{}-redrive", config.group_id))
            .set("isolation.level", "read_committed");
        let mut reader = Reader {
            client,
            route,
            key: options.key.as_ref().map(|k| k.as_bytes().to_vec()),
            redriven: HashMap::new(),
            ends: HashMap::new(),
        };
        let range = reader.range()?;
        reader.ends = range.ends();
        for record in range {
            let record = record.map_err(|source| reader.failed(source))?;
            if let Entry::Marker { redriven_below } = dead_letters::entry(&record) {
                let below = reader
                    .redriven
                    .entry((record.partition, record.key.clone()))
                    .or_default();
                *below = (*below).max(redriven_below);
            }
        }
        Ok(reader)
    }

    fn failed(&self, source: KafkaError) -> RedriveError {
        RedriveError::Read {
            topic: self.route.dead_letter_topic(),
            source,
        }
    }

    /// The topic from the group's commits to the first pass's end.
    fn range(&self) -> Result<TopicRange, RedriveError> {
        let topic = self.route.dead_letter_topic();
        let mut range =
            TopicRange::open_with(&self.client, &topic, Position::Committed, Position::Edge)
                .map_err(|source| self.failed(source))?;
        if !self.ends.is_empty() {
            range.end_at(&self.ends);
        }
        Ok(range)
    }

    fn sort(&self, record: &Message) -> Item {
        let letter = match dead_letters::entry(record) {
            Entry::Marker { .. } => return Item::Skip(Skip::Marker),
            Entry::Foreign(why) => return Item::Skip(Skip::Foreign(why)),
            Entry::Letter(letter) => letter,
        };
        if self.key.is_some() && record.key != self.key {
            return Item::Skip(Skip::OtherKey);
        }
        if letter.message.topic != self.route.topic {
            return Item::Skip(Skip::Foreign(format!(
                "a dead letter of topic {:?}, not of {:?}",
                letter.message.topic, self.route.topic
            )));
        }
        let done_below = self.redriven.get(&(record.partition, record.key.clone()));
        if done_below.is_some_and(|below| record.offset < *below) {
            return Item::Skip(Skip::Already);
        }
        Item::Letter(letter)
    }
}

impl RedriveReport {
    fn skipped(&mut self, skip: &Skip, record: &Message) {
        match skip {
            Skip::Marker => self.markers += 1,
            Skip::Already => self.already += 1,
            Skip::OtherKey => {}
            Skip::Foreign(why) => {
                self.foreign += 1;
                tracing::warn!(
                    topic = %record.topic,
                    partition = record.partition,
                    offset = record.offset,
                    "skipped: {why}"
                );
            }
        }
    }
}

/// Runs each dead letter's message through the handler version serving its
/// route now and writes one JSON line per dead letter: where it is, why it
/// was dead-lettered, and the outcome. Executes and commits nothing.
pub fn dry_run(
    config: &Config,
    options: &RedriveOptions,
    out: &mut dyn Write,
) -> Result<RedriveReport, RedriveError> {
    if config.is_embedded() {
        return Err(RedriveError::Embedded);
    }
    let reader = Reader::open(config, options)?;
    let runtime = Runtime::for_config(config).map_err(RunError::from)?;
    let registry =
        Registry::open(config, Arc::new(runtime), &HashMap::new()).map_err(RunError::from)?;
    let selection = registry.selection(&reader.route.handler);
    let mut report = RedriveReport::default();
    for record in reader.range()? {
        let record = record.map_err(|source| reader.failed(source))?;
        let letter = match reader.sort(&record) {
            Item::Skip(skip) => {
                report.skipped(&skip, &record);
                continue;
            }
            Item::Letter(letter) => letter,
        };
        report.redriven += 1;
        let serving = selection.serving();
        let handler = serving.pick(&letter.message);
        let mut line = json!({
            "dead-letter": { "partition": record.partition, "offset": record.offset },
            "topic": letter.message.topic,
            "partition": letter.message.partition,
            "offset": letter.message.offset,
            "reason": letter.reason,
            "handler": handler.name(),
            "version": handler.version(),
        });
        let outcome = match handler.instantiate() {
            Err(trap) => canonical(&Err(CallError::Trap(trap))),
            Ok(mut instance) => match handler.kind() {
                HandlerKind::Handler => canonical(&instance.handle(&letter.message)),
                // A decision depends on its stream's state when it is made.
                HandlerKind::Decider => match instance.decider() {
                    Some(decider) => match decider.stream_id(&letter.message) {
                        Ok(stream) => json!({ "stream": stream, "decided": false }),
                        Err(error) => canonical(&Err(error)),
                    },
                    None => json!({ "decided": false }),
                },
            },
        };
        if let (Value::Object(line), Value::Object(outcome)) = (&mut line, outcome) {
            line.extend(outcome);
        }
        serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(report)
}

/// One key's dead letters in one dead-letter partition, re-driven.
struct KeyDone {
    /// The last letter's message (its source topic and partition, key).
    message: Arc<Message>,
    /// Its partition of the dead-letter topic.
    dlq_partition: i32,
    /// Just past its last dead letter.
    below: i64,
    /// Whether the route parks keys.
    parks: bool,
    /// Whether the re-drive's own failures parked the key again.
    parked_again: bool,
}

/// Re-drives the dead letters for real: see the module's comment.
pub async fn redrive(
    config: &Config,
    options: &RedriveOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<RedriveReport, RedriveError> {
    if config.is_embedded() {
        return Err(RedriveError::Embedded);
    }
    let reader = tokio::task::block_in_place(|| Reader::open(config, options))?;
    // A dead letter is outside any source transaction: its re-run is
    // at-least-once, and its outputs carry the same `sluice-id`s as the
    // first time, so consumers can drop what they already have.
    let mut config = config.clone();
    for route in &mut config.routes {
        route.delivery = DeliveryMode::AtLeastOnce;
    }
    config.watch_handlers = false;
    let (host, mut lanes) = Host::assemble(
        &config,
        RunOptions::default(),
        &config.brokers,
        Hold::UntilWatermark,
        Serve::Nothing,
    )
    .await?;
    let dlq = reader.route.dead_letter_topic();
    let parks = reader.route.on_dead_letter == crate::config::OnDeadLetter::ParkKey;
    let commits = options.key.is_none();

    // The reading thread blocks on the client; the lanes need not.
    let (records, mut received) = mpsc::channel(READ_AHEAD);
    let range = reader.range()?;
    let reading = tokio::task::spawn_blocking(move || {
        for record in range {
            if records.blocking_send(record).is_err() {
                break;
            }
        }
    });
    let mut report = RedriveReport::default();
    let mut keys: HashMap<(i32, Option<Vec<u8>>), KeyDone> = HashMap::new();
    let mut failure = None;
    tokio::pin!(shutdown);
    let stopped = loop {
        let record = tokio::select! {
            _ = &mut shutdown => break true,
            record = received.recv() => match record {
                None => break false,
                Some(Err(source)) => {
                    failure = Some(reader.failed(source));
                    break true;
                }
                Some(Ok(record)) => record,
            },
        };
        let item = reader.sort(&record);
        if let Item::Skip(Skip::OtherKey) = item {
            continue;
        }
        let ack = host
            .offsets
            .begin((dlq.clone(), record.partition), record.offset)
            .expect("a redrive never lets partitions go");
        let letter = match item {
            Item::Skip(skip) => {
                report.skipped(&skip, &record);
                ack.finish();
                continue;
            }
            Item::Letter(letter) => letter,
        };
        report.redriven += 1;
        let message = Arc::new(letter.message);
        keys.insert(
            (record.partition, record.key.clone()),
            KeyDone {
                message: message.clone(),
                dlq_partition: record.partition,
                below: record.offset + 1,
                parks: parks || letter.parks_key,
                parked_again: false,
            },
        );
        tokio::select! {
            _ = lanes.dispatch(Delivery { message, ack }) => {}
            _ = &mut shutdown => break true,
        }
    };
    drop(received);
    let _ = reading.await;
    if !stopped {
        // Everything dispatched: wait for it while the lanes still know
        // which keys their failures parked again.
        host.offsets.wait_idle().await;
    }
    for done in keys.values_mut() {
        let tp = (done.message.topic.clone(), done.message.partition);
        done.parked_again = lanes.controls().is_parked(&tp, done.message.key.as_deref());
    }
    let queued = if stopped {
        Queued::Leave
    } else {
        Queued::Handle
    };
    finish(lanes, queued, &host.offsets, host.deadline).await;
    if commits {
        commit(&reader, &host, &dlq)?;
    }
    if !stopped {
        let admin = Admin::new(&config, options);
        for done in keys.values() {
            if !done.parks && commits {
                continue;
            }
            let unparks = (done.parks && !done.parked_again).then_some(done.message.offset);
            let line = mark(&host, &dlq, done, unparks).await;
            let line = match (line, unparks) {
                (Err(error), _) => format!("{}: marker not written: {error}", key_text(done)),
                (Ok(()), None) if done.parks => {
                    format!("{}: failed again; still parked", key_text(done))
                }
                (Ok(()), None) => continue,
                (Ok(()), Some(through)) => admin.unpark(done, through).await,
            };
            report.unparked.push(line);
        }
    }
    let stop = if stopped {
        Stop::Requested
    } else {
        Stop::Drained
    };
    report.run = Some(host.finish(Ok(stop)).await?);
    failure.map_or(Ok(report), Err)
}

/// Commits, for the redrive's group, how far the dead letters are done.
fn commit(reader: &Reader, host: &Host, dlq: &str) -> Result<(), RedriveError> {
    let mut list = TopicPartitionList::new();
    for partition in reader.ends.keys() {
        let tp = (dlq.to_owned(), *partition);
        if let Some(done) = host.offsets.watermark(&tp) {
            list.add_partition_offset(dlq, *partition, Offset::Offset(done))
                .map_err(|source| reader.failed(source))?;
        }
    }
    if list.count() == 0 {
        return Ok(());
    }
    tokio::task::block_in_place(|| {
        let committer: BaseConsumer = reader.client.create()?;
        committer.commit(&list, CommitMode::Sync)
    })
    .map_err(|source| reader.failed(source))
}

/// Writes a key's marker into the dead-letter partition of its letters.
async fn mark(
    host: &Host,
    dlq: &str,
    done: &KeyDone,
    unparks: Option<i64>,
) -> Result<(), crate::effects::EffectError> {
    let record = Publish {
        topic: dlq.to_owned(),
        key: done.message.key.clone(),
        payload: Vec::new(),
        headers: crate::wire::marker(&done.message, done.below, unparks),
    };
    host.publisher
        .publish_to(&record, done.dlq_partition)
        .await
        .map(|_| ())
}

fn key_text(done: &KeyDone) -> String {
    let key = done
        .message
        .key
        .as_deref()
        .map_or("(no key)".to_owned(), |k| {
            String::from_utf8_lossy(k).into_owned()
        });
    format!(
        "key {key:?} of {}[{}]",
        done.message.topic, done.message.partition
    )
}

/// The running hosts to tell of un-parked keys.
struct Admin {
    addresses: Vec<String>,
    token: Option<String>,
    client: reqwest::Client,
}

impl Admin {
    fn new(config: &Config, options: &RedriveOptions) -> Admin {
        let addresses = match options.admin.is_empty() {
            // Port 0 is whichever the host was given: unknown from here.
            true => (config.admin.address().into_iter())
                .filter(|a| a.port() != 0)
                .map(|a| a.to_string())
                .collect(),
            false => options.admin.clone(),
        };
        Admin {
            addresses,
            token: config.admin.token(),
            client: reqwest::Client::builder()
                .timeout(ADMIN_TIMEOUT)
                .build()
                .unwrap_or_default(),
        }
    }

    /// Un-parks a key in the running hosts; what they said, in a line.
    async fn unpark(&self, done: &KeyDone, through: i64) -> String {
        let about = key_text(done);
        let Some(key) = done.message.key.as_deref().map(std::str::from_utf8) else {
            return format!(
                "{about}: un-parked on the topic; a running host cannot be told of a null key (it un-parks at its next assignment)"
            );
        };
        let Ok(key) = key else {
            return format!(
                "{about}: un-parked on the topic; a running host cannot be told of a key that is not UTF-8 (it un-parks at its next assignment)"
            );
        };
        if self.addresses.is_empty() {
            return format!(
                "{about}: un-parked on the topic (no admin address: a running host un-parks it at its next assignment)"
            );
        }
        let mut said = Vec::new();
        for address in &self.addresses {
            let url = format!("http://{address}/routes/{}/unpark", done.message.topic);
            let mut request = self.client.post(&url).query(&[
                ("partition", done.message.partition.to_string()),
                ("key", key.to_owned()),
                ("through", through.to_string()),
            ]);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            let answer = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    let body = response.text().await.unwrap_or_default();
                    match serde_json::from_str::<Value>(&body) {
                        Ok(body) => body["outcome"].as_str().unwrap_or("?").to_owned(),
                        Err(_) => format!("unreadable answer: {body}"),
                    }
                }
                Ok(response) => format!("refused: {}", response.status()),
                Err(error) => format!("unreachable: {error}"),
            };
            said.push(format!("{address} {answer}"));
        }
        format!(
            "{about}: un-parked on the topic; running hosts: {}",
            said.join(", ")
        )
    }
}
