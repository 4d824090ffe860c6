//! A whole `sluice run`: start the embedded broker if asked, load each
//! route's handler, feed the source's messages through the lanes, and on stop
//! (a signal, or everything drained) finish in-flight messages, commit, exit.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;

use crate::config::{Config, Embedded};
use crate::effects::publish::Publisher;
use crate::effects::{Effects, RouteEffects};
use crate::embedded::EmbeddedBroker;
use crate::pipeline::{Pipeline, RouteHandler};
use crate::policy::breaker::Breakers;
use crate::registry::{self, RegistryError};
use crate::runtime::{Handler, LoadError, Runtime, RuntimeError, WorkerPool};
use crate::schedule::offsets::Offsets;
use crate::schedule::{Feed, Lanes, Queued};
use crate::source::Delivery;
use crate::source::jsonl::{JsonlError, JsonlReader};
use crate::source::kafka::{Committer, KafkaSource, PartitionEvent, UnsplitMessage};
use crate::telemetry::{RunReport, Stop, Telemetry};

/// How often finished offsets are handed to the consumer for committing.
const STORE_INTERVAL: Duration = Duration::from_millis(100);
/// How often a run that stops when drained checks whether it is.
const DRAIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);

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
    /// A route's handler is not in the handlers directory.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A route's handler was refused.
    #[error(transparent)]
    Load(#[from] LoadError),
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
}

/// Runs the routes of `config` until `shutdown` resolves or, when asked (or
/// with the embedded broker), until every input is handled and committed.
pub async fn run(
    config: &Config,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<RunReport, RunError> {
    let embedded = match config.is_embedded() {
        true => Some(start_embedded(config)?),
        false => None,
    };
    let brokers = embedded
        .as_ref()
        .map_or(config.brokers.clone(), |b| b.bootstrap_servers().to_owned());
    let until_drained = options.until_drained || embedded.is_some();

    let runtime = Runtime::new(&config.limits)?;
    let routes = load_routes(config, &runtime, &options.handlers)?;
    let telemetry = Arc::new(Telemetry::new(options.keep_records));
    let publisher = Publisher::connect(config, &brokers)?;
    let pipeline = Arc::new(Pipeline::new(
        routes,
        WorkerPool::start(config.limits.worker_count(), config.limits.recycle_after),
        Effects::new(
            publisher.clone(),
            Arc::new(Breakers::default()),
            telemetry.clone(),
        ),
        telemetry.clone(),
    ));
    let offsets = Arc::new(Offsets::default());
    let lanes = Lanes::new(pipeline, config.max_in_flight);
    let deadline = Duration::from_millis(config.shutdown_timeout_ms);

    let outcome = match &config.source.file {
        Some(file) => {
            let path = config.resolve(file);
            consume_file(&path, lanes, &offsets, shutdown, deadline).await
        }
        None => {
            let source = KafkaSource::connect(config, &brokers, offsets.clone())?;
            consume_kafka(source, lanes, &offsets, until_drained, shutdown, deadline).await
        }
    };
    publisher.flush(deadline);
    let unfinished = offsets.in_flight() as u64;
    if unfinished > 0 {
        tracing::warn!(
            unfinished,
            "stopped with messages unfinished; they will be redelivered"
        );
    }
    outcome.map(|stop| telemetry.report(stop, unfinished))
}

/// Starts the embedded broker, creates the routes' topics and loads the seeds.
fn start_embedded(config: &Config) -> Result<EmbeddedBroker, RunError> {
    let settings = config.embedded.clone().unwrap_or_default();
    let broker = EmbeddedBroker::start()?;
    for route in &config.routes {
        broker.create_topic(&route.topic, settings.partitions)?;
        broker.create_topic(&route.dead_letter_topic(), 1)?;
    }
    seed(config, &settings, &broker)?;
    Ok(broker)
}

fn seed(config: &Config, settings: &Embedded, broker: &EmbeddedBroker) -> Result<(), RunError> {
    for file in &settings.seed {
        let path = config.resolve(file);
        let messages = JsonlReader::open(&path)?
            .partition_by_key(settings.partitions)
            .collect::<Result<Vec<_>, _>>()?;
        let count = broker.produce(&messages)?;
        tracing::info!(file = %path.display(), count, "seeded embedded broker");
    }
    Ok(())
}

/// Finds and loads each route's handler (or takes the one given in options).
fn load_routes(
    config: &Config,
    runtime: &Runtime,
    given: &HashMap<String, Arc<dyn Handler>>,
) -> Result<Vec<RouteHandler>, RunError> {
    let dir = config.resolve(&config.handlers_dir);
    let mut loaded: HashMap<String, Arc<dyn Handler>> = given.clone();
    let mut routes = Vec::new();
    for route in &config.routes {
        let handler = match loaded.get(&route.handler) {
            Some(handler) => handler.clone(),
            None => {
                let file = registry::find(&dir, &route.handler, route.version.as_deref())?;
                let started = Instant::now();
                let handler: Arc<dyn Handler> =
                    runtime.load(&file.path, &file.name, &file.version.to_string())?;
                tracing::info!(
                    handler = %file.name,
                    version = %file.version,
                    file = %file.path.display(),
                    ms = started.elapsed().as_millis() as u64,
                    "handler loaded"
                );
                loaded.insert(route.handler.clone(), handler.clone());
                handler
            }
        };
        routes.push(RouteHandler {
            route: route.clone(),
            handler,
            effects: RouteEffects::new(route).map_err(RunError::Http)?,
        });
    }
    Ok(routes)
}

/// What woke the source loop.
enum Event {
    Stop(Stop),
    Store,
    CheckDrained,
    Partition(Result<PartitionEvent, UnsplitMessage>),
}

async fn consume_kafka(
    mut source: KafkaSource,
    mut lanes: Lanes,
    offsets: &Arc<Offsets>,
    until_drained: bool,
    shutdown: impl Future<Output = ()>,
    deadline: Duration,
) -> Result<Stop, RunError> {
    let committer = source.committer();
    let mut store_tick = tokio::time::interval(STORE_INTERVAL);
    let mut drain_tick = tokio::time::interval(DRAIN_CHECK_INTERVAL);
    tokio::pin!(shutdown);
    let mut failure = None;
    let stop = loop {
        let event = tokio::select! {
            biased;
            _ = &mut shutdown => Event::Stop(Stop::Requested),
            _ = store_tick.tick() => Event::Store,
            _ = drain_tick.tick(), if until_drained => Event::CheckDrained,
            event = source.next_event() => Event::Partition(event),
        };
        match event {
            Event::Stop(stop) => break stop,
            Event::Store => committer.store_advanced(),
            Event::CheckDrained => {
                if offsets.in_flight() == 0 && is_drained(&committer).await {
                    break Stop::Drained;
                }
            }
            Event::Partition(Ok(PartitionEvent::Assigned(tp, feed))) => {
                lanes.open(tp, Feed::Partition(feed));
            }
            Event::Partition(Ok(PartitionEvent::Revoked(tp))) => lanes.stop(&tp),
            Event::Partition(Err(unsplit)) => {
                tracing::error!(%unsplit, "stopping: cannot keep partition order");
                failure = Some(RunError::Unsplit(unsplit));
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
    let _ = tokio::task::spawn_blocking(move || committer.commit_now()).await;
    // Closing the consumer leaves the group, which may wait on the broker.
    let _ = tokio::task::spawn_blocking(move || drop(source)).await;
    failure.map_or(Ok(stop), Err)
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
        let ack = offsets.begin((message.topic.clone(), message.partition), message.offset);
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
async fn finish(lanes: Lanes, queued: Queued, offsets: &Offsets, deadline: Duration) {
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
