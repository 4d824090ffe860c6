//! The last minutes of a host, for the status page's charts and
//! `/api/history`: one sample a second, the last 15 minutes of them, in a
//! ring of fixed size (its memory does not grow with the run), and the
//! moments a handler version went active, a canary was rolled back or a
//! breaker opened.
//!
//! A task takes the samples; the page and the API only copy the ring, under
//! its own lock, which nothing on the message path takes. Taking a sample
//! reads the counters the message path writes (atomics), and, once a second,
//! briefly, the registry's and the breakers' locks.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use super::Parts;
use crate::registry::VersionState;
use crate::store::epoch_ms;
use crate::telemetry::Phase;
use crate::telemetry::histogram::{Counts, quantile_of};

/// How often a sample is taken.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);
/// How many samples are kept: 15 minutes of them.
pub(crate) const CAPACITY: usize = 900;
/// How many markers are kept, at most (older ones than the oldest sample go
/// first).
const MAX_MARKERS: usize = 256;

/// One second of a host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Sample {
    /// When it was taken, in milliseconds since the Unix epoch.
    pub(crate) at: u64,
    /// Per route, in the config's order.
    pub(crate) routes: Vec<RouteSample>,
    /// Per handler version that handled or dead-lettered anything during
    /// the second (a version missing ended nothing).
    pub(crate) versions: Vec<VersionSample>,
    /// Messages in flight when it was taken.
    pub(crate) in_flight: u64,
    /// Effect attempts retried during the second, every target's.
    pub(crate) retries: u64,
    /// Each stage's latency during the second, in `Phase::ALL`'s order.
    pub(crate) stages: Vec<StageSample>,
    /// Timers pending in the store, as last counted (`None` before the
    /// first count).
    pub(crate) timers_pending: Option<u64>,
    /// Timers this host fired during the second, and how late.
    pub(crate) timers_fired: u64,
    pub(crate) timer_lateness: StageSample,
}

/// One second of a route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct RouteSample {
    /// Messages it handled (every version of its handler) during the second.
    pub(crate) handled: u64,
    /// Messages it dead-lettered during the second.
    pub(crate) dead_lettered: u64,
    /// Messages behind the end on its assigned partitions, as last
    /// measured; `None` with none assigned.
    pub(crate) lag: Option<i64>,
}

/// One second of a handler version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct VersionSample {
    pub(crate) handler: Arc<str>,
    pub(crate) version: Arc<str>,
    /// Messages it handled during the second.
    pub(crate) handled: u64,
    /// Messages it dead-lettered during the second.
    pub(crate) dead_lettered: u64,
}

/// A stage's latency over one second: bucket bounds (upper estimates), in
/// milliseconds; `None` when nothing went through it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct StageSample {
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
}

/// Something that happened, to mark on the charts' time axis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Marker {
    /// When it was first seen (by the sample taken then), in milliseconds
    /// since the Unix epoch.
    pub(crate) at: u64,
    #[serde(flatten)]
    pub(crate) event: Event,
}

/// What a marker marks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub(crate) enum Event {
    /// A version became its handler's active one.
    Swap { handler: String, version: String },
    /// A canary was rolled back.
    RolledBack { handler: String, version: String },
    /// An effect target's breaker opened.
    BreakerOpened { target: String },
}

/// What the ring holds, copied out.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Snapshot {
    /// Milliseconds between samples.
    pub(crate) interval_ms: u64,
    /// The routes' topics, in the samples' order.
    pub(crate) routes: Vec<String>,
    /// The stages, in the samples' order.
    pub(crate) stages: Vec<&'static str>,
    /// Oldest first.
    pub(crate) samples: Vec<Sample>,
    /// Oldest first.
    pub(crate) markers: Vec<Marker>,
    /// The memory the ring holds (samples, markers, swaps and names).
    pub(crate) bytes: usize,
}

/// The counters as read at one instant: running totals, which two readings
/// turn into a sample.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reading {
    pub(crate) at: u64,
    /// Per route (topic): messages handled and dead-lettered.
    pub(crate) routes: BTreeMap<String, (u64, u64)>,
    /// Per handler and version: messages handled and dead-lettered.
    pub(crate) versions: BTreeMap<(String, String), (u64, u64)>,
    /// Per topic: the lag of its assigned partitions.
    pub(crate) lags: BTreeMap<String, i64>,
    pub(crate) in_flight: u64,
    pub(crate) retries: u64,
    /// Per stage, in `Phase::ALL`'s order.
    pub(crate) stages: Vec<Counts>,
    pub(crate) timers_pending: Option<u64>,
    pub(crate) timers_fired: u64,
    pub(crate) timer_lateness: Counts,
    /// Each handler's active version.
    pub(crate) active: BTreeMap<String, String>,
    /// Versions rolled back.
    pub(crate) rolled_back: BTreeSet<(String, String)>,
    /// Targets whose breaker is not closed.
    pub(crate) open: BTreeSet<String>,
}

impl Reading {
    /// Reads what the host's parts count now.
    fn of(parts: &Parts) -> Reading {
        let mut reading = Reading {
            at: epoch_ms(),
            in_flight: parts.offsets.in_flight() as u64,
            retries: parts.breakers.retries(),
            stages: Phase::ALL
                .iter()
                .map(|phase| parts.telemetry.phase(*phase).counts())
                .collect(),
            open: parts.breakers.not_closed().into_iter().collect(),
            timers_pending: parts.timers.upcoming().map(|upcoming| upcoming.pending),
            ..Reading::default()
        };
        let (fired, lateness) = parts.telemetry.timers_fired();
        reading.timers_fired = fired;
        reading.timer_lateness = lateness.counts();
        for (topic, [handled, dead, _]) in parts.telemetry.by_route() {
            reading.routes.insert(topic.to_owned(), (handled, dead));
        }
        for (handler, version, [handled, dead, _]) in parts.telemetry.by_version() {
            reading.versions.insert((handler, version), (handled, dead));
        }
        for ((topic, _), lag) in parts.health.current_lags() {
            *reading.lags.entry(topic).or_default() += lag;
        }
        for version in parts.registry.status() {
            match version.state {
                VersionState::Active => {
                    reading.active.insert(version.handler, version.version);
                }
                VersionState::RolledBack { .. } => {
                    reading
                        .rolled_back
                        .insert((version.handler, version.version));
                }
                _ => {}
            }
        }
        reading
    }
}

/// The p50 and p99 of the durations counted between two readings.
fn during(now: &Counts, before: &Counts) -> StageSample {
    let mut between: Counts = *now;
    for (n, b) in between.iter_mut().zip(before) {
        *n = n.saturating_sub(*b);
    }
    let ms = |q| quantile_of(&between, q).map(|d: Duration| d.as_secs_f64() * 1e3);
    StageSample {
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
    }
}

/// The ring, and the reading the next sample is counted from.
pub(crate) struct History {
    /// Each route's topic, in the config's order.
    routes: Vec<String>,
    ring: Mutex<Ring>,
}

/// The heap a marker's text takes.
fn text_bytes(marker: &Marker) -> usize {
    match &marker.event {
        Event::Swap { handler, version } | Event::RolledBack { handler, version } => {
            handler.capacity() + version.capacity()
        }
        Event::BreakerOpened { target } => target.capacity(),
    }
}

#[derive(Default)]
struct Ring {
    samples: VecDeque<Sample>,
    markers: VecDeque<Marker>,
    /// Every swap since the host started, whatever its age (the last
    /// `MAX_MARKERS`), for the handlers' pages.
    swaps: VecDeque<Marker>,
    last: Option<Reading>,
    /// One copy of each handler's and version's name, for the samples to
    /// share.
    names: BTreeMap<(String, String), (Arc<str>, Arc<str>)>,
}

impl History {
    pub(crate) fn new(routes: Vec<String>) -> History {
        History {
            routes,
            ring: Mutex::new(Ring {
                samples: VecDeque::with_capacity(CAPACITY),
                ..Ring::default()
            }),
        }
    }

    /// Takes a sample a second until `stop` turns true.
    pub(crate) async fn sample(&self, parts: Parts, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.record(Reading::of(&parts)),
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
        }
    }

    /// Adds the sample from the last reading to `now`, and the markers of
    /// what changed in between. The first reading only sets the start.
    pub(crate) fn record(&self, now: Reading) {
        let mut ring = self.ring.lock().expect("history lock");
        let Some(last) = ring.last.take() else {
            // What is active at start went active then, as far as this host knows.
            for (handler, version) in &now.active {
                ring.swaps.push_back(Marker {
                    at: now.at,
                    event: Event::Swap {
                        handler: handler.clone(),
                        version: version.clone(),
                    },
                });
            }
            ring.last = Some(now);
            return;
        };
        let routes = self
            .routes
            .iter()
            .map(|topic| {
                let (handled, dead) = now.routes.get(topic).copied().unwrap_or_default();
                let (handled_before, dead_before) =
                    last.routes.get(topic).copied().unwrap_or_default();
                RouteSample {
                    handled: handled.saturating_sub(handled_before),
                    dead_lettered: dead.saturating_sub(dead_before),
                    lag: now.lags.get(topic).copied(),
                }
            })
            .collect();
        let mut versions = Vec::with_capacity(now.versions.len());
        for (key, (handled, dead)) in &now.versions {
            let (handled_before, dead_before) = last.versions.get(key).copied().unwrap_or_default();
            let (handled, dead_lettered) = (
                handled.saturating_sub(handled_before),
                dead.saturating_sub(dead_before),
            );
            if handled == 0 && dead_lettered == 0 {
                continue;
            }
            let (handler, version) = ring
                .names
                .entry(key.clone())
                .or_insert_with(|| (Arc::from(key.0.as_str()), Arc::from(key.1.as_str())))
                .clone();
            versions.push(VersionSample {
                handler,
                version,
                handled,
                dead_lettered,
            });
        }
        let stages = now
            .stages
            .iter()
            .zip(&last.stages)
            .map(|(now, before)| during(now, before))
            .collect();
        let sample = Sample {
            at: now.at,
            routes,
            versions,
            in_flight: now.in_flight,
            retries: now.retries.saturating_sub(last.retries),
            stages,
            timers_pending: now.timers_pending,
            timers_fired: now.timers_fired.saturating_sub(last.timers_fired),
            timer_lateness: during(&now.timer_lateness, &last.timer_lateness),
        };
        let mut events = Vec::new();
        for (handler, version) in &now.active {
            if last.active.get(handler) != Some(version) {
                events.push(Event::Swap {
                    handler: handler.clone(),
                    version: version.clone(),
                });
            }
        }
        for (handler, version) in now.rolled_back.difference(&last.rolled_back) {
            events.push(Event::RolledBack {
                handler: handler.clone(),
                version: version.clone(),
            });
        }
        for target in now.open.difference(&last.open) {
            events.push(Event::BreakerOpened {
                target: target.clone(),
            });
        }
        if ring.samples.len() == CAPACITY {
            ring.samples.pop_front();
        }
        ring.samples.push_back(sample);
        let oldest = ring.samples.front().map_or(0, |s| s.at);
        for event in events {
            let marker = Marker { at: now.at, event };
            if matches!(marker.event, Event::Swap { .. }) {
                if ring.swaps.len() == MAX_MARKERS {
                    ring.swaps.pop_front();
                }
                ring.swaps.push_back(marker.clone());
            }
            ring.markers.push_back(marker);
        }
        while ring
            .markers
            .front()
            .is_some_and(|m| m.at < oldest || ring.markers.len() > MAX_MARKERS)
        {
            ring.markers.pop_front();
        }
        // A name no sample holds any more goes: swaps without end take no
        // more memory.
        ring.names
            .retain(|_, (handler, _)| Arc::strong_count(handler) > 1);
        ring.last = Some(now);
    }

    /// The swaps since the host started (the last 256), oldest first.
    pub(crate) fn swaps(&self) -> Vec<Marker> {
        let ring = self.ring.lock().expect("history lock");
        ring.swaps.iter().cloned().collect()
    }

    /// What `read` makes of the samples and markers, oldest first, without
    /// copying the ring (the ring's lock is held meanwhile: keep it short).
    pub(crate) fn read<R>(
        &self,
        read: impl FnOnce(&VecDeque<Sample>, &VecDeque<Marker>) -> R,
    ) -> R {
        let ring = self.ring.lock().expect("history lock");
        read(&ring.samples, &ring.markers)
    }

    /// A copy of the ring, for the page and the API.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let ring = self.ring.lock().expect("history lock");
        Snapshot {
            interval_ms: INTERVAL.as_millis() as u64,
            routes: self.routes.clone(),
            stages: Phase::ALL.iter().map(|phase| phase.as_str()).collect(),
            samples: ring.samples.iter().cloned().collect(),
            markers: ring.markers.iter().cloned().collect(),
            bytes: ring.bytes(),
        }
    }
}

impl Ring {
    /// The memory the ring holds: what its samples, markers and names take,
    /// by their allocations' sizes.
    fn bytes(&self) -> usize {
        use std::mem::size_of;
        let samples: usize = self
            .samples
            .iter()
            .map(|s| {
                s.routes.capacity() * size_of::<RouteSample>()
                    + s.versions.capacity() * size_of::<VersionSample>()
                    + s.stages.capacity() * size_of::<StageSample>()
            })
            .sum();
        let markers: usize = self.markers.iter().chain(&self.swaps).map(text_bytes).sum();
        let names: usize = self
            .names
            .iter()
            .map(|((handler, version), _)| 2 * (handler.len() + version.len()) + 64)
            .sum();
        size_of::<Ring>()
            + self.samples.capacity() * size_of::<Sample>()
            + samples
            + (self.markers.capacity() + self.swaps.capacity()) * size_of::<Marker>()
            + markers
            + names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Vec<String> {
        vec!["orders".into(), "paused".into()]
    }

    fn reading(at: u64, handled: u64, dead: u64, version: &str) -> Reading {
        let mut stages = vec![[0; 15]; Phase::ALL.len()];
        // Handle: `handled` calls of up to 1 ms, and one of up to 100 ms.
        stages[0][3] = handled;
        stages[0][9] = 1;
        Reading {
            at,
            routes: [("orders".to_owned(), (handled, dead))].into(),
            // The old version stopped at 50 handled; the new one handles the rest.
            versions: [
                (
                    ("shop".to_owned(), "1.0.0".to_owned()),
                    (handled.min(50), 0),
                ),
                (
                    ("shop".to_owned(), "2.0.0".to_owned()),
                    (handled.saturating_sub(50), dead),
                ),
            ]
            .into(),
            lags: [("orders".to_owned(), 7)].into(),
            in_flight: 2,
            retries: handled / 10,
            stages,
            active: [("shop".to_owned(), version.to_owned())].into(),
            timers_pending: Some(4),
            timers_fired: handled / 100,
            // Every timer fired up to 250 µs late.
            timer_lateness: std::array::from_fn(|i| if i == 1 { handled / 100 } else { 0 }),
            ..Reading::default()
        }
    }

    #[test]
    fn a_sample_counts_what_happened_since_the_last_reading() {
        let history = History::new(routes());
        history.record(reading(1_000, 100, 1, "1.0.0"));
        assert!(
            history.snapshot().samples.is_empty(),
            "the first only starts"
        );
        history.record(reading(2_000, 300, 4, "1.0.0"));
        let snapshot = history.snapshot();
        assert_eq!(
            snapshot.samples,
            [Sample {
                at: 2_000,
                routes: vec![
                    RouteSample {
                        handled: 200,
                        dead_lettered: 3,
                        lag: Some(7)
                    },
                    RouteSample::default(),
                ],
                // 1.0.0 handled nothing more: it is left out.
                versions: vec![VersionSample {
                    handler: "shop".into(),
                    version: "2.0.0".into(),
                    handled: 200,
                    dead_lettered: 3,
                }],
                in_flight: 2,
                retries: 20,
                stages: vec![
                    StageSample {
                        p50_ms: Some(1.0),
                        p99_ms: Some(1.0)
                    },
                    StageSample::default(),
                    StageSample::default(),
                    StageSample::default(),
                ],
                timers_pending: Some(4),
                timers_fired: 2,
                timer_lateness: StageSample {
                    p50_ms: Some(0.25),
                    p99_ms: Some(0.25)
                },
            }]
        );
        assert!(snapshot.markers.is_empty(), "{:?}", snapshot.markers);
    }

    #[test]
    fn swaps_rollbacks_and_opened_breakers_are_marked_when_first_seen() {
        let history = History::new(routes());
        history.record(reading(1_000, 0, 0, "1.0.0"));
        history.record(reading(2_000, 0, 0, "1.0.0"));
        let mut swapped = reading(3_000, 0, 0, "2.0.0");
        swapped.rolled_back.insert(("shop".into(), "3.0.0".into()));
        swapped.open.insert("topic out".into());
        history.record(swapped.clone());
        swapped.at = 4_000;
        history.record(swapped);
        let swaps: Vec<(u64, String)> = history
            .swaps()
            .into_iter()
            .filter_map(|m| match m.event {
                Event::Swap { version, .. } => Some((m.at, version)),
                _ => None,
            })
            .collect();
        // What was active at the first reading counts as gone active then.
        assert_eq!(swaps, [(1_000, "1.0.0".into()), (3_000, "2.0.0".into())]);
        let markers = history.snapshot().markers;
        assert_eq!(
            markers,
            [
                Marker {
                    at: 3_000,
                    event: Event::Swap {
                        handler: "shop".into(),
                        version: "2.0.0".into()
                    }
                },
                Marker {
                    at: 3_000,
                    event: Event::RolledBack {
                        handler: "shop".into(),
                        version: "3.0.0".into()
                    }
                },
                Marker {
                    at: 3_000,
                    event: Event::BreakerOpened {
                        target: "topic out".into()
                    }
                },
            ]
        );
    }

    #[test]
    fn the_ring_keeps_the_last_fifteen_minutes_and_their_markers_only() {
        let history = History::new(routes());
        for second in 0..(CAPACITY as u64 + 100) {
            let version = if second == 50 { "2.0.0" } else { "1.0.0" };
            history.record(reading(second * 1_000, second, 0, version));
        }
        let snapshot = history.snapshot();
        assert_eq!(snapshot.samples.len(), CAPACITY);
        assert_eq!(snapshot.samples[0].at, 100_000);
        // The swaps at 50 s and back at 51 s are older than every sample.
        assert!(snapshot.markers.is_empty(), "{:?}", snapshot.markers);
    }

    #[test]
    fn the_rings_memory_stays_the_same_however_long_the_run_and_however_many_swaps() {
        const ROUTES: usize = 50;
        let topics: Vec<String> = (0..ROUTES).map(|r| format!("topic-{r:02}")).collect();
        let history = History::new(topics.clone());
        // Every route's handler handles every second; each swaps to a new
        // version every 10 seconds, and one breaker opens and closes.
        let reading = |second: u64| {
            let version = format!("1.0.{}", second / 10);
            Reading {
                at: second * 1_000,
                routes: topics
                    .iter()
                    .map(|t| (t.clone(), (second * 100, second)))
                    .collect(),
                versions: (0..ROUTES)
                    .map(|h| {
                        (
                            (format!("handler-{h:02}"), version.clone()),
                            (second * 100, second),
                        )
                    })
                    .collect(),
                lags: topics.iter().map(|t| (t.clone(), 5)).collect(),
                stages: vec![[second; 15]; Phase::ALL.len()],
                active: (0..ROUTES)
                    .map(|h| (format!("handler-{h:02}"), version.clone()))
                    .collect(),
                open: if second.is_multiple_of(20) {
                    ["topic out".to_owned()].into()
                } else {
                    BTreeSet::new()
                },
                ..Reading::default()
            }
        };
        let mut second = 0;
        let mut bytes_after = |until: u64| {
            while second < until {
                history.record(reading(second));
                second += 1;
            }
            history.snapshot().bytes
        };
        let full = bytes_after(CAPACITY as u64 + 100);
        let later = bytes_after(5 * CAPACITY as u64);
        // Equal but for the versions' names growing a digit.
        assert!(
            later.abs_diff(full) < full / 100,
            "{full} bytes, then {later}"
        );
        // 50 routes and 50 versions: about 4.3 MB.
        assert!((3_000_000..5_000_000).contains(&later), "{later} bytes");
        eprintln!("the ring, full, 50 routes and versions: {later} bytes");
    }
}
