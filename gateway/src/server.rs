//! Starting the gateway: check the configuration, connect to NATS, build
//! each route's chain, serve the metrics, then hand the listener to
//! Pingora until a signal stops it.
//!
//! Two runtimes: the NATS connection, the chains' background work
//! (discovery refreshes, `logging` calls) and the metrics endpoint run on
//! a small one of their own; Pingora runs the proxy on its work-stealing
//! runtime, whose threads await phase calls that the NATS runtime carries.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use natsplug_client::{ChainBuilder, ChainConfig};
use pingora::apps::HttpServerOptions;
use pingora::proxy::ProxyServiceBuilder;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};

use pingora::services::background::background_service;

use crate::config::{GatewayConfig, parse_address};
use crate::drain::{Drain, InFlight, Signals};
use crate::metrics::{self, GatewayMetrics};
use crate::proxy::Gateway;
use crate::routes::{Route, RouteTable, normalized_prefix};
use crate::upstream::{Upstream, UpstreamPeer};

/// Run the gateway until SIGTERM (graceful: in-flight exchanges finish)
/// or SIGINT. Returns only on a start-up error; a clean stop exits the
/// process with status 0.
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

    let nats_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("natsplug-gateway-nats")
        .enable_all()
        .build()
        .context("starting the NATS runtime")?;
    let (client, routes, metrics) = nats_runtime.block_on(connect_and_build(&config))?;
    let route_count = routes.routes().len();

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
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    let in_flight = InFlight::default();
    let mut proxy = ProxyServiceBuilder::new(
        &server.configuration,
        Gateway::new(routes, metrics.clone(), in_flight.clone()),
    )
    .name("natsplug gateway")
    .server_options(options)
    .build();
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);
    server.add_service(background_service(
        "drain",
        Drain {
            in_flight,
            timeout: Duration::from_millis(config.shutdown_timeout_ms),
            client: client.clone(),
        },
    ));

    let announced = metrics.clone();
    nats_runtime.spawn_blocking(move || announce_when_listening(listen, route_count, &announced));
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            grace_period: Duration::from_millis(config.grace_period_ms),
            metrics,
        }),
    });

    // SIGINT, or the drain task did not get to end the process: what the
    // chains still send (logging calls) gets a moment to leave.
    nats_runtime.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
    });
    tracing::info!("natsplug gateway stopped");
    std::process::exit(0)
}

async fn connect_and_build(
    config: &GatewayConfig,
) -> anyhow::Result<(async_nats::Client, Arc<RouteTable>, Arc<GatewayMetrics>)> {
    let connection = natsplug::nats::connect_with(&config.nats).await?;
    let client = connection.client;
    let mut routes = Vec::with_capacity(config.routes.len());
    for route in &config.routes {
        let name = route.label();
        let upstream = UpstreamPeer::new(
            Upstream::parse(&route.upstream)?,
            Duration::from_millis(route.connect_timeout_ms),
            Duration::from_millis(route.read_timeout_ms),
        )
        .with_context(|| format!("route `{name}`"))?;
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
    Ok((client, routes, metrics))
}

/// Wait until the proxy accepts connections, then say so once on stdout
/// (the line scripts wait for) and mark the gateway ready.
fn announce_when_listening(listen: SocketAddr, routes: usize, metrics: &GatewayMetrics) {
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
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            tracing::error!(%listen, "the proxy listener did not open within 60 s");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    metrics.set_ready(true);
    tracing::info!(%listen, routes, "gateway listening");
    println!("natsplug gateway ready: listening on {listen}, {routes} route(s)");
}
