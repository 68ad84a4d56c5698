//! The gateway's configuration in one typed place: the listener, the NATS
//! connection (the host's own `[nats]` section), the chain settings shared
//! by every route, and the routes. Read from TOML, then checked as a whole.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context as _, bail};
use natsplug::config::NatsConfig;
use natsplug_client::{ChainConfig, DiscoveryConfig, PluginConfig, PolicyOverrides};
use serde::{Deserialize, Serialize};

use crate::upstream::Upstream;

/// The proxy listener when none is configured.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The subject prefix when none is configured (the host's default).
pub const DEFAULT_PREFIX: &str = "nylon.plugin";
/// The name of the route made by `--upstream`.
pub const DEFAULT_ROUTE: &str = "default";

/// Everything the gateway runs with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Where clients connect: HTTP/1.1, and HTTP/2 with prior knowledge.
    pub listen: String,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; none by default.
    pub metrics_listen: Option<String>,
    /// Proxy threads; default one per core.
    pub threads: Option<usize>,
    /// After SIGTERM, how long to keep accepting connections before the
    /// listener closes (for a load balancer to notice), in milliseconds.
    pub grace_period_ms: u64,
    /// After the grace period, the longest wait for exchanges in flight to
    /// finish, in milliseconds.
    pub shutdown_timeout_ms: u64,
    /// The NATS connection: the same section as `natsplug up`'s.
    pub nats: NatsConfig,
    /// Settings shared by the chains of every route.
    pub chain: ChainSettings,
    /// The routes, matched by host and longest path prefix.
    pub routes: Vec<RouteConfig>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: DEFAULT_LISTEN.into(),
            metrics_listen: None,
            threads: None,
            grace_period_ms: 0,
            shutdown_timeout_ms: 30_000,
            nats: NatsConfig::default(),
            chain: ChainSettings::default(),
            routes: Vec::new(),
        }
    }
}

/// The `[chain]` section: what every route's chain shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChainSettings {
    /// The hosts' subject prefix.
    pub prefix: String,
    /// Policy of every plugin and phase, under the plugins' own.
    pub defaults: PolicyOverrides,
    /// How the phases each plugin implements are learned.
    pub discovery: DiscoveryConfig,
    /// Exchanges whose `logging` calls may be in flight at once, per route.
    pub max_logging_in_flight: usize,
}

impl Default for ChainSettings {
    fn default() -> Self {
        ChainSettings {
            prefix: DEFAULT_PREFIX.into(),
            defaults: PolicyOverrides::default(),
            discovery: DiscoveryConfig::default(),
            max_logging_in_flight: 1024,
        }
    }
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The route's label in metrics and logs; default `{host or *}{path_prefix}`.
    #[serde(default)]
    pub name: Option<String>,
    /// The host the route serves (port ignored, any case); any host when unset.
    #[serde(default)]
    pub host: Option<String>,
    /// The path prefix, on segment boundaries; default `/`.
    #[serde(default = "root_prefix")]
    pub path_prefix: String,
    /// `http://host:port` or `https://host:port` of the service behind.
    pub upstream: String,
    /// The longest wait for a connection to the upstream (then 504), in ms.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// The longest silence from the upstream while reading its response
    /// (then 504, or a cut body once it started), in ms.
    #[serde(default = "default_read_timeout_ms")]
    pub read_timeout_ms: u64,
    /// The chain, in order: names, or tables with a name and policies.
    #[serde(default)]
    pub plugins: Vec<PluginEntry>,
}

fn root_prefix() -> String {
    "/".into()
}

fn default_connect_timeout_ms() -> u64 {
    2_000
}

fn default_read_timeout_ms() -> u64 {
    30_000
}

/// A plugin of a route's chain: `"authz"`, or
/// `{ name = "authz", timeout_ms = 100, failure_mode = "open" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PluginEntry {
    /// The plugin with the chain's default policies.
    Name(String),
    /// The plugin with policies of its own.
    Configured(PluginConfig),
}

impl PluginEntry {
    /// The entry as the caller library takes it.
    pub fn to_plugin_config(&self) -> PluginConfig {
        match self {
            PluginEntry::Name(name) => PluginConfig::new(name.clone()),
            PluginEntry::Configured(config) => config.clone(),
        }
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        match self {
            PluginEntry::Name(name) => name,
            PluginEntry::Configured(config) => &config.name,
        }
    }
}

impl RouteConfig {
    /// A route for every host and path to `upstream`, through `plugins`.
    pub fn catch_all(upstream: String, plugins: Vec<String>) -> RouteConfig {
        RouteConfig {
            name: Some(DEFAULT_ROUTE.into()),
            host: None,
            path_prefix: root_prefix(),
            upstream,
            connect_timeout_ms: default_connect_timeout_ms(),
            read_timeout_ms: default_read_timeout_ms(),
            plugins: plugins.into_iter().map(PluginEntry::Name).collect(),
        }
    }

    /// The route's label: its name, or `{host or *}{path_prefix}`.
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            format!(
                "{}{}",
                self.host.as_deref().unwrap_or("*"),
                self.path_prefix
            )
        })
    }
}

impl GatewayConfig {
    /// Read a TOML config file.
    pub fn from_file(path: &Path) -> anyhow::Result<GatewayConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the gateway config {}", path.display()))?;
        toml::from_str(&text).with_context(|| {
            format!(
                "{} is not a valid gateway config (see the README's gateway section)",
                path.display()
            )
        })
    }

    /// The settings of `route`'s chain, when it has plugins.
    pub fn chain_config(&self, route: &RouteConfig) -> Option<ChainConfig> {
        (!route.plugins.is_empty()).then(|| ChainConfig {
            prefix: self.chain.prefix.clone(),
            defaults: self.chain.defaults,
            discovery: self.chain.discovery.clone(),
            max_logging_in_flight: self.chain.max_logging_in_flight,
            plugins: route.plugins.iter().map(|p| p.to_plugin_config()).collect(),
        })
    }

    /// Check the whole configuration, naming the key at fault.
    pub fn validate(&self) -> anyhow::Result<()> {
        parse_address("listen", &self.listen)?;
        if let Some(metrics) = &self.metrics_listen {
            parse_address("metrics_listen", metrics)?;
        }
        if self.threads == Some(0) {
            bail!("threads must be at least 1");
        }
        if self.routes.is_empty() {
            bail!(
                "no routes: pass --upstream http://HOST:PORT (with --plugins a,b), or add [[routes]] to the config file"
            );
        }
        let mut labels = HashSet::new();
        let mut matches = HashSet::new();
        for route in &self.routes {
            let label = route.label();
            let at = format!("route `{label}`");
            if !labels.insert(label.clone()) {
                bail!("two routes are named `{label}`; give each a distinct name");
            }
            if !route.path_prefix.starts_with('/') {
                bail!(
                    "{at}: path_prefix `{}` must start with `/`",
                    route.path_prefix
                );
            }
            if let Some(host) = &route.host
                && (host.is_empty() || host.contains(['/', ' ']))
            {
                bail!("{at}: host `{host}` is not a host name");
            }
            let key = (
                route.host.as_deref().map(str::to_ascii_lowercase),
                crate::routes::normalized_prefix(&route.path_prefix).to_string(),
            );
            if !matches.insert(key) {
                bail!("{at} serves the same host and path prefix as another route; remove one");
            }
            Upstream::parse(&route.upstream).with_context(|| format!("{at}: upstream"))?;
            if let Some(chain) = self.chain_config(route) {
                chain
                    .validate()
                    .with_context(|| format!("{at}: its chain"))?;
            }
            if route.connect_timeout_ms == 0 || route.read_timeout_ms == 0 {
                bail!("{at}: connect_timeout_ms and read_timeout_ms must be at least 1");
            }
        }
        Ok(())
    }
}

/// `value` as a socket address, or an error naming `key`.
pub fn parse_address(key: &str, value: &str) -> anyhow::Result<SocketAddr> {
    value.parse().with_context(|| {
        format!("{key} `{value}` is not an address such as 127.0.0.1:8080 or [::1]:8080")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_plugins_read_from_toml() {
        let config: GatewayConfig = toml::from_str(
            r#"
            listen = "127.0.0.1:9080"
            [nats]
            urls = ["nats://10.0.0.1:4222"]
            [chain]
            defaults = { timeout_ms = 150 }
            [[routes]]
            host = "api.example.com"
            path_prefix = "/api"
            upstream = "http://127.0.0.1:9000"
            plugins = ["authz", { name = "header-injector", failure_mode = "open" }]
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.nats.urls, ["nats://10.0.0.1:4222"]);
        assert_eq!(config.chain.defaults.timeout_ms, Some(150));
        let route = &config.routes[0];
        assert_eq!(route.label(), "api.example.com/api");
        assert_eq!(route.plugins[0], PluginEntry::Name("authz".into()));
        assert_eq!(route.plugins[1].name(), "header-injector");
        assert_eq!(
            route.plugins[1].to_plugin_config().failure_mode,
            Some(natsplug_client::FailureMode::Open)
        );
    }

    #[test]
    fn mistakes_are_named() {
        let error = |text: &str| {
            let config: GatewayConfig = toml::from_str(text).unwrap();
            format!("{:#}", config.validate().unwrap_err())
        };
        assert!(error("").contains("no routes"));
        assert!(error("[[routes]]\nupstream = \"ftp://x\"").contains("route `*/`: upstream"));
        assert!(
            error("[[routes]]\nupstream = \"http://a:1\"\npath_prefix = \"api\"")
                .contains("must start with `/`")
        );
        assert!(
            error(
                "[[routes]]\nupstream = \"http://a:1\"\n[[routes]]\nname = \"b\"\nupstream = \"http://a:2\""
            )
            .contains("same host and path prefix")
        );
        assert!(
            error("listen = \"8080\"\n[[routes]]\nupstream = \"http://a:1\"")
                .contains("listen `8080`")
        );
        // A chain's own mistakes, found before NATS is reached.
        assert_eq!(
            error("[[routes]]\nupstream = \"http://a:1\"\nplugins = [\"authz\", \"a.b\"]"),
            "route `*/`: its chain: `a.b` is not a plugin name (letters, digits, `-`, `_`)"
        );
        assert!(
            error("[[routes]]\nupstream = \"http://a:1\"\nplugins = [\"authz\", \"authz\"]")
                .ends_with("plugin `authz` is in the chain twice")
        );
        assert!(
            error("[chain]\nprefix = \"a..b\"\n[[routes]]\nupstream = \"http://a:1\"\nplugins = [\"authz\"]")
                .ends_with("`a..b` is not a subject prefix (dot-separated tokens of letters, digits, `-`, `_`)")
        );
        let unknown =
            toml::from_str::<GatewayConfig>("[[routes]]\nupstream = \"http://a:1\"\nplugin = []");
        assert!(unknown.is_err());
    }
}
