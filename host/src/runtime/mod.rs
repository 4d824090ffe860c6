//! The Wasm runtime: one wasmtime engine with epoch-based deadlines, the
//! deny-by-default WASI linker, loading and checking handler components, and
//! the worker threads that call them.

mod bindings;
mod cache;
mod component;
mod determinism;
mod outputs;
mod sandbox;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::component::Linker;
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

pub use bindings::ContractVersion;
pub(crate) use cache::content_hash;
pub use component::{Inspection, LoadError, LoadProblem, WasmHandler};
pub use sandbox::InstanceGauges;

use crate::config::{Config, InstanceStrategy, Limits};
use crate::contract::{Decision, Event, HandleError, Message, Output};
use bindings::{DeciderFuncs, HandleFunc};
use outputs::OutputCountExceeded;
pub(crate) use sandbox::MAX_LINE;
use sandbox::{CapExceeded, GuestState, GuestTag, LineBudget};

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
    /// Calls one instance serves before it is replaced (1: a fresh instance
    /// per message).
    fn calls_per_instance(&self) -> u64 {
        u64::MAX
    }
    /// Which world it implements.
    fn kind(&self) -> HandlerKind {
        HandlerKind::Handler
    }
    /// Its live instances and their memory, if it counts them.
    fn gauges(&self) -> Option<&InstanceGauges> {
        None
    }
    /// Whether one more of its log lines may be written now (its stdout,
    /// stderr and `log` outputs share one rate limit).
    fn admit_log_line(&self) -> bool {
        true
    }
    /// The most bytes one call may return (outputs, or a decision's events
    /// and outputs), held in the host's budget before each call; 0 when
    /// not known (nothing is held before the call, what it returns after).
    fn max_output_bytes(&self) -> u64 {
        0
    }
}

/// The world a handler component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerKind {
    /// `handler`: one message in, outputs out.
    Handler,
    /// `decider`: folds its message's stream and decides events and outputs.
    Decider,
}

impl HandlerKind {
    /// The world's name.
    pub fn as_str(self) -> &'static str {
        match self {
            HandlerKind::Handler => "handler",
            HandlerKind::Decider => "decider",
        }
    }
}

/// One instance of a handler. Instances are reused for many calls on one
/// worker thread, and thrown away after a trap.
pub trait HandlerInstance: Send {
    /// Runs the handler on one message.
    fn handle(&mut self, msg: &Message) -> Result<Vec<Output>, CallError>;
    /// The instance's decider functions, if it is a decider.
    fn decider(&mut self) -> Option<&mut dyn DeciderInstance> {
        None
    }
}

/// The functions of a decider instance. Each call runs under the handler's
/// limits, with the clocks and randomness of `msg`.
pub trait DeciderInstance {
    /// The stream `msg` is about; `None` when there is nothing to decide.
    fn stream_id(&mut self, msg: &Message) -> Result<Option<String>, CallError>;
    /// The state of an empty stream.
    fn initial(&mut self, msg: &Message) -> Result<Vec<u8>, CallError>;
    /// The state after `events`.
    fn fold(&mut self, msg: &Message, state: &[u8], events: &[Event])
    -> Result<Vec<u8>, CallError>;
    /// The decision about `msg` in `state`.
    fn decide(&mut self, msg: &Message, state: &[u8]) -> Result<Decision, CallError>;
}

/// An instance's decider functions; a handler component has none.
pub(crate) fn decider_of(
    instance: &mut dyn HandlerInstance,
) -> Result<&mut dyn DeciderInstance, CallError> {
    instance.decider().ok_or_else(|| {
        CallError::Trap(Trap::Guest(
            "a handler component has no decider functions".into(),
        ))
    })
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
    /// The call used up its fuel.
    #[error("fuel of {0} exhausted")]
    Fuel(u64),
    /// Linear memory (or a table) would have grown past the cap.
    #[error("memory cap exceeded: {0}")]
    Memory(String),
    /// The call returned more outputs than allowed.
    #[error("{count} outputs, over the cap of {cap} per call")]
    OutputCount {
        /// Outputs returned.
        count: usize,
        /// The cap.
        cap: u64,
    },
    /// The call's outputs hold more bytes than allowed.
    #[error("{0}")]
    OutputBytes(String),
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

/// Errors setting up the engine itself.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the Wasm engine: {0}")]
pub struct RuntimeError(String);

/// The wasmtime engine and linker shared by every handler.
pub struct Runtime {
    engine: Engine,
    linker: Linker<GuestState>,
    limits: Limits,
    handler_limits: BTreeMap<String, Limits>,
    fuel: bool,
    cache: Option<cache::ArtifactCache>,
    _ticker: Option<EpochTicker>,
}

impl Runtime {
    /// An engine with epoch interruption and a WASI linker that grants
    /// nothing; every handler runs under `limits`.
    pub fn new(limits: &Limits) -> Result<Runtime, RuntimeError> {
        Runtime::build(limits, BTreeMap::new(), true)
    }

    /// The runtime a config asks for: `[limits]` for every handler, and each
    /// `[handlers.NAME.limits]` for its own.
    pub fn for_config(config: &Config) -> Result<Runtime, RuntimeError> {
        Runtime::build(&config.limits, config.handler_limits(), true)
    }

    /// A runtime whose calls have no deadline, to measure what deadlines
    /// cost. Never for serving: a looping guest would hold its worker forever.
    #[doc(hidden)]
    pub fn without_deadlines(limits: &Limits) -> Result<Runtime, RuntimeError> {
        Runtime::build(limits, BTreeMap::new(), false)
    }

    fn build(
        limits: &Limits,
        handler_limits: BTreeMap<String, Limits>,
        deadlines: bool,
    ) -> Result<Runtime, RuntimeError> {
        let error = |e: wasmtime::Error| RuntimeError(format!("{e:#}"));
        let all: Vec<&Limits> = std::iter::once(limits)
            .chain(handler_limits.values())
            .collect();
        // Fuel changes the compiled code of every handler, so it is on only
        // when some handler asks for it.
        let fuel = all.iter().any(|l| l.fuel.is_some());
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(deadlines).consume_fuel(fuel);
        if all.iter().any(|l| l.instances == InstanceStrategy::Fresh) {
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling(&all)));
        }
        let engine = Engine::new(&config).map_err(error)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(error)?;
        determinism::add_sleeps_to_linker(&mut linker).map_err(error)?;
        let ticker = deadlines.then(|| EpochTicker::start(engine.clone()));
        Ok(Runtime {
            engine,
            linker,
            limits: limits.clone(),
            handler_limits,
            fuel,
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

    /// The limits every call and instance of a handler runs under.
    pub fn limits(&self, handler: &str) -> &Limits {
        self.handler_limits.get(handler).unwrap_or(&self.limits)
    }
}

/// The instance pool `fresh` handlers draw from: slots sized for the largest
/// caps any handler has, so instantiating is a slot reuse, not an mmap.
fn pooling(all: &[&Limits]) -> PoolingAllocationConfig {
    let most = |f: fn(&Limits) -> u64| all.iter().map(|l| f(l)).max().unwrap_or(1);
    let per_component = most(|l| l.max_instances.into()) as u32;
    let mut pool = PoolingAllocationConfig::default();
    pool.max_memory_size(most(|l| l.memory_bytes() as u64) as usize)
        .table_elements(most(|l| l.max_table_elements) as usize)
        .max_core_instances_per_component(per_component)
        .max_memories_per_component(per_component)
        .max_tables_per_component(per_component);
    pool
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
    /// Fuel per call; `None` with fuel metering on means unmetered.
    fuel: Option<u64>,
    /// Whether the engine meters fuel (then every call must be given some).
    engine_fuel: bool,
    memory_bytes: usize,
    max_instances: usize,
    max_table_elements: usize,
    max_outputs: u64,
    max_output_bytes: u64,
    calls_per_instance: u64,
    deterministic: bool,
}

impl CallLimits {
    fn new(limits: &Limits, engine_fuel: bool) -> Self {
        let deadline = limits.deadline;
        // One extra tick so a call always gets at least its full deadline.
        let ticks = deadline.as_millis().div_ceil(EPOCH_TICK.as_millis()) as u64 + 1;
        CallLimits {
            deadline,
            deadline_ticks: ticks,
            fuel: limits.fuel,
            engine_fuel,
            memory_bytes: limits.memory_bytes(),
            max_instances: limits.max_instances as usize,
            max_table_elements: limits.max_table_elements as usize,
            max_outputs: limits.max_outputs,
            max_output_bytes: limits.max_output_bytes,
            calls_per_instance: limits.calls_per_instance(),
            deterministic: limits.deterministic,
        }
    }

    /// Gives a store a full deadline and, when the engine meters it, fuel.
    fn arm(&self, store: &mut Store<GuestState>) -> wasmtime::Result<()> {
        store.set_epoch_deadline(self.deadline_ticks);
        if self.engine_fuel {
            store.set_fuel(self.fuel.unwrap_or(u64::MAX))?;
        }
        Ok(())
    }

    /// What the host may allocate copying one call's outputs out of the
    /// guest: room for the outputs themselves (at most 256 bytes each on the
    /// host) and twice the byte cap. Past it the copy stops before allocating.
    fn copy_budget(&self) -> usize {
        let budget = self
            .max_outputs
            .saturating_mul(256)
            .saturating_add(self.max_output_bytes.saturating_mul(2))
            .saturating_add(1 << 20);
        usize::try_from(budget).unwrap_or(usize::MAX)
    }
}

/// A live component instance with its own store.
struct WasmInstance {
    store: Store<GuestState>,
    exports: Exports,
    limits: CallLimits,
}

/// What a live instance exports: its world's functions.
enum Exports {
    Handle(HandleFunc),
    Decide(DeciderFuncs),
}

impl WasmInstance {
    fn new(
        pre: &component::Pre,
        tag: &GuestTag,
        limits: &CallLimits,
        lines: &Arc<LineBudget>,
    ) -> Result<WasmInstance, Trap> {
        let engine = pre.component().engine();
        let mut store = Store::new(engine, GuestState::new(tag, limits, lines.clone()));
        store.limiter(|state| state.caps());
        // Start-up code runs under the same deadline and fuel as a call.
        limits
            .arm(&mut store)
            .map_err(|e| Trap::Instantiate(one_line(&e)))?;
        let exports = match pre {
            component::Pre::Handle(pre) => pre.instantiate(&mut store).map(Exports::Handle),
            component::Pre::Decide(pre) => pre.instantiate(&mut store).map(Exports::Decide),
        }
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

    /// Arms every per-call limit and sets the guest's clocks for `msg`.
    fn begin(&mut self, msg: &Message) -> Result<(), Trap> {
        let limits = &self.limits;
        self.store
            .data_mut()
            .begin_call(msg, Instant::now() + limits.deadline);
        limits
            .arm(&mut self.store)
            .map_err(|e| Trap::Guest(one_line(&e)))?;
        self.store.set_hostcall_fuel(limits.copy_budget());
        Ok(())
    }

    /// Whether outputs (and events) of `bytes` in all are within the byte cap.
    fn check_bytes(&self, bytes: u64) -> Result<(), Trap> {
        let cap = self.limits.max_output_bytes;
        if bytes > cap {
            return Err(Trap::OutputBytes(format!(
                "outputs of {bytes} bytes, over the cap of {cap} bytes per call"
            )));
        }
        Ok(())
    }

    /// A state is what a decider's `initial` or `fold` returns: the host
    /// holds it (and caches it), so it is within the byte cap too.
    fn check_state(&self, state: Vec<u8>) -> Result<Vec<u8>, CallError> {
        let cap = self.limits.max_output_bytes;
        if state.len() as u64 > cap {
            return Err(Trap::OutputBytes(format!(
                "a state of {} bytes, over the cap of {cap} bytes per call",
                state.len()
            ))
            .into());
        }
        Ok(state)
    }

    /// Runs one guest call for `msg` under the per-call limits and turns
    /// whatever stopped it into a precise `CallError`.
    fn guarded<R>(
        &mut self,
        msg: &Message,
        call: impl FnOnce(&mut Store<GuestState>, &Exports) -> wasmtime::Result<Result<R, HandleError>>,
    ) -> Result<R, CallError> {
        self.begin(msg)?;
        let max_outputs = usize::try_from(self.limits.max_outputs).unwrap_or(usize::MAX);
        let called =
            outputs::with_max_outputs(max_outputs, || call(&mut self.store, &self.exports));
        match called {
            // A sleep cut short at the deadline: the call overran it.
            Ok(_) if self.store.data().has_overslept() => {
                Err(CallError::Trap(Trap::Deadline(self.limits.deadline)))
            }
            Ok(Ok(value)) => Ok(value),
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

    /// The decider functions, for a call on a decider instance.
    fn decider_funcs(exports: &Exports) -> wasmtime::Result<&DeciderFuncs> {
        match exports {
            Exports::Decide(funcs) => Ok(funcs),
            Exports::Handle(_) => Err(wasmtime::format_err!(
                "a handler component has no decider functions"
            )),
        }
    }
}

impl HandlerInstance for WasmInstance {
    fn handle(&mut self, msg: &Message) -> Result<Vec<Output>, CallError> {
        let outputs = self.guarded(msg, |store, exports| match exports {
            Exports::Handle(handle) => handle.call(store, msg),
            Exports::Decide(_) => Err(wasmtime::format_err!(
                "a decider component has no `handle` function"
            )),
        })?;
        self.check_bytes(outputs.iter().map(|o| o.size() as u64).sum())?;
        Ok(outputs)
    }

    fn decider(&mut self) -> Option<&mut dyn DeciderInstance> {
        match self.exports {
            Exports::Decide(_) => Some(self),
            Exports::Handle(_) => None,
        }
    }
}

impl DeciderInstance for WasmInstance {
    fn stream_id(&mut self, msg: &Message) -> Result<Option<String>, CallError> {
        self.guarded(msg, |store, exports| {
            Self::decider_funcs(exports)?.stream_id(store, msg)
        })
    }

    fn initial(&mut self, msg: &Message) -> Result<Vec<u8>, CallError> {
        let state = self.guarded(msg, |store, exports| {
            Self::decider_funcs(exports)?.initial(store).map(Ok)
        })?;
        self.check_state(state)
    }

    fn fold(
        &mut self,
        msg: &Message,
        state: &[u8],
        events: &[Event],
    ) -> Result<Vec<u8>, CallError> {
        let state = self.guarded(msg, |store, exports| {
            Self::decider_funcs(exports)?
                .fold(store, state, events)
                .map(Ok)
        })?;
        self.check_state(state)
    }

    fn decide(&mut self, msg: &Message, state: &[u8]) -> Result<Decision, CallError> {
        let decision = self.guarded(msg, |store, exports| {
            Self::decider_funcs(exports)?.decide(store, msg, state)
        })?;
        let count = decision.outputs.len();
        if count as u64 > self.limits.max_outputs {
            return Err(Trap::OutputCount {
                count,
                cap: self.limits.max_outputs,
            }
            .into());
        }
        let events: u64 = decision.events.iter().map(|e| e.size() as u64).sum();
        let outputs: u64 = decision.outputs.iter().map(|o| o.size() as u64).sum();
        self.check_bytes(events + outputs)?;
        Ok(decision)
    }
}

/// wasmtime's message when copying data out of a guest passes the store's
/// hostcall fuel; its error type is private, so it is known by its text.
const COPY_BUDGET_EXCEEDED: &str = "too much data is being copied between the host and the guest";

/// Turns a wasmtime error from a call or instantiation into a precise trap.
fn classify(error: wasmtime::Error, limits: &CallLimits) -> Trap {
    if let Some(cap) = error.downcast_ref::<CapExceeded>() {
        return Trap::Memory(cap.to_string());
    }
    if let Some(over) = error.downcast_ref::<OutputCountExceeded>() {
        return Trap::OutputCount {
            count: over.count,
            cap: limits.max_outputs,
        };
    }
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => Trap::Deadline(limits.deadline),
        Some(wasmtime::Trap::OutOfFuel) => Trap::Fuel(limits.fuel.unwrap_or(u64::MAX)),
        Some(wasmtime::Trap::StackOverflow) => Trap::Stack,
        Some(trap) => Trap::Guest(trap.to_string()),
        None if error
            .chain()
            .any(|e| e.to_string().starts_with(COPY_BUDGET_EXCEEDED)) =>
        {
            Trap::OutputBytes(format!(
                "the guest handed over more than the copy budget of {} bytes (max-output-bytes is {})",
                limits.copy_budget(),
                limits.max_output_bytes
            ))
        }
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
