//! Generated bindings, one module per contract version the host speaks, and
//! their conversions into the version-independent types of `crate::contract`.
//!
//! A component built against an older minor version must keep loading, and
//! the component model compares types exactly, so the host keeps the bindings
//! of every version it speaks and picks one by the component's export name.
//! Adding a version: copy the current WIT verbatim to `wit/archive/<version>/`,
//! bump `wit/`, add a module here (with `shared_conversions!` and its
//! `output`), a `ContractVersion` case, and arms in the two enums below.

use wasmtime::component::{Component, ComponentExportIndex, Func, InstancePre, TypedFunc};
use wasmtime::{Engine, Store};

use super::outputs::OutputList;
use super::sandbox::GuestState;
use crate::contract::{HandleError, Message, Output};

/// The export every handler component has, without its version suffix.
pub(crate) const HANDLE_INTERFACE: &str = "sluice:handler/handle";

/// A contract version the host speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContractVersion {
    /// `sluice:handler@0.1.x`: outputs `publish` and `log`.
    V0_1,
    /// `sluice:handler@0.2.x`: adds the `http` output.
    V0_2,
}

impl ContractVersion {
    /// Every version the host speaks, oldest first.
    pub const ALL: &'static [ContractVersion] = &[ContractVersion::V0_1, ContractVersion::V0_2];

    /// The version as written in WIT (`0.1`), for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ContractVersion::V0_1 => "0.1",
            ContractVersion::V0_2 => "0.2",
        }
    }

    /// Which supported version a `sluice:handler` package version belongs to
    /// (same major, and same minor while the major is 0, as semver has it).
    pub(crate) fn of(version: &semver::Version) -> Option<ContractVersion> {
        match (version.major, version.minor) {
            (0, 1) => Some(ContractVersion::V0_1),
            (0, 2) => Some(ContractVersion::V0_2),
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

/// Conversions between the host's types and a version's generated `wit`
/// types, for everything the versions have in common. Each version module
/// adds `output`, which differs with the output cases it has.
macro_rules! shared_conversions {
    () => {
        use crate::contract::{HandleError, Header, LogEntry, LogLevel, Message, Publish};

        /// The message, borrowed: lowered straight from the host's values.
        pub(crate) fn message<'a>(
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

        pub(crate) fn header_param(h: &Header) -> wit::HeaderParam<'_> {
            wit::HeaderParam {
                name: &h.name,
                value: &h.value,
            }
        }

        #[allow(dead_code, reason = "not every version has every output")]
        fn header(h: wit::HeaderResult) -> Header {
            Header {
                name: h.name,
                value: h.value,
            }
        }

        fn publish(p: wit::Publish) -> Publish {
            Publish {
                topic: p.topic,
                key: p.key,
                payload: p.payload,
                headers: p.headers.into_iter().map(header).collect(),
            }
        }

        fn log(entry: wit::LogEntry) -> LogEntry {
            LogEntry {
                level: match entry.level {
                    wit::LogLevel::Trace => LogLevel::Trace,
                    wit::LogLevel::Debug => LogLevel::Debug,
                    wit::LogLevel::Info => LogLevel::Info,
                    wit::LogLevel::Warn => LogLevel::Warn,
                    wit::LogLevel::Error => LogLevel::Error,
                },
                text: entry.text,
            }
        }

        pub(crate) fn error(error: wit::HandleError) -> HandleError {
            match error {
                wit::HandleError::InvalidInput(d) => HandleError::InvalidInput(d),
                wit::HandleError::Rejected(d) => HandleError::Rejected(d),
                wit::HandleError::Failed(d) => HandleError::Failed(d),
            }
        }
    };
}

/// Contract 0.1, frozen in `wit/archive/0.1.0`.
pub(crate) mod v0_1 {
    wasmtime::component::bindgen!({
        world: "handler",
        path: "../wit/archive/0.1.0",
        ownership: Borrowing {
            duplicate_if_necessary: true
        },
    });

    pub(crate) mod convert {
        use super::sluice::handler::types as wit;
        use crate::contract::Output;
        shared_conversions!();

        pub(crate) fn output(output: wit::Output) -> Output {
            match output {
                wit::Output::Publish(p) => Output::Publish(publish(p)),
                wit::Output::Log(entry) => Output::Log(log(entry)),
            }
        }
    }
}

/// Contract 0.2, the current `wit/`.
pub(crate) mod v0_2 {
    wasmtime::component::bindgen!({
        world: "handler",
        path: "../wit",
        ownership: Borrowing {
            duplicate_if_necessary: true
        },
    });

    pub(crate) mod convert {
        use super::sluice::handler::types as wit;
        use crate::contract::{HttpMethod, HttpRequest, Output};
        shared_conversions!();

        pub(crate) fn output(output: wit::Output) -> Output {
            match output {
                wit::Output::Publish(p) => Output::Publish(publish(p)),
                wit::Output::Log(entry) => Output::Log(log(entry)),
                wit::Output::Http(request) => Output::Http(HttpRequest {
                    method: match request.method {
                        wit::HttpMethod::Get => HttpMethod::Get,
                        wit::HttpMethod::Head => HttpMethod::Head,
                        wit::HttpMethod::Post => HttpMethod::Post,
                        wit::HttpMethod::Put => HttpMethod::Put,
                        wit::HttpMethod::Patch => HttpMethod::Patch,
                        wit::HttpMethod::Delete => HttpMethod::Delete,
                        wit::HttpMethod::Options => HttpMethod::Options,
                    },
                    url: request.url,
                    headers: request.headers.into_iter().map(header).collect(),
                    body: request.body,
                }),
            }
        }
    }
}

/// A component pre-linked against the host, ready to instantiate cheaply.
#[derive(Clone)]
pub(crate) struct HandlerPre {
    version: ContractVersion,
    pre: InstancePre<GuestState>,
    /// Where `handle` is among the component's exports.
    handle: ComponentExportIndex,
}

/// A live instance's `handle` function, and the contract its types follow.
pub(crate) struct HandleFunc {
    version: ContractVersion,
    func: Func,
}

/// `handle`'s parameters and results in a version's types; the outputs come
/// as an `OutputList`, counted before they are copied.
macro_rules! handle_signature {
    ($version:ident, $lifetime:lifetime) => {
        TypedFunc<
            ($version::sluice::handler::types::Message<$lifetime>,),
            (
                Result<
                    OutputList<$version::sluice::handler::types::Output>,
                    $version::sluice::handler::types::HandleError,
                >,
            ),
        >
    };
}

impl HandlerPre {
    /// Checks the component's exports against the contract `version`.
    pub(crate) fn new(
        version: ContractVersion,
        export: &str,
        pre: InstancePre<GuestState>,
    ) -> wasmtime::Result<HandlerPre> {
        // The generated bindings check every exported type against the
        // contract and say precisely what differs.
        match version {
            ContractVersion::V0_1 => drop(v0_1::HandlerPre::new(pre.clone())?),
            ContractVersion::V0_2 => drop(v0_2::HandlerPre::new(pre.clone())?),
        }
        let component = pre.component();
        let handle = component
            .get_export_index(None, export)
            .and_then(|interface| component.get_export_index(Some(&interface), "handle"))
            .ok_or_else(|| wasmtime::format_err!("no function `handle` in `{export}`"))?;
        Ok(HandlerPre {
            version,
            pre,
            handle,
        })
    }

    pub(crate) fn instantiate(
        &self,
        store: &mut Store<GuestState>,
    ) -> wasmtime::Result<HandleFunc> {
        let instance = self.pre.instantiate(&mut *store)?;
        let func = instance
            .get_func(&mut *store, self.handle)
            .ok_or_else(|| wasmtime::format_err!("the instance has no `handle` function"))?;
        // Checked once here, so that each call can skip it (see `call`).
        match self.version {
            ContractVersion::V0_1 => {
                let _: handle_signature!(v0_1, 'static) = func.typed(&*store)?;
            }
            ContractVersion::V0_2 => {
                let _: handle_signature!(v0_2, 'static) = func.typed(&*store)?;
            }
        }
        Ok(HandleFunc {
            version: self.version,
            func,
        })
    }

    pub(crate) fn component(&self) -> &Component {
        self.pre.component()
    }

    pub(crate) fn engine(&self) -> &Engine {
        self.component().engine()
    }
}

/// Calls a version's `handle` and converts what it returns.
macro_rules! call_handle {
    ($version:ident, $func:expr, $store:expr, $msg:expr) => {{
        use $version::convert;
        let headers: Vec<_> = $msg.headers.iter().map(convert::header_param).collect();
        // SAFETY: `instantiate` type-checked `func` against this signature.
        let typed: handle_signature!($version, '_) = unsafe { TypedFunc::new_unchecked($func) };
        let (result,) = typed.call($store, (convert::message($msg, &headers),))?;
        Ok(result
            .map(|outputs| outputs.0.into_iter().map(convert::output).collect())
            .map_err(convert::error))
    }};
}

impl HandleFunc {
    /// Calls `handle`; the outer error is a trap, the inner one the handler's.
    pub(crate) fn call(
        &self,
        store: &mut Store<GuestState>,
        msg: &Message,
    ) -> wasmtime::Result<Result<Vec<Output>, HandleError>> {
        match self.version {
            ContractVersion::V0_1 => call_handle!(v0_1, self.func, store, msg),
            ContractVersion::V0_2 => call_handle!(v0_2, self.func, store, msg),
        }
    }
}
