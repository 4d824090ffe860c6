//! Command-line arguments; parsing only.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use sluice::source::range::Position;

/// Runs microservice handlers as sandboxed WebAssembly components over Kafka.
#[derive(Debug, Parser)]
#[command(name = "sluice", version)]
pub struct Cli {
    /// How logs are written to stderr: `text`, or `json` (one object per
    /// line, with the span fields, and a line per span closed: the traces).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SLUICE_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// A language `sluice new` writes handlers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust (wit-bindgen).
    Rust,
    /// JavaScript (componentize-js).
    #[value(alias = "javascript")]
    Js,
    /// TypeScript (tsc, then componentize-js).
    #[value(alias = "typescript")]
    Ts,
    /// Python (componentize-py).
    Python,
}

/// A log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// JSON lines.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume the routed topics and run their handlers until stopped
    /// (SIGINT/SIGTERM finish in-flight messages, commit, and exit).
    Run(RunArgs),
    /// Run a handler on messages from a JSONL file, with no broker, and print
    /// one JSON line per input: its outputs or its error (a decider's: its
    /// stream, events and outputs, from the line's `history`). Lines that say
    /// what they `expect` are checked: any not met fails the command.
    Replay(ReplayArgs),
    /// List every routed handler's versions and their states (active,
    /// canary, shadow, standby, rejected with the reason): a running host's,
    /// asked over its admin server, or else what a host started now would
    /// do; then what each route lets its handler reach.
    Handlers(HandlersArgs),
    /// List the pending timers (how many, and the soonest first) from the
    /// config's store; it need not have a host running.
    Timers(TimersArgs),
    /// Run dead-lettered messages again through their handler's current
    /// version, with the usual delivery rules; commits progress on the
    /// dead-letter topic (group `<group>-redrive`) and un-parks keys whose
    /// dead letters all went through.
    Redrive(RedriveArgs),
    /// Create a handler project: source, build script, conformance vectors
    /// and a README. Then `./build` in it, and `sluice replay` on its
    /// vectors.
    New(NewArgs),
    /// Show a component's contract, exports and imports, and whether it
    /// instantiates under the host's sandbox; with a config, also what the
    /// routes of its handler (named by the file's path) let it reach.
    Inspect(InspectArgs),
    /// Check a config (with the environment applied) and its handlers
    /// directory as a host would, and that the brokers and the store
    /// answer, without starting a host: one line per thing checked, and a
    /// failing status if any is a problem. For CI and init containers.
    Check(CheckArgs),
}

/// The arguments of `sluice check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The TOML config file (without one, the environment's `SLUICE_*`).
    #[arg(long, short, env = "SLUICE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Check only the config and the handlers: ask no broker or store.
    #[arg(long)]
    pub offline: bool,
}

/// The arguments of `sluice run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The TOML config file; without one, the `SLUICE_*` environment
    /// variables are the whole config (they are layered over a file too).
    #[arg(long, short, env = "SLUICE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Stop once every input is handled and committed, and the timers due
    /// within `timers.drain-within-ms` have fired (always so with
    /// `brokers = "embedded"`).
    #[arg(long)]
    pub until_drained: bool,
}

/// The arguments of `sluice replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The handler component.
    #[arg(long)]
    pub handler: PathBuf,
    /// Messages, one JSON object per line.
    #[arg(long, required_unless_present = "topic", conflicts_with = "topic")]
    pub input: Option<PathBuf>,
    /// Replay a range of this topic instead (with `--brokers`).
    #[arg(long, requires = "brokers")]
    pub topic: Option<String>,
    /// The brokers holding `--topic` (`host:port[,host:port...]`).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Where each partition's range starts: an offset, or an RFC 3339
    /// time (the first message at or after it); default: the beginning.
    #[arg(long, requires = "topic")]
    pub from: Option<Position>,
    /// Where it ends (exclusive), likewise; default: the current end.
    #[arg(long, requires = "topic")]
    pub to: Option<Position>,
    /// Another version of the handler: run it on the same messages and
    /// say, per message, whether its outcome differs.
    #[arg(long)]
    pub against: Option<PathBuf>,
    /// Wall-clock deadline per call, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub deadline_ms: u64,
    /// Linear-memory cap, in MiB.
    #[arg(long, default_value_t = 64)]
    pub memory_mib: u64,
    /// Where compiled components are cached (default: sluice/ in the
    /// user's cache directory, `$XDG_CACHE_HOME` or `~/.cache`).
    #[arg(long)]
    pub artifact_cache: Option<PathBuf>,
    /// Compile every component afresh; cache nothing.
    #[arg(long, conflicts_with = "artifact_cache")]
    pub no_artifact_cache: bool,
}

/// The arguments of `sluice handlers`.
#[derive(Debug, clap::Args)]
pub struct HandlersArgs {
    /// The TOML config file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// The running host's admin address (default: the config's `admin.listen`).
    #[arg(long)]
    pub admin: Option<String>,
}

/// The arguments of `sluice timers`.
#[derive(Debug, clap::Args)]
pub struct TimersArgs {
    /// The TOML config file (its `[store]`).
    #[arg(long, short)]
    pub config: PathBuf,
    /// How many of the soonest timers to list.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Print JSON (as the admin server's `/timers` does) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The arguments of `sluice redrive`.
#[derive(Debug, clap::Args)]
pub struct RedriveArgs {
    /// The TOML config file (the route, the handlers, the brokers).
    #[arg(long, short)]
    pub config: PathBuf,
    /// The dead-letter topic.
    #[arg(long)]
    pub dlq: String,
    /// Only this key's dead letters (nothing is committed then).
    #[arg(long)]
    pub key: Option<String>,
    /// Print each dead letter's outcome and outputs as JSON lines;
    /// execute and commit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// A running host's admin address, to un-park keys in at once
    /// (repeatable; default: the config's `admin.listen`).
    #[arg(long)]
    pub admin: Vec<String>,
}

/// The arguments of `sluice new`.
#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The handler's name (lowercase letters, digits and dashes); also
    /// the project's directory.
    pub name: String,
    /// The language to write it in.
    #[arg(long, value_enum)]
    pub lang: Lang,
    /// Where to create the project's directory (default: here).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
}

/// The arguments of `sluice inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The component file.
    pub file: PathBuf,
    /// A TOML config: its limits apply, and its routes are shown.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}
