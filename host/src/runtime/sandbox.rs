//! What a guest sees: a WASI surface that grants nothing (no files, no
//! network, no environment, no arguments), stdout/stderr that end up in
//! `tracing`, and a cap on linear memory.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// A guest line longer than this is logged in pieces, so a guest cannot make
/// the host buffer without bound.
const MAX_LINE: usize = 16 * 1024;
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
    pub(crate) memory: MemoryCap,
    stderr_tail: StderrTail,
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
    pub(crate) fn new(handler: &GuestTag, memory_cap: usize) -> Self {
        let stderr_tail = StderrTail::default();
        let mut wasi = WasiCtxBuilder::new();
        // No preopens, env or args are ever added; sockets are switched off
        // explicitly because the builder allows TCP/UDP by default (with no
        // address permitted, but a guest should not even get that far).
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(GuestOutput::new(handler.clone(), Stream::Stdout, None))
            .stderr(GuestOutput::new(
                handler.clone(),
                Stream::Stderr,
                Some(stderr_tail.clone()),
            ));
        GuestState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            memory: MemoryCap::new(memory_cap),
            stderr_tail,
        }
    }

    /// Forgets the previous call's stderr lines.
    pub(crate) fn clear_stderr_tail(&self) {
        self.stderr_tail.lock().expect("stderr tail lock").clear();
    }

    /// What the guest wrote to stderr during this call, if anything.
    pub(crate) fn stderr_tail(&self) -> Option<String> {
        let tail = self.stderr_tail.lock().expect("stderr tail lock");
        (!tail.is_empty()).then(|| tail.iter().cloned().collect::<Vec<_>>().join(" | "))
    }
}

/// Handler name and version, attached to everything the guest emits.
#[derive(Debug, Clone)]
pub(crate) struct GuestTag {
    pub(crate) name: Arc<str>,
    pub(crate) version: Arc<str>,
}

/// Refuses any linear-memory growth beyond the cap with a typed error, so a
/// memory bomb is reported as such rather than as a generic trap.
pub(crate) struct MemoryCap {
    cap: usize,
}

/// The error a guest's memory growth fails with when it passes the cap.
#[derive(Debug, thiserror::Error)]
#[error("linear memory would grow to {desired} bytes, over the cap of {cap} bytes")]
pub(crate) struct MemoryCapExceeded {
    pub(crate) desired: usize,
    pub(crate) cap: usize,
}

impl MemoryCap {
    fn new(cap: usize) -> Self {
        MemoryCap { cap }
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            return Err(MemoryCapExceeded {
                desired,
                cap: self.cap,
            }
            .into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(maximum.is_none_or(|max| desired <= max))
    }
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// A guest's stdout or stderr: complete lines become `tracing` events tagged
/// with the handler. All streams a guest opens share one line buffer.
#[derive(Clone)]
struct GuestOutput {
    tag: GuestTag,
    stream: Stream,
    pending: Arc<Mutex<Vec<u8>>>,
    tail: Option<StderrTail>,
}

impl GuestOutput {
    fn new(tag: GuestTag, stream: Stream, tail: Option<StderrTail>) -> Self {
        GuestOutput {
            tag,
            stream,
            pending: Arc::default(),
            tail,
        }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut pending = self.pending.lock().expect("guest output lock");
        pending.extend_from_slice(bytes);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            self.emit(&line[..line.len() - 1]);
        }
        while pending.len() > MAX_LINE {
            let piece: Vec<u8> = pending.drain(..MAX_LINE).collect();
            self.emit(&piece);
        }
    }

    fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        if let Some(tail) = self.tail.as_ref().filter(|_| !text.trim().is_empty()) {
            let mut tail = tail.lock().expect("stderr tail lock");
            if tail.len() == STDERR_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(text.chars().take(STDERR_TAIL_LINE_CHARS).collect());
        }
        let (handler, version) = (&*self.tag.name, &*self.tag.version);
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
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
