//! What a run did: counters for every run, and (for the demo and tests) a
//! record of each confirmed publish and dead letter, with a readable summary.

pub(crate) mod client_logs;
pub mod decider;
pub(crate) mod exposition;
pub(crate) mod histogram;
mod log_format;
pub mod otlp;
pub(crate) mod repeats;
pub(crate) mod trace;

pub use histogram::Histogram;
pub use log_format::EscapedFields;

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine as _;

use crate::config::Route;
use crate::contract::Message;
use decider::{DeciderCounts, DeciderStats};
use exposition::{Exposition, partition_labels, single, version_labels};

/// Where a record came from: the input message and the handler that ran it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Input topic.
    pub topic: String,
    /// Input partition.
    pub partition: i32,
    /// Input offset.
    pub offset: i64,
    /// Handler name.
    pub handler: String,
    /// Handler version.
    pub version: String,
}

impl Origin {
    pub(crate) fn new(message: &Message, handler: &str, version: &str) -> Self {
        Origin {
            topic: message.topic.clone(),
            partition: message.partition,
            offset: message.offset,
            handler: handler.to_owned(),
            version: version.to_owned(),
        }
    }
}

/// A record the broker confirmed, as the run report shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Destination topic.
    pub topic: String,
    /// Partition it landed in.
    pub partition: i32,
    /// Offset it landed at.
    pub offset: i64,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record payload.
    pub payload: Vec<u8>,
}

/// One thing a run did to the outside world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// An output was published and the broker confirmed it.
    Published {
        /// The input and handler.
        origin: Origin,
        /// Index of the output in the handler's list.
        output: usize,
        /// Where it landed.
        record: Delivered,
    },
    /// The input was dead-lettered and the broker confirmed it.
    DeadLettered {
        /// The input and handler.
        origin: Origin,
        /// Dead-letter topic.
        topic: String,
        /// The `sluice-reason` (`rejected`, `deadline`, ...).
        reason: String,
        /// The `sluice-detail`.
        detail: String,
    },
    /// The input was skipped by configuration (`on-invalid-input = "skip"`).
    Skipped {
        /// The input and handler.
        origin: Origin,
        /// Why.
        detail: String,
    },
    /// A timer was written to the store (scheduled, or replaced).
    Scheduled {
        /// The input and handler.
        origin: Origin,
        /// Index of the output in the handler's list.
        output: usize,
        /// The timer's id, within its route.
        id: String,
        /// When it is due, in milliseconds since the Unix epoch.
        due: u64,
        /// The topic its record goes to.
        topic: String,
    },
    /// A timer was cancelled (if it was pending).
    Cancelled {
        /// The input and handler.
        origin: Origin,
        /// Index of the output in the handler's list.
        output: usize,
        /// The timer's id, within its route.
        id: String,
    },
    /// A timer fired: its record was published and the broker confirmed it.
    Fired {
        /// The route (input topic) whose handler scheduled it.
        route: String,
        /// The timer's id, within its route.
        id: String,
        /// When it was due, in milliseconds since the Unix epoch.
        due: u64,
        /// From its due time to the broker's confirmation.
        late: std::time::Duration,
        /// Where it landed.
        record: Delivered,
    },
}

/// Where a record goes in the report: after its input's earlier ones, and
/// fired timers after every input, by due time.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Place<'a> {
    Input(&'a str, i32, i64, usize),
    Timer(u64, &'a str, &'a str),
}

impl Record {
    fn origin(&self) -> Option<&Origin> {
        match self {
            Record::Published { origin, .. }
            | Record::DeadLettered { origin, .. }
            | Record::Skipped { origin, .. }
            | Record::Scheduled { origin, .. }
            | Record::Cancelled { origin, .. } => Some(origin),
            Record::Fired { .. } => None,
        }
    }

    fn place(&self) -> Place<'_> {
        let output = match self {
            Record::Published { output, .. }
            | Record::Scheduled { output, .. }
            | Record::Cancelled { output, .. } => *output,
            Record::Fired { route, id, due, .. } => return Place::Timer(*due, route, id),
            Record::DeadLettered { .. } | Record::Skipped { .. } => usize::MAX,
        };
        let o = self
            .origin()
            .expect("every record but a fired timer has an input");
        Place::Input(&o.topic, o.partition, o.offset, output)
    }
}

/// An error with its causes, for a log line: reqwest's Display alone
/// hides the reason ("error sending request" without "timed out").
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stop {
    /// Every input was consumed and committed.
    #[default]
    Drained,
    /// A stop was requested (SIGINT/SIGTERM).
    Requested,
}

/// The outcome of a run.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// Messages received from the source.
    pub consumed: u64,
    /// Messages whose handler returned outputs.
    pub succeeded: u64,
    /// Outputs published and confirmed.
    pub published: u64,
    /// Messages dead-lettered and confirmed.
    pub dead_lettered: u64,
    /// Messages skipped by configuration.
    pub skipped: u64,
    /// Messages still unfinished when the run stopped (they will be redelivered).
    pub unfinished: u64,
    /// Messages a shadow version handled and compared.
    pub shadow_compared: u64,
    /// Messages where the shadow's outcome differed.
    pub shadow_differences: u64,
    /// Handler versions swapped while running.
    pub swaps: u64,
    /// What deciders did.
    pub decider: DeciderCounts,
    /// What this host did with timers, and what it left pending.
    pub timers: TimerTotals,
    /// Individual records, when the run was asked to keep them.
    pub records: Vec<Record>,
    /// Why the run ended.
    pub stop: Stop,
}

/// Timers in a run's report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimerTotals {
    /// Timers this host wrote to the store (scheduled or replaced).
    pub scheduled: u64,
    /// Cancels this host wrote to the store.
    pub cancelled: u64,
    /// Timers this host fired.
    pub fired: u64,
    /// Timers left pending in the store, when it could say.
    pub pending: Option<PendingTimers>,
}

/// The timers a store holds pending.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingTimers {
    /// How many.
    pub count: u64,
    /// The soonest one's due time, in milliseconds since the Unix epoch.
    pub next_due: Option<u64>,
}

/// What readiness depends on beyond the registry and the breakers.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// The consumer joined its group (an assignment came, even an empty
    /// one), or the source needs no group (a file).
    joined: AtomicBool,
    /// Messages behind the end, per assigned partition, as last reported.
    lags: Mutex<BTreeMap<(String, i32), i64>>,
}

impl Health {
    /// The partitions' lags, replacing the last report.
    pub(crate) fn lags(&self, lags: BTreeMap<(String, i32), i64>) {
        *self.lags.lock().expect("lags lock") = lags;
    }

    /// The partitions' lags, as last reported.
    pub(crate) fn current_lags(&self) -> BTreeMap<(String, i32), i64> {
        self.lags.lock().expect("lags lock").clone()
    }

    /// The lags, for `/metrics`.
    pub(crate) fn encode(&self, metrics: &mut Exposition) -> fmt::Result {
        let lags = self.current_lags();
        metrics.gauge(
            "sluice_consumer_lag",
            "Messages between the committed offset and the end, per assigned partition.",
            lags.into_iter()
                .map(|((topic, partition), lag)| (partition_labels(topic, partition), lag)),
        )
    }

    pub(crate) fn joined(&self) {
        self.joined.store(true, Ordering::Relaxed);
    }

    pub(crate) fn has_joined(&self) -> bool {
        self.joined.load(Ordering::Relaxed)
    }
}

/// Counters and records, shared by everything in a run.
#[derive(Debug, Default)]
pub(crate) struct Telemetry {
    consumed: AtomicU64,
    succeeded: AtomicU64,
    published: AtomicU64,
    dead_lettered: AtomicU64,
    skipped: AtomicU64,
    /// What each shadow version's comparisons came to: a short list,
    /// updated once per batch; the host's totals are its sums.
    shadows: Mutex<Vec<ShadowTally>>,
    /// Messages by handler and version, counted per outcome. A short list:
    /// a run sees a few versions, and a lookup allocates nothing. Counting
    /// and reading take the read lock (the status page never holds up a
    /// message); only a version's first message takes the write lock.
    by_version: RwLock<Vec<VersionCounts>>,
    /// Messages by route (input topic), counted per outcome: fixed at
    /// start, so counting takes no lock.
    by_route: Vec<(String, [AtomicU64; Outcome::ALL.len()])>,
    records: Option<Mutex<Vec<Record>>>,
    decider: Arc<DeciderStats>,
    /// Time spent per phase of a message's way.
    phases: [Arc<Histogram>; Phase::ALL.len()],
    /// Dead letters confirmed, by stage and reason.
    dead_letters: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// The latest dead letters, newest last: where from, and why.
    recent_dead_letters: Mutex<std::collections::VecDeque<RecentDeadLetter>>,
    timers: TimerCounts,
}

/// A handler version's messages, per outcome.
#[derive(Debug)]
struct VersionCounts {
    handler: String,
    version: String,
    counts: [AtomicU64; Outcome::ALL.len()],
}

/// What a shadow version's comparisons came to.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct ShadowTally {
    pub(crate) handler: String,
    pub(crate) version: String,
    /// Messages it handled and compared with the serving version.
    pub(crate) compared: u64,
    /// Of those, the ones whose outcome differed.
    pub(crate) differed: u64,
    /// Messages not compared: the host's byte budget had no room.
    pub(crate) skipped: u64,
}

/// What this host did with timers.
#[derive(Debug, Default)]
struct TimerCounts {
    scheduled: AtomicU64,
    cancelled: AtomicU64,
    fired: AtomicU64,
    /// From a timer's due time to its record's confirmation.
    lateness: Histogram,
}

/// A dead letter as the status pages list it: where from, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct RecentDeadLetter {
    /// `topic/partition/offset` of the input.
    pub(crate) input: String,
    pub(crate) stage: &'static str,
    pub(crate) reason: &'static str,
    pub(crate) detail: String,
}

/// How many recent dead letters the status page shows.
const RECENT_DEAD_LETTERS: usize = 10;

/// A timed part of a message's way (the `stage` label of
/// `sluice_stage_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The handler call (or a decider's `stream-id`), on a worker.
    Handle,
    /// A decider's load, fold, decide and append (conflict re-runs included).
    Decide,
    /// Running the outputs until each is handed over.
    Interpret,
    /// From the batch reaching the pipeline to the message's ack.
    EndToEnd,
}

impl Phase {
    pub(crate) const ALL: [Phase; 4] = [
        Phase::Handle,
        Phase::Decide,
        Phase::Interpret,
        Phase::EndToEnd,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Phase::Handle => "handle",
            Phase::Decide => "decide",
            Phase::Interpret => "interpret",
            Phase::EndToEnd => "end-to-end",
        }
    }
}

/// How a message ended, as counted per handler version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Its outputs ran.
    Handled,
    /// It was dead-lettered.
    DeadLettered,
    /// It was skipped by configuration.
    Skipped,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Handled, Outcome::DeadLettered, Outcome::Skipped];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Handled => "handled",
            Outcome::DeadLettered => "dead-lettered",
            Outcome::Skipped => "skipped",
        }
    }
}

impl Telemetry {
    /// Counters only, or counters and every record.
    pub(crate) fn new(keep_records: bool, routes: &[Route]) -> Self {
        Telemetry {
            records: keep_records.then(Mutex::default),
            by_route: routes
                .iter()
                .map(|route| (route.topic.clone(), Default::default()))
                .collect(),
            ..Telemetry::default()
        }
    }

    /// The histogram of a phase.
    pub(crate) fn phase(&self, phase: Phase) -> &Arc<Histogram> {
        &self.phases[phase as usize]
    }

    /// Keeps a dead letter among the recent ones.
    pub(crate) fn remember_dead_letter(&self, dead: RecentDeadLetter) {
        let mut recent = self.recent_dead_letters.lock().expect("recent lock");
        if recent.len() == RECENT_DEAD_LETTERS {
            recent.pop_front();
        }
        recent.push_back(dead);
    }

    /// The recent dead letters, newest first.
    pub(crate) fn recent_dead_letters(&self) -> Vec<RecentDeadLetter> {
        let recent = self.recent_dead_letters.lock().expect("recent lock");
        recent.iter().rev().cloned().collect()
    }

    /// Messages per route and outcome (handled, dead-lettered, skipped).
    pub(crate) fn by_route(&self) -> Vec<(&str, [u64; Outcome::ALL.len()])> {
        self.by_route
            .iter()
            .map(|(topic, counts)| {
                (
                    topic.as_str(),
                    std::array::from_fn(|i| counts[i].load(Ordering::Relaxed)),
                )
            })
            .collect()
    }

    /// Messages by handler and version: handled, dead-lettered, skipped.
    pub(crate) fn by_version(&self) -> Vec<(String, String, [u64; 3])> {
        let counts = self.by_version.read().expect("counts lock");
        counts
            .iter()
            .map(|c| {
                (
                    c.handler.clone(),
                    c.version.clone(),
                    std::array::from_fn(|i| c.counts[i].load(Ordering::Relaxed)),
                )
            })
            .collect()
    }

    /// Every shadow version's comparisons added up: messages compared,
    /// differed and not compared.
    pub(crate) fn shadow_totals(&self) -> [u64; 3] {
        self.shadows
            .lock()
            .expect("shadows lock")
            .iter()
            .fold([0; 3], |[c, d, s], t| {
                [c + t.compared, d + t.differed, s + t.skipped]
            })
    }

    /// Counts a dead letter by where and why.
    pub(crate) fn dead_lettered_for(&self, stage: &'static str, reason: &'static str) {
        *self
            .dead_letters
            .lock()
            .expect("dead letters lock")
            .entry((stage, reason))
            .or_default() += 1;
    }

    /// The deciders' counters, which the decider keeps.
    pub(crate) fn decider_stats(&self) -> Arc<DeciderStats> {
        self.decider.clone()
    }

    pub(crate) fn timer_scheduled(&self) {
        self.timers.scheduled.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn timer_cancelled(&self) {
        self.timers.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// A timer's record was confirmed `lateness` after it was due.
    pub(crate) fn timer_fired(&self, lateness: std::time::Duration) {
        self.timers.fired.fetch_add(1, Ordering::Relaxed);
        self.timers.lateness.observe(lateness);
    }

    /// Timers this host fired, and their lateness.
    pub(crate) fn timers_fired(&self) -> (u64, &Histogram) {
        (
            self.timers.fired.load(Ordering::Relaxed),
            &self.timers.lateness,
        )
    }

    pub(crate) fn consumed(&self) {
        self.consumed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn succeeded(&self) {
        self.succeeded.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn skipped(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds a batch of shadow `handler` `version`'s comparisons.
    pub(crate) fn shadow_compared(&self, batch: &ShadowTally) {
        let mut shadows = self.shadows.lock().expect("shadows lock");
        let tally = match shadows
            .iter_mut()
            .position(|t| t.handler == batch.handler && t.version == batch.version)
        {
            Some(index) => &mut shadows[index],
            None => {
                shadows.push(ShadowTally {
                    handler: batch.handler.clone(),
                    version: batch.version.clone(),
                    ..ShadowTally::default()
                });
                shadows.last_mut().expect("just pushed")
            }
        };
        tally.compared += batch.compared;
        tally.differed += batch.differed;
        tally.skipped += batch.skipped;
    }

    /// What each shadow version's comparisons came to so far.
    pub(crate) fn shadows(&self) -> Vec<ShadowTally> {
        self.shadows.lock().expect("shadows lock").clone()
    }

    /// Counts a message of route `topic` that `handler` `version` ended so.
    pub(crate) fn ended(&self, topic: &str, handler: &str, version: &str, outcome: Outcome) {
        if let Some((_, counts)) = self.by_route.iter().find(|(t, _)| t == topic) {
            counts[outcome as usize].fetch_add(1, Ordering::Relaxed);
        }
        let of = |c: &VersionCounts| c.handler == handler && c.version == version;
        if let Some(counts) = self
            .by_version
            .read()
            .expect("counts lock")
            .iter()
            .find(|c| of(c))
        {
            counts.counts[outcome as usize].fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut all = self.by_version.write().expect("counts lock");
        let index = match all.iter().position(of) {
            Some(index) => index,
            None => {
                all.push(VersionCounts {
                    handler: handler.to_owned(),
                    version: version.to_owned(),
                    counts: Default::default(),
                });
                all.len() - 1
            }
        };
        all[index].counts[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters and stage histograms, for `/metrics`.
    pub(crate) fn encode(&self, metrics: &mut Exposition) -> fmt::Result {
        let by_version = self.by_version();
        metrics.counter(
            "sluice_messages_total",
            "Messages by handler version and outcome.",
            by_version
                .into_iter()
                .flat_map(|(handler, version, counts)| {
                    Outcome::ALL
                        .iter()
                        .zip(counts)
                        .map(move |(outcome, count)| {
                            let mut labels = version_labels(&handler, &version);
                            labels.push(("outcome", outcome.as_str().to_owned()));
                            (labels, count)
                        })
                }),
        )?;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let [compared, differed, skipped] = self.shadow_totals();
        for (name, help, value) in [
            (
                "sluice_consumed_total",
                "Messages received from the source.",
                load(&self.consumed),
            ),
            (
                "sluice_published_total",
                "Outputs published and confirmed.",
                load(&self.published),
            ),
            (
                "sluice_dead_letters_total",
                "Messages dead-lettered and confirmed.",
                load(&self.dead_lettered),
            ),
            (
                "sluice_shadow_compared_total",
                "Messages a shadow version handled and compared.",
                compared,
            ),
            (
                "sluice_shadow_differences_total",
                "Messages where the shadow's outcome differed.",
                differed,
            ),
            (
                "sluice_shadow_skipped_total",
                "Messages a shadow did not compare: the host's byte budget had no room.",
                skipped,
            ),
        ] {
            metrics.counter(name, help, single(value))?;
        }
        let dead_letters: Vec<_> = self
            .dead_letters
            .lock()
            .expect("dead letters lock")
            .iter()
            .map(|((stage, reason), count)| {
                let labels = vec![("stage", stage.to_string()), ("reason", reason.to_string())];
                (labels, *count)
            })
            .collect();
        metrics.counter(
            "sluice_dead_letters_by_reason_total",
            "Dead letters confirmed, by stage and reason.",
            dead_letters,
        )?;
        metrics.histogram(
            "sluice_stage_seconds",
            "Time messages spend per stage.",
            Phase::ALL.into_iter().map(|phase| {
                (
                    vec![("stage", phase.as_str().to_owned())],
                    self.phase(phase).as_ref(),
                )
            }),
        )?;
        for (name, help, value) in [
            (
                "sluice_timers_scheduled_total",
                "Timers this host kept in the store (new or replacing one).",
                &self.timers.scheduled,
            ),
            (
                "sluice_timers_cancelled_total",
                "Timer cancellations this host kept in the store.",
                &self.timers.cancelled,
            ),
            (
                "sluice_timers_fired_total",
                "Timers this host published, confirmed.",
                &self.timers.fired,
            ),
        ] {
            metrics.counter(name, help, single(value.load(Ordering::Relaxed)))?;
        }
        metrics.histogram(
            "sluice_timer_lateness_seconds",
            "From a timer's due time to its record's confirmation.",
            [(Vec::new(), &self.timers.lateness)],
        )?;
        let decider = self.decider.counts();
        for (name, help, value) in [
            (
                "sluice_decider_decisions_total",
                "Decisions deciders made (each conflict's re-run counts).",
                decider.decisions,
            ),
            (
                "sluice_decider_appends_total",
                "Appends to the event store that succeeded.",
                decider.appends,
            ),
            (
                "sluice_decider_events_total",
                "Events appended to the event store.",
                decider.events,
            ),
            (
                "sluice_decider_conflicts_total",
                "Appends refused because another writer appended first.",
                decider.conflicts,
            ),
            (
                "sluice_decider_redeliveries_total",
                "Messages whose events were already appended (nothing appended again).",
                decider.redeliveries,
            ),
            (
                "sluice_decider_snapshots_total",
                "Snapshots of folded states persisted.",
                decider.snapshots,
            ),
            (
                "sluice_decider_cache_hits_total",
                "Decisions that started from a state kept in memory.",
                decider.cache_hits,
            ),
        ] {
            metrics.counter(name, help, single(value))?;
        }
        Ok(())
    }

    /// Whether records are kept (so callers can skip building them).
    pub(crate) fn keeps_records(&self) -> bool {
        self.records.is_some()
    }

    /// Keeps a record, if this run keeps them (counting is separate).
    pub(crate) fn keep(&self, record: Record) {
        if let Some(records) = &self.records {
            records.lock().expect("records lock").push(record);
        }
    }

    /// The run's report; `pending` is what the timer store holds at the end.
    pub(crate) fn report(
        &self,
        stop: Stop,
        unfinished: u64,
        swaps: u64,
        pending: Option<PendingTimers>,
    ) -> RunReport {
        let mut records = self
            .records
            .as_ref()
            .map(|r| r.lock().expect("records lock").clone())
            .unwrap_or_default();
        records.sort_by(|a, b| a.place().cmp(&b.place()));
        let [shadow_compared, shadow_differences, _] = self.shadow_totals();
        RunReport {
            consumed: self.consumed.load(Ordering::Relaxed),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            unfinished,
            shadow_compared,
            shadow_differences,
            swaps,
            decider: self.decider.counts(),
            timers: TimerTotals {
                scheduled: self.timers.scheduled.load(Ordering::Relaxed),
                cancelled: self.timers.cancelled.load(Ordering::Relaxed),
                fired: self.timers.fired.load(Ordering::Relaxed),
                pending,
            },
            records,
            stop,
        }
    }
}

/// Bytes as text when they are UTF-8, else as `base64:...`.
pub(crate) fn readable(bytes: &[u8]) -> String {
    Readable(bytes).to_string()
}

/// Shows bytes as `readable` does, written only when a log or span asks.
pub(crate) struct Readable<'a>(pub(crate) &'a [u8]);

impl std::fmt::Display for Readable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match std::str::from_utf8(self.0) {
            Ok(text) => f.write_str(text),
            Err(_) => write!(
                f,
                "base64:{}",
                base64::engine::general_purpose::STANDARD.encode(self.0)
            ),
        }
    }
}

/// A time in milliseconds since the Unix epoch, as RFC 3339 (UTC). A
/// handler may pick any time for a timer: past year 9999, which RFC 3339
/// cannot write, it is written as the number.
pub fn utc(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    let mut text = String::new();
    match write!(text, "{}", humantime::format_rfc3339_millis(time)) {
        Ok(()) => text,
        Err(_) => format!("{ms} ms after 1970-01-01T00:00:00Z"),
    }
}

/// Shortens a line for the summary.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

impl RunReport {
    /// A readable account of the run: totals, then what each input led to.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} messages consumed: {} handled, {} outputs published, {} dead-lettered, {} skipped{}",
            self.consumed,
            self.succeeded,
            self.published,
            self.dead_lettered,
            self.skipped,
            if self.unfinished > 0 {
                format!(", {} unfinished (will be redelivered)", self.unfinished)
            } else {
                String::new()
            }
        );
        if self.swaps > 0 {
            let _ = writeln!(out, "{} handler version swaps", self.swaps);
        }
        let decider = &self.decider;
        if decider.decisions > 0 || decider.redeliveries > 0 {
            let _ = writeln!(
                out,
                "deciders: {} events appended in {} appends, {} version conflicts (decided again), {} redeliveries (nothing appended)",
                decider.events, decider.appends, decider.conflicts, decider.redeliveries
            );
        }
        if self.shadow_compared > 0 {
            let _ = writeln!(
                out,
                "shadow: {} messages compared, {} differed",
                self.shadow_compared, self.shadow_differences
            );
        }
        let timers = &self.timers;
        if timers.scheduled + timers.cancelled + timers.fired > 0
            || timers.pending.is_some_and(|p| p.count > 0)
        {
            let mut line = format!(
                "timers: {} scheduled, {} cancelled, {} fired",
                timers.scheduled, timers.cancelled, timers.fired
            );
            if let Some(PendingTimers { count, next_due }) = timers.pending {
                let _ = write!(line, ", {count} left pending");
                if let Some(due) = next_due {
                    let _ = write!(line, " (the next due {})", utc(due));
                }
            }
            let _ = writeln!(out, "{line}");
        }
        let mut last_place = None;
        for record in &self.records {
            let heading = match (record.origin(), record) {
                (Some(o), _) => format!(
                    "{}[{}]@{}  ({} {})",
                    o.topic, o.partition, o.offset, o.handler, o.version
                ),
                (
                    None,
                    Record::Fired {
                        route,
                        id,
                        due,
                        late,
                        ..
                    },
                ) => format!(
                    "timer {id} of {route}  (due {}, fired {} ms late)",
                    utc(*due),
                    late.as_millis()
                ),
                (None, _) => unreachable!("only a fired timer has no input"),
            };
            if last_place.as_ref() != Some(&heading) {
                // A timer's id is the handler's: it may not break a line either.
                let _ = writeln!(out, "\n{}", log_format::Escaped(&heading));
                last_place = Some(heading);
            }
            let line = match record {
                Record::Published { record, .. } | Record::Fired { record, .. } => format!(
                    "  published  → {}[{}]@{}  key={}  {}",
                    record.topic,
                    record.partition,
                    record.offset,
                    record.key.as_deref().map_or("-".into(), readable),
                    readable(&record.payload)
                ),
                Record::DeadLettered {
                    topic,
                    reason,
                    detail,
                    ..
                } => format!("  dead-letter → {topic}  {reason}: {detail}"),
                Record::Skipped { detail, .. } => format!("  skipped  {detail}"),
                Record::Scheduled { id, due, topic, .. } => {
                    format!("  scheduled  timer {id}  due {}  → {topic}", utc(*due))
                }
                Record::Cancelled { id, .. } => format!("  cancelled  timer {id}"),
            };
            // Payloads and details are the handlers': none may break a line.
            let _ = writeln!(out, "{}", log_format::Escaped(&clip(&line, 240)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(offset: i64) -> Origin {
        Origin {
            topic: "orders".into(),
            partition: 0,
            offset,
            handler: "h".into(),
            version: "1.0.0".into(),
        }
    }

    fn delivered(payload: &str) -> Delivered {
        Delivered {
            topic: "alerts".into(),
            partition: 2,
            offset: 5,
            key: Some(b"k".to_vec()),
            payload: payload.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_summary_shows_timers_under_their_inputs_and_fired_ones_after_every_input() {
        let report = RunReport {
            timers: TimerTotals {
                scheduled: 1,
                cancelled: 1,
                fired: 1,
                pending: Some(PendingTimers {
                    count: 3,
                    next_due: Some(1_767_225_600_000),
                }),
            },
            records: vec![
                Record::Scheduled {
                    origin: origin(0),
                    output: 0,
                    id: "t-1".into(),
                    due: 1_767_225_603_000,
                    topic: "alerts".into(),
                },
                Record::Cancelled {
                    origin: origin(1),
                    output: 0,
                    id: "t-2".into(),
                },
                // A handler's id may hold a line break: it breaks no line.
                Record::Fired {
                    route: "orders".into(),
                    id: "t-1\nforged line".into(),
                    due: 1_767_225_603_000,
                    late: std::time::Duration::from_millis(12),
                    record: delivered("late!"),
                },
            ],
            ..RunReport::default()
        };
        let text = report.summary();
        let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(
            lines[1..],
            [
                "timers: 1 scheduled, 1 cancelled, 1 fired, 3 left pending (the next due 2026-01-01T00:00:00.000Z)",
                "orders[0]@0  (h 1.0.0)",
                "  scheduled  timer t-1  due 2026-01-01T00:00:03.000Z  → alerts",
                "orders[0]@1  (h 1.0.0)",
                "  cancelled  timer t-2",
                "timer t-1\\nforged line of orders  (due 2026-01-01T00:00:03.000Z, fired 12 ms late)",
                "  published  → alerts[2]@5  key=k  late!",
            ],
            "{text}"
        );
    }

    #[test]
    fn a_time_past_what_rfc_3339_writes_is_written_as_its_number() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            utc(u64::MAX),
            "18446744073709551615 ms after 1970-01-01T00:00:00Z"
        );
    }
}
