//! One function per command: what the binary does with its arguments.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use sluice::RunOptions;
use sluice::check;
use sluice::config::{Config, Limits};
use sluice::redrive::RedriveOptions;
use sluice::registry::{self, VersionState, VersionStatus};
use sluice::runtime::{Inspection, Runtime};
use sluice::scaffold::{Language, scaffold};
use sluice::source::range::Position;
use sluice::store::LazyStore;
use sluice::telemetry::{Stop, utc};
use sluice::timers;

use crate::cli::{
    self, CheckArgs, HandlersArgs, InspectArgs, NewArgs, RedriveArgs, ReplayArgs, RunArgs,
    TimersArgs,
};

/// `sluice run`: the host, until stopped (or drained).
pub(crate) fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let RunArgs {
        config,
        until_drained,
    } = args;
    let config = Config::load_with_environment(config.as_deref())?;
    let options = RunOptions {
        until_drained,
        keep_records: config.is_embedded(),
        ..RunOptions::default()
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start async runtime")?;
    let report = runtime.block_on(sluice::run(&config, options, stop_signal(&runtime)))?;
    summarize(std::io::stdout().lock(), &report.summary());
    if report.unfinished > 0 {
        tell!(
            "error: {} messages were unfinished at exit; they will be redelivered",
            report.unfinished
        );
        return Ok(ExitCode::FAILURE);
    }
    if report.stop == Stop::Requested {
        tracing::info!("stopped on request");
    }
    Ok(ExitCode::SUCCESS)
}

/// `sluice replay`: a handler on recorded messages, with no broker.
pub(crate) fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let ReplayArgs {
        handler,
        input,
        topic,
        brokers,
        from,
        to,
        against,
        deadline_ms,
        memory_mib,
        artifact_cache,
        no_artifact_cache,
    } = args;
    let limits = Limits {
        deadline: std::time::Duration::from_millis(deadline_ms),
        memory_mib,
        ..Limits::default()
    };
    let input = match (input, topic, brokers) {
        (Some(file), _, _) => sluice::replay::ReplayInput::File(file),
        (None, Some(topic), Some(brokers)) => sluice::replay::ReplayInput::Topic {
            brokers,
            topic,
            from: from.unwrap_or(Position::Edge),
            to: to.unwrap_or(Position::Edge),
        },
        _ => anyhow::bail!("replay needs --input FILE, or --topic T with --brokers B"),
    };
    // A progress bar on a terminal; nothing otherwise.
    let bar = indicatif::ProgressBar::with_draw_target(
        None,
        if std::io::stderr().is_terminal() {
            indicatif::ProgressDrawTarget::stderr()
        } else {
            indicatif::ProgressDrawTarget::hidden()
        },
    );
    let mut progress = |step| match step {
        sluice::replay::Progress::Total(total) => bar.set_length(total),
        sluice::replay::Progress::Done => bar.inc(1),
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let cache = match (artifact_cache, no_artifact_cache) {
        (_, true) => None,
        (Some(dir), false) => Some(dir),
        (None, false) => user_cache_dir().map(|dir| dir.join("sluice")),
    };
    let stats = sluice::replay::replay(
        &handler,
        &input,
        against.as_deref(),
        &limits,
        cache.as_deref(),
        &mut out,
        &mut progress,
    )?;
    bar.finish_and_clear();
    if against.is_some() {
        tell!(
            "{} messages replayed; the other version's outcome differs on {}",
            stats.succeeded + stats.failed,
            stats.differ
        );
    }
    if stats.checked > 0 {
        tell!(
            "{} of {} expectations met; {} not (their lines have \"matches\": false and what was \"expected\")",
            stats.checked - stats.mismatched,
            stats.checked,
            stats.mismatched
        );
    }
    Ok(if stats.mismatched > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `sluice handlers`: the handlers' versions and what they may reach.
pub(crate) fn handlers(args: HandlersArgs) -> anyhow::Result<ExitCode> {
    let HandlersArgs { config, admin } = args;
    let config = Config::load_with_environment(Some(&config))?;
    let configured = config.admin.address().map(|a| a.to_string());
    let statuses = match admin.as_ref().or(configured.as_ref()) {
        Some(address) => match live_handlers(address) {
            Ok(statuses) => statuses,
            Err(error) if admin.is_some() => return Err(error),
            Err(error) => {
                tell!("no running host answers ({error:#}); evaluating the handlers directory");
                registry::evaluate(&config, Runtime::for_config(&config)?)?
            }
        },
        None => registry::evaluate(&config, Runtime::for_config(&config)?)?,
    };
    print_handlers(&statuses)?;
    print_reach(&config, None)?;
    Ok(ExitCode::SUCCESS)
}

/// `sluice timers`: the pending timers, from the store.
pub(crate) fn timers(args: TimersArgs) -> anyhow::Result<ExitCode> {
    let TimersArgs {
        config,
        limit,
        json,
    } = args;
    let config = Config::load_with_environment(Some(&config))?;
    let store = LazyStore::new(config.store.clone(), config.base_dir.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start async runtime")?;
    let upcoming = runtime.block_on(timers::list(&store, limit))?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", upcoming.to_json())?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "{} pending", upcoming.pending)?;
    if !upcoming.soonest.is_empty() {
        writeln!(out, "{:<24} {:<32} {:<26} TOPIC", "ROUTE", "ID", "DUE")?;
    }
    for timer in &upcoming.soonest {
        writeln!(
            out,
            "{:<24} {:<32} {:<26} {}",
            timer.route,
            timer.id,
            utc(timer.due),
            timer.topic
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `sluice redrive`: dead letters through their handler again.
pub(crate) fn redrive(args: RedriveArgs) -> anyhow::Result<ExitCode> {
    let RedriveArgs {
        config,
        dlq,
        key,
        dry_run,
        admin,
    } = args;
    let config = Config::load_with_environment(Some(&config))?;
    let options = RedriveOptions { dlq, key, admin };
    if dry_run {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        let report = sluice::redrive::dry_run(&config, &options, &mut out)?;
        summarize(std::io::stderr(), &report.summary());
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start async runtime")?;
    let report = runtime.block_on(sluice::redrive::redrive(
        &config,
        &options,
        stop_signal(&runtime),
    ))?;
    summarize(std::io::stdout().lock(), &report.summary());
    let unfinished = report.run.as_ref().map_or(0, |run| run.unfinished);
    if unfinished > 0 {
        tell!("error: {unfinished} dead letters were unfinished at exit; run redrive again");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a command's summary. A reader that went away (`sluice run | head`)
/// does not change the exit status, which is the command's.
fn summarize(mut out: impl Write, summary: &str) {
    let _ = out.write_all(summary.as_bytes());
}

/// `sluice new`: a handler project.
pub(crate) fn new(args: NewArgs) -> anyhow::Result<ExitCode> {
    let NewArgs { name, lang, dir } = args;
    let language = match lang {
        cli::Lang::Rust => Language::Rust,
        cli::Lang::Js => Language::JavaScript,
        cli::Lang::Ts => Language::TypeScript,
        cli::Lang::Python => Language::Python,
    };
    let root = scaffold(&name, language, &dir)?;
    writeln!(
        std::io::stdout().lock(),
        "created {}; next:\n  cd {}\n  ./build\n  sluice replay --handler dist/{name}/0.1.0.wasm --input vectors.jsonl",
        root.display(),
        root.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `sluice check`: the config, its handlers, and (unless offline) the
/// brokers and the store, one line each; failing if any is a problem.
pub(crate) fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let CheckArgs { config, offline } = args;
    let mut out = std::io::stdout().lock();
    let config = match Config::load_with_environment(config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            writeln!(out, "{}", check::Finding::Problem(format!("{error}")))?;
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut findings = vec![check::Finding::Fine(format!(
        "config ({} routes)",
        config.routes.len()
    ))];
    findings.extend(check::handlers(&config));
    let runtime = tokio::runtime::Runtime::new().context("cannot start async runtime")?;
    if offline {
        findings.push(check::Finding::Fine(
            "brokers and store not asked (--offline)".into(),
        ));
    } else {
        findings.extend(check::brokers(&config));
        findings.extend(runtime.block_on(check::store(&config)));
    }
    findings.extend(runtime.block_on(check::otlp(&config, offline)));
    for finding in &findings {
        writeln!(out, "{finding}")?;
    }
    let problems = findings
        .iter()
        .filter(|f| matches!(f, check::Finding::Problem(_)))
        .count();
    Ok(if problems > 0 {
        writeln!(out, "{problems} problems")?;
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `sluice inspect`: a component's contract, and whether it instantiates.
pub(crate) fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let InspectArgs { file, config } = args;
    let config = config
        .map(|c| Config::load_with_environment(Some(&c)))
        .transpose()?;
    let runtime = match &config {
        Some(config) => Runtime::for_config(config)?,
        None => Runtime::new(&Limits::default())?,
    };
    let handler = registry::HandlerFile::from_path(&file).map(|f| f.name);
    let inspection = runtime.inspect(&file, handler.as_deref())?;
    print_inspection(&inspection)?;
    if let Some(config) = &config {
        let Some(handler) = &handler else {
            anyhow::bail!(
                "{} is not named like a handler file (<name>/<version>.wasm or <name>@<version>.wasm): no route can serve it",
                file.display()
            );
        };
        print_reach(config, Some(handler))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed at once, on
/// `runtime`, not when the future is first polled: a signal that comes while
/// the host is still starting (its admin server may already answer) is then
/// a stop request, not the default action of killing the process.
fn stop_signal(runtime: &tokio::runtime::Runtime) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let _context = runtime.enter();
    let mut interrupt = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stop requested");
    }
}

fn print_inspection(i: &Inspection) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "file      {} ({} bytes)", i.path.display(), i.size)?;
    writeln!(
        out,
        "contract  {} (runs as contract {})",
        i.contract,
        i.contract_version.as_str()
    )?;
    writeln!(out, "world     {}", i.kind.as_str())?;
    for (label, names) in [("exports", &i.exports), ("imports", &i.imports)] {
        for (n, name) in names.iter().enumerate() {
            writeln!(out, "{:<9} {name}", if n == 0 { label } else { "" })?;
        }
    }
    writeln!(
        out,
        "sandbox   instantiates (compiled in {} ms, instantiated in {:.2} ms)",
        i.compile_time.as_millis(),
        i.instantiate_time.as_secs_f64() * 1000.0
    )
}

/// What each route (of `handler`, or all) lets its handler reach through
/// the host, and what no handler ever reaches.
fn print_reach(config: &Config, handler: Option<&str>) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let list = |items: &[String]| match items.is_empty() {
        true => "nothing".to_owned(),
        false => items.join(", "),
    };
    let routes: Vec<_> = config
        .routes
        .iter()
        .filter(|r| handler.is_none_or(|h| r.handler == h))
        .collect();
    if routes.is_empty() {
        return writeln!(
            out,
            "\nno route serves {}",
            handler.unwrap_or("any handler")
        );
    }
    for route in &routes {
        writeln!(out, "\nroute {} -> {}", route.topic, route.handler)?;
        writeln!(out, "  publish   {}", list(route.publish_to()))?;
        writeln!(out, "  http      {}", list(&route.http.allow))?;
    }
    let mut dead_letters = config.dead_letter_topics();
    dead_letters.push("*.dlq".into());
    let mut diffs = config.shadow_diff_topics();
    diffs.push("*.shadow-diffs".into());
    writeln!(
        out,
        "\nnever     dead-letter topics ({}), shadow-diff topics ({}), Kafka-internal topics (__*)",
        dead_letters.join(", "),
        diffs.join(", ")
    )
}

/// A running host's handler versions, from its admin server.
fn live_handlers(address: &str) -> anyhow::Result<Vec<VersionStatus>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start async runtime")?;
    let url = format!("http://{address}/handlers");
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .get(&url)
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .await
            .with_context(|| format!("GET {url}"))?
            .error_for_status()?;
        let body = response.bytes().await?;
        serde_json::from_slice(&body)
            .with_context(|| format!("{url} answered something else than handler states"))
    })
}

fn print_handlers(statuses: &[VersionStatus]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<24} {:<14} {:<12} DETAIL",
        "HANDLER", "VERSION", "STATE"
    )?;
    for s in statuses {
        let (state, detail) = match &s.state {
            VersionState::Active => ("active".to_owned(), s.file.display().to_string()),
            VersionState::Canary { percent } => {
                (format!("canary {percent}%"), s.file.display().to_string())
            }
            VersionState::Shadow => ("shadow".to_owned(), s.file.display().to_string()),
            VersionState::Standby => ("standby".to_owned(), s.file.display().to_string()),
            VersionState::Rejected { reason } => ("rejected".to_owned(), reason.clone()),
            VersionState::RolledBack { reason } => ("rolled-back".to_owned(), reason.clone()),
        };
        writeln!(
            out,
            "{:<24} {:<14} {:<12} {detail}",
            s.handler, s.version, state
        )?;
    }
    Ok(())
}

/// The user's cache directory (`$XDG_CACHE_HOME`, else `~/.cache`), where
/// commands run by hand keep compiled components, as wasmtime's own CLI does.
fn user_cache_dir() -> Option<std::path::PathBuf> {
    let non_empty = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    non_empty("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| non_empty("HOME").map(|home| std::path::PathBuf::from(home).join(".cache")))
}
