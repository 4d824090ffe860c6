//! The PostgreSQL backend. Every operation is one statement, so it is atomic
//! without a transaction and a connection can carry several at once; a few
//! connections spread the load. A connection that breaks is replaced at its
//! next use, so an outage costs retries, not a restart.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Statement};

use super::timers::{self, CLAIMED, FIRED, PENDING, PendingTimer, Timer, TimerStore};
use super::{
    Cause, EventStore, Snapshot, SnapshotKey, StoreError, Tail, as_i64, mark_decided_sql, now_ms,
    read_sql, save_snapshot_sql, tables_sql, tail,
};
use crate::config::StoreConfig;
use crate::contract::Event;

/// One connection with its statements prepared.
struct Connection {
    client: Client,
    read: Statement,
    mark_decided: Statement,
    append: Statement,
    snapshot: Statement,
    save_snapshot: Statement,
    timers: TimerStatements,
}

/// The timer operations' statements (see `store::timers`).
struct TimerStatements {
    schedule: Statement,
    cancel: Statement,
    claim: Statement,
    fired: Statement,
    next_due: Statement,
    pending: Statement,
    prune: Statement,
}

/// The PostgreSQL event store.
pub(crate) struct PostgresStore {
    config: tokio_postgres::Config,
    schema: String,
    /// How long one operation (connecting included) may take.
    timeout: Duration,
    slots: Vec<Mutex<Option<Arc<Connection>>>>,
    next: AtomicUsize,
}

/// Appends at `expected + 1 ..` only if the stream is at `expected`. Two
/// writers that both saw `expected` insert the same first version: the
/// primary key lets one through and fails the other (a conflict).
/// Parameters: stream, expected, types, datas, metadatas, handler, handler
/// version, source, recorded at.
fn append_sql(schema: &str) -> String {
    format!(
        "INSERT INTO {schema}.events (stream, version, type, data, metadata, handler,
             handler_version, source, recorded_at)
         SELECT $1::text, $2::bigint + e.n, e.type, e.data, e.metadata, $6::text, $7::text, $8::text,
             $9::bigint
         FROM unnest($3::text[], $4::bytea[], $5::bytea[]) WITH ORDINALITY
             AS e(type, data, metadata, n)
         WHERE (SELECT coalesce(max(version), 0) FROM {schema}.events WHERE stream = $1) = $2"
    )
}

/// Claims due timers no host holds; `SKIP LOCKED` lets hosts claiming at
/// once each take other rows instead of waiting for each other.
/// Parameters: due by, lease until, limit, now.
fn claim_sql(schema: &str) -> String {
    format!(
        "UPDATE {schema}.timers t SET lease_until = $2
         FROM (SELECT route, id FROM {schema}.timers
               WHERE state = {PENDING} AND due <= $1 AND lease_until <= $4
               ORDER BY due LIMIT $3 FOR UPDATE SKIP LOCKED) d
         WHERE t.route = d.route AND t.id = d.id
         RETURNING {columns}",
        columns = CLAIMED
            .split(", ")
            .map(|column| format!("t.{column}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Marks many claimed timers fired at once (see `timers::fired_sql`).
/// Parameters: routes, ids, sources, dues (arrays), now.
fn fired_sql(schema: &str) -> String {
    format!(
        "UPDATE {schema}.timers t SET state = {FIRED}, changed_at = $5
         FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS f(route, id, source, due)
         WHERE t.route = f.route AND t.id = f.id AND t.source = f.source AND t.due = f.due
             AND t.state = {PENDING}"
    )
}

impl PostgresStore {
    pub(crate) async fn open(config: &StoreConfig) -> Result<PostgresStore, StoreError> {
        let mut pg: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("postgres url {:?}: {e}", config.url)))?;
        pg.connect_timeout(config.connect_timeout);
        let store = PostgresStore {
            config: pg,
            schema: config.schema.clone(),
            timeout: config.timeout,
            slots: (0..config.connections.max(1))
                .map(|_| Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
        };
        let client = store.timed(store.client_only()).await?;
        // Hosts starting together must not race on the schema.
        let create = format!(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtext('sluice:{schema}'));
             CREATE SCHEMA IF NOT EXISTS {schema}; {} COMMIT;",
            tables_sql(&format!("{}.", config.schema), "BYTEA"),
            schema = config.schema
        );
        store
            .timed(async {
                client
                    .batch_execute(&create)
                    .await
                    .map_err(|e| store.failed(e))
            })
            .await?;
        Ok(store)
    }

    /// Runs one operation within the timeout. A server that stops
    /// answering (a hung host, a network partition) is an outage like a
    /// refused connection: every connection is replaced on next use.
    async fn timed<T>(
        &self,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, operation).await {
            Ok(done) => done,
            Err(_) => {
                for slot in &self.slots {
                    slot.lock().expect("connection slot lock").take();
                }
                Err(StoreError::Unavailable(format!(
                    "postgres: no answer within {} ms",
                    self.timeout.as_millis()
                )))
            }
        }
    }

    async fn client_only(&self) -> Result<Client, StoreError> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| self.failed(e))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "postgres connection ended");
            }
        });
        Ok(client)
    }

    async fn connect(&self) -> Result<Connection, StoreError> {
        let client = self.client_only().await?;
        let schema = &self.schema;
        let prefix = format!("{schema}.");
        let prepare = |sql: String| {
            let client = &client;
            async move { client.prepare(&sql).await }
        };
        let statements = async {
            Ok::<_, tokio_postgres::Error>((
                prepare(read_sql(&prefix)).await?,
                prepare(mark_decided_sql(&prefix)).await?,
                prepare(append_sql(schema)).await?,
                prepare(format!(
                    "SELECT version, state FROM {schema}.snapshots
                     WHERE stream = $1 AND handler = $2 AND handler_version = $3"
                ))
                .await?,
                prepare(save_snapshot_sql(&prefix)).await?,
                TimerStatements {
                    schedule: prepare(timers::schedule_sql(&prefix)).await?,
                    cancel: prepare(timers::cancel_sql(&prefix)).await?,
                    claim: prepare(claim_sql(schema)).await?,
                    fired: prepare(fired_sql(schema)).await?,
                    next_due: prepare(timers::next_due_sql(&prefix)).await?,
                    pending: prepare(timers::pending_sql(&prefix)).await?,
                    prune: prepare(timers::prune_sql(&prefix)).await?,
                },
            ))
        };
        let (read, mark_decided, append, snapshot, save_snapshot, timers) =
            statements.await.map_err(|e| self.failed(e))?;
        Ok(Connection {
            client,
            read,
            mark_decided,
            append,
            snapshot,
            save_snapshot,
            timers,
        })
    }

    /// A live connection, round robin; a broken one is replaced.
    async fn connection(&self) -> Result<Arc<Connection>, StoreError> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let live = slot
            .lock()
            .expect("connection slot lock")
            .clone()
            .filter(|c| !c.client.is_closed());
        if let Some(connection) = live {
            return Ok(connection);
        }
        let connection = Arc::new(self.connect().await?);
        *slot.lock().expect("connection slot lock") = Some(connection.clone());
        Ok(connection)
    }

    fn failed(&self, error: tokio_postgres::Error) -> StoreError {
        StoreError::Unavailable(format!("postgres: {}", one_line(&error)))
    }
}

/// A postgres error with its cause (the server's message, or the I/O error).
fn one_line(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => match std::error::Error::source(error) {
            Some(cause) => format!("{error}: {cause}"),
            None => error.to_string(),
        },
    }
}

impl EventStore for PostgresStore {
    fn read<'a>(
        &'a self,
        stream: &'a str,
        after: u64,
        upto: Option<u64>,
        source: &'a str,
    ) -> BoxFuture<'a, Result<Tail, StoreError>> {
        Box::pin(self.timed(async move {
            let connection = self.connection().await?;
            let upto = as_i64(upto.unwrap_or(u64::MAX));
            let rows = connection
                .client
                .query(&connection.read, &[&stream, &as_i64(after), &upto, &source])
                .await
                .map_err(|e| self.failed(e))?;
            let rows = rows
                .iter()
                .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4)));
            Ok(tail(rows))
        }))
    }

    fn mark_decided<'a>(
        &'a self,
        stream: &'a str,
        version: u64,
        cause: &'a Cause,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.timed(async move {
            let connection = self.connection().await?;
            connection
                .client
                .execute(
                    &connection.mark_decided,
                    &[
                        &stream,
                        &cause.source,
                        &as_i64(version),
                        &cause.handler,
                        &cause.handler_version,
                        &now_ms(),
                    ],
                )
                .await
                .map_err(|e| self.failed(e))?;
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
        Box::pin(self.timed(async move {
            let connection = self.connection().await?;
            let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
            let datas: Vec<&[u8]> = events.iter().map(|e| e.data.as_slice()).collect();
            let metadatas: Vec<&[u8]> = events.iter().map(|e| e.metadata.as_slice()).collect();
            let inserted = connection
                .client
                .execute(
                    &connection.append,
                    &[
                        &stream,
                        &as_i64(expected),
                        &kinds,
                        &datas,
                        &metadatas,
                        &cause.handler,
                        &cause.handler_version,
                        &cause.source,
                        &now_ms(),
                    ],
                )
                .await;
            let conflict = || StoreError::Conflict {
                stream: stream.to_owned(),
                expected,
            };
            match inserted {
                Ok(0) => Err(conflict()),
                Ok(n) => Ok(expected + n),
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Err(conflict()),
                Err(e) => Err(self.failed(e)),
            }
        }))
    }

    fn snapshot<'a>(
        &'a self,
        key: SnapshotKey<'a>,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        Box::pin(self.timed(async move {
            let connection = self.connection().await?;
            let row = connection
                .client
                .query_opt(
                    &connection.snapshot,
                    &[&key.stream, &key.handler, &key.handler_version],
                )
                .await
                .map_err(|e| self.failed(e))?;
            Ok(row.map(|row| Snapshot {
                version: row.get::<_, i64>(0) as u64,
                state: row.get(1),
            }))
        }))
    }

    fn save_snapshot<'a>(
        &'a self,
        key: SnapshotKey<'a>,
        snapshot: &'a Snapshot,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.timed(async move {
            let connection = self.connection().await?;
            connection
                .client
                .execute(
                    &connection.save_snapshot,
                    &[
                        &key.stream,
                        &key.handler,
                        &key.handler_version,
                        &as_i64(snapshot.version),
                        &snapshot.state,
                    ],
                )
                .await
                .map_err(|e| self.failed(e))?;
            Ok(())
        }))
    }

    fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|h| format!("{h:?}"))
            .collect();
        format!(
            "postgres {} db {} schema {}",
            hosts.join(","),
            self.config.get_dbname().unwrap_or("-"),
            self.schema
        )
    }
}

impl PostgresStore {
    /// Runs `statement` with `params` on a live connection, within the
    /// timeout; the number of rows it changed.
    async fn execute(
        &self,
        statement: impl Fn(&TimerStatements) -> &Statement,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        self.timed(async move {
            let connection = self.connection().await?;
            connection
                .client
                .execute(statement(&connection.timers), params)
                .await
                .map_err(|e| self.failed(e))
        })
        .await
    }

    /// Like `execute`, for a statement that returns rows.
    async fn query(
        &self,
        statement: impl Fn(&TimerStatements) -> &Statement,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        self.timed(async move {
            let connection = self.connection().await?;
            connection
                .client
                .query(statement(&connection.timers), params)
                .await
                .map_err(|e| self.failed(e))
        })
        .await
    }
}

impl TimerStore for PostgresStore {
    fn schedule<'a>(&'a self, timer: &'a Timer) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let headers = timers::encode_headers(&timer.record.headers);
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 9] = [
                &timer.route,
                &timer.id,
                &as_i64(timer.due),
                &timer.record.topic,
                &timer.record.key,
                &timer.record.payload,
                &headers,
                &timer.source,
                &now_ms(),
            ];
            self.execute(|s| &s.schedule, &params).await.map(drop)
        })
    }

    fn cancel<'a>(&'a self, route: &'a str, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.execute(|s| &s.cancel, &[&route, &id, &now_ms()])
                .await
                .map(drop)
        })
    }

    fn claim_due(
        &self,
        now: u64,
        until: u64,
        lease: Duration,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Timer>, StoreError>> {
        Box::pin(async move {
            let held = as_i64(now.saturating_add(lease.as_millis() as u64));
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                [&as_i64(until), &held, &(limit as i64), &as_i64(now)];
            let rows = self.query(|s| &s.claim, &params).await?;
            let mut claimed: Vec<Timer> = rows
                .iter()
                .map(|row| {
                    timers::timer((
                        row.get(0),
                        row.get(1),
                        row.get(2),
                        row.get(3),
                        row.get(4),
                        row.get(5),
                        row.get(6),
                        row.get(7),
                    ))
                })
                .collect();
            claimed.sort_by_key(|timer| timer.due);
            Ok(claimed)
        })
    }

    fn fired<'a>(&'a self, timers: &'a [Timer]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let column =
                |field: fn(&Timer) -> &str| -> Vec<&str> { timers.iter().map(field).collect() };
            let (routes, ids, sources) = (
                column(|t| &t.route),
                column(|t| &t.id),
                column(|t| &t.source),
            );
            let dues: Vec<i64> = timers.iter().map(|t| as_i64(t.due)).collect();
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
                [&routes, &ids, &sources, &dues, &now_ms()];
            self.execute(|s| &s.fired, &params).await.map(drop)
        })
    }

    fn next_due(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            let rows = self.query(|s| &s.next_due, &[]).await?;
            let due: Option<i64> = rows.first().and_then(|row| row.get(0));
            Ok(due.map(|due| due.max(0) as u64))
        })
    }

    fn pending(&self, limit: usize) -> BoxFuture<'_, Result<(u64, Vec<PendingTimer>), StoreError>> {
        Box::pin(async move {
            let rows = self.query(|s| &s.pending, &[&(limit as i64)]).await?;
            Ok(timers::pending_list(rows.iter().map(|row| {
                (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4))
            })))
        })
    }

    fn prune(&self, before: u64) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move { self.execute(|s| &s.prune, &[&as_i64(before)]).await })
    }
}
