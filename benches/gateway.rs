//! Gateway benchmark: HTTP load from `wrk` against one upstream, straight
//! and through `natsplug gateway`, all on one nats-server and one machine:
//!
//! - (a) `direct`: wrk to the upstream itself;
//! - (b) `gateway`: through a gateway with no plugins;
//! - (c) `injector`: through a gateway running the header-injector example
//!   in `request_filter`;
//! - (d) `chain`: through a gateway running header-injector, authz (wrk
//!   sends the token it is configured with) and access-logger;
//! - (e) `responder`: through a gateway whose one plugin, `noop`, no host
//!   serves: the NATS responder answers its `request_filter` calls with a
//!   constant `next`, so (e) − (b) is the gateway's side of a plugin hop
//!   (a raw round trip and the caller's own work) and (c) − (e) the
//!   host's;
//! - (n) `nginx`: through nginx as a reverse proxy, no plugins, as a
//!   reference for what a mature proxy reaches with the same upstream, the
//!   same wrk settings and as many worker processes as the gateway has
//!   proxy threads (upstream keepalive 64 over HTTP/1.1, no access log).
//!   Skipped, with a line saying so, when there is no nginx.
//!
//! Every cell runs at concurrency 1 (`wrk -t1 -c1`) and 64 (`wrk -t2
//! -c64`), after a short warm-up at the same concurrency; throughput, p50
//! and p99 come from wrk's `--latency` output, and the CPU time per request
//! of the upstream, the proxy (the gateway, or nginx's master and workers)
//! and the host processes from `/proc`, and wrk's own once it has ended.
//! From these the benchmark prints the ceiling the cores put on (b)/(a) at
//! concurrency 64: a request through a proxy costs what it costs straight
//! to the upstream plus the proxy's share, and the cores give only so much
//! CPU time a second. Around each measured gateway cell
//! the benchmark reads the gateway's `/metrics`, so that it can print the
//! gateway's own split at concurrency 1: the mean duration of each phase
//! call against the mean duration of the exchange. The same run
//! measures the raw NATS request/reply round trip at concurrency 1 (this
//! process's async-nats client, requests sent by a task on the client's
//! runtime, to a trivial responder process), so that the cost of a plugin
//! hop, (c) − (b) at p50 and concurrency 1, can be set against it; and the
//! same round trip sent from a thread outside the client's runtime, each
//! message crossing between threads twice (what a caller pays whose NATS
//! connection runs on another runtime than its requests); and the same
//! paced, each request 250 µs after the previous reply, so that the path
//! sits idle between requests as it does between the phase calls of a
//! gateway at concurrency 1 (an idle process and an idle core take longer
//! to wake than busy ones). The table and the goals are printed and
//! written as JSON to `target/bench/gateway.json`.
//!
//! Each part is its own process: nats-server, `natsplug up` serving the
//! example plugins, one `natsplug gateway` per gateway scenario (all
//! started before the first cell, idle when not measured), the NATS
//! responder and the upstream. The last two are this binary run again with
//! `GATEWAY_BENCH_ROLE` set, so neither shares a runtime or a thread with
//! the measuring process; the upstream is a hyper HTTP/1.1 server that
//! answers every request with 200 and a 13-byte body.
//!
//! `cargo bench -p natsplug-suite --bench gateway`; settings from the
//! environment:
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `GATEWAY_BENCH_SECONDS` | 10 | measured seconds per cell (whole seconds, as wrk takes them) |
//! | `GATEWAY_BENCH_WARMUP_SECONDS` | 2 | warm-up before each cell, 0 for none |
//! | `GATEWAY_BENCH_ROUNDS` | 1 | rounds; the scenario order rotates per round, the table shows medians |
//! | `GATEWAY_BENCH_NATS_REQUESTS` | 20000 | raw NATS round trips measured per round |
//! | `GATEWAY_BENCH_GATEWAY_THREADS` | the gateway's default | `--threads` of every gateway |
//! | `GATEWAY_BENCH_UPSTREAM_THREADS` | 1 | the upstream's threads |
//! | `WRK` | `wrk` | the wrk binary (`apt-get install wrk`) |
//! | `NATS_SERVER` | `target/ci-tools/bin/nats-server`, else `nats-server` on PATH | the server binary |
//! | `NGINX` | `/usr/sbin/nginx`, else `nginx` on PATH | the nginx binary of (n) (`apt-get install nginx-light`) |

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use natsplug_protocol as protocol;
use natsplug_suite::client::request;
use natsplug_suite::nats_server::free_port;
use natsplug_suite::process::cpu_time;
use natsplug_suite::{NatsServer, guests, natsplug_binary};

/// Selects what this binary runs as: unset for the benchmark itself.
const ROLE: &str = "GATEWAY_BENCH_ROLE";
/// The NATS server URL handed to the responder.
const ROLE_NATS_URL: &str = "GATEWAY_BENCH_NATS_URL";
const ECHO_SUBJECT: &str = "bench.gateway.echo";
const PREFIX: &str = "bench.gateway";
/// The plugin of scenario (e): no host serves it; the NATS responder
/// answers its `request_filter` subject with a constant `next` reply, so
/// its phase call costs a raw round trip and the gateway's own work.
const NOOP_PLUGIN: &str = "noop";
/// The bearer token authz is configured with and wrk sends.
const TOKEN: &str = "bench-token-5f3a";
/// What the upstream answers on every path but `/check`.
const BODY: &[u8] = b"hello, world\n";
/// The concurrency levels: wrk threads and connections.
const LEVELS: [(usize, usize); 2] = [(1, 1), (2, 64)];

/// One way to reach the upstream.
struct Scenario {
    key: &'static str,
    name: &'static str,
    via: Via,
}

/// What stands between wrk and the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Nothing: wrk straight to the upstream.
    Direct,
    /// A gateway with these `--plugins`.
    Gateway(&'static [&'static str]),
    /// nginx as a reverse proxy.
    Nginx,
}

impl Scenario {
    /// The plugins the scenario runs, none but through a gateway.
    fn plugins(&self) -> &'static [&'static str] {
        match self.via {
            Via::Gateway(plugins) => plugins,
            Via::Direct | Via::Nginx => &[],
        }
    }

    /// What the table says about the way through.
    fn description(&self) -> String {
        match self.via {
            Via::Direct => "straight to the upstream".to_string(),
            Via::Gateway([]) => "no plugins".to_string(),
            Via::Gateway([NOOP_PLUGIN]) => {
                "a trivial responder in request_filter, no host".to_string()
            }
            Via::Gateway(plugins) => plugins.join(" + "),
            Via::Nginx => "nginx as a reverse proxy, no plugins".to_string(),
        }
    }
}

const SCENARIOS: [Scenario; 6] = [
    Scenario {
        key: "a",
        name: "direct",
        via: Via::Direct,
    },
    Scenario {
        key: "b",
        name: "gateway",
        via: Via::Gateway(&[]),
    },
    Scenario {
        key: "c",
        name: "injector",
        via: Via::Gateway(&["header-injector"]),
    },
    Scenario {
        key: "d",
        name: "chain",
        via: Via::Gateway(&["header-injector", "authz", "access-logger"]),
    },
    Scenario {
        key: "e",
        name: "responder",
        via: Via::Gateway(&[NOOP_PLUGIN]),
    },
    Scenario {
        key: "n",
        name: "nginx",
        via: Via::Nginx,
    },
];

/// The phase each plugin of the scenarios is called in.
fn phase_of(plugin: &str) -> &'static str {
    if plugin == "access-logger" {
        "logging"
    } else {
        "request_filter"
    }
}

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("upstream") => return upstream(),
        Ok("nats-echo") => return nats_echo(),
        Ok(other) => panic!("unknown {ROLE} `{other}`"),
        Err(_) => {}
    }
    let settings = Settings::from_env();
    let wrk_version = wrk_version(&settings.wrk);
    if std::env::var_os("NATS_SERVER").is_none() {
        let ci_server =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-tools/bin/nats-server");
        if ci_server.exists() {
            // SAFETY: no other thread runs yet.
            unsafe { std::env::set_var("NATS_SERVER", ci_server) };
        }
    }
    let nginx_version = nginx_version(&settings.nginx);
    run(&settings, &wrk_version, nginx_version.as_deref());
}

/// What to run, from the environment.
struct Settings {
    seconds: u64,
    warmup_seconds: u64,
    rounds: usize,
    nats_requests: usize,
    gateway_threads: Option<usize>,
    upstream_threads: usize,
    wrk: PathBuf,
    nginx: PathBuf,
}

impl Settings {
    fn from_env() -> Settings {
        fn number<T: std::str::FromStr>(name: &str, default: T) -> T {
            match std::env::var(name) {
                Ok(text) => text
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name} must be a whole number, not `{text}`")),
                Err(_) => default,
            }
        }
        let settings = Settings {
            seconds: number("GATEWAY_BENCH_SECONDS", 10),
            warmup_seconds: number("GATEWAY_BENCH_WARMUP_SECONDS", 2),
            rounds: number("GATEWAY_BENCH_ROUNDS", 1),
            nats_requests: number("GATEWAY_BENCH_NATS_REQUESTS", 20_000),
            gateway_threads: std::env::var_os("GATEWAY_BENCH_GATEWAY_THREADS")
                .map(|_| number("GATEWAY_BENCH_GATEWAY_THREADS", 0)),
            upstream_threads: number("GATEWAY_BENCH_UPSTREAM_THREADS", 1),
            wrk: std::env::var_os("WRK").map_or_else(|| "wrk".into(), PathBuf::from),
            nginx: std::env::var_os("NGINX").map_or_else(
                || {
                    let debian = Path::new("/usr/sbin/nginx");
                    if debian.exists() {
                        debian.into()
                    } else {
                        "nginx".into()
                    }
                },
                PathBuf::from,
            ),
        };
        assert!(
            settings.seconds >= 1,
            "GATEWAY_BENCH_SECONDS must be at least 1"
        );
        assert!(
            settings.rounds >= 1,
            "GATEWAY_BENCH_ROUNDS must be at least 1"
        );
        assert!(
            settings.nats_requests >= 1,
            "GATEWAY_BENCH_NATS_REQUESTS must be at least 1"
        );
        assert!(
            settings.upstream_threads >= 1,
            "GATEWAY_BENCH_UPSTREAM_THREADS must be at least 1"
        );
        settings
    }
}

/// wrk's version line; stops the benchmark with the install hint when
/// there is no wrk.
fn wrk_version(wrk: &Path) -> String {
    match Command::new(wrk).arg("-v").output() {
        Ok(output) => {
            let text = String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr);
            text.lines().next().unwrap_or("wrk").trim().to_string()
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "error: the gateway benchmark needs wrk ({} not found): `apt-get install wrk`, or set WRK to its path",
                wrk.display()
            );
            std::process::exit(1);
        }
        Err(error) => panic!("running {} -v: {error}", wrk.display()),
    }
}

/// nginx's version line, or `None`, after a line saying that the reference
/// scenario is skipped, when there is no nginx.
fn nginx_version(nginx: &Path) -> Option<String> {
    match Command::new(nginx).arg("-v").stdin(Stdio::null()).output() {
        Ok(output) if output.status.success() => {
            let text = String::from_utf8_lossy(&output.stderr).into_owned()
                + &String::from_utf8_lossy(&output.stdout);
            let line = text.lines().next().unwrap_or("nginx").trim();
            Some(line.trim_start_matches("nginx version: ").to_string())
        }
        Ok(output) => {
            eprintln!(
                "the reference (n) nginx is skipped: `{} -v` failed ({}); install nginx with `apt-get install -y nginx-light`, or set NGINX to its path",
                nginx.display(),
                output.status
            );
            None
        }
        Err(error) => {
            let why = if error.kind() == std::io::ErrorKind::NotFound {
                "not found".to_string()
            } else {
                error.to_string()
            };
            eprintln!(
                "the reference (n) nginx is skipped: {} {why}; install it with `apt-get install -y nginx-light`, or set NGINX to its path",
                nginx.display()
            );
            None
        }
    }
}

// ---------------------------------------------------------------------------
// The upstream and the NATS responder (this binary in another role).

/// Connections the upstream has accepted.
static ACCEPTED: AtomicU64 = AtomicU64::new(0);

/// Serve HTTP/1.1 on a free local port until killed: 200 with [`BODY`];
/// on `/check` the `x-plugin` request header it received, so the benchmark
/// can see the plugin's change arrive; on `/connections` the number of
/// connections accepted so far, so it can see whether the gateway reuses
/// its upstream connections.
fn upstream() {
    let threads: usize = std::env::var("GATEWAY_BENCH_UPSTREAM_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    // One thread by default: the upstream stands for a fast service and
    // leaves the second core to wrk, the gateway, the host and the server.
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    }
    .enable_all()
    .build()
    .expect("the upstream's runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the upstream");
        let address = listener.local_addr().expect("the upstream's address");
        println!("upstream listening on {address}");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            ACCEPTED.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(stream),
                        hyper::service::service_fn(answer),
                    )
                    .await;
            });
        }
    });
}

async fn answer(
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    let body = match request.uri().path() {
        "/check" => {
            let plugin = request
                .headers()
                .get("x-plugin")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            bytes::Bytes::from(format!("x-plugin={plugin}"))
        }
        "/connections" => bytes::Bytes::from(ACCEPTED.load(Ordering::Relaxed).to_string()),
        _ => bytes::Bytes::from_static(BODY),
    };
    let response = hyper::Response::builder()
        .header("content-type", "text/plain")
        .body(http_body_util::Full::new(body))
        .expect("a valid response");
    Ok(response)
}

/// Answer every request on [`ECHO_SUBJECT`] with its payload, every
/// `request_filter` call of [`NOOP_PLUGIN`] with `next`, and the hosts'
/// discovery with that one endpoint, until killed.
fn nats_echo() {
    let url = std::env::var(ROLE_NATS_URL).expect("the NATS URL");
    // As the end-to-end benchmark's echo responder: two async threads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the responder's runtime");
    runtime.block_on(async {
        let client = async_nats::connect(&url).await.expect("connecting");
        let echo = client.subscribe(ECHO_SUBJECT).await.expect("subscribing");
        let noop_subject = format!("{PREFIX}.{NOOP_PLUGIN}.request_filter");
        let noop = client
            .subscribe(noop_subject.clone())
            .await
            .expect("subscribing");
        // As a host would, it says in the hosts' service discovery which
        // phases it serves, so the gateway calls no other.
        let service = natsplug_client::DiscoveryConfig::default().service_name;
        let info = client
            .subscribe(format!("$SRV.INFO.{service}"))
            .await
            .expect("subscribing");
        let endpoints = bytes::Bytes::from(format!(
            r#"{{"endpoints":[{{"subject":"{noop_subject}"}}]}}"#
        ));
        client.flush().await.expect("flushing");
        println!("ready");
        // A `next` reply without a request id, which a caller accepts for
        // any request.
        let next = bytes::Bytes::from(protocol::encode_reply(&protocol::PhaseReply::next("")));
        let mut messages = futures::stream::select_all([
            echo.map(|message| (message, None)).boxed(),
            noop.map(|message| (message, Some(next.clone()))).boxed(),
            info.map(|message| (message, Some(endpoints.clone())))
                .boxed(),
        ]);
        while let Some((message, answer)) = messages.next().await {
            if let Some(reply) = message.reply {
                let _ = client
                    .publish(reply, answer.unwrap_or(message.payload))
                    .await;
            }
        }
    });
}

// ---------------------------------------------------------------------------
// Child processes.

/// A child process, killed when dropped, with its stderr in a file.
struct Process {
    name: String,
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Process {
    /// Spawn `command` with stdout discarded, without waiting for anything.
    fn spawn(name: &str, mut command: Command) -> Process {
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("the log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Process {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// Spawn `command` and wait (at most a minute) for its first stdout
    /// line, which must start with `ready`.
    fn start(name: &str, mut command: Command, ready: &str) -> (Process, String) {
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.reopen().expect("the log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stdout = child.stdout.take().expect("a piped stdout");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = sender.send(lines.next().and_then(Result::ok));
            // Keep draining stdout so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let mut process = Process {
            name: name.to_string(),
            child,
            log,
        };
        match receiver.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(line)) if line.starts_with(ready) => (process, line),
            outcome => {
                let said = match outcome {
                    Ok(Some(line)) => format!("printed `{line}` instead of its ready line"),
                    Ok(None) => "exited before it was ready".to_string(),
                    Err(_) => "was not ready within 60 s".to_string(),
                };
                let _ = process.child.kill();
                let status = process.child.wait().ok();
                panic!(
                    "{name} {said} (exit: {status:?}); its stderr:\n{}",
                    process.log()
                );
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process wrote to stderr so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// SIGTERM, then wait up to `patience`: the exit status and how long
    /// it took, or `None` when it had to be killed.
    fn terminate(&mut self, patience: Duration) -> Option<(ExitStatus, Duration)> {
        let started = Instant::now();
        // SAFETY: kill has no memory-safety preconditions; the pid is our
        // own child's, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        while started.elapsed() < patience {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some((status, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx as a reverse proxy to the upstream, run from a configuration in
/// its own temporary directory; stopped (SIGTERM, then SIGKILL to its
/// process group) when dropped.
struct Nginx {
    master: Process,
    address: SocketAddr,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Start `binary` with `workers` worker processes on a free port, in
    /// the foreground (`daemon off`) as a child of this process, and wait
    /// (at most 30 s) until it accepts connections with every worker up.
    fn start(binary: &Path, upstream: SocketAddr, workers: usize) -> Nginx {
        let dir = tempfile::tempdir().expect("a directory for nginx");
        // Workers started by root run as another user and must reach the
        // temporary paths nginx creates here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("opening nginx's directory");
        let address = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let path = |name: &str| dir.path().join(name).display().to_string();
        let config = format!(
            "daemon off;
master_process on;
worker_processes {workers};
pid {pid};
error_log {error_log} warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    client_body_temp_path {body};
    proxy_temp_path {proxy};
    fastcgi_temp_path {fastcgi};
    uwsgi_temp_path {uwsgi};
    scgi_temp_path {scgi};

    upstream bench_upstream {{
        server {upstream};
        keepalive 64;
    }}

    server {{
        listen {address};
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
",
            pid = path("nginx.pid"),
            error_log = path("error.log"),
            body = path("client_body"),
            proxy = path("proxy"),
            fastcgi = path("fastcgi"),
            uwsgi = path("uwsgi"),
            scgi = path("scgi"),
        );
        let config_path = dir.path().join("nginx.conf");
        std::fs::write(&config_path, config).expect("writing nginx.conf");
        let mut command = Command::new(binary);
        command
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&config_path)
            // Its own process group, so that the workers can be stopped
            // with the master however it ends.
            .process_group(0);
        let mut nginx = Nginx {
            master: Process::spawn("nginx", command),
            address,
            dir,
        };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = nginx.master.child.try_wait() {
                panic!(
                    "nginx exited at start ({status}); its stderr:\n{}\nits error log:\n{}",
                    nginx.master.log(),
                    nginx.error_log()
                );
            }
            let accepts =
                std::net::TcpStream::connect_timeout(&address, Duration::from_millis(100)).is_ok();
            if accepts && children_of(nginx.master.pid()).len() >= workers {
                return nginx;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "nginx did not accept connections on {address} with {workers} workers within 30 s; its stderr:\n{}\nits error log:\n{}",
                nginx.master.log(),
                nginx.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The master and its workers.
    fn pids(&self) -> Vec<u32> {
        let master = self.master.pid();
        std::iter::once(master).chain(children_of(master)).collect()
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// SIGTERM (nginx's fast shutdown) and wait up to `patience`; SIGKILL
    /// to the whole process group when that is not enough.
    fn stop(&mut self, patience: Duration) -> Option<(ExitStatus, Duration)> {
        if let Ok(Some(status)) = self.master.child.try_wait() {
            return Some((status, Duration::ZERO));
        }
        let outcome = self.master.terminate(patience);
        if outcome.is_none() {
            // SAFETY: kill has no memory-safety preconditions; the group is
            // the one this process started nginx in, led by its own child.
            unsafe { libc::kill(-(self.master.pid() as libc::pid_t), libc::SIGKILL) };
        }
        outcome
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let child: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            // After the command name in parentheses: the state, then the
            // parent's pid.
            let parent: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (parent == pid).then_some(child)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// wrk.

/// What one wrk run reported.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct WrkReport {
    requests: u64,
    requests_per_second: f64,
    /// Latency percentile (50, 75, 90, 99) to microseconds.
    percentiles_us: BTreeMap<u32, f64>,
    non_2xx: u64,
    socket_errors: u64,
}

/// Run wrk with `threads` threads and `connections` connections against
/// `url` for `seconds`.
fn wrk(wrk: &Path, url: &str, (threads, connections): (usize, usize), seconds: u64) -> WrkReport {
    let output = Command::new(wrk)
        .args([
            &format!("-t{threads}"),
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-H",
            &format!("Authorization: Bearer {TOKEN}"),
            url,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", wrk.display()));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "wrk failed ({}):\n{text}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    parse_wrk(&text).unwrap_or_else(|| panic!("unexpected wrk output:\n{text}"))
}

/// Read wrk's `--latency` output.
fn parse_wrk(text: &str) -> Option<WrkReport> {
    let mut report = WrkReport::default();
    let mut in_distribution = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            if let Some((percent, value)) = line.split_once('%') {
                let percent: f64 = percent.trim().parse().ok()?;
                report
                    .percentiles_us
                    .insert(percent as u32, duration_us(value.trim())?);
                continue;
            }
            in_distribution = false;
        }
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            report.requests_per_second = rest.trim().parse().ok()?;
        } else if let Some((count, _)) = line.split_once(" requests in ") {
            report.requests = count.trim().parse().ok()?;
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            report.non_2xx = rest.trim().parse().ok()?;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // `connect 0, read 0, write 0, timeout 0`
            report.socket_errors = rest
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        }
    }
    let complete = report.requests > 0
        && report.requests_per_second > 0.0
        && report.percentiles_us.contains_key(&50)
        && report.percentiles_us.contains_key(&99);
    complete.then_some(report)
}

/// `49.00us`, `1.23ms`, `2.00s`, `1.00m` in microseconds.
fn duration_us(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return None,
    };
    Some(number * scale)
}

// ---------------------------------------------------------------------------
// Checks through plain HTTP.

/// `GET path` with `headers` from `address`: the status and the body.
fn http_get(address: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to {address}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .expect("sending a request");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response from {address}: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Connections the upstream at `address` has accepted so far (this
/// request's own included).
fn upstream_accepted(address: SocketAddr) -> u64 {
    let (status, body) = http_get(address, "/connections", &[]);
    assert_eq!(
        status, 200,
        "the upstream's GET /connections answered {body}"
    );
    body.trim().parse().expect("a count")
}

/// Each scenario answers as it should before anything is measured: 200
/// with the upstream's body, the header injector's header reaching the
/// upstream where it runs, and authz refusing a request without the token.
/// Returns the requests sent per scenario.
fn check(targets: &[Target]) -> Vec<u64> {
    let bearer = format!("Bearer {TOKEN}");
    let with_token = [("Authorization", bearer.as_str())];
    targets
        .iter()
        .map(|target| {
            let scenario = target.scenario;
            let what = format!("({}) {}", scenario.key, scenario.name);
            let (status, body) = http_get(target.address, "/", &with_token);
            assert_eq!(
                (status, body.as_bytes()),
                (200, BODY),
                "{what}: GET / answered"
            );
            let injects = scenario.plugins().contains(&"header-injector");
            let (status, body) = http_get(target.address, "/check", &with_token);
            let expected = if injects {
                "x-plugin=header-injector"
            } else {
                "x-plugin="
            };
            assert_eq!(
                (status, body.as_str()),
                (200, expected),
                "{what}: GET /check answered"
            );
            let mut sent = 2;
            if scenario.plugins().contains(&"authz") {
                let (status, body) = http_get(target.address, "/", &[]);
                assert_eq!(status, 401, "{what}: GET / without a token answered {body}");
                sent += 1;
            }
            sent
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The gateway's metrics.

/// The gateway's `/metrics` text.
fn metrics(address: SocketAddr) -> Option<String> {
    let (status, body) = http_get(address, "/metrics", &[]);
    (status == 200).then_some(body)
}

/// The sum of `metric` over the series whose labels include every pair of
/// `labels`.
fn metric_sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(metric)?;
            let (set, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once('}')?,
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            let matches = labels.iter().all(|(name, value)| {
                set.split(',')
                    .any(|pair| pair == format!("{name}=\"{value}\""))
            });
            matches
                .then(|| value.split_whitespace().next()?.parse::<f64>().ok())
                .flatten()
        })
        .fold(0.0, |sum, value| sum + value)
}

/// The values of label `label` of `metric`'s series matching `labels`,
/// each with its sum.
fn metric_by_label(
    text: &str,
    metric: &str,
    labels: &[(&str, &str)],
    label: &str,
) -> BTreeMap<String, f64> {
    let prefix = format!("{label}=\"");
    let mut values: BTreeMap<String, f64> = BTreeMap::new();
    for line in text.lines() {
        let Some(set) = line
            .strip_prefix(metric)
            .and_then(|rest| rest.strip_prefix('{'))
            .and_then(|rest| rest.split_once('}'))
            .map(|(set, _)| set)
        else {
            continue;
        };
        let Some(value) = set
            .split(',')
            .find_map(|pair| pair.strip_prefix(prefix.as_str())?.strip_suffix('"'))
        else {
            continue;
        };
        *values.entry(value.to_string()).or_insert(0.0) += metric_sum(line, metric, labels);
    }
    values
}

/// What a gateway counted, set against the requests it was sent.
#[derive(Debug, Clone, serde::Serialize)]
struct Counted {
    scenario: &'static str,
    requests_sent: u64,
    requests_total: f64,
    /// `natsplug_gateway_requests_total` by status.
    requests_by_status: BTreeMap<String, f64>,
    /// (plugin, phase, calls).
    phase_calls: Vec<(String, String, f64)>,
    /// `natsplug_gateway_phase_failures_total`, every series.
    phase_failures: f64,
    upstream_failures: f64,
}

// ---------------------------------------------------------------------------
// The raw NATS round trip.

#[derive(Debug, Clone, Copy, serde::Serialize)]
struct RoundTrip {
    requests: usize,
    p50_us: f64,
    p99_us: f64,
}

/// How long the paced round trip leaves the path idle between a reply
/// and the next request: about what passes between two phase calls of a
/// gateway at concurrency 1 (the rest of its exchange, the upstream's
/// part included).
const PACED_GAP: Duration = Duration::from_micros(250);

/// `count` requests one after the other to the echo responder, each sent
/// `gap` after the previous reply when one is given.
async fn nats_round_trip(
    client: &async_nats::Client,
    count: usize,
    gap: Option<Duration>,
) -> RoundTrip {
    let payload = phase_request();
    for _ in 0..1000.min(count) {
        client
            .request(ECHO_SUBJECT, payload.clone())
            .await
            .expect("an echo");
    }
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        if let Some(gap) = gap {
            // A blocking sleep, on purpose: the thread (and with it the
            // path to the responder) sits idle, as a timer of the runtime,
            // a millisecond at the least, would not let it.
            std::thread::sleep(gap);
        }
        let sent = Instant::now();
        client
            .request(ECHO_SUBJECT, payload.clone())
            .await
            .expect("an echo");
        samples.push(sent.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    let percentile =
        |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)] as f64 / 1e3;
    RoundTrip {
        requests: count,
        p50_us: percentile(0.50),
        p99_us: percentile(0.99),
    }
}

/// A request_filter phase request like the gateway's for wrk's request.
fn phase_request() -> bytes::Bytes {
    let mut phase = request(
        "request_filter",
        "0b8f5e1c-4d7e-4a8e-9d55-2f1c3a7d9e01",
        "GET",
        "/",
    );
    phase.request.host = Some("127.0.0.1:8080".into());
    phase.request.client_ip = Some("127.0.0.1".into());
    phase.request.headers = [
        ("host", "127.0.0.1:8080"),
        ("authorization", "Bearer bench-token-5f3a"),
        ("x-forwarded-for", "127.0.0.1"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "127.0.0.1:8080"),
        ("forwarded", "for=127.0.0.1;host=127.0.0.1:8080;proto=http"),
        ("via", "1.1 natsplug"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ]
    .iter()
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .collect();
    protocol::encode_request(&phase).into()
}

// ---------------------------------------------------------------------------
// The run.

/// Where one scenario sends its load.
struct Target {
    scenario: &'static Scenario,
    address: SocketAddr,
    /// The gateway and its metrics listener (for (b), (c) and (d)).
    gateway: Option<(Process, SocketAddr)>,
    /// nginx (for (n)).
    nginx: Option<Nginx>,
}

impl Target {
    /// The processes of the proxy between wrk and the upstream, if any.
    fn proxy_pids(&self) -> Vec<u32> {
        match (&self.gateway, &self.nginx) {
            (Some((gateway, _)), _) => vec![gateway.pid()],
            (None, Some(nginx)) => nginx.pids(),
            (None, None) => Vec::new(),
        }
    }
}

/// A gateway's own account of one measured cell, from its `/metrics`
/// before and after: sums and counts of its duration histograms.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct Split {
    /// `natsplug_gateway_request_duration_seconds`: exchanges counted.
    exchanges: f64,
    exchange_seconds: f64,
    exchange_mean_us: f64,
    /// `natsplug_gateway_phase_duration_seconds`, per plugin and phase.
    phases: Vec<PhaseTime>,
}

#[derive(Debug, Clone, serde::Serialize)]
struct PhaseTime {
    plugin: String,
    phase: String,
    calls: f64,
    seconds: f64,
    mean_us: f64,
}

/// The sums and counts of a gateway's duration histograms, so far.
fn split_snapshot(text: &str, plugins: &[&str]) -> Split {
    let route = [("route", "default")];
    let mut split = Split {
        exchanges: metric_sum(
            text,
            "natsplug_gateway_request_duration_seconds_count",
            &route,
        ),
        exchange_seconds: metric_sum(
            text,
            "natsplug_gateway_request_duration_seconds_sum",
            &route,
        ),
        exchange_mean_us: 0.0,
        phases: plugins
            .iter()
            .map(|plugin| {
                let phase = phase_of(plugin);
                let labels = [("route", "default"), ("plugin", plugin), ("phase", phase)];
                PhaseTime {
                    plugin: plugin.to_string(),
                    phase: phase.to_string(),
                    calls: metric_sum(
                        text,
                        "natsplug_gateway_phase_duration_seconds_count",
                        &labels,
                    ),
                    seconds: metric_sum(
                        text,
                        "natsplug_gateway_phase_duration_seconds_sum",
                        &labels,
                    ),
                    mean_us: 0.0,
                }
            })
            .collect(),
    };
    split.set_means();
    split
}

impl Split {
    fn set_means(&mut self) {
        let mean = |seconds: f64, count: f64| {
            if count > 0.0 {
                seconds / count * 1e6
            } else {
                0.0
            }
        };
        self.exchange_mean_us = mean(self.exchange_seconds, self.exchanges);
        for phase in &mut self.phases {
            phase.mean_us = mean(phase.seconds, phase.calls);
        }
    }

    /// What happened between snapshot `before` and this one.
    fn since(&self, before: &Split) -> Split {
        let mut split = Split {
            exchanges: self.exchanges - before.exchanges,
            exchange_seconds: self.exchange_seconds - before.exchange_seconds,
            exchange_mean_us: 0.0,
            phases: self
                .phases
                .iter()
                .zip(&before.phases)
                .map(|(after, before)| PhaseTime {
                    calls: after.calls - before.calls,
                    seconds: after.seconds - before.seconds,
                    ..after.clone()
                })
                .collect(),
        };
        split.set_means();
        split
    }

    /// The sum of several cells' splits.
    fn total<'a>(splits: impl Iterator<Item = &'a Split>) -> Option<Split> {
        let mut total: Option<Split> = None;
        for split in splits {
            match &mut total {
                None => total = Some(split.clone()),
                Some(total) => {
                    total.exchanges += split.exchanges;
                    total.exchange_seconds += split.exchange_seconds;
                    for (sum, phase) in total.phases.iter_mut().zip(&split.phases) {
                        sum.calls += phase.calls;
                        sum.seconds += phase.seconds;
                    }
                }
            }
        }
        if let Some(total) = &mut total {
            total.set_means();
        }
        total
    }
}

/// One cell of one round.
#[derive(Debug, Clone, serde::Serialize)]
struct Cell {
    scenario: &'static str,
    name: &'static str,
    concurrency: usize,
    round: usize,
    requests: u64,
    requests_per_second: f64,
    p50_us: f64,
    p99_us: f64,
    percentiles_us: BTreeMap<u32, f64>,
    socket_errors: u64,
    /// Connections the upstream accepted during the measurement.
    upstream_connections: u64,
    /// wrk's own.
    load_cpu_us_per_request: f64,
    upstream_cpu_us_per_request: f64,
    /// The gateway's, or nginx's master and workers'.
    proxy_cpu_us_per_request: Option<f64>,
    host_cpu_us_per_request: Option<f64>,
    /// The gateway's own split of the measured seconds.
    gateway_split: Option<Split>,
}

fn start_gateway(
    nats_url: &str,
    upstream: SocketAddr,
    scenario: &'static Scenario,
    plugins: &[&str],
    settings: &Settings,
) -> Target {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics_listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut command = Command::new(natsplug_binary());
    command
        .args(["gateway", "--nats", nats_url, "--prefix", PREFIX])
        .args(["--listen", &listen.to_string()])
        .args(["--metrics-listen", &metrics_listen.to_string()])
        .args(["--upstream", &format!("http://{upstream}")])
        .env("RUST_LOG", "warn");
    if !plugins.is_empty() {
        command.args(["--plugins", &plugins.join(",")]);
    }
    if let Some(threads) = settings.gateway_threads {
        command.args(["--threads", &threads.to_string()]);
    }
    let name = format!("gateway ({}) {}", scenario.key, scenario.name);
    let (process, line) = Process::start(&name, command, "natsplug gateway ready");
    assert!(
        line.contains(&listen.to_string()),
        "{name}: the ready line `{line}` does not name {listen}"
    );
    Target {
        scenario,
        address: listen,
        gateway: Some((process, metrics_listen)),
        nginx: None,
    }
}

fn run(settings: &Settings, wrk_version: &str, nginx_version: Option<&str>) {
    let server = NatsServer::start();
    let url = server.url();

    let plugins = tempfile::tempdir().expect("a plugins dir");
    for (name, path) in [
        ("header-injector", guests::HEADER_INJECTOR),
        ("authz", guests::AUTHZ),
        ("access-logger", guests::ACCESS_LOGGER),
    ] {
        natsplug_suite::host::install_file(plugins.path(), name, path);
    }
    let config = plugins.path().join("natsplug.toml");
    std::fs::write(
        &config,
        format!("[plugin.authz.config]\ntoken = \"{TOKEN}\"\n"),
    )
    .expect("writing the host config");
    let cache = tempfile::tempdir().expect("a cache dir");
    let mut command = Command::new(natsplug_binary());
    command
        .args(["up", "--nats", &url, "--prefix", PREFIX, "--no-watch"])
        .arg("--plugins")
        .arg(plugins.path())
        .arg("--config")
        .arg(&config)
        .arg("--cache-dir")
        .arg(cache.path())
        .env("RUST_LOG", "warn");
    let (host, _) = Process::start("natsplug up", command, "natsplug ready");

    let me = std::env::current_exe().expect("this binary's path");
    let mut command = Command::new(&me);
    command.env(ROLE, "upstream").env(
        "GATEWAY_BENCH_UPSTREAM_THREADS",
        settings.upstream_threads.to_string(),
    );
    let (upstream, line) = Process::start("the upstream", command, "upstream listening on ");
    let upstream_address: SocketAddr = line
        .trim_start_matches("upstream listening on ")
        .parse()
        .expect("the upstream's address");
    let mut command = Command::new(&me);
    command.env(ROLE, "nats-echo").env(ROLE_NATS_URL, &url);
    let (echo, _) = Process::start("the NATS echo responder", command, "ready");

    // nginx's workers, as many as the gateway's proxy threads.
    let proxy_threads = settings.gateway_threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let mut targets: Vec<Target> = SCENARIOS
        .iter()
        .filter_map(|scenario| match scenario.via {
            Via::Direct => Some(Target {
                scenario,
                address: upstream_address,
                gateway: None,
                nginx: None,
            }),
            Via::Gateway(plugins) => Some(start_gateway(
                &url,
                upstream_address,
                scenario,
                plugins,
                settings,
            )),
            Via::Nginx => {
                nginx_version?;
                let nginx = Nginx::start(&settings.nginx, upstream_address, proxy_threads);
                Some(Target {
                    scenario,
                    address: nginx.address,
                    gateway: None,
                    nginx: Some(nginx),
                })
            }
        })
        .collect();
    let mut sent = check(&targets);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let client = runtime
        .block_on(async_nats::connect(&url))
        .expect("connecting to the server");

    eprintln!(
        "gateway benchmark: {} s per cell after {} s of warm-up, {} round(s), {}",
        settings.seconds, settings.warmup_seconds, settings.rounds, wrk_version
    );
    let mut cells = Vec::new();
    let mut round_trips = Vec::new();
    for round in 0..settings.rounds {
        for (level, &(threads, connections)) in LEVELS.iter().enumerate() {
            if level == 0 {
                let (count, task_client) = (settings.nats_requests, client.clone());
                let measured = runtime.block_on(async move {
                    tokio::spawn(async move { nats_round_trip(&task_client, count, None).await })
                        .await
                        .expect("the measuring task")
                });
                // The same from this thread, outside the client's runtime:
                // each message crosses between threads twice.
                let outside = runtime.block_on(nats_round_trip(&client, count, None));
                // Paced: the path idle between requests, as between the
                // phase calls of a gateway at concurrency 1.
                let (paced_count, task_client) = ((count / 4).max(1), client.clone());
                let paced = runtime.block_on(async move {
                    tokio::spawn(async move {
                        nats_round_trip(&task_client, paced_count, Some(PACED_GAP)).await
                    })
                    .await
                    .expect("the measuring task")
                });
                eprintln!(
                    "round {round}: raw NATS round trip p50 {:.1} µs, p99 {:.1} µs; from outside the client's runtime p50 {:.1} µs, p99 {:.1} µs; paced {} µs apart p50 {:.1} µs, p99 {:.1} µs",
                    measured.p50_us,
                    measured.p99_us,
                    outside.p50_us,
                    outside.p99_us,
                    PACED_GAP.as_micros(),
                    paced.p50_us,
                    paced.p99_us
                );
                round_trips.push([measured, outside, paced]);
            }
            for turn in 0..targets.len() {
                let which = (round + turn) % targets.len();
                let target = &targets[which];
                let url = format!("http://{}/", target.address);
                if settings.warmup_seconds > 0 {
                    let warm = wrk(
                        &settings.wrk,
                        &url,
                        (threads, connections),
                        settings.warmup_seconds,
                    );
                    sent[which] += warm.requests;
                }
                // The upstream, the proxy and, behind a gateway, the host.
                let pids = [
                    vec![upstream.pid()],
                    target.proxy_pids(),
                    target
                        .gateway
                        .as_ref()
                        .map_or_else(Vec::new, |_| vec![host.pid()]),
                ];
                let cpu = || {
                    pids.clone().map(|pids| {
                        (!pids.is_empty()).then(|| pids.into_iter().map(cpu_time).sum::<Duration>())
                    })
                };
                let plugins = target.scenario.plugins();
                let split = || {
                    let (_, metrics_address) = target.gateway.as_ref()?;
                    Some(split_snapshot(&metrics(*metrics_address)?, plugins))
                };
                let accepted_before = upstream_accepted(upstream_address);
                let split_before = split();
                let before = cpu();
                let load_before = children_cpu();
                let report = wrk(
                    &settings.wrk,
                    &url,
                    (threads, connections),
                    settings.seconds,
                );
                let load = children_cpu().saturating_sub(load_before);
                let after = cpu();
                let gateway_split = split()
                    .zip(split_before)
                    .map(|(after, before)| after.since(&before));
                // Less the connection that asks.
                let upstream_connections =
                    upstream_accepted(upstream_address).saturating_sub(accepted_before + 1);
                sent[which] += report.requests;
                let what = format!("({}) {}", target.scenario.key, target.scenario.name);
                assert_eq!(
                    report.non_2xx, 0,
                    "{what} at concurrency {connections}: {} of {} responses were not 2xx/3xx",
                    report.non_2xx, report.requests
                );
                let per_request = |i: usize| {
                    let (before, after) = (before[i]?, after[i]?);
                    Some(after.saturating_sub(before).as_secs_f64() * 1e6 / report.requests as f64)
                };
                let cell = Cell {
                    scenario: target.scenario.key,
                    name: target.scenario.name,
                    concurrency: connections,
                    round,
                    requests: report.requests,
                    requests_per_second: report.requests_per_second,
                    p50_us: report.percentiles_us[&50],
                    p99_us: report.percentiles_us[&99],
                    percentiles_us: report.percentiles_us.clone(),
                    socket_errors: report.socket_errors,
                    upstream_connections,
                    load_cpu_us_per_request: load.as_secs_f64() * 1e6 / report.requests as f64,
                    upstream_cpu_us_per_request: per_request(0).unwrap_or(0.0),
                    proxy_cpu_us_per_request: per_request(1),
                    host_cpu_us_per_request: per_request(2),
                    gateway_split,
                };
                eprintln!(
                    "round {round}: {what} c={connections}: {:.0} req/s, p50 {:.1} µs, p99 {:.1} µs",
                    cell.requests_per_second, cell.p50_us, cell.p99_us
                );
                cells.push(cell);
            }
        }
    }

    let summary: Vec<Cell> = LEVELS
        .iter()
        .flat_map(|&(_, connections)| {
            targets
                .iter()
                .map(move |target| (target.scenario.key, connections))
        })
        .map(|(key, connections)| {
            let rounds: Vec<&Cell> = cells
                .iter()
                .filter(|c| c.scenario == key && c.concurrency == connections)
                .collect();
            median_of(&rounds)
        })
        .collect();
    let round_trip = [0, 1, 2].map(|which| RoundTrip {
        requests: round_trips.iter().map(|r| r[which].requests).sum(),
        p50_us: median(round_trips.iter().map(|r| r[which].p50_us)),
        p99_us: median(round_trips.iter().map(|r| r[which].p99_us)),
    });

    // The gateways' own counts: every plugin called once per request.
    std::thread::sleep(Duration::from_millis(500));
    let counted: Vec<Counted> = targets
        .iter()
        .zip(&sent)
        .filter_map(|(target, &requests_sent)| {
            let (_, metrics_address) = target.gateway.as_ref()?;
            let text = metrics(*metrics_address)?;
            let route = [("route", "default")];
            Some(Counted {
                scenario: target.scenario.key,
                requests_sent,
                requests_total: metric_sum(&text, "natsplug_gateway_requests_total", &route),
                requests_by_status: metric_by_label(
                    &text,
                    "natsplug_gateway_requests_total",
                    &route,
                    "status",
                ),
                phase_calls: target
                    .scenario
                    .plugins()
                    .iter()
                    .map(|plugin| {
                        let phase = phase_of(plugin);
                        let calls = metric_sum(
                            &text,
                            "natsplug_gateway_phase_calls_total",
                            &[("route", "default"), ("plugin", plugin), ("phase", phase)],
                        );
                        (plugin.to_string(), phase.to_string(), calls)
                    })
                    .collect(),
                phase_failures: metric_sum(&text, "natsplug_gateway_phase_failures_total", &[]),
                upstream_failures: metric_sum(
                    &text,
                    "natsplug_gateway_upstream_failures_total",
                    &[],
                ),
            })
        })
        .collect();

    // Graceful stop of each gateway.
    let stops: Vec<serde_json::Value> = targets
        .iter_mut()
        .filter_map(|target| {
            let (process, _) = target.gateway.as_mut()?;
            let outcome = process.terminate(Duration::from_secs(10));
            Some(serde_json::json!({
                "scenario": target.scenario.key,
                "exit_code": outcome.and_then(|(status, _)| status.code()),
                "exit": outcome.map(|(status, _)| status.to_string()),
                "stopped_ms": outcome.map(|(_, took)| took.as_secs_f64() * 1000.0),
            }))
        })
        .collect();
    let reference = targets.iter_mut().find_map(|target| {
        let nginx = target.nginx.as_mut()?;
        let outcome = nginx.stop(Duration::from_secs(10));
        Some(Reference {
            version: nginx_version.unwrap_or("nginx").to_string(),
            workers: proxy_threads,
            stop: serde_json::json!({
                "exit_code": outcome.and_then(|(status, _)| status.code()),
                "exit": outcome.map(|(status, _)| status.to_string()),
                "stopped_ms": outcome.map(|(_, took)| took.as_secs_f64() * 1000.0),
            }),
            error_log: nginx.error_log(),
        })
    });

    report(
        settings,
        wrk_version,
        &summary,
        &cells,
        round_trip,
        &round_trips,
        &counted,
        &stops,
        &targets,
        reference.as_ref(),
    );
    drop(targets);
    drop(echo);
    drop(upstream);
    drop(host);
    drop(server);
}

/// The run of nginx for (n).
struct Reference {
    version: String,
    workers: usize,
    stop: serde_json::Value,
    error_log: String,
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The median of each figure over the rounds of one cell.
fn median_of(rounds: &[&Cell]) -> Cell {
    let of = |figure: fn(&Cell) -> f64| median(rounds.iter().map(|c| figure(c)));
    let of_some = |figure: fn(&Cell) -> Option<f64>| {
        figure(rounds[0])
            .is_some()
            .then(|| median(rounds.iter().filter_map(|c| figure(c))))
    };
    Cell {
        round: rounds.len(),
        requests: rounds.iter().map(|c| c.requests).sum(),
        requests_per_second: of(|c| c.requests_per_second),
        p50_us: of(|c| c.p50_us),
        p99_us: of(|c| c.p99_us),
        percentiles_us: rounds[0]
            .percentiles_us
            .keys()
            .map(|&p| {
                (
                    p,
                    median(
                        rounds
                            .iter()
                            .filter_map(|c| c.percentiles_us.get(&p).copied()),
                    ),
                )
            })
            .collect(),
        socket_errors: rounds.iter().map(|c| c.socket_errors).sum(),
        upstream_connections: rounds.iter().map(|c| c.upstream_connections).sum(),
        load_cpu_us_per_request: of(|c| c.load_cpu_us_per_request),
        upstream_cpu_us_per_request: of(|c| c.upstream_cpu_us_per_request),
        proxy_cpu_us_per_request: of_some(|c| c.proxy_cpu_us_per_request),
        host_cpu_us_per_request: of_some(|c| c.host_cpu_us_per_request),
        // Over every round: sums and counts add up.
        gateway_split: Split::total(rounds.iter().filter_map(|c| c.gateway_split.as_ref())),
        ..rounds[0].clone()
    }
}

/// CPU time this process's children have used, once waited for: here,
/// the wrk runs that have ended.
fn children_cpu() -> Duration {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// What the cores allow a proxy at concurrency 64, from the run's own
/// figures. A request through a proxy costs at least what it costs straight
/// to the upstream (wrk's share and the upstream's, as measured at (a)) plus
/// the proxy's own; the machine's cores give at most that many µs of CPU
/// per µs, so (b) ≤ cores / (direct + proxy) requests per µs, whatever the
/// proxy does. A proxy reads and answers each request as the upstream
/// does, and sends it on and reads the answer as wrk does: it cannot cost
/// much less than the upstream alone.
struct Ceiling {
    cores: usize,
    /// (a)'s rate.
    direct_rate: f64,
    /// wrk's and the upstream's CPU µs per request at (a).
    load_us: f64,
    upstream_us: f64,
    /// The proxy CPU µs per request that still allows 0.8 × (a).
    budget_us: f64,
    /// The gateway's and nginx's CPU µs per request, and the bound each gives.
    gateway: Option<(f64, f64)>,
    nginx: Option<(f64, f64)>,
}

impl Ceiling {
    fn of(summary: &[Cell], nginx: Option<&Cell>) -> Ceiling {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let direct = find_cell(summary, "a", 64);
        let direct_us = direct.load_cpu_us_per_request + direct.upstream_cpu_us_per_request;
        let direct_rate = direct.requests_per_second;
        // Requests per second the cores allow at `us` of CPU per request.
        let allowed = |us: f64| cores as f64 * 1e6 / us;
        let bound = |cell: &Cell| {
            cell.proxy_cpu_us_per_request
                .map(|proxy| (proxy, allowed(direct_us + proxy) / direct_rate))
        };
        Ceiling {
            cores,
            direct_rate,
            load_us: direct.load_cpu_us_per_request,
            upstream_us: direct.upstream_cpu_us_per_request,
            budget_us: allowed(0.8 * direct_rate) - direct_us,
            gateway: bound(find_cell(summary, "b", 64)),
            nginx: nginx.and_then(bound),
        }
    }

    fn json(&self) -> serde_json::Value {
        let figures = |f: Option<(f64, f64)>| {
            f.map(|(us, bound)| serde_json::json!({ "cpu_us_per_request": us, "bound": bound }))
        };
        serde_json::json!({
            "cores": self.cores,
            "direct_requests_per_second": self.direct_rate,
            "direct_wrk_cpu_us_per_request": self.load_us,
            "direct_upstream_cpu_us_per_request": self.upstream_us,
            "proxy_cpu_us_per_request_for_0_8": self.budget_us,
            "gateway": figures(self.gateway),
            "nginx": figures(self.nginx),
        })
    }
}

impl std::fmt::Display for Ceiling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let direct_us = self.load_us + self.upstream_us;
        write!(
            f,
            "ceiling at c=64: a request straight to the upstream costs {direct_us:.1} µs of CPU (wrk {:.1}, upstream {:.1}); \
             through a proxy costing P µs, {} cores allow (b)/(a) ≤ {} × 10⁶ / (({direct_us:.1} + P) × {:.0}); \
             0.8 leaves a proxy {:.1} µs per request, about what the upstream alone takes to answer it",
            self.load_us,
            self.upstream_us,
            self.cores,
            self.cores,
            self.direct_rate,
            self.budget_us
        )?;
        for (name, figures) in [("nginx", self.nginx), ("gateway", self.gateway)] {
            if let Some((us, bound)) = figures {
                write!(f, "; {name} {us:.1} µs → ≤ {bound:.2}")?;
            }
        }
        Ok(())
    }
}

fn scenario_of(key: &str) -> &'static Scenario {
    SCENARIOS
        .iter()
        .find(|s| s.key == key)
        .expect("a known scenario")
}

fn find_cell<'a>(summary: &'a [Cell], key: &str, concurrency: usize) -> &'a Cell {
    summary
        .iter()
        .find(|c| c.scenario == key && c.concurrency == concurrency)
        .expect("every scenario at every level")
}

#[allow(clippy::too_many_arguments)]
fn report(
    settings: &Settings,
    wrk_version: &str,
    summary: &[Cell],
    cells: &[Cell],
    [round_trip, outside, paced]: [RoundTrip; 3],
    round_trips: &[[RoundTrip; 3]],
    counted: &[Counted],
    stops: &[serde_json::Value],
    targets: &[Target],
    reference: Option<&Reference>,
) {
    let optional = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.1}"));
    println!();
    println!(
        "| scenario | concurrency | req/s | p50 µs | p99 µs | wrk CPU µs/req | upstream CPU µs/req | proxy CPU µs/req (gateway or nginx) | host CPU µs/req | new upstream connections | socket errors |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for c in summary {
        let plugins = scenario_of(c.scenario).description();
        println!(
            "| ({}) {}: {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} |",
            c.scenario,
            c.name,
            plugins,
            c.concurrency,
            c.requests_per_second,
            c.p50_us,
            c.p99_us,
            c.load_cpu_us_per_request,
            c.upstream_cpu_us_per_request,
            optional(c.proxy_cpu_us_per_request),
            optional(c.host_cpu_us_per_request),
            c.upstream_connections,
            c.socket_errors
        );
    }
    println!();
    println!(
        "raw NATS request/reply round trip, concurrency 1 ({} requests, a task on the client's runtime): p50 {:.1} µs, p99 {:.1} µs",
        round_trip.requests, round_trip.p50_us, round_trip.p99_us
    );
    println!(
        "the same sent from a thread outside the client's runtime (two crossings between threads per round trip): p50 {:.1} µs, p99 {:.1} µs",
        outside.p50_us, outside.p99_us
    );
    println!(
        "the same paced, each request {} µs after the previous reply (the path idle between them, as between a gateway's phase calls at concurrency 1): p50 {:.1} µs, p99 {:.1} µs",
        PACED_GAP.as_micros(),
        paced.p50_us,
        paced.p99_us
    );

    let hop_us = find_cell(summary, "c", 1).p50_us - find_cell(summary, "b", 1).p50_us;
    let budget_us = round_trip.p50_us + 50.0;
    let hop_met = hop_us <= budget_us;
    let ratio = find_cell(summary, "b", 64).requests_per_second
        / find_cell(summary, "a", 64).requests_per_second;
    let ratio_met = ratio >= 0.8;
    let verdict = |met: bool| if met { "met" } else { "not met" };
    println!(
        "goal: one plugin hop, (c) − (b) p50 at concurrency 1 = {hop_us:.1} µs ≤ raw NATS round trip p50 {:.1} µs + 50 µs = {budget_us:.1} µs: {}",
        round_trip.p50_us,
        verdict(hop_met)
    );
    // The hop split in two: the gateway's side with a trivial responder,
    // and what the host adds to it.
    let responder_hop_us = find_cell(summary, "e", 1).p50_us - find_cell(summary, "b", 1).p50_us;
    let host_share_us = find_cell(summary, "c", 1).p50_us - find_cell(summary, "e", 1).p50_us;
    println!(
        "the hop split: (e) − (b) = {responder_hop_us:.1} µs with a trivial responder (raw round trip + {:.1} µs, paced round trip + {:.1} µs), (c) − (e) = {host_share_us:.1} µs for the host and its plugin",
        responder_hop_us - round_trip.p50_us,
        responder_hop_us - paced.p50_us
    );
    println!(
        "goal: (b) ≥ 0.8 × (a) req/s at concurrency 64: (b)/(a) = {ratio:.2}: {}",
        verdict(ratio_met)
    );
    let nginx_cell = reference.map(|_| find_cell(summary, "n", 64));
    let reference_ratios = nginx_cell.map(|n| {
        (
            find_cell(summary, "b", 64).requests_per_second / n.requests_per_second,
            n.requests_per_second / find_cell(summary, "a", 64).requests_per_second,
        )
    });
    match (reference, reference_ratios) {
        (Some(reference), Some((b_over_n, n_over_a))) => println!(
            "reference: (b)/(n) = {b_over_n:.2} at c=64, (n)/(a) = {n_over_a:.2} ({}, {} worker processes)",
            reference.version, reference.workers
        ),
        _ => println!(
            "reference: (n) nginx skipped, no nginx at {} (install it with `apt-get install -y nginx-light`, or set NGINX to its path)",
            settings.nginx.display()
        ),
    }

    let ceiling = Ceiling::of(summary, nginx_cell);
    println!("{ceiling}");

    let splits: Vec<&Cell> = summary
        .iter()
        .filter(|c| c.concurrency == 1 && c.gateway_split.is_some())
        .collect();
    if !splits.is_empty() {
        println!();
        println!(
            "the gateway's own split at concurrency 1, from its /metrics over the measured seconds (means: sum/count):"
        );
    }
    for cell in splits {
        let Some(split) = &cell.gateway_split else {
            continue;
        };
        let mut line = format!(
            "({}) {}: exchange (natsplug_gateway_request_duration_seconds) mean {:.1} µs over {}",
            cell.scenario, cell.name, split.exchange_mean_us, split.exchanges
        );
        let filters: Vec<&PhaseTime> = split
            .phases
            .iter()
            .filter(|p| p.phase == "request_filter")
            .collect();
        for phase in &filters {
            line.push_str(&format!(
                "; request_filter {} (natsplug_gateway_phase_duration_seconds) mean {:.1} µs over {}",
                phase.plugin, phase.mean_us, phase.calls
            ));
        }
        if !filters.is_empty() {
            let total: f64 = filters.iter().map(|p| p.mean_us).sum();
            line.push_str(&format!(
                "; request_filter total {total:.1} µs = {:.0}% of the exchange, the rest {:.1} µs",
                total / split.exchange_mean_us * 100.0,
                split.exchange_mean_us - total
            ));
        }
        for phase in split.phases.iter().filter(|p| p.phase != "request_filter") {
            line.push_str(&format!(
                "; {} {} mean {:.1} µs over {} (sent after the exchange is counted)",
                phase.phase, phase.plugin, phase.mean_us, phase.calls
            ));
        }
        line.push_str(&format!("; wrk p50 {:.1} µs", cell.p50_us));
        println!("{line}");
    }

    println!();
    for count in counted {
        let statuses: Vec<String> = count
            .requests_by_status
            .iter()
            .map(|(status, n)| format!("{status}: {n}"))
            .collect();
        let mut line = format!(
            "gateway ({}): {} requests sent, requests_total {} (by status {})",
            count.scenario,
            count.requests_sent,
            count.requests_total,
            statuses.join(", ")
        );
        for (plugin, phase, calls) in &count.phase_calls {
            line.push_str(&format!(", {plugin} {phase} calls {calls}"));
        }
        line.push_str(&format!(
            ", phase failures {}, upstream failures {}",
            count.phase_failures, count.upstream_failures
        ));
        let short = |n: f64| n < count.requests_sent as f64;
        if short(count.requests_total)
            || count.phase_calls.iter().any(|(_, _, calls)| short(*calls))
        {
            line.push_str(" — FEWER THAN SENT");
        }
        println!("{line}");
    }
    if counted.len() < targets.iter().filter(|t| t.gateway.is_some()).count() {
        println!("warning: some gateways answered no GET /metrics");
    }
    for stop in stops {
        let fine = stop["exit_code"] == 0;
        println!(
            "gateway ({}) after SIGTERM: {}{}",
            stop["scenario"].as_str().unwrap_or("?"),
            stop["exit"].as_str().unwrap_or("still running after 10 s"),
            if fine { "" } else { " — expected exit 0" }
        );
    }
    for target in targets {
        if let Some((process, _)) = &target.gateway {
            let log = process.log();
            if !log.trim().is_empty() {
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(5)..];
                println!(
                    "{} logged {} line(s) at warn or above, the last:\n  {}",
                    process.name,
                    lines.len(),
                    tail.join("\n  ")
                );
            }
        }
    }
    if let Some(reference) = reference {
        let fine = reference.stop["exit_code"] == 0;
        println!(
            "nginx after SIGTERM: {}{}",
            reference.stop["exit"]
                .as_str()
                .unwrap_or("still running after 10 s, killed"),
            if fine { "" } else { " — expected exit 0" }
        );
        if !reference.error_log.trim().is_empty() {
            let lines: Vec<&str> = reference.error_log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(5)..];
            println!(
                "nginx logged {} line(s) at warn or above, the last:\n  {}",
                lines.len(),
                tail.join("\n  ")
            );
        }
    }

    let json = serde_json::json!({
        "machine": { "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "wrk": wrk_version,
        "seconds_per_cell": settings.seconds,
        "warmup_seconds": settings.warmup_seconds,
        "rounds": settings.rounds,
        "gateway_threads": settings.gateway_threads,
        "upstream_threads": settings.upstream_threads,
        "results": summary,
        "every_round": cells,
        "nats_round_trip": round_trip,
        "nats_round_trip_outside_runtime": outside,
        "nats_round_trip_paced": paced,
        "nats_round_trip_paced_gap_us": PACED_GAP.as_micros() as u64,
        "nats_round_trip_every_round": round_trips
            .iter()
            .map(|[on, off, paced]| {
                serde_json::json!({ "on_runtime": on, "outside_runtime": off, "paced": paced })
            })
            .collect::<Vec<_>>(),
        "goals": {
            "plugin_hop": {
                "hop_p50_us": hop_us,
                "nats_round_trip_p50_us": round_trip.p50_us,
                "budget_us": budget_us,
                "met": hop_met,
                "responder_hop_p50_us": responder_hop_us,
                "host_share_p50_us": host_share_us,
            },
            "gateway_throughput": {
                "ratio_b_over_a_at_64": ratio,
                "at_least": 0.8,
                "met": ratio_met,
                "ceiling": ceiling.json(),
            },
        },
        "reference": reference.map(|reference| serde_json::json!({
            "scenario": "n",
            "nginx": reference.version,
            "worker_processes": reference.workers,
            "ratio_b_over_n_at_64": reference_ratios.map(|(b_over_n, _)| b_over_n),
            "ratio_n_over_a_at_64": reference_ratios.map(|(_, n_over_a)| n_over_a),
            "shutdown": reference.stop,
        })),
        "gateway_metrics": counted,
        "gateway_shutdown": stops,
    });
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("bench");
    std::fs::create_dir_all(&dir).expect("creating target/bench");
    let file = dir.join("gateway.json");
    std::fs::write(&file, serde_json::to_string_pretty(&json).expect("JSON"))
        .expect("writing the report");
    println!("written to {}", file.display());
}
