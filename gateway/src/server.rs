//! Starting the gateway: check the configuration and resolve the
//! upstreams, then let Pingora run the proxy services, whose start
//! connects to NATS and builds each route's chain before the listeners
//! open.
//!
//! Each proxy thread is a proxy service of its own, with a one-thread
//! runtime and a listener on the gateway's address (`SO_REUSEPORT`: the
//! kernel spreads the client connections over them). An exchange stays on
//! its thread, and so do its phase calls: each service opens a NATS
//! connection of its own on its runtime, so a call's request and reply are
//! written and read by the thread that waits for them, instead of being
//! handed to the thread of a shared connection and back. Pingora's
//! upstream connections are kept per service too. A small NATS runtime
//! holds the shared connection, with what is not on an exchange's path:
//! the chains' discovery refreshes and `logging` calls, and the metrics
//! endpoint.

use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_trait::async_trait;
use natsplug_client::ChainBuilder;
use pingora::apps::HttpServerOptions;
use pingora::proxy::{HttpProxy, ProxyServiceBuilder};
use pingora::server::configuration::ServerConf;
use pingora::server::{ListenFds, RunArgs, Server, ShutdownWatch};
use pingora::services::Service as PingoraService;
use pingora::services::background::background_service;
use pingora::services::listening::Service as ListeningService;

use pingora::listeners::TcpSocketOptions;
use tokio::runtime::Handle;
use tokio::sync::OnceCell;

use crate::config::{GatewayConfig, parse_address};
use crate::drain::{Drain, InFlight, Signals};
use crate::metrics::{self, GatewayMetrics};
use crate::proxy::Gateway;
use crate::routes::{Route, RouteTable, normalized_prefix};
use crate::upstream::{Upstream, UpstreamPeer};

/// What start-up makes, before the listener opens.
#[derive(Debug)]
pub struct Running {
    /// The shared NATS connection: the chains' own.
    pub client: async_nats::Client,
    /// The proxy threads' own connections, once opened.
    pub thread_connections: std::sync::Mutex<Vec<async_nats::Client>>,
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
    // Lives as long as the process; the exit does not wait for it.
    let nats_runtime: &'static tokio::runtime::Runtime = Box::leak(Box::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("natsplug-nats")
            .enable_all()
            .build()
            .context("starting the gateway's NATS runtime")?,
    ));
    let server_conf = ServerConf {
        // The background services' runtime; each proxy service has its own.
        threads: 1,
        // Work stealing only matters for the body filter, which hands a
        // proxy thread's runtime to another thread while it waits
        // (blocking.rs); a one-thread runtime keeps its tasks on its one
        // worker otherwise.
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
    let route_count = config.routes.len();
    let grace_period = Duration::from_millis(config.grace_period_ms);
    let shutdown_timeout = Duration::from_millis(config.shutdown_timeout_ms);
    let startup = Arc::new(Startup {
        done: OnceCell::new(),
        nats: nats_runtime.handle().clone(),
        config,
        upstreams: std::sync::Mutex::new(upstreams),
        started: started.clone(),
    });
    for _ in 0..threads {
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        let connection = Arc::new(OnceLock::new());
        let mut proxy = ProxyServiceBuilder::new(
            &server.configuration,
            Gateway::new(started.clone(), in_flight.clone(), connection.clone()),
        )
        .name("natsplug gateway")
        .server_options(options)
        .build();
        proxy.threads = Some(1);
        let mut socket = TcpSocketOptions::default();
        socket.so_reuseport = Some(true);
        proxy.add_tcp_with_settings(&listen.to_string(), socket);
        server.add_service(GatewayService {
            proxy,
            startup: startup.clone(),
            connection,
        });
    }
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

/// What the proxy services start from; the first to start does it.
struct Startup {
    done: OnceCell<()>,
    /// The runtime of the shared connection.
    nats: Handle,
    config: GatewayConfig,
    upstreams: std::sync::Mutex<Vec<UpstreamPeer>>,
    started: Started,
}

impl Startup {
    /// Connect, build the chains and serve the metrics on the NATS
    /// runtime, once; the services starting meanwhile wait for it. An
    /// error ends the process.
    async fn once(self: &Arc<Self>) {
        self.done
            .get_or_init(|| async {
                let this = self.clone();
                let built = self
                    .nats
                    .spawn(async move {
                        let upstreams = std::mem::take(
                            &mut *this
                                .upstreams
                                .lock()
                                .unwrap_or_else(|poisoned| poisoned.into_inner()),
                        );
                        connect_and_build(&this.config, upstreams).await
                    })
                    .await
                    .unwrap_or_else(|error| Err(anyhow::anyhow!("start-up stopped: {error}")));
                match built {
                    Ok(running) => {
                        let _ = self.started.set(running);
                    }
                    Err(error) => {
                        eprintln!("error: {error:#}");
                        std::process::exit(1);
                    }
                }
            })
            .await;
    }
}

/// One proxy thread: a proxy service on a one-thread runtime, whose start
/// waits for the gateway's start-up and opens the thread's own NATS
/// connection before its listener opens.
struct GatewayService {
    proxy: ListeningService<HttpProxy<Gateway>>,
    startup: Arc<Startup>,
    connection: Arc<OnceLock<async_nats::Client>>,
}

#[async_trait]
impl PingoraService for GatewayService {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        self.startup.once().await;
        // On this service's runtime: the connection's reads and writes
        // run on its thread.
        match natsplug::nats::connect_with(&self.startup.config.nats).await {
            Ok(connection) => {
                if let Some(running) = self.startup.started.get() {
                    running.metrics.nats_connections().inc();
                    running
                        .thread_connections
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .push(connection.client.clone());
                }
                let _ = self.connection.set(connection.client);
            }
            Err(error) => {
                eprintln!("error: {error:#}");
                std::process::exit(1);
            }
        }
        // Each service binds a socket of its own (`SO_REUSEPORT`). Pingora's
        // table of listening sockets, kept for a graceful upgrade, knows
        // one socket per address: the services would all take the first
        // one's and close it once each at the end.
        drop(fds);
        self.proxy
            .start_service(None, shutdown, listeners_per_fd)
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

/// Connect, build the chains and serve the metrics.
async fn connect_and_build(
    config: &GatewayConfig,
    upstreams: Vec<UpstreamPeer>,
) -> anyhow::Result<Running> {
    let connection = natsplug::nats::connect_with(&config.nats).await?;
    let client = connection.client;
    let mut routes = Vec::with_capacity(config.routes.len());
    for (route, upstream) in config.routes.iter().zip(upstreams) {
        let name = route.label();
        let chain = match config.chain_config(route) {
            None => None,
            Some(chain_config) => Some(
                ChainBuilder::from_config(client.clone(), chain_config)
                    .build()
                    .await
                    .with_context(|| format!("route `{name}`: building its chain"))?,
            ),
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
            request_body_warning: std::sync::Once::new(),
        });
    }
    let routes = Arc::new(RouteTable::new(routes));
    let metrics = Arc::new(GatewayMetrics::new(&routes));
    if let Some(address) = &config.metrics_listen {
        metrics::serve(metrics.clone(), parse_address("metrics_listen", address)?).await?;
    }
    Ok(Running {
        client,
        thread_connections: std::sync::Mutex::new(Vec::new()),
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
