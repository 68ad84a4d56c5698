//! Soak benchmark: one `natsplug up` process, under a long steady load,
//! while its plugins are replaced again and again; it watches whether the
//! host's memory, file descriptors or instances grow.
//!
//! The host is a real process on its own `nats-server`, serving the four
//! example plugins from a watched directory (authz configured with a
//! token), with its monitoring endpoint on. The client sends
//! `SOAK_REQUESTS` phase requests from `SOAK_CONCURRENCY` tasks, spread in
//! turn over five kinds: header-injector `request_filter`, authz
//! `request_filter` with the right token (passes) and without one
//! (answers 401), body-redactor `response_body_filter` (one chunk, masked)
//! and access-logger `logging`. Every reply is checked: it must arrive
//! within 10 s, carry no service error, decode, have the request's id and
//! say what that plugin says for that request. Anything else is a failed
//! request.
//!
//! Meanwhile a reloader replaces one plugin file every `SOAK_RELOAD_SECS`,
//! the plugins in turn, each time with a version padded by a custom
//! section of a new length (it behaves the same, but has a new content
//! hash, so the host compiles and swaps it). It writes the file the way
//! users are told to (a temporary file renamed into place) and counts a
//! reload as done when the host's `/metrics` shows the new hash served.
//!
//! Every second a sampler reads the host's resident memory
//! (`/proc/PID/status` VmRSS), its open file descriptors (the entries of
//! `/proc/PID/fd`) and, from `/metrics`, `natsplug_warm_instances`: the
//! plugin instances the host keeps alive between calls. The host exposes
//! no other live-instance figure; `natsplug_pool_instances` is the fixed
//! number of slots of the pooling allocator and is printed beside it.
//!
//! At the end it prints one table (plain markdown, aligned for a
//! terminal): requests, failures, reloads, throughput, latency, the
//! resident memory at the end of the warm-up (the first 20% of the
//! requests) and at the end, the slope of a least-squares line through the
//! samples after the warm-up (KiB per 100,000 requests and KiB per
//! minute) and through those of the second half of the requests, the
//! range of open descriptors and of warm instances. Every
//! sample and reload is written as JSON to `target/bench/soak.json`. The
//! process exits with status 1 when a request failed or a reload did not
//! land within 60 s.
//!
//! `cargo bench -p natsplug-suite --bench soak`; settings from the
//! environment:
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `SOAK_REQUESTS` | 1000000 | requests sent in all |
//! | `SOAK_CONCURRENCY` | 64 | requests in flight (client tasks) |
//! | `SOAK_RELOAD_SECS` | 3 | seconds between two plugin replacements (fractions allowed); 0 for none |
//! | `NATS_SERVER` | `target/ci-tools/bin/nats-server`, else `nats-server` on PATH | the server binary |

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use natsplug_protocol::{
    self as protocol, Action, BodyChunk, HttpResponse, PhaseReply, PhaseRequest,
};
use natsplug_suite::client::request;
use natsplug_suite::host::deploy_bytes;
use natsplug_suite::nats_server::free_port;
use natsplug_suite::process::cpu_time;
use natsplug_suite::up::{padded_component, path_arg};
use natsplug_suite::{NatsServer, UpProcess, guests};
use sha2::{Digest as _, Sha256};

/// The subject prefix the host serves (its default).
const PREFIX: &str = "nylon.plugin";
/// The token authz is configured with.
const TOKEN: &str = "soak-token-7c1d";
/// What one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// What one reload may take to be served before it counts as failed.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// The share of the requests that is warm-up, left out of the slope.
const WARMUP_SHARE: f64 = 0.2;
/// The body-redactor's chunk and what it must come back as.
const SECRET_BODY: &[u8] = b"the secret is secret";
const REDACTED_BODY: &[u8] = b"the ****** is ******";
/// Examples of failed requests kept for the report.
const FAILURE_EXAMPLES: usize = 10;

/// The example plugins served: (name, component path).
const PLUGINS: [(&str, &str); 4] = [
    ("header-injector", guests::HEADER_INJECTOR),
    ("authz", guests::AUTHZ),
    ("body-redactor", guests::BODY_REDACTOR),
    ("access-logger", guests::ACCESS_LOGGER),
];

fn main() -> ExitCode {
    let settings = Settings::from_env();
    if std::env::var_os("NATS_SERVER").is_none() {
        let ci_server =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-tools/bin/nats-server");
        if ci_server.exists() {
            // SAFETY: no other thread runs yet.
            unsafe { std::env::set_var("NATS_SERVER", ci_server) };
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let passed = runtime.block_on(run(&settings));
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What to run, from the environment.
struct Settings {
    requests: u64,
    concurrency: usize,
    /// `None`: no reloads.
    reload_every: Option<Duration>,
}

impl Settings {
    fn from_env() -> Settings {
        fn number<T: std::str::FromStr>(name: &str, default: T) -> T {
            match std::env::var(name) {
                Ok(text) => text
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name} must be a number, not `{text}`")),
                Err(_) => default,
            }
        }
        let reload_secs: f64 = number("SOAK_RELOAD_SECS", 3.0);
        assert!(
            reload_secs >= 0.0,
            "SOAK_RELOAD_SECS must be 0 (no reloads) or more"
        );
        let settings = Settings {
            requests: number("SOAK_REQUESTS", 1_000_000),
            concurrency: number("SOAK_CONCURRENCY", 64),
            reload_every: (reload_secs > 0.0).then(|| Duration::from_secs_f64(reload_secs)),
        };
        assert!(settings.requests > 0, "SOAK_REQUESTS must be at least 1");
        assert!(
            settings.concurrency > 0,
            "SOAK_CONCURRENCY must be at least 1"
        );
        settings
    }
}

// ---------------------------------------------------------------------------
// The requests.

/// One kind of request of the mix, sent in turn.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Inject,
    AuthzPass,
    AuthzDeny,
    Redact,
    Log,
}

const KINDS: [Kind; 5] = [
    Kind::Inject,
    Kind::AuthzPass,
    Kind::AuthzDeny,
    Kind::Redact,
    Kind::Log,
];

impl Kind {
    fn plugin(self) -> &'static str {
        match self {
            Kind::Inject => "header-injector",
            Kind::AuthzPass | Kind::AuthzDeny => "authz",
            Kind::Redact => "body-redactor",
            Kind::Log => "access-logger",
        }
    }

    fn phase(self) -> &'static str {
        match self {
            Kind::Inject | Kind::AuthzPass | Kind::AuthzDeny => "request_filter",
            Kind::Redact => "response_body_filter",
            Kind::Log => "logging",
        }
    }

    fn subject(self) -> String {
        format!("{PREFIX}.{}.{}", self.plugin(), self.phase())
    }

    /// The request of this kind with id `id`.
    fn request(self, id: &str) -> PhaseRequest {
        let mut r = request(self.phase(), id, "GET", "/api/v1/orders");
        r.request.headers = vec![
            ("host".into(), "shop.example".into()),
            ("user-agent".into(), "soak/1".into()),
        ];
        match self {
            Kind::Inject | Kind::AuthzDeny => {}
            Kind::AuthzPass => r
                .request
                .headers
                .push(("authorization".into(), format!("Bearer {TOKEN}"))),
            Kind::Redact => {
                r.session_id = Some(7);
                r.response = Some(ok_response());
                r.chunk = Some(BodyChunk {
                    data: SECRET_BODY.to_vec(),
                    end_of_stream: true,
                    state: None,
                });
            }
            Kind::Log => {
                r.session_id = Some(7);
                r.request.client_ip = Some("192.0.2.7".into());
                r.response = Some(ok_response());
                r.duration_ms = Some(3);
            }
        }
        r
    }

    /// Whether `reply` is what this kind's plugin answers to request `id`.
    fn check(self, id: &str, reply: &PhaseReply) -> Result<(), String> {
        if reply.request_id != id {
            return Err(format!(
                "reply for request `{}`, expected `{id}`",
                reply.request_id
            ));
        }
        let fits = match self {
            Kind::Inject => {
                reply.action == Action::Next
                    && reply.request_headers.as_ref().is_some_and(|m| {
                        m.set
                            .iter()
                            .any(|(name, value)| name == "x-request-id" && value == id)
                    })
            }
            Kind::AuthzPass | Kind::Log => reply.action == Action::Next && reply.status.is_none(),
            Kind::AuthzDeny => reply.action == Action::End && reply.status == Some(401),
            Kind::Redact => {
                reply.action == Action::Next && reply.body.as_deref() == Some(REDACTED_BODY)
            }
        };
        if fits {
            Ok(())
        } else {
            Err(format!("unexpected reply {reply:?}"))
        }
    }
}

fn ok_response() -> HttpResponse {
    HttpResponse {
        status: 200,
        headers: vec![("content-type".into(), "text/plain".into())],
        body: None,
    }
}

/// Failed requests: how many, and the first few.
#[derive(Default)]
struct Failures {
    count: AtomicU64,
    examples: Mutex<Vec<String>>,
}

impl Failures {
    fn record(&self, kind: Kind, id: &str, what: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut examples = self.examples.lock().expect("the failure list");
        if examples.len() < FAILURE_EXAMPLES {
            examples.push(format!("{} {} `{id}`: {what}", kind.plugin(), kind.phase()));
        }
    }
}

/// Send request `index` of the mix and check its reply; returns the
/// latency in microseconds.
async fn send_one(
    client: &async_nats::Client,
    subjects: &[String],
    index: u64,
    failures: &Failures,
) -> u32 {
    let kind = KINDS[(index % KINDS.len() as u64) as usize];
    let id = format!("soak-{index}");
    let payload = protocol::encode_request(&kind.request(&id));
    let subject = subjects[(index % KINDS.len() as u64) as usize].clone();
    let sent = Instant::now();
    let answer =
        tokio::time::timeout(REQUEST_TIMEOUT, client.request(subject, payload.into())).await;
    let latency = sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
    let outcome = match answer {
        Err(_) => Err(format!("no reply within {} s", REQUEST_TIMEOUT.as_secs())),
        Ok(Err(error)) => Err(format!("request failed: {error}")),
        Ok(Ok(message)) => match message
            .headers
            .as_ref()
            .and_then(|h| h.get(protocol::SERVICE_ERROR_HEADER))
        {
            Some(error) => Err(format!("service error `{error}`")),
            None => protocol::decode_reply(&message.payload)
                .map_err(|error| format!("undecodable reply: {error}"))
                .and_then(|reply| kind.check(&id, &reply)),
        },
    };
    if let Err(what) = outcome {
        failures.record(kind, &id, what);
    }
    latency
}

/// Send `settings.requests` requests from `settings.concurrency` tasks;
/// `done` counts the answered ones. Returns every latency (µs).
async fn load(
    client: &async_nats::Client,
    settings: &Settings,
    done: &Arc<AtomicU64>,
    failures: &Arc<Failures>,
) -> Vec<u32> {
    let subjects: Arc<Vec<String>> = Arc::new(KINDS.iter().map(|k| k.subject()).collect());
    let next = Arc::new(AtomicU64::new(0));
    let total = settings.requests;
    let per_task = (total as usize).div_ceil(settings.concurrency);
    let tasks: Vec<_> = (0..settings.concurrency)
        .map(|_| {
            let (client, subjects, next) = (client.clone(), subjects.clone(), next.clone());
            let (done, failures) = (done.clone(), failures.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_task);
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= total {
                        break latencies;
                    }
                    latencies.push(send_one(&client, &subjects, index, &failures).await);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(total as usize);
    for task in tasks {
        latencies.extend(task.await.expect("a load task"));
    }
    latencies
}

// ---------------------------------------------------------------------------
// The host's figures.

/// `GET /metrics` from the monitoring endpoint, bounded in time.
fn metrics(address: SocketAddr) -> Option<String> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&address, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// The sum of the series of `metric` (a name without labels, or before
/// `{`) in `text`.
fn metric_sum(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Whether `text` shows plugin `name` served with content hash `hash`.
fn serves(text: &str, name: &str, hash: &str) -> bool {
    let plugin = format!("plugin=\"{name}\"");
    let content = format!("content_hash=\"{hash}\"");
    text.lines().any(|line| {
        line.starts_with("natsplug_plugin_info{")
            && line.contains(&plugin)
            && line.contains(&content)
    })
}

/// Resident memory of process `pid` in KiB.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Open file descriptors of process `pid`.
fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |entries| entries.count() as u64)
}

/// One reading of the host, taken every second.
#[derive(Debug, Clone, serde::Serialize)]
struct Sample {
    seconds: f64,
    requests: u64,
    rss_kib: u64,
    fds: u64,
    /// `natsplug_warm_instances`, when the scrape answered.
    warm_instances: Option<i64>,
    reloads: u64,
}

/// Read the host now.
fn sample(
    pid: u32,
    monitor: SocketAddr,
    started: Instant,
    done: &AtomicU64,
    reloads: &AtomicU64,
) -> Sample {
    // Memory and descriptors before the scrape, whose connection is a
    // descriptor of the host while it lasts.
    let rss_kib = resident_kib(pid);
    let fds = open_fds(pid);
    let warm_instances =
        metrics(monitor).map(|text| metric_sum(&text, "natsplug_warm_instances") as i64);
    Sample {
        seconds: started.elapsed().as_secs_f64(),
        requests: done.load(Ordering::Relaxed),
        rss_kib,
        fds,
        warm_instances,
        reloads: reloads.load(Ordering::Relaxed),
    }
}

/// Sample every second until `stop`, printing a progress line at each
/// tenth of the requests.
fn sampler(
    pid: u32,
    monitor: SocketAddr,
    total: u64,
    counters: (Arc<AtomicU64>, Arc<AtomicU64>),
    stop: Arc<AtomicBool>,
    started: Instant,
) -> Vec<Sample> {
    let (done, reloads) = counters;
    let mut samples = Vec::new();
    let mut next_tenth = 1;
    let mut tick = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let reading = sample(pid, monitor, started, &done, &reloads);
        if reading.requests * 10 >= total * next_tenth && next_tenth < 10 {
            println!(
                "{:>6.0} s {:>9} requests  {:>8.1} MiB  {:>4} fds  {:>4} instances  {:>4} reloads",
                reading.seconds,
                reading.requests,
                reading.rss_kib as f64 / 1024.0,
                reading.fds,
                reading
                    .warm_instances
                    .map_or_else(|| "?".to_string(), |n| n.to_string()),
                reading.reloads,
            );
            next_tenth = reading.requests * 10 / total + 1;
        }
        samples.push(reading);
        tick += 1;
        let next = started + Duration::from_secs(u64::from(tick));
        while !stop.load(Ordering::Relaxed) && Instant::now() < next {
            let left = next.saturating_duration_since(Instant::now());
            std::thread::sleep(Duration::from_millis(20).min(left));
        }
    }
    samples
}

// ---------------------------------------------------------------------------
// The reloader.

/// One replacement of a plugin file.
#[derive(Debug, Clone, serde::Serialize)]
struct Reload {
    /// When the file was renamed into place, from the start of the load.
    seconds: f64,
    plugin: &'static str,
    bytes: usize,
    /// From the rename to the new hash served; `None`: not within 60 s.
    landed_ms: Option<f64>,
}

/// Every `every`, until `stop`, replace the next plugin's file with a
/// version padded to a new length and wait for the host to serve it.
fn reloader(
    dir: PathBuf,
    monitor: SocketAddr,
    every: Duration,
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    started: Instant,
) -> Vec<Reload> {
    let originals: Vec<Vec<u8>> = PLUGINS
        .iter()
        .map(|(_, path)| std::fs::read(path).expect("an example plugin"))
        .collect();
    let mut reloads = Vec::new();
    for round in 1u32.. {
        let due = started + every * round;
        while !stop.load(Ordering::Relaxed) && Instant::now() < due {
            let left = due.saturating_duration_since(Instant::now());
            std::thread::sleep(Duration::from_millis(20).min(left));
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let which = (round as usize - 1) % PLUGINS.len();
        let (name, _) = PLUGINS[which];
        // A new length each time: a new content hash, compiled afresh.
        let bytes = padded_component(&originals[which], 16 + round as usize);
        let hash: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let renamed = Instant::now();
        deploy_bytes(&dir, name, &bytes);
        let mut landed_ms = None;
        while renamed.elapsed() < RELOAD_TIMEOUT {
            if metrics(monitor).is_some_and(|text| serves(&text, name, &hash)) {
                landed_ms = Some(renamed.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if landed_ms.is_some() {
            done.fetch_add(1, Ordering::Relaxed);
        }
        reloads.push(Reload {
            seconds: (renamed - started).as_secs_f64(),
            plugin: name,
            bytes: bytes.len(),
            landed_ms,
        });
    }
    reloads
}

// ---------------------------------------------------------------------------
// The run and its report.

async fn run(settings: &Settings) -> bool {
    let server = NatsServer::start();
    let url = server.url();
    let plugins = tempfile::tempdir().expect("a plugins dir");
    for (name, path) in PLUGINS {
        natsplug_suite::host::install_file(plugins.path(), name, path);
    }
    let cache = tempfile::tempdir().expect("a cache dir");
    let config = tempfile::NamedTempFile::new().expect("a config file");
    std::fs::write(
        config.path(),
        format!("[plugin.authz.config]\ntoken = \"{TOKEN}\"\n"),
    )
    .expect("writing the config file");
    let monitor = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (plugins_arg, cache_arg, config_arg) = (
        path_arg(plugins.path()),
        path_arg(cache.path()),
        path_arg(config.path()),
    );
    let monitor_arg = monitor.to_string();
    let mut up = UpProcess::start_with_env(
        &[
            "--nats",
            &url,
            "--plugins",
            &plugins_arg,
            "--cache-dir",
            &cache_arg,
            "--config",
            &config_arg,
            "--monitor",
            &monitor_arg,
        ],
        &[("RUST_LOG", "warn")],
    );
    let pid = up.child.id();
    let first_metrics = wait_for_metrics(monitor).await;
    let pool_slots = metric_sum(&first_metrics, "natsplug_pool_instances") as i64;
    let client = server.connect().await;

    println!(
        "soak: {} requests at concurrency {}, {}, host pid {pid}",
        settings.requests,
        settings.concurrency,
        settings.reload_every.map_or_else(
            || "no reloads".to_string(),
            |every| format!("a plugin replaced every {} s", every.as_secs_f64())
        ),
    );
    let done = Arc::new(AtomicU64::new(0));
    let reloads_done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Failures::default());
    let stop = Arc::new(AtomicBool::new(false));
    let rss_at_start = resident_kib(pid);
    let cpu_before = cpu_time(pid);
    let started = Instant::now();
    let sampling = {
        let counters = (done.clone(), reloads_done.clone());
        let stop = stop.clone();
        let total = settings.requests;
        std::thread::spawn(move || sampler(pid, monitor, total, counters, stop, started))
    };
    let reloading = settings.reload_every.map(|every| {
        let (dir, done, stop) = (
            plugins.path().to_path_buf(),
            reloads_done.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || reloader(dir, monitor, every, done, stop, started))
    });

    let mut latencies = load(&client, settings, &done, &failures).await;
    let elapsed = started.elapsed();
    let cpu = cpu_time(pid).saturating_sub(cpu_before);
    stop.store(true, Ordering::Relaxed);
    let mut samples = sampling.join().expect("the sampler");
    samples.push(sample(pid, monitor, started, &done, &reloads_done));
    let reloads = reloading.map_or_else(Vec::new, |r| r.join().expect("the reloader"));
    let last_metrics = metrics(monitor).unwrap_or_default();
    let host_log = up.log();
    up.terminate();
    up.wait_exit();

    latencies.sort_unstable();
    let run = Run {
        samples,
        reloads,
        latencies,
        elapsed,
        cpu,
        rss_at_start,
        pool_slots,
        last_metrics,
        host_log,
        failed: failures.count.load(Ordering::Relaxed),
    };
    let report = Report::new(settings, &run);
    report.print();
    let examples = failures.examples.lock().expect("the failure list").clone();
    if !examples.is_empty() {
        println!("\nfailed requests (first {}):", examples.len());
        for example in &examples {
            println!("  {example}");
        }
    }
    if !report.warnings.is_empty() {
        println!("\nthe host logged (first {}):", report.warnings.len());
        for line in &report.warnings {
            println!("  {line}");
        }
    }
    write_json(settings, &report, &run);
    report.failed == 0 && report.reloads_late == 0
}

/// Wait up to 30 s for the monitoring endpoint; its first `/metrics`.
async fn wait_for_metrics(monitor: SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(text) = metrics(monitor) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "the host's monitoring endpoint {monitor} did not answer within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How fast resident memory grew over some samples: the slopes of
/// least-squares lines through them.
#[derive(Debug, serde::Serialize)]
struct RssSlope {
    kib_per_100k_requests: f64,
    kib_per_minute: f64,
    samples: usize,
}

impl RssSlope {
    fn fit(samples: &[&Sample]) -> RssSlope {
        let by_requests: Vec<(f64, f64)> = samples
            .iter()
            .map(|s| (s.requests as f64, s.rss_kib as f64))
            .collect();
        let by_minutes: Vec<(f64, f64)> = samples
            .iter()
            .map(|s| (s.seconds / 60.0, s.rss_kib as f64))
            .collect();
        RssSlope {
            kib_per_100k_requests: slope(&by_requests) * 100_000.0,
            kib_per_minute: slope(&by_minutes),
            samples: samples.len(),
        }
    }
}

impl std::fmt::Display for RssSlope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:+.1} KiB per 100k requests, {:+.1} KiB per minute ({} samples)",
            self.kib_per_100k_requests, self.kib_per_minute, self.samples
        )
    }
}

/// A least-squares line through `points`: its slope (0 with fewer than two
/// distinct x).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut covariance, mut variance) = (0.0, 0.0);
    for (x, y) in points {
        covariance += (x - mean_x) * (y - mean_y);
        variance += (x - mean_x) * (x - mean_x);
    }
    if variance == 0.0 {
        0.0
    } else {
        covariance / variance
    }
}

/// What a run collected.
struct Run {
    samples: Vec<Sample>,
    reloads: Vec<Reload>,
    /// Every request's latency in µs, sorted.
    latencies: Vec<u32>,
    elapsed: Duration,
    /// The host's CPU time during the load.
    cpu: Duration,
    rss_at_start: u64,
    /// `natsplug_pool_instances`.
    pool_slots: i64,
    /// `/metrics` after the load.
    last_metrics: String,
    host_log: String,
    failed: u64,
}

/// The figures of a run.
#[derive(Debug, serde::Serialize)]
struct Report {
    requests: u64,
    failed: u64,
    reloads_done: usize,
    /// Reloads not served within 60 s.
    reloads_late: usize,
    /// `natsplug_plugin_reloads` summed over the plugins at the end.
    host_reloads: u64,
    reload_p50_ms: f64,
    reload_max_ms: f64,
    seconds: f64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    host_cpu_us_per_request: f64,
    rss_start_kib: u64,
    warmup_requests: u64,
    rss_warmup_kib: u64,
    rss_end_kib: u64,
    rss_max_kib: u64,
    slope_after_warmup: RssSlope,
    /// The same over the second half of the requests: once the memory has
    /// settled, a leak still climbs.
    slope_second_half: RssSlope,
    fds_min: u64,
    fds_max: u64,
    instances_min: Option<i64>,
    instances_max: Option<i64>,
    pool_slots: i64,
    /// `natsplug_errors` summed at the end.
    host_errors: u64,
    /// The host's warning and error lines (the first ten).
    warnings: Vec<String>,
    warning_lines: usize,
}

impl Report {
    fn new(settings: &Settings, run: &Run) -> Report {
        let (samples, reloads, latencies) = (&run.samples, &run.reloads, &run.latencies);
        let (elapsed, cpu) = (run.elapsed, run.cpu);
        let warmup_requests = (settings.requests as f64 * WARMUP_SHARE) as u64;
        let after_warmup: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.requests >= warmup_requests)
            .collect();
        let rss_warmup_kib = after_warmup.first().map_or(0, |s| s.rss_kib);
        let second_half: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.requests * 2 >= settings.requests)
            .collect();
        let percentile = |p: f64| {
            let index = ((latencies.len() as f64 * p) as usize).min(latencies.len() - 1);
            f64::from(latencies[index]) / 1000.0
        };
        let mut landed: Vec<f64> = reloads.iter().filter_map(|r| r.landed_ms).collect();
        landed.sort_by(f64::total_cmp);
        let instances = after_warmup.iter().filter_map(|s| s.warm_instances);
        let warnings: Vec<&str> = run
            .host_log
            .lines()
            .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
            .collect();
        Report {
            requests: latencies.len() as u64,
            failed: run.failed,
            reloads_done: landed.len(),
            reloads_late: reloads.len() - landed.len(),
            host_reloads: metric_sum(&run.last_metrics, "natsplug_plugin_reloads_total") as u64,
            reload_p50_ms: landed.get(landed.len() / 2).copied().unwrap_or(0.0),
            reload_max_ms: landed.last().copied().unwrap_or(0.0),
            seconds: elapsed.as_secs_f64(),
            rps: latencies.len() as f64 / elapsed.as_secs_f64(),
            p50_ms: percentile(0.50),
            p99_ms: percentile(0.99),
            p999_ms: percentile(0.999),
            max_ms: percentile(1.0),
            host_cpu_us_per_request: cpu.as_secs_f64() * 1e6 / latencies.len() as f64,
            rss_start_kib: run.rss_at_start,
            warmup_requests,
            rss_warmup_kib,
            rss_end_kib: samples.last().map_or(0, |s| s.rss_kib),
            rss_max_kib: samples.iter().map(|s| s.rss_kib).max().unwrap_or(0),
            slope_after_warmup: RssSlope::fit(&after_warmup),
            slope_second_half: RssSlope::fit(&second_half),
            fds_min: samples.iter().map(|s| s.fds).min().unwrap_or(0),
            fds_max: samples.iter().map(|s| s.fds).max().unwrap_or(0),
            instances_min: instances.clone().min(),
            instances_max: instances.max(),
            pool_slots: run.pool_slots,
            host_errors: metric_sum(&run.last_metrics, "natsplug_errors_total") as u64,
            warning_lines: warnings.len(),
            warnings: warnings.iter().take(10).map(|l| l.to_string()).collect(),
        }
    }

    /// The table: markdown, with the columns padded for a terminal.
    fn print(&self) {
        let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
        let instances = match (self.instances_min, self.instances_max) {
            (Some(min), Some(max)) => format!(
                "{max} (min {min} after warm-up; pool slots {})",
                self.pool_slots
            ),
            _ => "not read (/metrics did not answer)".to_string(),
        };
        let rows = [
            ("requests", grouped(self.requests)),
            ("failed requests", grouped(self.failed)),
            (
                "reloads done",
                format!(
                    "{} ({} counted by the host; {} not served within 60 s)",
                    self.reloads_done, self.host_reloads, self.reloads_late
                ),
            ),
            (
                "reload, rename to served",
                format!(
                    "p50 {:.0} ms, max {:.0} ms",
                    self.reload_p50_ms, self.reload_max_ms
                ),
            ),
            ("duration", format!("{:.1} s", self.seconds)),
            ("throughput", format!("{:.0} req/s", self.rps)),
            (
                "latency",
                format!(
                    "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.1} ms",
                    self.p50_ms, self.p99_ms, self.p999_ms, self.max_ms
                ),
            ),
            (
                "host CPU per request",
                format!("{:.1} µs", self.host_cpu_us_per_request),
            ),
            ("RSS before the load", mib(self.rss_start_kib)),
            (
                "RSS at warm-up end",
                format!(
                    "{} (after {} requests)",
                    mib(self.rss_warmup_kib),
                    grouped(self.warmup_requests)
                ),
            ),
            ("RSS at the end", mib(self.rss_end_kib)),
            ("RSS max", mib(self.rss_max_kib)),
            (
                "RSS slope after warm-up",
                self.slope_after_warmup.to_string(),
            ),
            ("RSS slope, second half", self.slope_second_half.to_string()),
            (
                "open fds",
                format!("min {}, max {}", self.fds_min, self.fds_max),
            ),
            ("warm instances, max", instances),
            (
                "host-counted errors",
                format!("{} (natsplug_errors_total)", self.host_errors),
            ),
            (
                "host warnings logged",
                format!("{} lines", self.warning_lines),
            ),
        ];
        let width = rows
            .iter()
            .map(|(name, _)| name.chars().count())
            .max()
            .unwrap_or(0);
        let value_width = rows
            .iter()
            .map(|(_, value)| value.chars().count())
            .max()
            .unwrap_or(0);
        println!();
        println!("| {:<width$} | {:<value_width$} |", "figure", "value");
        println!("| {} | {} |", "-".repeat(width), "-".repeat(value_width));
        for (name, value) in rows {
            println!("| {name:<width$} | {value:<value_width$} |");
        }
    }
}

/// `1234567` as `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn write_json(settings: &Settings, report: &Report, run: &Run) {
    let json = serde_json::json!({
        "machine": { "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "settings": {
            "requests": settings.requests,
            "concurrency": settings.concurrency,
            "reload_secs": settings.reload_every.map(|d| d.as_secs_f64()),
        },
        "report": report,
        "samples": run.samples,
        "reloads": run.reloads,
    });
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("bench");
    std::fs::create_dir_all(&dir).expect("creating target/bench");
    let file = dir.join("soak.json");
    std::fs::write(
        &file,
        serde_json::to_string_pretty(&json).expect("the report as JSON"),
    )
    .expect("writing soak.json");
    println!("\nwritten to {}", file.display());
}
