//! The status page at `/`: charts of the last minutes, then every route and
//! handler version with its state
//! and counts, latency, lag, open breakers, recent dead letters, timers and
//! shadow differences. Plain server-rendered HTML that refreshes itself; no script,
//! no build step.

use std::fmt::Write as _;
use std::time::Duration;

use super::charts::{Series, line_chart};
use super::handler_page::describe;
use super::history::RouteSample;
use super::{STYLE, State, counts_of, escape};
use crate::telemetry::{Phase, utc};

/// Seconds between the page's refreshes.
const REFRESH_SECONDS: u32 = 2;

/// The last minutes as charts: messages handled and dead-lettered per
/// second and lag, per route; each stage's p99; with the swaps, rollbacks
/// and opened breakers marked.
fn charts(state: &State, html: &mut String) {
    let history = state.history.snapshot();
    let times: Vec<u64> = history.samples.iter().map(|s| s.at).collect();
    let per_route = |value: &dyn Fn(&RouteSample) -> Option<f64>| -> Vec<Series> {
        history
            .routes
            .iter()
            .enumerate()
            .map(|(index, topic)| Series {
                name: topic.clone(),
                values: history
                    .samples
                    .iter()
                    .map(|sample| value(&sample.routes[index]))
                    .collect(),
            })
            .collect()
    };
    let stages: Vec<Series> = history
        .stages
        .iter()
        .enumerate()
        .map(|(index, stage)| Series {
            name: (*stage).to_owned(),
            values: history
                .samples
                .iter()
                .map(|sample| sample.stages[index].p99_ms)
                .collect(),
        })
        .collect();
    html.push_str("<h2>Last minutes</h2><div class=\"charts\">");
    for (id, title, series) in [
        (
            "chart-handled",
            "messages handled per second, per route",
            per_route(&|r| Some(r.handled as f64)),
        ),
        (
            "chart-dead-letters",
            "dead letters per second, per route",
            per_route(&|r| Some(r.dead_lettered as f64)),
        ),
        (
            "chart-lag",
            "lag (messages behind the end), per route",
            per_route(&|r| r.lag.map(|lag| lag as f64)),
        ),
        ("chart-latency", "p99 latency per stage (ms)", stages),
        (
            "chart-timers",
            "timers pending",
            vec![Series {
                name: "pending".into(),
                values: history
                    .samples
                    .iter()
                    .map(|s| s.timers_pending.map(|n| n as f64))
                    .collect(),
            }],
        ),
        (
            "chart-timer-lateness",
            "timer lateness p99 (ms), from due to published",
            vec![Series {
                name: "lateness p99".into(),
                values: history
                    .samples
                    .iter()
                    .map(|s| s.timer_lateness.p99_ms)
                    .collect(),
            }],
        ),
    ] {
        html.push_str(&line_chart(id, title, &times, &series, &history.markers));
    }
    html.push_str("</div>");
}

fn millis(duration: Option<Duration>) -> String {
    duration.map_or_else(
        || "-".to_owned(),
        |d| format!("{:.1} ms", d.as_secs_f64() * 1000.0),
    )
}

/// The pending timers (as the firing task last counted them: the page
/// never waits for the store) and what this host fired.
fn timers(state: &State, html: &mut String) {
    let (fired, lateness) = state.parts.telemetry.timers_fired();
    let _ = write!(
        html,
        "<h2>Timers</h2><p id=\"timers-fired\">fired by this host: {fired}, lateness p50 {}, p99 {}</p>",
        millis(lateness.quantile(0.5)),
        millis(lateness.quantile(0.99)),
    );
    let Some(upcoming) = state.parts.timers.upcoming() else {
        html.push_str("<p id=\"timers-pending\">no store read yet</p>");
        return;
    };
    let _ = write!(
        html,
        "<p id=\"timers-pending\">{} pending</p><table id=\"timers\"><tr><th>route</th>\
         <th>id</th><th>due</th><th>topic</th></tr>",
        upcoming.pending
    );
    for timer in &upcoming.soonest {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&timer.route),
            escape(&timer.id),
            utc(timer.due),
            escape(&timer.topic),
        );
    }
    html.push_str("</table>");
}

/// The whole page.
pub(super) fn render(state: &State) -> String {
    let mut html = String::new();
    let unready = state.unready();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>sluice status</title><style>{STYLE}\
         .ok{{color:#060}}.bad{{color:#a00}}.charts{{display:flex;flex-wrap:wrap;gap:1em}}\
         figure{{margin:0}}figcaption{{font-weight:bold}}.legend{{list-style:none;padding:0;margin:.2em 0;font-size:.85em}}\
         .legend li{{display:inline;margin-right:1em}}</style></head><body><h1>sluice</h1>"
    );
    if unready.is_empty() {
        html.push_str("<p id=\"readiness\" class=\"ok\">ready</p>");
    } else {
        let _ = write!(
            html,
            "<p id=\"readiness\" class=\"bad\">not ready: {}</p>",
            escape(&unready.join("; "))
        );
    }

    charts(state, &mut html);

    html.push_str(
        "<h2>Routes</h2><table id=\"routes\"><tr><th>topic</th><th>handler</th>\
         <th>state</th><th>parked keys</th></tr>",
    );
    let parked = state.parts.controls.parked_keys();
    for route in state.routes.iter() {
        let (topic, handler) = (&route.topic, &route.handler);
        let (class, running) = match state.parts.controls.is_paused(topic) {
            true => ("bad", "paused"),
            false => ("ok", "running"),
        };
        let keys: usize = parked
            .iter()
            .filter(|((t, _), _)| t == topic)
            .map(|(_, n)| n)
            .sum();
        let _ = write!(
            html,
            "<tr><td>{}</td><td><a href=\"/handlers/{handler}\">{handler}</a></td>\
             <td class=\"{class}\">{running}</td><td>{keys}</td></tr>",
            escape(topic),
            handler = escape(handler)
        );
    }
    html.push_str("</table>");

    html.push_str(
        "<h2>Handler versions</h2><table id=\"versions\"><tr><th>handler</th><th>version</th>\
         <th>state</th><th>handled</th><th>dead-lettered</th><th>skipped</th><th>msg/s</th></tr>",
    );
    let counts = state.parts.telemetry.by_version();
    let rates = state.rates(&counts);
    for version in state.parts.registry.status() {
        let (label, detail) = describe(&version.state);
        let counted = counts_of(&counts, &version.handler, &version.version);
        let rate = rates
            .iter()
            .find(|(h, v, _)| *h == version.handler && *v == version.version)
            .map_or(0.0, |(_, _, r)| *r);
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td title=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{rate:.1}</td></tr>",
            escape(&version.handler),
            escape(&version.version),
            escape(&detail),
            escape(&label),
            counted[0],
            counted[1],
            counted[2],
        );
    }
    html.push_str("</table>");

    html.push_str("<h2>Latency</h2><table id=\"latency\"><tr><th>stage</th><th>count</th><th>p50</th><th>p99</th></tr>");
    for phase in Phase::ALL {
        let histogram = state.parts.telemetry.phase(phase);
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            phase.as_str(),
            histogram.count(),
            millis(histogram.quantile(0.5)),
            millis(histogram.quantile(0.99)),
        );
    }
    html.push_str("</table>");

    html.push_str("<h2>Consumer lag</h2><table id=\"lag\"><tr><th>partition</th><th>lag</th></tr>");
    for ((topic, partition), lag) in state.parts.health.current_lags() {
        let _ = write!(
            html,
            "<tr><td>{}[{partition}]</td><td>{lag}</td></tr>",
            escape(&topic)
        );
    }
    html.push_str("</table>");

    let open = state.parts.breakers.not_closed();
    html.push_str("<h2>Open breakers</h2><ul id=\"breakers\">");
    if open.is_empty() {
        html.push_str("<li>none</li>");
    }
    for target in open {
        let _ = write!(html, "<li class=\"bad\">{}</li>", escape(&target));
    }
    html.push_str("</ul>");

    html.push_str(
        "<h2>Recent dead letters</h2><table id=\"dead-letters\"><tr><th>input</th><th>stage</th>\
         <th>reason</th><th>detail</th></tr>",
    );
    for dead in state.parts.telemetry.recent_dead_letters() {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&dead.input),
            dead.stage,
            dead.reason,
            escape(&dead.detail),
        );
    }
    html.push_str("</table>");

    timers(state, &mut html);

    let (compared, differed) = state.parts.telemetry.shadow_counts();
    let _ = write!(
        html,
        "<h2>Shadow</h2><p id=\"shadow\">{compared} messages compared, {differed} differed</p></body></html>"
    );
    html
}
