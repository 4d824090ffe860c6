//! An HTTP server for the effect benchmarks (P3): `POST /wait/<µs>` and
//! `POST /wait/<µs>/<key>` answer after sleeping that long, and the server
//! records what it saw: how many requests, their summed waits (per key too),
//! the span from the first arrival to the last answer, and the most that were
//! ever in progress at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};

/// What the server saw of one run.
#[derive(Default, Clone)]
pub struct Served {
    pub count: usize,
    pub total_wait: Duration,
    /// The summed waits of the key whose waits add up to the most (zero
    /// when requests named no key).
    pub longest_key_wait: Duration,
    pub span: Duration,
    pub most_at_once: usize,
}

#[derive(Default)]
struct Log {
    at_once: usize,
    most_at_once: usize,
    first: Option<Instant>,
    last: Option<Instant>,
    count: usize,
    total_wait: Duration,
    per_key: HashMap<String, Duration>,
}

/// The server, on its own runtime so that its timing does not share threads
/// with the host under test.
pub struct WaitServer {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    _runtime: tokio::runtime::Runtime,
}

impl WaitServer {
    /// Starts the server on a free local port; `concurrency` is the most
    /// requests the benchmark will have in flight (each sleeps on a thread).
    pub fn start(concurrency: usize) -> WaitServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(2 * concurrency)
            .enable_all()
            .build()
            .unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/wait/{micros}", axum::routing::post(wait))
            .route("/wait/{micros}/{key}", axum::routing::post(wait_keyed))
            .with_state(log.clone());
        runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
        WaitServer {
            addr,
            log,
            _runtime: runtime,
        }
    }

    /// Forgets everything seen so far.
    pub fn reset(&self) {
        *self.log.lock().unwrap() = Log::default();
    }

    /// What was seen since the last reset.
    pub fn served(&self) -> Served {
        let log = self.log.lock().unwrap();
        Served {
            count: log.count,
            total_wait: log.total_wait,
            longest_key_wait: log.per_key.values().copied().max().unwrap_or_default(),
            span: log.last.unwrap() - log.first.unwrap(),
            most_at_once: log.most_at_once,
        }
    }
}

async fn wait(State(log): State<Arc<Mutex<Log>>>, UrlPath(micros): UrlPath<u64>) {
    serve(log, micros, None).await
}

async fn wait_keyed(
    State(log): State<Arc<Mutex<Log>>>,
    UrlPath((micros, key)): UrlPath<(u64, String)>,
) {
    serve(log, micros, Some(key)).await
}

/// Sleeps on a blocking thread (tokio's timer rounds up to 1 ms) and counts
/// the time actually waited.
async fn serve(log: Arc<Mutex<Log>>, micros: u64, key: Option<String>) {
    {
        let mut log = log.lock().unwrap();
        log.first.get_or_insert_with(Instant::now);
        log.at_once += 1;
        log.most_at_once = log.most_at_once.max(log.at_once);
    }
    let waited = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        std::thread::sleep(Duration::from_micros(micros));
        started.elapsed()
    })
    .await
    .unwrap();
    let mut log = log.lock().unwrap();
    log.at_once -= 1;
    log.count += 1;
    log.total_wait += waited;
    if let Some(key) = key {
        *log.per_key.entry(key).or_default() += waited;
    }
    log.last = Some(Instant::now());
}

/// A handlers directory under `scratch` holding only the test-faults guest,
/// whose `http:<url>` payloads ask for a POST to that URL.
pub fn faults_handlers(scratch: &Path) -> PathBuf {
    let handlers = scratch.join("handlers");
    std::fs::create_dir_all(handlers.join("test-faults")).unwrap();
    std::fs::copy(
        super::handlers_dir().join("../target/wasm32-wasip2/release/test_faults.wasm"),
        handlers.join("test-faults/0.1.0.wasm"),
    )
    .unwrap();
    handlers
}

/// Runs sluice over `topic` until drained, with the test-faults handler
/// allowed to call 127.0.0.1, `concurrency` effects at most in flight; the
/// whole run's wall time. Nothing may be dead-lettered.
pub async fn run_http_effects(
    brokers: &str,
    handlers: &Path,
    topic: &str,
    ordering: &str,
    concurrency: usize,
) -> Duration {
    let text = format!(
        r#"brokers = "{brokers}"
group-id = "{topic}"
handlers-dir = "{}"

[[routes]]
topic = "{topic}"
handler = "test-faults"
publish-to = ["echo"]
ordering = "{ordering}"
concurrency = {concurrency}

[routes.http]
allow = ["127.0.0.1"]
"#,
        handlers.display()
    );
    let (took, report) = super::timed_run(&text).await;
    assert_eq!(report.dead_lettered, 0);
    took
}
