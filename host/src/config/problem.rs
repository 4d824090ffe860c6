//! What is wrong with a configured value, as a type, and the serde form of
//! the durations the file gives in milliseconds.

use std::time::Duration;

/// What is wrong with one configured value (the key it is at is told apart).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Problem {
    /// A number outside its allowed range.
    #[error("{value} is out of range; allowed: {min} to {max}")]
    OutOfRange {
        /// The value given.
        value: u64,
        /// The smallest allowed.
        min: u64,
        /// The largest allowed.
        max: u64,
    },
    /// A number below its minimum (it has no maximum).
    #[error("{value} is below the minimum {min}")]
    BelowMinimum {
        /// The value given.
        value: u64,
        /// The smallest allowed.
        min: u64,
    },
    /// An empty value where one is needed.
    #[error("must not be empty")]
    Empty,
    /// A version that is not a semantic version.
    #[error("{0:?} is not a semantic version like \"1.2.0\"")]
    NotSemver(String),
    /// A handler name with characters a handler's file name cannot have.
    #[error("{0:?} is not a handler name: use lowercase letters, digits, '-' and '_'")]
    NotHandlerName(String),
    /// A topic name Kafka would refuse.
    #[error("{0}")]
    TopicName(String),
    /// A rule of this one key, said in words.
    #[error("{0}")]
    Rule(String),
}

/// A problem and the dotted key it is at (`routes[1].handler`).
#[derive(Debug)]
pub(super) struct Invalid {
    pub(super) key: String,
    pub(super) problem: Problem,
}

/// The outcome of checking part of the config.
pub(super) type Checked = Result<(), Invalid>;

/// `problem` at `key`, as a failed check.
pub(super) fn invalid<T>(key: impl Into<String>, problem: Problem) -> Result<T, Invalid> {
    Err(Invalid {
        key: key.into(),
        problem,
    })
}

/// `rule` broken at `key`, as a failed check.
pub(super) fn broken<T>(key: impl Into<String>, rule: impl Into<String>) -> Result<T, Invalid> {
    invalid(key, Problem::Rule(rule.into()))
}

/// Checks that `value` is within `min..=max` (`u64::MAX`: no maximum).
pub(super) fn check_range(key: &str, value: u64, min: u64, max: u64) -> Checked {
    if (min..=max).contains(&value) {
        Ok(())
    } else if max == u64::MAX {
        invalid(key, Problem::BelowMinimum { value, min })
    } else {
        invalid(key, Problem::OutOfRange { value, min, max })
    }
}

/// Checks a duration's milliseconds like `check_range`.
pub(super) fn check_millis(key: &str, value: Duration, min: u64, max: u64) -> Checked {
    check_range(key, millis::of(value), min, max)
}

/// Checks that `version`, if given, is a semantic version.
pub(super) fn check_semver(key: impl Into<String>, version: Option<&String>) -> Checked {
    match version {
        Some(v) if semver::Version::parse(v).is_err() => {
            invalid(key, Problem::NotSemver(v.clone()))
        }
        _ => Ok(()),
    }
}

/// A `Duration` written as whole milliseconds (the keys ending in `-ms`).
pub(super) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// The whole milliseconds of `d` (saturating; configs stay far below).
    pub(in crate::config) fn of(d: Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }

    pub(in crate::config) fn serialize<S: Serializer>(
        d: &Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(of(*d))
    }

    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
