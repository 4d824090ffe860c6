//! sluice runs microservice handlers as sandboxed WebAssembly components: it
//! consumes Kafka, calls a component's `handle` for each message, and itself
//! executes every side effect the handler asked for, committing a message's
//! offset only once all of them are done.
//!
//! Modules in the order a message meets them: [`source`] (Kafka or a JSONL
//! file) → `schedule` (one ordered lane per partition) →
//! `pipeline` (one batch's way) → [`registry`] (which handler version
//! serves it) → [`workers`] and `runtime` (the handler call, sandboxed) →
//! `policy` (dead-letter a failure) → `effects` (publish, HTTP, log) or
//! `exactly_once` (inside a Kafka transaction) → back to the source's
//! offsets for the ack.
//! [`run`] wires them together; [`config`] is the TOML schema. Beside a
//! run: [`replay`] (a handler over a file or a topic range, executing
//! nothing) and [`redrive`] (dead letters through the current version).

mod admin;
pub mod check;
pub mod config;
pub mod contract;
pub mod decider;
mod effects;
pub mod embedded;
mod exactly_once;
mod pipeline;
mod policy;
pub mod redrive;
pub mod registry;
pub mod replay;
mod run;
pub mod runtime;
pub mod scaffold;
mod schedule;
mod shadow;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod timers;
mod topics;
mod wire;
pub mod workers;

pub use config::Config;
pub use run::{RunError, RunOptions, run};
