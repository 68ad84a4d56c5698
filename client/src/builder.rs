//! Building a chain: the typed builder over [`ChainConfig`], its checks,
//! and the first look at which phases the plugins implement.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use natsplug_protocol::Phase;
use tokio::sync::Semaphore;

use crate::call::PhaseCaller;
use crate::chain::{Chain, ChainPlugin, Inner};
use crate::phases::PhaseDirectory;
use crate::policy::{ChainConfig, DiscoveryConfig, PluginConfig, PolicyOverrides};
use crate::stats::PluginCounters;

/// Why a chain could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The subject prefix is not dot-separated tokens of letters, digits,
    /// `-` and `_`.
    #[error("`{0}` is not a subject prefix (dot-separated tokens of letters, digits, `-`, `_`)")]
    InvalidPrefix(String),
    /// A plugin name is not letters, digits, `-` and `_`.
    #[error("`{0}` is not a plugin name (letters, digits, `-`, `_`)")]
    InvalidPluginName(String),
    /// A plugin is listed twice.
    #[error("plugin `{0}` is in the chain twice")]
    DuplicatePlugin(String),
    /// A phase call budget of zero.
    #[error("plugin `{plugin}` has a zero timeout in {phase}")]
    ZeroTimeout { plugin: String, phase: Phase },
    /// `max_logging_in_flight` is zero.
    #[error("max_logging_in_flight must be at least 1")]
    NoLoggingSlots,
}

impl ChainConfig {
    /// Check the settings a chain is built from, without connecting: the
    /// prefix, the plugin names (each once), the timeouts and the logging
    /// slots. [`ChainBuilder::build`] checks them first too.
    pub fn validate(&self) -> Result<(), BuildError> {
        if !valid_prefix(&self.prefix) {
            return Err(BuildError::InvalidPrefix(self.prefix.clone()));
        }
        if self.max_logging_in_flight == 0 {
            return Err(BuildError::NoLoggingSlots);
        }
        let mut seen = HashSet::new();
        for plugin in &self.plugins {
            if !valid_token(&plugin.name) {
                return Err(BuildError::InvalidPluginName(plugin.name.clone()));
            }
            if !seen.insert(plugin.name.as_str()) {
                return Err(BuildError::DuplicatePlugin(plugin.name.clone()));
            }
            for phase in Phase::ALL {
                if plugin.policy(phase, self.defaults).timeout == Duration::ZERO {
                    return Err(BuildError::ZeroTimeout {
                        plugin: plugin.name.clone(),
                        phase,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Builds a [`Chain`]: the subject prefix, default policies, discovery and
/// the plugins in order. Every setting has a default; a chain needs only
/// its plugins.
#[derive(Debug, Clone)]
pub struct ChainBuilder {
    client: async_nats::Client,
    config: ChainConfig,
}

impl Chain {
    /// A builder for a chain on `client` with the default settings.
    pub fn builder(client: async_nats::Client) -> ChainBuilder {
        ChainBuilder::from_config(client, ChainConfig::default())
    }
}

impl ChainBuilder {
    /// A builder starting from `config` (e.g. read from a config file).
    pub fn from_config(client: async_nats::Client, config: ChainConfig) -> ChainBuilder {
        ChainBuilder { client, config }
    }

    /// The hosts' subject prefix. Default `nylon.plugin`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> ChainBuilder {
        self.config.prefix = prefix.into();
        self
    }

    /// Policy for every plugin and phase, under the plugins' own.
    pub fn defaults(mut self, defaults: PolicyOverrides) -> ChainBuilder {
        self.config.defaults = defaults;
        self
    }

    /// How the phases plugins implement are learned.
    pub fn discovery(mut self, discovery: DiscoveryConfig) -> ChainBuilder {
        self.config.discovery = discovery;
        self
    }

    /// Exchanges whose `logging` calls may be in flight at once. Default 1024.
    pub fn max_logging_in_flight(mut self, exchanges: usize) -> ChainBuilder {
        self.config.max_logging_in_flight = exchanges;
        self
    }

    /// Append plugin `name` with the default policies.
    pub fn plugin(self, name: impl Into<String>) -> ChainBuilder {
        self.plugin_with(PluginConfig::new(name))
    }

    /// Append a plugin with its own policies.
    pub fn plugin_with(mut self, plugin: PluginConfig) -> ChainBuilder {
        self.config.plugins.push(plugin);
        self
    }

    /// Check the settings, ask the hosts which phases the plugins
    /// implement (waiting at most the discovery window), and start the
    /// refresh timer. Must run on a Tokio runtime, which the chain's
    /// background work (refreshes, `logging` calls) then uses.
    pub async fn build(self) -> Result<Chain, BuildError> {
        let config = self.config;
        config.validate()?;
        let caller = PhaseCaller::new(self.client.clone(), config.prefix.clone());
        let mut plugins = Vec::with_capacity(config.plugins.len());
        for plugin in &config.plugins {
            let policies = Phase::ALL.map(|phase| plugin.policy(phase, config.defaults));
            plugins.push(ChainPlugin {
                name: plugin.name.clone(),
                subjects: Phase::ALL
                    .map(|phase| async_nats::Subject::from(caller.subject(&plugin.name, phase))),
                policies,
                counters: PluginCounters::default(),
            });
        }
        let directory = Arc::new(PhaseDirectory::new(
            self.client.clone(),
            config.prefix.clone(),
            config.discovery.clone(),
        ));
        if directory.enabled() {
            // Listening first: nothing announced after the first answer
            // is missed.
            PhaseDirectory::keep_fresh(&directory).await;
            if let Err(error) = directory.refresh().await {
                tracing::warn!(%error, "could not ask the hosts which phases they serve");
            }
        }
        // Session ids only need to differ between the exchanges of a
        // process; starting from the clock keeps restarts apart too.
        let first_session = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Ok(Chain::from_inner(Inner {
            caller,
            directory,
            plugins,
            logging_permits: Arc::new(Semaphore::new(
                config.max_logging_in_flight.min(Semaphore::MAX_PERMITS),
            )),
            logging_dropped: AtomicU64::new(0),
            sessions: AtomicU64::new(first_session),
            runtime: tokio::runtime::Handle::current(),
        }))
    }
}

fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_prefix(prefix: &str) -> bool {
    prefix.split('.').all(valid_token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_prefixes_are_subject_tokens() {
        assert!(valid_prefix("nylon.plugin"));
        assert!(valid_prefix("edge"));
        assert!(!valid_prefix("nylon..plugin"));
        assert!(!valid_prefix("nylon.*"));
        assert!(!valid_prefix(""));
        assert!(valid_token("header-injector_2"));
        assert!(!valid_token("a.b"));
        assert!(!valid_token("a b"));
    }
}
