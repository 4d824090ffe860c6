//! `/metrics` through prometheus-client: each part of the host says what it
//! counts at a scrape, as series of labels and values, and the crate writes
//! the OpenMetrics text (names, types, escaping of label values). The values
//! stay in the host's own atomics; nothing is copied between scrapes.

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::histogram::Histogram;

/// The labels of one series: names and values (escaped when written).
pub(crate) type Labels = Vec<(&'static str, String)>;

/// The metrics being written for one scrape.
pub(crate) struct Exposition<'a> {
    encoder: DescriptorEncoder<'a>,
}

impl<'a> Exposition<'a> {
    pub(crate) fn new(encoder: DescriptorEncoder<'a>) -> Self {
        Exposition { encoder }
    }

    /// A counter; `name` ends in `_total`, as the series it writes do.
    pub(crate) fn counter(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (Labels, u64)>,
    ) -> fmt::Result {
        let family = name
            .strip_suffix("_total")
            .expect("a counter's name ends in _total");
        let mut metric = self
            .encoder
            .encode_descriptor(family, help, None, MetricType::Counter)?;
        for (labels, value) in series {
            metric
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
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
        let mut metric = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, value) in series {
            metric.encode_family(&labels)?.encode_gauge(&value)?;
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
        let mut metric = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, histogram) in series {
            let (sum, count, buckets) = histogram.snapshot();
            metric
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
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
