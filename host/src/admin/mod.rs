//! The admin HTTP server: `/handlers` (every handler version and its state,
//! JSON; what `sluice handlers` shows), `/timers?limit=N` (how many timers
//! are pending and the soonest, from the store: JSON), `/metrics`
//! (OpenMetrics text, metrics.rs),
//! `/healthz` (the process serves) and `/readyz` (the group is joined and no
//! circuit breaker is open; every route has a version serving from start),
//! and the status page at `/`: its tables come from one snapshot that
//! `/api/overview` serves (overview.rs), its charts of the last minutes from
//! the samples `/api/history` serves (history.rs). Each handler has a page,
//! `/handlers/{name}`, and its JSON, `/api/handlers/{name}`. It listens where `[admin]
//! listen` says (a bare port: on 127.0.0.1).
//!
//! Calls that change state need the configured token as a bearer token (and
//! are refused when none is configured): `POST /routes/{topic}/pause` and
//! `/resume` (messages in flight finish; nothing more is fetched), and
//! `POST /routes/{topic}/unpark?partition=P&key=K&through=O`, which
//! `sluice redrive` calls once a parked key's dead letters are re-driven.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::{Path, Query, State as Extract};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, Limits, Route};
use crate::policy::breaker::Breakers;
use crate::registry::{Registry, stopped};
use crate::schedule::Controls;
use crate::schedule::chains::Unpark;
use crate::source::offsets::Offsets;
use crate::telemetry::{Health, Telemetry};
use crate::timers::Timers;
use crate::workers::budget::ByteBudget;

mod charts;
mod handler_page;
mod history;
pub(crate) mod metrics;
mod overview;
mod page;

use history::History;
use overview::Overview;

/// Text made safe for HTML and SVG, for every page.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The style every page shares.
const STYLE: &str = "body{font-family:sans-serif;margin:1.5em}\
     table{border-collapse:collapse;margin-bottom:1.5em}\
     td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}";

/// The style of the pages' charts.
const CHART_STYLE: &str = ".charts{display:flex;flex-wrap:wrap;gap:1em}\
     figure{margin:0}figcaption{font-weight:bold}\
     .legend{list-style:none;padding:0;margin:.2em 0;font-size:.85em}\
     .legend li{display:inline;margin-right:1em}";

/// What the endpoints read.
#[derive(Clone)]
pub(crate) struct State {
    parts: Parts,
    /// What state-changing calls must carry; none: they are refused.
    token: Option<Arc<str>>,
    /// The routes, for the pages.
    routes: Arc<Vec<Route>>,
    /// The limits handlers run under, for their pages.
    limits: Arc<Limits>,
    /// Where each handler's shadow differences go, by handler name.
    diff_topics: Arc<BTreeMap<String, String>>,
    /// The last sample of the per-version counts, for rates.
    sample: Arc<Mutex<Sample>>,
    /// The last minutes, for the charts and `/api/history`.
    history: Arc<History>,
}

/// Messages counted per version at an instant.
struct Sample {
    at: Instant,
    totals: Vec<(String, String, u64)>,
}

/// What the admin server reads, and what it may change.
#[derive(Clone)]
pub(crate) struct Parts {
    pub(crate) registry: Arc<Registry>,
    pub(crate) telemetry: Arc<Telemetry>,
    pub(crate) breakers: Arc<Breakers>,
    pub(crate) health: Arc<Health>,
    pub(crate) offsets: Arc<Offsets>,
    pub(crate) controls: Arc<Controls>,
    pub(crate) budget: Arc<ByteBudget>,
    pub(crate) timers: Arc<Timers>,
}

impl State {
    pub(crate) fn new(parts: Parts, config: &Config) -> Self {
        let routes = &config.routes;
        State {
            parts,
            token: config.admin.token().map(Arc::from),
            history: Arc::new(History::new(
                routes.iter().map(|route| route.topic.clone()).collect(),
            )),
            diff_topics: Arc::new(
                routes
                    .iter()
                    .map(|route| {
                        let topic = config.shadow_diff_topic(&route.handler);
                        (route.handler.clone(), topic)
                    })
                    .collect(),
            ),
            routes: Arc::new(routes.clone()),
            limits: Arc::new(config.limits.clone()),
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
        if !self.parts.health.has_joined() {
            reasons.push("the consumer has not joined its group yet".to_owned());
        }
        for target in self.parts.breakers.not_closed() {
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

/// Serves until `stop` turns true, sampling the host for the charts.
pub(crate) async fn serve(listener: TcpListener, state: State, stop: watch::Receiver<bool>) {
    let history = state.history.clone();
    let sampling = tokio::spawn({
        let (parts, stop) = (state.parts.clone(), stop.clone());
        async move { history.sample(parts, stop).await }
    });
    let app = Router::new()
        .route("/", get(status_page))
        .route("/api/overview", get(api_overview))
        .route("/api/history", get(api_history))
        .route("/handlers/{name}", get(handler_page))
        .route("/api/handlers/{name}", get(api_handler))
        .route("/handlers", get(handlers))
        .route("/timers", get(timers))
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/routes/{topic}/pause", post(pause))
        .route("/routes/{topic}/resume", post(resume))
        .route("/routes/{topic}/unpark", post(unpark))
        .with_state(state);
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped(stop))
        .await
    {
        tracing::error!(%error, "admin server failed");
    }
    sampling.abort();
}

/// The answer for a handler no route runs.
fn no_such_handler(name: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("no route runs handler {name:?}\n"),
    )
        .into_response()
}

/// A handler's page; 404 when no route runs it.
async fn handler_page(Extract(state): Extract<State>, Path(name): Path<String>) -> Response {
    match handler_page::view(&state, &name) {
        Some(view) => (
            [(CONTENT_TYPE, "text/html; charset=utf-8")],
            handler_page::render(&view),
        )
            .into_response(),
        None => no_such_handler(&name),
    }
}

/// What a handler's page shows, as JSON.
async fn api_handler(Extract(state): Extract<State>, Path(name): Path<String>) -> Response {
    match handler_page::view(&state, &name) {
        Some(view) => (
            [(CONTENT_TYPE, "application/json")],
            serde_json::to_string(&view).expect("a view serializes"),
        )
            .into_response(),
        None => no_such_handler(&name),
    }
}

/// The charts' samples and markers, as JSON.
async fn api_history(Extract(state): Extract<State>) -> impl IntoResponse {
    let body = serde_json::to_string(&state.history.snapshot()).expect("samples serialize");
    ([(CONTENT_TYPE, "application/json")], body)
}

/// What the page's tables show, as JSON.
async fn api_overview(Extract(state): Extract<State>) -> impl IntoResponse {
    let body = serde_json::to_string(&Overview::of(&state)).expect("an overview serializes");
    ([(CONTENT_TYPE, "application/json")], body)
}

async fn status_page(Extract(state): Extract<State>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/html; charset=utf-8")],
        page::render(&Overview::of(&state), &state.history.snapshot()),
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

/// The refusal of a state-changing call without the configured bearer
/// token: 403 when no token is configured, 401 when it is missing or wrong.
fn refusal(state: &State, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = &state.token else {
        return Some(
            (
                StatusCode::FORBIDDEN,
                "state-changing calls are off: configure [admin] token or SLUICE_ADMIN_TOKEN\n",
            )
                .into_response(),
        );
    };
    let given = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match given {
        Some(given) if same(given.as_bytes(), token.as_bytes()) => None,
        _ => Some(
            (
                StatusCode::UNAUTHORIZED,
                [(WWW_AUTHENTICATE, "Bearer")],
                "a valid admin token is needed: Authorization: Bearer <token>\n",
            )
                .into_response(),
        ),
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is
/// matched without regard to case, as HTTP auth schemes are (RFC 9110 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Equal bytes, compared in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

async fn pause(
    Extract(state): Extract<State>,
    Path(topic): Path<String>,
    headers: HeaderMap,
) -> Response {
    set_paused(&state, &topic, &headers, true)
}

async fn resume(
    Extract(state): Extract<State>,
    Path(topic): Path<String>,
    headers: HeaderMap,
) -> Response {
    set_paused(&state, &topic, &headers, false)
}

fn set_paused(state: &State, topic: &str, headers: &HeaderMap, paused: bool) -> Response {
    if let Some(refused) = refusal(state, headers) {
        return refused;
    }
    if !state.parts.controls.set_paused(topic, paused) {
        return (
            StatusCode::NOT_FOUND,
            format!("no route for topic {topic:?}\n"),
        )
            .into_response();
    }
    let done = if paused { "paused" } else { "resumed" };
    format!("{done} {topic}\n").into_response()
}

/// Which key to un-park, and through which of its re-driven offsets.
#[derive(Deserialize)]
struct UnparkQuery {
    partition: i32,
    /// The key as UTF-8 text; absent for the null key.
    key: Option<String>,
    through: i64,
}

/// `{"outcome": "unparked" | "not-parked" | "not-assigned" | "behind"}`,
/// with `last` (the last offset held behind the key) for `behind`.
async fn unpark(
    Extract(state): Extract<State>,
    Path(topic): Path<String>,
    Query(query): Query<UnparkQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refusal(&state, &headers) {
        return refused;
    }
    let tp = (topic, query.partition);
    let outcome =
        state
            .parts
            .controls
            .unpark(&tp, query.key.as_deref().map(str::as_bytes), query.through);
    let body = match outcome {
        Unpark::Done => {
            tracing::info!(topic = %tp.0, partition = tp.1, key = ?query.key, "key un-parked by re-drive");
            serde_json::json!({ "outcome": "unparked" })
        }
        Unpark::NotParked => serde_json::json!({ "outcome": "not-parked" }),
        Unpark::NotAssigned => serde_json::json!({ "outcome": "not-assigned" }),
        Unpark::Behind { last } => serde_json::json!({ "outcome": "behind", "last": last }),
    };
    ([(CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn handlers(Extract(state): Extract<State>) -> impl IntoResponse {
    let body =
        serde_json::to_string_pretty(&state.parts.registry.status()).expect("statuses serialize");
    ([(CONTENT_TYPE, "application/json")], body)
}

#[derive(Deserialize)]
struct TimersQuery {
    limit: Option<usize>,
}

/// The most timers `/timers` lists.
const MAX_LISTED: usize = 10_000;

async fn timers(Extract(state): Extract<State>, Query(query): Query<TimersQuery>) -> Response {
    let limit = query.limit.unwrap_or(100).min(MAX_LISTED);
    match state.parts.timers.list(limit).await {
        Ok(upcoming) => (
            [(CONTENT_TYPE, "application/json")],
            upcoming.to_json().to_string(),
        )
            .into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(CONTENT_TYPE, "application/json")],
            serde_json::json!({ "error": error.to_string() }).to_string(),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_matched_without_regard_to_case() {
        for value in ["Bearer s3cret", "bearer s3cret", "BEARER  s3cret"] {
            assert_eq!(bearer_token(value), Some("s3cret"), "{value}");
        }
        for value in ["Basic s3cret", "Bearers3cret", "Bearer ", "s3cret"] {
            assert_eq!(bearer_token(value), None, "{value}");
        }
    }
}
