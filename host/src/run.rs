//! A whole `sluice run`: start the embedded broker if asked, load each
//! route's handler, feed the source's messages through the lanes, and on stop
//! (a signal, or everything drained) finish in-flight messages, commit, exit.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use rdkafka::error::KafkaError;

use crate::admin;
use crate::config::{Config, DeliveryMode, OtlpExport};
use crate::contract::Message;
use crate::decider::Decider;
use crate::effects::publish::Publisher;
use crate::effects::{Effects, RouteEffects};
use crate::embedded::EmbeddedBroker;
use crate::exactly_once::{Transaction, TransactionFailed};
use crate::pipeline::{Pipeline, RouteHandler};
use crate::policy::breaker::Breakers;
use crate::registry::{self, Registry, RegistryError};
use crate::runtime::{Handler, HandlerKind, Runtime, RuntimeError};
use crate::schedule::{Controls, Feed, Lanes, Queued};
use crate::shadow::Shadows;
use crate::source::Delivery;
use crate::source::jsonl::{JsonlError, JsonlReader};
use crate::source::kafka::{Committer, KafkaSource, SourceEvent, UnsplitMessage};
use crate::source::offsets::{Hold, Offsets};
use crate::store::{LazyStore, StoreError};
use crate::telemetry::otlp::Exporter;
use crate::telemetry::{Health, Phase, RunReport, Stop, Telemetry};
use crate::timers::Timers;
use crate::workers::WorkerPool;
use crate::workers::budget::ByteBudget;

/// How often a run that stops when drained checks whether it is.
const DRAIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How often each assigned partition's lag is measured (two broker round
/// trips, on a blocking thread).
const LAG_INTERVAL: Duration = Duration::from_secs(1);

/// How a run behaves beyond its config.
#[derive(Default)]
pub struct RunOptions {
    /// Stop once every input is consumed and committed (always on with the embedded broker).
    pub until_drained: bool,
    /// Keep a record of every publish and dead letter in the report.
    pub keep_records: bool,
    /// Handlers to use instead of loading them from the handlers directory,
    /// by name (native baselines in benchmarks).
    pub handlers: HashMap<String, Arc<dyn Handler>>,
}

/// Why a run could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The Wasm engine.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A route's handler has no version that can serve.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The admin server cannot listen.
    #[error("admin server cannot listen on {listen}: {source}")]
    Admin {
        /// The configured address.
        listen: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line of an input or seed file is not a message.
    #[error(transparent)]
    Input(#[from] JsonlError),
    /// An input line's topic has no route.
    #[error("{place}: topic {topic:?} has no route in the config")]
    Unrouted {
        /// `file:line`.
        place: String,
        /// The topic.
        topic: String,
    },
    /// The Kafka client.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// An HTTP client could not be set up.
    #[error("http client: {0}")]
    Http(reqwest::Error),
    /// A message escaped its partition's queue; the run stops unacknowledged.
    #[error("kafka: {0}")]
    Unsplit(#[from] UnsplitMessage),
    /// The exactly-once producer cannot go on.
    #[error(transparent)]
    Transaction(#[from] TransactionFailed),
    /// The event store of the deciders cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs the routes of `config` until `shutdown` resolves or, when asked (or
/// with the embedded broker), until every input is handled and committed.
pub async fn run(
    config: &Config,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<RunReport, RunError> {
    let (embedded, seeds) = match config.is_embedded() {
        true => {
            let (broker, seeds) = start_embedded(config)?;
            (Some(broker), seeds)
        }
        false => (None, Vec::new()),
    };
    let brokers = embedded
        .as_ref()
        .map_or(config.brokers.clone(), |b| b.bootstrap_servers().to_owned());
    let until_drained = options.until_drained || embedded.is_some();
    // A file source has nothing to commit: slots go back at the watermark.
    let hold = match config.source.file {
        Some(_) => Hold::UntilWatermark,
        None => Hold::UntilCommitted,
    };
    let (host, lanes) = Host::assemble(config, options, &brokers, hold, Serve::Admin).await?;
    // Seeded once the handlers are compiled (seconds, for JavaScript and
    // Python): a seed without timestamps gets the time the routes start
    // from, so the timers its messages set are due as long after as they say.
    if let Some(broker) = &embedded {
        seed(broker, seeds)?;
    }
    let outcome = match &config.source.file {
        Some(file) => {
            let path = config.resolve(file);
            consume_file(&path, lanes, &host.offsets, shutdown, host.deadline).await
        }
        None => {
            let source =
                KafkaSource::connect(config, &brokers, host.offsets.clone(), host.health.clone())?;
            let pace = Pace {
                commit_every: config.commit_interval,
                until_drained,
                deadline: host.deadline,
                timers: host.timers.clone(),
            };
            let transaction = host.transaction.clone();
            consume_kafka(source, lanes, &host.offsets, transaction, pace, shutdown).await
        }
    };
    host.finish(outcome).await
}

/// Whether a host serves its admin endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Serve {
    /// As the config says (`sluice run`).
    Admin,
    /// Never: the address belongs to the host being served (`sluice redrive`).
    Nothing,
}

/// Everything between a source and the outside world: the handlers, the
/// pipeline behind the lanes, the producers, the counters.
pub(crate) struct Host {
    pub(crate) offsets: Arc<Offsets>,
    pub(crate) telemetry: Arc<Telemetry>,
    health: Arc<Health>,
    registry: Arc<Registry>,
    pub(crate) publisher: Arc<Publisher>,
    transaction: Option<Arc<Transaction>>,
    shadows: Arc<Shadows>,
    stop_watching: watch::Sender<bool>,
    /// The OTLP export, when one is configured.
    otlp: Option<Exporter>,
    timers: Arc<Timers>,
    /// The task firing timers; it ends after the stop, once the timers it
    /// claimed are fired.
    firing: tokio::task::JoinHandle<()>,
    /// How long a stop waits for messages in flight.
    pub(crate) deadline: Duration,
}

impl Host {
    /// Loads every route's handler and builds the pipeline, ready for a
    /// source to feed its lanes.
    pub(crate) async fn assemble(
        config: &Config,
        options: RunOptions,
        brokers: &str,
        hold: Hold,
        serve: Serve,
    ) -> Result<(Host, Lanes), RunError> {
        let offsets = Arc::new(Offsets::new(hold));
        let publisher = Publisher::connect(config, brokers)?;
        let transaction = match config.transactional_topics().is_empty() {
            true => None,
            false => {
                let transactional = Publisher::transactional(config, brokers)?;
                Some(Arc::new(Transaction::new(transactional, offsets.clone())))
            }
        };
        let runtime = Runtime::for_config(config)?
            .with_artifact_cache(&config.resolve(&config.artifact_cache));
        let registry = Arc::new(Registry::open(
            config,
            Arc::new(runtime),
            &options.handlers,
        )?);
        let producers = Producers {
            publisher: &publisher,
            transaction: transaction.as_ref(),
        };
        let routes = route_handlers(config, &registry, producers)?;
        let telemetry = Arc::new(Telemetry::new(options.keep_records, &config.routes));
        let (stop_watching, stopped) = watch::channel(false);
        if config.watch_handlers {
            tokio::spawn(registry::watch(registry.clone(), stopped.clone()));
        }
        let breakers = Arc::new(Breakers::default());
        let health = Arc::new(Health::default());
        if config.source.file.is_some() {
            health.joined();
        }
        let controls = Arc::new(Controls::new(config.routes.iter().map(|r| r.topic.clone())));
        let budget = ByteBudget::new(config.max_in_flight_mib << 20);
        let store = Arc::new(LazyStore::new(
            config.store.clone(),
            config.base_dir.clone(),
        ));
        let timers = Arc::new(Timers::new(
            &config.routes,
            config.timers.clone(),
            store.clone(),
            publisher.clone(),
            breakers.clone(),
            telemetry.clone(),
        ));
        let firing = tokio::spawn(timers.clone().fire(stopped.clone()));
        let parts = admin::Parts {
            registry: registry.clone(),
            telemetry: telemetry.clone(),
            breakers: breakers.clone(),
            health: health.clone(),
            offsets: offsets.clone(),
            controls: controls.clone(),
            budget: budget.clone(),
            timers: timers.clone(),
        };
        let state = admin::State::new(parts, config);
        let otlp = match serve {
            Serve::Admin => otlp_export(config).map(|export| {
                let state = state.clone();
                Exporter::start(
                    export,
                    Arc::new(move |metrics| admin::metrics::expose(&state, metrics)),
                )
            }),
            Serve::Nothing => None,
        };
        if let (Some(address), Serve::Admin) = (config.admin.address(), serve) {
            let listener = admin::bind(address)
                .await
                .map_err(|source| RunError::Admin {
                    listen: address.to_string(),
                    source,
                })?;
            tokio::spawn(admin::serve(listener, state, stopped.clone()));
        }
        let shadows = Arc::new(Shadows::new(config, publisher.clone(), telemetry.clone()));
        let decider = Arc::new(Decider::lazy(
            store.clone(),
            config.decider.clone(),
            telemetry.decider_stats(),
        ));
        // A decider serving from the start needs its store: a store that
        // cannot be opened then is a setup error, said at once. (A decider
        // swapped in later opens it on first use.)
        let deciders_serve = routes
            .iter()
            .any(|r| r.selection.serving().active.handler.kind() == HandlerKind::Decider);
        if deciders_serve {
            decider.store().await?;
        }
        let pipeline = Arc::new(Pipeline::new(
            routes,
            config.trace.correlation_headers.clone(),
            WorkerPool::start(config.limits.worker_count())
                .timed(telemetry.phase(Phase::Handle).clone())
                .within(budget.clone()),
            decider,
            Effects::new(breakers, timers.clone(), telemetry.clone()),
            shadows.clone(),
            telemetry.clone(),
        ));
        let lanes = Lanes::new(pipeline, controls, config.max_in_flight, budget);
        let host = Host {
            offsets,
            telemetry,
            health,
            registry,
            publisher,
            transaction,
            shadows,
            stop_watching,
            otlp,
            timers,
            firing,
            deadline: config.shutdown_timeout,
        };
        Ok((host, lanes))
    }

    /// After the source stopped: lets shadows and producers finish, and
    /// reports.
    pub(crate) async fn finish(
        self,
        outcome: Result<Stop, RunError>,
    ) -> Result<RunReport, RunError> {
        self.stop_watching.send_replace(true);
        self.shadows.finish(self.deadline).await;
        if tokio::time::timeout(self.deadline, self.firing)
            .await
            .is_err()
        {
            tracing::warn!("stopped with timers claimed unfired; they fire once their lease ends");
        }
        self.publisher.flush(self.deadline);
        let unfinished = self.offsets.in_flight() as u64;
        if let Some(otlp) = self.otlp {
            otlp.finish(self.deadline).await;
        }
        if unfinished > 0 {
            tracing::warn!(
                unfinished,
                "stopped with messages unfinished; they will be redelivered"
            );
        }
        let pending = self.timers.left_pending(self.deadline).await;
        outcome.map(|stop| {
            self.telemetry
                .report(stop, unfinished, self.registry.swaps(), pending)
        })
    }
}

/// The OTLP export the config and the `OTEL_*` variables ask for. The
/// config's validation read the same variables and refused bad ones.
fn otlp_export(config: &Config) -> Option<OtlpExport> {
    config.otlp.export_here().unwrap_or_else(|(key, rule)| {
        tracing::warn!(key, rule, "OTLP export is off");
        None
    })
}

/// The messages of one seed file.
type Seed = (PathBuf, Vec<Message>);

/// Starts the embedded broker, creates the routes' topics and reads the
/// seeds (a bad line fails the run before anything starts).
fn start_embedded(config: &Config) -> Result<(EmbeddedBroker, Vec<Seed>), RunError> {
    let settings = config.embedded.clone().unwrap_or_default();
    let broker = EmbeddedBroker::start()?;
    for route in &config.routes {
        broker.create_topic(&route.topic, settings.partitions)?;
        broker.create_topic(&route.dead_letter_topic(), 1)?;
    }
    let seeds = settings
        .seed
        .iter()
        .map(|file| {
            let path = config.resolve(file);
            let messages = JsonlReader::open(&path)?
                .partition_by_key(settings.partitions)
                .collect::<Result<Vec<_>, _>>()?;
            Ok((path, messages))
        })
        .collect::<Result<_, RunError>>()?;
    Ok((broker, seeds))
}

fn seed(broker: &EmbeddedBroker, seeds: Vec<Seed>) -> Result<(), RunError> {
    for (path, messages) in seeds {
        let count = broker.produce(&messages)?;
        tracing::info!(file = %path.display(), count, "seeded embedded broker");
    }
    Ok(())
}

/// What routes publish with.
struct Producers<'a> {
    publisher: &'a Arc<Publisher>,
    /// For exactly-once routes.
    transaction: Option<&'a Arc<Transaction>>,
}

/// Each route with its handler's versions and its effects.
fn route_handlers(
    config: &Config,
    registry: &Registry,
    producers: Producers<'_>,
) -> Result<Vec<RouteHandler>, RunError> {
    let reserved = Arc::new(config.reserved_topics());
    config
        .routes
        .iter()
        .map(|route| {
            let transaction = producers
                .transaction
                .filter(|_| route.delivery == DeliveryMode::ExactlyOnce);
            let effects = RouteEffects::new(
                route,
                &reserved,
                producers.publisher,
                transaction.map(|t| t.publisher()),
            )
            .map_err(RunError::Http)?;
            Ok(RouteHandler {
                route: route.clone(),
                selection: registry.selection(&route.handler),
                effects,
                transaction: transaction.cloned(),
                streams: Arc::default(),
            })
        })
        .collect()
}

/// What woke the source loop.
enum Event {
    Stop(Stop),
    Commit,
    Committed,
    CheckDrained,
    MeasureLags,
    LagsMeasured,
    Source(Result<SourceEvent, UnsplitMessage>),
    TransactionFailed(RunError),
}

/// The Kafka source loop's timing.
struct Pace {
    /// How often finished offsets are committed (at the latest).
    commit_every: Duration,
    /// Stop once everything is consumed and committed, and no timer is
    /// due soon.
    until_drained: bool,
    /// How long a stop waits for messages in flight.
    deadline: Duration,
    timers: Arc<Timers>,
}

async fn consume_kafka(
    mut source: KafkaSource,
    mut lanes: Lanes,
    offsets: &Arc<Offsets>,
    transaction: Option<Arc<Transaction>>,
    pace: Pace,
    shutdown: impl Future<Output = ()>,
) -> Result<Stop, RunError> {
    let Pace {
        commit_every,
        until_drained,
        deadline,
        timers,
    } = pace;
    let committer = source.committer();
    let mut commits = Serial::new({
        let committer = committer.clone();
        move || committer.commit_now()
    });
    let mut lags = Serial::new({
        let committer = committer.clone();
        move || committer.measure_lags()
    });
    let mut lag_tick = tokio::time::interval(LAG_INTERVAL);
    let mut transactions = transaction.map(|t| Transactions::start(t, &source, commit_every));
    let mut commit_tick = tokio::time::interval(commit_every);
    let mut drain_tick = tokio::time::interval(DRAIN_CHECK_INTERVAL);
    tokio::pin!(shutdown);
    let mut failure = None;
    let stop = loop {
        let event = tokio::select! {
            biased;
            _ = &mut shutdown => Event::Stop(Stop::Requested),
            _ = commit_tick.tick() => Event::Commit,
            _ = offsets.commit_wanted() => Event::Commit,
            _ = commits.finished(), if commits.running() => Event::Committed,
            failed = Transactions::failed(&mut transactions) => Event::TransactionFailed(failed),
            _ = drain_tick.tick(), if until_drained => Event::CheckDrained,
            _ = offsets.became_idle(), if until_drained => Event::CheckDrained,
            _ = lag_tick.tick() => Event::MeasureLags,
            _ = lags.finished(), if lags.running() => Event::LagsMeasured,
            event = source.next_event() => Event::Source(event),
        };
        match event {
            Event::Stop(stop) => break stop,
            Event::Commit => {
                commits.start();
                if let Some(transactions) = &transactions {
                    transactions.transaction.want_commit();
                }
            }
            Event::Committed => commits.finish(),
            Event::MeasureLags => lags.start(),
            Event::LagsMeasured => lags.finish(),
            Event::CheckDrained => {
                if offsets.in_flight() == 0
                    && is_drained(&committer).await
                    && timers.none_due_soon().await
                {
                    break Stop::Drained;
                }
            }
            Event::Source(Ok(SourceEvent::Assigned(tp, feed))) => {
                lanes.open(tp, Feed::Partition(feed));
            }
            Event::Source(Ok(SourceEvent::Revoked(tp))) => lanes.stop(&tp),
            Event::Source(Err(unsplit)) => {
                tracing::error!(%unsplit, "stopping: cannot keep partition order");
                failure = Some(RunError::Unsplit(unsplit));
                break Stop::Requested;
            }
            Event::TransactionFailed(error) => {
                tracing::error!(%error, "stopping: exactly-once routes cannot go on");
                failure = Some(error);
                transactions = None;
                break Stop::Requested;
            }
        }
    };
    tracing::info!(
        ?stop,
        in_flight = offsets.in_flight(),
        "stopping: finishing in-flight messages"
    );
    // Partition queues never run dry: what a lane has not started stays for
    // the next owner of its partition.
    finish(lanes, Queued::Leave, offsets, deadline).await;
    if let Some(transactions) = transactions
        && let Err(error) = transactions.close().await
    {
        failure.get_or_insert(error);
    }
    lags.wait().await;
    let _ = tokio::task::spawn_blocking(move || committer.commit_now()).await;
    // Closing the consumer leaves the group, which may wait on the broker.
    let _ = tokio::task::spawn_blocking(move || drop(source)).await;
    failure.map_or(Ok(stop), Err)
}

/// The exactly-once transaction's committing task.
struct Transactions {
    transaction: Arc<Transaction>,
    task: tokio::task::JoinHandle<Result<(), TransactionFailed>>,
    stop: watch::Sender<bool>,
}

impl Transactions {
    /// Connects the transaction to the consumer's group, commits it before
    /// revoked partitions are let go, and starts committing it on the
    /// interval.
    fn start(transaction: Arc<Transaction>, source: &KafkaSource, every: Duration) -> Self {
        transaction.commit_under(source.membership());
        let commit = transaction.committer();
        // No timeout: revoked partitions are let go only once the
        // transaction holding their offsets is decided.
        source.before_release(Box::new(move || {
            if let Err(error) = commit() {
                tracing::error!(%error, "transaction failed before revoke");
            }
        }));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(transaction.clone().run(every, stopped));
        Transactions {
            transaction,
            task,
            stop,
        }
    }

    /// Resolves if the committing task ends with a failure (never without one).
    async fn failed(transactions: &mut Option<Transactions>) -> RunError {
        let Some(transactions) = transactions else {
            return std::future::pending().await;
        };
        match (&mut transactions.task).await {
            Ok(Err(failed)) => RunError::Transaction(failed),
            Ok(Ok(())) | Err(_) => std::future::pending().await,
        }
    }

    /// Stops the committing task and commits what is left.
    async fn close(self) -> Result<(), RunError> {
        self.stop.send_replace(true);
        let stopped = self.task.await;
        let closed = self.transaction.commit().await;
        if let Ok(Err(failed)) = stopped {
            return Err(failed.into());
        }
        Ok(closed?)
    }
}

/// A blocking job (a commit, a lag measure) on its own thread, one at a
/// time: asked for while it runs, it runs once more when done.
struct Serial {
    job: Arc<dyn Fn() + Send + Sync>,
    running: Option<tokio::task::JoinHandle<()>>,
    again: bool,
}

impl Serial {
    fn new(job: impl Fn() + Send + Sync + 'static) -> Self {
        Serial {
            job: Arc::new(job),
            running: None,
            again: false,
        }
    }

    fn start(&mut self) {
        if self.running.is_some() {
            self.again = true;
            return;
        }
        self.again = false;
        let job = self.job.clone();
        self.running = Some(tokio::task::spawn_blocking(move || job()));
    }

    fn running(&self) -> bool {
        self.running.is_some()
    }

    /// Resolves when the running job is done (never without one).
    async fn finished(&mut self) {
        match &mut self.running {
            Some(job) => {
                let _ = job.await;
            }
            None => std::future::pending().await,
        }
    }

    fn finish(&mut self) {
        self.running = None;
        if self.again {
            self.start();
        }
    }

    /// Waits for the running job, starting no other.
    async fn wait(self) {
        if let Some(job) = self.running {
            let _ = job.await;
        }
    }
}

async fn is_drained(committer: &Committer) -> bool {
    let committer = committer.clone();
    match tokio::task::spawn_blocking(move || committer.drained()).await {
        Ok(Ok(drained)) => drained,
        Ok(Err(error)) => {
            tracing::debug!(%error, "drain check failed; will check again");
            false
        }
        Err(_) => false,
    }
}

async fn consume_file(
    path: &Path,
    mut lanes: Lanes,
    offsets: &Arc<Offsets>,
    shutdown: impl Future<Output = ()>,
    deadline: Duration,
) -> Result<Stop, RunError> {
    tokio::pin!(shutdown);
    let mut reader = JsonlReader::open(path)?;
    let mut failure = None;
    let stop = loop {
        let message = match reader.next() {
            None => break Stop::Drained,
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                failure = Some(RunError::Input(error));
                break Stop::Drained;
            }
        };
        if !lanes.routes(&message.topic) {
            failure = Some(RunError::Unrouted {
                place: format!("{}:{}", path.display(), reader.line()),
                topic: message.topic,
            });
            break Stop::Drained;
        }
        let tp = (message.topic.clone(), message.partition);
        let ack = offsets
            .begin(tp, message.offset)
            .expect("a file source never lets partitions go");
        let delivery = Delivery {
            message: Arc::new(message),
            ack,
        };
        tokio::select! {
            _ = lanes.dispatch(delivery) => {}
            _ = &mut shutdown => break Stop::Requested,
        }
    };
    // Whatever was read before the end or a bad line is still finished.
    let queued = match stop {
        Stop::Drained => Queued::Handle,
        Stop::Requested => Queued::Leave,
    };
    finish(lanes, queued, offsets, deadline).await;
    failure.map_or(Ok(stop), Err)
}

/// Finishes the batches being handled (and, with `Queued::Handle`, those
/// queued) and waits for their acks, up to `deadline`.
pub(crate) async fn finish(lanes: Lanes, queued: Queued, offsets: &Offsets, deadline: Duration) {
    let drained = async {
        lanes.close(queued).await;
        offsets.wait_idle().await;
    };
    if tokio::time::timeout(deadline, drained).await.is_err() {
        tracing::warn!(
            in_flight = offsets.in_flight(),
            timeout_ms = deadline.as_millis() as u64,
            "shutdown timeout reached with messages in flight"
        );
    }
}
