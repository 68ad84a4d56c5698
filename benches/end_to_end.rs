//! End-to-end load benchmark, one run, three responders on one nats-server
//! with the same payloads and the same client:
//!
//! - (a) `echo`: a raw async-nats responder that returns the payload;
//! - (b) `native`: the header injector's logic in plain Rust (decode, add
//!   two headers, encode), no WebAssembly;
//! - (c) `natsplug`: `natsplug up` serving the header-injector example.
//!
//! Each responder is its own process. For each concurrency level it
//! reports throughput, p50 and p99, and the ratios (c)/(a) and (c)/(b);
//! then the host's start-up time (cold and with a warm compiled cache) and
//! its resident memory idle and under load. The table is printed and
//! written as JSON to `target/bench/end_to_end.json`.
//!
//! `cargo bench --bench end_to_end` (`-- --seconds 5 --concurrency 1,64,256`)

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use natsplug::protocol::{self, HeaderMutations, PhaseReply};
use natsplug_suite::client::request;
use natsplug_suite::{NatsServer, guests, natsplug_binary};

const ECHO_SUBJECT: &str = "bench.echo";
const NATIVE_SUBJECT: &str = "bench.native";
const HOST_SUBJECT: &str = "bench.host.header-injector.request_filter";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(position) = args.iter().position(|a| a == "--responder") {
        return responder(&args[position + 1], &args[position + 2]);
    }
    let seconds: f64 = option(&args, "--seconds").map_or(3.0, |s| s.parse().expect("--seconds N"));
    let levels: Vec<usize> = option(&args, "--concurrency")
        .unwrap_or("1,64,256")
        .split(',')
        .map(|c| c.parse().expect("--concurrency N,N"))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(Duration::from_secs_f64(seconds), &levels));
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
    let request = protocol::decode_request(payload, natsplug::Phase::RequestFilter).unwrap();
    let reply = PhaseReply {
        request_headers: Some(HeaderMutations {
            set: vec![
                ("x-plugin".into(), "header-injector".into()),
                ("x-request-id".into(), request.request_id.clone()),
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
) -> (Process, Duration) {
    let mut command = Command::new(natsplug_binary());
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
}

/// Send requests to `subject` from `concurrency` tasks for `duration`.
async fn measure(
    client: &async_nats::Client,
    responder: &'static str,
    subject: &'static str,
    payload: bytes::Bytes,
    concurrency: usize,
    duration: Duration,
) -> Measurement {
    // Warm up.
    for _ in 0..200 {
        client.request(subject, payload.clone()).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
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
    }
}

async fn run(duration: Duration, levels: &[usize]) {
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
    let (cold, cold_start) = start_host(&url, plugins.path(), cache.path());
    drop(cold);
    let (host, warm_start) = start_host(&url, plugins.path(), cache.path());
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

    let mut results = Vec::new();
    let mut peak_mib: f64 = idle_mib;
    println!(
        "{:>10} {:>11} {:>12} {:>10} {:>10} {:>9} {:>9}",
        "responder", "concurrency", "req/s", "p50 µs", "p99 µs", "c/a", "c/b"
    );
    for &concurrency in levels {
        let echo = measure(
            &client,
            "echo",
            ECHO_SUBJECT,
            payload.clone(),
            concurrency,
            duration,
        )
        .await;
        let native = measure(
            &client,
            "native",
            NATIVE_SUBJECT,
            payload.clone(),
            concurrency,
            duration,
        )
        .await;
        let sampler = {
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
        };
        let hosted = measure(
            &client,
            "natsplug",
            HOST_SUBJECT,
            payload.clone(),
            concurrency,
            duration,
        )
        .await;
        peak_mib = peak_mib.max(sampler.join().unwrap());
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
                "{:>10} {:>11} {:>12.0} {:>10.1} {:>10.1} {:>9} {:>9}",
                m.responder, m.concurrency, m.throughput, m.p50_us, m.p99_us, ca, cb
            );
        }
        results.extend([echo, native, hosted]);
    }
    println!();
    println!(
        "start to ready with 4 plugins: cold {:.0} ms, warm cache {:.0} ms",
        cold_start.as_secs_f64() * 1000.0,
        warm_start.as_secs_f64() * 1000.0
    );
    println!("host resident memory: idle {idle_mib:.1} MiB, peak under load {peak_mib:.1} MiB");

    let report = serde_json::json!({
        "machine": { "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "seconds_per_run": duration.as_secs_f64(),
        "results": results,
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
