//! All host configuration in one typed place: read from TOML, overridden by
//! command-line flags and environment variables, validated once at start-up.
//!
//! Every field has a default, so an empty file (or none) is a valid config.
//! The defaults are documented on each field and in the README.

#[cfg(feature = "args")]
pub mod args;
mod load;
mod logs;
mod nats;
mod runtime;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use self::logs::{LogFormat, LogLevel, LogsConfig};
pub use self::nats::{DEFAULT_NATS_URL, NatsAuth, NatsConfig, Secret, redact_url};
pub use self::runtime::{
    FailureMode, FailureModes, InstanceMode, OverloadPolicy, PluginSettings, RuntimeConfig,
};
pub use self::validate::validate_plugin_name;

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
    /// JetStream object store bucket to serve plugins from, beside the
    /// directory (which wins when both hold a plugin). Default none.
    pub bucket: Option<String>,
    /// Compare the served plugins with the bucket this often, in seconds,
    /// besides following its changes (0: only follow changes). Default 60.
    pub bucket_resync_secs: u64,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dir: PathBuf::from("plugins"),
            watch: true,
            debounce_ms: 200,
            bucket: None,
            bucket_resync_secs: 60,
        }
    }
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
