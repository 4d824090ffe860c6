//! Generated bindings, one module per contract version the host speaks, and
//! their conversions into the version-independent types of `crate::contract`.
//!
//! A component built against an older minor version must keep loading, and
//! the component model compares types exactly, so the host keeps the bindings
//! of every version it speaks and picks one by the component's export name.
//! Adding a version: copy the current WIT verbatim to `wit/archive/<version>/`
//! (and point the previous module there), bump `wit/`, add a module here
//! (with `shared_conversions!`, its `output` and, from 0.3 on,
//! `decider_conversions!`), a `ContractVersion` case, and arms in the
//! matches and the decider enums below.

use wasmtime::Store;
use wasmtime::component::{Component, ComponentExportIndex, Func, InstancePre, TypedFunc};

use super::outputs::OutputList;
use super::sandbox::GuestState;
use crate::contract::{Decision, Event, HandleError, Message, Output};

/// The export every handler component has, without its version suffix.
pub(crate) const HANDLE_INTERFACE: &str = "sluice:handler/handle";

/// A contract version the host speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ContractVersion {
    /// `sluice:handler@0.1.x`: outputs `publish` and `log`.
    V0_1,
    /// `sluice:handler@0.2.x`: adds the `http` output.
    V0_2,
    /// `sluice:handler@0.3.x`: adds the `decider` world.
    V0_3,
    /// `sluice:handler@0.4.x`: adds the `schedule` and `cancel` outputs.
    V0_4,
}

impl ContractVersion {
    /// Every version the host speaks, oldest first.
    pub const ALL: &'static [ContractVersion] = &[
        ContractVersion::V0_1,
        ContractVersion::V0_2,
        ContractVersion::V0_3,
        ContractVersion::V0_4,
    ];

    /// The version as written in WIT (`0.1`), for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ContractVersion::V0_1 => "0.1",
            ContractVersion::V0_2 => "0.2",
            ContractVersion::V0_3 => "0.3",
            ContractVersion::V0_4 => "0.4",
        }
    }

    /// Which supported version a `sluice:handler` package version belongs to
    /// (same major, and same minor while the major is 0, as semver has it).
    pub(crate) fn of(version: &semver::Version) -> Option<ContractVersion> {
        match (version.major, version.minor) {
            (0, 1) => Some(ContractVersion::V0_1),
            (0, 2) => Some(ContractVersion::V0_2),
            (0, 3) => Some(ContractVersion::V0_3),
            (0, 4) => Some(ContractVersion::V0_4),
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

/// The `output` conversion of versions with the `http` output (0.2 on);
/// later versions add the arms of their own outputs.
macro_rules! output_with_http {
    ($($arm:pat => $converted:expr,)*) => {
        use crate::contract::{HttpMethod, HttpRequest, Output};

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
                $($arm => $converted,)*
            }
        }
    };
}

/// Contract 0.2, frozen in `wit/archive/0.2.0`.
pub(crate) mod v0_2 {
    wasmtime::component::bindgen!({
        world: "handler",
        path: "../wit/archive/0.2.0",
        ownership: Borrowing {
            duplicate_if_necessary: true
        },
    });

    pub(crate) mod convert {
        use super::sluice::handler::types as wit;
        shared_conversions!();
        output_with_http!();
    }
}

/// The `event` and `decision` conversions of versions with the `decider`
/// world (0.3 on).
macro_rules! decider_conversions {
    () => {
        use crate::contract::{Decision, Event};

        pub(crate) fn event_param(event: &Event) -> wit::EventParam<'_> {
            wit::EventParam {
                type_: &event.kind,
                data: &event.data,
                metadata: &event.metadata,
            }
        }

        pub(crate) fn decision(decision: wit::Decision) -> Decision {
            Decision {
                events: decision
                    .events
                    .into_iter()
                    .map(|e| Event {
                        kind: e.type_,
                        data: e.data,
                        metadata: e.metadata,
                    })
                    .collect(),
                outputs: decision.outputs.into_iter().map(output).collect(),
            }
        }
    };
}

/// Contract 0.3, frozen in `wit/archive/0.3.0`. As in every version with
/// deciders, one host-side world exports both interfaces, so that the
/// `handler` and `decider` worlds share one set of types; each component is
/// checked against its own interface only.
pub(crate) mod v0_3 {
    wasmtime::component::bindgen!({
        inline: "
            package sluice:host;
            world both {
                export sluice:handler/handle@0.3.0;
                export sluice:handler/decide@0.3.0;
            }
        ",
        path: "../wit/archive/0.3.0",
        world: "sluice:host/both",
        ownership: Borrowing {
            duplicate_if_necessary: true
        },
    });

    pub(crate) use exports::sluice::handler::decide;
    pub(crate) use exports::sluice::handler::handle;

    pub(crate) mod convert {
        use super::sluice::handler::types as wit;
        shared_conversions!();
        output_with_http!();
        decider_conversions!();
    }
}

/// Contract 0.4, the current `wit/`.
pub(crate) mod v0_4 {
    wasmtime::component::bindgen!({
        inline: "
            package sluice:host;
            world both {
                export sluice:handler/handle@0.4.0;
                export sluice:handler/decide@0.4.0;
            }
        ",
        path: "../wit",
        world: "sluice:host/both",
        ownership: Borrowing {
            duplicate_if_necessary: true
        },
    });

    pub(crate) use exports::sluice::handler::decide;
    pub(crate) use exports::sluice::handler::handle;

    pub(crate) mod convert {
        use super::sluice::handler::types as wit;
        use crate::contract::Schedule;
        shared_conversions!();
        output_with_http!(
            wit::Output::Schedule(timer) => Output::Schedule(Schedule {
                id: timer.id,
                due: timer.due,
                publish: publish(timer.publish),
            }),
            wit::Output::Cancel(id) => Output::Cancel(id),
        );
        decider_conversions!();
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
            ContractVersion::V0_3 => {
                v0_3::handle::GuestIndices::new(&pre)?;
            }
            ContractVersion::V0_4 => {
                v0_4::handle::GuestIndices::new(&pre)?;
            }
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
            ContractVersion::V0_3 => {
                let _: handle_signature!(v0_3, 'static) = func.typed(&*store)?;
            }
            ContractVersion::V0_4 => {
                let _: handle_signature!(v0_4, 'static) = func.typed(&*store)?;
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
            ContractVersion::V0_3 => call_handle!(v0_3, self.func, store, msg),
            ContractVersion::V0_4 => call_handle!(v0_4, self.func, store, msg),
        }
    }
}

/// The export every decider component has, without its version suffix.
pub(crate) const DECIDE_INTERFACE: &str = "sluice:handler/decide";

/// A decider component pre-linked against the host (contract 0.3 on).
#[derive(Clone)]
pub(crate) struct DeciderPre {
    pre: InstancePre<GuestState>,
    indices: DeciderIndices,
}

/// Where a version's decider functions are among the component's exports.
#[derive(Clone)]
enum DeciderIndices {
    V0_3(v0_3::decide::GuestIndices),
    V0_4(v0_4::decide::GuestIndices),
}

/// A live instance's decider functions, in its version's types.
pub(crate) enum DeciderFuncs {
    V0_3(v0_3::decide::Guest),
    V0_4(v0_4::decide::Guest),
}

impl DeciderPre {
    /// Checks the component's exports against the `decide` interface of
    /// `version`.
    pub(crate) fn new(
        version: ContractVersion,
        pre: InstancePre<GuestState>,
    ) -> wasmtime::Result<DeciderPre> {
        let indices = match version {
            ContractVersion::V0_1 | ContractVersion::V0_2 => {
                wasmtime::bail!("contract {} has no decider world", version.as_str())
            }
            ContractVersion::V0_3 => DeciderIndices::V0_3(v0_3::decide::GuestIndices::new(&pre)?),
            ContractVersion::V0_4 => DeciderIndices::V0_4(v0_4::decide::GuestIndices::new(&pre)?),
        };
        Ok(DeciderPre { pre, indices })
    }

    pub(crate) fn instantiate(
        &self,
        store: &mut Store<GuestState>,
    ) -> wasmtime::Result<DeciderFuncs> {
        let instance = self.pre.instantiate(&mut *store)?;
        Ok(match &self.indices {
            DeciderIndices::V0_3(indices) => {
                DeciderFuncs::V0_3(indices.load(&mut *store, &instance)?)
            }
            DeciderIndices::V0_4(indices) => {
                DeciderFuncs::V0_4(indices.load(&mut *store, &instance)?)
            }
        })
    }

    pub(crate) fn component(&self) -> &Component {
        self.pre.component()
    }
}

/// Runs `$body` with `$guest` bound to the version's decider functions and
/// `convert` to its conversions.
macro_rules! with_decider {
    ($funcs:expr, $guest:ident => $body:expr) => {
        match $funcs {
            DeciderFuncs::V0_3($guest) => {
                #[allow(unused_imports, reason = "not every call converts")]
                use v0_3::convert;
                $body
            }
            DeciderFuncs::V0_4($guest) => {
                #[allow(unused_imports, reason = "not every call converts")]
                use v0_4::convert;
                $body
            }
        }
    };
}

impl DeciderFuncs {
    /// The outer error of each call is a trap, the inner one the guest's.
    pub(crate) fn stream_id(
        &self,
        store: &mut Store<GuestState>,
        msg: &Message,
    ) -> wasmtime::Result<Result<Option<String>, HandleError>> {
        with_decider!(self, guest => {
            let headers: Vec<_> = msg.headers.iter().map(convert::header_param).collect();
            let result = guest.call_stream_id(store, convert::message(msg, &headers))?;
            Ok(result.map_err(convert::error))
        })
    }

    pub(crate) fn initial(&self, store: &mut Store<GuestState>) -> wasmtime::Result<Vec<u8>> {
        with_decider!(self, guest => guest.call_initial(store))
    }

    pub(crate) fn fold(
        &self,
        store: &mut Store<GuestState>,
        state: &[u8],
        events: &[Event],
    ) -> wasmtime::Result<Vec<u8>> {
        with_decider!(self, guest => {
            let events: Vec<_> = events.iter().map(convert::event_param).collect();
            guest.call_fold(store, state, &events)
        })
    }

    pub(crate) fn decide(
        &self,
        store: &mut Store<GuestState>,
        msg: &Message,
        state: &[u8],
    ) -> wasmtime::Result<Result<Decision, HandleError>> {
        with_decider!(self, guest => {
            let headers: Vec<_> = msg.headers.iter().map(convert::header_param).collect();
            let result = guest.call_decide(store, convert::message(msg, &headers), state)?;
            Ok(result.map(convert::decision).map_err(convert::error))
        })
    }
}
