//! Shadow runs: a candidate version handles the same messages as the
//! serving one, on the side. Its outcome is compared with the serving
//! version's in canonical form (`replay::canonical`); every difference is
//! counted, logged and published to the handler's diff topic with the input
//! and both outcomes. Nothing the shadow asks for is executed, and its
//! failures are only differences: they never dead-letter the message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;

use serde_json::json;

use crate::config::Config;
use crate::contract::{Header, Message, Output, Publish};
use crate::effects::publish::Publisher;
use crate::replay::canonical;
use crate::runtime::{CallError, Handler};
use crate::telemetry::{ShadowTally, Telemetry, readable};
use crate::wire::source_headers;
use crate::workers::WorkerPool;

type CallResult = Result<Vec<Output>, CallError>;

/// The bytes a call's outputs hold.
fn bytes(outcome: &CallResult) -> u64 {
    outcome
        .as_ref()
        .map_or(0, |outputs| outputs.iter().map(|o| o.size() as u64).sum())
}

/// Compares shadow versions with the serving ones and records differences.
pub(crate) struct Shadows {
    publisher: Arc<Publisher>,
    telemetry: Arc<Telemetry>,
    /// Diff topic by handler name.
    topics: HashMap<String, String>,
    /// Comparisons under way, so a stop can let them finish.
    running: Mutex<JoinSet<()>>,
}

impl Shadows {
    pub(crate) fn new(
        config: &Config,
        publisher: Arc<Publisher>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let topics = config
            .routes
            .iter()
            .map(|route| {
                let topic = config.shadow_diff_topic(&route.handler);
                (route.handler.clone(), topic)
            })
            .collect();
        Shadows {
            publisher,
            telemetry,
            topics,
            running: Mutex::default(),
        }
    }

    /// Waits for the comparisons under way, up to `deadline`.
    pub(crate) async fn finish(&self, deadline: Duration) {
        let mut running = std::mem::take(&mut *self.running.lock().expect("shadow tasks lock"));
        let all = async { while running.join_next().await.is_some() {} };
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!("stopped before every shadow comparison was done");
        }
    }

    /// Runs `shadow` on `messages` in the background and records where its
    /// outcome differs from `served` (the version that handled each message
    /// and its outcome). The copies of the served outcomes and the shadow's
    /// own count in the host's byte budget; a shadow never waits for room
    /// (it would hold bytes while waiting): what does not fit is not
    /// compared, and counted as skipped.
    pub(crate) fn compare(
        &self,
        pool: &Arc<WorkerPool>,
        shadow: Arc<dyn Handler>,
        messages: Vec<Arc<Message>>,
        served: Vec<(Arc<dyn Handler>, CallResult)>,
    ) {
        let Some(topic) = self.topics.get(shadow.name()).cloned() else {
            return;
        };
        let served_bytes = served.iter().map(|(_, outcome)| bytes(outcome)).sum();
        let tally = ShadowTally {
            handler: shadow.name().to_owned(),
            version: shadow.version().to_owned(),
            ..ShadowTally::default()
        };
        let Some(held) = pool.budget().try_hold(served_bytes) else {
            self.telemetry.shadow_compared(&ShadowTally {
                skipped: messages.len() as u64,
                ..tally
            });
            return;
        };
        let pool = pool.clone();
        let publisher = self.publisher.clone();
        let telemetry = self.telemetry.clone();
        let mut running = self.running.lock().expect("shadow tasks lock");
        while running.try_join_next().is_some() {}
        running.spawn(async move {
            let calls = messages.iter().map(|m| (shadow.clone(), m.clone())).collect();
            let outcomes = pool.call(calls, Vec::new()).await;
            let mut tally = ShadowTally {
                skipped: (messages.len() - outcomes.len()) as u64,
                ..tally
            };
            let compared = messages.iter().zip(served).zip(outcomes);
            for ((message, (version, served)), (outcome, _held)) in compared {
                tally.compared += 1;
                let (expected, got) = (canonical(&served), canonical(&outcome));
                if expected == got {
                    continue;
                }
                tally.differed += 1;
                tracing::warn!(
                    input = %message.id(),
                    handler = shadow.name(),
                    version = version.version(),
                    shadow = shadow.version(),
                    "shadow differs from the serving version"
                );
                let diff = json!({
                    "input": {
                        "topic": message.topic,
                        "partition": message.partition,
                        "offset": message.offset,
                        "key": message.key.as_deref().map(readable),
                    },
                    "handler": shadow.name(),
                    "serving": { "version": version.version(), "outcome": expected },
                    "shadow": { "version": shadow.version(), "outcome": got },
                });
                let mut headers = vec![Header::new("content-type", "application/json")];
                headers.extend(source_headers(message));
                let record = Publish {
                    topic: topic.clone(),
                    key: message.key.clone(),
                    payload: diff.to_string().into_bytes(),
                    headers,
                };
                if let Err(error) = publisher.publish(&record).await {
                    tracing::error!(%error, %topic, input = %message.id(), "cannot publish shadow difference");
                }
            }
            telemetry.shadow_compared(&tally);
            drop(held);
        });
    }
}
