//! What the status page's tables show, taken at one instant: the page
//! (page.rs) is drawn from this snapshot and `/api/overview` serves it as
//! JSON, so the two cannot disagree. The charts' samples are the other
//! half of the page (history.rs, `/api/history`).

use std::time::Duration;

use serde::Serialize;

use super::State;
use crate::registry::{VersionState, VersionStatus};
use crate::store::epoch_ms;
use crate::telemetry::{Phase, RecentDeadLetter, ShadowTally};

/// Everything the page's tables show.
#[derive(Debug, Serialize)]
pub(super) struct Overview {
    /// When it was taken, in milliseconds since the Unix epoch.
    pub(super) at: u64,
    /// Why the host is not ready, one line per reason; empty: ready.
    pub(super) unready: Vec<String>,
    pub(super) routes: Vec<RouteRow>,
    pub(super) versions: Vec<VersionRow>,
    /// Each stage since start.
    pub(super) latency: Vec<StageRow>,
    /// Per assigned partition.
    pub(super) lag: Vec<PartitionLag>,
    /// Effect targets whose breaker is not closed.
    pub(super) open_breakers: Vec<String>,
    /// Newest first.
    pub(super) dead_letters: Vec<RecentDeadLetter>,
    pub(super) timers: TimersRow,
    pub(super) shadow: ShadowRow,
}

#[derive(Debug, Serialize)]
pub(super) struct RouteRow {
    pub(super) topic: String,
    pub(super) handler: String,
    pub(super) paused: bool,
    /// Keys held back behind a dead letter on its partitions.
    pub(super) parked_keys: usize,
}

/// A handler version, its state and what it ended since start.
#[derive(Debug, Serialize)]
pub(super) struct VersionRow {
    pub(super) handler: String,
    pub(super) version: String,
    /// As the pages write it: `active`, `canary 20%`, `rolled back`, ...
    pub(super) state: String,
    /// Why it was rejected or rolled back.
    pub(super) detail: String,
    pub(super) handled: u64,
    pub(super) dead_lettered: u64,
    pub(super) skipped: u64,
    /// Messages it ended per second, since the last time a page asked
    /// (at least a second before).
    pub(super) per_second: f64,
}

#[derive(Debug, Serialize)]
pub(super) struct StageRow {
    pub(super) stage: &'static str,
    pub(super) count: u64,
    pub(super) p50_ms: Option<f64>,
    pub(super) p99_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub(super) struct PartitionLag {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) lag: i64,
}

#[derive(Debug, Serialize)]
pub(super) struct TimersRow {
    /// Timers this host fired since start.
    pub(super) fired: u64,
    /// From due to published, over what this host fired.
    pub(super) lateness_p50_ms: Option<f64>,
    pub(super) lateness_p99_ms: Option<f64>,
    /// As the firing task last counted them (the page never waits for the
    /// store); `None` before its first count.
    pub(super) pending: Option<u64>,
    /// The soonest of them, soonest first.
    pub(super) soonest: Vec<TimerRow>,
}

#[derive(Debug, Serialize)]
pub(super) struct TimerRow {
    pub(super) route: String,
    pub(super) id: String,
    /// In milliseconds since the Unix epoch.
    pub(super) due: u64,
    pub(super) topic: String,
}

#[derive(Debug, Serialize)]
pub(super) struct ShadowRow {
    /// Every shadow version's messages compared, host-wide.
    pub(super) compared: u64,
    pub(super) differed: u64,
    /// Per shadow version.
    pub(super) versions: Vec<ShadowTally>,
}

/// A duration in milliseconds, as the JSON writes it.
fn ms(duration: Option<Duration>) -> Option<f64> {
    duration.map(|d| d.as_secs_f64() * 1e3)
}

/// A version's state as the pages write it, and its reason if any.
fn describe(state: &VersionState) -> (String, String) {
    match state {
        VersionState::Active => ("active".to_owned(), String::new()),
        VersionState::Canary { percent } => (format!("canary {percent}%"), String::new()),
        VersionState::Shadow => ("shadow".to_owned(), String::new()),
        VersionState::Standby => ("standby".to_owned(), String::new()),
        VersionState::Rejected { reason } => ("rejected".to_owned(), reason.clone()),
        VersionState::RolledBack { reason } => ("rolled back".to_owned(), reason.clone()),
    }
}

/// The versions `keep` lets through, with their counts and rates.
pub(super) fn versions(state: &State, keep: impl Fn(&VersionStatus) -> bool) -> Vec<VersionRow> {
    let counts = state.parts.telemetry.by_version();
    let rates = state.rates(&counts);
    state
        .parts
        .registry
        .status()
        .into_iter()
        .filter(keep)
        .map(|version| {
            let [handled, dead_lettered, skipped] = counts
                .iter()
                .find(|(h, v, _)| *h == version.handler && *v == version.version)
                .map_or([0; 3], |(_, _, c)| *c);
            let per_second = rates
                .iter()
                .find(|(h, v, _)| *h == version.handler && *v == version.version)
                .map_or(0.0, |(_, _, r)| *r);
            let (label, detail) = describe(&version.state);
            VersionRow {
                handler: version.handler,
                version: version.version,
                state: label,
                detail,
                handled,
                dead_lettered,
                skipped,
                per_second,
            }
        })
        .collect()
}

impl Overview {
    /// Reads the host now.
    pub(super) fn of(state: &State) -> Overview {
        let parts = &state.parts;
        let parked = parts.controls.parked_keys();
        let routes = state
            .routes
            .iter()
            .map(|route| RouteRow {
                topic: route.topic.clone(),
                handler: route.handler.clone(),
                paused: parts.controls.is_paused(&route.topic),
                parked_keys: parked
                    .iter()
                    .filter(|((topic, _), _)| *topic == route.topic)
                    .map(|(_, n)| n)
                    .sum(),
            })
            .collect();
        let latency = Phase::ALL
            .iter()
            .map(|phase| {
                let histogram = parts.telemetry.phase(*phase);
                StageRow {
                    stage: phase.as_str(),
                    count: histogram.count(),
                    p50_ms: ms(histogram.quantile(0.5)),
                    p99_ms: ms(histogram.quantile(0.99)),
                }
            })
            .collect();
        let lag = parts
            .health
            .current_lags()
            .into_iter()
            .map(|((topic, partition), lag)| PartitionLag {
                topic,
                partition,
                lag,
            })
            .collect();
        let (fired, lateness) = parts.telemetry.timers_fired();
        let upcoming = parts.timers.upcoming();
        let timers = TimersRow {
            fired,
            lateness_p50_ms: ms(lateness.quantile(0.5)),
            lateness_p99_ms: ms(lateness.quantile(0.99)),
            pending: upcoming.as_ref().map(|u| u.pending),
            soonest: upcoming
                .into_iter()
                .flat_map(|u| u.soonest)
                .map(|t| TimerRow {
                    route: t.route,
                    id: t.id,
                    due: t.due,
                    topic: t.topic,
                })
                .collect(),
        };
        // One read of the tallies, so the totals are their sums.
        let shadows = parts.telemetry.shadows();
        Overview {
            at: epoch_ms(),
            unready: state.unready(),
            routes,
            versions: versions(state, |_| true),
            latency,
            lag,
            open_breakers: parts.breakers.not_closed(),
            dead_letters: parts.telemetry.recent_dead_letters(),
            timers,
            shadow: ShadowRow {
                compared: shadows.iter().map(|t| t.compared).sum(),
                differed: shadows.iter().map(|t| t.differed).sum(),
                versions: shadows,
            },
        }
    }
}
