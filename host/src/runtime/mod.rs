//! The Wasm runtime: one wasmtime engine with epoch-based deadlines, the
//! deny-by-default WASI linker, loading and checking handler components, and
//! the worker threads that call them.

mod bindings;
mod cache;
mod component;
mod pool;
mod sandbox;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Engine, Store};

pub use bindings::ContractVersion;
pub(crate) use cache::content_hash;
pub use component::{Inspection, LoadError, LoadProblem, WasmHandler};
pub(crate) use pool::WorkerPool;

use crate::config::Limits;
use crate::contract::{HandleError, Message, Output};
use bindings::HandlerExports;
use sandbox::{GuestState, GuestTag, MemoryCapExceeded};

/// How often the engine's epoch advances; deadlines are rounded up to it.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Something that can make handler instances: a loaded component, or a native
/// implementation (benchmark baselines, tests).
pub trait Handler: Send + Sync + 'static {
    /// The handler's name.
    fn name(&self) -> &str;
    /// The handler's version.
    fn version(&self) -> &str;
    /// A new instance, ready for calls.
    fn instantiate(&self) -> Result<Box<dyn HandlerInstance>, Trap>;
}

/// One instance of a handler. Instances are reused for many calls on one
/// worker thread, and thrown away after a trap.
pub trait HandlerInstance: Send {
    /// Runs the handler on one message.
    fn handle(&mut self, msg: &Message) -> Result<Vec<Output>, CallError>;
}

/// Why a call produced no outputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The handler returned an error.
    #[error(transparent)]
    Handler(#[from] HandleError),
    /// The guest was stopped.
    #[error(transparent)]
    Trap(#[from] Trap),
}

/// A guest stopped by the sandbox or by its own fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Trap {
    /// The call ran past its wall-clock deadline.
    #[error("deadline of {} ms exceeded", .0.as_millis())]
    Deadline(Duration),
    /// Linear memory would have grown past the cap.
    #[error("memory cap exceeded: {0}")]
    Memory(String),
    /// The guest's stack overflowed.
    #[error("stack overflow")]
    Stack,
    /// The instance could not be created.
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    /// The guest trapped (a panic, `unreachable`, a bad memory access, ...).
    #[error("{0}")]
    Guest(String),
}

impl Trap {
    /// A short, stable name for the kind of trap (dead-letter `sluice-reason`).
    pub fn kind(&self) -> &'static str {
        match self {
            Trap::Deadline(_) => "deadline",
            Trap::Memory(_) => "memory",
            Trap::Stack => "stack",
            Trap::Instantiate(_) => "instantiate",
            Trap::Guest(_) => "trap",
        }
    }
}

impl CallError {
    /// A short, stable name for the kind of failure (dead-letter `sluice-reason`).
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Handler(e) => e.kind(),
            CallError::Trap(t) => t.kind(),
        }
    }
}

/// Errors setting up the engine itself.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the Wasm engine: {0}")]
pub struct RuntimeError(String);

/// The wasmtime engine and linker shared by every handler.
pub struct Runtime {
    engine: Engine,
    linker: Linker<GuestState>,
    limits: Limits,
    cache: Option<cache::ArtifactCache>,
    _ticker: EpochTicker,
}

impl Runtime {
    /// An engine with epoch interruption and a WASI linker that grants nothing.
    pub fn new(limits: &Limits) -> Result<Runtime, RuntimeError> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| RuntimeError(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| RuntimeError(format!("{e:#}")))?;
        let ticker = EpochTicker::start(engine.clone());
        Ok(Runtime {
            engine,
            linker,
            limits: limits.clone(),
            cache: None,
            _ticker: ticker,
        })
    }

    /// Keeps compiled handlers in `dir`, so later loads of the same
    /// component skip compiling.
    pub fn with_artifact_cache(mut self, dir: &std::path::Path) -> Self {
        self.cache = Some(cache::ArtifactCache::new(dir, &self.engine));
        self
    }

    /// The limits every call and instance of this runtime runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

/// Advances the engine's epoch every `EPOCH_TICK` until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn epoch ticker thread");
        EpochTicker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The per-call and per-instance limits, in the units wasmtime wants.
#[derive(Debug, Clone)]
struct CallLimits {
    deadline: Duration,
    deadline_ticks: u64,
    memory_bytes: usize,
}

impl CallLimits {
    fn new(limits: &Limits) -> Self {
        let deadline = limits.deadline();
        // One extra tick so a call always gets at least its full deadline.
        let ticks = deadline.as_millis().div_ceil(EPOCH_TICK.as_millis()) as u64 + 1;
        CallLimits {
            deadline,
            deadline_ticks: ticks,
            memory_bytes: limits.memory_bytes(),
        }
    }
}

/// A live component instance with its own store.
struct WasmInstance {
    store: Store<GuestState>,
    exports: HandlerExports,
    limits: CallLimits,
}

impl WasmInstance {
    fn new(
        pre: &bindings::HandlerPre,
        tag: &GuestTag,
        limits: &CallLimits,
    ) -> Result<WasmInstance, Trap> {
        let mut store = Store::new(pre.engine(), GuestState::new(tag, limits.memory_bytes));
        store.limiter(|state| &mut state.memory);
        store.set_epoch_deadline(limits.deadline_ticks);
        let exports = pre
            .instantiate(&mut store)
            .map_err(|e| match classify(e, limits) {
                Trap::Guest(reason) => Trap::Instantiate(reason),
                precise => precise,
            })?;
        Ok(WasmInstance {
            store,
            exports,
            limits: limits.clone(),
        })
    }
}

impl HandlerInstance for WasmInstance {
    fn handle(&mut self, msg: &Message) -> Result<Vec<Output>, CallError> {
        self.store.set_epoch_deadline(self.limits.deadline_ticks);
        self.store.data_mut().clear_stderr_tail();
        match self.exports.handle(&mut self.store, msg) {
            Ok(Ok(outputs)) => Ok(outputs),
            Ok(Err(error)) => Err(CallError::Handler(error)),
            Err(error) => {
                let trap = match classify(error, &self.limits) {
                    // A panicking guest says why on stderr; keep that with the trap.
                    Trap::Guest(reason) => match self.store.data().stderr_tail() {
                        Some(said) => Trap::Guest(format!("{reason}; guest stderr: {said}")),
                        None => Trap::Guest(reason),
                    },
                    precise => precise,
                };
                Err(CallError::Trap(trap))
            }
        }
    }
}

/// Turns a wasmtime error from a call or instantiation into a precise trap.
fn classify(error: wasmtime::Error, limits: &CallLimits) -> Trap {
    if let Some(cap) = error.downcast_ref::<MemoryCapExceeded>() {
        return Trap::Memory(cap.to_string());
    }
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => Trap::Deadline(limits.deadline),
        Some(wasmtime::Trap::StackOverflow) => Trap::Stack,
        Some(trap) => Trap::Guest(trap.to_string()),
        None => Trap::Guest(one_line(&error)),
    }
}

/// A wasmtime error on one line: its chain of causes, without backtraces.
pub(crate) fn one_line(error: &wasmtime::Error) -> String {
    error
        .chain()
        .map(|cause| cause.to_string())
        .filter(|text| !text.starts_with("error while executing at wasm backtrace"))
        .map(|text| text.lines().next().unwrap_or_default().trim().to_owned())
        .filter(|text| !text.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}
