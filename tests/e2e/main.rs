//! End-to-end tests: a real Kafka-protocol broker (librdkafka's mock cluster,
//! through the same client code the host uses), real `sluice` processes and
//! real guest components built from guests/.

// First: its macros serve the modules after it.
#[macro_use]
mod support;

mod boundary;
mod cli;
mod dead_letters;
mod deciders;
mod delivery;
mod differential;
mod effects;
mod exactly_once;
mod handlers;
mod http_target;
mod operations;
mod otlp;
mod polyglot;
mod redrive;
mod sandbox;
mod scaffold;
mod shop;
mod timers;
mod traces;
mod transactional_broker;
