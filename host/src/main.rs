//! The `sluice` binary: parse arguments, set up logging, call the library.

/// `eprintln!` that never panics: a line for whoever reads stderr, dropped
/// if that reader went away (`sluice ... 2>&1 | head`).
macro_rules! tell {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod cli;
mod commands;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use sluice::telemetry::EscapedFields;
use sluice::telemetry::otlp::span_layer;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Layer};

use cli::{Cli, Command, LogFormat, RedriveArgs};

// The message path allocates small short-lived buffers on several threads;
// glibc's malloc spent ~30% of the host's CPU on them (P1 profile, issue 19).
// `no_thp` keeps mimalloc off transparent huge pages, which otherwise lifted
// the flat-memory test's peak RSS from ~100 to ~157 MiB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Run(_) | Command::Redrive(RedriveArgs { dry_run: false, .. }) => "info",
        _ => "warn",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt::layer().with_writer(|| LogWriter);
    let logs = match cli.log_format {
        // Guests supply much of what is logged: no value may break a line.
        LogFormat::Text => logs
            .with_ansi(std::io::stderr().is_terminal())
            .fmt_fields(EscapedFields)
            .boxed(),
        // Each span's close is a line with its fields and timings: the
        // spans of a message can be collected from the log.
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_span_events(FmtSpan::CLOSE)
            .boxed(),
    };
    // Spans go to the OTLP export (when a run configures one) whatever
    // level the logs are at: each layer has its own filter.
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(span_layer())
        .init();
    match execute(cli.command) {
        Ok(code) => code,
        // The reader of the output went away (`sluice handlers | head`):
        // what it wanted was written; stop quietly, as Unix tools do.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            tell!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where logs go: stderr, dropping what cannot be written. A host whose log
/// reader went away goes on with its work; tracing-subscriber would report
/// the failed write with `eprint!`, which panics on a closed stderr.
struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// A write that failed because its reader is gone. The library wraps the
/// output's errors (replay, redrive), so the whole chain is searched. A
/// socket can fail with EPIPE too: a command asking a running host whose
/// connection broke that way would also end quietly.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Runs one command; its function says what the command does.
fn execute(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => commands::run(args),
        Command::Replay(args) => commands::replay(args),
        Command::Handlers(args) => commands::handlers(args),
        Command::Timers(args) => commands::timers(args),
        Command::Redrive(args) => commands::redrive(args),
        Command::New(args) => commands::new(args),
        Command::Inspect(args) => commands::inspect(args),
        Command::Check(args) => commands::check(args),
    }
}
