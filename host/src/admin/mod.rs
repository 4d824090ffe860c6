//! The admin HTTP server: `/handlers` (every handler version and its state,
//! JSON; what `sluice handlers` shows), `/metrics` (Prometheus text),
//! `/healthz` (the process serves) and `/readyz` (the group is joined and no
//! circuit breaker is open; every route has a version serving from start). Read-only; it
//! listens where `[admin] listen` says (a bare port: on 127.0.0.1).

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::State as Extract;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::policy::breaker::Breakers;
use crate::registry::{Registry, VersionState, stopped};
use crate::schedule::offsets::Offsets;
use crate::telemetry::{Health, Telemetry};

mod page;

/// What the endpoints read.
#[derive(Clone)]
pub(crate) struct State {
    registry: Arc<Registry>,
    telemetry: Arc<Telemetry>,
    breakers: Arc<Breakers>,
    health: Arc<Health>,
    offsets: Arc<Offsets>,
    /// Each route's topic and handler, for the status page.
    routes: Arc<Vec<(String, String)>>,
    /// The last sample of the per-version counts, for rates.
    sample: Arc<Mutex<Sample>>,
}

/// Messages counted per version at an instant.
struct Sample {
    at: Instant,
    totals: Vec<(String, String, u64)>,
}

impl State {
    pub(crate) fn new(
        registry: Arc<Registry>,
        telemetry: Arc<Telemetry>,
        breakers: Arc<Breakers>,
        health: Arc<Health>,
        offsets: Arc<Offsets>,
        routes: Vec<(String, String)>,
    ) -> Self {
        State {
            registry,
            telemetry,
            breakers,
            health,
            offsets,
            routes: Arc::new(routes),
            sample: Arc::new(Mutex::new(Sample {
                at: Instant::now(),
                totals: Vec::new(),
            })),
        }
    }

    /// Messages per second per version since the last sample (at least a
    /// second ago; the first since the server started), taking a new one.
    fn rates(&self, counts: &[(String, String, [u64; 3])]) -> Vec<(String, String, f64)> {
        let totals: Vec<(String, String, u64)> = counts
            .iter()
            .map(|(h, v, c)| (h.clone(), v.clone(), c.iter().sum()))
            .collect();
        let mut sample = self.sample.lock().expect("sample lock");
        let seconds = sample.at.elapsed().as_secs_f64().max(1e-3);
        let rates = totals
            .iter()
            .map(|(h, v, now)| {
                let before = sample
                    .totals
                    .iter()
                    .find(|(sh, sv, _)| sh == h && sv == v)
                    .map_or(0, |(_, _, n)| *n);
                (
                    h.clone(),
                    v.clone(),
                    now.saturating_sub(before) as f64 / seconds,
                )
            })
            .collect();
        if seconds >= 1.0 {
            *sample = Sample {
                at: Instant::now(),
                totals,
            };
        }
        rates
    }

    /// Why the host is not ready, if it is not: one line per reason. (Every
    /// route has a version serving: a host does not start otherwise.)
    fn unready(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if !self.health.has_joined() {
            reasons.push("the consumer has not joined its group yet".to_owned());
        }
        for target in self.breakers.not_closed() {
            reasons.push(format!("circuit breaker open: {target}"));
        }
        reasons
    }
}

/// Binds the admin address (port 0 picks a free one; the log says which).
pub(crate) async fn bind(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(address).await?;
    tracing::info!(address = %listener.local_addr()?, "admin server listening");
    Ok(listener)
}

/// Serves until `stop` turns true.
pub(crate) async fn serve(listener: TcpListener, state: State, stop: watch::Receiver<bool>) {
    let app = Router::new()
        .route("/", get(status_page))
        .route("/handlers", get(handlers))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped(stop))
        .await
    {
        tracing::error!(%error, "admin server failed");
    }
}

async fn status_page(Extract(state): Extract<State>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/html; charset=utf-8")],
        page::render(&state),
    )
}

async fn healthz() -> impl IntoResponse {
    "ok\n"
}

/// 200 `ready`, or 503 with the reasons, one per line.
async fn readyz(Extract(state): Extract<State>) -> impl IntoResponse {
    let reasons = state.unready();
    if reasons.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{}\n", reasons.join("\n")),
        )
    }
}

async fn handlers(Extract(state): Extract<State>) -> impl IntoResponse {
    let body = serde_json::to_string_pretty(&state.registry.status()).expect("statuses serialize");
    ([(CONTENT_TYPE, "application/json")], body)
}

async fn metrics(Extract(state): Extract<State>) -> impl IntoResponse {
    let mut out = String::new();
    out.push_str("# HELP sluice_handler_version_info Handler version files and their state.\n");
    out.push_str("# TYPE sluice_handler_version_info gauge\n");
    for v in state.registry.status() {
        let (state, reason) = match &v.state {
            VersionState::Active => ("active", None),
            VersionState::Canary { .. } => ("canary", None),
            VersionState::Shadow => ("shadow", None),
            VersionState::Standby => ("standby", None),
            VersionState::Rejected { reason } => ("rejected", Some(reason)),
            VersionState::RolledBack { reason } => ("rolled-back", Some(reason)),
        };
        let _ = write!(
            out,
            "sluice_handler_version_info{{handler=\"{}\",version=\"{}\",state=\"{state}\"",
            label(&v.handler),
            label(&v.version)
        );
        if let Some(reason) = reason {
            let _ = write!(out, ",reason=\"{}\"", label(reason));
        }
        out.push_str("} 1\n");
    }
    out.push_str("# HELP sluice_handler_swaps_total Handler version swaps since start.\n");
    out.push_str("# TYPE sluice_handler_swaps_total counter\n");
    let _ = writeln!(out, "sluice_handler_swaps_total {}", state.registry.swaps());
    state.telemetry.write_metrics(&mut out);
    state.breakers.write_metrics(&mut out);
    out.push_str("# HELP sluice_instances Live instances per handler version in service.\n");
    out.push_str("# TYPE sluice_instances gauge\n");
    let serving = state.registry.serving_handlers();
    let gauges = || {
        serving.iter().filter_map(|h| {
            let labels = format!(
                "handler=\"{}\",version=\"{}\"",
                label(h.name()),
                label(h.version())
            );
            h.gauges().map(|g| (labels, g))
        })
    };
    for (labels, g) in gauges() {
        let _ = writeln!(out, "sluice_instances{{{labels}}} {}", g.instances());
    }
    out.push_str(
        "# HELP sluice_guest_memory_bytes Linear memory held by a version's live instances.\n",
    );
    out.push_str("# TYPE sluice_guest_memory_bytes gauge\n");
    for (labels, g) in gauges() {
        let _ = writeln!(
            out,
            "sluice_guest_memory_bytes{{{labels}}} {}",
            g.memory_bytes()
        );
    }
    state.health.write_metrics(&mut out);
    out.push_str("# HELP sluice_in_flight Messages received and not yet committed.\n");
    out.push_str("# TYPE sluice_in_flight gauge\n");
    let _ = writeln!(out, "sluice_in_flight {}", state.offsets.in_flight());
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// A Prometheus label value: backslash, quote and newline escaped.
pub(crate) fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
