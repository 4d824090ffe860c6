//! Loading a handler component: read, recognise, compile, check it against
//! the contract and the host's imports, and instantiate it once under the
//! sandbox. Every refusal is one line naming the file and the reason.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::Component;

use super::bindings::{
    ContractVersion, DECIDE_INTERFACE, DeciderPre, HANDLE_INTERFACE, HandlerPre,
};
use super::cache::content_hash;
use super::sandbox::{GuestTag, InstanceGauges, LineBudget};
use super::{
    CallLimits, Handler, HandlerInstance, HandlerKind, Runtime, Trap, WasmInstance, one_line,
};

/// The first eight bytes of a component (magic, version 0x0d, layer 1).
const COMPONENT_HEADER: [u8; 8] = *b"\0asm\x0d\x00\x01\x00";
/// The first eight bytes of a core module (magic, version 1, layer 0).
const CORE_MODULE_HEADER: [u8; 8] = *b"\0asm\x01\x00\x00\x00";

/// A handler component the host refused, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct LoadError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: LoadProblem,
}

/// Why a component was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadProblem {
    /// The file cannot be read.
    #[error("cannot read: {0}")]
    Read(String),
    /// The file is larger than the handler's `max-component-mib`: it is
    /// refused before it is read, since compiling takes memory in
    /// proportion to size.
    #[error(
        "{size} bytes, over the cap of {cap} bytes (limits.max-component-mib): not read, not compiled"
    )]
    TooLarge {
        /// Its size.
        size: u64,
        /// The cap.
        cap: u64,
    },
    /// The file is not WebAssembly at all.
    #[error("not a WebAssembly file (no \\0asm header)")]
    NotWasm,
    /// A core module, not a component.
    #[error(
        "a core WebAssembly module, not a component: build it for wasm32-wasip2 or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    /// wasmtime cannot compile it.
    #[error("does not compile: {0}")]
    Compile(String),
    /// It exports neither the handler nor the decider interface.
    #[error(
        "not a sluice handler: it exports {exports}, expected {HANDLE_INTERFACE}@<version> or {DECIDE_INTERFACE}@<version>"
    )]
    WrongWorld {
        /// What it exports instead.
        exports: String,
    },
    /// It is built for a contract version the host does not speak.
    #[error(
        "built for sluice:handler@{found}, which this host does not speak (it speaks {})",
        ContractVersion::supported()
    )]
    UnsupportedContract {
        /// The version it was built for.
        found: String,
    },
    /// It exports the interface, but with other types.
    #[error("exports {interface} with types that do not match the contract: {detail}")]
    Mismatch {
        /// The interface it exports.
        interface: &'static str,
        /// What differs.
        detail: String,
    },
    /// It imports something the host does not provide.
    #[error("needs imports the host does not provide: {0}")]
    Imports(String),
    /// It trapped when instantiated under the sandbox.
    #[error("fails to instantiate under the sandbox: {0}")]
    Instantiate(Trap),
}

/// What `sluice inspect` reports about a component that loads.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The file.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// The contract package it was built against (`sluice:handler@0.1.0`).
    pub contract: String,
    /// The contract version the host runs it as.
    pub contract_version: ContractVersion,
    /// The world it implements.
    pub kind: HandlerKind,
    /// Export names.
    pub exports: Vec<String>,
    /// Import names.
    pub imports: Vec<String>,
    /// Time to compile (or to load from the artifact cache).
    pub compile_time: Duration,
    /// Whether the compiled artifact came from the cache.
    pub cached: bool,
    /// Time of the trial instantiation.
    pub instantiate_time: Duration,
}

/// A component pre-linked against the host, by the world it implements.
#[derive(Clone)]
pub(super) enum Pre {
    Handle(HandlerPre),
    Decide(DeciderPre),
}

impl Pre {
    pub(super) fn component(&self) -> &Component {
        match self {
            Pre::Handle(pre) => pre.component(),
            Pre::Decide(pre) => pre.component(),
        }
    }
}

/// A handler component that passed every check, ready to instantiate.
pub struct WasmHandler {
    tag: GuestTag,
    contract: ContractVersion,
    pre: Pre,
    limits: CallLimits,
    lines: Arc<LineBudget>,
}

impl WasmHandler {
    /// The contract version this component speaks.
    pub fn contract(&self) -> ContractVersion {
        self.contract
    }
}

impl Handler for WasmHandler {
    fn name(&self) -> &str {
        &self.tag.name
    }

    fn version(&self) -> &str {
        &self.tag.version
    }

    fn instantiate(&self) -> Result<Box<dyn HandlerInstance>, Trap> {
        Ok(Box::new(WasmInstance::new(
            &self.pre,
            &self.tag,
            &self.limits,
            &self.lines,
        )?))
    }

    fn calls_per_instance(&self) -> u64 {
        self.limits.calls_per_instance
    }

    fn gauges(&self) -> Option<&InstanceGauges> {
        Some(&self.tag.gauges)
    }

    fn admit_log_line(&self) -> bool {
        self.lines.admit_line(&self.tag)
    }

    fn max_output_bytes(&self) -> u64 {
        self.limits.max_output_bytes
    }

    fn kind(&self) -> HandlerKind {
        match self.pre {
            Pre::Handle(_) => HandlerKind::Handler,
            Pre::Decide(_) => HandlerKind::Decider,
        }
    }
}

impl Runtime {
    /// Loads and checks a handler component; `name` and `version` tag its logs
    /// and outputs.
    pub fn load(
        &self,
        path: &Path,
        name: &str,
        version: &str,
    ) -> Result<Arc<WasmHandler>, LoadError> {
        let bytes = self.read(path, name)?;
        self.load_bytes(path, &bytes, name, version)
            .map(|(handler, _)| handler)
    }

    /// Loads and checks a component, under the limits of `handler` (if it
    /// is known), and reports what it is.
    pub fn inspect(&self, path: &Path, handler: Option<&str>) -> Result<Inspection, LoadError> {
        let name = handler.unwrap_or("inspect");
        let bytes = self.read(path, name)?;
        self.load_bytes(path, &bytes, name, "-")
            .map(|(_, inspection)| inspection)
    }

    /// Reads a component file of handler `name`, refusing one over its
    /// `max-component-mib` before reading it.
    pub(crate) fn read(&self, path: &Path, name: &str) -> Result<Vec<u8>, LoadError> {
        let cap = self.limits(name).max_component_bytes();
        let refuse = |problem| LoadError {
            path: path.to_owned(),
            problem,
        };
        let unreadable = |e: std::io::Error| refuse(LoadProblem::Read(e.to_string()));
        let file = std::fs::File::open(path).map_err(unreadable)?;
        let size = file.metadata().map_err(unreadable)?.len();
        if size > cap {
            return Err(refuse(LoadProblem::TooLarge { size, cap }));
        }
        // Bounded, should the file grow while it is read.
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(cap + 1)
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        Ok(bytes)
    }

    /// Loads and checks a component already read from `path`, and reports
    /// what it is.
    pub(crate) fn load_bytes(
        &self,
        path: &Path,
        bytes: &[u8],
        name: &str,
        version: &str,
    ) -> Result<(Arc<WasmHandler>, Inspection), LoadError> {
        let refuse = |problem| LoadError {
            path: path.to_owned(),
            problem,
        };
        let cap = self.limits(name).max_component_bytes();
        if bytes.len() as u64 > cap {
            return Err(refuse(LoadProblem::TooLarge {
                size: bytes.len() as u64,
                cap,
            }));
        }
        match bytes.get(..8) {
            Some(header) if header == COMPONENT_HEADER => {}
            Some(header) if header == CORE_MODULE_HEADER => {
                return Err(refuse(LoadProblem::CoreModule));
            }
            _ => return Err(refuse(LoadProblem::NotWasm)),
        }

        let started = Instant::now();
        let compiled = match &self.cache {
            Some(cache) => cache.component(&self.engine, &content_hash(bytes), bytes),
            None => Component::new(&self.engine, bytes).map(|c| (c, false)),
        };
        let (component, cached) =
            compiled.map_err(|e| refuse(LoadProblem::Compile(one_line(&e))))?;
        let compile_time = started.elapsed();

        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        let (export, kind, contract_version) = find_contract(&exports).map_err(refuse)?;
        let contract = format!(
            "sluice:handler@{}",
            &export[export.find('@').unwrap_or(0) + 1..]
        );

        // Every import is resolved here, once: a component needing anything
        // the host does not provide is refused now, never at call time.
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| refuse(LoadProblem::Imports(one_line(&e))))?;
        let mismatch = |interface| {
            move |e: wasmtime::Error| {
                refuse(LoadProblem::Mismatch {
                    interface,
                    detail: one_line(&e),
                })
            }
        };
        let pre = match kind {
            HandlerKind::Handler => HandlerPre::new(contract_version, export, instance_pre)
                .map(Pre::Handle)
                .map_err(mismatch(HANDLE_INTERFACE))?,
            HandlerKind::Decider => DeciderPre::new(contract_version, instance_pre)
                .map(Pre::Decide)
                .map_err(mismatch(DECIDE_INTERFACE))?,
        };

        let limits = self.limits(name);
        let handler = WasmHandler {
            tag: GuestTag {
                name: name.into(),
                version: version.into(),
                gauges: Arc::default(),
            },
            contract: contract_version,
            pre,
            limits: CallLimits::new(limits, self.fuel),
            lines: Arc::new(LineBudget::new(limits.stdio_lines_per_second)),
        };
        let started = Instant::now();
        handler
            .instantiate()
            .map_err(|trap| refuse(LoadProblem::Instantiate(trap)))?;
        let instantiate_time = started.elapsed();

        let inspection = Inspection {
            path: path.to_owned(),
            size: bytes.len() as u64,
            contract,
            contract_version,
            kind,
            exports,
            imports,
            compile_time,
            cached,
            instantiate_time,
        };
        Ok((Arc::new(handler), inspection))
    }
}

/// Finds the handler or decider export, and the contract version it was
/// built against. Deciders arrived with 0.3.
fn find_contract(exports: &[String]) -> Result<(&str, HandlerKind, ContractVersion), LoadProblem> {
    let found = exports.iter().find_map(|export| {
        [
            (HANDLE_INTERFACE, HandlerKind::Handler),
            (DECIDE_INTERFACE, HandlerKind::Decider),
        ]
        .into_iter()
        .find_map(|(interface, kind)| {
            let version = export.strip_prefix(interface)?.strip_prefix('@')?;
            Some((export.as_str(), kind, version))
        })
    });
    let Some((export, kind, found)) = found else {
        let exports = if exports.is_empty() {
            "nothing".to_owned()
        } else {
            exports.join(", ")
        };
        return Err(LoadProblem::WrongWorld { exports });
    };
    let version = semver::Version::parse(found)
        .ok()
        .and_then(|v| ContractVersion::of(&v))
        .filter(|v| kind == HandlerKind::Handler || *v >= ContractVersion::V0_3)
        .ok_or_else(|| LoadProblem::UnsupportedContract {
            found: found.to_owned(),
        })?;
    Ok((export, kind, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_is_found_by_export_name() {
        let exports = vec!["sluice:handler/handle@0.1.0".to_owned()];
        let (export, kind, version) = find_contract(&exports).unwrap();
        assert_eq!(export, "sluice:handler/handle@0.1.0");
        assert_eq!(
            (kind, version),
            (HandlerKind::Handler, ContractVersion::V0_1)
        );
        let decider = vec!["sluice:handler/decide@0.3.1".to_owned()];
        let (_, kind, version) = find_contract(&decider).unwrap();
        assert_eq!(
            (kind, version),
            (HandlerKind::Decider, ContractVersion::V0_3)
        );
        // No decider before 0.3.
        assert!(find_contract(&["sluice:handler/decide@0.2.0".to_owned()]).is_err());
        // A patch release of the same minor is the same contract.
        assert!(find_contract(&["sluice:handler/handle@0.1.7".to_owned()]).is_ok());
    }

    #[test]
    fn unknown_versions_and_worlds_are_refused() {
        let err = find_contract(&["sluice:handler/handle@9.0.0".to_owned()]).unwrap_err();
        assert!(err.to_string().contains("9.0.0"), "{err}");
        assert!(err.to_string().contains("sluice:handler@0.1.x"), "{err}");
        let err = find_contract(&["run".to_owned()]).unwrap_err();
        assert!(err.to_string().contains("exports run"), "{err}");
    }
}
