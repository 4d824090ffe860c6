//! What every part of the host counts, written at a scrape or an export:
//! each part says what it counts as series of labels and values, and the
//! exposition writes them either as OpenMetrics text through
//! prometheus-client (`/metrics`: names, types, escaping of label values)
//! or as OTLP metrics (the OTLP export). The values stay in the host's own
//! atomics; nothing is copied between scrapes.

use std::fmt;

use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, HistogramDataPoint, Metric, NumberDataPoint, Sum, metric,
    number_data_point,
};
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::histogram::Histogram;
use super::otlp::key_value;

/// The labels of one series: names and values (escaped when written).
pub(crate) type Labels = Vec<(&'static str, String)>;

/// The metrics being written for one scrape or export.
pub(crate) struct Exposition<'a> {
    target: Target<'a>,
}

enum Target<'a> {
    Text(DescriptorEncoder<'a>),
    Otlp(&'a mut OtlpMetrics),
}

/// OTLP metrics being gathered for one export.
pub(crate) struct OtlpMetrics {
    /// When the cumulative series started, and now (Unix nanoseconds).
    start: u64,
    now: u64,
    metrics: Vec<Metric>,
}

impl OtlpMetrics {
    pub(crate) fn new(start: u64, now: u64) -> Self {
        OtlpMetrics {
            start,
            now,
            metrics: Vec::new(),
        }
    }

    pub(crate) fn into_metrics(self) -> Vec<Metric> {
        self.metrics
    }

    fn number(&self, labels: Labels, value: number_data_point::Value) -> NumberDataPoint {
        NumberDataPoint {
            attributes: attributes(labels),
            start_time_unix_nano: self.start,
            time_unix_nano: self.now,
            value: Some(value),
            ..Default::default()
        }
    }

    fn push(&mut self, name: &str, help: &str, unit: &str, data: metric::Data) {
        self.metrics.push(Metric {
            name: name.to_owned(),
            description: help.to_owned(),
            unit: unit.to_owned(),
            metadata: Vec::new(),
            data: Some(data),
        });
    }
}

fn attributes(labels: Labels) -> Vec<KeyValue> {
    labels
        .into_iter()
        .map(|(key, value)| key_value(key, any_value::Value::StringValue(value)))
        .collect()
}

const CUMULATIVE: i32 = AggregationTemporality::Cumulative as i32;

impl<'a> Exposition<'a> {
    pub(crate) fn new(encoder: DescriptorEncoder<'a>) -> Self {
        Exposition {
            target: Target::Text(encoder),
        }
    }

    /// An exposition into OTLP metrics.
    pub(crate) fn otlp(metrics: &'a mut OtlpMetrics) -> Self {
        Exposition {
            target: Target::Otlp(metrics),
        }
    }

    /// A counter; `name` ends in `_total`, as the series it writes do (an
    /// OTLP sum is named without it, as collectors add it back).
    pub(crate) fn counter(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (Labels, u64)>,
    ) -> fmt::Result {
        let family = name
            .strip_suffix("_total")
            .expect("a counter's name ends in _total");
        match &mut self.target {
            Target::Text(encoder) => {
                let mut metric =
                    encoder.encode_descriptor(family, help, None, MetricType::Counter)?;
                for (labels, value) in series {
                    metric
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
                }
            }
            Target::Otlp(out) => {
                let data_points = series
                    .into_iter()
                    .map(|(labels, value)| {
                        let value = i64::try_from(value).unwrap_or(i64::MAX);
                        out.number(labels, number_data_point::Value::AsInt(value))
                    })
                    .collect();
                let sum = Sum {
                    data_points,
                    aggregation_temporality: CUMULATIVE,
                    is_monotonic: true,
                };
                out.push(family, help, "", metric::Data::Sum(sum));
            }
        }
        Ok(())
    }

    /// A gauge.
    pub(crate) fn gauge(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (Labels, i64)>,
    ) -> fmt::Result {
        match &mut self.target {
            Target::Text(encoder) => {
                let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for (labels, value) in series {
                    metric.encode_family(&labels)?.encode_gauge(&value)?;
                }
            }
            Target::Otlp(out) => {
                let data_points = series
                    .into_iter()
                    .map(|(labels, value)| {
                        out.number(labels, number_data_point::Value::AsInt(value))
                    })
                    .collect();
                out.push(name, help, "", metric::Data::Gauge(Gauge { data_points }));
            }
        }
        Ok(())
    }

    /// A histogram of durations, in seconds.
    pub(crate) fn histogram<'h>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (Labels, &'h Histogram)>,
    ) -> fmt::Result {
        match &mut self.target {
            Target::Text(encoder) => {
                let mut metric =
                    encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
                for (labels, histogram) in series {
                    let (sum, count, buckets) = histogram.snapshot();
                    metric
                        .encode_family(&labels)?
                        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
                }
            }
            Target::Otlp(out) => {
                let data_points = series
                    .into_iter()
                    .map(|(labels, histogram)| {
                        let (sum, count, buckets) = histogram.snapshot();
                        // OTLP's buckets are the same: each its own count,
                        // bounds without the last (+Inf).
                        HistogramDataPoint {
                            attributes: attributes(labels),
                            start_time_unix_nano: out.start,
                            time_unix_nano: out.now,
                            count,
                            sum: Some(sum),
                            explicit_bounds: buckets
                                .iter()
                                .map(|(bound, _)| *bound)
                                .filter(|bound| bound.is_finite())
                                .collect(),
                            bucket_counts: buckets.iter().map(|(_, n)| *n).collect(),
                            ..Default::default()
                        }
                    })
                    .collect();
                let histogram = opentelemetry_proto::tonic::metrics::v1::Histogram {
                    data_points,
                    aggregation_temporality: CUMULATIVE,
                };
                out.push(name, help, "s", metric::Data::Histogram(histogram));
            }
        }
        Ok(())
    }
}

/// The labels of a handler version's series.
pub(crate) fn version_labels(handler: &str, version: &str) -> Labels {
    vec![
        ("handler", handler.to_owned()),
        ("version", version.to_owned()),
    ]
}

/// The labels of a partition's series.
pub(crate) fn partition_labels(topic: String, partition: i32) -> Labels {
    vec![("topic", topic), ("partition", partition.to_string())]
}

/// One unlabelled series.
pub(crate) fn single<V>(value: V) -> [(Labels, V); 1] {
    [(Vec::new(), value)]
}

/// A count as a gauge's value (saturating: counts stay far below).
pub(crate) fn level(count: impl TryInto<i64>) -> i64 {
    count.try_into().unwrap_or(i64::MAX)
}
