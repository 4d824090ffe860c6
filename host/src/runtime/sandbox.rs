//! What a guest sees: a WASI surface that grants nothing (no files, no
//! network, no environment, no arguments; a guest that asks gets an error),
//! clocks and randomness fixed per message (see `determinism`), stdout and
//! stderr that end up in `tracing` at a capped rate, and caps on linear
//! memory, tables and instances.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::CallLimits;
use super::determinism::Clocks;
use crate::contract::Message;

/// A guest line longer than this is logged in pieces (a `log` output's text
/// is cut), so a guest cannot make the host buffer or log without bound. It
/// is also the most one `write` to stdout or stderr may hand over.
pub(crate) const MAX_LINE: usize = 16 * 1024;
/// How many of a call's last stderr lines are kept to explain a trap.
const STDERR_TAIL_LINES: usize = 4;
/// How much of each kept stderr line.
const STDERR_TAIL_LINE_CHARS: usize = 512;

/// The last few stderr lines of the current call.
type StderrTail = Arc<Mutex<VecDeque<String>>>;

/// Everything a guest's store holds.
pub(crate) struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    caps: Caps,
    stderr_tail: StderrTail,
    clocks: Clocks,
    /// When the current call must end.
    deadline: Option<Instant>,
    /// The current call asked to sleep past its deadline.
    overslept: bool,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl GuestState {
    /// A fresh, deny-by-default guest state for one instance of a handler.
    pub(crate) fn new(handler: &GuestTag, limits: &CallLimits, lines: Arc<LineBudget>) -> Self {
        let stderr_tail = StderrTail::default();
        let mut wasi = WasiCtxBuilder::new();
        // No preopens, env or args are ever added; sockets are switched off
        // explicitly because the builder allows TCP/UDP by default (with no
        // address permitted, but a guest should not even get that far).
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(GuestOutput::new(
                handler.clone(),
                Stream::Stdout,
                None,
                lines.clone(),
            ))
            .stderr(GuestOutput::new(
                handler.clone(),
                Stream::Stderr,
                Some(stderr_tail.clone()),
                lines,
            ));
        let clocks = Clocks::new(limits.deterministic);
        clocks.install(&mut wasi);
        GuestState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            caps: {
                handler
                    .gauges
                    .instances
                    .fetch_add(1, AtomicOrdering::Relaxed);
                Caps {
                    memory_bytes: limits.memory_bytes,
                    table_elements: limits.max_table_elements,
                    instances: limits.max_instances,
                    gauges: handler.gauges.clone(),
                    grown: 0,
                }
            },
            stderr_tail,
            clocks,
            deadline: None,
            overslept: false,
        }
    }

    /// Readies the state for a call on `msg` that must end by `deadline`.
    pub(crate) fn begin_call(&mut self, msg: &Message, deadline: Instant) {
        self.stderr_tail.lock().expect("stderr tail lock").clear();
        self.clocks.begin(msg);
        self.deadline = Some(deadline);
        self.overslept = false;
    }

    /// What the guest wrote to stderr during this call, if anything.
    pub(crate) fn stderr_tail(&self) -> Option<String> {
        let tail = self.stderr_tail.lock().expect("stderr tail lock");
        (!tail.is_empty()).then(|| tail.iter().cloned().collect::<Vec<_>>().join(" | "))
    }

    pub(crate) fn caps(&mut self) -> &mut Caps {
        &mut self.caps
    }

    pub(crate) fn clocks(&self) -> &Clocks {
        &self.clocks
    }

    /// When a real sleep must end at the latest: the call's deadline.
    pub(crate) fn sleep_deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Marks the current call as having slept until its deadline.
    pub(crate) fn overslept(&mut self) {
        self.overslept = true;
    }

    /// Whether the current call slept until its deadline.
    pub(crate) fn has_overslept(&self) -> bool {
        self.overslept
    }

    pub(crate) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

/// Handler name and version, attached to everything the guest emits, and
/// the gauges its instances count themselves in.
#[derive(Debug, Clone)]
pub(crate) struct GuestTag {
    pub(crate) name: Arc<str>,
    pub(crate) version: Arc<str>,
    pub(crate) gauges: Arc<InstanceGauges>,
}

/// Live instances of one handler version, the linear memory they hold, and
/// the log lines of theirs dropped over the rate limit.
#[derive(Debug, Default)]
pub struct InstanceGauges {
    instances: AtomicI64,
    memory_bytes: AtomicI64,
    log_lines_dropped: AtomicU64,
}

impl InstanceGauges {
    /// Live instances.
    pub fn instances(&self) -> i64 {
        self.instances.load(AtomicOrdering::Relaxed)
    }

    /// Bytes of linear memory they hold.
    pub fn memory_bytes(&self) -> i64 {
        self.memory_bytes.load(AtomicOrdering::Relaxed)
    }

    /// Log lines (stdout, stderr, `log` outputs) dropped over the rate limit.
    pub fn log_lines_dropped(&self) -> u64 {
        self.log_lines_dropped.load(AtomicOrdering::Relaxed)
    }
}

/// Refuses growth of memories and tables beyond their caps with a typed
/// error, so a memory bomb is reported as such rather than as a generic
/// trap, and caps how many instances, memories and tables a component makes.
pub(crate) struct Caps {
    memory_bytes: usize,
    table_elements: usize,
    instances: usize,
    /// Where this instance counts itself and its memory, while it lives.
    gauges: Arc<InstanceGauges>,
    /// Linear memory this instance grew, all memories together.
    grown: usize,
}

impl Drop for Caps {
    fn drop(&mut self) {
        self.gauges.instances.fetch_sub(1, AtomicOrdering::Relaxed);
        self.gauges
            .memory_bytes
            .fetch_sub(self.grown as i64, AtomicOrdering::Relaxed);
    }
}

/// The error a guest's memory or table growth fails with past its cap.
#[derive(Debug, thiserror::Error)]
#[error("{what} would grow to {desired} {unit}, over the cap of {cap} {unit}")]
pub(crate) struct CapExceeded {
    what: &'static str,
    unit: &'static str,
    desired: usize,
    cap: usize,
}

impl ResourceLimiter for Caps {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            return Err(CapExceeded {
                what: "linear memory",
                unit: "bytes",
                desired,
                cap: self.memory_bytes,
            }
            .into());
        }
        let grown = desired.saturating_sub(current);
        self.grown += grown;
        self.gauges
            .memory_bytes
            .fetch_add(grown as i64, AtomicOrdering::Relaxed);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            return Err(CapExceeded {
                what: "a table",
                unit: "elements",
                desired,
                cap: self.table_elements,
            }
            .into());
        }
        Ok(maximum.is_none_or(|max| desired <= max))
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn memories(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.instances
    }
}

/// How many lines a handler version may log (stdout, stderr and `log`
/// outputs together): a token bucket refilled at the configured rate,
/// shared by all its instances.
pub(crate) struct LineBudget {
    per_second: u32,
    bucket: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    dropped: u64,
}

/// Whether a line may be logged, and how many were dropped before it.
enum Admit {
    Log {
        dropped_before: u64,
    },
    /// Dropped; `first` when it is the first of a run of dropped lines.
    Drop {
        first: bool,
    },
}

impl LineBudget {
    pub(crate) fn new(per_second: u32) -> Self {
        LineBudget {
            per_second,
            bucket: Mutex::new(Bucket {
                tokens: per_second as f64,
                refilled: Instant::now(),
                dropped: 0,
            }),
        }
    }

    /// Whether a line of `tag`'s may be logged now. The first line dropped
    /// is announced, and so is the count dropped once lines flow again.
    pub(crate) fn admit_line(&self, tag: &GuestTag) -> bool {
        let (handler, version) = (&*tag.name, &*tag.version);
        let limit = self.per_second;
        match self.admit() {
            Admit::Log { dropped_before: 0 } => true,
            Admit::Log { dropped_before } => {
                tracing::warn!(
                    target: "sluice::guest",
                    handler,
                    version,
                    dropped = dropped_before,
                    "guest log over {limit} lines per second: {dropped_before} lines dropped"
                );
                true
            }
            Admit::Drop { first } => {
                tag.gauges
                    .log_lines_dropped
                    .fetch_add(1, AtomicOrdering::Relaxed);
                if first {
                    tracing::warn!(
                        target: "sluice::guest",
                        handler,
                        version,
                        "guest log over {limit} lines per second: dropping lines"
                    );
                }
                false
            }
        }
    }

    fn admit(&self) -> Admit {
        let mut bucket = self.bucket.lock().expect("line budget lock");
        let now = Instant::now();
        let rate = self.per_second as f64;
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Admit::Log {
                dropped_before: std::mem::take(&mut bucket.dropped),
            }
        } else {
            bucket.dropped += 1;
            Admit::Drop {
                first: bucket.dropped == 1,
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// A guest's stdout or stderr: complete lines become `tracing` events tagged
/// with the handler. All streams a guest opens share one line buffer.
#[derive(Clone)]
struct GuestOutput {
    tag: GuestTag,
    stream: Stream,
    pending: Arc<Mutex<Vec<u8>>>,
    tail: Option<StderrTail>,
    lines: Arc<LineBudget>,
}

impl GuestOutput {
    fn new(
        tag: GuestTag,
        stream: Stream,
        tail: Option<StderrTail>,
        lines: Arc<LineBudget>,
    ) -> Self {
        GuestOutput {
            tag,
            stream,
            pending: Arc::default(),
            tail,
            lines,
        }
    }

    /// Logs the complete lines `bytes` ends, keeping a partial last one
    /// for the next write. Each byte is looked at once: the host's work is
    /// linear in what the guest writes, whatever its shape.
    fn write_bytes(&self, bytes: &[u8]) {
        let mut pending = self.pending.lock().expect("guest output lock");
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = (&rest[..end], &rest[end + 1..]);
            if pending.is_empty() {
                self.emit_pieces(line);
            } else {
                pending.extend_from_slice(line);
                self.emit_pieces(&pending);
                pending.clear();
            }
            rest = after;
        }
        pending.extend_from_slice(rest);
        if pending.len() > MAX_LINE {
            let whole = pending.len() / MAX_LINE * MAX_LINE;
            self.emit_pieces(&pending[..whole]);
            pending.drain(..whole);
        }
    }

    /// Logs a line, in pieces of at most `MAX_LINE` bytes.
    fn emit_pieces(&self, line: &[u8]) {
        if line.is_empty() {
            return self.emit(line);
        }
        for piece in line.chunks(MAX_LINE) {
            self.emit(piece);
        }
    }

    fn emit(&self, line: &[u8]) {
        if let Some(tail) = &self.tail {
            let kept = &line[..line.len().min(STDERR_TAIL_LINE_CHARS * 4)];
            let text = String::from_utf8_lossy(kept);
            let text = text.trim_end_matches('\r');
            if !text.trim().is_empty() {
                let mut tail = tail.lock().expect("stderr tail lock");
                if tail.len() == STDERR_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(text.chars().take(STDERR_TAIL_LINE_CHARS).collect());
            }
        }
        if !self.lines.admit_line(&self.tag) {
            return;
        }
        let (handler, version) = (&*self.tag.name, &*self.tag.version);
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        match self.stream {
            Stream::Stdout => {
                tracing::info!(target: "sluice::guest", handler, version, stream = "stdout", "{text}")
            }
            Stream::Stderr => {
                tracing::warn!(target: "sluice::guest", handler, version, stream = "stderr", "{text}")
            }
        }
    }
}

impl Drop for GuestOutput {
    fn drop(&mut self) {
        // The last handle flushes a partial final line.
        if Arc::strong_count(&self.pending) == 1 {
            let rest = std::mem::take(&mut *self.pending.lock().expect("guest output lock"));
            if !rest.is_empty() {
                self.emit(&rest);
            }
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        // More than check-write allows is the guest breaking the stream's
        // contract; taking it would be host work no deadline can cut short.
        if bytes.len() > MAX_LINE {
            return Err(StreamError::Trap(wasmtime::format_err!(
                "a write of {} bytes to {}, over the check-write budget of {MAX_LINE} bytes",
                bytes.len(),
                self.stream.as_str()
            )));
        }
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_LINE)
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let taken = buf.len().min(MAX_LINE);
        self.write_bytes(&buf[..taken]);
        Poll::Ready(Ok(taken))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
