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
//! (c)/(b) of the median throughputs, and each responder's CPU time and
//! instructions per request with the ratio (c)/(a) of the instructions;
//! then the host's start-up time (cold and with a warm compiled cache) and
//! its resident memory idle and under load. At concurrency 1 the latency is also measured with the three
//! responders taking turns request by request: all three are measured in
//! the same moments, each idle between two of its requests. Then one line
//! per target of the second performance round (docs/performance.md),
//! `goal: ...: met` or `not met`, from the same medians: (c)/(a)
//! throughput at 64 and 256, (c)/(a) CPU per request at 64, (c)/(a) p99 at
//! 256 (each with (b)/(a) beside it, how the native filter fares against
//! the same bound) and the interleaved p50 over the echo's. The table is printed and
//! written, with every round and the goals, as JSON to
//! `target/bench/end_to_end.json`.
//!
//! `cargo bench -p natsplug-suite --bench end_to_end`, options after `--`:
//! `--seconds S` per responder and round (default 3), `--rounds N`
//! (default 3), `--concurrency 1,64,256`, `--host-threads N` (the host's
//! async threads, `TOKIO_WORKER_THREADS`) and `--host-workers N` (its
//! plugin worker threads, `--workers`); both default to the host's choice.
//! `--count-event E` counts perf event E instead of instructions in the
//! instruction columns (e.g. `task-clock`, in ms, to check the counting
//! against the CPU column where the CPU has no hardware counters).
//!
//! `--drive URL SUBJECT PID` sends only the load (`--concurrency N`, one
//! level, default 64; `--seconds S`) and prints the measurement of process
//! PID as one JSON line, for `benches/profile.sh`.
//!
//! Instructions are counted by `perf stat` (`PERF` names another binary)
//! attached to each responder's process, its counters enabled and disabled
//! through its control FIFO right at the edges of the measured window:
//! user space and kernel, or user space only when the kernel's share is
//! refused (the table's header says which). Where perf is missing or the
//! CPU has no counters for it (many virtual machines), a line says why and
//! the columns show `-`; the rest of the benchmark runs as before.
//!
//! There, when valgrind is installed, the run ends with a callgrind pass:
//! each responder is started again alone under `valgrind --tool=callgrind`
//! and driven at concurrency 64 for `--callgrind-seconds S` (default 4),
//! its counters zeroed after the warm-up and dumped at the end of the
//! window (`callgrind_control`), and one line gives each one's instructions
//! per request (user space) and the host's ratios to the echo's and the
//! native filter's; the JSON has them under `callgrind_concurrency_64`.
//! Valgrind runs the responders about 50 times slower, so that pass
//! measures counts only. `--callgrind` runs it where perf counts too,
//! `--no-callgrind` never.

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
    if let Some(position) = args.iter().position(|a| a == "--drive") {
        let (url, subject, pid) = (
            &args[position + 1],
            &args[position + 2],
            &args[position + 3],
        );
        let concurrency =
            option(&args, "--concurrency").map_or(64, |s| s.parse().expect("--concurrency N"));
        return drive(
            url,
            subject,
            pid.parse().expect("--drive URL SUBJECT PID"),
            (concurrency, Duration::from_secs_f64(seconds)),
        );
    }
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
        count_event: option(&args, "--count-event")
            .unwrap_or("instructions")
            .to_string(),
        callgrind: if args.iter().any(|a| a == "--no-callgrind") {
            CallgrindChoice::Never
        } else if args.iter().any(|a| a == "--callgrind") {
            CallgrindChoice::Always
        } else {
            CallgrindChoice::Auto
        },
        callgrind_duration: Duration::from_secs_f64(
            option(&args, "--callgrind-seconds")
                .map_or(4.0, |s| s.parse().expect("--callgrind-seconds S")),
        ),
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
    /// The perf event counted per request (`instructions` unless
    /// `--count-event` says otherwise).
    count_event: String,
    /// Whether to count instructions by callgrind too.
    callgrind: CallgrindChoice,
    /// How long each responder is driven under callgrind.
    callgrind_duration: Duration,
}

/// When the callgrind pass runs (`--callgrind`, `--no-callgrind`).
#[derive(Debug, Clone, Copy)]
enum CallgrindChoice {
    /// Where perf counts no instructions.
    Auto,
    Always,
    Never,
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

/// Load only, for a profiler watching the responder: send header-injector
/// requests to `subject` on `url` from `concurrency` tasks for `duration`,
/// and print the measurement of responder process `pid` as one JSON line.
fn drive(url: &str, subject: &str, pid: u32, (concurrency, duration): (usize, Duration)) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // `measure` takes a static subject, as the table's responders have.
    let subject: &'static str = Box::leak(subject.to_string().into_boxed_str());
    let measured = runtime.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let counting = Counting::probe("instructions");
        if let Counting::Off(_) = counting {
            eprintln!("{}", counting.describe());
        }
        measure(
            &client,
            ("driven", subject, pid),
            request_payload(),
            (concurrency, duration),
            &counting,
        )
        .await
    });
    println!("{}", serde_json::to_string(&measured).unwrap());
}

/// The phase request every responder gets: a `request_filter` request with
/// 8 headers and a small body.
fn request_payload() -> bytes::Bytes {
    protocol::encode_request(&{
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
    .into()
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
    host_arguments(&mut command, url, plugins, cache);
    if let Some(workers) = settings.host_workers {
        command.args(["--workers", &workers.to_string()]);
    }
    let (process, line, elapsed) = Process::start(command);
    assert!(line.starts_with("natsplug ready"), "{line}");
    (process, elapsed)
}

/// `natsplug up` on `url` serving `plugins` under the benchmark's prefix,
/// its compiled components cached in `cache`: the arguments and the
/// environment, added to `command`.
fn host_arguments(
    command: &mut Command,
    url: &str,
    plugins: &std::path::Path,
    cache: &std::path::Path,
) {
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
    /// Instructions the responder's process executed per request over the
    /// measured window (see [`Counting`]); `None` when not counted.
    instructions_per_request: Option<f64>,
}

/// Send requests to `subject` from `concurrency` tasks for `duration`.
async fn measure(
    client: &async_nats::Client,
    (responder, subject, pid): (&'static str, &'static str, u32),
    payload: bytes::Bytes,
    (concurrency, duration): (usize, Duration),
    counting: &Counting,
) -> Measurement {
    // perf attaches during the warm-up, counting nothing yet.
    let window = counting.attach(pid);
    // Warm up.
    for _ in 0..200 {
        client.request(subject, payload.clone()).await.unwrap();
    }
    let window = window.map(|w| {
        w.and_then(|mut w| {
            w.start()?;
            Ok(w)
        })
    });
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
    let instructions = match window.map(|w| w.and_then(Window::stop)) {
        Some(Ok(count)) => Some(count / latencies.len() as f64),
        Some(Err(reason)) => {
            println!(
                "instructions: not counted for {responder} at concurrency {concurrency}: {reason}"
            );
            None
        }
        None => None,
    };
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
        instructions_per_request: instructions,
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
    let payload = request_payload();

    let subjects = [
        ("echo", ECHO_SUBJECT, responders[0].0.id()),
        ("native", NATIVE_SUBJECT, responders[1].0.id()),
        ("natsplug", HOST_SUBJECT, host.0.id()),
    ];
    let mut rounds = Vec::new();
    let mut summary = Vec::new();
    let mut peak_mib: f64 = idle_mib;
    let counting = Counting::probe(&settings.count_event);
    println!("{}", counting.describe());
    println!(
        "{:>10} {:>11} {:>12} {:>10} {:>10} {:>12} {:>14} {:>9} {:>9} {:>9}",
        "responder",
        "concurrency",
        "req/s",
        "p50 µs",
        "p99 µs",
        "CPU µs/req",
        counting.header(),
        "c/a",
        "c/b",
        "instr c/a"
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
                    (concurrency, duration),
                    &counting,
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
            let (ca, cb, instructions_ca) = if m.responder == "natsplug" {
                (
                    format!("{:.2}", hosted.throughput / echo.throughput),
                    format!("{:.2}", hosted.throughput / native.throughput),
                    hosted
                        .instructions_per_request
                        .zip(echo.instructions_per_request)
                        .map_or("-".into(), |(c, a)| format!("{:.2}", c / a)),
                )
            } else {
                (String::new(), String::new(), String::new())
            };
            println!(
                "{:>10} {:>11} {:>12.0} {:>10.1} {:>10.1} {:>12.1} {:>14} {:>9} {:>9} {:>9}",
                m.responder,
                m.concurrency,
                m.throughput,
                m.p50_us,
                m.p99_us,
                m.cpu_us_per_request,
                m.instructions_per_request
                    .map_or("-".into(), |i| if i < 100.0 {
                        format!("{i:.4}")
                    } else {
                        format!("{i:.0}")
                    }),
                ca,
                cb,
                instructions_ca
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
    let goals = goals(
        &summary,
        interleaved[2].1 - echo_p50,
        interleaved[1].1 - echo_p50,
    );
    for goal in &goals {
        println!(
            "goal: {}: {}",
            goal.text,
            if goal.met { "met" } else { "not met" }
        );
    }
    println!(
        "start to ready with 4 plugins: cold {:.0} ms, warm cache {:.0} ms",
        cold_start.as_secs_f64() * 1000.0,
        warm_start.as_secs_f64() * 1000.0
    );
    println!("host resident memory: idle {idle_mib:.1} MiB, peak under load {peak_mib:.1} MiB");

    // Instructions by callgrind where perf counts none: the responders
    // measured above make way for the same ones under valgrind.
    drop(responders);
    drop(host);
    let run_callgrind = match settings.callgrind {
        CallgrindChoice::Never => Err("not asked for (--no-callgrind)".to_string()),
        CallgrindChoice::Auto if matches!(counting, Counting::On { .. }) => {
            Err("perf counts instructions here (--callgrind to count them both ways)".to_string())
        }
        _ => callgrind_available(),
    };
    let callgrind = match run_callgrind {
        Ok(()) => {
            callgrind_pass(
                &client,
                &url,
                (plugins.path(), cache.path()),
                payload.clone(),
                settings.callgrind_duration,
            )
            .await
        }
        Err(reason) => {
            println!("instructions by callgrind: skipped: {reason}");
            Vec::new()
        }
    };
    let counted = |responder: &str| {
        callgrind
            .iter()
            .find(|(r, _)| *r == responder)
            .and_then(|(_, result)| result.as_ref().ok())
            .and_then(|m| m.instructions_per_request)
    };
    if !callgrind.is_empty() {
        print!(
            "instructions per request at concurrency 64, by callgrind (each responder alone \
             under valgrind, {} s, user space):",
            settings.callgrind_duration.as_secs_f64()
        );
        for (responder, result) in &callgrind {
            match result
                .as_ref()
                .ok()
                .and_then(|m| m.instructions_per_request)
            {
                Some(count) => print!(" {responder} {count:.0}"),
                None => print!(
                    " {responder} - ({})",
                    result.as_ref().err().map_or("not counted", String::as_str)
                ),
            }
        }
        if let (Some(host), Some(echo), Some(native)) =
            (counted("natsplug"), counted("echo"), counted("native"))
        {
            print!(
                "; natsplug {:.2} × echo, {:.2} × native",
                host / echo,
                host / native
            );
        }
        println!();
    }

    let report = serde_json::json!({
        "machine": { "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "seconds_per_run": duration.as_secs_f64(),
        "rounds": settings.rounds,
        "host_threads": settings.host_threads,
        "host_workers": settings.host_workers,
        "counting": match &counting {
            Counting::On { event, user_only } => serde_json::json!({
                "event": event,
                "scope": if *user_only { "user" } else { "user+kernel" },
            }),
            Counting::Callgrind { .. } => serde_json::json!({ "event": "callgrind" }),
            Counting::Off(reason) => serde_json::json!({ "not_counted": reason }),
        },
        "results": summary,
        "every_round": rounds,
        "interleaved_concurrency_1": interleaved
            .iter()
            .map(|(responder, p50, p99)| serde_json::json!({ "responder": responder, "p50_us": p50, "p99_us": p99 }))
            .collect::<Vec<_>>(),
        "goals": goals
            .iter()
            .map(|goal| serde_json::json!({ "goal": goal.text, "met": goal.met }))
            .collect::<Vec<_>>(),
        "startup_ms": { "cold": cold_start.as_secs_f64() * 1000.0, "warm_cache": warm_start.as_secs_f64() * 1000.0 },
        "resident_mib": { "idle": idle_mib, "peak_under_load": peak_mib },
        "callgrind_concurrency_64": callgrind
            .iter()
            .map(|(responder, result)| match result {
                Ok(m) => serde_json::json!({
                    "responder": responder,
                    "instructions_per_request": m.instructions_per_request,
                    "requests": m.requests,
                }),
                Err(reason) => serde_json::json!({ "responder": responder, "not_counted": reason }),
            })
            .collect::<Vec<_>>(),
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("end_to_end.json");
    std::fs::write(&file, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("written to {}", file.display());
}

/// One of the second round's targets, as this run measured it.
struct Goal {
    text: String,
    met: bool,
}

/// The second round's targets (docs/performance.md), judged on the medians
/// of this run: throughput at least 0.85 × the raw echo's at concurrency 64
/// and 256, host CPU per request at 64 at most twice the echo's, p99 at 256
/// at most 1.2 × the echo's, and p50 at concurrency 1 (the interleaved
/// measurement, `p50_over_echo_us`; the native filter's is
/// `native_p50_over_echo_us`) at most 30 µs over the echo's. A level
/// this run did not measure is left out. Each ratio to the echo is followed
/// by the native filter's in the same run: the same logic without
/// WebAssembly, so how far a plain Rust responder lands from the bound.
fn goals(
    summary: &[Measurement],
    p50_over_echo_us: f64,
    native_p50_over_echo_us: f64,
) -> Vec<Goal> {
    let at = |responder: &str, concurrency: usize| {
        summary
            .iter()
            .find(|m| m.responder == responder && m.concurrency == concurrency)
    };
    // The native filter's ratio to the echo of `figure`, as a note.
    let native = |concurrency: usize, figure: fn(&Measurement) -> f64| match (
        at("echo", concurrency),
        at("native", concurrency),
    ) {
        (Some(echo), Some(native)) => {
            format!("; native filter {:.2} ×", figure(native) / figure(echo))
        }
        _ => String::new(),
    };
    let mut goals = Vec::new();
    for concurrency in [64, 256] {
        if let (Some(echo), Some(hosted)) = (at("echo", concurrency), at("natsplug", concurrency)) {
            let ratio = hosted.throughput / echo.throughput;
            goals.push(Goal {
                text: format!(
                    "throughput at concurrency {concurrency} ≥ 0.85 × echo: {ratio:.2} × ({:.0} against {:.0} req/s{})",
                    hosted.throughput,
                    echo.throughput,
                    native(concurrency, |m| m.throughput)
                ),
                met: ratio >= 0.85,
            });
        }
    }
    if let (Some(echo), Some(hosted)) = (at("echo", 64), at("natsplug", 64)) {
        let ratio = hosted.cpu_us_per_request / echo.cpu_us_per_request;
        goals.push(Goal {
            text: format!(
                "host CPU per request at concurrency 64 ≤ 2 × echo: {ratio:.2} × ({:.1} against {:.1} µs{})",
                hosted.cpu_us_per_request,
                echo.cpu_us_per_request,
                native(64, |m| m.cpu_us_per_request)
            ),
            met: ratio <= 2.0,
        });
    }
    if let (Some(echo), Some(hosted)) = (at("echo", 256), at("natsplug", 256)) {
        let ratio = hosted.p99_us / echo.p99_us;
        goals.push(Goal {
            text: format!(
                "p99 at concurrency 256 ≤ 1.2 × echo: {ratio:.2} × ({:.0} against {:.0} µs{})",
                hosted.p99_us,
                echo.p99_us,
                native(256, |m| m.p99_us)
            ),
            met: ratio <= 1.2,
        });
    }
    goals.push(Goal {
        text: format!(
            "p50 at concurrency 1 ≤ echo + 30 µs: {p50_over_echo_us:+.1} µs (native filter {native_p50_over_echo_us:+.1} µs)"
        ),
        met: p50_over_echo_us <= 30.0,
    });
    goals
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
        instructions_per_request: rounds
            .iter()
            .map(|m| m.instructions_per_request)
            .collect::<Option<Vec<f64>>>()
            .map(|mut values| {
                values.sort_by(f64::total_cmp);
                values[values.len() / 2]
            }),
    }
}

/// How the responders' instructions are counted: by `perf stat` attached
/// to the responder's process (every thread, and the threads they start),
/// its counters enabled just before a measured window and disabled just
/// after, through its control FIFO, so the count covers exactly the
/// window. `Off` holds why nothing is counted.
#[derive(Debug, Clone)]
enum Counting {
    On {
        /// The event as given to `perf stat`, e.g. `instructions` or
        /// `instructions:u`.
        event: String,
        /// `true` when the kernel's share is not counted.
        user_only: bool,
    },
    /// The responder runs under `valgrind --tool=callgrind`, writing its
    /// dumps into `dumps`: its counters are zeroed at the start of the
    /// window and dumped at its end (`callgrind_control`).
    Callgrind {
        dumps: std::path::PathBuf,
    },
    Off(String),
}

impl Counting {
    /// Find out whether `perf stat` counts `event` here, with the kernel's
    /// share if it may, else user space only.
    fn probe(event: &str) -> Counting {
        let first = match probe_event(event) {
            Ok(counting) => return counting,
            Err(reason) => reason,
        };
        if !event.contains(':')
            && let Ok(counting) = probe_event(&format!("{event}:u"))
        {
            return counting;
        }
        if first.contains("<not supported>") || first.contains("not installed") {
            return Counting::Off(first);
        }
        // Otherwise most likely refused: say what the kernel allows.
        let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
            .map_or_else(|_| "unreadable".into(), |v| v.trim().to_string());
        Counting::Off(format!("{first} (kernel.perf_event_paranoid = {paranoid})"))
    }

    /// Column header: the count and what it includes.
    fn header(&self) -> String {
        match self {
            Counting::On { event, user_only } => {
                let base = event.split(':').next().unwrap_or(event);
                let name = if base == "instructions" {
                    "instr"
                } else {
                    base
                };
                format!("{name}/req {}", if *user_only { "u" } else { "u+k" })
            }
            Counting::Callgrind { .. } => "instr/req u".into(),
            Counting::Off(_) => "instr/req".into(),
        }
    }

    /// One line saying what the instruction columns hold.
    fn describe(&self) -> String {
        match self {
            Counting::On { event, user_only } => format!(
                "instructions: counted by `perf stat -e {event}` over each measured window, {}",
                if *user_only {
                    "user space only (the kernel's share was refused)"
                } else {
                    "user space and kernel"
                }
            ),
            Counting::Callgrind { .. } => {
                "instructions: counted by callgrind over each measured window, user space only"
                    .into()
            }
            Counting::Off(reason) => format!("instructions: not counted: {reason}"),
        }
    }

    /// Attach a counter, disabled, to process `pid`; `None` when counting
    /// is off.
    fn attach(&self, pid: u32) -> Option<Result<Window, String>> {
        match self {
            Counting::On { event, .. } => Some(PerfWindow::attach(event, pid).map(Window::Perf)),
            Counting::Callgrind { dumps } => Some(Ok(Window::Callgrind(CallgrindWindow {
                pid,
                dumps: dumps.clone(),
            }))),
            Counting::Off(_) => None,
        }
    }
}

/// The `perf` binary: `PERF` or `perf` on the path.
fn perf_binary() -> String {
    std::env::var("PERF").unwrap_or_else(|_| "perf".into())
}

/// Count `event` over `true` to learn whether it can be counted at all.
fn probe_event(event: &str) -> Result<Counting, String> {
    let output = Command::new(perf_binary())
        .args(["stat", "-x,", "-e", event, "--", "true"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                "`perf` is not installed (Debian: `apt-get install linux-perf`; or set PERF)"
                    .to_string()
            } else {
                format!("running `perf`: {e}")
            }
        })?;
    let text = String::from_utf8_lossy(&output.stderr);
    match perf_count(&text, event) {
        Ok(_) => Ok(Counting::On {
            event: event.into(),
            user_only: perf_event_names(&text, event)
                .iter()
                .all(|n| n.contains(":u")),
        }),
        Err(value) if value == "<not supported>" => Err(format!(
            "perf stat reports `{event}` as {value}: the CPU's hardware counters are not \
             available here (no PMU, as in a virtual machine without a virtual one)"
        )),
        Err(value) if value.starts_with('<') => {
            Err(format!("perf stat reports `{event}` as {value}"))
        }
        Err(_) => Err(format!(
            "`perf stat -e {event}` failed: {}",
            text.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no output")
                .trim()
        )),
    }
}

/// The names in `perf stat -x,` output that stand for `event`: the event
/// itself, with a modifier (`instructions:u`) or per PMU of a hybrid CPU
/// (`cpu_core/instructions/`).
fn perf_event_names(output: &str, event: &str) -> Vec<String> {
    let base = |name: &str| -> String {
        let name = name.trim().trim_end_matches('/');
        let name = name.rsplit('/').next().unwrap_or(name);
        name.split(':').next().unwrap_or(name).to_string()
    };
    output
        .lines()
        .filter_map(|line| line.split(',').nth(2))
        .filter(|name| base(name) == base(event))
        .map(|name| name.trim().to_string())
        .collect()
}

/// The count of `event` in `perf stat -x,` output, summed over the PMUs
/// of a hybrid CPU; `Err` holds what perf printed instead of a number
/// (`<not supported>`, `<not counted>`) or says it printed nothing.
fn perf_count(output: &str, event: &str) -> Result<f64, String> {
    let names = perf_event_names(output, event);
    let mut total = None;
    for line in output.lines() {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() < 3 || !names.iter().any(|n| n == fields[2].trim()) {
            continue;
        }
        match fields[0].trim().parse::<f64>() {
            Ok(value) => *total.get_or_insert(0.0) += value,
            Err(_) => return Err(fields[0].trim().to_string()),
        }
    }
    total.ok_or_else(|| format!("no count of `{event}` in perf's output"))
}

/// A counter over one measured window of one responder process.
enum Window {
    Perf(PerfWindow),
    Callgrind(CallgrindWindow),
}

impl Window {
    /// Start counting.
    fn start(&mut self) -> Result<(), String> {
        match self {
            Window::Perf(window) => window.start(),
            Window::Callgrind(window) => window.start(),
        }
    }

    /// Stop counting and return the count.
    fn stop(self) -> Result<f64, String> {
        match self {
            Window::Perf(window) => window.stop(),
            Window::Callgrind(window) => window.stop(),
        }
    }
}

/// A `perf stat` attached to one process, counting only between
/// [`PerfWindow::start`] and [`PerfWindow::stop`].
struct PerfWindow {
    perf: Child,
    /// Commands to perf (`enable`, `disable`).
    control: std::fs::File,
    /// perf's `ack` after each command, read without blocking.
    acks: std::fs::File,
    event: String,
    dir: tempfile::TempDir,
}

impl PerfWindow {
    /// Start `perf stat -e event -p pid` with its counters disabled.
    fn attach(event: &str, pid: u32) -> Result<PerfWindow, String> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
        let (control, acks) = (dir.path().join("control"), dir.path().join("acks"));
        for fifo in [&control, &acks] {
            let path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())
                .map_err(|e| e.to_string())?;
            // SAFETY: `path` is a NUL-terminated string that outlives the call.
            if unsafe { libc::mkfifo(path.as_ptr(), 0o600) } != 0 {
                return Err(format!(
                    "mkfifo {}: {}",
                    fifo.display(),
                    std::io::Error::last_os_error()
                ));
            }
        }
        let stderr = std::fs::File::create(dir.path().join("stderr")).map_err(|e| e.to_string())?;
        let perf = Command::new(perf_binary())
            .args([
                "stat",
                "-x,",
                "--delay",
                "-1",
                "-e",
                event,
                "-p",
                &pid.to_string(),
            ])
            .arg("--control")
            .arg(format!("fifo:{},{}", control.display(), acks.display()))
            .arg("-o")
            .arg(dir.path().join("counts"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("starting perf stat: {e}"))?;
        // Read and write ends open without waiting for perf to open its own.
        let open = |path: &std::path::Path| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .map_err(|e| format!("opening {}: {e}", path.display()))
        };
        Ok(PerfWindow {
            perf,
            control: open(&control)?,
            acks: open(&acks)?,
            event: event.into(),
            dir,
        })
    }

    /// Enable the counters; returns once perf says they are.
    fn start(&mut self) -> Result<(), String> {
        self.command("enable")
    }

    /// Disable the counters, stop perf and return the count.
    fn stop(mut self) -> Result<f64, String> {
        self.command("disable")?;
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(self.perf.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.perf.try_wait().map_err(|e| e.to_string())?.is_none() {
            if Instant::now() > deadline {
                return Err("perf stat did not exit within 10 s of SIGINT".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let counts = std::fs::read_to_string(self.dir.path().join("counts")).unwrap_or_default();
        perf_count(&counts, &self.event).map_err(|e| format!("perf stat: {e}"))
    }

    /// Send `command` and wait (at most 10 s) for perf's `ack`.
    fn command(&mut self, command: &str) -> Result<(), String> {
        use std::io::{Read as _, Write as _};
        self.control
            .write_all(format!("{command}\n").as_bytes())
            .map_err(|e| format!("writing to perf's control FIFO: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut answer = Vec::new();
        loop {
            let mut buffer = [0u8; 64];
            match self.acks.read(&mut buffer) {
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("reading perf's acks: {e}")),
            }
            if answer.windows(3).any(|w| w == b"ack") {
                return Ok(());
            }
            if let Ok(Some(status)) = self.perf.try_wait() {
                let stderr =
                    std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default();
                return Err(format!(
                    "perf stat exited ({status}) before `{command}`: {}",
                    stderr.lines().next().unwrap_or("no output").trim()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "perf stat did not acknowledge `{command}` within 10 s"
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Drop for PerfWindow {
    fn drop(&mut self) {
        let _ = self.perf.kill();
        let _ = self.perf.wait();
    }
}

/// A responder process running under callgrind, counting from
/// [`CallgrindWindow::start`] to [`CallgrindWindow::stop`].
struct CallgrindWindow {
    pid: u32,
    /// Where the process writes its dumps (`--callgrind-out-file`'s
    /// directory).
    dumps: std::path::PathBuf,
}

impl CallgrindWindow {
    /// Zero the process's counters.
    fn start(&mut self) -> Result<(), String> {
        callgrind_control("-z", self.pid)
    }

    /// Dump the counters and return the instructions counted since
    /// [`CallgrindWindow::start`]: the `summary:` of the newest dump.
    fn stop(self) -> Result<f64, String> {
        let before = dump_files(&self.dumps);
        callgrind_control("-d", self.pid)?;
        let dump = dump_files(&self.dumps)
            .into_iter()
            .find(|file| !before.contains(file))
            .ok_or("callgrind_control -d wrote no dump")?;
        let text = std::fs::read_to_string(&dump)
            .map_err(|e| format!("reading {}: {e}", dump.display()))?;
        text.lines()
            .find_map(|line| line.strip_prefix("summary:"))
            .and_then(|count| count.trim().parse::<f64>().ok())
            .ok_or_else(|| format!("no `summary:` line in {}", dump.display()))
    }
}

/// The dump files in `dir`.
fn dump_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// Run `callgrind_control OPTION PID`, which returns once the process did it.
fn callgrind_control(option: &str, pid: u32) -> Result<(), String> {
    let output = Command::new("callgrind_control")
        .args([option, &pid.to_string()])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running callgrind_control: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "callgrind_control {option} {pid}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Whether valgrind's callgrind can be run here; `Err` says why not.
fn callgrind_available() -> Result<(), String> {
    for tool in ["valgrind", "callgrind_control"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !found {
            return Err(format!(
                "`{tool}` is not installed (Debian: `apt-get install valgrind`)"
            ));
        }
    }
    Ok(())
}

/// Instructions per request at concurrency 64, by callgrind: each
/// responder started again alone under `valgrind --tool=callgrind` (the
/// host with a small instance pool and two workers, as valgrind cannot
/// reserve the default pool's address space), warmed up, then driven for
/// `duration` with its counters zeroed at the start and dumped at the end.
/// Valgrind runs them about 50 times slower, so only the counts mean
/// anything. Returns each responder's measurement, or why there is none.
async fn callgrind_pass(
    client: &async_nats::Client,
    url: &str,
    (plugins, cache): (&std::path::Path, &std::path::Path),
    payload: bytes::Bytes,
    duration: Duration,
) -> Vec<(&'static str, Result<Measurement, String>)> {
    let me = std::env::current_exe().unwrap();
    let mut results = Vec::new();
    for (responder, subject) in [
        ("echo", ECHO_SUBJECT),
        ("native", NATIVE_SUBJECT),
        ("natsplug", HOST_SUBJECT),
    ] {
        let dumps = tempfile::tempdir().unwrap();
        let mut command = Command::new("valgrind");
        command.arg("--tool=callgrind").arg(format!(
            "--callgrind-out-file={}",
            dumps.path().join("callgrind.out").display()
        ));
        if responder == "natsplug" {
            let config = dumps.path().join("host.toml");
            std::fs::write(&config, "[runtime]\npool_instances = 4\nworkers = 2\n").unwrap();
            command.arg(natsplug_binary());
            host_arguments(&mut command, url, plugins, cache);
            command.arg("--config").arg(&config);
        } else {
            command.arg(&me).args(["--responder", responder, url]);
        }
        let (process, line, _) = Process::start(command);
        if !line.contains("ready") {
            results.push((
                responder,
                Err(format!("did not start under valgrind: {line}")),
            ));
            continue;
        }
        let counting = Counting::Callgrind {
            dumps: dumps.path().to_path_buf(),
        };
        let measured = measure(
            client,
            (responder, subject, process.0.id()),
            payload.clone(),
            (64, duration),
            &counting,
        )
        .await;
        drop(process);
        let result = match measured.instructions_per_request {
            Some(_) => Ok(measured),
            None => Err("callgrind counted nothing".to_string()),
        };
        results.push((responder, result));
    }
    results
}
