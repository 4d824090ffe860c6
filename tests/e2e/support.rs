//! Shared pieces of the end-to-end tests: built guests, scratch directories,
//! `sluice` processes, and reading topics back from the broker.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use sluice::contract::{Header, Message};

/// How long any single wait in a test may take before it fails.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Builds the guests once per test run (a no-op when they are up to date).
pub fn guests() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(repo().join("scripts/build-guests"))
            .status()
            .expect("run scripts/build-guests");
        assert!(status.success(), "scripts/build-guests failed");
        repo().join("guests")
    })
}

/// A service handler as laid out by scripts/build-guests.
pub fn dist() -> PathBuf {
    guests().join("dist")
}

/// The languages the shop handlers are built from, with the handlers
/// directory scripts/build-guests lays each one's builds out in.
pub fn dists() -> [(&'static str, PathBuf); 3] {
    [
        ("rust", dist()),
        ("javascript", guests().join("dist-js")),
        ("python", guests().join("dist-python")),
    ]
}

/// An artifact cache shared by the tests that load the 12-18 MB JavaScript
/// and Python components, so each is compiled once per test run, not once
/// per host (the cache replaces files by rename: sharing is safe).
pub fn shared_artifact_cache() -> PathBuf {
    repo().join("target/test-artifact-cache")
}

/// A hostile test guest by attack (a feature of guests/test-hostile).
pub fn hostile(attack: &str) -> PathBuf {
    guests()
        .join("target/hostile")
        .join(format!("{attack}.wasm"))
}

/// A built guest component by crate name (test guests live only here).
pub fn component(crate_name: &str) -> PathBuf {
    guests()
        .join("target/wasm32-wasip2/release")
        .join(format!("{}.wasm", crate_name.replace('-', "_")))
}

/// A temporary directory that is removed when the test ends.
pub struct Scratch(tempfile::TempDir);

impl Scratch {
    /// A fresh directory, removed afterwards unless `SLUICE_KEEP_SCRATCH`
    /// is set (to look into a failed test).
    pub fn new() -> Scratch {
        let keep = std::env::var_os("SLUICE_KEEP_SCRATCH").is_some();
        let dir = tempfile::Builder::new()
            .prefix("sluice-test-")
            .disable_cleanup(keep)
            .tempdir()
            .expect("create scratch dir");
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// A handlers directory holding `component` as `<name>/<version>.wasm`.
    pub fn handlers(&self, entries: &[(&str, &str, &Path)]) -> PathBuf {
        let dir = self.path().join("handlers");
        for (name, version, component) in entries {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            std::fs::copy(component, dir.join(name).join(format!("{version}.wasm"))).unwrap();
        }
        dir
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Config text for a host on `brokers` with quick group settings for tests.
pub fn config(brokers: &str, group: &str, handlers: &Path, routes: &str) -> String {
    format!(
        r#"brokers = "{brokers}"
group-id = "{group}"
handlers-dir = "{handlers}"
commit-interval-ms = 200
shutdown-timeout-ms = 20000

{routes}

[kafka.consumer]
"session.timeout.ms" = "3000"
"heartbeat.interval.ms" = "300"
"#,
        handlers = handlers.display()
    )
}

/// Tests `$test(backend)` on each store: `$test::sqlite`, `$test::postgres`.
macro_rules! on_both_stores {
    ($test:ident) => {
        mod $test {
            use sluice::config::StoreBackend;

            #[test]
            fn sqlite() {
                super::$test(StoreBackend::Sqlite);
            }

            #[test]
            fn postgres() {
                super::$test(StoreBackend::Postgres);
            }
        }
    };
}

/// The `sluice` binary under test.
pub fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

/// Runs `command`, which must succeed (else its stderr is the failure):
/// its stdout.
pub fn succeed(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `sluice check` with `config`, `extra` arguments and `env` added to the
/// environment: its status and its lines.
pub fn check(config: &Path, extra: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let output = sluice()
        .args(["check", "--config"])
        .arg(config)
        .args(extra)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.success(), stdout)
}

/// A `sluice run` child process; killed if the test ends first.
pub struct Host {
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// How a host process ended.
pub struct Exit {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Host {
    pub fn start(scratch: &Scratch, name: &str, config: &Path, extra: &[&str]) -> Host {
        Host::start_logging(scratch, name, config, extra, "info")
    }

    /// Like `start`, with `RUST_LOG` set to `log`.
    pub fn start_logging(
        scratch: &Scratch,
        name: &str,
        config: &Path,
        extra: &[&str],
        log: &str,
    ) -> Host {
        Host::start_with_env(scratch, name, config, extra, &[("RUST_LOG", log)])
    }

    /// Like `start`, with `env` added to the environment (`RUST_LOG`
    /// "info" unless given).
    pub fn start_with_env(
        scratch: &Scratch,
        name: &str,
        config: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Host {
        let stdout = scratch.path().join(format!("{name}.stdout"));
        let stderr = scratch.path().join(format!("{name}.stderr"));
        let child = sluice()
            .args(["run", "--config"])
            .arg(config)
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .expect("start sluice");
        Host {
            child: Some(child),
            stdout,
            stderr,
        }
    }

    /// The process's resident memory, in bytes.
    pub fn rss(&self) -> u64 {
        self.memory("VmRSS:")
    }

    /// The most resident memory the process has had so far, in bytes.
    pub fn peak_rss(&self) -> u64 {
        self.memory("VmHWM:")
    }

    fn memory(&self, field: &str) -> u64 {
        let pid = self.child.as_ref().unwrap().id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// Sends a signal (SIGTERM for a graceful stop, SIGKILL for a crash).
    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "signal sluice");
    }

    /// Waits for the process to end, failing the test after `PATIENCE`.
    pub fn wait(mut self) -> Exit {
        let mut child = self.child.take().unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > PATIENCE {
                let _ = child.kill();
                panic!(
                    "sluice did not exit within {PATIENCE:?}; stderr:\n{}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Exit {
            status,
            stdout: std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        }
    }

    /// Waits for a successful exit and returns its stdout.
    pub fn wait_ok(self) -> Exit {
        let exit = self.wait();
        assert!(
            exit.status.success(),
            "sluice failed: {}\n{}",
            exit.status,
            exit.stderr
        );
        exit
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a host has logged so far.
pub fn log_of(scratch: &Scratch, name: &str) -> String {
    std::fs::read_to_string(scratch.path().join(format!("{name}.stderr"))).unwrap_or_default()
}

/// Polls `condition` until it holds; fails the test after `PATIENCE`.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A message for producing in tests.
pub fn message(topic: &str, partition: i32, key: &str, payload: &str) -> Message {
    Message {
        topic: topic.into(),
        partition,
        offset: 0,
        key: Some(key.as_bytes().to_vec()),
        payload: payload.as_bytes().to_vec(),
        headers: vec![Header::new("origin", "test")],
        timestamp: 0,
    }
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: String,
    pub headers: Vec<(String, String)>,
    /// Milliseconds since the epoch (the producer's clock, unless set).
    pub timestamp: i64,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The input (partition, offset) a sluice output came from, by `sluice-id`.
    pub fn source(&self) -> (i32, i64) {
        let id = self.header("sluice-id").expect("sluice-id header");
        let parts: Vec<&str> = id.split('/').collect();
        (parts[1].parse().unwrap(), parts[2].parse().unwrap())
    }
}

fn reader(brokers: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("create test consumer")
}

/// Partitions of a topic, or none if it does not exist.
fn partitions(consumer: &BaseConsumer, topic: &str) -> Vec<i32> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("fetch metadata");
    metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect()
}

/// End offsets of every partition of a topic.
pub fn end_offsets(brokers: &str, topic: &str) -> Vec<(i32, i64)> {
    let consumer = reader(brokers, "sluice-test-reader");
    partitions(&consumer, topic)
        .into_iter()
        .map(|p| {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("fetch watermarks");
            (p, high)
        })
        .collect()
}

/// Records in a topic right now (sum over partitions).
pub fn count(brokers: &str, topic: &str) -> i64 {
    end_offsets(brokers, topic)
        .iter()
        .map(|(_, high)| high)
        .sum()
}

/// Every record of a topic, by partition then offset.
pub fn read_topic(brokers: &str, topic: &str) -> Vec<Record> {
    let consumer = reader(brokers, "sluice-test-reader");
    let ends = end_offsets(brokers, topic);
    let mut tpl = TopicPartitionList::new();
    for (partition, _) in &ends {
        tpl.add_partition_offset(topic, *partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    drop(tpl);
    let expected: i64 = ends.iter().map(|(_, high)| high).sum();
    let mut records = Vec::new();
    let started = Instant::now();
    while (records.len() as i64) < expected {
        assert!(started.elapsed() < PATIENCE, "timed out reading {topic}");
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        records.push(record(&result.expect("consume")));
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

/// A consumed record, its bytes read as text.
pub fn record(msg: &BorrowedMessage<'_>) -> Record {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    Record {
        partition: msg.partition(),
        offset: msg.offset(),
        key: msg.key().map(text),
        payload: text(msg.payload().unwrap_or_default()),
        headers: msg
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), text(h.value.unwrap_or_default())))
                    .collect()
            })
            .unwrap_or_default(),
        timestamp: msg.timestamp().to_millis().unwrap_or(-1),
    }
}

/// The group's committed offset for each partition of a topic (None: no commit).
pub fn committed(brokers: &str, group: &str, topic: &str) -> Vec<(i32, Option<i64>)> {
    let consumer = reader(brokers, group);
    let mut tpl = TopicPartitionList::new();
    for p in partitions(&consumer, topic) {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    let offsets = committed
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            (e.partition(), offset)
        })
        .collect();
    // Lists from a consumer must be dropped before it (see shared/kafka.md).
    drop(committed);
    offsets
}

/// Every partition of `in` has `group`'s offset committed at its end.
pub fn assert_committed_to_the_end(brokers: &str, group: &str) {
    let committed = committed(brokers, group, "in");
    for (partition, end) in end_offsets(brokers, "in") {
        let done = committed.iter().find(|(p, _)| *p == partition).unwrap().1;
        assert_eq!(
            done,
            Some(end),
            "partition {partition} not committed to its end"
        );
    }
}

/// The admin address a host logged.
pub fn admin_address(scratch: &Scratch, name: &str) -> String {
    let mut address = None;
    wait_until("the admin server to listen", || {
        address = log_of(scratch, name)
            .lines()
            .find(|l| l.contains("admin server listening"))
            .and_then(|l| {
                // `address=A` in text logs, `"address":"A"` in JSON.
                let (_, rest) = l
                    .split_once("address=")
                    .or_else(|| l.split_once("\"address\":\""))?;
                rest.split(|c: char| c.is_whitespace() || c == '"').next()
            })
            .map(str::to_owned);
        address.is_some()
    });
    address.unwrap()
}

/// A plain HTTP GET of the admin server.
pub fn http_get(admin: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(admin).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {admin}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// The status line and body of an admin GET.
pub fn status_of(admin: &str, path: &str) -> (u16, String) {
    let response = http_get(admin, path);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

/// A plain HTTP POST to the admin server, with a bearer token if given:
/// the status code and the body.
pub fn http_post(admin: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(admin).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: {admin}\r\n{auth}Content-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, body.to_owned())
}
