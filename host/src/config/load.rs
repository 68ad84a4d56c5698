//! Reading the configuration from TOML, and looking up what applies to one plugin.

use std::path::Path;

use anyhow::Context as _;

use super::HostConfig;
use super::runtime::PluginSettings;

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
        self.nats.urls_or_default()
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
}
