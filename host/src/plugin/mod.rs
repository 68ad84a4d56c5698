//! Plugins: a loaded plugin (a compiled, validated component ready to
//! instantiate, with its resolved limits), what it exports under its
//! contract version (`exports`), its live instances (`instance`), and the
//! loader that makes one from component bytes (`loader`).

mod exports;
mod instance;
mod loader;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use natsplug_protocol::Phase;
use sha2::{Digest, Sha256};

use crate::bindings::Contract;
use crate::config::{FailureMode, PluginSettings, RuntimeConfig, validate_plugin_name};
use crate::sandbox::PluginIdentity;

pub use exports::{Exports, ExportsV0_2, PreparedExports};
pub use instance::{PluginInstance, Scratch};
pub use loader::{PluginLoader, check_exports};

/// A compiled, validated plugin, ready to instantiate. Shared by every call
/// that started on this version; a reload makes a new one.
pub struct LoadedPlugin {
    /// Unique per load: instances are tied to the load that made them.
    pub id: u64,
    /// The plugin name (file stem); the `{plugin}` token of its subjects.
    pub name: String,
    /// SHA-256 of the component bytes, hex.
    pub content_hash: String,
    /// Size of the component in bytes.
    pub size: usize,
    /// The version the plugin reports, if any.
    pub version: Option<String>,
    /// The phases the plugin implements, in exchange order.
    pub phases: Vec<Phase>,
    /// Calls of this plugin allowed in flight.
    pub max_in_flight: usize,
    /// Limits and failure policy of this plugin's calls.
    pub limits: PluginLimits,
    /// Time spent compiling (or loading from the cache) the component.
    pub compile_time: Duration,
    /// Whether the compiled component came from the artifact cache.
    pub from_cache: bool,
    exports: PreparedExports,
    identity: Arc<PluginIdentity>,
}

/// The resolved limits of one plugin: its own settings over the host's.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginLimits {
    /// Deadline of one call.
    pub call_timeout: Duration,
    /// Linear memory cap per instance.
    pub max_memory_bytes: usize,
    /// Calls running at once on worker threads (0 = no cap).
    pub max_concurrency: usize,
    /// Failure mode per phase, indexed like [`Phase::ALL`].
    pub failure_modes: [FailureMode; 4],
}

impl PluginLimits {
    /// Resolve `settings` over the host-wide `runtime` defaults.
    pub fn resolve(runtime: &RuntimeConfig, settings: &PluginSettings) -> PluginLimits {
        let memory_mb = settings.max_memory_mb.unwrap_or(runtime.max_memory_mb);
        PluginLimits {
            call_timeout: Duration::from_millis(
                settings.call_timeout_ms.unwrap_or(runtime.call_timeout_ms),
            ),
            max_memory_bytes: usize::try_from(memory_mb * 1024 * 1024).unwrap_or(usize::MAX),
            max_concurrency: settings
                .max_concurrency
                .unwrap_or(runtime.max_concurrency_per_plugin),
            failure_modes: Phase::ALL
                .map(|phase| settings.failure_mode.resolve(&runtime.failure_mode, phase)),
        }
    }

    /// The failure mode of `phase`.
    pub fn failure_mode(&self, phase: Phase) -> FailureMode {
        self.failure_modes[phase as usize]
    }
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("content_hash", &self.content_hash)
            .field("version", &self.version)
            .field("phases", &self.phases)
            .finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    /// The contract version the plugin was built against.
    pub fn contract(&self) -> Contract {
        self.exports.contract()
    }

    /// Whether the plugin implements `phase`.
    pub fn implements(&self, phase: Phase) -> bool {
        self.phases.contains(&phase)
    }

    /// The short form of the content hash used in logs.
    pub fn short_hash(&self) -> &str {
        &self.content_hash[..12.min(self.content_hash.len())]
    }
}

/// The content hash of component bytes: SHA-256, hex.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The plugin name of a component file: its stem, checked as a subject token.
pub fn plugin_name_of(path: &Path) -> anyhow::Result<String> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| anyhow!("plugin file {} has no usable name", path.display()))?;
    validate_plugin_name(stem)?;
    Ok(stem.to_string())
}
