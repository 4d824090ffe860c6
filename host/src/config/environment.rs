//! Settings from the environment, layered over the config file, so one
//! image can be pointed at another broker, group, store or admin address
//! without rewriting the file.
//!
//! One rule: `SLUICE_` then the key in capitals, `-` written `_`, and a
//! key of a section after the section's name (`SLUICE_GROUP_ID` is
//! `group-id`, `SLUICE_ADMIN_LISTEN` is `admin.listen`). In
//! the `[kafka.*]` sections, `_` stands for librdkafka's
//! `.` (`SLUICE_KAFKA_CONSUMER_SASL_PASSWORD` is `sasl.password`). A
//! variable ending in `_FILE` names a file holding the value (secrets
//! mounted as files). A value is a string unless its key wants a number, a
//! boolean or a list, when it is read as TOML. A `SLUICE_` variable that
//! names no setting is ignored with a warning: platforms set some of their
//! own (Kubernetes writes `SLUICE_PORT` for a service named sluice).

use std::path::PathBuf;

/// Sections whose keys the environment may set one by one, longest first.
const SECTIONS: [&str; 12] = [
    "kafka.common",
    "kafka.consumer",
    "kafka.producer",
    "embedded",
    "decider",
    "timers",
    "limits",
    "source",
    "admin",
    "store",
    "trace",
    "otlp",
];

const PREFIX: &str = "SLUICE_";
const FROM_FILE: &str = "_FILE";

/// One setting taken from the environment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Setting {
    /// The variable it came from.
    pub(crate) var: String,
    /// The key it sets, one name per level (`["admin", "listen"]`).
    pub(crate) key: Vec<String>,
    /// Its value, as given (a `_FILE` variable's: the file's contents).
    pub(crate) value: String,
}

impl Setting {
    /// The key, dotted as the config file would nest it.
    pub(crate) fn dotted(&self) -> String {
        self.key.join(".")
    }

    /// Whether `problem`, found at `at` while deserializing, says that this
    /// setting's key is not one of sluice's.
    pub(crate) fn names_unknown(&self, at: &str, problem: &str) -> bool {
        let (last, sections) = self.key.split_last().expect("a key has a name");
        problem.starts_with(&format!("unknown field `{last}`"))
            && (at == "." || at == self.dotted() || at == sections.join("."))
    }

    /// Whether the value must stay a string whatever it looks like.
    fn always_text(&self) -> bool {
        self.key.first().is_some_and(|k| k == "kafka")
    }
}

/// A `_FILE` variable whose file cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{var}: cannot read {path}: {source}")]
pub struct SecretFileError {
    var: String,
    path: PathBuf,
    source: std::io::Error,
}

/// The settings among `vars` (names and values of the environment). Names
/// this rule does not cover (`SLUICE_CONFIG`, `SLUICE_LOG_FORMAT`, which
/// the command line reads) are left out.
pub(crate) fn settings(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Setting>, SecretFileError> {
    let mut settings = Vec::new();
    for (var, value) in vars {
        let Some(name) = var.strip_prefix(PREFIX) else {
            continue;
        };
        if matches!(name, "CONFIG" | "LOG_FORMAT") || name.is_empty() {
            continue;
        }
        let (name, value) = match name.strip_suffix(FROM_FILE) {
            // `SLUICE_SOURCE_FILE` is the key `source.file`.
            Some(rest) if !SECTIONS.iter().any(|s| upper(s) == rest) && !rest.is_empty() => {
                let path = PathBuf::from(&value);
                let text = std::fs::read_to_string(&path).map_err(|source| SecretFileError {
                    var: var.clone(),
                    path,
                    source,
                })?;
                (rest, text.trim_end_matches(['\n', '\r']).to_owned())
            }
            _ => (name, value),
        };
        settings.push(Setting {
            key: key_of(name),
            var,
            value,
        });
    }
    settings.sort_by(|a, b| a.var.cmp(&b.var));
    Ok(settings)
}

/// The key a variable's name (without `SLUICE_`) sets.
fn key_of(name: &str) -> Vec<String> {
    for section in SECTIONS {
        let Some(rest) = name
            .strip_prefix(&upper(section))
            .and_then(|rest| rest.strip_prefix('_'))
            .filter(|rest| !rest.is_empty())
        else {
            continue;
        };
        let separator = if section.starts_with("kafka.") {
            "."
        } else {
            "-"
        };
        let mut key: Vec<String> = section.split('.').map(str::to_owned).collect();
        key.push(rest.to_ascii_lowercase().replace('_', separator));
        return key;
    }
    vec![name.to_ascii_lowercase().replace('_', "-")]
}

fn upper(section: &str) -> String {
    section.to_ascii_uppercase().replace('.', "_")
}

/// Sets `setting` in `table`: as a string, or read as a TOML value when
/// `typed` (a number, boolean or list its key wants). `false` if a typed
/// value is not TOML.
pub(crate) fn apply(table: &mut toml::Table, setting: &Setting, typed: bool) -> bool {
    let value = if typed && !setting.always_text() {
        match toml::from_str::<toml::Table>(&format!("v = {}", setting.value)) {
            Ok(mut parsed) => parsed.remove("v").expect("parsed v"),
            Err(_) => return false,
        }
    } else {
        toml::Value::String(setting.value.clone())
    };
    let (last, sections) = setting.key.split_last().expect("a key has a name");
    let mut place = table;
    for section in sections {
        let entry = place
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        place = entry.as_table_mut().expect("made a table");
    }
    place.insert(last.clone(), value);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(names: &[&str]) -> Vec<String> {
        let vars = names.iter().map(|n| (n.to_string(), "v".to_owned()));
        settings(vars)
            .unwrap()
            .iter()
            .map(Setting::dotted)
            .collect()
    }

    #[test]
    fn one_rule_maps_a_variable_to_its_key() {
        assert_eq!(
            keys(&[
                "SLUICE_BROKERS",
                "SLUICE_GROUP_ID",
                "SLUICE_HANDLERS_DIR",
                "SLUICE_ADMIN_LISTEN",
                "SLUICE_STORE_URL",
                "SLUICE_KAFKA_CONSUMER_SASL_PASSWORD",
                "SLUICE_KAFKA_PRODUCER_SECURITY_PROTOCOL",
                "SLUICE_KAFKA_COMMON_SASL_PASSWORD",
                "SLUICE_SOURCE_FILE",
                "SLUICE_LIMITS_MEMORY_MIB",
                "SLUICE_MAX_IN_FLIGHT_MIB",
            ]),
            [
                "admin.listen",
                "brokers",
                "group-id",
                "handlers-dir",
                "kafka.common.sasl.password",
                "kafka.consumer.sasl.password",
                "kafka.producer.security.protocol",
                "limits.memory-mib",
                "max-in-flight-mib",
                "source.file",
                "store.url",
            ]
        );
    }

    #[test]
    fn variables_the_command_line_reads_or_not_sluices_are_left_out() {
        assert!(
            keys(&[
                "SLUICE_CONFIG",
                "SLUICE_LOG_FORMAT",
                "SLUICE_",
                "PATH",
                "XSLUICE_A"
            ])
            .is_empty()
        );
    }

    #[test]
    fn a_file_variable_reads_its_value_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("password");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let vars = [(
            "SLUICE_KAFKA_CONSUMER_SASL_PASSWORD_FILE".to_owned(),
            secret.display().to_string(),
        )];
        let found = settings(vars).unwrap();
        assert_eq!(found[0].dotted(), "kafka.consumer.sasl.password");
        assert_eq!(found[0].value, "s3cret");
        let missing = [(
            "SLUICE_STORE_URL_FILE".to_owned(),
            dir.path().join("nowhere").display().to_string(),
        )];
        let error = settings(missing).unwrap_err().to_string();
        assert!(
            error.starts_with("SLUICE_STORE_URL_FILE: cannot read "),
            "{error}"
        );
    }

    #[test]
    fn a_value_is_text_unless_read_as_toml_and_kafka_properties_stay_text() {
        let setting = |var: &str, value: &str| {
            settings([(var.to_owned(), value.to_owned())])
                .unwrap()
                .remove(0)
        };
        let mut table = toml::Table::new();
        assert!(apply(
            &mut table,
            &setting("SLUICE_ADMIN_LISTEN", "9464"),
            false
        ));
        assert!(apply(
            &mut table,
            &setting("SLUICE_MAX_IN_FLIGHT", "500"),
            true
        ));
        assert!(apply(
            &mut table,
            &setting("SLUICE_KAFKA_CONSUMER_FETCH_MAX_BYTES", "1024"),
            true
        ));
        assert!(!apply(
            &mut table,
            &setting("SLUICE_WATCH_HANDLERS", "maybe"),
            true
        ));
        assert_eq!(table["admin"]["listen"].as_str(), Some("9464"));
        assert_eq!(table["max-in-flight"].as_integer(), Some(500));
        assert_eq!(
            table["kafka"]["consumer"]["fetch.max.bytes"].as_str(),
            Some("1024")
        );
    }
}
