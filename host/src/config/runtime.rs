//! The `[runtime]` section and per-plugin `[plugin.NAME]` settings: limits and failure modes.

use std::collections::BTreeMap;

use natsplug_protocol::Phase;
use serde::{Deserialize, Serialize};

use super::logs::LogLevel;

/// How plugin instances are kept between calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceMode {
    /// A warm instance per thread (lane or worker) and plugin serves many
    /// calls, and is replaced after `max_calls_per_instance` calls, any
    /// trap, or a reload.
    Reuse,
    /// A new instance for every call: nothing survives between calls.
    Fresh,
}

/// Execution settings shared by all plugins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Lanes (threads that read NATS, each on a connection of its own, and
    /// run short calls) and as many worker threads (for the other calls).
    /// 0 (the default) = one of each per CPU core.
    pub workers: usize,
    /// `reuse` (default) or `fresh`.
    pub instance_mode: InstanceMode,
    /// With `reuse`, calls served by one instance before it is replaced. Default 10000.
    pub max_calls_per_instance: u64,
    /// Deadline of one plugin call in milliseconds. Default 1000.
    pub call_timeout_ms: u64,
    /// Linear memory cap per instance, in MiB. Default 64.
    pub max_memory_mb: u64,
    /// Largest accepted request payload in bytes. Default 1 MiB.
    pub max_request_bytes: usize,
    /// Calls in flight (queued or running) per host. Default 1024.
    pub max_in_flight: usize,
    /// Calls in flight per plugin, unless the plugin sets its own. Default 256.
    pub max_in_flight_per_plugin: usize,
    /// Instance slots of the pooling allocator. Default 1000.
    pub pool_instances: u32,
    /// Calls of one plugin running at once; the rest wait their turn on the
    /// workers, taken round-robin across plugins. 0 (the default) = no cap
    /// of its own: one call per lane and per worker.
    pub max_concurrency_per_plugin: usize,
    /// What a request meets when its plugin or the host is at its
    /// in-flight cap: `wait` (default, up to `max_queue_wait_ms`) or
    /// `reject` (a 503 error reply at once).
    pub overload: OverloadPolicy,
    /// With `overload = "wait"`: the longest a request waits for a slot
    /// before it gets a 503. Default 1000.
    pub max_queue_wait_ms: u64,
    /// A request runs on the lane that received it (no thread hand-off)
    /// when its plugin's last call took at most this many microseconds;
    /// otherwise, and for a plugin's first call, on a worker, so the lane
    /// reads on. 0 = every call runs on a worker thread. Default 1000.
    pub inline_call_max_us: u64,
    /// Per phase: answer `error` (closed) or `next` (open) when a plugin
    /// traps, times out or hits a limit. Default closed for the filter
    /// phases, open for logging.
    pub failure_mode: FailureModes,
}

/// What happens to a request that finds no free slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverloadPolicy {
    /// Wait for a slot, up to `max_queue_wait_ms`.
    Wait,
    /// Answer 503 at once.
    Reject,
}

/// What a caller is told when a plugin fails (trap, timeout, limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// An `"error"` reply with the service error headers: the caller stops.
    Closed,
    /// A `"next"` reply without mutations, with the failure in `error`: the
    /// caller goes on as if the plugin were absent.
    Open,
}

/// A failure mode per phase; unset phases take the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FailureModes {
    pub request_filter: Option<FailureMode>,
    pub response_filter: Option<FailureMode>,
    pub response_body_filter: Option<FailureMode>,
    pub logging: Option<FailureMode>,
}

impl FailureModes {
    /// The mode set for `phase`, if any.
    pub fn get(&self, phase: Phase) -> Option<FailureMode> {
        match phase {
            Phase::RequestFilter => self.request_filter,
            Phase::ResponseFilter => self.response_filter,
            Phase::ResponseBodyFilter => self.response_body_filter,
            Phase::Logging => self.logging,
        }
    }

    /// The mode of `phase`: this one's, else `fallback`'s, else the built-in
    /// default (closed, but open for logging).
    pub fn resolve(&self, fallback: &FailureModes, phase: Phase) -> FailureMode {
        self.get(phase)
            .or(fallback.get(phase))
            .unwrap_or(match phase {
                Phase::Logging => FailureMode::Open,
                _ => FailureMode::Closed,
            })
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: 0,
            instance_mode: InstanceMode::Reuse,
            max_calls_per_instance: 10_000,
            call_timeout_ms: 1000,
            max_memory_mb: 64,
            max_request_bytes: 1024 * 1024,
            max_in_flight: 1024,
            max_in_flight_per_plugin: 256,
            pool_instances: 1000,
            max_concurrency_per_plugin: 0,
            overload: OverloadPolicy::Wait,
            max_queue_wait_ms: 1000,
            inline_call_max_us: 1000,
            failure_mode: FailureModes::default(),
        }
    }
}

impl RuntimeConfig {
    /// The number of lanes, and of worker threads, to start.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }
    }
}

/// Settings of one plugin: `[plugin.NAME]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginSettings {
    /// Calls in flight for this plugin; default `runtime.max_in_flight_per_plugin`.
    pub max_in_flight: Option<usize>,
    /// Calls of this plugin running at once; default `runtime.max_concurrency_per_plugin`.
    pub max_concurrency: Option<usize>,
    /// Deadline of one call; default `runtime.call_timeout_ms`.
    pub call_timeout_ms: Option<u64>,
    /// Linear memory cap per instance; default `runtime.max_memory_mb`.
    pub max_memory_mb: Option<u64>,
    /// Failure mode per phase; unset phases follow `runtime.failure_mode`.
    pub failure_mode: FailureModes,
    /// Lowest level of this plugin's records that is published; default `logs.level`.
    pub log_level: Option<LogLevel>,
    /// Records per second this plugin may publish; default `logs.rate_limit_per_sec`.
    pub log_rate_limit_per_sec: Option<u32>,
    /// Values the plugin reads with `config-get`: `[plugin.NAME.config]`.
    /// Strings, numbers and booleans are accepted and passed as text.
    #[serde(deserialize_with = "scalar_map")]
    pub config: BTreeMap<String, String>,
}

fn scalar_map<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let raw = BTreeMap::<String, toml::Value>::deserialize(deserializer)?;
    raw.into_iter()
        .map(|(key, value)| {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "plugin config value `{key}` is a {}; use a string, number or boolean",
                        other.type_str()
                    )));
                }
            };
            Ok((key, text))
        })
        .collect()
}
