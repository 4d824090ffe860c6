//! `[limits]` and `[handlers.NAME.limits]`: the sandbox of handler calls.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::problem::{Checked, check_millis, check_range, millis};

/// Sandbox limits for handler calls: `[limits]` sets them for every handler,
/// `[handlers.NAME.limits]` overrides any of them (but `workers`) for one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock deadline for one handler call.
    #[serde(rename = "deadline-ms", with = "millis", default = "default_deadline")]
    pub deadline: Duration,
    /// Wasm instructions one call may run (roughly); none: no fuel metering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Linear-memory cap of one instance, in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// Core instances (and memories, and tables) one component may create.
    #[serde(default = "default_max_instances")]
    pub max_instances: u32,
    /// Elements one table may grow to.
    #[serde(default = "default_max_table_elements")]
    pub max_table_elements: u64,
    /// Outputs one call may return.
    #[serde(default = "default_max_outputs")]
    pub max_outputs: u64,
    /// Bytes of all outputs of one call together (topics, keys, payloads,
    /// headers, texts, URLs, bodies).
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: u64,
    /// Guest log lines (stdout, stderr and `log` outputs together) logged
    /// per second per handler version; lines over it are dropped and counted.
    #[serde(default = "default_stdio_lines_per_second")]
    pub stdio_lines_per_second: u32,
    /// One instance per worker, reused (`reuse`), or a new one per message (`fresh`).
    #[serde(default)]
    pub instances: InstanceStrategy,
    /// Replace a reused instance after this many calls.
    #[serde(default = "default_recycle_after")]
    pub recycle_after: u64,
    /// The guest's clocks and randomness come from the message (timestamp,
    /// topic/partition/offset), so a replay gives the same outputs.
    #[serde(default = "default_deterministic")]
    pub deterministic: bool,
    /// Worker threads running handler calls; 0 means one per CPU (host-wide only).
    #[serde(default)]
    pub workers: usize,
    /// The largest component file loaded, in MiB: compiling takes memory in
    /// proportion to size, so a larger file is refused before it is read.
    #[serde(default = "default_max_component_mib")]
    pub max_component_mib: u64,
}

/// How instances of a handler are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceStrategy {
    /// One instance per worker thread, recycled after `recycle-after` calls
    /// and after any trap (default; cheapest per call).
    #[default]
    Reuse,
    /// A new instance for every message: nothing survives from one message
    /// to the next (pooling allocator, pre-linked instantiation).
    Fresh,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: default_deadline(),
            fuel: None,
            memory_mib: default_memory_mib(),
            max_instances: default_max_instances(),
            max_table_elements: default_max_table_elements(),
            max_outputs: default_max_outputs(),
            max_output_bytes: default_max_output_bytes(),
            stdio_lines_per_second: default_stdio_lines_per_second(),
            instances: InstanceStrategy::default(),
            recycle_after: default_recycle_after(),
            deterministic: default_deterministic(),
            workers: 0,
            max_component_mib: default_max_component_mib(),
        }
    }
}

impl Limits {
    /// The memory cap in bytes.
    pub fn memory_bytes(&self) -> usize {
        (self.memory_mib as usize) << 20
    }

    /// The largest component file loaded, in bytes.
    pub fn max_component_bytes(&self) -> u64 {
        self.max_component_mib << 20
    }

    /// Number of worker threads to start.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        }
    }

    /// Calls an instance serves before it is replaced.
    pub fn calls_per_instance(&self) -> u64 {
        match self.instances {
            InstanceStrategy::Reuse => self.recycle_after,
            InstanceStrategy::Fresh => 1,
        }
    }

    /// These limits with `overrides` (a `[handlers.NAME.limits]` table) on top.
    pub(super) fn merged(&self, overrides: &toml::Table) -> Result<Limits, String> {
        if overrides.contains_key("workers") {
            return Err("`workers` is host-wide: set it in [limits]".into());
        }
        let mut table = toml::Table::try_from(self).map_err(|e| e.to_string())?;
        table.extend(overrides.clone());
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| e.message().to_owned())
    }

    pub(super) fn validate(&self, prefix: &str) -> Checked {
        let key = |field: &str| format!("{prefix}.{field}");
        check_millis(&key("deadline-ms"), self.deadline, 1, 600_000)?;
        if let Some(fuel) = self.fuel {
            check_range(&key("fuel"), fuel, 1, u64::MAX)?;
        }
        check_range(&key("memory-mib"), self.memory_mib, 1, 4096)?;
        check_range(&key("max-instances"), self.max_instances.into(), 1, 10_000)?;
        check_range(
            &key("max-table-elements"),
            self.max_table_elements,
            1,
            100_000_000,
        )?;
        check_range(&key("max-outputs"), self.max_outputs, 1, 10_000_000)?;
        check_range(&key("max-output-bytes"), self.max_output_bytes, 1, 1 << 32)?;
        check_range(
            &key("stdio-lines-per-second"),
            self.stdio_lines_per_second.into(),
            0,
            1_000_000,
        )?;
        check_range(&key("recycle-after"), self.recycle_after, 1, u64::MAX)?;
        check_range(&key("max-component-mib"), self.max_component_mib, 1, 4096)?;
        check_range(&key("workers"), self.workers as u64, 0, 1024)
    }
}

fn default_max_component_mib() -> u64 {
    48
}
fn default_deadline() -> Duration {
    Duration::from_millis(1000)
}
fn default_memory_mib() -> u64 {
    64
}
fn default_recycle_after() -> u64 {
    10_000
}
fn default_max_instances() -> u32 {
    100
}
fn default_max_table_elements() -> u64 {
    1_000_000
}
fn default_max_outputs() -> u64 {
    10_000
}
fn default_max_output_bytes() -> u64 {
    16 << 20
}
fn default_stdio_lines_per_second() -> u32 {
    100
}
fn default_deterministic() -> bool {
    true
}
