//! `[otlp]`: where the host exports its spans and metrics over OTLP/HTTP,
//! layered over the standard `OTEL_*` variables an operator (or the
//! OpenTelemetry operator) sets for every service in a cluster. A key in
//! the file wins over its `OTEL_*` variable; `SLUICE_OTLP_*` wins over the
//! file, as every `SLUICE_` variable does.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Url;

use super::problem::{Checked, broken, check_millis, check_range};

/// OTLP export settings as the file gives them; unset keys fall back to
/// the `OTEL_*` variables, then to the OpenTelemetry defaults.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Otlp {
    /// Base URL of an OTLP/HTTP receiver (`http://collector:4318`);
    /// `/v1/traces` and `/v1/metrics` are appended. None here nor in
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: nothing is exported.
    pub endpoint: Option<String>,
    /// The full URL spans go to, instead of `endpoint` + `/v1/traces`.
    pub traces_endpoint: Option<String>,
    /// The full URL metrics go to, instead of `endpoint` + `/v1/metrics`.
    pub metrics_endpoint: Option<String>,
    /// Headers sent with every export (a collector's API key), over those
    /// of `OTEL_EXPORTER_OTLP_HEADERS`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `service.name` of the resource (default: `OTEL_SERVICE_NAME`, then
    /// `service.name` in the resource attributes, then "sluice").
    pub service_name: Option<String>,
    /// Resource attributes, over those of `OTEL_RESOURCE_ATTRIBUTES`.
    #[serde(default)]
    pub resource_attributes: BTreeMap<String, String>,
    /// How often metrics are exported (default `OTEL_METRIC_EXPORT_INTERVAL`,
    /// then 60000).
    pub metrics_interval_ms: Option<u64>,
    /// How long one export may take (default `OTEL_EXPORTER_OTLP_TIMEOUT`,
    /// then 10000).
    pub timeout_ms: Option<u64>,
    /// Spans waiting for export at most; closed beyond it, they are dropped
    /// and counted (default `OTEL_BSP_MAX_QUEUE_SIZE`, then 2048).
    pub max_queued_spans: Option<u64>,
}

/// What to export and where, resolved from `[otlp]` and the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpExport {
    /// Where spans go; none: spans are not exported.
    pub traces: Option<Url>,
    /// Where metrics go; none: metrics are not exported.
    pub metrics: Option<Url>,
    /// Headers of every export request.
    pub headers: Vec<(String, String)>,
    /// The resource's attributes, `service.name` among them.
    pub resource: Vec<(String, String)>,
    /// How often metrics are exported.
    pub metrics_interval: Duration,
    /// How long one export may take.
    pub timeout: Duration,
    /// Spans waiting for export at most.
    pub max_queued_spans: usize,
}

const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";

impl Otlp {
    /// The export these settings and `env` (a variable's value by name)
    /// ask for; `None` when nothing is to be exported. An error names the
    /// key or the variable that is wrong.
    pub fn export(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<OtlpExport>, (String, String)> {
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        for protocol in [
            PROTOCOL,
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        ] {
            if let Some(value) = env(protocol)
                && value.trim() != "http/protobuf"
            {
                return Err((
                    protocol.to_owned(),
                    format!(
                        "{value:?}: sluice exports OTLP over HTTP with protobuf only (\"http/protobuf\"); point the endpoint at the collector's OTLP/HTTP port (4318)"
                    ),
                ));
            }
        }
        let base = match &self.endpoint {
            Some(endpoint) => Some(("otlp.endpoint".to_owned(), endpoint.clone())),
            None => env(ENDPOINT).map(|e| (ENDPOINT.to_owned(), e)),
        };
        let signal = |own: &Option<String>, key: &str, var: &str, path: &str, exporter: &str| {
            if env(exporter).is_some_and(|v| v.trim() == "none") {
                return Ok(None);
            }
            let (at, url) = match (own, env(var), &base) {
                (Some(url), _, _) => (format!("otlp.{key}"), url.clone()),
                (None, Some(url), _) => (var.to_owned(), url),
                (None, None, Some((at, base))) => {
                    (at.clone(), format!("{}{path}", base.trim_end_matches('/')))
                }
                (None, None, None) => return Ok(None),
            };
            parse_url(&url).map(Some).map_err(|rule| (at, rule))
        };
        let traces = signal(
            &self.traces_endpoint,
            "traces-endpoint",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "/v1/traces",
            "OTEL_TRACES_EXPORTER",
        )?;
        let metrics = signal(
            &self.metrics_endpoint,
            "metrics-endpoint",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "/v1/metrics",
            "OTEL_METRICS_EXPORTER",
        )?;
        if traces.is_none() && metrics.is_none() {
            return Ok(None);
        }
        let mut headers = pairs(HEADERS, env(HEADERS).as_deref())?;
        merge(&mut headers, &self.headers);
        for (name, value) in &headers {
            let valid = reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok()
                && reqwest::header::HeaderValue::from_str(value).is_ok();
            if !valid {
                return Err((
                    "otlp.headers".to_owned(),
                    format!("{name:?} is not a valid HTTP header"),
                ));
            }
        }
        let mut resource = pairs(RESOURCE_ATTRIBUTES, env(RESOURCE_ATTRIBUTES).as_deref())?;
        merge(&mut resource, &self.resource_attributes);
        let service = self
            .service_name
            .clone()
            .or_else(|| env(SERVICE_NAME))
            .or_else(|| {
                resource
                    .iter()
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_else(|| "sluice".to_owned());
        merge(
            &mut resource,
            &BTreeMap::from([("service.name".to_owned(), service)]),
        );
        let number = |own: Option<u64>, var: &str, default: u64| -> Result<u64, (String, String)> {
            match (own, env(var)) {
                (Some(own), _) => Ok(own),
                (None, Some(text)) => text
                    .trim()
                    .parse()
                    .map_err(|_| (var.to_owned(), format!("{text:?} is not a whole number"))),
                (None, None) => Ok(default),
            }
        };
        let export = OtlpExport {
            traces,
            metrics,
            headers,
            resource,
            metrics_interval: Duration::from_millis(number(
                self.metrics_interval_ms,
                "OTEL_METRIC_EXPORT_INTERVAL",
                60_000,
            )?),
            timeout: Duration::from_millis(number(
                self.timeout_ms,
                "OTEL_EXPORTER_OTLP_TIMEOUT",
                10_000,
            )?),
            max_queued_spans: number(self.max_queued_spans, "OTEL_BSP_MAX_QUEUE_SIZE", 2048)?
                as usize,
        };
        let checked =
            |check: Checked| check.map_err(|invalid| (invalid.key, invalid.problem.to_string()));
        checked(check_millis(
            "otlp.metrics-interval-ms",
            export.metrics_interval,
            100,
            3_600_000,
        ))?;
        checked(check_millis(
            "otlp.timeout-ms",
            export.timeout,
            100,
            600_000,
        ))?;
        checked(check_range(
            "otlp.max-queued-spans",
            export.max_queued_spans as u64,
            1,
            1 << 20,
        ))?;
        Ok(Some(export))
    }

    /// `export` with this process's environment.
    pub fn export_here(&self) -> Result<Option<OtlpExport>, (String, String)> {
        self.export(|name| std::env::var(name).ok())
    }

    pub(super) fn validate(&self) -> Checked {
        match self.export_here() {
            Ok(_) => Ok(()),
            Err((key, rule)) => broken(key, rule),
        }
    }
}

/// An http or https URL.
fn parse_url(text: &str) -> Result<Url, String> {
    match Url::parse(text.trim()) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(url),
        _ => Err(format!("{text:?} is not an http:// or https:// URL")),
    }
}

/// `key=value,key=value` with values percent-encoded, as the
/// `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_EXPORTER_OTLP_HEADERS` variables
/// write them.
fn pairs(var: &str, text: Option<&str>) -> Result<Vec<(String, String)>, (String, String)> {
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let bad = || (var.to_owned(), format!("{pair:?} is not key=value"));
            let (key, value) = pair.split_once('=').ok_or_else(bad)?;
            let (key, value) = (key.trim(), percent_decoded(value.trim()).ok_or_else(bad)?);
            if key.is_empty() {
                return Err(bad());
            }
            Ok((key.to_owned(), value))
        })
        .collect()
}

/// `%XX` escapes undone; `None` when one is broken or the result is not UTF-8.
fn percent_decoded(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// `over`'s pairs replace `pairs`' of the same key.
fn merge(pairs: &mut Vec<(String, String)>, over: &BTreeMap<String, String>) {
    for (key, value) in over {
        match pairs.iter_mut().find(|(k, _)| k == key) {
            Some(pair) => pair.1 = value.clone(),
            None => pairs.push((key.clone(), value.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(otlp: &Otlp, vars: &[(&str, &str)]) -> Result<Option<OtlpExport>, (String, String)> {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        otlp.export(|name| vars.get(name).cloned())
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint() {
        assert_eq!(
            export(&Otlp::default(), &[("OTEL_SERVICE_NAME", "orders")]),
            Ok(None)
        );
    }

    #[test]
    fn the_standard_variables_configure_the_export() {
        let found = export(
            &Otlp::default(),
            &[
                (ENDPOINT, "http://collector:4318/"),
                (SERVICE_NAME, "orders"),
                (
                    RESOURCE_ATTRIBUTES,
                    "deployment.environment=prod,team=a%2Cb, service.name=ignored",
                ),
                (HEADERS, "api-key=s3cret"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "5000"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            found.traces.unwrap().as_str(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            found.metrics.unwrap().as_str(),
            "http://collector:4318/v1/metrics"
        );
        assert_eq!(found.headers, vec![("api-key".into(), "s3cret".into())]);
        assert_eq!(
            found.resource,
            vec![
                ("deployment.environment".into(), "prod".into()),
                ("team".into(), "a,b".into()),
                ("service.name".into(), "orders".into()),
            ]
        );
        assert_eq!(found.metrics_interval, Duration::from_secs(5));
        assert_eq!(found.timeout, Duration::from_secs(10));
        assert_eq!(found.max_queued_spans, 2048);
    }

    #[test]
    fn the_file_wins_over_the_standard_variables_and_signals_can_be_turned_off() {
        let otlp: Otlp = toml::from_str(
            "endpoint = \"https://file:4318\"\nservice-name = \"from-file\"\nmetrics-interval-ms = 250\n[headers]\napi-key = \"file\"\n",
        )
        .unwrap();
        let found = export(
            &otlp,
            &[
                (ENDPOINT, "http://env:4318"),
                (SERVICE_NAME, "from-env"),
                (HEADERS, "api-key=env,other=1"),
                ("OTEL_METRICS_EXPORTER", "none"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "9000"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            found.traces.unwrap().as_str(),
            "https://file:4318/v1/traces"
        );
        assert_eq!(found.metrics, None);
        assert_eq!(
            found.headers,
            vec![
                ("api-key".into(), "file".into()),
                ("other".into(), "1".into())
            ]
        );
        assert_eq!(
            found.resource,
            vec![("service.name".into(), "from-file".into())]
        );
        assert_eq!(found.metrics_interval, Duration::from_millis(250));
        assert_eq!(export(&otlp, &[("OTEL_SDK_DISABLED", "true")]), Ok(None));
    }

    #[test]
    fn bad_settings_name_their_key_or_variable() {
        let key_of = |otlp: &Otlp, vars: &[(&str, &str)]| export(otlp, vars).unwrap_err().0;
        let none = Otlp::default();
        assert_eq!(key_of(&none, &[(ENDPOINT, "collector:4318")]), ENDPOINT);
        assert_eq!(
            key_of(&none, &[(ENDPOINT, "http://c:4318"), (PROTOCOL, "grpc")]),
            PROTOCOL
        );
        assert_eq!(
            key_of(
                &none,
                &[
                    (ENDPOINT, "http://c:4318"),
                    (RESOURCE_ATTRIBUTES, "novalue")
                ]
            ),
            RESOURCE_ATTRIBUTES
        );
        assert_eq!(
            key_of(&none, &[(ENDPOINT, "http://c:4318"), (HEADERS, "a=%zz")]),
            HEADERS
        );
        assert_eq!(
            key_of(
                &none,
                &[
                    (ENDPOINT, "http://c:4318"),
                    ("OTEL_EXPORTER_OTLP_TIMEOUT", "ten")
                ]
            ),
            "OTEL_EXPORTER_OTLP_TIMEOUT"
        );
        let file = |text: &str| toml::from_str::<Otlp>(text).unwrap();
        assert_eq!(
            key_of(&file("endpoint = \"ftp://c\""), &[]),
            "otlp.endpoint"
        );
        assert_eq!(
            key_of(&file("endpoint = \"http://c\"\ntimeout-ms = 1"), &[]),
            "otlp.timeout-ms"
        );
        assert_eq!(
            key_of(
                &file("endpoint = \"http://c\"\n[headers]\n\"bad name\" = \"x\""),
                &[]
            ),
            "otlp.headers"
        );
    }
}
