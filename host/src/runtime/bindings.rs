//! Generated bindings, one module per contract version the host speaks, and
//! their conversions into the version-independent types of `crate::contract`.
//!
//! A component built against an older minor version must keep loading, and
//! the component model compares types exactly, so the host keeps the bindings
//! of every version it supports and picks one by the component's export name.
//! Adding a version: freeze the previous WIT under `wit/archive/`, add a module
//! here, a `ContractVersion` case, and its conversions.

use wasmtime::component::{Component, InstancePre};
use wasmtime::{Engine, Store};

use super::sandbox::GuestState;
use crate::contract::{HandleError, Header, LogEntry, LogLevel, Message, Output, Publish};

/// The export every handler component has, without its version suffix.
pub(crate) const HANDLE_INTERFACE: &str = "sluice:handler/handle";

/// A contract version the host speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContractVersion {
    /// `sluice:handler@0.1.x`: outputs `publish` and `log`.
    V0_1,
}

impl ContractVersion {
    /// Every version the host speaks, oldest first.
    pub const ALL: &'static [ContractVersion] = &[ContractVersion::V0_1];

    /// The version as written in WIT (`0.1`), for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ContractVersion::V0_1 => "0.1",
        }
    }

    /// Which supported version a `sluice:handler` package version belongs to
    /// (same major, and same minor while the major is 0, as semver has it).
    pub(crate) fn of(version: &semver::Version) -> Option<ContractVersion> {
        match (version.major, version.minor) {
            (0, 1) => Some(ContractVersion::V0_1),
            _ => None,
        }
    }

    /// The versions the host speaks, for error messages.
    pub fn supported() -> String {
        ContractVersion::ALL
            .iter()
            .map(|v| format!("sluice:handler@{}.x", v.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub(crate) mod v0_1 {
    wasmtime::component::bindgen!({
        world: "handler",
        path: "../wit",
        // Messages are lowered into the guest straight from the host's own
        // values, without copying them into owned binding types first.
        ownership: Borrowing {
            duplicate_if_necessary: true
        },
    });
}

/// A component pre-linked against the host, ready to instantiate cheaply.
#[derive(Clone)]
pub(crate) enum HandlerPre {
    V0_1(v0_1::HandlerPre<GuestState>),
}

/// A live instance's exports.
pub(crate) enum HandlerExports {
    V0_1(v0_1::Handler),
}

impl HandlerPre {
    pub(crate) fn new(
        version: ContractVersion,
        pre: InstancePre<GuestState>,
    ) -> wasmtime::Result<HandlerPre> {
        Ok(match version {
            ContractVersion::V0_1 => HandlerPre::V0_1(v0_1::HandlerPre::new(pre)?),
        })
    }

    pub(crate) fn instantiate(
        &self,
        store: &mut Store<GuestState>,
    ) -> wasmtime::Result<HandlerExports> {
        Ok(match self {
            HandlerPre::V0_1(pre) => HandlerExports::V0_1(pre.instantiate(store)?),
        })
    }

    pub(crate) fn component(&self) -> &Component {
        match self {
            HandlerPre::V0_1(pre) => pre.instance_pre().component(),
        }
    }

    pub(crate) fn engine(&self) -> &Engine {
        self.component().engine()
    }
}

impl HandlerExports {
    /// Calls `handle`; the outer error is a trap, the inner one the handler's.
    pub(crate) fn handle(
        &self,
        store: &mut Store<GuestState>,
        msg: &Message,
    ) -> wasmtime::Result<Result<Vec<Output>, HandleError>> {
        match self {
            HandlerExports::V0_1(handler) => {
                let headers: Vec<_> = msg.headers.iter().map(v0_1_types::header_param).collect();
                let result = handler
                    .sluice_handler_handle()
                    .call_handle(store, v0_1_types::message(msg, &headers))?;
                Ok(result
                    .map(|outputs| outputs.into_iter().map(v0_1_types::output).collect())
                    .map_err(v0_1_types::error))
            }
        }
    }
}

mod v0_1_types {
    use super::*;
    use v0_1::sluice::handler::types as wit;

    pub(super) fn message<'a>(
        msg: &'a Message,
        headers: &'a [wit::HeaderParam<'a>],
    ) -> wit::Message<'a> {
        wit::Message {
            topic: &msg.topic,
            partition: msg.partition as u32,
            offset: msg.offset as u64,
            key: msg.key.as_deref(),
            payload: &msg.payload,
            headers,
            timestamp: msg.timestamp,
        }
    }

    pub(super) fn header_param(h: &Header) -> wit::HeaderParam<'_> {
        wit::HeaderParam {
            name: &h.name,
            value: &h.value,
        }
    }

    fn header(h: wit::HeaderResult) -> Header {
        Header {
            name: h.name,
            value: h.value,
        }
    }

    pub(super) fn output(output: wit::Output) -> Output {
        match output {
            wit::Output::Publish(p) => Output::Publish(Publish {
                topic: p.topic,
                key: p.key,
                payload: p.payload,
                headers: p.headers.into_iter().map(header).collect(),
            }),
            wit::Output::Log(entry) => Output::Log(LogEntry {
                level: match entry.level {
                    wit::LogLevel::Trace => LogLevel::Trace,
                    wit::LogLevel::Debug => LogLevel::Debug,
                    wit::LogLevel::Info => LogLevel::Info,
                    wit::LogLevel::Warn => LogLevel::Warn,
                    wit::LogLevel::Error => LogLevel::Error,
                },
                text: entry.text,
            }),
        }
    }

    pub(super) fn error(error: wit::HandleError) -> HandleError {
        match error {
            wit::HandleError::InvalidInput(d) => HandleError::InvalidInput(d),
            wit::HandleError::Rejected(d) => HandleError::Rejected(d),
            wit::HandleError::Failed(d) => HandleError::Failed(d),
        }
    }
}
