//! A page per handler, `/handlers/{name}`, and the same view as JSON,
//! `/api/handlers/{name}`: its routes with the topics each may publish to,
//! its versions with their states and counts, each version's messages per
//! second over the last minutes, when each went active, how its canary and
//! its shadow are doing, its recent dead letters and the limits it runs
//! under. Both are made from one `HandlerView`.

use std::collections::VecDeque;
use std::fmt::Write as _;

use serde::Serialize;

use super::charts::{Series, line_chart};
use super::history::{Event, Marker, Sample};
use super::overview::{VersionRow, versions};
use super::page::{dead_letters_table, versions_table};
use super::{CHART_STYLE, STYLE, State, escape};
use crate::config::Limits;
use crate::registry::VersionState;
use crate::telemetry::{RecentDeadLetter, ShadowTally, utc};

/// Everything the page shows.
#[derive(Debug, Serialize)]
pub(super) struct HandlerView {
    name: String,
    routes: Vec<RouteView>,
    versions: Vec<VersionRow>,
    /// Each version's messages per second over the last minutes.
    throughput: Throughput,
    /// When a version went active while this host ran, oldest first.
    swaps: Vec<SwapView>,
    canary: CanaryView,
    shadow: ShadowView,
    /// The latest dead letters of its routes, newest first.
    dead_letters: Vec<RecentDeadLetter>,
    limits: Limits,
}

#[derive(Debug, Serialize)]
struct RouteView {
    topic: String,
    /// `None`: anywhere but sluice's own topics.
    publish_to: Option<Vec<String>>,
    dead_letter_topic: String,
    paused: bool,
}

/// The handler's share of the charts' samples.
#[derive(Debug, Serialize)]
struct Throughput {
    /// When each sample was taken, in milliseconds since the Unix epoch.
    at: Vec<u64>,
    /// Every version that ended a message during the window.
    versions: Vec<VersionLine>,
    /// Its versions' swaps and rollbacks within the window.
    markers: Vec<Marker>,
}

#[derive(Debug, Serialize)]
struct VersionLine {
    version: String,
    /// Per sample.
    handled: Vec<u64>,
    dead_lettered: Vec<u64>,
}

#[derive(Debug, Serialize)]
struct SwapView {
    at: u64,
    version: String,
}

/// The canary: who takes a share of keys now, what it did over the rule's
/// window, the rule, and the versions it has rolled back.
#[derive(Debug, Serialize)]
struct CanaryView {
    /// The version taking a share of keys now, and the share in percent.
    serving: Option<(String, f64)>,
    /// Over the `window_ms` up to its last message: the canary's messages
    /// handled and dead-lettered.
    handled: u64,
    dead_lettered: u64,
    /// The rule: rolled back above this share of dead letters over the
    /// window, once it has handled `min_messages` in it.
    window_ms: u64,
    max_dead_letter_rate: f64,
    min_messages: u64,
    /// Versions taken out of service, with why.
    rolled_back: Vec<(String, String)>,
}

/// The shadow: which version runs on the side, what its comparisons came
/// to, and where the differences go.
#[derive(Debug, Serialize)]
struct ShadowView {
    serving: Option<String>,
    diff_topic: String,
    /// Every version that ran as its shadow since start.
    versions: Vec<ShadowTally>,
}

/// Handler `name`'s versions in `samples`, and its markers.
fn throughput(samples: &VecDeque<Sample>, markers: &VecDeque<Marker>, name: &str) -> Throughput {
    let mut lines: Vec<VersionLine> = Vec::new();
    let count = samples.len();
    for (index, sample) in samples.iter().enumerate() {
        for ended in sample.versions.iter().filter(|v| &*v.handler == name) {
            let line = match lines.iter().position(|l| *l.version == *ended.version) {
                Some(at) => &mut lines[at],
                None => {
                    lines.push(VersionLine {
                        version: ended.version.to_string(),
                        handled: vec![0; count],
                        dead_lettered: vec![0; count],
                    });
                    lines.last_mut().expect("just pushed")
                }
            };
            line.handled[index] = ended.handled;
            line.dead_lettered[index] = ended.dead_lettered;
        }
    }
    Throughput {
        at: samples.iter().map(|s| s.at).collect(),
        versions: lines,
        markers: markers
            .iter()
            .filter(|m| match &m.event {
                Event::Swap { handler, .. } | Event::RolledBack { handler, .. } => handler == name,
                Event::BreakerOpened { .. } => false,
            })
            .cloned()
            .collect(),
    }
}

/// The view of handler `name`; `None` when no route runs it.
pub(super) fn view(state: &State, name: &str) -> Option<HandlerView> {
    let routes: Vec<RouteView> = state
        .routes
        .iter()
        .filter(|route| route.handler == name)
        .map(|route| RouteView {
            topic: route.topic.clone(),
            publish_to: route.publish_to.clone(),
            dead_letter_topic: route.dead_letter_topic(),
            paused: state.parts.controls.is_paused(&route.topic),
        })
        .collect();
    if routes.is_empty() {
        return None;
    }
    let statuses: Vec<_> = state
        .parts
        .registry
        .status()
        .into_iter()
        .filter(|version| version.handler == name)
        .collect();
    let (rule, handled, dead_lettered) = state.parts.registry.selection(name).canary_window();
    let canary = CanaryView {
        serving: statuses.iter().find_map(|v| match v.state {
            VersionState::Canary { percent } => Some((v.version.clone(), percent)),
            _ => None,
        }),
        handled,
        dead_lettered,
        window_ms: rule.window.as_millis() as u64,
        max_dead_letter_rate: rule.max_dead_letter_rate,
        min_messages: rule.min_messages,
        rolled_back: statuses
            .iter()
            .filter_map(|v| match &v.state {
                VersionState::RolledBack { reason } => Some((v.version.clone(), reason.clone())),
                _ => None,
            })
            .collect(),
    };
    let shadow = ShadowView {
        serving: statuses
            .iter()
            .find(|v| v.state == VersionState::Shadow)
            .map(|v| v.version.clone()),
        diff_topic: state.diff_topics.get(name).cloned().unwrap_or_default(),
        versions: state
            .parts
            .telemetry
            .shadows()
            .into_iter()
            .filter(|tally| tally.handler == name)
            .collect(),
    };
    let swaps = state
        .history
        .swaps()
        .into_iter()
        .filter_map(|marker| match marker.event {
            Event::Swap { handler, version } if handler == name => Some(SwapView {
                at: marker.at,
                version,
            }),
            _ => None,
        })
        .collect();
    let dead_letters = state
        .parts
        .telemetry
        .recent_dead_letters()
        .into_iter()
        .filter(|dead| {
            routes.iter().any(|route| {
                dead.input
                    .strip_prefix(route.topic.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
            })
        })
        .collect();
    Some(HandlerView {
        name: name.to_owned(),
        routes,
        versions: versions(state, |version| version.handler == name),
        // Read in place: a copy of the whole ring (every route's samples)
        // would be most of the page's cost.
        throughput: state
            .history
            .read(|samples, markers| throughput(samples, markers, name)),
        swaps,
        canary,
        shadow,
        dead_letters,
        limits: state.limits.as_ref().clone(),
    })
}

/// The page of `view`.
pub(super) fn render(view: &HandlerView) -> String {
    let name = escape(&view.name);
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>sluice: {name}</title>\
         <style>{STYLE}{CHART_STYLE}</style></head><body>\
         <p><a href=\"/\">sluice</a></p><h1 id=\"handler\">{name}</h1>\
         <h2>Routes</h2><table id=\"routes\"><tr><th>topic</th><th>may publish to</th>\
         <th>dead letters to</th><th>state</th></tr>"
    );
    for route in &view.routes {
        let publish_to = route
            .publish_to
            .as_ref()
            .map_or("anywhere but sluice's own topics".to_owned(), |topics| {
                topics.join(", ")
            });
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&route.topic),
            escape(&publish_to),
            escape(&route.dead_letter_topic),
            if route.paused { "paused" } else { "running" }
        );
    }
    html.push_str("</table><h2>Versions</h2>");
    versions_table(&view.versions, false, &mut html);

    let throughput = &view.throughput;
    let lines = |value: fn(&VersionLine) -> &Vec<u64>| -> Vec<Series> {
        throughput
            .versions
            .iter()
            .map(|line| Series {
                name: line.version.clone(),
                values: value(line).iter().map(|n| Some(*n as f64)).collect(),
            })
            .collect()
    };
    html.push_str("<h2>Last minutes</h2><div class=\"charts\">");
    for (id, title, series) in [
        (
            "chart-version-handled",
            "messages handled per second, per version",
            lines(|line| &line.handled),
        ),
        (
            "chart-version-dead-letters",
            "dead letters per second, per version",
            lines(|line| &line.dead_lettered),
        ),
    ] {
        html.push_str(&line_chart(
            id,
            title,
            &throughput.at,
            &series,
            &throughput.markers,
        ));
    }

    html.push_str(
        "</div><h2>Swaps</h2><table id=\"swaps\"><tr><th>at</th><th>went active</th></tr>",
    );
    for swap in &view.swaps {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td></tr>",
            utc(swap.at),
            escape(&swap.version)
        );
    }
    html.push_str("</table>");

    let canary = &view.canary;
    html.push_str("<h2>Canary</h2><p id=\"canary\">");
    match &canary.serving {
        Some((version, percent)) => {
            let _ = write!(
                html,
                "{} takes {percent}% of keys; over the {} ms up to its last message it handled {} and dead-lettered {}.",
                escape(version),
                canary.window_ms,
                canary.handled,
                canary.dead_lettered
            );
        }
        None => html.push_str("No canary serves."),
    }
    let _ = write!(
        html,
        " A canary is rolled back when it dead-letters more than {:.0}% of its messages \
         over {} ms, once it has handled {} in them.</p><ul id=\"rolled-back\">",
        canary.max_dead_letter_rate * 100.0,
        canary.window_ms,
        canary.min_messages
    );
    for (version, reason) in &canary.rolled_back {
        let _ = write!(
            html,
            "<li>{} rolled back: {}</li>",
            escape(version),
            escape(reason)
        );
    }

    let shadow = &view.shadow;
    let _ = write!(
        html,
        "</ul><h2>Shadow</h2><p>{}; differences go to {}.</p><table id=\"shadow\"><tr><th>version</th>\
         <th>compared</th><th>differed</th><th>not compared (no room)</th></tr>",
        shadow
            .serving
            .as_ref()
            .map_or("No shadow runs".to_owned(), |version| {
                format!("{} runs in shadow", escape(version))
            }),
        escape(&shadow.diff_topic)
    );
    for tally in &shadow.versions {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&tally.version),
            tally.compared,
            tally.differed,
            tally.skipped
        );
    }
    html.push_str("</table><h2>Recent dead letters</h2>");
    dead_letters_table(&view.dead_letters, &mut html);

    let limits = &view.limits;
    let _ = write!(
        html,
        "<h2>Limits</h2><table id=\"limits\">\
         <tr><td>deadline per call</td><td>{} ms</td></tr>\
         <tr><td>memory</td><td>{} MiB</td></tr>\
         <tr><td>fuel per call</td><td>{}</td></tr>\
         <tr><td>outputs per call</td><td>{}</td></tr>\
         <tr><td>output bytes per call</td><td>{}</td></tr>\
         </table></body></html>",
        limits.deadline.as_millis(),
        limits.memory_mib,
        limits
            .fuel
            .map_or("unlimited".to_owned(), |fuel| fuel.to_string()),
        limits.max_outputs,
        limits.max_output_bytes,
    );
    html
}
