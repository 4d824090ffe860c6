//! A page per handler, `/handlers/{name}`, and the same view as JSON,
//! `/api/handlers/{name}`: its routes with the topics each may publish to,
//! its versions with their states and counts, when each went active, its
//! recent dead letters and the limits it runs under. Both are made from one
//! `HandlerView`.

use std::fmt::Write as _;

use serde::Serialize;

use super::history::Event;
use super::{STYLE, State, counts_of, escape};
use crate::config::Limits;
use crate::registry::VersionState;

/// Everything the page shows.
#[derive(Debug, Serialize)]
pub(super) struct HandlerView {
    name: String,
    routes: Vec<RouteView>,
    versions: Vec<VersionView>,
    /// When a version went active while this host ran, oldest first.
    swaps: Vec<SwapView>,
    /// The latest dead letters of its routes, newest last.
    dead_letters: Vec<DeadLetterView>,
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

#[derive(Debug, Serialize)]
struct VersionView {
    version: String,
    state: String,
    /// Why it was rejected or rolled back.
    detail: String,
    handled: u64,
    dead_lettered: u64,
    skipped: u64,
}

#[derive(Debug, Serialize)]
struct SwapView {
    at: u64,
    version: String,
}

#[derive(Debug, Serialize)]
struct DeadLetterView {
    input: String,
    stage: &'static str,
    reason: &'static str,
    detail: String,
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
    let counts = state.parts.telemetry.by_version();
    let versions = state
        .parts
        .registry
        .status()
        .into_iter()
        .filter(|version| version.handler == name)
        .map(|version| {
            let [handled, dead_lettered, skipped] =
                counts_of(&counts, &version.handler, &version.version);
            let (state, detail) = describe(&version.state);
            VersionView {
                version: version.version,
                state,
                detail,
                handled,
                dead_lettered,
                skipped,
            }
        })
        .collect();
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
        .map(|dead| DeadLetterView {
            input: dead.input,
            stage: dead.stage,
            reason: dead.reason,
            detail: dead.detail,
        })
        .collect();
    Some(HandlerView {
        name: name.to_owned(),
        routes,
        versions,
        swaps,
        dead_letters,
        limits: state.limits.as_ref().clone(),
    })
}

/// A version's state as the pages write it, and its reason if any.
pub(super) fn describe(state: &VersionState) -> (String, String) {
    match state {
        VersionState::Active => ("active".to_owned(), String::new()),
        VersionState::Canary { percent } => (format!("canary {percent}%"), String::new()),
        VersionState::Shadow => ("shadow".to_owned(), String::new()),
        VersionState::Standby => ("standby".to_owned(), String::new()),
        VersionState::Rejected { reason } => ("rejected".to_owned(), reason.clone()),
        VersionState::RolledBack { reason } => ("rolled back".to_owned(), reason.clone()),
    }
}

/// The page of `view`.
pub(super) fn render(view: &HandlerView) -> String {
    let name = escape(&view.name);
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>sluice: {name}</title><style>{STYLE}</style></head><body>\
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
    html.push_str(
        "</table><h2>Versions</h2><table id=\"versions\"><tr><th>version</th><th>state</th>\
         <th>handled</th><th>dead-lettered</th><th>skipped</th></tr>",
    );
    for version in &view.versions {
        let _ = write!(
            html,
            "<tr><td>{}</td><td title=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&version.version),
            escape(&version.detail),
            escape(&version.state),
            version.handled,
            version.dead_lettered,
            version.skipped,
        );
    }
    html.push_str(
        "</table><h2>Swaps</h2><table id=\"swaps\"><tr><th>at</th><th>went active</th></tr>",
    );
    for swap in &view.swaps {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td></tr>",
            crate::telemetry::utc(swap.at),
            escape(&swap.version)
        );
    }
    html.push_str(
        "</table><h2>Recent dead letters</h2><table id=\"dead-letters\"><tr><th>input</th>\
         <th>stage</th><th>reason</th><th>detail</th></tr>",
    );
    for dead in &view.dead_letters {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&dead.input),
            dead.stage,
            dead.reason,
            escape(&dead.detail)
        );
    }
    let limits = &view.limits;
    let _ = write!(
        html,
        "</table><h2>Limits</h2><table id=\"limits\">\
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
