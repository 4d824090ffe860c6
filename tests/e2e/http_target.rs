//! A real HTTP server for the effect tests: it records every request, can
//! be made slow, flaky or failing, and can go down (connections refused)
//! and come back on the same port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use tokio::sync::oneshot;

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// 200, after a uniform random delay of up to this long.
    Ok { max_delay: Duration },
    /// 503 for every other request, 200 for the rest.
    FailEveryOther,
    /// Always this status.
    Status(u16),
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub body: String,
    pub headers: HashMap<String, String>,
    /// Every header as sent, repeated names included, names lowercase.
    pub all_headers: Vec<(String, String)>,
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// Every value sent for a header (names are lowercase).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.all_headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Default)]
struct Shared {
    behaviour: Mutex<Option<Behaviour>>,
    received: Mutex<Vec<Received>>,
    answered: AtomicUsize,
    /// Requests in progress per key (the first path segment), and the most seen.
    concurrency: Mutex<HashMap<String, (usize, usize)>>,
    in_progress: AtomicUsize,
    max_in_progress: AtomicUsize,
}

pub struct HttpTarget {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Runtime,
    running: Mutex<Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>>,
}

impl HttpTarget {
    pub fn start(behaviour: Behaviour) -> HttpTarget {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        *shared.behaviour.lock().unwrap() = Some(behaviour);
        let target = HttpTarget {
            addr,
            shared,
            runtime,
            running: Mutex::new(None),
        };
        target.serve(listener);
        target
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .fallback(answer)
            .with_state(self.shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = self.runtime.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        *self.running.lock().unwrap() = Some((stop, task));
    }

    /// `http://127.0.0.1:<port><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The `host:port` for a route's `http.allow`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn behave(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().unwrap() = Some(behaviour);
    }

    /// Stops listening: new connections are refused.
    pub fn go_down(&self) {
        if let Some((stop, task)) = self.running.lock().unwrap().take() {
            let _ = stop.send(());
            self.runtime.block_on(task).unwrap();
        }
    }

    /// Listens again on the same port.
    pub fn come_up(&self) {
        let listener = self
            .runtime
            .block_on(tokio::net::TcpListener::bind(self.addr))
            .unwrap();
        self.serve(listener);
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Requests answered with 2xx.
    pub fn succeeded(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }

    /// The most requests ever in progress at once, over all keys.
    pub fn max_concurrency(&self) -> usize {
        self.shared.max_in_progress.load(Ordering::SeqCst)
    }

    /// The most requests ever in progress at once for any single key.
    pub fn max_concurrency_per_key(&self) -> usize {
        let concurrency = self.shared.concurrency.lock().unwrap();
        concurrency.values().map(|(_, max)| *max).max().unwrap_or(0)
    }
}

impl Drop for HttpTarget {
    fn drop(&mut self) {
        self.go_down();
    }
}

async fn answer(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let path = uri.path().to_owned();
    let key = path.split('/').nth(1).unwrap_or_default().to_owned();
    {
        let mut concurrency = shared.concurrency.lock().unwrap();
        let (now, max) = concurrency.entry(key.clone()).or_default();
        *now += 1;
        *max = (*max).max(*now);
    }
    let now = shared.in_progress.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_in_progress.fetch_max(now, Ordering::SeqCst);

    // `/status/<code>` always answers that code, whatever the behaviour.
    let forced = path
        .strip_prefix("/status/")
        .and_then(|code| code.parse::<u16>().ok());
    let behaviour = match forced {
        Some(code) => Behaviour::Status(code),
        None => shared.behaviour.lock().unwrap().unwrap(),
    };
    let n = shared.answered.fetch_add(1, Ordering::SeqCst);
    let status = match behaviour {
        Behaviour::Ok { max_delay } => {
            if !max_delay.is_zero() {
                tokio::time::sleep(max_delay.mul_f64(rand::random::<f64>())).await;
            }
            200
        }
        Behaviour::FailEveryOther => {
            if n % 2 == 0 {
                503
            } else {
                200
            }
        }
        Behaviour::Status(status) => status,
    };

    shared.in_progress.fetch_sub(1, Ordering::SeqCst);
    shared.concurrency.lock().unwrap().get_mut(&key).unwrap().0 -= 1;
    let all_headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    shared.received.lock().unwrap().push(Received {
        method: method.to_string(),
        path,
        body: String::from_utf8_lossy(&body).into_owned(),
        headers: all_headers.iter().cloned().collect(),
        all_headers,
        status,
    });
    StatusCode::from_u16(status).unwrap()
}
