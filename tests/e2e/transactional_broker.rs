//! A Kafka-protocol broker with real transactions, in its own process, for
//! the exactly-once tests: noida-db from PyPI (fetched by scripts/setup).
//! Unlike librdkafka's mock cluster it commits offsets sent in a
//! transaction and hides aborted records from read-committed consumers.

use std::collections::HashSet;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use crate::support::{PATIENCE, Record, Scratch, record, repo};

/// The noida-db version scripts/setup fetches.
const VERSION: &str = "0.2.3";

pub struct TransactionalBroker {
    child: Child,
    data: Scratch,
    bootstrap: String,
}

impl TransactionalBroker {
    /// Starts a broker on a free local port, with its data in a fresh directory.
    pub fn start() -> TransactionalBroker {
        let binary = binary();
        assert!(
            binary.exists(),
            "{} is missing: run scripts/setup",
            binary.display()
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = Scratch::new();
        let child = Command::new(&binary)
            .args([
                "start",
                "--only",
                "kafka",
                "--kafka-port",
                &port.to_string(),
            ])
            .arg("--data-dir")
            .arg(data.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(data.path().join("noida.log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("start noida-db");
        let broker = TransactionalBroker {
            child,
            data,
            bootstrap: format!("127.0.0.1:{port}"),
        };
        broker.wait_listening();
        broker
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) {
        self.create_topic_with(topic, partitions, &[]);
    }

    /// Creates a topic with these topic configs (`retention.ms`, ...).
    pub fn create_topic_with(&self, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .unwrap();
        let topics = [configs.iter().fold(
            NewTopic::new(topic, partitions, TopicReplication::Fixed(1)),
            |new, (key, value)| new.set(key, value),
        )];
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let results = runtime
            .block_on(admin.create_topics(&topics, &options))
            .unwrap();
        for result in results {
            result.unwrap_or_else(|(topic, code)| panic!("create topic {topic}: {code}"));
        }
    }

    /// Takes the Kafka service away (connections refused), keeping its data.
    pub fn stop(&self) {
        self.control("stop");
    }

    /// Brings the Kafka service back after `stop`.
    pub fn resume(&self) {
        self.control("start");
        self.wait_listening();
    }

    fn control(&self, verb: &str) {
        let status = Command::new(binary())
            .args([verb, "kafka", "--data-dir"])
            .arg(self.data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "noida-db {verb} kafka failed");
    }

    fn wait_listening(&self) {
        let started = Instant::now();
        while TcpStream::connect(&self.bootstrap).is_err() {
            assert!(started.elapsed() < PATIENCE, "noida-db did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TransactionalBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> PathBuf {
    repo()
        .join(".tools")
        .join(format!("noida-{VERSION}"))
        .join("noida_db/noida-db")
}

/// Every committed record of a topic, as a read-committed consumer sees it
/// (records of aborted or open transactions left out), by partition then offset.
pub fn read_committed(brokers: &str, topic: &str, partitions: i32) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "sluice-test-committed-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for partition in 0..partitions {
        tpl.add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    drop(tpl);
    let mut at_end = HashSet::new();
    let mut records = Vec::new();
    let started = Instant::now();
    while at_end.len() < partitions as usize {
        assert!(started.elapsed() < PATIENCE, "timed out reading {topic}");
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Some(Err(error)) => panic!("reading {topic}: {error}"),
            Some(Ok(message)) => {
                at_end.remove(&message.partition());
                records.push(record(&message));
            }
        }
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}
