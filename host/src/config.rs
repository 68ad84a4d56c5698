//! All host configuration in one typed place: read from TOML, overridden by
//! command-line flags and environment variables, validated once at start-up.
//!
//! Every field has a default, so an empty file (or none) is a valid config.
//! The defaults are documented on each field and in the README.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::logs::LogLevel;
use crate::phase::Phase;

/// The whole host configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostConfig {
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// Subject prefix and queue group.
    pub subjects: SubjectsConfig,
    /// Where plugins come from.
    pub plugins: PluginsConfig,
    /// Worker threads, limits and instance reuse.
    pub runtime: RuntimeConfig,
    /// The compiled-artifact cache.
    pub cache: CacheConfig,
    /// Log records published to NATS.
    pub logs: LogsConfig,
    /// The HTTP monitoring endpoint and NATS service discovery.
    pub monitoring: MonitoringConfig,
    /// Per-plugin settings, keyed by plugin name: `[plugin.auth]`.
    pub plugin: BTreeMap<String, PluginSettings>,
}

/// NATS connection settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs. Empty (the default): use `nats://127.0.0.1:4222`, and
    /// `up` starts a local `nats-server` there when none is listening.
    pub urls: Vec<String>,
}

/// Subject layout: plugins are served on `{prefix}.{plugin}.{phase}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubjectsConfig {
    /// Default `nylon.plugin`.
    pub prefix: String,
    /// Queue group of every phase subscription. Default `natsplug`.
    pub queue_group: String,
}

impl Default for SubjectsConfig {
    fn default() -> Self {
        SubjectsConfig {
            prefix: "nylon.plugin".into(),
            queue_group: "natsplug".into(),
        }
    }
}

/// Plugin source settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// Directory of `.wasm` components; plugin name = file stem. Default `plugins`.
    pub dir: PathBuf,
    /// Reload plugins when files in `dir` change. Default true.
    pub watch: bool,
    /// Quiet time after the last write to a file before it is loaded, in
    /// milliseconds. A file renamed into the directory loads at once. Default 200.
    pub debounce_ms: u64,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dir: PathBuf::from("plugins"),
            watch: true,
            debounce_ms: 200,
        }
    }
}

/// How log records are published to NATS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogsConfig {
    /// Publish records to NATS. Default true.
    pub enabled: bool,
    /// Subject template; `{plugin}` and `{level}` are filled in. Default `logs.{plugin}.{level}`.
    pub subject: String,
    /// `json` (default) or `text`.
    pub format: LogFormat,
    /// Lowest level published (plugins can override). Default `info`.
    pub level: LogLevel,
    /// Records per second per plugin (plugins can override); 0 = no limit. Default 1000.
    pub rate_limit_per_sec: u32,
    /// Records held while waiting to be sent; the oldest are dropped when full. Default 10000.
    pub buffer: usize,
    /// Records sent per batch. Default 100.
    pub batch_size: usize,
    /// Longest a record waits before its batch is sent, in ms. Default 100.
    pub flush_interval_ms: u64,
    /// Publish to a JetStream stream and wait for acks, retrying, instead of
    /// plain publishes. Default false.
    pub durable: bool,
    /// With `durable`: the stream. Default `NATSPLUG_LOGS`.
    pub stream: String,
    /// With `durable`: create the stream when it does not exist. Default false.
    pub create_stream: bool,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            enabled: true,
            subject: "logs.{plugin}.{level}".into(),
            format: LogFormat::Json,
            level: LogLevel::Info,
            rate_limit_per_sec: 1000,
            buffer: 10_000,
            batch_size: 100,
            flush_interval_ms: 100,
            durable: false,
            stream: "NATSPLUG_LOGS".into(),
            create_stream: false,
        }
    }
}

/// Encoding of published log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per message.
    Json,
    /// `[ts] [LEVEL] message key=value ...`
    Text,
}

/// Operational endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitoringConfig {
    /// Address of the HTTP endpoint (`/healthz`, `/readyz`, `/metrics`);
    /// off unless set. Use `127.0.0.1:PORT` to keep it local.
    pub listen: Option<String>,
    /// Answer NATS service discovery (`$SRV.PING/INFO/STATS`). Default true.
    pub discovery: bool,
    /// Service name in discovery. Default `natsplug`.
    pub service_name: String,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        MonitoringConfig {
            listen: None,
            discovery: true,
            service_name: "natsplug".into(),
        }
    }
}

/// Compiled-artifact cache settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Keep compiled components on disk. Default true.
    pub enabled: bool,
    /// Where; default `$XDG_CACHE_HOME/natsplug` or `~/.cache/natsplug`.
    pub dir: Option<PathBuf>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            dir: None,
        }
    }
}

/// How plugin instances are kept between calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceMode {
    /// A warm instance per worker thread and plugin serves many calls, and
    /// is replaced after `max_calls_per_instance` calls, any trap, or a reload.
    Reuse,
    /// A new instance for every call: nothing survives between calls.
    Fresh,
}

/// Execution settings shared by all plugins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Threads that run plugin code. 0 (the default) = one per CPU core.
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
    /// Calls of one plugin running at once (on worker threads); the rest
    /// wait their turn, taken round-robin across plugins. 0 (the default) =
    /// as many as there are workers.
    pub max_concurrency_per_plugin: usize,
    /// What a request meets when its plugin or the host is at its
    /// in-flight cap: `wait` (default, up to `max_queue_wait_ms`) or
    /// `reject` (a 503 error reply at once).
    pub overload: OverloadPolicy,
    /// With `overload = "wait"`: the longest a request waits for a slot
    /// before it gets a 503. Default 1000.
    pub max_queue_wait_ms: u64,
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
            failure_mode: FailureModes::default(),
        }
    }
}

impl RuntimeConfig {
    /// The number of worker threads to start.
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

impl HostConfig {
    /// Read a TOML config file.
    pub fn from_file(path: &Path) -> anyhow::Result<HostConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        HostConfig::from_toml(&text).with_context(|| format!("in config file {}", path.display()))
    }

    /// Parse TOML text.
    pub fn from_toml(text: &str) -> anyhow::Result<HostConfig> {
        Ok(toml::from_str(text)?)
    }

    /// The NATS URLs to connect to (the local default when none is set).
    pub fn nats_urls(&self) -> Vec<String> {
        if self.nats.urls.is_empty() {
            vec![DEFAULT_NATS_URL.to_string()]
        } else {
            self.nats.urls.clone()
        }
    }

    /// The settings of plugin `name` (defaults when it has none).
    pub fn plugin_settings(&self, name: &str) -> PluginSettings {
        self.plugin.get(name).cloned().unwrap_or_default()
    }

    /// The in-flight cap of plugin `name`.
    pub fn plugin_max_in_flight(&self, name: &str) -> usize {
        self.plugin
            .get(name)
            .and_then(|s| s.max_in_flight)
            .unwrap_or(self.runtime.max_in_flight_per_plugin)
    }

    /// Check every value; the error says which key is wrong and how to fix it.
    pub fn validate(&self) -> anyhow::Result<()> {
        validate_subject("subjects.prefix", &self.subjects.prefix)?;
        if !valid_token(&self.subjects.queue_group) {
            bail!(
                "subjects.queue_group `{}` is not a valid queue group: use letters, digits, `-`, `_` or `.`, no spaces or wildcards",
                self.subjects.queue_group
            );
        }
        for url in &self.nats.urls {
            if url.trim().is_empty() {
                bail!("nats.urls contains an empty URL");
            }
        }
        let runtime = &self.runtime;
        let positive = [
            (
                "runtime.max_calls_per_instance",
                runtime.max_calls_per_instance,
            ),
            ("runtime.call_timeout_ms", runtime.call_timeout_ms),
            ("runtime.max_memory_mb", runtime.max_memory_mb),
            (
                "runtime.max_request_bytes",
                runtime.max_request_bytes as u64,
            ),
            ("runtime.max_in_flight", runtime.max_in_flight as u64),
            (
                "runtime.max_in_flight_per_plugin",
                runtime.max_in_flight_per_plugin as u64,
            ),
            ("runtime.pool_instances", u64::from(runtime.pool_instances)),
            ("runtime.max_queue_wait_ms", runtime.max_queue_wait_ms),
        ];
        for (key, value) in positive {
            if value == 0 {
                bail!("{key} must be greater than 0");
            }
        }
        if runtime.max_memory_mb > 4096 {
            bail!(
                "runtime.max_memory_mb is {}; a 32-bit wasm memory holds at most 4096 MiB",
                runtime.max_memory_mb
            );
        }
        let needed = runtime.worker_count() as u64;
        if u64::from(runtime.pool_instances) < needed {
            bail!(
                "runtime.pool_instances ({}) is below the worker count ({needed}): every worker needs at least one instance slot",
                runtime.pool_instances
            );
        }
        let logs = &self.logs;
        for (key, value) in [
            ("logs.buffer", logs.buffer as u64),
            ("logs.batch_size", logs.batch_size as u64),
            ("logs.flush_interval_ms", logs.flush_interval_ms),
        ] {
            if value == 0 {
                bail!("{key} must be greater than 0");
            }
        }
        let sample = logs
            .subject
            .replace("{plugin}", "p")
            .replace("{level}", "info");
        validate_subject("logs.subject", &sample).map_err(|_| {
            anyhow::anyhow!(
                "logs.subject `{}` is not a valid subject template: dot-separated tokens, with `{{plugin}}` and `{{level}}` as placeholders",
                logs.subject
            )
        })?;
        if logs.durable && !valid_token(&logs.stream) {
            bail!("logs.stream `{}` is not a valid stream name", logs.stream);
        }
        if let Some(listen) = &self.monitoring.listen
            && listen.parse::<std::net::SocketAddr>().is_err()
        {
            bail!(
                "monitoring.listen `{listen}` is not an address: use IP:PORT, e.g. 127.0.0.1:9464"
            );
        }
        if !self
            .monitoring
            .service_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
            || self.monitoring.service_name.is_empty()
        {
            bail!(
                "monitoring.service_name `{}` may hold only letters, digits, `-` and `_`",
                self.monitoring.service_name
            );
        }
        for (name, settings) in &self.plugin {
            validate_plugin_name(name).with_context(|| format!("in [plugin.{name}]"))?;
            for (key, value) in [
                ("max_in_flight", settings.max_in_flight.map(|v| v as u64)),
                (
                    "max_concurrency",
                    settings.max_concurrency.map(|v| v as u64),
                ),
                ("call_timeout_ms", settings.call_timeout_ms),
                ("max_memory_mb", settings.max_memory_mb),
            ] {
                if value == Some(0) {
                    bail!("plugin.{name}.{key} must be greater than 0");
                }
            }
            if let Some(memory) = settings.max_memory_mb
                && memory > runtime.max_memory_mb
            {
                bail!(
                    "plugin.{name}.max_memory_mb ({memory}) is above runtime.max_memory_mb ({}), the size of every instance slot; raise runtime.max_memory_mb",
                    runtime.max_memory_mb
                );
            }
        }
        Ok(())
    }
}

/// The NATS URL used when none is configured.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// Whether `token` can be one token of a NATS subject or a queue group name.
fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn validate_subject(key: &str, subject: &str) -> anyhow::Result<()> {
    let ok = !subject.is_empty()
        && subject
            .split('.')
            .all(|token| !token.is_empty() && valid_token(token));
    if !ok {
        bail!(
            "{key} `{subject}` is not a valid subject prefix: use dot-separated tokens of letters, digits, `-` or `_` (no wildcards, spaces or empty tokens)"
        );
    }
    Ok(())
}

/// Check that `name` can be a plugin name: a single NATS subject token.
pub fn validate_plugin_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if !ok {
        bail!(
            "plugin name `{name}` is not a valid NATS subject token: use letters, digits, `-` or `_` (rename the file)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_defaults() {
        let config = HostConfig::from_toml("").unwrap();
        assert_eq!(config, HostConfig::default());
        assert_eq!(config.subjects.prefix, "nylon.plugin");
        assert_eq!(
            config.nats_urls(),
            vec!["nats://127.0.0.1:4222".to_string()]
        );
        config.validate().unwrap();
    }

    #[test]
    fn full_config_parses() {
        let config = HostConfig::from_toml(
            r#"
            [nats]
            urls = ["nats://a:4222", "nats://b:4222"]
            [subjects]
            prefix = "edge.plugins"
            queue_group = "edge"
            [plugins]
            dir = "/srv/plugins"
            [runtime]
            workers = 3
            instance_mode = "fresh"
            call_timeout_ms = 250
            [plugin.auth]
            max_in_flight = 8
            [plugin.auth.failure_mode]
            request_filter = "open"
            [plugin.auth.config]
            token = "s3cret"
            retries = 3
            strict = true
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.runtime.instance_mode, InstanceMode::Fresh);
        assert_eq!(config.plugin_max_in_flight("auth"), 8);
        assert_eq!(config.plugin_max_in_flight("other"), 256);
        let auth = config.plugin_settings("auth");
        let runtime_modes = &config.runtime.failure_mode;
        assert_eq!(
            auth.failure_mode
                .resolve(runtime_modes, Phase::RequestFilter),
            FailureMode::Open
        );
        assert_eq!(
            auth.failure_mode
                .resolve(runtime_modes, Phase::ResponseFilter),
            FailureMode::Closed
        );
        assert_eq!(
            auth.failure_mode.resolve(runtime_modes, Phase::Logging),
            FailureMode::Open
        );
        assert_eq!(auth.config["retries"], "3");
        assert_eq!(auth.config["strict"], "true");
    }

    #[test]
    fn mistakes_are_named() {
        let error = HostConfig::from_toml("[runtime]\nworkerz = 2").unwrap_err();
        assert!(
            format!("{error:#}").contains("unknown field `workerz`"),
            "{error:#}"
        );

        let mut config = HostConfig::default();
        config.subjects.prefix = "a.*".into();
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.starts_with("subjects.prefix `a.*` is not a valid subject prefix"),
            "{error}"
        );

        let mut config = HostConfig::default();
        config.runtime.call_timeout_ms = 0;
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "runtime.call_timeout_ms must be greater than 0"
        );
        assert!(validate_plugin_name("bad name").is_err());
        assert!(validate_plugin_name("auth-v2").is_ok());
    }
}
