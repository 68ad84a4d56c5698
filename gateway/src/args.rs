//! The command line of `natsplug gateway` and `natsplug-gateway`: a config
//! file, and flags that override it or make a one-route gateway alone.

use std::path::PathBuf;

use clap::Args;
use natsplug::config::args::NatsArgs;
use natsplug_client::{FailureMode, PolicyOverrides};

use crate::config::{GatewayConfig, RouteConfig};

/// Examples shown by `--help`.
pub const EXAMPLES: &str = "Examples:
  natsplug gateway --upstream http://127.0.0.1:9000 --plugins authz,header-injector
  natsplug gateway --nats nats://10.0.0.5:4222 --listen 0.0.0.0:8080 --upstream http://app:9000 --plugins authz
  natsplug gateway --config gateway.toml --metrics-listen 127.0.0.1:9464
  RUST_LOG=natsplug_gateway::access=debug natsplug gateway --config gateway.toml   # one line per exchange";

/// Run an HTTP reverse proxy that puts plugin chains (served by `natsplug up`
/// hosts over NATS) in front of HTTP services.
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// Config file (TOML): routes, per-plugin policies, the `[nats]` section
    /// of `natsplug up` (credentials, TLS). Flags override its settings.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// NATS server URLs, comma-separated [default: nats://127.0.0.1:4222].
    #[arg(
        long = "nats",
        env = "NATSPLUG_NATS_URL",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub nats_urls: Vec<String>,
    /// Address to serve clients on (HTTP/1.1, and HTTP/2 with prior knowledge) [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// The service behind the gateway, http://HOST:PORT: one route for every
    /// host and path, through --plugins.
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// The plugin chain of the --upstream route, in order, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "NAMES",
        requires = "upstream"
    )]
    pub plugins: Vec<String>,
    /// Subject prefix of the hosts [default: nylon.plugin].
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Option<String>,
    /// Address to serve /metrics, /healthz and /readyz on.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Budget of one phase call, retries included, in ms, for every plugin
    /// without its own [default: 200].
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
    /// Retries of a phase call after no responders or a timeout [default: 2].
    #[arg(long, value_name = "N")]
    pub max_retries: Option<u32>,
    /// What a failed phase call does: `closed` answers the client with an
    /// error, `open` goes on without the plugin [default: closed; logging open].
    #[arg(long, value_name = "MODE", value_parser = parse_failure_mode)]
    pub failure_mode: Option<FailureMode>,
    /// Proxy threads [default: one per core].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// NATS credentials, TLS and reconnects: the flags and environment
    /// variables of `natsplug up`.
    #[command(flatten)]
    pub nats: Box<NatsArgs>,
}

fn parse_failure_mode(text: &str) -> Result<FailureMode, String> {
    match text {
        "closed" => Ok(FailureMode::Closed),
        "open" => Ok(FailureMode::Open),
        other => Err(format!(
            "`{other}` is not a failure mode: use `closed` or `open`"
        )),
    }
}

impl GatewayArgs {
    /// The configuration: the file's (if any), with the flags applied.
    pub fn config(&self) -> anyhow::Result<GatewayConfig> {
        let mut config = match &self.config {
            Some(path) => GatewayConfig::from_file(path)?,
            None => GatewayConfig::default(),
        };
        self.nats.apply(&mut config.nats);
        if !self.nats_urls.is_empty() {
            config.nats.urls = self.nats_urls.clone();
        }
        if let Some(listen) = &self.listen {
            config.listen = listen.clone();
        }
        if let Some(metrics) = &self.metrics_listen {
            config.metrics_listen = Some(metrics.clone());
        }
        if let Some(prefix) = &self.prefix {
            config.chain.prefix = prefix.clone();
        }
        if let Some(threads) = self.threads {
            config.threads = Some(threads);
        }
        config.chain.defaults = PolicyOverrides {
            timeout_ms: self.timeout_ms,
            max_retries: self.max_retries,
            failure_mode: self.failure_mode,
        }
        .or(config.chain.defaults);
        if let Some(upstream) = &self.upstream {
            config.routes.push(RouteConfig::catch_all(
                upstream.clone(),
                self.plugins.clone(),
            ));
        }
        Ok(config)
    }
}
