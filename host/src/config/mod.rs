//! The TOML configuration: schema, defaults, and validation that names the
//! offending key and says what is allowed.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod admin;
mod environment;
mod handlers;
mod limits;
mod otlp;
mod problem;
mod routes;
mod source;
mod store;
#[cfg(test)]
mod tests;

pub use admin::{ADMIN_TOKEN_ENV, Admin};
pub use environment::SecretFileError;
pub(crate) use handlers::is_handler_name;
pub use handlers::{CanarySettings, HandlerSettings};
pub use limits::{InstanceStrategy, Limits};
pub use otlp::{Otlp, OtlpExport};
pub use problem::Problem;
pub use routes::{
    BreakerPolicy, DeliveryMode, HttpPolicy, OnDeadLetter, OnInvalidInput, Ordering, RetryPolicy,
    Route,
};
pub use source::{Embedded, KafkaProperties, Source};
pub use store::{DeciderSettings, StoreBackend, StoreConfig, TimerSettings};

use environment::Setting;
use problem::{Checked, Invalid, check_millis, check_range, invalid, millis};

/// What `brokers = "embedded"` means: an in-process Kafka-protocol broker.
pub const EMBEDDED: &str = "embedded";

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema.
    #[error("config {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's explanation (with line and column, and the key).
        message: String,
    },
    /// A setting's `_FILE` variable names a file that cannot be read.
    #[error(transparent)]
    SecretFile(#[from] SecretFileError),
    /// A value is out of range or inconsistent.
    #[error("config {path}: {key}: {problem}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The offending key, dotted (`routes[1].handler`).
        key: String,
        /// What is wrong and what is allowed.
        problem: Problem,
    },
}

/// The whole configuration of one `sluice run`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// `"embedded"` or a comma-separated list of `host:port`.
    pub brokers: String,
    /// Kafka consumer group id.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Directory of handler components: `<name>/<version>.wasm` or `<name>@<version>.wasm`.
    #[serde(default = "default_handlers_dir")]
    pub handlers_dir: PathBuf,
    /// How often stored offsets are committed.
    #[serde(
        rename = "commit-interval-ms",
        with = "millis",
        default = "default_commit_interval"
    )]
    pub commit_interval: Duration,
    /// How long a stop waits for in-flight messages before giving up on them.
    #[serde(
        rename = "shutdown-timeout-ms",
        with = "millis",
        default = "default_shutdown_timeout"
    )]
    pub shutdown_timeout: Duration,
    /// How long a revoked partition's in-flight messages may take to finish
    /// before its offsets are committed and it is let go.
    #[serde(
        rename = "revoke-timeout-ms",
        with = "millis",
        default = "default_revoke_timeout"
    )]
    pub revoke_timeout: Duration,
    /// Messages in flight in this host, over all partitions; at the cap,
    /// partitions are paused.
    #[serde(default = "default_host_max_in_flight")]
    pub max_in_flight: usize,
    /// MiB of handler outputs this host holds while their effects run, over
    /// all partitions; at the cap, lanes stop calling handlers (and pause
    /// their partitions) until effects finish and give bytes back.
    #[serde(default = "default_max_in_flight_mib")]
    pub max_in_flight_mib: u64,
    /// Sandbox limits applied to every handler.
    #[serde(default)]
    pub limits: Limits,
    /// Topic → handler routes.
    pub routes: Vec<Route>,
    /// Where messages come from (default: the routes' topics on the brokers).
    #[serde(default)]
    pub source: Source,
    /// Settings of the embedded broker.
    pub embedded: Option<Embedded>,
    /// Extra librdkafka properties.
    #[serde(default)]
    pub kafka: KafkaProperties,
    /// Per-handler settings (pin, shadow, canary), by handler name.
    #[serde(default)]
    pub handlers: BTreeMap<String, HandlerSettings>,
    /// Watch the handlers directory and swap versions in while running.
    #[serde(default = "default_watch_handlers")]
    pub watch_handlers: bool,
    /// How long a handler file must stay unchanged before it is loaded, so a
    /// copy in progress is not.
    #[serde(
        rename = "handler-settle-ms",
        with = "millis",
        default = "default_handler_settle"
    )]
    pub handler_settle: Duration,
    /// Where compiled handlers are cached, by content hash and engine settings.
    #[serde(default = "default_artifact_cache")]
    pub artifact_cache: PathBuf,
    /// The admin HTTP server (`/handlers`, `/metrics`).
    #[serde(default)]
    pub admin: Admin,
    /// The event store of decider handlers.
    #[serde(default)]
    pub store: StoreConfig,
    /// How decider handlers load, decide and append.
    #[serde(default)]
    pub decider: DeciderSettings,
    /// How timers are fired.
    #[serde(default)]
    pub timers: TimerSettings,
    /// Tracing: correlation ids.
    #[serde(default)]
    pub trace: TraceSettings,
    /// Export of spans and metrics over OTLP/HTTP.
    #[serde(default)]
    pub otlp: Otlp,
    /// Directory relative paths are resolved against (the config file's).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// A config file's text, and the directory its relative paths resolve
/// against (the file's own).
fn read(path: &Path) -> Result<(String, PathBuf), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let base_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok((text, base_dir.to_owned()))
}

/// Tracing (`[trace]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TraceSettings {
    /// Input headers holding a correlation id, in order of preference: the
    /// first present is logged with the message and copied onto its outputs.
    #[serde(default = "default_correlation_headers")]
    pub correlation_headers: Vec<String>,
}

impl Default for TraceSettings {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let (text, base_dir) = read(path)?;
        Config::parse(&text, path, &base_dir)
    }

    /// Reads a config file (or none: the environment alone), layers the
    /// `SLUICE_*` settings of the environment over it (see
    /// `environment`), and validates the result.
    pub fn load_with_environment(path: Option<&Path>) -> Result<Config, ConfigError> {
        let settings = environment::settings(std::env::vars())?;
        Config::layered(path, &settings)
    }

    fn layered(path: Option<&Path>, settings: &[Setting]) -> Result<Config, ConfigError> {
        let (text, shown, base_dir) = match path {
            Some(path) if settings.is_empty() => return Config::load(path),
            Some(path) => {
                let (text, base_dir) = read(path)?;
                let shown = format!("{} with SLUICE_* from the environment", path.display());
                (text, shown, base_dir)
            }
            None => (String::new(), "from the environment".to_owned(), ".".into()),
        };
        let broken = |message: String| ConfigError::Parse {
            path: shown.clone().into(),
            message,
        };
        let file: toml::Table = toml::from_str(&text)
            .map_err(|e| broken(e.to_string().trim_end().replace('\n', " | ")))?;
        // Each setting starts as a string; one its key refuses as a string
        // is read as TOML, one naming no key is dropped, and the whole is
        // deserialized again.
        let mut typed = vec![false; settings.len()];
        let mut ignored = vec![false; settings.len()];
        let mut config: Config = loop {
            let mut layered = file.clone();
            for (n, setting) in settings.iter().enumerate() {
                if !ignored[n] {
                    environment::apply(&mut layered, setting, typed[n]);
                }
            }
            let error = match serde_path_to_error::deserialize(toml::Value::Table(layered)) {
                Ok(config) => break config,
                Err(error) => error,
            };
            let at = error.path().to_string();
            let problem = error.inner().to_string().trim_end().replace('\n', " | ");
            let named = settings.iter().enumerate().position(|(n, s)| {
                !ignored[n] && (s.dotted() == at || s.names_unknown(&at, &problem))
            });
            match named {
                Some(n) if settings[n].names_unknown(&at, &problem) => ignored[n] = true,
                Some(n)
                    if !typed[n]
                        && environment::apply(&mut toml::Table::new(), &settings[n], true) =>
                {
                    typed[n] = true
                }
                Some(n) => {
                    return Err(broken(format!(
                        "{at}: {problem} (from {})",
                        settings[n].var
                    )));
                }
                None => return Err(broken(format!("{at}: {problem}"))),
            }
        };
        for setting in settings.iter().zip(&ignored).filter(|(_, i)| **i) {
            tracing::warn!(variable = %setting.0.var, "ignored: names no setting of sluice's");
        }
        config.base_dir = base_dir;
        config
            .validate()
            .map_err(|Invalid { key, problem }| ConfigError::Invalid {
                path: shown.into(),
                key,
                problem,
            })?;
        Ok(config)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path, base_dir: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " | "),
        })?;
        config.base_dir = base_dir.to_owned();
        config
            .validate()
            .map_err(|Invalid { key, problem }| ConfigError::Invalid {
                path: path.to_owned(),
                key,
                problem,
            })?;
        Ok(config)
    }

    /// One route on the embedded broker, with `extra` config text: for the
    /// tests of what a config makes of its clients.
    #[cfg(test)]
    pub(crate) fn with_one_route(extra: &str) -> Config {
        let text = format!(
            "brokers = \"embedded\"\n{extra}\n[[routes]]\ntopic = \"in\"\nhandler = \"echo\"\npublish-to = [\"*\"]\n"
        );
        Config::parse(&text, "test.toml".as_ref(), ".".as_ref()).unwrap()
    }

    /// True when the config asks for the in-process broker.
    pub fn is_embedded(&self) -> bool {
        self.brokers == EMBEDDED
    }

    /// Resolves a path from the config against the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.base_dir.join(path)
    }

    /// Topics of exactly-once routes: their offsets commit in transactions.
    pub fn transactional_topics(&self) -> HashSet<String> {
        self.routes
            .iter()
            .filter(|r| r.delivery == DeliveryMode::ExactlyOnce)
            .map(|r| r.topic.clone())
            .collect()
    }

    /// The route for a topic.
    pub fn route(&self, topic: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.topic == topic)
    }

    fn validate(&self) -> Checked {
        if self.brokers != EMBEDDED {
            let well_formed = !self.brokers.trim().is_empty()
                && self.brokers.split(',').all(|b| {
                    b.trim()
                        .rsplit_once(':')
                        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
                });
            if !well_formed {
                return problem::broken(
                    "brokers",
                    format!(
                        "{:?} is not \"embedded\" nor a comma-separated list of host:port",
                        self.brokers
                    ),
                );
            }
            if self.embedded.is_some() {
                return problem::broken("embedded", "only allowed with brokers = \"embedded\"");
            }
        }
        if self.group_id.trim().is_empty() {
            return invalid("group-id", Problem::Empty);
        }
        check_millis("commit-interval-ms", self.commit_interval, 10, 3_600_000)?;
        check_millis("shutdown-timeout-ms", self.shutdown_timeout, 0, 3_600_000)?;
        self.limits.validate("limits")?;
        self.store.validate()?;
        self.decider.validate()?;
        self.timers.validate()?;
        self.validate_routes()?;
        self.validate_handlers()?;
        self.validate_publish_to()?;
        check_range("max-in-flight-mib", self.max_in_flight_mib, 1, 1 << 20)?;
        check_millis("handler-settle-ms", self.handler_settle, 0, 600_000)?;
        self.admin.validate()?;
        self.otlp.validate()?;
        if let Some(embedded) = &self.embedded {
            embedded.validate()?;
        }
        self.kafka.validate()
    }
}

/// `items` without repeats, first occurrence first.
fn distinct(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut seen = HashSet::new();
    items.filter(|item| seen.insert(item.clone())).collect()
}

fn default_group_id() -> String {
    "sluice".into()
}
fn default_handlers_dir() -> PathBuf {
    "handlers".into()
}
fn default_commit_interval() -> Duration {
    Duration::from_millis(1000)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_millis(30_000)
}
fn default_revoke_timeout() -> Duration {
    Duration::from_millis(10_000)
}
fn default_host_max_in_flight() -> usize {
    10_000
}
fn default_max_in_flight_mib() -> u64 {
    256
}
fn default_watch_handlers() -> bool {
    true
}
fn default_handler_settle() -> Duration {
    Duration::from_millis(500)
}
fn default_artifact_cache() -> PathBuf {
    ".sluice-cache".into()
}
fn default_correlation_headers() -> Vec<String> {
    vec!["x-correlation-id".into(), "correlation-id".into()]
}
