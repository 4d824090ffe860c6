//! The `sluice` binary: parse arguments, set up logging, call the library.

mod cli;
mod commands;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use sluice::telemetry::EscapedFields;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

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
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        // Guests supply much of what is logged: no value may break a line.
        LogFormat::Text => logs
            .with_ansi(std::io::stderr().is_terminal())
            .fmt_fields(EscapedFields)
            .init(),
        // Each span's close is a line with its fields and timings: the
        // spans of a message can be collected from the log.
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_span_events(FmtSpan::CLOSE)
            .init(),
    }
    match execute(cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command; its function says what the command does.
fn execute(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => commands::run(args),
        Command::Replay(args) => commands::replay(args),
        Command::Handlers(args) => commands::handlers(args),
        Command::Redrive(args) => commands::redrive(args),
        Command::New(args) => commands::new(args),
        Command::Inspect(args) => commands::inspect(args),
    }
}
