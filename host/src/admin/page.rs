//! The status page at `/`: charts of the last minutes, then every route and
//! handler version with its state
//! and counts, latency, lag, open breakers, recent dead letters, timers and
//! shadow differences. Plain server-rendered HTML that refreshes itself; no script,
//! no build step.

use std::fmt::Write as _;

use super::charts::{Series, line_chart};
use super::history::{RouteSample, Snapshot};
use super::overview::{Overview, VersionRow};
use super::{CHART_STYLE, STYLE, escape};
use crate::telemetry::{RecentDeadLetter, utc};

/// Seconds between the page's refreshes.
const REFRESH_SECONDS: u32 = 2;

/// The last minutes as charts: messages handled and dead-lettered per
/// second and lag, per route; each stage's p99; with the swaps, rollbacks
/// and opened breakers marked.
fn charts(history: &Snapshot, html: &mut String) {
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

/// Milliseconds as the tables write them.
fn millis(ms: Option<f64>) -> String {
    ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1} ms"))
}

/// The pending timers and what this host fired.
fn timers(overview: &Overview, html: &mut String) {
    let timers = &overview.timers;
    let _ = write!(
        html,
        "<h2>Timers</h2><p id=\"timers-fired\">fired by this host: {}, lateness p50 {}, p99 {}</p>",
        timers.fired,
        millis(timers.lateness_p50_ms),
        millis(timers.lateness_p99_ms),
    );
    let Some(pending) = timers.pending else {
        html.push_str("<p id=\"timers-pending\">no store read yet</p>");
        return;
    };
    let _ = write!(
        html,
        "<p id=\"timers-pending\">{pending} pending</p><table id=\"timers\"><tr><th>route</th>\
         <th>id</th><th>due</th><th>topic</th></tr>",
    );
    for timer in &timers.soonest {
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

/// A table of handler versions; `with_handler` adds the handler's column
/// (the overview lists every handler's).
pub(super) fn versions_table(versions: &[VersionRow], with_handler: bool, html: &mut String) {
    html.push_str("<table id=\"versions\"><tr>");
    if with_handler {
        html.push_str("<th>handler</th>");
    }
    html.push_str(
        "<th>version</th><th>state</th><th>handled</th><th>dead-lettered</th>\
         <th>skipped</th><th>msg/s</th></tr>",
    );
    for version in versions {
        html.push_str("<tr>");
        if with_handler {
            let _ = write!(html, "<td>{}</td>", escape(&version.handler));
        }
        let _ = write!(
            html,
            "<td>{}</td><td title=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td></tr>",
            escape(&version.version),
            escape(&version.detail),
            escape(&version.state),
            version.handled,
            version.dead_lettered,
            version.skipped,
            version.per_second,
        );
    }
    html.push_str("</table>");
}

/// A table of dead letters.
pub(super) fn dead_letters_table(dead_letters: &[RecentDeadLetter], html: &mut String) {
    html.push_str(
        "<table id=\"dead-letters\"><tr><th>input</th><th>stage</th>\
         <th>reason</th><th>detail</th></tr>",
    );
    for dead in dead_letters {
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
}

/// The whole page, from one reading of the tables and one of the charts.
pub(super) fn render(overview: &Overview, history: &Snapshot) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>sluice status</title><style>{STYLE}{CHART_STYLE}\
         .ok{{color:#060}}.bad{{color:#a00}}</style></head><body><h1>sluice</h1>"
    );
    if overview.unready.is_empty() {
        html.push_str("<p id=\"readiness\" class=\"ok\">ready</p>");
    } else {
        let _ = write!(
            html,
            "<p id=\"readiness\" class=\"bad\">not ready: {}</p>",
            escape(&overview.unready.join("; "))
        );
    }

    charts(history, &mut html);

    html.push_str(
        "<h2>Routes</h2><table id=\"routes\"><tr><th>topic</th><th>handler</th>\
         <th>state</th><th>parked keys</th></tr>",
    );
    for route in &overview.routes {
        let (class, running) = match route.paused {
            true => ("bad", "paused"),
            false => ("ok", "running"),
        };
        let _ = write!(
            html,
            "<tr><td>{}</td><td><a href=\"/handlers/{handler}\">{handler}</a></td>\
             <td class=\"{class}\">{running}</td><td>{}</td></tr>",
            escape(&route.topic),
            route.parked_keys,
            handler = escape(&route.handler)
        );
    }
    html.push_str("</table><h2>Handler versions</h2>");
    versions_table(&overview.versions, true, &mut html);

    html.push_str("<h2>Latency</h2><table id=\"latency\"><tr><th>stage</th><th>count</th><th>p50</th><th>p99</th></tr>");
    for stage in &overview.latency {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            stage.stage,
            stage.count,
            millis(stage.p50_ms),
            millis(stage.p99_ms),
        );
    }
    html.push_str("</table>");

    html.push_str("<h2>Consumer lag</h2><table id=\"lag\"><tr><th>partition</th><th>lag</th></tr>");
    for lag in &overview.lag {
        let _ = write!(
            html,
            "<tr><td>{}[{}]</td><td>{}</td></tr>",
            escape(&lag.topic),
            lag.partition,
            lag.lag
        );
    }
    html.push_str("</table>");

    html.push_str("<h2>Open breakers</h2><ul id=\"breakers\">");
    if overview.open_breakers.is_empty() {
        html.push_str("<li>none</li>");
    }
    for target in &overview.open_breakers {
        let _ = write!(html, "<li class=\"bad\">{}</li>", escape(target));
    }
    html.push_str("</ul><h2>Recent dead letters</h2>");
    dead_letters_table(&overview.dead_letters, &mut html);

    timers(overview, &mut html);

    let _ = write!(
        html,
        "<h2>Shadow</h2><p id=\"shadow\">{} messages compared, {} differed</p></body></html>",
        overview.shadow.compared, overview.shadow.differed
    );
    html
}
