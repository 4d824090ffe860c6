//! The admin HTTP server: `/handlers` (every handler version and its state,
//! JSON; what `sluice handlers` shows), `/metrics` (Prometheus text),
//! `/healthz` (the process serves) and `/readyz` (the group is joined and no
//! circuit breaker is open; every route has a version serving from start). Read-only; it
//! listens where `[admin] listen` says (a bare port: on 127.0.0.1).

use std::fmt::Write as _;
use std::sync::Arc;

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

/// What the endpoints read.
#[derive(Clone)]
pub(crate) struct State {
    registry: Arc<Registry>,
    telemetry: Arc<Telemetry>,
    breakers: Arc<Breakers>,
    health: Arc<Health>,
    offsets: Arc<Offsets>,
}

impl State {
    pub(crate) fn new(
        registry: Arc<Registry>,
        telemetry: Arc<Telemetry>,
        breakers: Arc<Breakers>,
        health: Arc<Health>,
        offsets: Arc<Offsets>,
    ) -> Self {
        State {
            registry,
            telemetry,
            breakers,
            health,
            offsets,
        }
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
