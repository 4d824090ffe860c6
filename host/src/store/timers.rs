//! Timers in the store: records handlers asked to publish later, kept until
//! they fire, so that nothing of them lives in the host's memory and they
//! survive restarts. One row per (route, id): scheduling an id again
//! replaces the row, cancelling or firing marks it finished. Finished rows
//! are kept for a while (see `KEEP_FINISHED`), because they are how a
//! redelivered message is recognised: a row remembers the output that
//! scheduled it, and scheduling from that same output again changes
//! nothing, even after the timer fired or was cancelled.

use std::time::Duration;

use futures::future::BoxFuture;

use super::StoreError;
use crate::contract::{Header, Publish};

/// How long a fired or cancelled timer's row is kept: a redelivery of the
/// message that scheduled it, within this time, does not bring it back.
pub const KEEP_FINISHED: Duration = Duration::from_secs(7 * 24 * 3600);

/// A timer as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    /// The route it belongs to (its topic): ids are scoped to it.
    pub route: String,
    /// The id the handler chose.
    pub id: String,
    /// When it is due, in milliseconds since the Unix epoch.
    pub due: u64,
    /// What it publishes, host headers included.
    pub record: Publish,
    /// The `sluice-id` of the output that scheduled it.
    pub source: String,
}

/// A pending timer, as listed for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTimer {
    /// The route it belongs to.
    pub route: String,
    /// The handler's id for it.
    pub id: String,
    /// When it is due (ms since the Unix epoch).
    pub due: u64,
    /// The topic it publishes to.
    pub topic: String,
}

/// Where timers are kept. Every operation is atomic.
pub trait TimerStore: Send + Sync {
    /// Keeps `timer` pending, replacing a timer of the same id, unless the
    /// row is already `timer.source`'s (a redelivery changes nothing).
    fn schedule<'a>(&'a self, timer: &'a Timer) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Cancels the pending timer `id` of `route`, if there is one.
    fn cancel<'a>(&'a self, route: &'a str, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Takes up to `limit` pending timers due by `until` that no host holds
    /// at `now`, and holds them until `now + lease`: a host that dies while
    /// firing them leaves them to another after that. Soonest first.
    fn claim_due(
        &self,
        now: u64,
        until: u64,
        lease: Duration,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Timer>, StoreError>>;

    /// Marks claimed timers fired, unless they were replaced or cancelled
    /// in the meantime. One statement (or transaction) for them all.
    fn fired<'a>(&'a self, timers: &'a [Timer]) -> BoxFuture<'a, Result<(), StoreError>>;

    /// When the soonest pending timer is due.
    fn next_due(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>>;

    /// How many timers are pending, and the `limit` soonest of them.
    fn pending(&self, limit: usize) -> BoxFuture<'_, Result<(u64, Vec<PendingTimer>), StoreError>>;

    /// Forgets timers that finished before `before` (ms since the epoch).
    fn prune(&self, before: u64) -> BoxFuture<'_, Result<u64, StoreError>>;
}

/// A row's `state`.
pub(super) const PENDING: i32 = 0;
pub(super) const FIRED: i32 = 1;
pub(super) const CANCELLED: i32 = 2;

/// The table, in SQL both backends speak (`blob` as in `tables_sql`). The
/// partial index keeps the due-time scans to pending rows.
pub(super) fn table_sql(schema: &str, blob: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {schema}timers (
             route TEXT NOT NULL,
             id TEXT NOT NULL,
             due BIGINT NOT NULL,
             topic TEXT NOT NULL,
             key {blob},
             payload {blob} NOT NULL,
             headers {blob} NOT NULL,
             source TEXT NOT NULL,
             state INTEGER NOT NULL,
             lease_until BIGINT NOT NULL,
             changed_at BIGINT NOT NULL,
             PRIMARY KEY (route, id)
         );
         CREATE INDEX IF NOT EXISTS timers_pending ON {schema}timers (due) WHERE state = {PENDING};"
    )
}

/// Parameters: route, id, due, topic, key, payload, headers, source, now.
pub(super) fn schedule_sql(schema: &str) -> String {
    format!(
        "INSERT INTO {schema}timers AS t (route, id, due, topic, key, payload, headers, source,
             state, lease_until, changed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, {PENDING}, 0, $9)
         ON CONFLICT (route, id) DO UPDATE
         SET due = excluded.due, topic = excluded.topic, key = excluded.key,
             payload = excluded.payload, headers = excluded.headers, source = excluded.source,
             state = {PENDING}, lease_until = 0, changed_at = excluded.changed_at
         WHERE t.source <> excluded.source"
    )
}

/// Parameters: route, id, now.
pub(super) fn cancel_sql(schema: &str) -> String {
    format!(
        "UPDATE {schema}timers SET state = {CANCELLED}, changed_at = $3
         WHERE route = $1 AND id = $2 AND state = {PENDING}"
    )
}

/// Parameters: route, id, source, due, now.
pub(super) fn fired_sql(schema: &str) -> String {
    format!(
        "UPDATE {schema}timers SET state = {FIRED}, changed_at = $5
         WHERE route = $1 AND id = $2 AND source = $3 AND due = $4 AND state = {PENDING}"
    )
}

pub(super) fn next_due_sql(schema: &str) -> String {
    format!("SELECT min(due) FROM {schema}timers WHERE state = {PENDING}")
}

/// Parameters: limit.
pub(super) fn pending_sql(schema: &str) -> String {
    format!(
        "SELECT c.n, t.route, t.id, t.due, t.topic
         FROM (SELECT count(*) AS n FROM {schema}timers WHERE state = {PENDING}) c
         LEFT JOIN (SELECT route, id, due, topic FROM {schema}timers WHERE state = {PENDING}
                    ORDER BY due LIMIT $1) t ON true
         ORDER BY t.due"
    )
}

/// Parameters: before.
pub(super) fn prune_sql(schema: &str) -> String {
    format!("DELETE FROM {schema}timers WHERE state <> {PENDING} AND changed_at < $1")
}

/// The columns a claim returns, in `timer`'s order.
pub(super) const CLAIMED: &str = "route, id, due, topic, key, payload, headers, source";

/// A claimed row's columns, as read.
pub(super) type ClaimedRow = (
    String,
    String,
    i64,
    String,
    Option<Vec<u8>>,
    Vec<u8>,
    Vec<u8>,
    String,
);

/// A timer from a claimed row; its headers were encoded by `encode_headers`.
pub(super) fn timer(row: ClaimedRow) -> Timer {
    let (route, id, due, topic, key, payload, headers, source) = row;
    Timer {
        route,
        id,
        due: due.max(0) as u64,
        record: Publish {
            topic,
            key,
            payload,
            headers: decode_headers(&headers),
        },
        source,
    }
}

/// A pending listing's rows: `(count, route, id, due, topic)`, the timer
/// columns null when nothing is pending.
pub(super) type PendingRow = (
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
);

pub(super) fn pending_list(rows: impl IntoIterator<Item = PendingRow>) -> (u64, Vec<PendingTimer>) {
    let mut count = 0;
    let mut list = Vec::new();
    for (n, route, id, due, topic) in rows {
        count = n.max(0) as u64;
        if let (Some(route), Some(id), Some(due), Some(topic)) = (route, id, due, topic) {
            list.push(PendingTimer {
                route,
                id,
                due: due.max(0) as u64,
                topic,
            });
        }
    }
    (count, list)
}

/// Headers as one column: each name and value preceded by its length (4
/// bytes, big-endian).
pub(super) fn encode_headers(headers: &[Header]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for header in headers {
        for part in [header.name.as_bytes(), &header.value] {
            bytes.extend_from_slice(&(part.len() as u32).to_be_bytes());
            bytes.extend_from_slice(part);
        }
    }
    bytes
}

/// The headers `encode_headers` wrote; a damaged tail is dropped.
pub(super) fn decode_headers(mut bytes: &[u8]) -> Vec<Header> {
    let mut part = || -> Option<Vec<u8>> {
        let (length, rest) = bytes.split_first_chunk::<4>()?;
        let length = u32::from_be_bytes(*length) as usize;
        let part = rest.get(..length)?.to_vec();
        bytes = &rest[length..];
        Some(part)
    };
    let mut headers = Vec::new();
    while let (Some(name), Some(value)) = (part(), part()) {
        headers.push(Header {
            name: String::from_utf8_lossy(&name).into_owned(),
            value,
        });
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_read_back_as_written() {
        let headers = vec![
            Header::new("sluice-id", "timer:orders:overdue:1:5"),
            Header::new("", Vec::new()),
            Header::new("bin", vec![0, 255, 1]),
        ];
        assert_eq!(decode_headers(&encode_headers(&headers)), headers);
        let mut cut = encode_headers(&headers);
        cut.truncate(cut.len() - 1);
        assert_eq!(decode_headers(&cut), headers[..2]);
    }
}
