//! Starting the gateway: check the configuration and resolve the
//! upstreams, then let Pingora run the proxy service, whose start connects
//! to NATS and builds each route's chain before the listener opens.
//!
//! The NATS connection lives on the proxy's own runtime: a phase call's
//! request and reply are handed between tasks of one thread pool, often
//! of one thread, instead of waking a thread of another runtime twice per
//! call. The chains' background work (discovery refreshes, `logging`
//! calls) and the metrics endpoint run there too.

use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_trait::async_trait;
use natsplug_client::{ChainBuilder, ChainConfig};
use pingora::apps::HttpServerOptions;
use pingora::proxy::{HttpProxy, ProxyServiceBuilder};
use pingora::server::configuration::ServerConf;
use pingora::server::{ListenFds, RunArgs, Server, ShutdownWatch};
use pingora::services::Service as PingoraService;
use pingora::services::background::background_service;
use pingora::services::listening::Service as ListeningService;

use crate::config::{GatewayConfig, parse_address};
use crate::drain::{Drain, InFlight, Signals};
use crate::metrics::{self, GatewayMetrics};
use crate::proxy::Gateway;
use crate::routes::{Route, RouteTable, normalized_prefix};
use crate::upstream::{Upstream, UpstreamPeer};

/// What start-up makes on the proxy runtime, before the listener opens.
#[derive(Debug)]
pub struct Running {
    /// The NATS connection every chain calls through.
    pub client: async_nats::Client,
    /// The routes and their chains.
    pub routes: Arc<RouteTable>,
    /// The counters.
    pub metrics: Arc<GatewayMetrics>,
}

/// Set once by start-up; read by the proxy, the signals and the drain.
pub type Started = Arc<OnceLock<Running>>;

/// Run the gateway until SIGTERM (graceful: in-flight exchanges finish)
/// or SIGINT. Returns only on a start-up error found before the proxy
/// runs; one found later (NATS unreachable, a chain that cannot be built)
/// is printed as `error: ...` and ends the process with status 1. A clean
/// stop exits with status 0.
pub fn run(config: GatewayConfig) -> anyhow::Result<std::convert::Infallible> {
    config.validate()?;
    let listen = parse_address("listen", &config.listen)?;
    if listen.port() == 0 {
        bail!("listen `{}` needs a port other than 0", config.listen);
    }
    // Pingora binds when it starts serving; binding here first turns a
    // port in use into a message instead of a failed start later.
    std::net::TcpListener::bind(listen)
        .with_context(|| format!("listening on {listen} (listen): is another process using it?"))?;
    let mut upstreams = Vec::with_capacity(config.routes.len());
    for route in &config.routes {
        let peer = UpstreamPeer::new(
            Upstream::parse(&route.upstream)?,
            Duration::from_millis(route.connect_timeout_ms),
            Duration::from_millis(route.read_timeout_ms),
        )
        .with_context(|| format!("route `{}`", route.label()))?;
        upstreams.push(peer);
    }

    let threads = config
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let server_conf = ServerConf {
        threads,
        work_stealing: true,
        // Pingora's runtimes live this long after the listener closes; the
        // drain task ends the process sooner, once nothing is in flight.
        grace_period_seconds: Some(config.shutdown_timeout_ms.div_ceil(1000) + 1),
        graceful_shutdown_timeout_seconds: Some(1),
        max_retries: 2,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, server_conf);
    server.bootstrap();

    let started: Started = Arc::default();
    let in_flight = InFlight::default();
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    let mut proxy = ProxyServiceBuilder::new(
        &server.configuration,
        Gateway::new(started.clone(), in_flight.clone()),
    )
    .name("natsplug gateway")
    .server_options(options)
    .build();
    proxy.add_tcp(&listen.to_string());
    let route_count = config.routes.len();
    let grace_period = Duration::from_millis(config.grace_period_ms);
    let shutdown_timeout = Duration::from_millis(config.shutdown_timeout_ms);
    server.add_service(GatewayService {
        proxy,
        config,
        upstreams,
        started: started.clone(),
    });
    server.add_service(background_service(
        "drain",
        Drain {
            in_flight,
            timeout: shutdown_timeout,
            started: started.clone(),
        },
    ));

    let announced = started.clone();
    std::thread::spawn(move || announce_when_listening(listen, route_count, &announced));
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            grace_period,
            started,
        }),
    });
    // SIGINT: the runtimes are gone; nothing more can be sent.
    tracing::info!("natsplug gateway stopped");
    std::process::exit(0)
}

/// The proxy service, with the start-up that must run on its runtime
/// before the listener opens.
struct GatewayService {
    proxy: ListeningService<HttpProxy<Gateway>>,
    config: GatewayConfig,
    upstreams: Vec<UpstreamPeer>,
    started: Started,
}

#[async_trait]
impl PingoraService for GatewayService {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let upstreams = std::mem::take(&mut self.upstreams);
        match connect_and_build(&self.config, upstreams).await {
            Ok(running) => {
                let _ = self.started.set(running);
            }
            Err(error) => {
                eprintln!("error: {error:#}");
                std::process::exit(1);
            }
        }
        self.proxy
            .start_service(fds, shutdown, listeners_per_fd)
            .await;
    }

    fn name(&self) -> &str {
        PingoraService::name(&self.proxy)
    }

    fn threads(&self) -> Option<usize> {
        PingoraService::threads(&self.proxy)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        PingoraService::listen_addresses(&self.proxy)
    }
}

async fn connect_and_build(
    config: &GatewayConfig,
    upstreams: Vec<UpstreamPeer>,
) -> anyhow::Result<Running> {
    let connection = natsplug::nats::connect_with(&config.nats).await?;
    let client = connection.client;
    let mut routes = Vec::with_capacity(config.routes.len());
    for (route, upstream) in config.routes.iter().zip(upstreams) {
        let name = route.label();
        let chain = if route.plugins.is_empty() {
            None
        } else {
            let chain_config = ChainConfig {
                prefix: config.chain.prefix.clone(),
                defaults: config.chain.defaults,
                discovery: config.chain.discovery.clone(),
                max_logging_in_flight: config.chain.max_logging_in_flight,
                plugins: route.plugins.iter().map(|p| p.to_plugin_config()).collect(),
            };
            Some(
                ChainBuilder::from_config(client.clone(), chain_config)
                    .build()
                    .await
                    .with_context(|| format!("route `{name}`: building its chain"))?,
            )
        };
        if let Some(chain) = &chain {
            for plugin in chain.plugins() {
                match chain.directory().phases(plugin) {
                    Some(phases) => tracing::info!(
                        route = %name,
                        plugin,
                        phases = ?phases.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                        "plugin served"
                    ),
                    None => tracing::warn!(
                        route = %name,
                        plugin,
                        "no host answered for this plugin yet; its phase calls will be tried and retried"
                    ),
                }
            }
        }
        routes.push(Route {
            name,
            host: route.host.as_deref().map(str::to_ascii_lowercase),
            prefix: normalized_prefix(&route.path_prefix).to_string(),
            upstream,
            chain,
        });
    }
    let routes = Arc::new(RouteTable::new(routes));
    let metrics = Arc::new(GatewayMetrics::new(&routes));
    if let Some(address) = &config.metrics_listen {
        metrics::serve(metrics.clone(), parse_address("metrics_listen", address)?).await?;
    }
    Ok(Running {
        client,
        routes,
        metrics,
    })
}

/// Wait until the proxy accepts connections, then say so once on stdout
/// (the line scripts wait for) and mark the gateway ready.
fn announce_when_listening(listen: SocketAddr, routes: usize, started: &Started) {
    let probe = if listen.ip().is_unspecified() {
        SocketAddr::new(
            if listen.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            },
            listen.port(),
        )
    } else {
        listen
    };
    // Start-up may wait for NATS (bounded by its connect timeout) and for
    // the discovery of every route's plugins.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(running) = started.get()
            && TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_ok()
        {
            running.metrics.set_ready(true);
            break;
        }
        if Instant::now() > deadline {
            tracing::error!(%listen, "the proxy listener did not open within 120 s");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::info!(%listen, routes, "gateway listening");
    println!("natsplug gateway ready: listening on {listen}, {routes} route(s)");
}
