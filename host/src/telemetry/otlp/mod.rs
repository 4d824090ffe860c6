//! Export of the host's spans and metrics over OTLP/HTTP (protobuf), to an
//! OpenTelemetry collector or any backend that speaks OTLP.
//!
//! The message path only queues a closed span, in a bounded queue: a
//! message is traced only if the queue has room when it starts, so a trace
//! goes whole or not at all, and what is left out is counted. One task
//! batches the queue and posts it, and posts the metrics `/metrics` shows
//! every interval. A receiver that is slow or gone costs the message path
//! nothing.

mod spans;

pub use spans::span_layer;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{ResourceMetrics, ScopeMetrics};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;
use reqwest::Url;
use tokio::sync::{Notify, mpsc};

use super::exposition::{Exposition, Labels, OtlpMetrics};
use super::repeats::Repeats;
use crate::config::OtlpExport;

/// Spans posted in one request at most.
const MAX_BATCH: usize = 512;
/// How long a closed span may wait for companions before it is posted.
const BATCH_DELAY: Duration = Duration::from_secs(1);

/// What the metrics export writes each time: the same series as `/metrics`.
pub(crate) type MetricsSource = Arc<dyn Fn(&mut Exposition<'_>) -> fmt::Result + Send + Sync>;

/// The queue between the spans' layer and the exporter. One per process,
/// as the layer is installed once; each run's exporter borrows its
/// receiving end.
struct Queue {
    sender: mpsc::UnboundedSender<Span>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Span>>>,
    /// Whether an exporter takes spans now.
    exporting: AtomicBool,
    /// Spans queued and not yet taken; `capacity` at most.
    queued: AtomicUsize,
    capacity: AtomicUsize,
    counts: Counts,
}

/// What the export did, for `/metrics`.
#[derive(Default)]
struct Counts {
    exported: AtomicU64,
    dropped_full: AtomicU64,
    dropped_failed: AtomicU64,
    failed_traces: AtomicU64,
    failed_metrics: AtomicU64,
}

static QUEUE: OnceLock<Queue> = OnceLock::new();

mod queue {
    use super::*;

    /// Whether spans are being exported (the layer's filter asks).
    pub(super) fn exporting() -> bool {
        QUEUE
            .get()
            .is_some_and(|q| q.exporting.load(Ordering::Relaxed))
    }

    /// Whether a new trace's spans may be recorded: the queue is not full.
    pub(super) fn has_room() -> bool {
        QUEUE
            .get()
            .is_some_and(|q| q.queued.load(Ordering::Relaxed) < q.capacity.load(Ordering::Relaxed))
    }

    /// Counts a span not recorded, its trace having found the queue full.
    pub(super) fn dropped() {
        if let Some(queue) = QUEUE.get() {
            queue.counts.dropped_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues a closed span, or counts it dropped when the queue is full:
    /// never waits.
    pub(super) fn push(span: Span) {
        let Some(queue) = QUEUE.get() else { return };
        let capacity = queue.capacity.load(Ordering::Relaxed);
        if queue.queued.fetch_add(1, Ordering::Relaxed) >= capacity
            || queue.sender.send(span).is_err()
        {
            queue.queued.fetch_sub(1, Ordering::Relaxed);
            dropped();
        }
    }
}

fn queue() -> &'static Queue {
    QUEUE.get_or_init(|| {
        let (sender, receiver) = mpsc::unbounded_channel();
        Queue {
            sender,
            receiver: Mutex::new(Some(receiver)),
            exporting: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            capacity: AtomicUsize::new(0),
            counts: Counts::default(),
        }
    })
}

/// A running export; `finish` posts what is left. Dropped without
/// `finish` (a run that failed to start), it stops taking spans and posts
/// what is left in the background.
pub(crate) struct Exporter {
    stop: Arc<Notify>,
    task: Option<tokio::task::JoinHandle<()>>,
    timeout: Duration,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        queue().exporting.store(false, Ordering::Relaxed);
        self.stop.notify_one();
    }
}

impl Exporter {
    /// Starts exporting as `settings` say: spans from the layer (if it is
    /// installed and spans are wanted), and `metrics` every interval.
    pub(crate) fn start(settings: OtlpExport, metrics: MetricsSource) -> Exporter {
        let queue = queue();
        let receiver = match settings.traces {
            Some(_) => {
                let taken = queue.receiver.lock().expect("queue lock").take();
                if taken.is_none() {
                    tracing::warn!(
                        "another run in this process exports spans; this one exports metrics only"
                    );
                }
                taken
            }
            None => None,
        };
        if receiver.is_some() {
            queue
                .capacity
                .store(settings.max_queued_spans, Ordering::Relaxed);
            queue.exporting.store(true, Ordering::Relaxed);
        }
        let traces = settings.traces.as_ref().map(|u| u.as_str().to_owned());
        let metrics_to = settings.metrics.as_ref().map(|u| u.as_str().to_owned());
        tracing::info!(traces, metrics = metrics_to, "exporting over OTLP/HTTP");
        let stop = Arc::new(Notify::new());
        let timeout = settings.timeout;
        let task = Task::new(settings, metrics);
        let task = tokio::spawn(task.run(receiver, stop.clone()));
        Exporter {
            stop,
            task: Some(task),
            timeout,
        }
    }

    /// Stops taking spans, posts those queued and the metrics a last time.
    /// Gives up after `deadline`: a stop does not wait on a receiver.
    pub(crate) async fn finish(mut self, deadline: Duration) {
        let queue = queue();
        queue.exporting.store(false, Ordering::Relaxed);
        self.stop.notify_one();
        // One export that fails ends the last ones (see `Task::gone`).
        let wait = deadline.min(self.timeout + Duration::from_secs(1));
        let task = self.task.take().expect("finished once");
        if tokio::time::timeout(wait, task).await.is_err() {
            tracing::warn!("the OTLP receiver did not take the last export in time; it is dropped");
        }
        let counts = &queue.counts;
        let dropped = counts.dropped_full.load(Ordering::Relaxed)
            + counts.dropped_failed.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                exported = counts.exported.load(Ordering::Relaxed),
                dropped_queue_full = counts.dropped_full.load(Ordering::Relaxed),
                dropped_export_failed = counts.dropped_failed.load(Ordering::Relaxed),
                "some spans were not exported"
            );
        }
    }
}

/// The counts of the export, if one ever ran in this process.
pub(crate) fn encode(metrics: &mut Exposition<'_>) -> fmt::Result {
    let Some(queue) = QUEUE.get() else {
        return Ok(());
    };
    let counts = &queue.counts;
    let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
    let by = |label, value: &str, n: &AtomicU64| (vec![(label, value.to_owned())], load(n));
    metrics.counter(
        "sluice_otlp_spans_exported_total",
        "Spans the OTLP receiver accepted.",
        [(Labels::new(), load(&counts.exported))],
    )?;
    metrics.counter(
        "sluice_otlp_spans_dropped_total",
        "Spans not exported: the queue was full, or the receiver refused or missed their export.",
        [
            by("reason", "queue-full", &counts.dropped_full),
            by("reason", "export-failed", &counts.dropped_failed),
        ],
    )?;
    metrics.counter(
        "sluice_otlp_export_failures_total",
        "Exports the OTLP receiver refused or did not answer in time.",
        [
            by("signal", "traces", &counts.failed_traces),
            by("signal", "metrics", &counts.failed_metrics),
        ],
    )?;
    metrics.gauge(
        "sluice_otlp_spans_queued",
        "Closed spans waiting for export.",
        [(
            Labels::new(),
            super::exposition::level(queue.queued.load(Ordering::Relaxed)),
        )],
    )
}

/// The exporting task's state.
struct Task {
    client: reqwest::Client,
    settings: OtlpExport,
    resource: Resource,
    scope: InstrumentationScope,
    metrics: MetricsSource,
    /// When the cumulative metrics started counting.
    started: u64,
    failing: Failing,
    /// The run is stopping: what is left is posted once.
    stopping: bool,
}

/// A receiver's failures: since when, and their log lines held back.
#[derive(Default)]
struct Failing {
    since: Option<Instant>,
    said: Repeats,
}

impl Task {
    fn new(settings: OtlpExport, metrics: MetricsSource) -> Task {
        let attributes = settings
            .resource
            .iter()
            .map(|(k, v)| text_attribute(k, v))
            .chain([
                text_attribute("telemetry.sdk.name", "sluice"),
                text_attribute("telemetry.sdk.language", "rust"),
                text_attribute("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
            ])
            .collect();
        Task {
            client: client(settings.timeout),
            settings,
            resource: Resource {
                attributes,
                ..Default::default()
            },
            scope: InstrumentationScope {
                name: "sluice".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            },
            metrics,
            started: spans::now(),
            failing: Failing::default(),
            stopping: false,
        }
    }

    async fn run(mut self, mut receiver: Option<mpsc::UnboundedReceiver<Span>>, stop: Arc<Notify>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut post_at: Option<tokio::time::Instant> = None;
        let mut metrics_tick = tokio::time::interval(self.settings.metrics_interval);
        metrics_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: metrics start one interval in.
        metrics_tick.tick().await;
        let stopped = stop.notified();
        tokio::pin!(stopped);
        loop {
            let due_at = post_at;
            let due = async move {
                match due_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let room = MAX_BATCH - batch.len();
            tokio::select! {
                _ = &mut stopped => break,
                taken = take(&mut receiver, &mut batch, room), if room > 0 => {
                    if taken == 0 {
                        break;
                    }
                    post_at.get_or_insert_with(|| tokio::time::Instant::now() + BATCH_DELAY);
                }
                _ = due => {}
                _ = metrics_tick.tick(), if self.settings.metrics.is_some() => self.post_metrics().await,
            }
            let full = batch.len() >= MAX_BATCH;
            if full || post_at.is_some_and(|at| at <= tokio::time::Instant::now()) {
                self.post_spans(std::mem::take(&mut batch)).await;
                post_at = None;
            }
        }
        // What was queued before the stop, then the metrics as they end.
        self.stopping = true;
        if let Some(receiver) = &mut receiver {
            while let Ok(span) = receiver.try_recv() {
                queue().queued.fetch_sub(1, Ordering::Relaxed);
                batch.push(span);
                if batch.len() == MAX_BATCH {
                    self.post_spans(std::mem::take(&mut batch)).await;
                }
            }
        }
        self.post_spans(batch).await;
        if self.settings.metrics.is_some() {
            self.post_metrics().await;
        }
        if let Some(receiver) = receiver {
            *queue().receiver.lock().expect("queue lock") = Some(receiver);
        }
    }

    async fn post_spans(&mut self, spans: Vec<Span>) {
        let (Some(url), false) = (self.settings.traces.clone(), spans.is_empty()) else {
            return;
        };
        if self.gone() {
            let dropped = &queue().counts.dropped_failed;
            dropped.fetch_add(spans.len() as u64, Ordering::Relaxed);
            return;
        }
        let count = spans.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(self.scope.clone()),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        let counts = &queue().counts;
        match self.post(&url, request.encode_to_vec()).await {
            Ok(()) => counts.exported.fetch_add(count, Ordering::Relaxed),
            Err(problem) => {
                counts.failed_traces.fetch_add(1, Ordering::Relaxed);
                self.failed(&url, &problem);
                counts.dropped_failed.fetch_add(count, Ordering::Relaxed)
            }
        };
    }

    async fn post_metrics(&mut self) {
        let Some(url) = self.settings.metrics.clone() else {
            return;
        };
        if self.gone() {
            return;
        }
        let mut metrics = OtlpMetrics::new(self.started, spans::now());
        if (self.metrics)(&mut Exposition::otlp(&mut metrics)).is_err() {
            return;
        }
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(self.resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(self.scope.clone()),
                    metrics: metrics.into_metrics(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        if let Err(problem) = self.post(&url, request.encode_to_vec()).await {
            queue()
                .counts
                .failed_metrics
                .fetch_add(1, Ordering::Relaxed);
            self.failed(&url, &problem);
        }
    }

    /// Whether the run is stopping and the receiver failed: the last
    /// exports are not tried, so a stop waits for one failure at most.
    fn gone(&self) -> bool {
        self.stopping && self.failing.since.is_some()
    }

    async fn post(&mut self, url: &Url, body: Vec<u8>) -> Result<(), String> {
        let outcome = post(&self.client, &self.settings.headers, url, body).await;
        if outcome.is_ok()
            && let Some(since) = self.failing.since.take()
        {
            tracing::info!(
                failing_for = ?since.elapsed(),
                "the OTLP receiver answers again"
            );
            self.failing = Failing::default();
        }
        outcome
    }

    /// Logs a failed export as `Repeats` admits it: the first at once,
    /// then one line every 30 s saying how many were held back.
    fn failed(&mut self, url: &Url, problem: &str) {
        self.failing.since.get_or_insert_with(Instant::now);
        if let Some(held_back) = self.failing.said.admit() {
            tracing::warn!(
                url = url.as_str(),
                problem,
                held_back,
                "OTLP export failed; spans and metrics are dropped until the receiver answers"
            );
        }
    }
}

/// Posts one export request.
async fn post(
    client: &reqwest::Client,
    headers: &[(String, String)],
    url: &Url,
    body: Vec<u8>,
) -> Result<(), String> {
    let mut request = client
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
        .body(body);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    match request.send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("answered {}", response.status())),
        Err(error) => Err(super::with_causes(&error)),
    }
}

/// Whether the receiver at `url` takes an empty export (`sluice check`).
pub async fn probe(export: &OtlpExport, url: &Url) -> Result<(), String> {
    let client = client(export.timeout);
    // An empty request of either signal encodes to no bytes at all.
    post(&client, &export.headers, url, Vec::new()).await
}

fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .expect("a client without custom TLS builds")
}

/// Takes what is queued (waiting for one span at least) into `batch`;
/// 0 when there is no queue or it closed.
async fn take(
    receiver: &mut Option<mpsc::UnboundedReceiver<Span>>,
    batch: &mut Vec<Span>,
    room: usize,
) -> usize {
    match receiver {
        Some(receiver) => {
            let taken = receiver.recv_many(batch, room).await;
            queue().queued.fetch_sub(taken, Ordering::Relaxed);
            taken
        }
        None => std::future::pending().await,
    }
}

fn text_attribute(key: &str, value: &str) -> KeyValue {
    key_value(key, any_value::Value::StringValue(value.to_owned()))
}

/// An OTLP attribute.
pub(crate) fn key_value(key: impl Into<String>, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}
