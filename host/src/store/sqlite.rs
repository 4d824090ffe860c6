//! The embedded backend: one SQLite file (WAL mode), shared safely by every
//! process that opens it. rusqlite is blocking, so each operation runs on
//! tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use rusqlite::{Connection, TransactionBehavior, named_params};

use super::{
    Cause, EventStore, Snapshot, SnapshotKey, StoreError, Tail, as_i64, mark_decided_sql, now_ms,
    read_sql, save_snapshot_sql, tables_sql, tail,
};
use crate::contract::Event;

/// How long a writer waits for another process's write lock before the
/// operation fails (and is retried as a transient failure).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The SQLite event store.
pub(crate) struct SqliteStore {
    path: PathBuf,
    connection: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    pub(crate) async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let owned = path.to_owned();
        let connection = tokio::task::spawn_blocking(move || {
            if let Some(dir) = owned.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            }
            let connection = Connection::open(&owned).map_err(|e| e.to_string())?;
            let setup = || -> rusqlite::Result<()> {
                connection.busy_timeout(BUSY_TIMEOUT)?;
                connection.pragma_update(None, "journal_mode", "WAL")?;
                connection.pragma_update(None, "synchronous", "NORMAL")?;
                connection.execute_batch(&tables_sql("", "BLOB"))
            };
            setup().map_err(|e| e.to_string())?;
            Ok::<_, String>(connection)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|opened| opened)
        .map_err(|e| StoreError::Unavailable(format!("sqlite {}: {e}", path.display())))?;
        Ok(SqliteStore {
            path: path.to_owned(),
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    /// Runs `work` on the connection, off the async threads.
    async fn blocking<R: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = connection.lock().unwrap_or_else(|e| e.into_inner());
            work(&mut connection)
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }
}

fn unavailable(error: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {error}"))
}

impl EventStore for SqliteStore {
    fn read<'a>(
        &'a self,
        stream: &'a str,
        after: u64,
        upto: Option<u64>,
        source: &'a str,
    ) -> BoxFuture<'a, Result<Tail, StoreError>> {
        let (stream, source) = (stream.to_owned(), source.to_owned());
        Box::pin(self.blocking(move |connection| {
            let mut statement = connection
                .prepare_cached(&read_sql(""))
                .map_err(unavailable)?;
            let rows = statement
                .query_map(
                    named_params! {
                        "$1": stream,
                        "$2": as_i64(after),
                        "$3": as_i64(upto.unwrap_or(u64::MAX)),
                        "$4": source,
                    },
                    |row| {
                        Ok((
                            row.get(0)?,
                            row.get(1)?,
                            row.get(2)?,
                            row.get(3)?,
                            row.get(4)?,
                        ))
                    },
                )
                .map_err(unavailable)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(unavailable)?;
            Ok(tail(rows))
        }))
    }

    fn mark_decided<'a>(
        &'a self,
        stream: &'a str,
        version: u64,
        cause: &'a Cause,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let (stream, cause) = (stream.to_owned(), cause.clone());
        Box::pin(self.blocking(move |connection| {
            connection
                .prepare_cached(&mark_decided_sql(""))
                .and_then(|mut statement| {
                    statement.execute(named_params! {
                        "$1": stream,
                        "$2": cause.source,
                        "$3": as_i64(version),
                        "$4": cause.handler,
                        "$5": cause.handler_version,
                        "$6": now_ms(),
                    })
                })
                .map_err(unavailable)?;
            Ok(())
        }))
    }

    fn append<'a>(
        &'a self,
        stream: &'a str,
        expected: u64,
        events: &'a [Event],
        cause: &'a Cause,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let (stream, events, cause) = (stream.to_owned(), events.to_vec(), cause.clone());
        Box::pin(self.blocking(move |connection| {
            // IMMEDIATE: the write lock is taken before the version is read,
            // so the check and the insert are one step for every process.
            let transaction = connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let current: i64 = transaction
                .query_row(
                    "SELECT coalesce(max(version), 0) FROM events WHERE stream = ?1",
                    [&stream],
                    |row| row.get(0),
                )
                .map_err(unavailable)?;
            if current != as_i64(expected) {
                return Err(StoreError::Conflict { stream, expected });
            }
            {
                let mut insert = transaction
                    .prepare_cached(
                        "INSERT INTO events (stream, version, type, data, metadata, handler,
                             handler_version, source, recorded_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )
                    .map_err(unavailable)?;
                let recorded_at = now_ms();
                for (i, event) in events.iter().enumerate() {
                    insert
                        .execute(rusqlite::params![
                            stream,
                            current + 1 + i as i64,
                            event.kind,
                            event.data,
                            event.metadata,
                            cause.handler,
                            cause.handler_version,
                            cause.source,
                            recorded_at,
                        ])
                        .map_err(unavailable)?;
                }
            }
            transaction.commit().map_err(unavailable)?;
            Ok(expected + events.len() as u64)
        }))
    }

    fn snapshot<'a>(
        &'a self,
        key: SnapshotKey<'a>,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        let key = (
            key.stream.to_owned(),
            key.handler.to_owned(),
            key.handler_version.to_owned(),
        );
        Box::pin(self.blocking(move |connection| {
            let found = connection
                .prepare_cached(
                    "SELECT version, state FROM snapshots
                     WHERE stream = ?1 AND handler = ?2 AND handler_version = ?3",
                )
                .and_then(|mut statement| {
                    let mut rows = statement.query_map([&key.0, &key.1, &key.2], |row| {
                        Ok(Snapshot {
                            version: row.get::<_, i64>(0)? as u64,
                            state: row.get(1)?,
                        })
                    })?;
                    rows.next().transpose()
                })
                .map_err(unavailable)?;
            Ok(found)
        }))
    }

    fn save_snapshot<'a>(
        &'a self,
        key: SnapshotKey<'a>,
        snapshot: &'a Snapshot,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let key = (
            key.stream.to_owned(),
            key.handler.to_owned(),
            key.handler_version.to_owned(),
        );
        let snapshot = snapshot.clone();
        Box::pin(self.blocking(move |connection| {
            connection
                .prepare_cached(&save_snapshot_sql(""))
                .and_then(|mut statement| {
                    statement.execute(named_params! {
                        "$1": key.0,
                        "$2": key.1,
                        "$3": key.2,
                        "$4": as_i64(snapshot.version),
                        "$5": snapshot.state,
                    })
                })
                .map_err(unavailable)?;
            Ok(())
        }))
    }

    fn describe(&self) -> String {
        format!("sqlite {}", self.path.display())
    }
}
