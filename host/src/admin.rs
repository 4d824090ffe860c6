//! The admin HTTP server: `/handlers` (every handler version and its state,
//! JSON; what `sluice handlers` shows) and `/metrics` (Prometheus text).
//! Read-only; it listens where `[admin] listen` says, 127.0.0.1 in examples.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::State as Extract;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::registry::{Registry, VersionState, stopped};
use crate::telemetry::Telemetry;

/// What the endpoints read.
#[derive(Clone)]
pub(crate) struct State {
    registry: Arc<Registry>,
    telemetry: Arc<Telemetry>,
}

impl State {
    pub(crate) fn new(registry: Arc<Registry>, telemetry: Arc<Telemetry>) -> Self {
        State {
            registry,
            telemetry,
        }
    }
}

/// Binds the admin address (port 0 picks a free one; the log says which).
pub(crate) async fn bind(listen: &str) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(listen).await?;
    tracing::info!(address = %listener.local_addr()?, "admin server listening");
    Ok(listener)
}

/// Serves until `stop` turns true.
pub(crate) async fn serve(listener: TcpListener, state: State, stop: watch::Receiver<bool>) {
    let app = Router::new()
        .route("/handlers", get(handlers))
        .route("/metrics", get(metrics))
        .with_state(state);
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped(stop))
        .await
    {
        tracing::error!(%error, "admin server failed");
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
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// A Prometheus label value: backslash, quote and newline escaped.
pub(crate) fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
