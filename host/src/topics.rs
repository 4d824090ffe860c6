//! Kafka topic names as sluice sees them: which names Kafka accepts, which
//! topics sluice keeps for itself (no handler may publish there, whatever
//! its route allows), and the patterns of a route's `publish-to` list.
//! The config checks its own names with these rules before a host starts;
//! `effects::authority` checks every publish a handler asks for.

use std::collections::HashMap;
use std::fmt;

/// The longest topic name Kafka accepts.
const MAX_TOPIC_LEN: usize = 249;

/// What is wrong with a name Kafka would refuse as a topic, if anything.
pub(crate) fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("a topic name cannot be empty".into());
    }
    if name.len() > MAX_TOPIC_LEN {
        return Some(format!(
            "a topic name has at most {MAX_TOPIC_LEN} characters, this one {}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Some(format!("{name:?} cannot name a topic"));
    }
    name.chars().find(|c| !is_topic_char(*c)).map(|c| {
        format!(
            "{c:?} is not allowed in a topic name (only ASCII letters, digits, '.', '_' and '-')"
        )
    })
}

fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Why a topic is kept from every handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reserved {
    /// Dead letters are sluice's own: a forged one would be re-driven as if
    /// it came from any source offset, or park an innocent key.
    DeadLetter,
    /// Shadow differences are sluice's report on a candidate version.
    ShadowDiff,
    /// Kafka's own (`__consumer_offsets`, `__transaction_state`, ...).
    Internal,
}

impl fmt::Display for Reserved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reserved::DeadLetter => "a dead-letter topic",
            Reserved::ShadowDiff => "a shadow-diff topic",
            Reserved::Internal => "a Kafka-internal topic",
        })
    }
}

/// Suffixes of sluice's default dead-letter and shadow-diff topic names:
/// reserved even when this host's config does not name them, since other
/// hosts on the cluster write (and read back) theirs.
const RESERVED_SUFFIXES: [(&str, Reserved); 2] = [
    (".dlq", Reserved::DeadLetter),
    (".shadow-diffs", Reserved::ShadowDiff),
];

/// The topics no handler may publish to.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReservedTopics {
    named: HashMap<String, Reserved>,
}

impl ReservedTopics {
    /// The configured dead-letter and shadow-diff topics, besides the
    /// reserved prefix (`__`) and suffixes (`.dlq`, `.shadow-diffs`).
    pub(crate) fn new<'a>(
        dead_letters: impl IntoIterator<Item = &'a str>,
        shadow_diffs: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let mut named = HashMap::new();
        for topic in shadow_diffs {
            named.insert(topic.to_owned(), Reserved::ShadowDiff);
        }
        for topic in dead_letters {
            named.insert(topic.to_owned(), Reserved::DeadLetter);
        }
        ReservedTopics { named }
    }

    /// Why `topic` is reserved, if it is.
    pub(crate) fn reason(&self, topic: &str) -> Option<Reserved> {
        if topic.starts_with("__") {
            return Some(Reserved::Internal);
        }
        if let Some(reserved) = self.named.get(topic) {
            return Some(*reserved);
        }
        RESERVED_SUFFIXES
            .iter()
            .find(|(suffix, _)| topic.ends_with(suffix))
            .map(|(_, reserved)| *reserved)
    }
}

/// One entry of a `publish-to` list: a topic, or every topic that starts
/// with a prefix (`orders.*`; `*` alone for every topic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TopicPattern {
    Exact(String),
    Prefix(String),
}

impl TopicPattern {
    /// Reads an entry, or says why it is not one.
    pub(crate) fn parse(entry: &str) -> Result<TopicPattern, String> {
        match entry.strip_suffix('*') {
            Some(prefix) => match prefix.chars().find(|c| !is_topic_char(*c)) {
                Some(c) => Err(format!(
                    "{entry:?}: {c:?} is not allowed in a topic name; a pattern is a name, or a prefix ending in one '*'"
                )),
                None => Ok(TopicPattern::Prefix(prefix.to_owned())),
            },
            None => match name_problem(entry) {
                Some(problem) => Err(format!("{entry:?}: {problem}")),
                None => Ok(TopicPattern::Exact(entry.to_owned())),
            },
        }
    }

    /// Whether `topic` is one the pattern names.
    pub(crate) fn matches(&self, topic: &str) -> bool {
        match self {
            TopicPattern::Exact(name) => name == topic,
            TopicPattern::Prefix(prefix) => topic.starts_with(prefix.as_str()),
        }
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicPattern::Exact(name) => f.write_str(name),
            TopicPattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_kafka_refuses_are_explained() {
        for good in ["orders", "orders.v1", "a_b-c", &"x".repeat(249)] {
            assert_eq!(name_problem(good), None, "{good}");
        }
        let problem = |name: &str| name_problem(name).unwrap();
        assert!(problem("").contains("empty"));
        assert!(problem(&"x".repeat(250)).contains("at most 249"));
        assert!(problem("..").contains("cannot name a topic"));
        assert!(problem("a\0b").contains("'\\0' is not allowed"));
        assert!(problem("a b").contains("' ' is not allowed"));
        assert!(problem("a/b").contains("'/' is not allowed"));
        assert!(problem("é").contains("not allowed"));
    }

    #[test]
    fn dead_letter_shadow_and_internal_topics_are_reserved() {
        let reserved = ReservedTopics::new(["errors"], ["diffs"]);
        assert_eq!(reserved.reason("errors"), Some(Reserved::DeadLetter));
        assert_eq!(reserved.reason("in.dlq"), Some(Reserved::DeadLetter));
        assert_eq!(reserved.reason("diffs"), Some(Reserved::ShadowDiff));
        assert_eq!(
            reserved.reason("h.shadow-diffs"),
            Some(Reserved::ShadowDiff)
        );
        assert_eq!(
            reserved.reason("__consumer_offsets"),
            Some(Reserved::Internal)
        );
        assert_eq!(
            reserved.reason("__transaction_state"),
            Some(Reserved::Internal)
        );
        assert_eq!(reserved.reason("orders"), None);
        assert_eq!(reserved.reason("dlq"), None);
        assert_eq!(reserved.reason("_private"), None);
    }

    #[test]
    fn patterns_are_names_or_prefixes() {
        let orders = TopicPattern::parse("orders.*").unwrap();
        assert!(orders.matches("orders.created") && orders.matches("orders."));
        assert!(!orders.matches("orders") && !orders.matches("ordersx"));
        let any = TopicPattern::parse("*").unwrap();
        assert!(any.matches("anything"));
        let exact = TopicPattern::parse("emails").unwrap();
        assert!(exact.matches("emails") && !exact.matches("emails2"));
        assert_eq!(orders.to_string(), "orders.*");
        assert!(
            TopicPattern::parse("a*b")
                .unwrap_err()
                .contains("'*' is not allowed")
        );
        assert!(TopicPattern::parse("**").is_err());
        assert!(TopicPattern::parse("").unwrap_err().contains("empty"));
        assert!(TopicPattern::parse("a b").is_err());
    }
}
