//! End-to-end load benchmark, one run, three responders on one nats-server
//! with the same payloads and the same client:
//!
//! - (a) `echo`: a raw async-nats responder that returns the payload;
//! - (b) `native`: the header injector's logic in plain Rust (decode, add
//!   two headers, encode), no WebAssembly;
//! - (c) `natsplug`: `natsplug up` serving the header-injector example.
//!
//! Each responder is its own process. Each concurrency level runs in
//! rounds; a round measures the three responders one after the other, in
//! an order that rotates from round to round, so a slow moment of a shared
//! machine does not fall on one responder only. The table shows the median
//! over the rounds of throughput, p50 and p99, and the ratios (c)/(a) and
//! (c)/(b) of the median throughputs; then the host's start-up time (cold
//! and with a warm compiled cache) and its resident memory idle and under
//! load. At concurrency 1 the latency is also measured with the three
//! responders taking turns request by request: all three are measured in
//! the same moments, each idle between two of its requests. The table is
//! printed and written, with every round, as JSON to
//! `target/bench/end_to_end.json`.
//!
//! `cargo bench -p natsplug-suite --bench end_to_end`, options after `--`:
//! `--seconds S` per responder and round (default 3), `--rounds N`
//! (default 3), `--concurrency 1,64,256`, `--host-threads N` (the host's
//! async threads, `TOKIO_WORKER_THREADS`) and `--host-workers N` (its
//! plugin worker threads, `--workers`); both default to the host's choice.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use natsplug_protocol::{self as protocol, HeaderMutations, PhaseReply};
use natsplug_suite::client::request;
use natsplug_suite::process::cpu_time;
use natsplug_suite::{NatsServer, guests, natsplug_binary};

const ECHO_SUBJECT: &str = "bench.echo";
const NATIVE_SUBJECT: &str = "bench.native";
const HOST_SUBJECT: &str = "bench.host.header-injector.request_filter";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(position) = args.iter().position(|a| a == "--responder") {
        return responder(&args[position + 1], &args[position + 2]);
    }
    let seconds: f64 = option(&args, "--seconds").map_or(3.0, |s| s.parse().expect("--seconds S"));
    let settings = Settings {
        duration: Duration::from_secs_f64(seconds),
        rounds: option(&args, "--rounds").map_or(3, |s| s.parse().expect("--rounds N")),
        levels: option(&args, "--concurrency")
            .unwrap_or("1,64,256")
            .split(',')
            .map(|c| c.parse().expect("--concurrency N,N"))
            .collect(),
        host_threads: option(&args, "--host-threads").map(|s| s.parse().expect("--host-threads N")),
        host_workers: option(&args, "--host-workers").map(|s| s.parse().expect("--host-workers N")),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(&settings));
}

/// What to run.
struct Settings {
    /// Measuring time per responder and round.
    duration: Duration,
    rounds: usize,
    levels: Vec<usize>,
    /// The host's async threads, when set.
    host_threads: Option<usize>,
    /// The host's plugin worker threads, when set.
    host_workers: Option<usize>,
}

fn option<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// Run responder `kind` against `url` until killed.
fn responder(kind: &str, url: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let subject = if kind == "echo" {
            ECHO_SUBJECT
        } else {
            NATIVE_SUBJECT
        };
        let mut subscriber = client
            .queue_subscribe(subject, "bench".into())
            .await
            .unwrap();
        client.flush().await.unwrap();
        println!("ready");
        while let Some(message) = subscriber.next().await {
            let Some(reply) = message.reply else { continue };
            let payload = if kind == "echo" {
                message.payload
            } else {
                native_filter(&message.payload).into()
            };
            let _ = client.publish(reply, payload).await;
        }
    });
}

/// The header injector, natively.
fn native_filter(payload: &[u8]) -> Vec<u8> {
    let request =
        protocol::decode_request_view(payload, natsplug_protocol::Phase::RequestFilter).unwrap();
    let reply = PhaseReply {
        request_headers: Some(HeaderMutations {
            set: vec![
                ("x-plugin".into(), "header-injector".into()),
                ("x-request-id".into(), request.request_id.to_string()),
            ],
            remove: vec![],
        }),
        ..PhaseReply::next(request.request_id)
    };
    protocol::encode_reply(&reply)
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    /// Spawn `command` and wait for its first stdout line.
    fn start(mut command: Command) -> (Process, String, Duration) {
        let started = Instant::now();
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("a ready line").unwrap();
        let elapsed = started.elapsed();
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        (Process(child), first, elapsed)
    }

    fn resident_mib(&self) -> f64 {
        resident_mib(self.0.id())
    }
}

/// Resident memory of process `pid` in MiB (0 when it cannot be read).
fn resident_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn start_host(
    url: &str,
    plugins: &std::path::Path,
    cache: &std::path::Path,
    settings: &Settings,
) -> (Process, Duration) {
    let mut command = Command::new(natsplug_binary());
    if let Some(threads) = settings.host_threads {
        command.env("TOKIO_WORKER_THREADS", threads.to_string());
    }
    command
        .args([
            "up",
            "--nats",
            url,
            "--prefix",
            "bench.host",
            "--no-watch",
            "--plugins",
        ])
        .arg(plugins)
        .arg("--cache-dir")
        .arg(cache)
        .env("RUST_LOG", "warn");
    if let Some(workers) = settings.host_workers {
        command.args(["--workers", &workers.to_string()]);
    }
    let (process, line, elapsed) = Process::start(command);
    assert!(line.starts_with("natsplug ready"), "{line}");
    (process, elapsed)
}

#[derive(Debug, Clone, serde::Serialize)]
struct Measurement {
    responder: &'static str,
    concurrency: usize,
    requests: usize,
    throughput: f64,
    p50_us: f64,
    p99_us: f64,
    /// CPU time the responder's process spent per request, user and system.
    cpu_us_per_request: f64,
}

/// Send requests to `subject` from `concurrency` tasks for `duration`.
async fn measure(
    client: &async_nats::Client,
    (responder, subject, pid): (&'static str, &'static str, u32),
    payload: bytes::Bytes,
    concurrency: usize,
    duration: Duration,
) -> Measurement {
    // Warm up.
    for _ in 0..200 {
        client.request(subject, payload.clone()).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let cpu_before = cpu_time(pid);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, payload, stop) = (client.clone(), payload.clone(), stop.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    client.request(subject, payload.clone()).await.unwrap();
                    latencies.push(sent.elapsed().as_nanos() as u64);
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_time(pid).saturating_sub(cpu_before);
    latencies.sort_unstable();
    let percentile = |p: f64| {
        latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)] as f64 / 1000.0
    };
    Measurement {
        responder,
        concurrency,
        requests: latencies.len(),
        throughput: latencies.len() as f64 / elapsed,
        p50_us: percentile(0.50),
        p99_us: percentile(0.99),
        cpu_us_per_request: cpu.as_secs_f64() * 1e6 / latencies.len() as f64,
    }
}

/// Latency at concurrency 1 with the responders taking turns request by
/// request: one client sends to (a), (b), (c), (a), ... for `duration`, so
/// every responder is measured in the same moments and a slow spell of the
/// machine falls on all three alike. Returns (responder, p50 µs, p99 µs).
async fn interleaved_latency(
    client: &async_nats::Client,
    subjects: &[(&'static str, &'static str, u32)],
    payload: bytes::Bytes,
    duration: Duration,
) -> Vec<(&'static str, f64, f64)> {
    let mut latencies = vec![Vec::new(); subjects.len()];
    let until = Instant::now() + duration;
    while Instant::now() < until {
        for (samples, &(_, subject, _)) in latencies.iter_mut().zip(subjects) {
            let sent = Instant::now();
            client.request(subject, payload.clone()).await.unwrap();
            samples.push(sent.elapsed().as_nanos() as u64);
        }
    }
    subjects
        .iter()
        .zip(latencies)
        .map(|(&(responder, _, _), mut samples)| {
            samples.sort_unstable();
            let percentile = |p: f64| samples[(samples.len() as f64 * p) as usize] as f64 / 1000.0;
            (responder, percentile(0.50), percentile(0.99))
        })
        .collect()
}

async fn run(settings: &Settings) {
    let duration = settings.duration;
    let server = NatsServer::start();
    let url = server.url();
    let plugins = tempfile::tempdir().unwrap();
    for (name, path) in [
        ("header-injector", guests::HEADER_INJECTOR),
        ("authz", guests::AUTHZ),
        ("body-redactor", guests::BODY_REDACTOR),
        ("access-logger", guests::ACCESS_LOGGER),
    ] {
        natsplug_suite::host::install_file(plugins.path(), name, path);
    }
    let cache = tempfile::tempdir().unwrap();

    // Start-up, cold then warm.
    let (cold, cold_start) = start_host(&url, plugins.path(), cache.path(), settings);
    drop(cold);
    let (host, warm_start) = start_host(&url, plugins.path(), cache.path(), settings);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_mib = host.resident_mib();

    let me = std::env::current_exe().unwrap();
    let mut responders = Vec::new();
    for kind in ["echo", "native"] {
        let mut command = Command::new(&me);
        command.args(["--responder", kind, &url]);
        responders.push(Process::start(command).0);
    }

    let client = async_nats::connect(&url).await.unwrap();
    let payload: bytes::Bytes = protocol::encode_request(&{
        let mut r = request(
            "request_filter",
            "0b8f5e1c-4d7e-4a8e-9d55-2f1c3a7d9e01",
            "GET",
            "/api/v1/orders",
        );
        r.request.headers = (0..8)
            .map(|i| (format!("x-header-{i}"), "value".repeat(4)))
            .collect();
        r.request.body = Some(b"{\"item\":\"book\",\"quantity\":2}".to_vec());
        r
    })
    .into();

    let subjects = [
        ("echo", ECHO_SUBJECT, responders[0].0.id()),
        ("native", NATIVE_SUBJECT, responders[1].0.id()),
        ("natsplug", HOST_SUBJECT, host.0.id()),
    ];
    let mut rounds = Vec::new();
    let mut summary = Vec::new();
    let mut peak_mib: f64 = idle_mib;
    println!(
        "{:>10} {:>11} {:>12} {:>10} {:>10} {:>12} {:>9} {:>9}",
        "responder", "concurrency", "req/s", "p50 µs", "p99 µs", "CPU µs/req", "c/a", "c/b"
    );
    for &concurrency in &settings.levels {
        let mut by_responder: [Vec<Measurement>; 3] = Default::default();
        for round in 0..settings.rounds {
            for turn in 0..subjects.len() {
                let which = (round + turn) % subjects.len();
                let responder = subjects[which].0;
                let sampler = (responder == "natsplug").then(|| {
                    let pid = host.0.id();
                    std::thread::spawn(move || {
                        let mut peak: f64 = 0.0;
                        let until = Instant::now() + duration;
                        while Instant::now() < until {
                            peak = peak.max(resident_mib(pid));
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        peak
                    })
                });
                let measured = measure(
                    &client,
                    subjects[which],
                    payload.clone(),
                    concurrency,
                    duration,
                )
                .await;
                if let Some(sampler) = sampler {
                    peak_mib = peak_mib.max(sampler.join().unwrap());
                }
                by_responder[which].push(measured);
            }
        }
        let [echo, native, hosted] = by_responder.each_ref().map(|m| median_of(m));
        for m in [&echo, &native, &hosted] {
            let (ca, cb) = if m.responder == "natsplug" {
                (
                    format!("{:.2}", hosted.throughput / echo.throughput),
                    format!("{:.2}", hosted.throughput / native.throughput),
                )
            } else {
                (String::new(), String::new())
            };
            println!(
                "{:>10} {:>11} {:>12.0} {:>10.1} {:>10.1} {:>12.1} {:>9} {:>9}",
                m.responder,
                m.concurrency,
                m.throughput,
                m.p50_us,
                m.p99_us,
                m.cpu_us_per_request,
                ca,
                cb
            );
        }
        summary.extend([echo, native, hosted]);
        rounds.extend(by_responder.into_iter().flatten());
    }
    println!();
    let interleaved = interleaved_latency(
        &client,
        &subjects,
        payload.clone(),
        duration * settings.rounds as u32,
    )
    .await;
    let echo_p50 = interleaved[0].1;
    print!("concurrency 1, responders taking turns request by request: p50/p99 µs");
    for (responder, p50, p99) in &interleaved {
        print!(" {responder} {p50:.1}/{p99:.1}");
    }
    println!(
        "; natsplug p50 {:+.1} µs over echo",
        interleaved[2].1 - echo_p50
    );
    println!(
        "start to ready with 4 plugins: cold {:.0} ms, warm cache {:.0} ms",
        cold_start.as_secs_f64() * 1000.0,
        warm_start.as_secs_f64() * 1000.0
    );
    println!("host resident memory: idle {idle_mib:.1} MiB, peak under load {peak_mib:.1} MiB");

    let report = serde_json::json!({
        "machine": { "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "seconds_per_run": duration.as_secs_f64(),
        "rounds": settings.rounds,
        "host_threads": settings.host_threads,
        "host_workers": settings.host_workers,
        "results": summary,
        "every_round": rounds,
        "interleaved_concurrency_1": interleaved
            .iter()
            .map(|(responder, p50, p99)| serde_json::json!({ "responder": responder, "p50_us": p50, "p99_us": p99 }))
            .collect::<Vec<_>>(),
        "startup_ms": { "cold": cold_start.as_secs_f64() * 1000.0, "warm_cache": warm_start.as_secs_f64() * 1000.0 },
        "resident_mib": { "idle": idle_mib, "peak_under_load": peak_mib },
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("end_to_end.json");
    std::fs::write(&file, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("written to {}", file.display());
    drop(responders);
    drop(host);
}

/// The median of each figure over the rounds of one responder.
fn median_of(rounds: &[Measurement]) -> Measurement {
    let median = |figure: fn(&Measurement) -> f64| {
        let mut values: Vec<f64> = rounds.iter().map(figure).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    Measurement {
        responder: rounds[0].responder,
        concurrency: rounds[0].concurrency,
        requests: rounds.iter().map(|m| m.requests).sum(),
        throughput: median(|m| m.throughput),
        p50_us: median(|m| m.p50_us),
        p99_us: median(|m| m.p99_us),
        cpu_us_per_request: median(|m| m.cpu_us_per_request),
    }
}
