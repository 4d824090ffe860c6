//! The TOML configuration: schema, defaults, and validation that names the
//! offending key and says what is allowed.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::topics::{self, ReservedTopics, TopicPattern};

/// What `brokers = "embedded"` means: an in-process Kafka-protocol broker.
pub const EMBEDDED: &str = "embedded";

/// librdkafka properties sluice sets itself; overriding them would break its
/// delivery guarantees.
const RESERVED_KAFKA_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.offset.store",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "enable.idempotence",
    "transactional.id",
    "isolation.level",
];

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema.
    #[error("config {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's explanation (with line and column, and the key).
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("config {path}: {key}: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The offending key, dotted (`routes[1].handler`).
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

/// The whole configuration of one `sluice run`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// `"embedded"` or a comma-separated list of `host:port`.
    pub brokers: String,
    /// Kafka consumer group id.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Directory of handler components: `<name>/<version>.wasm` or `<name>@<version>.wasm`.
    #[serde(default = "default_handlers_dir")]
    pub handlers_dir: PathBuf,
    /// How often stored offsets are committed.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// How long a stop waits for in-flight messages before giving up on them.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// How long a revoked partition's in-flight messages may take to finish
    /// before its offsets are committed and it is let go.
    #[serde(default = "default_revoke_timeout_ms")]
    pub revoke_timeout_ms: u64,
    /// Messages in flight in this host, over all partitions; at the cap,
    /// partitions are paused.
    #[serde(default = "default_host_max_in_flight")]
    pub max_in_flight: usize,
    /// MiB of handler outputs this host holds while their effects run, over
    /// all partitions; at the cap, lanes stop calling handlers (and pause
    /// their partitions) until effects finish and give bytes back.
    #[serde(default = "default_max_in_flight_mib")]
    pub max_in_flight_mib: u64,
    /// Sandbox limits applied to every handler.
    #[serde(default)]
    pub limits: Limits,
    /// Topic → handler routes.
    pub routes: Vec<Route>,
    /// Where messages come from (default: the routes' topics on the brokers).
    #[serde(default)]
    pub source: Source,
    /// Settings of the embedded broker.
    pub embedded: Option<Embedded>,
    /// Extra librdkafka properties.
    #[serde(default)]
    pub kafka: KafkaProperties,
    /// Per-handler settings (pin, shadow, canary), by handler name.
    #[serde(default)]
    pub handlers: BTreeMap<String, HandlerSettings>,
    /// Watch the handlers directory and swap versions in while running.
    #[serde(default = "default_watch_handlers")]
    pub watch_handlers: bool,
    /// How long a handler file must stay unchanged before it is loaded, so a
    /// copy in progress is not.
    #[serde(default = "default_handler_settle_ms")]
    pub handler_settle_ms: u64,
    /// Where compiled handlers are cached, by content hash and engine settings.
    #[serde(default = "default_artifact_cache")]
    pub artifact_cache: PathBuf,
    /// The admin HTTP server (`/handlers`, `/metrics`).
    #[serde(default)]
    pub admin: Admin,
    /// The event store of decider handlers.
    #[serde(default)]
    pub store: StoreConfig,
    /// How decider handlers load, decide and append.
    #[serde(default)]
    pub decider: DeciderSettings,
    /// Tracing: correlation ids.
    #[serde(default)]
    pub trace: TraceSettings,
    /// Directory relative paths are resolved against (the config file's).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// Sandbox limits for handler calls: `[limits]` sets them for every handler,
/// `[handlers.NAME.limits]` overrides any of them (but `workers`) for one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock deadline for one handler call, in milliseconds.
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// Wasm instructions one call may run (roughly); none: no fuel metering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Linear-memory cap of one instance, in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// Core instances (and memories, and tables) one component may create.
    #[serde(default = "default_max_instances")]
    pub max_instances: u32,
    /// Elements one table may grow to.
    #[serde(default = "default_max_table_elements")]
    pub max_table_elements: u64,
    /// Outputs one call may return.
    #[serde(default = "default_max_outputs")]
    pub max_outputs: u64,
    /// Bytes of all outputs of one call together (topics, keys, payloads,
    /// headers, texts, URLs, bodies).
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: u64,
    /// Guest log lines (stdout, stderr and `log` outputs together) logged
    /// per second per handler version; lines over it are dropped and counted.
    #[serde(default = "default_stdio_lines_per_second")]
    pub stdio_lines_per_second: u32,
    /// One instance per worker, reused (`reuse`), or a new one per message (`fresh`).
    #[serde(default)]
    pub instances: InstanceStrategy,
    /// Replace a reused instance after this many calls.
    #[serde(default = "default_recycle_after")]
    pub recycle_after: u64,
    /// The guest's clocks and randomness come from the message (timestamp,
    /// topic/partition/offset), so a replay gives the same outputs.
    #[serde(default = "default_deterministic")]
    pub deterministic: bool,
    /// Worker threads running handler calls; 0 means one per CPU (host-wide only).
    #[serde(default)]
    pub workers: usize,
    /// The largest component file loaded, in MiB: compiling takes memory in
    /// proportion to size, so a larger file is refused before it is read.
    #[serde(default = "default_max_component_mib")]
    pub max_component_mib: u64,
}

/// How instances of a handler are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceStrategy {
    /// One instance per worker thread, recycled after `recycle-after` calls
    /// and after any trap (default; cheapest per call).
    #[default]
    Reuse,
    /// A new instance for every message: nothing survives from one message
    /// to the next (pooling allocator, pre-linked instantiation).
    Fresh,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline_ms: default_deadline_ms(),
            fuel: None,
            memory_mib: default_memory_mib(),
            max_instances: default_max_instances(),
            max_table_elements: default_max_table_elements(),
            max_outputs: default_max_outputs(),
            max_output_bytes: default_max_output_bytes(),
            stdio_lines_per_second: default_stdio_lines_per_second(),
            instances: InstanceStrategy::default(),
            recycle_after: default_recycle_after(),
            deterministic: default_deterministic(),
            workers: 0,
            max_component_mib: default_max_component_mib(),
        }
    }
}

impl Limits {
    /// The per-call deadline.
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }

    /// The memory cap in bytes.
    pub fn memory_bytes(&self) -> usize {
        (self.memory_mib as usize) << 20
    }

    /// The largest component file loaded, in bytes.
    pub fn max_component_bytes(&self) -> u64 {
        self.max_component_mib << 20
    }

    /// Number of worker threads to start.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        }
    }

    /// Calls an instance serves before it is replaced.
    pub fn calls_per_instance(&self) -> u64 {
        match self.instances {
            InstanceStrategy::Reuse => self.recycle_after,
            InstanceStrategy::Fresh => 1,
        }
    }

    /// These limits with `overrides` (a `[handlers.NAME.limits]` table) on top.
    fn merged(&self, overrides: &toml::Table) -> Result<Limits, String> {
        if overrides.contains_key("workers") {
            return Err("`workers` is host-wide: set it in [limits]".into());
        }
        let mut table = toml::Table::try_from(self).map_err(|e| e.to_string())?;
        table.extend(overrides.clone());
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| e.message().to_owned())
    }

    fn validate(&self, prefix: &str) -> Result<(), (String, String)> {
        let key = |field: &str| format!("{prefix}.{field}");
        check_range(&key("deadline-ms"), self.deadline_ms, 1, 600_000)?;
        if let Some(fuel) = self.fuel {
            check_range(&key("fuel"), fuel, 1, u64::MAX)?;
        }
        check_range(&key("memory-mib"), self.memory_mib, 1, 4096)?;
        check_range(&key("max-instances"), self.max_instances.into(), 1, 10_000)?;
        check_range(
            &key("max-table-elements"),
            self.max_table_elements,
            1,
            100_000_000,
        )?;
        check_range(&key("max-outputs"), self.max_outputs, 1, 10_000_000)?;
        check_range(&key("max-output-bytes"), self.max_output_bytes, 1, 1 << 32)?;
        check_range(
            &key("stdio-lines-per-second"),
            self.stdio_lines_per_second.into(),
            0,
            1_000_000,
        )?;
        check_range(&key("recycle-after"), self.recycle_after, 1, u64::MAX)?;
        check_range(&key("max-component-mib"), self.max_component_mib, 1, 4096)?;
        check_range(&key("workers"), self.workers as u64, 0, 1024)
    }
}

/// What to do with a message its handler cannot decode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnInvalidInput {
    /// Send it to the dead-letter topic (default).
    #[default]
    DeadLetter,
    /// Log it and move on.
    Skip,
}

/// Which messages of a partition must wait for each other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ordering {
    /// Same key in order, different keys concurrently (default).
    #[default]
    Key,
    /// One message at a time per partition.
    Partition,
    /// No order at all.
    Unordered,
}

/// What a dead letter does to the messages of its key that follow it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnDeadLetter {
    /// Nothing: they are handled as usual (default).
    #[default]
    Continue,
    /// Park the key: its later messages in the partition are dead-lettered
    /// behind it (`key-parked`) until an operator re-drives it; the parking
    /// outlives the process (it is read back from the dead-letter topic).
    ParkKey,
}

/// How a route's effects reach the outside world.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryMode {
    /// Effects run before the offset is committed (default).
    #[default]
    AtLeastOnce,
    /// Outputs and consumed offsets commit in one Kafka transaction; only
    /// for routes whose outputs are all publishes.
    ExactlyOnce,
}

/// Retries of transient effect failures: exponential backoff, full jitter.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RetryPolicy {
    /// First backoff ceiling.
    #[serde(default = "default_retry_initial_ms")]
    pub initial_ms: u64,
    /// Largest backoff ceiling.
    #[serde(default = "default_retry_max_interval_ms")]
    pub max_interval_ms: u64,
    /// Attempts in all, the first included.
    #[serde(default = "default_retry_max_attempts")]
    pub max_attempts: u32,
    /// Time an effect may spend retrying (waiting on an open breaker excluded).
    #[serde(default = "default_retry_max_elapsed_ms")]
    pub max_elapsed_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_ms: default_retry_initial_ms(),
            max_interval_ms: default_retry_max_interval_ms(),
            max_attempts: default_retry_max_attempts(),
            max_elapsed_ms: default_retry_max_elapsed_ms(),
        }
    }
}

/// The circuit breaker of each effect target (output topic, HTTP host).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BreakerPolicy {
    /// Consecutive transient failures that open it.
    #[serde(default = "default_breaker_failures")]
    pub failures: u32,
    /// How long it stays open before a probe is let through.
    #[serde(default = "default_breaker_open_ms")]
    pub open_ms: u64,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            failures: default_breaker_failures(),
            open_ms: default_breaker_open_ms(),
        }
    }
}

/// HTTP effects of a route.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HttpPolicy {
    /// Hosts requests may go to: `host` (any port) or `host:port`.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Whole-request timeout.
    #[serde(default = "default_http_timeout_ms")]
    pub timeout_ms: u64,
    /// Connection timeout.
    #[serde(default = "default_http_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

impl Default for HttpPolicy {
    fn default() -> Self {
        HttpPolicy {
            allow: Vec::new(),
            timeout_ms: default_http_timeout_ms(),
            connect_timeout_ms: default_http_connect_timeout_ms(),
        }
    }
}

/// One route: messages of a topic go to a handler.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Route {
    /// Input topic.
    pub topic: String,
    /// Handler name (a folder or file prefix in the handlers directory).
    pub handler: String,
    /// Pin a version instead of running the highest one.
    pub version: Option<String>,
    /// Dead-letter topic (default: `<topic>.dlq`).
    pub dead_letter_topic: Option<String>,
    /// Topics the route's handler may publish to: names, or prefixes that
    /// end in `*` (`"orders.*"`; `"*"` alone for any). Required (`[]` for a
    /// handler that publishes nothing). Dead-letter, shadow-diff and
    /// Kafka-internal topics stay out of reach whatever this says.
    pub publish_to: Option<Vec<String>>,
    /// Dead-letter or skip messages the handler cannot decode.
    #[serde(default)]
    pub on_invalid_input: OnInvalidInput,
    /// Which messages wait for each other.
    #[serde(default)]
    pub ordering: Ordering,
    /// Messages in flight (received and not yet committed) per partition:
    /// bounds memory and what a crash can make sluice redo. At the cap the
    /// partition waits, and is paused if that lasts.
    #[serde(default = "default_partition_max_in_flight")]
    pub max_in_flight: usize,
    /// Messages of a partition whose effects run at once (default: as many
    /// as are in flight); bounds the pressure on effect targets.
    pub concurrency: Option<usize>,
    /// What a dead letter does to its key's later messages.
    #[serde(default)]
    pub on_dead_letter: OnDeadLetter,
    /// At-least-once or exactly-once.
    #[serde(default)]
    pub delivery: DeliveryMode,
    /// Retries of transient effect failures.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Circuit breakers of the route's effect targets.
    #[serde(default)]
    pub breaker: BreakerPolicy,
    /// HTTP effects.
    #[serde(default)]
    pub http: HttpPolicy,
}

impl Route {
    /// The topics (and `*` prefixes) its handler may publish to.
    pub fn publish_to(&self) -> &[String] {
        self.publish_to.as_deref().unwrap_or_default()
    }

    /// The topic this route dead-letters to.
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.topic))
    }
}

/// What runs for one handler name besides its highest version.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HandlerSettings {
    /// Pin this version as the active one.
    pub version: Option<String>,
    /// Run this version in shadow: it sees every message, its outputs are
    /// compared with the active version's, and none of them is executed.
    pub shadow: Option<String>,
    /// Send a share of keys to a canary version.
    pub canary: Option<CanarySettings>,
    /// Where shadow differences are published (default `<handler>.shadow-diffs`).
    pub shadow_diff_topic: Option<String>,
    /// Sandbox limits of this handler, over `[limits]`.
    pub limits: Option<toml::Table>,
}

impl HandlerSettings {
    /// The canary's settings: a version marked only by its file name
    /// (`.canary.wasm`) is a canary with the defaults.
    pub fn canary_settings(&self) -> CanarySettings {
        self.canary.clone().unwrap_or_default()
    }
}

/// A canary: a share of keys for a candidate version, rolled back on its own
/// when it dead-letters too much.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CanarySettings {
    /// The canary version (or mark a file `<version>.canary.wasm`).
    pub version: Option<String>,
    /// Share of keys it gets, in percent (by key hash, sticky).
    #[serde(default = "default_canary_percent")]
    pub percent: f64,
    /// Roll it back when this share of its messages is dead-lettered...
    #[serde(default = "default_canary_max_dead_letter_rate")]
    pub max_dead_letter_rate: f64,
    /// ...over this window...
    #[serde(default = "default_canary_window_ms")]
    pub window_ms: u64,
    /// ...once it has handled at least this many messages in it.
    #[serde(default = "default_canary_min_messages")]
    pub min_messages: u64,
}

impl Default for CanarySettings {
    fn default() -> Self {
        CanarySettings {
            version: None,
            percent: default_canary_percent(),
            max_dead_letter_rate: default_canary_max_dead_letter_rate(),
            window_ms: default_canary_window_ms(),
            min_messages: default_canary_min_messages(),
        }
    }
}

/// The admin HTTP server.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Admin {
    /// A port to serve on 127.0.0.1, or `host:port` (port 0 picks one and
    /// logs it); none: no server.
    pub listen: Option<String>,
    /// The bearer token that state-changing calls (pause, resume, un-park)
    /// must carry; `SLUICE_ADMIN_TOKEN` in the environment takes precedence.
    /// None: those calls are refused.
    pub token: Option<String>,
}

/// Environment variable holding the admin token (kept out of config files).
pub const ADMIN_TOKEN_ENV: &str = "SLUICE_ADMIN_TOKEN";
/// The shortest admin token accepted.
const MIN_TOKEN_LEN: usize = 16;

impl Admin {
    /// Where to listen: a bare port (or `:port`) on the loopback interface,
    /// so exposing the server beyond the machine is a deliberate choice.
    pub fn address(&self) -> Option<std::net::SocketAddr> {
        let listen = self.listen.as_deref()?;
        match listen.trim_start_matches(':').parse::<u16>() {
            Ok(port) => Some(std::net::SocketAddr::from(([127, 0, 0, 1], port))),
            Err(_) => listen.parse().ok(),
        }
    }

    /// The token state-changing calls need: the environment's, else the
    /// config's.
    pub fn token(&self) -> Option<String> {
        std::env::var(ADMIN_TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| self.token.clone())
    }
}

/// Which event store backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreBackend {
    /// An embedded SQLite file: nothing to run.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// The event store (`[store]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StoreConfig {
    /// `"sqlite"` (default) or `"postgres"`.
    #[serde(default = "default_store_backend")]
    pub backend: StoreBackend,
    /// The SQLite file, relative to the config file.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// The PostgreSQL connection: a `postgres://` URL or `key=value` pairs.
    #[serde(default = "default_store_url")]
    pub url: String,
    /// The PostgreSQL schema holding the tables (created if missing).
    #[serde(default = "default_store_schema")]
    pub schema: String,
    /// PostgreSQL connections per host.
    #[serde(default = "default_store_connections")]
    pub connections: usize,
    /// How long connecting to PostgreSQL may take.
    #[serde(default = "default_store_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long one PostgreSQL operation may take before it counts as an
    /// outage (and is retried).
    #[serde(default = "default_store_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

/// How deciders run (`[decider]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DeciderSettings {
    /// Decisions per message before a version conflict dead-letters it.
    #[serde(default = "default_conflict_attempts")]
    pub conflict_attempts: u32,
    /// The first conflict backoff's ceiling; it doubles per conflict.
    #[serde(default = "default_conflict_backoff_initial_ms")]
    pub conflict_backoff_initial_ms: u64,
    /// The largest conflict backoff.
    #[serde(default = "default_conflict_backoff_max_ms")]
    pub conflict_backoff_max_ms: u64,
    /// Persist a stream's state every this many events (0: never).
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
    /// Streams whose state is kept in memory (0: none).
    #[serde(default = "default_cache_streams")]
    pub cache_streams: usize,
    /// MiB of states kept in memory, all streams together (0: none).
    #[serde(default = "default_cache_mib")]
    pub cache_mib: u64,
}

impl Default for DeciderSettings {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

/// Tracing (`[trace]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TraceSettings {
    /// Input headers holding a correlation id, in order of preference: the
    /// first present is logged with the message and copied onto its outputs.
    #[serde(default = "default_correlation_headers")]
    pub correlation_headers: Vec<String>,
}

impl Default for TraceSettings {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

/// Where messages come from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Source {
    /// Read messages from this JSONL file instead of consuming the brokers.
    pub file: Option<PathBuf>,
}

/// The embedded broker (`brokers = "embedded"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Embedded {
    /// Partitions of each routed topic.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// JSONL files whose messages are produced into their topics at start.
    #[serde(default)]
    pub seed: Vec<PathBuf>,
}

impl Default for Embedded {
    fn default() -> Self {
        Embedded {
            partitions: default_partitions(),
            seed: Vec::new(),
        }
    }
}

/// Extra librdkafka properties, passed through as given.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct KafkaProperties {
    /// Properties for the consumer.
    #[serde(default)]
    pub consumer: BTreeMap<String, String>,
    /// Properties for the producer.
    #[serde(default)]
    pub producer: BTreeMap<String, String>,
}

fn default_group_id() -> String {
    "sluice".into()
}
fn default_handlers_dir() -> PathBuf {
    "handlers".into()
}
fn default_commit_interval_ms() -> u64 {
    1000
}
fn default_shutdown_timeout_ms() -> u64 {
    30_000
}
fn default_revoke_timeout_ms() -> u64 {
    10_000
}
fn default_host_max_in_flight() -> usize {
    10_000
}
fn default_max_in_flight_mib() -> u64 {
    256
}
fn default_max_component_mib() -> u64 {
    48
}
fn default_cache_mib() -> u64 {
    64
}
fn default_partition_max_in_flight() -> usize {
    1000
}
fn default_retry_initial_ms() -> u64 {
    100
}
fn default_retry_max_interval_ms() -> u64 {
    10_000
}
fn default_retry_max_attempts() -> u32 {
    10
}
fn default_retry_max_elapsed_ms() -> u64 {
    120_000
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_open_ms() -> u64 {
    5000
}
fn default_http_timeout_ms() -> u64 {
    10_000
}
fn default_http_connect_timeout_ms() -> u64 {
    2000
}
fn default_deadline_ms() -> u64 {
    1000
}
fn default_memory_mib() -> u64 {
    64
}
fn default_recycle_after() -> u64 {
    10_000
}
fn default_max_instances() -> u32 {
    100
}
fn default_max_table_elements() -> u64 {
    1_000_000
}
fn default_max_outputs() -> u64 {
    10_000
}
fn default_max_output_bytes() -> u64 {
    16 << 20
}
fn default_stdio_lines_per_second() -> u32 {
    100
}
fn default_deterministic() -> bool {
    true
}
fn default_watch_handlers() -> bool {
    true
}
fn default_handler_settle_ms() -> u64 {
    500
}
fn default_artifact_cache() -> PathBuf {
    ".sluice-cache".into()
}
fn default_correlation_headers() -> Vec<String> {
    vec!["x-correlation-id".into(), "correlation-id".into()]
}
fn default_store_backend() -> StoreBackend {
    StoreBackend::Sqlite
}
fn default_store_path() -> PathBuf {
    "sluice-events.db".into()
}
fn default_store_url() -> String {
    "postgres://postgres@127.0.0.1:5432/postgres".into()
}
fn default_store_schema() -> String {
    "sluice".into()
}
fn default_store_connections() -> usize {
    4
}
fn default_store_connect_timeout_ms() -> u64 {
    5000
}
fn default_store_timeout_ms() -> u64 {
    10_000
}
fn default_conflict_attempts() -> u32 {
    10
}
fn default_conflict_backoff_initial_ms() -> u64 {
    5
}
fn default_conflict_backoff_max_ms() -> u64 {
    200
}
fn default_snapshot_every() -> u64 {
    100
}
fn default_cache_streams() -> usize {
    10_000
}
fn default_canary_percent() -> f64 {
    10.0
}
fn default_canary_max_dead_letter_rate() -> f64 {
    0.1
}
fn default_canary_window_ms() -> u64 {
    60_000
}
fn default_canary_min_messages() -> u64 {
    20
}
fn default_partitions() -> i32 {
    4
}

impl StoreConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        let invalid = |key: &str, message: String| Err((format!("store.{key}"), message));
        let identifier = !self.schema.is_empty()
            && self.schema.len() <= 63
            && self
                .schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !self.schema.starts_with(|c: char| c.is_ascii_digit());
        if !identifier {
            return invalid(
                "schema",
                format!(
                    "{:?} is not a schema name: use lowercase letters, digits and '_'",
                    self.schema
                ),
            );
        }
        if self.backend == StoreBackend::Postgres
            && let Err(e) = self.url.parse::<tokio_postgres::Config>()
        {
            return invalid(
                "url",
                format!("{:?} is not a PostgreSQL connection: {e}", self.url),
            );
        }
        check_range("store.connections", self.connections as u64, 1, 64)?;
        check_range(
            "store.connect-timeout-ms",
            self.connect_timeout_ms,
            1,
            600_000,
        )?;
        check_range("store.timeout-ms", self.timeout_ms, 1, 600_000)
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Config::parse(&text, path, base_dir)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path, base_dir: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " | "),
        })?;
        config.base_dir = base_dir.to_owned();
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                path: path.to_owned(),
                key,
                message,
            })?;
        Ok(config)
    }

    /// True when the config asks for the in-process broker.
    pub fn is_embedded(&self) -> bool {
        self.brokers == EMBEDDED
    }

    /// Resolves a path from the config against the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.base_dir.join(path)
    }

    /// Topics of exactly-once routes: their offsets commit in transactions.
    pub fn transactional_topics(&self) -> HashSet<String> {
        self.routes
            .iter()
            .filter(|r| r.delivery == DeliveryMode::ExactlyOnce)
            .map(|r| r.topic.clone())
            .collect()
    }

    /// The route for a topic.
    pub fn route(&self, topic: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.topic == topic)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let invalid = |key: &str, message: String| Err((key.to_owned(), message));
        if self.brokers != EMBEDDED {
            let well_formed = !self.brokers.trim().is_empty()
                && self.brokers.split(',').all(|b| {
                    b.trim()
                        .rsplit_once(':')
                        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
                });
            if !well_formed {
                return invalid(
                    "brokers",
                    format!(
                        "{:?} is not \"embedded\" nor a comma-separated list of host:port",
                        self.brokers
                    ),
                );
            }
            if self.embedded.is_some() {
                return invalid(
                    "embedded",
                    "only allowed with brokers = \"embedded\"".into(),
                );
            }
        }
        if self.group_id.trim().is_empty() {
            return invalid("group-id", "must not be empty".into());
        }
        check_range("commit-interval-ms", self.commit_interval_ms, 10, 3_600_000)?;
        check_range(
            "shutdown-timeout-ms",
            self.shutdown_timeout_ms,
            0,
            3_600_000,
        )?;
        self.limits.validate("limits")?;
        self.store.validate()?;
        check_range(
            "decider.conflict-attempts",
            self.decider.conflict_attempts.into(),
            1,
            1000,
        )?;
        check_range(
            "decider.conflict-backoff-max-ms",
            self.decider.conflict_backoff_max_ms,
            self.decider.conflict_backoff_initial_ms,
            60_000,
        )?;
        if self.routes.is_empty() {
            return invalid(
                "routes",
                "at least one [[routes]] entry (topic and handler) is required".into(),
            );
        }
        let mut topics = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let key = |field: &str| format!("routes[{i}].{field}");
            if route.topic.trim().is_empty() {
                return invalid(&key("topic"), "must not be empty".into());
            }
            if !topics.insert(route.topic.as_str()) {
                return invalid(
                    &key("topic"),
                    format!(
                        "topic {:?} is routed twice; one route per topic",
                        route.topic
                    ),
                );
            }
            if !is_handler_name(&route.handler) {
                return invalid(
                    &key("handler"),
                    format!(
                        "{:?} is not a handler name: use lowercase letters, digits, '-' and '_'",
                        route.handler
                    ),
                );
            }
            if let Some(version) = &route.version
                && semver::Version::parse(version).is_err()
            {
                return invalid(
                    &key("version"),
                    format!("{version:?} is not a semantic version like \"1.2.0\""),
                );
            }
            if let Some(problem) = topics::name_problem(&route.topic) {
                return invalid(&key("topic"), problem);
            }
            if let Some(problem) = topics::name_problem(&route.dead_letter_topic()) {
                return invalid(&key("dead-letter-topic"), problem);
            }
            if route.dead_letter_topic() == route.topic {
                return invalid(
                    &key("dead-letter-topic"),
                    "must differ from the route's own topic".into(),
                );
            }
            check_range(
                &key("max-in-flight"),
                route.max_in_flight as u64,
                1,
                1_000_000,
            )?;
            if let Some(concurrency) = route.concurrency {
                check_range(
                    &key("concurrency"),
                    concurrency as u64,
                    1,
                    route.max_in_flight as u64,
                )?;
            }
            let retry = &route.retry;
            check_range(&key("retry.initial-ms"), retry.initial_ms, 1, 3_600_000)?;
            check_range(
                &key("retry.max-interval-ms"),
                retry.max_interval_ms,
                retry.initial_ms,
                3_600_000,
            )?;
            check_range(
                &key("retry.max-attempts"),
                u64::from(retry.max_attempts),
                1,
                1_000_000,
            )?;
            check_range(
                &key("retry.max-elapsed-ms"),
                retry.max_elapsed_ms,
                1,
                86_400_000,
            )?;
            check_range(
                &key("breaker.failures"),
                u64::from(route.breaker.failures),
                1,
                1_000_000,
            )?;
            check_range(&key("breaker.open-ms"), route.breaker.open_ms, 1, 3_600_000)?;
            check_range(&key("http.timeout-ms"), route.http.timeout_ms, 1, 3_600_000)?;
            check_range(
                &key("http.connect-timeout-ms"),
                route.http.connect_timeout_ms,
                1,
                3_600_000,
            )?;
            if route.delivery == DeliveryMode::ExactlyOnce {
                if !route.http.allow.is_empty() {
                    return invalid(
                        &key("http.allow"),
                        "an exactly-once route can only publish: a transaction cannot undo an HTTP request".into(),
                    );
                }
                if self.is_embedded() {
                    return invalid(
                        &key("delivery"),
                        "exactly-once needs a broker with transactions; the embedded broker does not commit offsets in them".into(),
                    );
                }
                if self.source.file.is_some() {
                    return invalid(
                        &key("delivery"),
                        "exactly-once needs a Kafka source: the offsets it commits are a consumer group's".into(),
                    );
                }
            }
            if let Some(bad) = route
                .http
                .allow
                .iter()
                .find(|h| !is_allowed_host_pattern(h))
            {
                return invalid(
                    &key("http.allow"),
                    format!("{bad:?} is not a host or host:port (no scheme, path or wildcard)"),
                );
            }
        }
        self.validate_handlers()?;
        self.validate_publish_to()?;
        check_range("max-in-flight-mib", self.max_in_flight_mib, 1, 1 << 20)?;
        check_range("decider.cache-mib", self.decider.cache_mib, 0, 1 << 20)?;
        check_range("handler-settle-ms", self.handler_settle_ms, 0, 600_000)?;
        if let Some(listen) = &self.admin.listen
            && self.admin.address().is_none()
        {
            return invalid(
                "admin.listen",
                format!(
                    "{listen:?} is not a port (\"9464\", on 127.0.0.1) nor an address like \"0.0.0.0:9464\""
                ),
            );
        }
        if let Some(token) = self.admin.token()
            && (token.len() < MIN_TOKEN_LEN || token.chars().any(|c| c.is_whitespace()))
        {
            return invalid(
                "admin.token",
                format!(
                    "a token (here or in {ADMIN_TOKEN_ENV}) needs at least {MIN_TOKEN_LEN} characters and no spaces"
                ),
            );
        }
        if let Some(embedded) = &self.embedded {
            check_range("embedded.partitions", embedded.partitions as u64, 1, 1000)?;
        }
        for (section, props) in [
            ("kafka.consumer", &self.kafka.consumer),
            ("kafka.producer", &self.kafka.producer),
        ] {
            if let Some(reserved) = props
                .keys()
                .find(|k| RESERVED_KAFKA_PROPERTIES.contains(&k.as_str()))
            {
                return invalid(
                    &format!("{section}.\"{reserved}\""),
                    "is set by sluice itself and cannot be overridden".into(),
                );
            }
        }
        // Exactly-once commits are timed against it (see effects::publish).
        if let Some(ms) = self.kafka.producer.get("transaction.timeout.ms") {
            let key = "kafka.producer.\"transaction.timeout.ms\"";
            let ms = ms.parse().map_err(|_| {
                (
                    key.to_owned(),
                    format!("{ms:?} is not a number of milliseconds"),
                )
            })?;
            check_range(key, ms, 1_000, 900_000)?;
        }
        Ok(())
    }
}

impl Config {
    /// The settings of a handler (defaults if it has no section); a route's
    /// `version` pins the handler like `[handlers.NAME] version` does.
    pub fn handler_settings(&self, name: &str) -> HandlerSettings {
        let mut settings = self.handlers.get(name).cloned().unwrap_or_default();
        if settings.version.is_none() {
            settings.version = self
                .routes
                .iter()
                .find(|r| r.handler == name)
                .and_then(|r| r.version.clone());
        }
        settings
    }

    /// The sandbox limits of a handler: `[limits]` with its
    /// `[handlers.NAME.limits]` on top.
    pub fn limits_for(&self, name: &str) -> Limits {
        match self.handlers.get(name).and_then(|h| h.limits.as_ref()) {
            Some(overrides) => self
                .limits
                .merged(overrides)
                .expect("handler limits were validated when the config was loaded"),
            None => self.limits.clone(),
        }
    }

    /// Every handler with limits of its own, and those limits.
    pub fn handler_limits(&self) -> BTreeMap<String, Limits> {
        self.handlers
            .iter()
            .filter(|(_, settings)| settings.limits.is_some())
            .map(|(name, _)| (name.clone(), self.limits_for(name)))
            .collect()
    }

    /// Where a handler's shadow differences are published.
    pub fn shadow_diff_topic(&self, handler: &str) -> String {
        self.handler_settings(handler)
            .shadow_diff_topic
            .unwrap_or_else(|| format!("{handler}.shadow-diffs"))
    }

    /// Every route's dead-letter topic, each once, in route order.
    pub fn dead_letter_topics(&self) -> Vec<String> {
        distinct(self.routes.iter().map(Route::dead_letter_topic))
    }

    /// Every routed handler's shadow-diff topic, each once, in route order.
    pub fn shadow_diff_topics(&self) -> Vec<String> {
        distinct(
            self.routes
                .iter()
                .map(|r| self.shadow_diff_topic(&r.handler)),
        )
    }

    /// The topics no handler may publish to: every route's dead-letter
    /// topic and every handler's shadow-diff topic, besides the reserved
    /// prefix and suffixes (`topics::ReservedTopics`).
    pub(crate) fn reserved_topics(&self) -> ReservedTopics {
        let dead_letters = self.dead_letter_topics();
        let shadow_diffs = self.shadow_diff_topics();
        ReservedTopics::new(
            dead_letters.iter().map(String::as_str),
            shadow_diffs.iter().map(String::as_str),
        )
    }

    /// Every route says where its handler may publish, in patterns that
    /// can match something a handler may reach.
    fn validate_publish_to(&self) -> Result<(), (String, String)> {
        let reserved = self.reserved_topics();
        for (i, route) in self.routes.iter().enumerate() {
            let key = format!("routes[{i}].publish-to");
            let Some(entries) = &route.publish_to else {
                return Err((
                    key,
                    "missing: list the topics this route's handler may publish to, as names or prefixes (\"orders.*\"; \"*\" for any), or [] if it publishes nothing".into(),
                ));
            };
            for entry in entries {
                let pattern =
                    TopicPattern::parse(entry).map_err(|problem| (key.clone(), problem))?;
                if let TopicPattern::Exact(topic) = &pattern
                    && let Some(why) = reserved.reason(topic)
                {
                    return Err((
                        key,
                        format!("{topic:?} is {why}: no handler may publish there"),
                    ));
                }
            }
        }
        for name in self.routes.iter().map(|r| &r.handler) {
            let topic = self.shadow_diff_topic(name);
            if let Some(problem) = topics::name_problem(&topic) {
                return Err((format!("handlers.{name}.shadow-diff-topic"), problem));
            }
        }
        Ok(())
    }

    fn validate_handlers(&self) -> Result<(), (String, String)> {
        let semver = |key: String, version: &Option<String>| match version {
            Some(v) if semver::Version::parse(v).is_err() => Err((
                key,
                format!("{v:?} is not a semantic version like \"1.2.0\""),
            )),
            _ => Ok(()),
        };
        for (i, route) in self.routes.iter().enumerate() {
            let pinned = self
                .handlers
                .get(&route.handler)
                .and_then(|h| h.version.as_ref());
            let other_route = self.routes[..i]
                .iter()
                .find(|r| r.handler == route.handler && r.version != route.version);
            if route.version.is_some()
                && (other_route.is_some()
                    || pinned.is_some_and(|p| Some(p) != route.version.as_ref()))
            {
                return Err((
                    format!("routes[{i}].version"),
                    format!(
                        "handler {:?} is pinned to another version elsewhere; pin it once, in [handlers.{}]",
                        route.handler, route.handler
                    ),
                ));
            }
        }
        for (name, settings) in &self.handlers {
            let key = |field: &str| format!("handlers.{name}.{field}");
            if !is_handler_name(name) {
                return Err((
                    format!("handlers.{name}"),
                    format!(
                        "{name:?} is not a handler name: use lowercase letters, digits, '-' and '_'"
                    ),
                ));
            }
            semver(key("version"), &settings.version)?;
            semver(key("shadow"), &settings.shadow)?;
            if let Some(overrides) = &settings.limits {
                let limits = self
                    .limits
                    .merged(overrides)
                    .map_err(|message| (key("limits"), message))?;
                limits.validate(&key("limits"))?;
            }
            if let Some(canary) = &settings.canary {
                semver(key("canary.version"), &canary.version)?;
                if !(canary.percent > 0.0 && canary.percent <= 100.0) {
                    return Err((
                        key("canary.percent"),
                        format!(
                            "{} is out of range; allowed: above 0 up to 100",
                            canary.percent
                        ),
                    ));
                }
                if !(0.0..=1.0).contains(&canary.max_dead_letter_rate) {
                    return Err((
                        key("canary.max-dead-letter-rate"),
                        format!(
                            "{} is out of range; allowed: 0 to 1 (a share of messages)",
                            canary.max_dead_letter_rate
                        ),
                    ));
                }
                check_range(&key("canary.window-ms"), canary.window_ms, 100, 86_400_000)?;
                check_range(
                    &key("canary.min-messages"),
                    canary.min_messages,
                    1,
                    u64::MAX,
                )?;
            }
            let marked = [
                ("shadow", settings.shadow.as_ref()),
                (
                    "canary.version",
                    settings.canary.as_ref().and_then(|c| c.version.as_ref()),
                ),
            ];
            for (field, version) in marked {
                if version.is_some() && version == settings.version.as_ref() {
                    return Err((
                        key(field),
                        "is the pinned active version; a version is active, shadow or canary, not two of them".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Whether an allow-list entry is a bare `host` or `host:port`.
fn is_allowed_host_pattern(entry: &str) -> bool {
    let (host, port) = match entry.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (entry, None),
    };
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && port.is_none_or(|p| p.parse::<u16>().is_ok())
}

/// Whether `name` can name a handler (and thus a folder in the handlers directory).
pub(crate) fn is_handler_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn check_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), (String, String)> {
    if (min..=max).contains(&value) {
        Ok(())
    } else if max == u64::MAX {
        Err((key.into(), format!("{value} is below the minimum {min}")))
    } else {
        Err((
            key.into(),
            format!("{value} is out of range; allowed: {min} to {max}"),
        ))
    }
}

/// `items` without repeats, first occurrence first.
fn distinct(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut seen = HashSet::new();
    items.filter(|item| seen.insert(item.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"), Path::new("."))
    }

    const MINIMAL: &str = r#"
brokers = "embedded"
[[routes]]
topic = "in"
handler = "echo"
publish-to = ["*"]
"#;

    #[test]
    fn defaults_fill_everything_not_given() {
        let config = parse(MINIMAL).unwrap();
        assert!(config.is_embedded());
        assert_eq!(config.group_id, "sluice");
        assert_eq!(config.limits.deadline_ms, 1000);
        assert_eq!(config.limits.memory_mib, 64);
        assert_eq!(config.routes[0].dead_letter_topic(), "in.dlq");
        assert_eq!(
            config.routes[0].on_invalid_input,
            OnInvalidInput::DeadLetter
        );
    }

    fn error_of(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = error_of(&format!("{MINIMAL}\nbrokerz = 1\n"));
        assert!(err.contains("brokerz"), "{err}");
        let err = error_of(&format!("{MINIMAL}\n[limits]\ndeadline = 5\n"));
        assert!(err.contains("deadline"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_key_and_range() {
        let err = error_of(&format!("{MINIMAL}\n[limits]\ndeadline-ms = 0\n"));
        assert!(err.contains("limits.deadline-ms"), "{err}");
        assert!(err.contains("1 to 600000"), "{err}");
    }

    #[test]
    fn route_errors_name_the_route() {
        let err = error_of(
            "brokers = \"embedded\"\n[[routes]]\ntopic = \"a\"\nhandler = \"x\"\npublish-to = [\"*\"]\n[[routes]]\ntopic = \"a\"\nhandler = \"y\"\npublish-to = [\"*\"]\n",
        );
        assert!(err.contains("routes[1].topic"), "{err}");
        let err = error_of(
            "brokers = \"embedded\"\n[[routes]]\ntopic = \"a\"\nhandler = \"Bad Name\"\npublish-to = [\"*\"]\n",
        );
        assert!(err.contains("routes[0].handler"), "{err}");
        let err = error_of(
            "brokers = \"embedded\"\n[[routes]]\ntopic = \"a\"\nhandler = \"x\"\npublish-to = [\"*\"]\nversion = \"one\"\n",
        );
        assert!(err.contains("routes[0].version"), "{err}");
    }

    #[test]
    fn brokers_must_be_embedded_or_host_port() {
        let err = error_of(
            "brokers = \"localhost\"\n[[routes]]\ntopic = \"a\"\nhandler = \"x\"\npublish-to = [\"*\"]\n",
        );
        assert!(err.contains("brokers"), "{err}");
        assert!(
            parse("brokers = \"a:9092,b:9093\"\n[[routes]]\ntopic = \"a\"\nhandler = \"x\"\npublish-to = [\"*\"]\n")
                .is_ok()
        );
    }

    #[test]
    fn reserved_kafka_properties_are_refused() {
        let err = error_of(&format!(
            "{MINIMAL}\n[kafka.consumer]\n\"enable.auto.offset.store\" = \"true\"\n"
        ));
        assert!(
            err.contains("kafka.consumer.\"enable.auto.offset.store\""),
            "{err}"
        );
    }

    #[test]
    fn transaction_timeout_must_be_milliseconds_in_range() {
        let with = |ms: &str| {
            parse(&format!(
                "{MINIMAL}\n[kafka.producer]\n\"transaction.timeout.ms\" = \"{ms}\"\n"
            ))
        };
        let err = with("ten seconds").unwrap_err().to_string();
        assert!(err.contains("transaction.timeout.ms"), "{err}");
        assert!(err.contains("not a number"), "{err}");
        let err = with("500").unwrap_err().to_string();
        assert!(err.contains("1000 to 900000"), "{err}");
        assert!(with("30000").is_ok());
    }

    #[test]
    fn exactly_once_routes_only_publish_on_a_broker_with_transactions() {
        let route = "[[routes]]\ntopic = \"a\"\nhandler = \"x\"\npublish-to = [\"*\"]\ndelivery = \"exactly-once\"\n";
        let err = error_of(&format!("brokers = \"embedded\"\n{route}"));
        assert!(err.contains("routes[0].delivery"), "{err}");
        let err = error_of(&format!(
            "brokers = \"k:9092\"\n{route}[routes.http]\nallow = [\"api\"]\n"
        ));
        assert!(err.contains("routes[0].http.allow"), "{err}");
        let config = parse(&format!("brokers = \"k:9092\"\n{route}")).unwrap();
        assert_eq!(
            config.transactional_topics(),
            HashSet::from(["a".to_owned()])
        );
    }

    #[test]
    fn handler_sections_are_checked_and_route_pins_count_as_pins() {
        let config = parse(&format!(
            "{MINIMAL}version = \"1.2.0\"\n[handlers.echo]\nshadow = \"2.0.0\"\n[handlers.echo.canary]\nversion = \"3.0.0\"\npercent = 25\n"
        ))
        .unwrap();
        let settings = config.handler_settings("echo");
        assert_eq!(settings.version.as_deref(), Some("1.2.0"));
        assert_eq!(settings.shadow.as_deref(), Some("2.0.0"));
        assert_eq!(settings.canary.unwrap().percent, 25.0);

        let err = error_of(&format!("{MINIMAL}[handlers.echo.canary]\npercent = 0\n"));
        assert!(err.contains("handlers.echo.canary.percent"), "{err}");
        let err = error_of(&format!(
            "{MINIMAL}[handlers.echo.canary]\nmax-dead-letter-rate = 2\n"
        ));
        assert!(
            err.contains("handlers.echo.canary.max-dead-letter-rate"),
            "{err}"
        );
        let err = error_of(&format!("{MINIMAL}[handlers.echo]\nshadow = \"next\"\n"));
        assert!(err.contains("handlers.echo.shadow"), "{err}");
        let err = error_of(&format!(
            "{MINIMAL}[handlers.echo]\nversion = \"1.0.0\"\nshadow = \"1.0.0\"\n"
        ));
        assert!(err.contains("active, shadow or canary"), "{err}");
        let err = error_of(&format!(
            "{MINIMAL}version = \"1.0.0\"\n[handlers.echo]\nversion = \"2.0.0\"\n"
        ));
        assert!(err.contains("routes[0].version"), "{err}");
        let err = error_of(&format!("{MINIMAL}[admin]\nlisten = \"localhost\"\n"));
        assert!(err.contains("admin.listen"), "{err}");
    }

    #[test]
    fn every_route_says_where_its_handler_may_publish() {
        let route = |publish_to: &str| {
            format!(
                "brokers = \"embedded\"\n[[routes]]\ntopic = \"in\"\nhandler = \"h\"\n{publish_to}\n"
            )
        };
        let err = error_of(&route(""));
        assert!(err.contains("routes[0].publish-to: missing"), "{err}");
        assert!(err.contains("[] if it publishes nothing"), "{err}");
        let config = parse(&route("publish-to = [\"emails\", \"orders.*\"]")).unwrap();
        assert_eq!(config.routes[0].publish_to(), ["emails", "orders.*"]);
        assert!(parse(&route("publish-to = []")).is_ok());
        for (entry, why) in [
            ("in.dlq", "\"in.dlq\" is a dead-letter topic"),
            ("other.dlq", "is a dead-letter topic"),
            ("h.shadow-diffs", "is a shadow-diff topic"),
            ("__consumer_offsets", "is a Kafka-internal topic"),
            ("a b", "' ' is not allowed"),
            ("or*ders", "'*' is not allowed"),
            ("", "cannot be empty"),
        ] {
            let err = error_of(&route(&format!("publish-to = [\"{entry}\"]")));
            assert!(
                err.contains("routes[0].publish-to") && err.contains(why),
                "{entry}: {err}"
            );
        }
        // A configured dead-letter topic is reserved whatever it is called.
        let err = error_of(
            "brokers = \"embedded\"\n[[routes]]\ntopic = \"in\"\nhandler = \"h\"\npublish-to = [\"errors\"]\n[[routes]]\ntopic = \"b\"\nhandler = \"g\"\npublish-to = []\ndead-letter-topic = \"errors\"\n",
        );
        assert!(err.contains("\"errors\" is a dead-letter topic"), "{err}");
    }

    #[test]
    fn topic_names_kafka_refuses_are_refused() {
        let err = error_of(
            "brokers = \"embedded\"\n[[routes]]\ntopic = \"a b\"\nhandler = \"h\"\npublish-to = []\n",
        );
        assert!(
            err.contains("routes[0].topic") && err.contains("not allowed"),
            "{err}"
        );
        let err = error_of(
            "brokers = \"embedded\"\n[[routes]]\ntopic = \"a\"\nhandler = \"h\"\npublish-to = []\ndead-letter-topic = \"a/dlq\"\n",
        );
        assert!(err.contains("routes[0].dead-letter-topic"), "{err}");
    }

    #[test]
    fn host_memory_settings_default_and_are_checked() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.max_in_flight_mib, 256);
        assert_eq!(config.limits.max_component_mib, 48);
        assert_eq!(config.decider.cache_mib, 64);
        let err = error_of(&format!("max-in-flight-mib = 0\n{MINIMAL}"));
        assert!(err.contains("max-in-flight-mib"), "{err}");
        let err = error_of(&format!("{MINIMAL}\n[limits]\nmax-component-mib = 0\n"));
        assert!(err.contains("limits.max-component-mib"), "{err}");
    }

    #[test]
    fn missing_routes_are_explained() {
        let err = error_of("brokers = \"embedded\"\nroutes = []\n");
        assert!(err.contains("routes"), "{err}");
        let err = error_of("brokers = \"embedded\"\n");
        assert!(err.contains("routes"), "{err}");
    }

    #[test]
    fn a_handler_overrides_some_limits_and_keeps_the_rest() {
        let config = parse(&format!(
            "{MINIMAL}\n[limits]\ndeadline-ms = 200\nworkers = 3\n\n[handlers.echo.limits]\nmemory-mib = 8\ninstances = \"fresh\"\nfuel = 1000\n"
        ))
        .unwrap();
        let echo = config.limits_for("echo");
        assert_eq!(echo.memory_mib, 8);
        assert_eq!(echo.instances, InstanceStrategy::Fresh);
        assert_eq!(echo.calls_per_instance(), 1);
        assert_eq!(echo.fuel, Some(1000));
        assert_eq!(echo.deadline_ms, 200, "from [limits]");
        assert!(echo.deterministic, "on by default");
        let other = config.limits_for("other");
        assert_eq!(other, config.limits);
        assert_eq!(other.calls_per_instance(), 10_000);
        assert_eq!(config.handler_limits().len(), 1);
    }

    #[test]
    fn bad_handler_limits_are_named() {
        let section = format!("{MINIMAL}\n[handlers.echo.limits]\n");
        let err = error_of(&format!("{section}memory-mb = 8\n"));
        assert!(
            err.contains("handlers.echo.limits") && err.contains("memory-mb"),
            "{err}"
        );
        let err = error_of(&format!("{section}max-outputs = 0\n"));
        assert!(err.contains("handlers.echo.limits.max-outputs"), "{err}");
        let err = error_of(&format!("{section}instances = \"pooled\"\n"));
        assert!(err.contains("pooled") && err.contains("fresh"), "{err}");
        let err = error_of(&format!("{section}workers = 2\n"));
        assert!(err.contains("host-wide"), "{err}");
    }

    #[test]
    fn an_admin_token_must_be_long_and_have_no_spaces() {
        let err = error_of(&format!(
            "{MINIMAL}[admin]\nlisten = \"0\"\ntoken = \"short\"\n"
        ));
        assert!(err.contains("admin.token") && err.contains("16"), "{err}");
        let err = error_of(&format!(
            "{MINIMAL}[admin]\ntoken = \"long enough but spaced\"\n"
        ));
        assert!(err.contains("admin.token"), "{err}");
        let config = parse(&format!("{MINIMAL}[admin]\ntoken = \"0123456789abcdef\"\n")).unwrap();
        assert_eq!(config.admin.token.as_deref(), Some("0123456789abcdef"));
    }

    #[test]
    fn store_and_decider_settings_default_and_bad_ones_are_named() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.store.backend, StoreBackend::Sqlite);
        assert_eq!(config.store.path, Path::new("sluice-events.db"));
        assert_eq!(config.decider.conflict_attempts, 10);
        assert_eq!(config.decider.snapshot_every, 100);
        let store = |body: &str| error_of(&format!("{MINIMAL}\n[store]\n{body}\n"));
        let err = store("backend = \"mysql\"");
        assert!(err.contains("mysql") && err.contains("postgres"), "{err}");
        let err = store("schema = \"Robert'); DROP\"");
        assert!(err.contains("store.schema"), "{err}");
        let err = store("backend = \"postgres\"\nurl = \"postgres://host:notaport/db\"");
        assert!(err.contains("store.url"), "{err}");
        let err = store("connections = 0");
        assert!(err.contains("store.connections"), "{err}");
        let err = store("pth = \"x.db\"");
        assert!(err.contains("pth"), "{err}");
        let err = error_of(&format!("{MINIMAL}\n[decider]\nconflict-attempts = 0\n"));
        assert!(err.contains("decider.conflict-attempts"), "{err}");
        let err = error_of(&format!(
            "{MINIMAL}\n[decider]\nconflict-backoff-initial-ms = 50\nconflict-backoff-max-ms = 10\n"
        ));
        assert!(err.contains("decider.conflict-backoff-max-ms"), "{err}");
    }

    #[test]
    fn a_bare_admin_port_listens_on_loopback_only() {
        let admin = |listen: &str| Admin {
            listen: Some(listen.into()),
            token: None,
        };
        assert_eq!(admin("9464").address(), "127.0.0.1:9464".parse().ok());
        assert_eq!(admin(":9464").address(), "127.0.0.1:9464".parse().ok());
        assert_eq!(admin("0.0.0.0:80").address(), "0.0.0.0:80".parse().ok());
        assert_eq!(Admin::default().address(), None);
        let err = error_of(&format!("{MINIMAL}[admin]\nlisten = \"eth0\"\n"));
        assert!(
            err.contains("admin.listen") && err.contains("127.0.0.1"),
            "{err}"
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// A route's lines: topic, handler, where it publishes, its
        /// in-flight cap.
        fn any_route() -> impl Strategy<Value = (String, String, Vec<String>, u64)> {
            (
                "[a-z][a-z0-9.-]{0,12}",
                "[a-z][a-z0-9-]{0,12}",
                proptest::collection::vec("[a-z][a-z0-9-]{0,8}(\\.\\*)?|\\*", 0..3),
                1..10_000u64,
            )
        }

        fn route_text(
            (topic, handler, publish_to, in_flight): &(String, String, Vec<String>, u64),
        ) -> String {
            let publish_to: Vec<String> = publish_to.iter().map(|p| format!("{p:?}")).collect();
            format!(
                "[[routes]]\ntopic = {topic:?}\nhandler = {handler:?}\npublish-to = [{}]\nmax-in-flight = {in_flight}\n",
                publish_to.join(", ")
            )
        }

        proptest! {
            /// Routes written out are read back as written.
            #[test]
            fn routes_read_back_as_written(
                routes in proptest::collection::vec(any_route(), 1..4),
            ) {
                // One route per topic.
                let routes: Vec<_> = routes
                    .into_iter()
                    .enumerate()
                    .map(|(i, mut r)| { r.0 = format!("{}{i}", r.0); r })
                    .collect();
                let text: String = std::iter::once("brokers = \"embedded\"\n".to_owned())
                    .chain(routes.iter().map(route_text))
                    .collect();
                let config = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
                prop_assert_eq!(config.routes.len(), routes.len());
                for (read, (topic, handler, publish_to, in_flight)) in config.routes.iter().zip(&routes) {
                    prop_assert_eq!(&read.topic, topic);
                    prop_assert_eq!(&read.handler, handler);
                    prop_assert_eq!(read.publish_to(), publish_to.as_slice());
                    prop_assert_eq!(read.max_in_flight as u64, *in_flight);
                }
            }

            /// A value of the wrong type anywhere in a route is an error
            /// that names the key.
            #[test]
            fn a_mistyped_value_is_an_error_naming_its_key(
                route in any_route(),
                which in 0..4usize,
                wrong in prop_oneof![Just("true"), Just("1.5"), Just("{}"), Just("\"text\""), Just("[1]")],
            ) {
                let key = ["topic", "handler", "publish-to", "max-in-flight"][which];
                let text = route_text(&route);
                let text: String = text
                    .lines()
                    .map(|line| match line.starts_with(&format!("{key} =")) {
                        true => format!("{key} = {wrong}\n"),
                        false => format!("{line}\n"),
                    })
                    .collect();
                // A right type may be the value picked: only wrong ones count.
                let right = match key {
                    "topic" | "handler" => wrong.starts_with('"'),
                    "publish-to" => false,
                    _ => false,
                };
                let result = parse(&format!("brokers = \"embedded\"\n{text}"));
                if !right {
                    let error = result.expect_err("a mistyped value is refused").to_string();
                    prop_assert!(error.contains(key), "{} does not name {}", error, key);
                }
            }

            /// Any text is a config or an error, never a panic.
            #[test]
            fn any_text_is_a_config_or_an_error(
                text in prop_oneof![
                    ".{0,80}",
                    "(brokers = \"[a-z]{0,5}\"\n)?(\\[\\[routes\\]\\]\n)?([a-z-]{1,12} = [^\n]{0,10}\n){0,4}",
                ],
            ) {
                let _ = parse(&text);
            }
        }
    }
}
