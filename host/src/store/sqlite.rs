//! The embedded backend: one SQLite file (WAL mode), shared safely by every
//! process that opens it. rusqlite is blocking, so each operation runs on
//! tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use rusqlite::{Connection, TransactionBehavior, named_params};

use super::timers::{self, CLAIMED, PENDING, PendingTimer, Timer, TimerStore};
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
    /// Taken before an operation goes to the blocking pool, so that waiting
    /// operations wait here rather than each holding a blocking thread (a
    /// thousand waiting schedules would otherwise start hundreds).
    connection: Arc<tokio::sync::Mutex<Connection>>,
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
            connection: Arc::new(tokio::sync::Mutex::new(connection)),
        })
    }

    /// Runs `work` on the connection, off the async threads.
    async fn blocking<R: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let mut connection = self.connection.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || work(&mut connection))
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

impl TimerStore for SqliteStore {
    fn schedule<'a>(&'a self, timer: &'a Timer) -> BoxFuture<'a, Result<(), StoreError>> {
        let timer = timer.clone();
        Box::pin(self.blocking(move |connection| {
            connection
                .prepare_cached(&timers::schedule_sql(""))
                .and_then(|mut statement| {
                    statement.execute(named_params! {
                        "$1": timer.route,
                        "$2": timer.id,
                        "$3": as_i64(timer.due),
                        "$4": timer.record.topic,
                        "$5": timer.record.key,
                        "$6": timer.record.payload,
                        "$7": timers::encode_headers(&timer.record.headers),
                        "$8": timer.source,
                        "$9": now_ms(),
                    })
                })
                .map_err(unavailable)?;
            Ok(())
        }))
    }

    fn cancel<'a>(&'a self, route: &'a str, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let (route, id) = (route.to_owned(), id.to_owned());
        Box::pin(self.blocking(move |connection| {
            connection
                .prepare_cached(&timers::cancel_sql(""))
                .and_then(|mut statement| {
                    statement.execute(named_params! { "$1": route, "$2": id, "$3": now_ms() })
                })
                .map_err(unavailable)?;
            Ok(())
        }))
    }

    fn claim_due(
        &self,
        now: u64,
        until: u64,
        lease: Duration,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Timer>, StoreError>> {
        Box::pin(self.blocking(move |connection| {
            // One statement: SQLite writes one at a time, so no two
            // processes claim the same row.
            let sql = format!(
                "UPDATE timers SET lease_until = $2
                 WHERE rowid IN (SELECT rowid FROM timers
                                 WHERE state = {PENDING} AND due <= $1 AND lease_until <= $4
                                 ORDER BY due LIMIT $3)
                 RETURNING {CLAIMED}"
            );
            let mut claimed = connection
                .prepare_cached(&sql)
                .and_then(|mut statement| {
                    statement
                        .query_map(
                            named_params! {
                                "$1": as_i64(until),
                                "$2": as_i64(now.saturating_add(lease.as_millis() as u64)),
                                "$3": limit as i64,
                                "$4": as_i64(now),
                            },
                            |row| {
                                Ok((
                                    row.get(0)?,
                                    row.get(1)?,
                                    row.get(2)?,
                                    row.get(3)?,
                                    row.get(4)?,
                                    row.get(5)?,
                                    row.get(6)?,
                                    row.get(7)?,
                                ))
                            },
                        )?
                        .map(|row| row.map(timers::timer))
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(unavailable)?;
            claimed.sort_by_key(|timer| timer.due);
            Ok(claimed)
        }))
    }

    fn fired<'a>(&'a self, timers: &'a [Timer]) -> BoxFuture<'a, Result<(), StoreError>> {
        let timers = timers.to_vec();
        Box::pin(self.blocking(move |connection| {
            let transaction = connection.transaction().map_err(unavailable)?;
            {
                let mut statement = transaction
                    .prepare_cached(&timers::fired_sql(""))
                    .map_err(unavailable)?;
                let now = now_ms();
                for timer in &timers {
                    statement
                        .execute(named_params! {
                            "$1": timer.route,
                            "$2": timer.id,
                            "$3": timer.source,
                            "$4": as_i64(timer.due),
                            "$5": now,
                        })
                        .map_err(unavailable)?;
                }
            }
            transaction.commit().map_err(unavailable)
        }))
    }

    fn next_due(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        Box::pin(self.blocking(move |connection| {
            let due: Option<i64> = connection
                .prepare_cached(&timers::next_due_sql(""))
                .and_then(|mut statement| statement.query_row([], |row| row.get(0)))
                .map_err(unavailable)?;
            Ok(due.map(|due| due.max(0) as u64))
        }))
    }

    fn pending(&self, limit: usize) -> BoxFuture<'_, Result<(u64, Vec<PendingTimer>), StoreError>> {
        Box::pin(self.blocking(move |connection| {
            let rows = connection
                .prepare_cached(&timers::pending_sql(""))
                .and_then(|mut statement| {
                    statement
                        .query_map(named_params! { "$1": limit as i64 }, |row| {
                            Ok((
                                row.get(0)?,
                                row.get(1)?,
                                row.get(2)?,
                                row.get(3)?,
                                row.get(4)?,
                            ))
                        })?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(unavailable)?;
            Ok(timers::pending_list(rows))
        }))
    }

    fn prune(&self, before: u64) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.blocking(move |connection| {
            let deleted = connection
                .prepare_cached(&timers::prune_sql(""))
                .and_then(|mut statement| statement.execute(named_params! { "$1": as_i64(before) }))
                .map_err(unavailable)?;
            Ok(deleted as u64)
        }))
    }
}
