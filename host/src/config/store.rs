//! `[store]` and `[decider]`: the event store and how deciders use it.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::problem::{Checked, broken, check_millis, check_range, millis};

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
    #[serde(
        rename = "connect-timeout-ms",
        with = "millis",
        default = "default_store_connect_timeout"
    )]
    pub connect_timeout: Duration,
    /// How long one PostgreSQL operation may take before it counts as an
    /// outage (and is retried).
    #[serde(
        rename = "timeout-ms",
        with = "millis",
        default = "default_store_timeout"
    )]
    pub timeout: Duration,
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
    #[serde(
        rename = "conflict-backoff-initial-ms",
        with = "millis",
        default = "default_conflict_backoff_initial"
    )]
    pub conflict_backoff_initial: Duration,
    /// The largest conflict backoff.
    #[serde(
        rename = "conflict-backoff-max-ms",
        with = "millis",
        default = "default_conflict_backoff_max"
    )]
    pub conflict_backoff_max: Duration,
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

impl StoreConfig {
    pub(super) fn validate(&self) -> Checked {
        let identifier = !self.schema.is_empty()
            && self.schema.len() <= 63
            && self
                .schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !self.schema.starts_with(|c: char| c.is_ascii_digit());
        if !identifier {
            return broken(
                "store.schema",
                format!(
                    "{:?} is not a schema name: use lowercase letters, digits and '_'",
                    self.schema
                ),
            );
        }
        if self.backend == StoreBackend::Postgres
            && let Err(e) = self.url.parse::<tokio_postgres::Config>()
        {
            return broken(
                "store.url",
                format!("{:?} is not a PostgreSQL connection: {e}", self.url),
            );
        }
        check_range("store.connections", self.connections as u64, 1, 64)?;
        check_millis("store.connect-timeout-ms", self.connect_timeout, 1, 600_000)?;
        check_millis("store.timeout-ms", self.timeout, 1, 600_000)
    }
}

/// How hosts fire timers (`[timers]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TimerSettings {
    /// How long a host holds the due timers it claimed: a host that dies
    /// while firing leaves them to another after this, and a publish with
    /// its retries must fit in it (or it may be fired twice).
    #[serde(rename = "lease-ms", with = "millis", default = "default_timer_lease")]
    pub lease: Duration,
    /// The longest a host sleeps before asking the store for timers other
    /// hosts scheduled.
    #[serde(rename = "poll-ms", with = "millis", default = "default_timer_poll")]
    pub poll: Duration,
    /// A run until drained also waits for the pending timers due within
    /// this of the moment its inputs drained; later ones stay in the store.
    #[serde(
        rename = "drain-within-ms",
        with = "millis",
        default = "default_timer_drain_within"
    )]
    pub drain_within: Duration,
}

impl Default for TimerSettings {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

impl TimerSettings {
    pub(super) fn validate(&self) -> Checked {
        check_millis("timers.lease-ms", self.lease, 100, 3_600_000)?;
        check_millis("timers.poll-ms", self.poll, 1, 60_000)?;
        check_millis("timers.drain-within-ms", self.drain_within, 0, 3_600_000)
    }
}

fn default_timer_lease() -> Duration {
    Duration::from_secs(60)
}
fn default_timer_poll() -> Duration {
    Duration::from_millis(250)
}
fn default_timer_drain_within() -> Duration {
    Duration::from_secs(10)
}

impl DeciderSettings {
    pub(super) fn validate(&self) -> Checked {
        check_range(
            "decider.conflict-attempts",
            self.conflict_attempts.into(),
            1,
            1000,
        )?;
        check_millis(
            "decider.conflict-backoff-max-ms",
            self.conflict_backoff_max,
            millis::of(self.conflict_backoff_initial),
            60_000,
        )?;
        check_range("decider.cache-mib", self.cache_mib, 0, 1 << 20)
    }
}

fn default_cache_mib() -> u64 {
    64
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
fn default_store_connect_timeout() -> Duration {
    Duration::from_millis(5000)
}
fn default_store_timeout() -> Duration {
    Duration::from_millis(10_000)
}
fn default_conflict_attempts() -> u32 {
    10
}
fn default_conflict_backoff_initial() -> Duration {
    Duration::from_millis(5)
}
fn default_conflict_backoff_max() -> Duration {
    Duration::from_millis(200)
}
fn default_snapshot_every() -> u64 {
    100
}
fn default_cache_streams() -> usize {
    10_000
}
