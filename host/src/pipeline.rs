//! One message's way from handler call to acknowledgement: handle (in the
//! sandbox) → policy (dead-letter or skip a failure) → effects (run the
//! outputs) → ack (once every effect is confirmed).

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Route;
use crate::effects::Effects;
use crate::policy::{self, Disposition};
use crate::runtime::{Handler, WorkerPool};
use crate::source::Delivery;
use crate::telemetry::Telemetry;

/// A route with the handler that serves it.
pub(crate) struct RouteHandler {
    pub(crate) route: Route,
    pub(crate) handler: Arc<dyn Handler>,
}

/// Everything a lane needs to take a message from its handler to its ack.
pub(crate) struct Pipeline {
    routes: HashMap<String, RouteHandler>,
    pool: WorkerPool,
    effects: Effects,
    telemetry: Arc<Telemetry>,
}

impl Pipeline {
    pub(crate) fn new(
        routes: Vec<RouteHandler>,
        pool: WorkerPool,
        effects: Effects,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let routes = routes
            .into_iter()
            .map(|r| (r.route.topic.clone(), r))
            .collect();
        Pipeline {
            routes,
            pool,
            effects,
            telemetry,
        }
    }

    /// Whether a topic has a route.
    pub(crate) fn routes(&self, topic: &str) -> bool {
        self.routes.contains_key(topic)
    }

    /// Handles a batch of one lane's messages and starts their effects, in
    /// order. Returns once the effects are running, so the lane can go on;
    /// each ack follows when the broker has confirmed that message's effects.
    pub(crate) async fn process(&self, deliveries: Vec<Delivery>) {
        let Some(first) = deliveries.first() else {
            return;
        };
        let Some(RouteHandler { route, handler }) = self.routes.get(&first.message.topic) else {
            // Sources only deliver routed topics; keep the offsets back if not.
            tracing::error!(input = %first.message.id(), "no route for message; left unacknowledged");
            return;
        };
        let messages = deliveries.iter().map(|d| d.message.clone()).collect();
        let outcomes = self.pool.call(handler.clone(), messages).await;
        let mut settling = Vec::with_capacity(deliveries.len());
        for (Delivery { message, ack }, outcome) in deliveries.into_iter().zip(outcomes) {
            self.telemetry.consumed();
            let pending = match outcome {
                Ok(outputs) => {
                    self.telemetry.succeeded();
                    self.effects
                        .execute(&message, handler.as_ref(), outputs)
                        .await
                }
                Err(error) => match policy::on_failure(route, &error) {
                    Disposition::DeadLetter(dead) => {
                        self.effects
                            .dead_letter(&message, handler.as_ref(), dead)
                            .await
                    }
                    Disposition::Skip(detail) => {
                        self.effects.skip(&message, handler.as_ref(), detail);
                        ack.finish();
                        continue;
                    }
                },
            };
            settling.push((pending, ack));
        }
        tokio::spawn(async move {
            for (pending, ack) in settling {
                pending.settle().await;
                ack.finish();
            }
        });
    }
}
