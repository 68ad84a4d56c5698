//! What a chain does when a plugin's phase call fails: the per plugin and
//! phase policy (timeout budget, retries, failure mode), its serde form for
//! a gateway's config file, and how the layers resolve.

use std::time::Duration;

use natsplug_protocol::Phase;
use serde::{Deserialize, Serialize};

/// The timeout of a phase call when nothing else is set: the whole budget,
/// retries included (as Envoy ext_proc's `message_timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);
/// Attempts after the first when nothing else is set.
pub const DEFAULT_MAX_RETRIES: u32 = 2;

/// What a failed phase call does to the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// Stop the exchange: the client is answered with an error status
    /// ([`CallError::status`](crate::CallError::status)).
    Closed,
    /// Go on as if the plugin were absent for this phase.
    Open,
}

impl FailureMode {
    /// The mode of `phase` when nothing is set: closed for the filters,
    /// open for logging (a log cannot change the answer).
    pub fn default_for(phase: Phase) -> FailureMode {
        match phase {
            Phase::Logging => FailureMode::Open,
            _ => FailureMode::Closed,
        }
    }
}

/// The resolved policy of one plugin in one phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhasePolicy {
    /// The budget of one phase call, every attempt included.
    pub timeout: Duration,
    /// Attempts after the first, for no responders and timeouts.
    pub max_retries: u32,
    /// What a failure does to the exchange.
    pub failure_mode: FailureMode,
}

/// Settings that may be left unset, to be filled from the layer below
/// (phase, then plugin, then chain defaults, then the built-in defaults).
///
/// In a config file: `timeout_ms = 150`, `max_retries = 1`,
/// `failure_mode = "open"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyOverrides {
    /// The phase call budget in milliseconds (default 200).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Attempts after the first (default 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// `closed` (default for the filters) or `open` (default for logging).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_mode: Option<FailureMode>,
}

impl PolicyOverrides {
    /// Nothing set.
    pub fn new() -> PolicyOverrides {
        PolicyOverrides::default()
    }

    /// Set the phase call budget.
    pub fn timeout(mut self, timeout: Duration) -> PolicyOverrides {
        self.timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Set the attempts after the first.
    pub fn max_retries(mut self, retries: u32) -> PolicyOverrides {
        self.max_retries = Some(retries);
        self
    }

    /// Set the failure mode.
    pub fn failure_mode(mut self, mode: FailureMode) -> PolicyOverrides {
        self.failure_mode = Some(mode);
        self
    }

    /// These settings, with what is unset taken from `below`.
    pub fn or(self, below: PolicyOverrides) -> PolicyOverrides {
        PolicyOverrides {
            timeout_ms: self.timeout_ms.or(below.timeout_ms),
            max_retries: self.max_retries.or(below.max_retries),
            failure_mode: self.failure_mode.or(below.failure_mode),
        }
    }

    /// The policy for `phase`, with the built-in defaults where unset.
    pub fn resolve(self, phase: Phase) -> PhasePolicy {
        PhasePolicy {
            timeout: self
                .timeout_ms
                .map_or(DEFAULT_TIMEOUT, Duration::from_millis),
            max_retries: self.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
            failure_mode: self.failure_mode.unwrap_or(FailureMode::default_for(phase)),
        }
    }
}

/// One plugin of a chain, by name, with its policy overrides: for all its
/// phases (the flattened fields), then per phase.
///
/// ```toml
/// name = "authz"
/// timeout_ms = 100
/// [response_filter]
/// failure_mode = "open"
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The plugin's name: its subjects are `{prefix}.{name}.{phase}`.
    pub name: String,
    /// The phase call budget in milliseconds, for every phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Attempts after the first, for every phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// The failure mode, for every phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_mode: Option<FailureMode>,
    /// Overrides for `request_filter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_filter: Option<PolicyOverrides>,
    /// Overrides for `response_filter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_filter: Option<PolicyOverrides>,
    /// Overrides for `response_body_filter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body_filter: Option<PolicyOverrides>,
    /// Overrides for `logging`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<PolicyOverrides>,
}

impl PluginConfig {
    /// Plugin `name` with the chain's defaults.
    pub fn new(name: impl Into<String>) -> PluginConfig {
        PluginConfig {
            name: name.into(),
            ..PluginConfig::default()
        }
    }

    /// Set the phase call budget of every phase.
    pub fn timeout(mut self, timeout: Duration) -> PluginConfig {
        self.timeout_ms = PolicyOverrides::new().timeout(timeout).timeout_ms;
        self
    }

    /// Set the attempts after the first, for every phase.
    pub fn max_retries(mut self, retries: u32) -> PluginConfig {
        self.max_retries = Some(retries);
        self
    }

    /// Set the failure mode of every phase.
    pub fn failure_mode(mut self, mode: FailureMode) -> PluginConfig {
        self.failure_mode = Some(mode);
        self
    }

    /// Set the overrides of one phase.
    pub fn phase(mut self, phase: Phase, overrides: PolicyOverrides) -> PluginConfig {
        *self.phase_slot(phase) = Some(overrides);
        self
    }

    fn phase_slot(&mut self, phase: Phase) -> &mut Option<PolicyOverrides> {
        match phase {
            Phase::RequestFilter => &mut self.request_filter,
            Phase::ResponseFilter => &mut self.response_filter,
            Phase::ResponseBodyFilter => &mut self.response_body_filter,
            Phase::Logging => &mut self.logging,
        }
    }

    fn phase_overrides(&self, phase: Phase) -> PolicyOverrides {
        match phase {
            Phase::RequestFilter => self.request_filter,
            Phase::ResponseFilter => self.response_filter,
            Phase::ResponseBodyFilter => self.response_body_filter,
            Phase::Logging => self.logging,
        }
        .unwrap_or_default()
    }

    /// The settings for all phases of this plugin.
    fn plugin_overrides(&self) -> PolicyOverrides {
        PolicyOverrides {
            timeout_ms: self.timeout_ms,
            max_retries: self.max_retries,
            failure_mode: self.failure_mode,
        }
    }

    /// The policy of `phase`: this plugin's phase overrides, then its own,
    /// then `defaults`, then the built-in defaults.
    pub fn policy(&self, phase: Phase, defaults: PolicyOverrides) -> PhasePolicy {
        self.phase_overrides(phase)
            .or(self.plugin_overrides())
            .or(defaults)
            .resolve(phase)
    }
}

/// How a chain learns which phases each plugin implements, from the hosts'
/// NATS service discovery (`$SRV.INFO`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Ask the hosts at all. Default true; without it every phase is
    /// called, and a phase not implemented meets no responders.
    pub enabled: bool,
    /// The hosts' service name (their `monitoring.service_name`). Default
    /// `natsplug`.
    pub service_name: String,
    /// How often the answer is refreshed, in milliseconds. Default 10000.
    pub refresh_ms: u64,
    /// How long one refresh waits for the hosts' answers, in milliseconds.
    /// Default 100; after the first answer, a quarter of it without a new
    /// one ends the wait.
    pub window_ms: u64,
    /// The least time between two refreshes prompted by no responders, in
    /// milliseconds. Default 500.
    pub min_gap_ms: u64,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            enabled: true,
            service_name: "natsplug".into(),
            refresh_ms: 10_000,
            window_ms: 100,
            min_gap_ms: 500,
        }
    }
}

/// A whole chain, as a gateway's config file holds it.
///
/// ```toml
/// prefix = "nylon.plugin"
/// [defaults]
/// timeout_ms = 200
/// [[plugins]]
/// name = "authz"
/// [[plugins]]
/// name = "access-logger"
/// logging = { timeout_ms = 1000 }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChainConfig {
    /// The hosts' subject prefix. Default `nylon.plugin`.
    pub prefix: String,
    /// Policy for every plugin and phase, below the plugins' own.
    pub defaults: PolicyOverrides,
    /// Learning which phases each plugin implements.
    pub discovery: DiscoveryConfig,
    /// `logging` calls in flight at once, across exchanges; an exchange
    /// finding none free is not logged (and counted). Default 1024.
    pub max_logging_in_flight: usize,
    /// The plugins, in chain order.
    pub plugins: Vec<PluginConfig>,
}

impl Default for ChainConfig {
    fn default() -> Self {
        ChainConfig {
            prefix: "nylon.plugin".into(),
            defaults: PolicyOverrides::default(),
            discovery: DiscoveryConfig::default(),
            max_logging_in_flight: 1024,
            plugins: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_then_plugin_then_chain_then_built_in() {
        let plugin = PluginConfig::new("p")
            .timeout(Duration::from_millis(50))
            .phase(
                Phase::ResponseFilter,
                PolicyOverrides::new().failure_mode(FailureMode::Open),
            );
        let defaults = PolicyOverrides::new()
            .max_retries(1)
            .timeout(Duration::from_millis(900));
        assert_eq!(
            plugin.policy(Phase::RequestFilter, defaults),
            PhasePolicy {
                timeout: Duration::from_millis(50),
                max_retries: 1,
                failure_mode: FailureMode::Closed,
            }
        );
        assert_eq!(
            plugin.policy(Phase::ResponseFilter, defaults).failure_mode,
            FailureMode::Open
        );
        assert_eq!(
            PluginConfig::new("q").policy(Phase::Logging, PolicyOverrides::new()),
            PhasePolicy {
                timeout: DEFAULT_TIMEOUT,
                max_retries: DEFAULT_MAX_RETRIES,
                failure_mode: FailureMode::Open,
            }
        );
    }

    #[test]
    fn a_config_file_reads_into_the_types() {
        let config: ChainConfig = toml::from_str(
            r#"
            prefix = "edge.plugins"
            [defaults]
            timeout_ms = 150
            [discovery]
            refresh_ms = 2000
            [[plugins]]
            name = "authz"
            failure_mode = "open"
            [plugins.request_filter]
            failure_mode = "closed"
            max_retries = 0
            [[plugins]]
            name = "access-logger"
            logging = { timeout_ms = 1000 }
            "#,
        )
        .unwrap();
        assert_eq!(config.prefix, "edge.plugins");
        assert_eq!(config.discovery.refresh_ms, 2000);
        assert!(config.discovery.enabled);
        assert_eq!(config.max_logging_in_flight, 1024);
        let authz = &config.plugins[0];
        assert_eq!(
            authz.policy(Phase::RequestFilter, config.defaults),
            PhasePolicy {
                timeout: Duration::from_millis(150),
                max_retries: 0,
                failure_mode: FailureMode::Closed,
            }
        );
        assert_eq!(
            authz
                .policy(Phase::ResponseFilter, config.defaults)
                .failure_mode,
            FailureMode::Open
        );
        assert_eq!(
            config.plugins[1]
                .policy(Phase::Logging, config.defaults)
                .timeout,
            Duration::from_millis(1000)
        );
        assert!(toml::from_str::<ChainConfig>("[[plugins]]\nname = \"a\"\ntimeout = 3").is_err());
    }
}
