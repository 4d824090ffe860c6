//! `[handlers.NAME]`: pinned, shadow and canary versions, and limits of one handler.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::problem::{
    Checked, Problem, broken, check_millis, check_range, check_semver, invalid, millis,
};
use super::{Config, Limits, distinct};

/// What runs for one handler name besides its highest version.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HandlerSettings {
    /// Pin this version as the active one.
    pub version: Option<String>,
    /// Run this version in shadow: it sees every message, its outputs are
    /// compared with the active version's, and none of them is executed.
    pub shadow: Option<String>,
    /// Send a share of keys to a canary version.
    pub canary: Option<CanarySettings>,
    /// Where shadow differences are published (default `<handler>.shadow-diffs`).
    pub shadow_diff_topic: Option<String>,
    /// Sandbox limits of this handler, over `[limits]`.
    pub limits: Option<toml::Table>,
}

impl HandlerSettings {
    /// The canary's settings: a version marked only by its file name
    /// (`.canary.wasm`) is a canary with the defaults.
    pub fn canary_settings(&self) -> CanarySettings {
        self.canary.clone().unwrap_or_default()
    }
}

/// A canary: a share of keys for a candidate version, rolled back on its own
/// when it dead-letters too much.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CanarySettings {
    /// The canary version (or mark a file `<version>.canary.wasm`).
    pub version: Option<String>,
    /// Share of keys it gets, in percent (by key hash, sticky).
    #[serde(default = "default_canary_percent")]
    pub percent: f64,
    /// Roll it back when this share of its messages is dead-lettered...
    #[serde(default = "default_canary_max_dead_letter_rate")]
    pub max_dead_letter_rate: f64,
    /// ...over this window...
    #[serde(
        rename = "window-ms",
        with = "millis",
        default = "default_canary_window"
    )]
    pub window: Duration,
    /// ...once it has handled at least this many messages in it.
    #[serde(default = "default_canary_min_messages")]
    pub min_messages: u64,
}

impl Default for CanarySettings {
    fn default() -> Self {
        CanarySettings {
            version: None,
            percent: default_canary_percent(),
            max_dead_letter_rate: default_canary_max_dead_letter_rate(),
            window: default_canary_window(),
            min_messages: default_canary_min_messages(),
        }
    }
}

impl Config {
    /// The settings of a handler (defaults if it has no section); a route's
    /// `version` pins the handler like `[handlers.NAME] version` does.
    pub fn handler_settings(&self, name: &str) -> HandlerSettings {
        let mut settings = self.handlers.get(name).cloned().unwrap_or_default();
        if settings.version.is_none() {
            settings.version = self
                .routes
                .iter()
                .find(|r| r.handler == name)
                .and_then(|r| r.version.clone());
        }
        settings
    }

    /// The sandbox limits of a handler: `[limits]` with its
    /// `[handlers.NAME.limits]` on top.
    pub fn limits_for(&self, name: &str) -> Limits {
        match self.handlers.get(name).and_then(|h| h.limits.as_ref()) {
            Some(overrides) => self
                .limits
                .merged(overrides)
                .expect("handler limits were validated when the config was loaded"),
            None => self.limits.clone(),
        }
    }

    /// Every handler with limits of its own, and those limits.
    pub fn handler_limits(&self) -> BTreeMap<String, Limits> {
        self.handlers
            .iter()
            .filter(|(_, settings)| settings.limits.is_some())
            .map(|(name, _)| (name.clone(), self.limits_for(name)))
            .collect()
    }

    /// Where a handler's shadow differences are published.
    pub fn shadow_diff_topic(&self, handler: &str) -> String {
        self.handler_settings(handler)
            .shadow_diff_topic
            .unwrap_or_else(|| format!("{handler}.shadow-diffs"))
    }

    /// Every routed handler's shadow-diff topic, each once, in route order.
    pub fn shadow_diff_topics(&self) -> Vec<String> {
        distinct(
            self.routes
                .iter()
                .map(|r| self.shadow_diff_topic(&r.handler)),
        )
    }

    pub(super) fn validate_handlers(&self) -> Checked {
        for (i, route) in self.routes.iter().enumerate() {
            let pinned = self
                .handlers
                .get(&route.handler)
                .and_then(|h| h.version.as_ref());
            let other_route = self.routes[..i]
                .iter()
                .find(|r| r.handler == route.handler && r.version != route.version);
            if route.version.is_some()
                && (other_route.is_some()
                    || pinned.is_some_and(|p| Some(p) != route.version.as_ref()))
            {
                return broken(
                    format!("routes[{i}].version"),
                    format!(
                        "handler {:?} is pinned to another version elsewhere; pin it once, in [handlers.{}]",
                        route.handler, route.handler
                    ),
                );
            }
        }
        for (name, settings) in &self.handlers {
            if !is_handler_name(name) {
                return invalid(
                    format!("handlers.{name}"),
                    Problem::NotHandlerName(name.clone()),
                );
            }
            settings.validate(&self.limits, |field| format!("handlers.{name}.{field}"))?;
        }
        Ok(())
    }
}

impl HandlerSettings {
    /// Checks one handler's section over the host-wide `limits`; `key`
    /// names a field of it.
    fn validate(&self, limits: &Limits, key: impl Fn(&str) -> String) -> Checked {
        check_semver(key("version"), self.version.as_ref())?;
        check_semver(key("shadow"), self.shadow.as_ref())?;
        if let Some(overrides) = &self.limits {
            match limits.merged(overrides) {
                Ok(merged) => merged.validate(&key("limits"))?,
                Err(message) => return broken(key("limits"), message),
            }
        }
        if let Some(canary) = &self.canary {
            canary.validate(&key)?;
        }
        let marked = [
            ("shadow", self.shadow.as_ref()),
            (
                "canary.version",
                self.canary.as_ref().and_then(|c| c.version.as_ref()),
            ),
        ];
        for (field, version) in marked {
            if version.is_some() && version == self.version.as_ref() {
                return broken(
                    key(field),
                    "is the pinned active version; a version is active, shadow or canary, not two of them",
                );
            }
        }
        Ok(())
    }
}

impl CanarySettings {
    fn validate(&self, key: impl Fn(&str) -> String) -> Checked {
        check_semver(key("canary.version"), self.version.as_ref())?;
        if !(self.percent > 0.0 && self.percent <= 100.0) {
            return broken(
                key("canary.percent"),
                format!(
                    "{} is out of range; allowed: above 0 up to 100",
                    self.percent
                ),
            );
        }
        if !(0.0..=1.0).contains(&self.max_dead_letter_rate) {
            return broken(
                key("canary.max-dead-letter-rate"),
                format!(
                    "{} is out of range; allowed: 0 to 1 (a share of messages)",
                    self.max_dead_letter_rate
                ),
            );
        }
        check_millis(&key("canary.window-ms"), self.window, 100, 86_400_000)?;
        check_range(&key("canary.min-messages"), self.min_messages, 1, u64::MAX)
    }
}

/// Whether `name` can name a handler (and thus a folder in the handlers directory).
pub(crate) fn is_handler_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn default_canary_percent() -> f64 {
    10.0
}
fn default_canary_max_dead_letter_rate() -> f64 {
    0.1
}
fn default_canary_window() -> Duration {
    Duration::from_millis(60_000)
}
fn default_canary_min_messages() -> u64 {
    20
}
