//! The handlers directory, live. Routes name a handler; for each name the
//! registry knows every version file and its verdict (accepted, or rejected
//! with a one-line reason), and publishes a `Serving` set: the active
//! version, and optionally a canary (a share of keys) and a shadow (sees
//! every message, runs nothing). A new file is loaded off the hot path
//! (`watch`), checked and trial-instantiated by the runtime, and swapped in by
//! replacing the `Serving` set: a batch takes the set once, so messages in
//! flight finish on the version they started with.

mod canary;
mod files;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use semver::Version;
use serde::{Deserialize, Serialize};

pub use files::{HandlerFile, Marker, ReadDirError};
pub(crate) use watch::{stopped, watch};

use crate::config::{CanarySettings, Config, HandlerSettings};
use crate::contract::Message;
use crate::runtime::{Handler, LoadError, LoadProblem, Runtime, content_hash};
use files::Seen;

/// A routed handler with no version that can serve.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The directory cannot be read.
    #[error(transparent)]
    ReadDir(#[from] ReadDirError),
    /// No file of that name.
    #[error(
        "no handler named {name:?} in {dir} (expected {dir}/{name}/<version>.wasm or {dir}/{name}@<version>.wasm)",
        dir = dir.display()
    )]
    NotFound {
        /// The handler name.
        name: String,
        /// The directory.
        dir: PathBuf,
    },
    /// The pinned version is not there.
    #[error("handler {name:?} is pinned to {pinned}, but {} has only {available}", dir.display())]
    PinnedMissing {
        /// The handler name.
        name: String,
        /// The pinned version.
        pinned: String,
        /// The directory.
        dir: PathBuf,
        /// Versions present.
        available: String,
    },
    /// Every version was refused; the newest one's reason.
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// What a version is doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum VersionState {
    /// Serves every message (but the canary's share).
    Active,
    /// Serves a share of keys.
    Canary {
        /// The share, in percent.
        percent: f64,
    },
    /// Sees every message; its outputs are compared, never executed.
    Shadow,
    /// Loadable, not serving (an older version, kept for rollback).
    Standby,
    /// Refused when loaded.
    Rejected {
        /// Why, in one line.
        reason: String,
    },
    /// A canary taken out of service for dead-lettering too much.
    RolledBack {
        /// Why, in one line.
        reason: String,
    },
}

/// One version of a handler and its state (`sluice handlers`, `/handlers`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionStatus {
    /// Handler name.
    pub handler: String,
    /// Version.
    pub version: String,
    /// The file it came from.
    pub file: PathBuf,
    /// What it is doing.
    #[serde(flatten)]
    pub state: VersionState,
}

/// A version in service, with where it came from.
#[derive(Clone)]
pub(crate) struct Served {
    pub(crate) handler: Arc<dyn Handler>,
    /// The file and its content hash; none for a handler given in code.
    origin: Option<(PathBuf, String)>,
}

impl Served {
    fn is(&self, other: &Served) -> bool {
        match &other.origin {
            Some((path, hash)) => self.is_file(path, hash),
            None => Arc::ptr_eq(&self.handler, &other.handler),
        }
    }

    /// Whether this is the build of `path` whose content hash is `hash`.
    fn is_file(&self, path: &Path, hash: &str) -> bool {
        self.origin
            .as_ref()
            .is_some_and(|(p, h)| p == path && h == hash)
    }
}

/// Whether two optional roles hold the same build.
fn same_role(a: Option<&Served>, b: Option<&Served>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.is(b),
        (None, None) => true,
        _ => false,
    }
}

/// The versions serving one handler name right now.
#[derive(Clone)]
pub(crate) struct Serving {
    pub(crate) active: Served,
    /// The canary and its share of keys in basis points.
    canary: Option<(Served, u32)>,
    pub(crate) shadow: Option<Served>,
}

impl Serving {
    /// The version that handles `message`: the canary for its share of keys.
    pub(crate) fn pick(&self, message: &Message) -> &Arc<dyn Handler> {
        match &self.canary {
            Some((canary, share))
                if canary::takes(*share, message.key.as_deref(), message.offset) =>
            {
                &canary.handler
            }
            _ => &self.active.handler,
        }
    }

    fn canary(&self) -> Option<&Served> {
        self.canary.as_ref().map(|(canary, _)| canary)
    }

    fn same_canary(&self, other: &Serving) -> bool {
        same_role(self.canary(), other.canary())
    }

    fn same_as(&self, other: &Serving) -> bool {
        self.active.is(&other.active)
            && self.same_canary(other)
            && same_role(self.shadow.as_ref(), other.shadow.as_ref())
    }
}

/// A file the registry has looked at, and its verdict.
struct Entry {
    seen: Seen,
    hash: String,
    rejected: Option<String>,
    /// The handler its check just made, so putting it in service does not
    /// load it again; dropped once roles are chosen (standby versions are
    /// not kept in memory).
    checked: Option<Arc<dyn Handler>>,
}

/// What the registry knows of one handler name's files.
#[derive(Default)]
struct Known {
    entries: BTreeMap<PathBuf, Entry>,
    /// A canary build taken out of service (its content hash) and why.
    rolled_back: Option<(String, String)>,
}

/// Paths chosen for each role.
#[derive(Debug, Default, PartialEq, Eq)]
struct Choice {
    active: Option<PathBuf>,
    canary: Option<PathBuf>,
    shadow: Option<PathBuf>,
}

/// One handler name: its files, its verdicts and what serves it.
pub(crate) struct Selection {
    name: String,
    settings: HandlerSettings,
    serving: RwLock<Arc<Serving>>,
    known: Mutex<Known>,
    window: Mutex<canary::Window>,
    /// The window's totals as of the canary's last message (handled,
    /// dead-lettered), for the pages to read without the window's lock.
    window_totals: [AtomicU64; 2],
    swaps: AtomicU64,
}

impl Selection {
    /// A handler given in code: one version, never swapped.
    pub(crate) fn fixed(handler: Arc<dyn Handler>) -> Selection {
        let active = Served {
            handler,
            origin: None,
        };
        Selection::new(
            active.handler.name().to_owned(),
            HandlerSettings::default(),
            Serving {
                active,
                canary: None,
                shadow: None,
            },
            Known::default(),
        )
    }

    fn new(name: String, settings: HandlerSettings, serving: Serving, known: Known) -> Selection {
        let window = canary::Window::new(settings.canary_settings().window);
        Selection {
            name,
            settings,
            serving: RwLock::new(Arc::new(serving)),
            known: Mutex::new(known),
            window: Mutex::new(window),
            window_totals: Default::default(),
            swaps: AtomicU64::new(0),
        }
    }

    /// The versions serving now. A batch takes this once.
    pub(crate) fn serving(&self) -> Arc<Serving> {
        self.serving.read().expect("serving lock").clone()
    }

    /// Swaps that happened since start.
    pub(crate) fn swaps(&self) -> u64 {
        self.swaps.load(Ordering::Relaxed)
    }

    /// The canary's rule, and what it handled and dead-lettered over the
    /// rule's window as of its last message.
    pub(crate) fn canary_window(&self) -> (CanarySettings, u64, u64) {
        let [handled, dead] = &self.window_totals;
        (
            self.settings.canary_settings(),
            handled.load(Ordering::Relaxed),
            dead.load(Ordering::Relaxed),
        )
    }

    /// Counts a message `handler` handled toward its canary's dead-letter
    /// rate, and rolls the canary back when the rate passes the threshold.
    pub(crate) fn observe(&self, handler: &Arc<dyn Handler>, dead_lettered: bool) {
        let serving = self.serving();
        let Some(canary) = serving.canary() else {
            return;
        };
        if !Arc::ptr_eq(&canary.handler, handler) {
            return;
        }
        let settings = self.settings.canary_settings();
        let (handled, dead) = self
            .window
            .lock()
            .expect("canary window lock")
            .record(Instant::now(), dead_lettered);
        self.window_totals[0].store(handled, Ordering::Relaxed);
        self.window_totals[1].store(dead, Ordering::Relaxed);
        let rate = dead as f64 / handled as f64;
        if handled < settings.min_messages || rate <= settings.max_dead_letter_rate {
            return;
        }
        let reason = format!(
            "dead-lettered {dead} of {handled} messages ({:.0}%) within {} ms, over the {:.0}% allowed",
            rate * 100.0,
            settings.window.as_millis(),
            settings.max_dead_letter_rate * 100.0
        );
        let mut known = self.known.lock().expect("registry lock");
        let mut serving = self.serving.write().expect("serving lock");
        if !serving.canary().is_some_and(|current| current.is(canary)) {
            return; // Rolled back by another worker meanwhile.
        }
        tracing::error!(
            handler = %self.name,
            version = canary.handler.version(),
            %reason,
            "canary rolled back: its keys go to the active version again"
        );
        known.rolled_back = canary
            .origin
            .as_ref()
            .map(|(_, hash)| (hash.clone(), reason));
        let mut next = (**serving).clone();
        next.canary = None;
        *serving = Arc::new(next);
        self.swaps.fetch_add(1, Ordering::Relaxed);
    }

    /// Every version file and its state.
    pub(crate) fn status(&self) -> Vec<VersionStatus> {
        // Swaps happen under the registry lock: taken first, the two agree.
        let known = self.known.lock().expect("registry lock");
        let serving = self.serving();
        let in_role = |entry: &Entry, served: Option<&Served>| {
            served.is_some_and(|s| s.is_file(&entry.seen.file.path, &entry.hash))
        };
        let mut listed: Vec<VersionStatus> = known
            .entries
            .values()
            .map(|entry| {
                let state = if let Some(reason) = &entry.rejected {
                    VersionState::Rejected {
                        reason: reason.clone(),
                    }
                } else if in_role(entry, Some(&serving.active)) {
                    VersionState::Active
                } else if let Some((_, share)) = serving
                    .canary
                    .as_ref()
                    .filter(|(c, _)| in_role(entry, Some(c)))
                {
                    VersionState::Canary {
                        percent: f64::from(*share) / 100.0,
                    }
                } else if in_role(entry, serving.shadow.as_ref()) {
                    VersionState::Shadow
                } else if let Some((_, reason)) = known
                    .rolled_back
                    .as_ref()
                    .filter(|(hash, _)| *hash == entry.hash)
                {
                    VersionState::RolledBack {
                        reason: reason.clone(),
                    }
                } else {
                    VersionState::Standby
                };
                VersionStatus {
                    handler: self.name.clone(),
                    version: entry.seen.file.version.to_string(),
                    file: entry.seen.file.path.clone(),
                    state,
                }
            })
            .collect();
        if serving.active.origin.is_none() {
            listed.push(VersionStatus {
                handler: self.name.clone(),
                version: serving.active.handler.version().to_owned(),
                file: PathBuf::new(),
                state: VersionState::Active,
            });
        }
        listed.sort_by(|a, b| {
            let v = |s: &VersionStatus| Version::parse(&s.version).ok();
            v(a).cmp(&v(b)).then_with(|| a.file.cmp(&b.file))
        });
        listed
    }
}

/// What a host started now with `config` would serve: every routed
/// handler's versions and their states, evaluated from the directory.
pub fn evaluate(config: &Config, runtime: Runtime) -> Result<Vec<VersionStatus>, RegistryError> {
    let runtime = runtime.with_artifact_cache(&config.resolve(&config.artifact_cache));
    Ok(Registry::open(config, Arc::new(runtime), &HashMap::new())?.status())
}

/// Every routed handler's selection, and how to refresh them from the directory.
pub(crate) struct Registry {
    dir: PathBuf,
    runtime: Arc<Runtime>,
    settle: Duration,
    selections: BTreeMap<String, Arc<Selection>>,
}

impl Registry {
    /// Loads every routed handler's versions (or takes the one given in code),
    /// waiting for files still being written; fails if a routed handler has
    /// no version that can serve.
    pub(crate) fn open(
        config: &Config,
        runtime: Arc<Runtime>,
        given: &HashMap<String, Arc<dyn Handler>>,
    ) -> Result<Registry, RegistryError> {
        let mut registry = Registry {
            dir: config.resolve(&config.handlers_dir),
            runtime,
            settle: config.handler_settle,
            selections: BTreeMap::new(),
        };
        for name in config.routes.iter().map(|r| r.handler.as_str()) {
            if registry.selections.contains_key(name) {
                continue;
            }
            let selection = match given.get(name) {
                Some(handler) => Selection::fixed(handler.clone()),
                None => registry.first_load(name, config.handler_settings(name))?,
            };
            registry
                .selections
                .insert(name.to_owned(), Arc::new(selection));
        }
        Ok(registry)
    }

    /// The selection of a handler name.
    pub(crate) fn selection(&self, name: &str) -> Arc<Selection> {
        self.selections[name].clone()
    }

    /// Every routed handler's versions and their states.
    pub(crate) fn status(&self) -> Vec<VersionStatus> {
        self.selections.values().flat_map(|s| s.status()).collect()
    }

    /// Every version in service (active, canary, shadow), all handlers.
    pub(crate) fn serving_handlers(&self) -> Vec<Arc<dyn Handler>> {
        self.selections
            .values()
            .flat_map(|selection| {
                let serving = selection.serving();
                let mut handlers = vec![serving.active.handler.clone()];
                handlers.extend(serving.canary.iter().map(|(c, _)| c.handler.clone()));
                handlers.extend(serving.shadow.iter().map(|s| s.handler.clone()));
                handlers
            })
            .collect()
    }

    /// Swaps since start, all handlers together.
    pub(crate) fn swaps(&self) -> u64 {
        self.selections.values().map(|s| s.swaps()).sum()
    }

    fn first_load(
        &self,
        name: &str,
        settings: HandlerSettings,
    ) -> Result<Selection, RegistryError> {
        let mut known = Known::default();
        // Files being written are waited for, but a file that never stops
        // changing must not hold the start up: it is left to the watcher.
        let give_up = Instant::now() + (self.settle * 10).max(Duration::from_secs(5));
        loop {
            let seen = self.seen(name)?;
            match self
                .refresh(name, &mut known, seen, SystemTime::now())
                .settle
            {
                Some(wait) if Instant::now() + wait < give_up => std::thread::sleep(wait),
                Some(_) => {
                    tracing::warn!(handler = name, "starting without files that keep changing");
                    break;
                }
                None => break,
            }
        }
        let choice = choose(&known, &settings);
        let Some(active) = &choice.active else {
            return Err(self.nothing_to_serve(name, &known, &settings));
        };
        let active = self
            .serve(&mut known, active)
            .map_err(RegistryError::Load)?;
        let mut serving = Serving {
            active,
            canary: None,
            shadow: None,
        };
        self.fill_roles(&mut known, &settings, &mut serving);
        release_checked(&mut known);
        log_serving(name, None, &serving);
        Ok(Selection::new(name.to_owned(), settings, serving, known))
    }

    /// Why nothing can serve `name`.
    fn nothing_to_serve(
        &self,
        name: &str,
        known: &Known,
        settings: &HandlerSettings,
    ) -> RegistryError {
        let versions: Vec<&Entry> = known.entries.values().collect();
        if let Some(pinned) = &settings.version
            && !versions.is_empty()
            && !versions
                .iter()
                .any(|e| e.seen.file.version.to_string() == *pinned)
        {
            let mut available: Vec<&Version> =
                versions.iter().map(|e| &e.seen.file.version).collect();
            available.sort();
            available.dedup();
            return RegistryError::PinnedMissing {
                name: name.to_owned(),
                pinned: pinned.clone(),
                dir: self.dir.clone(),
                available: available
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            };
        }
        match versions
            .iter()
            .filter(|e| e.seen.file.marker == Marker::None)
            .max_by(|a, b| a.seen.file.version.cmp(&b.seen.file.version))
        {
            // Load it again for the typed error.
            Some(newest) => match self.runtime.load(&newest.seen.file.path, name, "-") {
                Err(error) => RegistryError::Load(error),
                Ok(_) => RegistryError::NotFound {
                    name: name.to_owned(),
                    dir: self.dir.clone(),
                },
            },
            None => RegistryError::NotFound {
                name: name.to_owned(),
                dir: self.dir.clone(),
            },
        }
    }

    /// The settled handler files of `name` right now.
    fn seen(&self, name: &str) -> Result<Vec<Seen>, ReadDirError> {
        Ok(files::scan(&self.dir)?
            .into_iter()
            .filter(|s| s.file.name == name)
            .collect())
    }

    /// Brings `known` up to date with the files seen: new or changed files
    /// are checked (compiled, trial-instantiated) and get a verdict, removed
    /// ones are forgotten. Returns how long to wait before files still being
    /// written are settled, if any are.
    fn refresh(
        &self,
        name: &str,
        known: &mut Known,
        seen: Vec<Seen>,
        now: SystemTime,
    ) -> Rescanned {
        let mut done = Rescanned::default();
        let present: Vec<PathBuf> = seen.iter().map(|s| s.file.path.clone()).collect();
        for seen in seen {
            let path = seen.file.path.clone();
            if let Some(entry) = known.entries.get(&path)
                && entry.seen.len == seen.len
                && entry.seen.modified == seen.modified
            {
                continue;
            }
            // A file changed within the settle time may still be being written.
            let age = now.duration_since(seen.modified).unwrap_or_default();
            if age < self.settle {
                done.settle_within(self.settle - age);
                continue;
            }
            let version = seen.file.version.to_string();
            let bytes = match self.runtime.read(&path, name) {
                Ok(bytes) => bytes,
                // Gone since the scan; the next scan forgets it.
                Err(LoadError {
                    problem: LoadProblem::Read(_),
                    ..
                }) => continue,
                Err(error) => {
                    let entry = Entry {
                        hash: format!("unread:{}", seen.len),
                        seen,
                        rejected: Some(rejection(name, &version, &error)),
                        checked: None,
                    };
                    known.entries.insert(path, entry);
                    continue;
                }
            };
            let hash = content_hash(&bytes);
            if let Some(entry) = known.entries.get_mut(&path)
                && entry.hash == hash
            {
                entry.seen = seen;
                continue;
            }
            done.changed = true;
            let (checked, rejected) = match self.runtime.load_bytes(&path, &bytes, name, &version) {
                Ok((handler, inspection)) => {
                    tracing::info!(
                        handler = name,
                        %version,
                        file = %path.display(),
                        contract = %inspection.contract,
                        cached = inspection.cached,
                        ms = inspection.compile_time.as_millis() as u64,
                        "handler version accepted"
                    );
                    (Some(handler as Arc<dyn Handler>), None)
                }
                Err(error) => (None, Some(rejection(name, &version, &error))),
            };
            known.entries.insert(
                path,
                Entry {
                    seen,
                    hash,
                    rejected,
                    checked,
                },
            );
        }
        known.entries.retain(|path, entry| {
            let kept = present.contains(path);
            if !kept {
                done.changed = true;
                tracing::info!(
                    handler = name,
                    version = %entry.seen.file.version,
                    file = %path.display(),
                    "handler file removed"
                );
            }
            kept
        });
        done
    }

    /// A chosen file put in service: the handler its check made, or (a
    /// standby version coming back) loaded again from the artifact cache.
    /// Should the file have changed since, the next rescan sees it.
    fn serve(&self, known: &mut Known, path: &Path) -> Result<Served, LoadError> {
        let entry = known
            .entries
            .get_mut(path)
            .expect("chosen from the known entries");
        let loaded = match entry.checked.take() {
            Some(handler) => Ok(handler),
            None => {
                let file = &entry.seen.file;
                let version = file.version.to_string();
                self.runtime
                    .load(path, &file.name, &version)
                    .map(|handler| handler as Arc<dyn Handler>)
                    .inspect_err(|error| {
                        entry.rejected = Some(rejection(&file.name, &version, error));
                    })
            }
        };
        loaded.map(|handler| Served {
            handler,
            origin: Some((path.to_owned(), entry.hash.clone())),
        })
    }

    /// Puts the chosen canary and shadow (if any) in `serving`, reusing what
    /// already serves.
    fn fill_roles(&self, known: &mut Known, settings: &HandlerSettings, serving: &mut Serving) {
        let choice = choose(known, settings);
        let current = serving.clone();
        let mut reuse_or_serve = |path: &Option<PathBuf>, now: Option<&Served>| -> Option<Served> {
            let path = path.as_ref()?;
            let hash = &known.entries.get(path)?.hash;
            match now.filter(|s| s.is_file(path, hash)) {
                Some(same) => Some(same.clone()),
                None => self.serve(known, path).ok(),
            }
        };
        let share = settings.canary_settings().share();
        serving.canary = reuse_or_serve(&choice.canary, current.canary()).map(|c| (c, share));
        serving.shadow = reuse_or_serve(&choice.shadow, current.shadow.as_ref());
    }

    /// Rescans the directory and swaps in what changed.
    pub(crate) fn rescan(&self) -> Result<Rescanned, ReadDirError> {
        let mut done = Rescanned::default();
        let scanned = files::scan(&self.dir)?;
        for (name, selection) in &self.selections {
            let mut known = selection.known.lock().expect("registry lock");
            if selection.serving().active.origin.is_none() {
                continue; // Given in code.
            }
            let seen = scanned
                .iter()
                .filter(|s| s.file.name == *name)
                .cloned()
                .collect();
            let refreshed = self.refresh(name, &mut known, seen, SystemTime::now());
            done.changed |= refreshed.changed;
            if let Some(wait) = refreshed.settle {
                done.settle_within(wait);
            }
            self.reselect(selection, &mut known);
        }
        Ok(done)
    }

    /// Recomputes what serves `selection` and swaps it in if it changed.
    fn reselect(&self, selection: &Selection, known: &mut Known) {
        let current = selection.serving();
        let active = loop {
            let choice = choose(known, &selection.settings);
            let Some(path) = choice.active else {
                if let Some((_, hash)) = &current.active.origin
                    && !known.entries.values().any(|e| e.hash == *hash)
                {
                    tracing::warn!(
                        handler = %selection.name,
                        version = current.active.handler.version(),
                        "no file of this handler can serve; the loaded version keeps serving"
                    );
                }
                break current.active.clone();
            };
            if current.active.is_file(&path, &known.entries[&path].hash) {
                break current.active.clone();
            }
            // A file that cannot be put in service is rejected; choose again.
            if let Ok(served) = self.serve(known, &path) {
                break served;
            }
        };
        let mut next = Serving {
            active,
            canary: current.canary.clone(),
            shadow: current.shadow.clone(),
        };
        self.fill_roles(known, &selection.settings, &mut next);
        release_checked(known);
        if next.same_as(&current) {
            return;
        }
        log_serving(&selection.name, Some(&current), &next);
        if !next.same_canary(&current) {
            selection.window.lock().expect("canary window lock").clear();
            for total in &selection.window_totals {
                total.store(0, Ordering::Relaxed);
            }
        }
        *selection.serving.write().expect("serving lock") = Arc::new(next);
        selection.swaps.fetch_add(1, Ordering::Relaxed);
    }
}

impl CanarySettings {
    /// The share of keys in basis points.
    fn share(&self) -> u32 {
        (self.percent * 100.0).round() as u32
    }
}

/// What a rescan did.
#[derive(Debug, Default)]
pub(crate) struct Rescanned {
    /// How long to wait for files still being written, if any are.
    pub(crate) settle: Option<Duration>,
    /// Whether a file was compiled or a version forgotten: the rescans
    /// after which freed memory is worth giving back.
    pub(crate) changed: bool,
}

impl Rescanned {
    /// Looks again no later than `wait` from now.
    fn settle_within(&mut self, wait: Duration) {
        self.settle = Some(self.settle.map_or(wait, |w| w.min(wait)));
    }
}

/// Drops the handlers checks made that did not go into service.
fn release_checked(known: &mut Known) {
    for entry in known.entries.values_mut() {
        entry.checked = None;
    }
}

/// Logs a file refused and returns the reason to keep, in one line.
fn rejection(name: &str, version: &str, error: &LoadError) -> String {
    tracing::error!(handler = name, version, "handler version rejected: {error}");
    error.problem.to_string()
}

/// Which accepted file takes each role: shadow and canary by config or
/// marker, active the pinned version or else the highest plain one.
fn choose(known: &Known, settings: &HandlerSettings) -> Choice {
    let accepted = || known.entries.values().filter(|e| e.rejected.is_none());
    let is = |entry: &Entry, version: Option<&String>| {
        version.is_some_and(|v| entry.seen.file.version.to_string() == *v)
    };
    let highest = |entries: Vec<&Entry>| {
        entries
            .into_iter()
            .max_by(|a, b| a.seen.file.version.cmp(&b.seen.file.version))
            .map(|e| e.seen.file.path.clone())
    };
    let canary_version = settings.canary.as_ref().and_then(|c| c.version.as_ref());
    let shadow = highest(
        accepted()
            .filter(|e| {
                e.seen.file.marker == Marker::Shadow
                    || (e.seen.file.marker == Marker::None && is(e, settings.shadow.as_ref()))
            })
            .collect(),
    );
    let canary = highest(
        accepted()
            .filter(|e| {
                e.seen.file.marker == Marker::Canary
                    || (e.seen.file.marker == Marker::None && is(e, canary_version))
            })
            .filter(|e| {
                known
                    .rolled_back
                    .as_ref()
                    .is_none_or(|(hash, _)| *hash != e.hash)
            })
            .collect(),
    );
    let plain = accepted().filter(|e| {
        e.seen.file.marker == Marker::None
            && !is(e, settings.shadow.as_ref())
            && !is(e, canary_version)
    });
    let active = match &settings.version {
        Some(pinned) => highest(plain.filter(|e| is(e, Some(pinned))).collect()),
        None => highest(plain.collect()),
    };
    Choice {
        active,
        canary,
        shadow,
    }
}

/// Logs what serves a handler, and what changed.
fn log_serving(name: &str, before: Option<&Serving>, now: &Serving) {
    let version = |s: Option<&Served>| s.map_or("-".to_owned(), |s| s.handler.version().to_owned());
    let active = now.active.handler.version();
    let canary = version(now.canary());
    let shadow = version(now.shadow.as_ref());
    match before {
        None => tracing::info!(handler = name, active, %canary, %shadow, "handler serving"),
        Some(before) => tracing::info!(
            handler = name,
            active,
            %canary,
            %shadow,
            was_active = before.active.handler.version(),
            was_canary = %version(before.canary()),
            was_shadow = %version(before.shadow.as_ref()),
            "handler swapped"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known files: (file name under `echo/`, rejected?).
    fn known(files: &[(&str, bool)]) -> Known {
        let entries = files
            .iter()
            .map(|(name, rejected)| {
                let path = PathBuf::from(format!("h/echo/{name}"));
                let entry = Entry {
                    seen: Seen {
                        file: HandlerFile::from_path(&path).unwrap(),
                        len: 1,
                        modified: SystemTime::UNIX_EPOCH,
                    },
                    hash: format!("hash-{name}"),
                    rejected: rejected.then(|| "does not compile".to_owned()),
                    checked: None,
                };
                (path, entry)
            })
            .collect();
        Known {
            entries,
            rolled_back: None,
        }
    }

    fn names(choice: &Choice) -> [Option<String>; 3] {
        let name = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        };
        [
            name(&choice.active),
            name(&choice.canary),
            name(&choice.shadow),
        ]
    }

    fn some(name: &str) -> Option<String> {
        Some(name.to_owned())
    }

    #[test]
    fn the_highest_accepted_plain_version_is_active_unless_pinned() {
        let files = known(&[
            ("1.0.0.wasm", false),
            ("1.10.0.wasm", false),
            ("2.0.0.wasm", true),
        ]);
        let mut settings = HandlerSettings::default();
        assert_eq!(
            names(&choose(&files, &settings)),
            [some("1.10.0.wasm"), None, None]
        );
        settings.version = Some("1.0.0".into());
        assert_eq!(
            names(&choose(&files, &settings)),
            [some("1.0.0.wasm"), None, None]
        );
        settings.version = Some("2.0.0".into());
        assert_eq!(names(&choose(&files, &settings)), [None, None, None]);
    }

    #[test]
    fn shadow_and_canary_come_from_markers_or_config_and_are_never_active() {
        let files = known(&[
            ("1.0.0.wasm", false),
            ("2.0.0.wasm", false),
            ("3.0.0.shadow.wasm", false),
            ("4.0.0.canary.wasm", false),
        ]);
        let mut settings = HandlerSettings::default();
        assert_eq!(
            names(&choose(&files, &settings)),
            [
                some("2.0.0.wasm"),
                some("4.0.0.canary.wasm"),
                some("3.0.0.shadow.wasm")
            ]
        );
        settings.shadow = Some("2.0.0".into());
        let choice = choose(&files, &settings);
        assert_eq!(names(&choice)[0], some("1.0.0.wasm"));

        // A rolled-back canary build is not chosen again.
        let mut files = files;
        files.rolled_back = Some(("hash-4.0.0.canary.wasm".into(), "too many".into()));
        assert_eq!(names(&choose(&files, &settings))[1], None);
    }
}
