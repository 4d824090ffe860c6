//! The event store: streams of events, appended with an expected version so
//! that two writers deciding on the same state cannot both win. Two backends
//! behind one trait: an embedded SQLite file (the default: a demo needs no
//! server) and PostgreSQL (the production backend). Each creates its schema
//! itself. Snapshots of folded states are kept per handler version, since
//! only the version that encoded a state can read it. The same store keeps
//! the handlers' timers (`timers`).

mod postgres;
mod sqlite;
pub mod timers;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use tokio::sync::OnceCell;

use crate::config::{StoreBackend, StoreConfig};
use crate::contract::Event;
use timers::TimerStore;

/// An event as stored: its place in the stream and the event itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its version: 1 for a stream's first event.
    pub version: u64,
    /// The event.
    pub event: Event,
}

/// What caused an append, recorded with each event.
#[derive(Debug, Clone)]
pub struct Cause {
    /// The handler's name.
    pub handler: String,
    /// The handler's version.
    pub handler_version: String,
    /// The source message (`topic/partition/offset`), which makes a
    /// redelivered message recognisable.
    pub source: String,
}

/// A stream's events after some version, read at one point in time.
#[derive(Debug, Clone, Default)]
pub struct Tail {
    /// The events, in order.
    pub events: Vec<StoredEvent>,
    /// The stream version the asked-about source was decided on before, if
    /// it was (it appended events, or was recorded with `mark_decided`).
    pub decided_at: Option<u64>,
}

/// A folded state as of a version, encoded by one handler version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The stream version it folds in.
    pub version: u64,
    /// The state, as the guest encoded it.
    pub state: Vec<u8>,
}

/// Which handler version a snapshot belongs to.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotKey<'a> {
    /// The stream.
    pub stream: &'a str,
    /// The handler's name.
    pub handler: &'a str,
    /// The handler's version.
    pub handler_version: &'a str,
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended to the stream since the expected version.
    #[error("version conflict on stream {stream:?}: expected version {expected}")]
    Conflict {
        /// The stream.
        stream: String,
        /// The version the append expected.
        expected: u64,
    },
    /// The store cannot be reached, or failed; worth retrying.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
}

/// Where events are kept. Every operation is atomic.
pub trait EventStore: Send + Sync {
    /// The events of `stream` with versions in `after+1 ..= upto` (to the
    /// end without `upto`), and the version `source` was decided on.
    fn read<'a>(
        &'a self,
        stream: &'a str,
        after: u64,
        upto: Option<u64>,
        source: &'a str,
    ) -> BoxFuture<'a, Result<Tail, StoreError>>;

    /// Records that `cause` was decided on `version` with no events to
    /// append, so that a redelivery is decided on the same state.
    fn mark_decided<'a>(
        &'a self,
        stream: &'a str,
        version: u64,
        cause: &'a Cause,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Appends `events` if the stream is at version `expected` (0: empty);
    /// returns the new version, or `StoreError::Conflict`.
    fn append<'a>(
        &'a self,
        stream: &'a str,
        expected: u64,
        events: &'a [Event],
        cause: &'a Cause,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// The snapshot of a stream kept for one handler version.
    fn snapshot<'a>(
        &'a self,
        key: SnapshotKey<'a>,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>>;

    /// Keeps a snapshot, unless a later one is kept already.
    fn save_snapshot<'a>(
        &'a self,
        key: SnapshotKey<'a>,
        snapshot: &'a Snapshot,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Where the store is, for logs.
    fn describe(&self) -> String;
}

/// Both things a store keeps: deciders' events and handlers' timers.
pub trait Store: EventStore + TimerStore {}

impl<T: EventStore + TimerStore> Store for T {}

/// Opens (and if need be creates) the store a config names; `base_dir`
/// resolves a relative SQLite path.
pub async fn open(
    config: &StoreConfig,
    base_dir: &std::path::Path,
) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match config.backend {
        StoreBackend::Sqlite => {
            let path = base_dir.join(&config.path);
            Arc::new(sqlite::SqliteStore::open(&path).await?)
        }
        StoreBackend::Postgres => Arc::new(postgres::PostgresStore::open(config).await?),
    })
}

/// The store a host opens when it is first needed (a decider's message, a
/// timer), so that hosts needing none never create one.
pub struct LazyStore {
    store: OnceCell<Arc<dyn Store>>,
    /// How to open it, when it was not given open.
    opener: Option<(StoreConfig, std::path::PathBuf)>,
}

impl LazyStore {
    /// A store that is open already.
    pub fn open_already(store: Arc<dyn Store>) -> LazyStore {
        LazyStore {
            store: OnceCell::new_with(Some(store)),
            opener: None,
        }
    }

    /// The store `config` names, opened on first use.
    pub fn new(config: StoreConfig, base_dir: std::path::PathBuf) -> LazyStore {
        LazyStore {
            store: OnceCell::new(),
            opener: Some((config, base_dir)),
        }
    }

    /// Whether it may hold something: it was opened, or is a server, or an
    /// SQLite file that exists (opening one that does not would create it).
    pub fn may_hold_anything(&self) -> bool {
        match &self.opener {
            _ if self.store.initialized() => true,
            Some((config, base_dir)) if config.backend == StoreBackend::Sqlite => {
                base_dir.join(&config.path).exists()
            }
            _ => true,
        }
    }

    /// The store, opened now if it was not yet (an open that fails is
    /// tried again on the next call).
    pub async fn get(&self) -> Result<&Arc<dyn Store>, StoreError> {
        self.store
            .get_or_try_init(|| async {
                let (config, base_dir) = self.opener.as_ref().expect("a store to open");
                let store = open(config, base_dir).await?;
                tracing::info!(store = %store.describe(), "store open");
                Ok(store)
            })
            .await
    }
}

/// A version as both databases store it (BIGINT); past `i64::MAX` (never
/// reached) it saturates.
fn as_i64(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX)
}

/// Milliseconds since the Unix epoch, recorded with each event.
fn now_ms() -> i64 {
    as_i64(epoch_ms())
}

/// Milliseconds since the Unix epoch, as timers count time.
pub(crate) fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A read's rows: `(decided_at, version, type, data, metadata)`, the event
/// columns null when there is no tail (the row only carries `decided_at`).
type ReadRow = (
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);

/// Turns the rows of a read into a tail.
fn tail(rows: impl IntoIterator<Item = ReadRow>) -> Tail {
    let mut tail = Tail::default();
    for (decided_at, version, kind, data, metadata) in rows {
        tail.decided_at = decided_at.map(|v| v as u64);
        if let (Some(version), Some(kind)) = (version, kind) {
            tail.events.push(StoredEvent {
                version: version as u64,
                event: Event {
                    kind,
                    data: data.unwrap_or_default(),
                    metadata: metadata.unwrap_or_default(),
                },
            });
        }
    }
    tail
}

/// The read, in SQL both backends speak: one statement, so one consistent
/// view. A source was decided on the version before its first event, or
/// on the version its no-event decision recorded. The one-row subquery
/// keeps `decided_at` when the tail is empty. Tables are prefixed with
/// `schema` (e.g. `sluice.`). Parameters: stream, after, upto, source.
fn read_sql(schema: &str) -> String {
    format!(
        "SELECT a.decided_at, e.version, e.type, e.data, e.metadata
         FROM (SELECT coalesce(
                 (SELECT min(version) - 1 FROM {schema}events WHERE stream = $1 AND source = $4),
                 (SELECT version FROM {schema}decisions WHERE stream = $1 AND source = $4)
               ) AS decided_at) a
         LEFT JOIN {schema}events e ON e.stream = $1 AND e.version > $2 AND e.version <= $3
         ORDER BY e.version"
    )
}

/// Records a no-event decision (kept if recorded already). Parameters:
/// stream, source, version, handler, handler version, recorded at.
fn mark_decided_sql(schema: &str) -> String {
    format!(
        "INSERT INTO {schema}decisions (stream, source, version, handler, handler_version, recorded_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (stream, source) DO NOTHING"
    )
}

/// Keeps a snapshot unless a later one is kept. Parameters: stream,
/// handler, handler version, version, state.
fn save_snapshot_sql(schema: &str) -> String {
    format!(
        "INSERT INTO {schema}snapshots AS s (stream, handler, handler_version, version, state)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (stream, handler, handler_version) DO UPDATE
         SET version = excluded.version, state = excluded.state
         WHERE s.version < excluded.version"
    )
}

/// The tables, in SQL both backends speak (`BIGINT` is an integer in
/// SQLite, `BLOB` is spelled `BYTEA` in PostgreSQL: `blob` says which).
fn tables_sql(schema: &str, blob: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {schema}events (
             stream TEXT NOT NULL,
             version BIGINT NOT NULL,
             type TEXT NOT NULL,
             data {blob} NOT NULL,
             metadata {blob} NOT NULL,
             handler TEXT NOT NULL,
             handler_version TEXT NOT NULL,
             source TEXT NOT NULL,
             recorded_at BIGINT NOT NULL,
             PRIMARY KEY (stream, version)
         );
         CREATE INDEX IF NOT EXISTS events_by_source_version ON {schema}events (stream, source, version);
         CREATE TABLE IF NOT EXISTS {schema}decisions (
             stream TEXT NOT NULL,
             source TEXT NOT NULL,
             version BIGINT NOT NULL,
             handler TEXT NOT NULL,
             handler_version TEXT NOT NULL,
             recorded_at BIGINT NOT NULL,
             PRIMARY KEY (stream, source)
         );
         CREATE TABLE IF NOT EXISTS {schema}snapshots (
             stream TEXT NOT NULL,
             handler TEXT NOT NULL,
             handler_version TEXT NOT NULL,
             version BIGINT NOT NULL,
             state {blob} NOT NULL,
             PRIMARY KEY (stream, handler, handler_version)
         );
         {timers}",
        timers = timers::table_sql(schema, blob)
    )
}
