//! `/metrics`: what every part of the host counts, written by
//! prometheus-client in the OpenMetrics text format at each scrape.

use axum::extract::State as Extract;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry as Metrics;

use super::State;
use crate::registry::VersionState;
use crate::telemetry::exposition::{Exposition, level, partition_labels, single, version_labels};

/// The exposition's media type (what Prometheus asks for first).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(super) async fn metrics(Extract(state): Extract<State>) -> impl IntoResponse {
    let mut metrics = Metrics::default();
    metrics.register_collector(Box::new(Scrape(state)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &metrics)
        .expect("writing to a String cannot fail");
    ([(CONTENT_TYPE, OPENMETRICS)], out)
}

/// One scrape of the host's state.
struct Scrape(State);

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

impl Collector for Scrape {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        expose(&self.0, &mut Exposition::new(encoder))
    }
}

/// Everything `/metrics` shows (and the OTLP export sends), into `metrics`.
pub(crate) fn expose(state: &State, metrics: &mut Exposition<'_>) -> std::fmt::Result {
    let parts = &state.parts;
    metrics.gauge(
        "sluice_handler_version_info",
        "Handler version files and their state.",
        parts.registry.status().into_iter().map(|v| {
            let (state, reason) = match v.state {
                VersionState::Active => ("active", None),
                VersionState::Canary { .. } => ("canary", None),
                VersionState::Shadow => ("shadow", None),
                VersionState::Standby => ("standby", None),
                VersionState::Rejected { reason } => ("rejected", Some(reason)),
                VersionState::RolledBack { reason } => ("rolled-back", Some(reason)),
            };
            let mut labels = version_labels(&v.handler, &v.version);
            labels.push(("state", state.to_owned()));
            labels.extend(reason.map(|reason| ("reason", reason)));
            (labels, 1)
        }),
    )?;
    metrics.counter(
        "sluice_handler_swaps_total",
        "Handler version swaps since start.",
        single(parts.registry.swaps()),
    )?;
    parts.telemetry.encode(metrics)?;
    if let Some(upcoming) = parts.timers.upcoming() {
        metrics.gauge(
            "sluice_timers_pending",
            "Timers pending in the store (every host's), as last counted.",
            single(upcoming.pending as i64),
        )?;
    }
    parts.breakers.encode(metrics)?;
    let serving = parts.registry.serving_handlers();
    let gauges = || {
        serving.iter().filter_map(|h| {
            h.gauges()
                .map(|g| (version_labels(h.name(), h.version()), g))
        })
    };
    metrics.gauge(
        "sluice_instances",
        "Live instances per handler version in service.",
        gauges().map(|(labels, g)| (labels, level(g.instances()))),
    )?;
    metrics.gauge(
        "sluice_guest_memory_bytes",
        "Linear memory held by a version's live instances.",
        gauges().map(|(labels, g)| (labels, level(g.memory_bytes()))),
    )?;
    metrics.counter(
        "sluice_guest_log_lines_dropped_total",
        "Guest log lines (stdout, stderr, log outputs) dropped over the rate limit.",
        gauges().map(|(labels, g)| (labels, g.log_lines_dropped())),
    )?;
    parts.health.encode(metrics)?;
    crate::telemetry::otlp::encode(metrics)?;
    for (name, help, value) in [
        (
            "sluice_held_output_bytes",
            "Bytes of handler outputs held while their effects run.",
            level(parts.budget.held()),
        ),
        (
            "sluice_held_output_bytes_cap",
            "The host's cap on them (max-in-flight-mib).",
            level(parts.budget.cap()),
        ),
        (
            "sluice_in_flight",
            "Messages received and not yet committed.",
            level(parts.offsets.in_flight()),
        ),
    ] {
        metrics.gauge(name, help, single(value))?;
    }
    metrics.gauge(
        "sluice_route_paused",
        "Whether an operator paused the route.",
        state.routes.iter().map(|route| {
            let paused = i64::from(parts.controls.is_paused(&route.topic));
            (vec![("topic", route.topic.clone())], paused)
        }),
    )?;
    metrics.gauge(
        "sluice_parked_keys",
        "Keys parked per partition assigned here.",
        parts
            .controls
            .parked_keys()
            .into_iter()
            .map(|((topic, partition), keys)| (partition_labels(topic, partition), level(keys))),
    )
}
