//! `natsplug bench`: a load generator for a phase subject, printing
//! throughput and latency percentiles.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use clap::Args;
use hdrhistogram::Histogram;

use crate::remote;
use crate::request::{RequestArgs, parse_phase};
use natsplug::config::{DEFAULT_NATS_URL, SubjectsConfig};
use natsplug_protocol::{self as protocol, Action};

pub const EXAMPLES: &str = "Examples:
  natsplug bench header-injector request_filter --duration 30s --concurrency 32
  natsplug bench authz request_filter --count 10000 -H 'authorization: Bearer s3cret' --json
  natsplug bench authz request_filter --request admin.yaml --duration 1m
  natsplug bench authz request_filter --payload request.msgpack --count 5000

Without --count or --duration it runs for 10 s. Latency is measured from
sending a request to receiving its reply, in microseconds.";

/// Flags of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Plugin name.
    plugin: String,
    /// Phase: request_filter, response_filter, response_body_filter or logging.
    phase: String,
    #[command(flatten)]
    request: RequestArgs,
    /// Send this file's bytes, unchanged, as every request (instead of a
    /// request built from the flags or --request).
    #[arg(long, value_name = "FILE", conflicts_with = "request")]
    payload: Option<PathBuf>,
    /// Requests in flight at once.
    #[arg(long, short = 'c', default_value_t = 8)]
    concurrency: usize,
    /// Send this many requests, then stop.
    #[arg(long, short = 'n', conflicts_with = "duration")]
    count: Option<u64>,
    /// Send requests for this long: `500ms`, `30s`, `2m` [default: 10s].
    #[arg(long, short = 'd', value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
    /// NATS server URL.
    #[arg(long = "nats", env = "NATSPLUG_NATS_URL", default_value = DEFAULT_NATS_URL)]
    nats_url: String,
    /// Subject prefix.
    #[arg(long, env = "NATSPLUG_PREFIX", default_value_t = SubjectsConfig::default().prefix)]
    prefix: String,
    /// Seconds to wait for each reply.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
}

/// When the run stops.
#[derive(Debug, Clone, Copy)]
enum Limit {
    Count(u64),
    Duration(Duration),
}

/// What one worker (or the whole run) saw.
struct Tally {
    latency: Histogram<u64>,
    ok: u64,
    error_replies: u64,
    failed: u64,
    first_failure: Option<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            // 1 µs to 1 h, 3 significant digits.
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("valid histogram bounds"),
            ok: 0,
            error_replies: 0,
            failed: 0,
            first_failure: None,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latency
            .add(&other.latency)
            .expect("histograms of the same bounds");
        self.ok += other.ok;
        self.error_replies += other.error_replies;
        self.failed += other.failed;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
    }

    fn fail(&mut self, why: String) {
        self.failed += 1;
        self.first_failure.get_or_insert(why);
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let phase = parse_phase(&args.phase)?;
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let limit = match (args.count, args.duration) {
        (Some(0), _) => bail!("--count must be at least 1"),
        (Some(count), _) => Limit::Count(count),
        (None, Some(duration)) => Limit::Duration(duration),
        (None, None) => Limit::Duration(Duration::from_secs(10)),
    };
    let payload = match &args.payload {
        Some(path) => std::fs::read(path)
            .with_context(|| format!("reading payload file {}", path.display()))?,
        None => protocol::encode_request(&args.request.load()?.build(phase, "bench")?),
    };
    let payload = bytes::Bytes::from(payload);
    let timeout = remote::timeout(args.timeout)?;
    let subject = remote::subject(&args.prefix, &args.plugin, phase);
    let client = natsplug::nats::connect(std::slice::from_ref(&args.nats_url)).await?;
    // One request first: it fails clearly when nothing serves the subject,
    // and warms an instance up.
    remote::send(&client, &subject, phase, payload.to_vec(), timeout).await?;

    let progress = progress_bar(limit);
    let issued = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = match limit {
        Limit::Duration(duration) => Some(started + duration),
        Limit::Count(_) => None,
    };
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let client = client.clone();
        let subject = subject.clone();
        let payload = payload.clone();
        let issued = issued.clone();
        let done = done.clone();
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            loop {
                let more = match (limit, deadline) {
                    (Limit::Count(count), _) => issued.fetch_add(1, Ordering::Relaxed) < count,
                    (_, Some(deadline)) => Instant::now() < deadline,
                    (_, None) => false,
                };
                if !more {
                    break;
                }
                let sent = Instant::now();
                let result =
                    tokio::time::timeout(timeout, client.request(subject.clone(), payload.clone()))
                        .await;
                let elapsed = sent.elapsed();
                match result {
                    Ok(Ok(message)) => {
                        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
                        tally.latency.saturating_record(micros.max(1));
                        match protocol::decode_reply(&message.payload) {
                            Ok(reply) if reply.action == Action::Error => tally.error_replies += 1,
                            Ok(_) => tally.ok += 1,
                            Err(error) => tally.fail(format!("an invalid reply: {error}")),
                        }
                    }
                    Ok(Err(error)) => tally.fail(error.to_string()),
                    Err(_) => tally.fail(format!("no reply within {} s", timeout.as_secs_f64())),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            tally
        }));
    }
    let ticker = {
        let progress = progress.clone();
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let completed = done.load(Ordering::Relaxed);
                match limit {
                    Limit::Count(_) => progress.set_position(completed),
                    Limit::Duration(duration) => {
                        progress.set_position(started.elapsed().min(duration).as_millis() as u64)
                    }
                }
                let rate = completed as f64 / started.elapsed().as_secs_f64().max(1e-3);
                progress.set_message(format!("{completed} replies, {rate:.0} req/s"));
            }
        })
    };
    let mut total = Tally::new();
    for worker in workers {
        total.merge(worker.await.context("a bench worker failed")?);
    }
    let elapsed = started.elapsed();
    ticker.abort();
    progress.finish_and_clear();

    let count = total.ok + total.error_replies + total.failed;
    let figures = Figures {
        subject,
        concurrency: args.concurrency,
        count,
        elapsed,
        tally: &total,
    };
    if args.json {
        println!("{}", figures.json());
    } else {
        figures.print();
    }
    if total.failed > 0 {
        return Err(anyhow!(
            "{} of {count} request(s) failed ({}); the latency figures count only answered requests",
            total.failed,
            total.first_failure.unwrap_or_default()
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on standard error (hidden when it is not a terminal).
fn progress_bar(limit: Limit) -> indicatif::ProgressBar {
    let (length, template) = match limit {
        Limit::Count(count) => (
            count,
            "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} {msg}",
        ),
        Limit::Duration(duration) => (
            duration.as_millis() as u64,
            "{spinner} {elapsed_precise} [{bar:40}] {msg}",
        ),
    };
    let bar = indicatif::ProgressBar::new(length);
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// The figures of a finished run.
struct Figures<'a> {
    subject: String,
    concurrency: usize,
    count: u64,
    elapsed: Duration,
    tally: &'a Tally,
}

impl Figures<'_> {
    fn throughput(&self) -> f64 {
        (self.tally.ok + self.tally.error_replies) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A latency figure in milliseconds (0 when nothing was answered).
    fn millis(&self, micros: u64) -> f64 {
        micros as f64 / 1000.0
    }

    fn percentile(&self, q: f64) -> f64 {
        if self.tally.latency.is_empty() {
            return 0.0;
        }
        self.millis(self.tally.latency.value_at_quantile(q))
    }

    fn json(&self) -> serde_json::Value {
        let latency = &self.tally.latency;
        let empty = latency.is_empty();
        serde_json::json!({
            "subject": self.subject,
            "concurrency": self.concurrency,
            "count": self.count,
            "ok": self.tally.ok,
            "error_replies": self.tally.error_replies,
            "failed": self.tally.failed,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "throughput_per_s": self.throughput(),
            "latency_ms": {
                "min": if empty { 0.0 } else { self.millis(latency.min()) },
                "mean": if empty { 0.0 } else { latency.mean() / 1000.0 },
                "p50": self.percentile(0.50),
                "p90": self.percentile(0.90),
                "p99": self.percentile(0.99),
                "max": if empty { 0.0 } else { self.millis(latency.max()) },
            },
        })
    }

    fn print(&self) {
        let latency = &self.tally.latency;
        println!(
            "{}: {} requests, concurrency {}, {:.3} s",
            self.subject,
            self.count,
            self.concurrency,
            self.elapsed.as_secs_f64()
        );
        println!("  throughput: {:.1} req/s", self.throughput());
        println!(
            "  replies:    {} ok, {} error replies; {} failed",
            self.tally.ok, self.tally.error_replies, self.tally.failed
        );
        println!(
            "  latency:    p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms (mean {:.3} ms)",
            self.percentile(0.50),
            self.percentile(0.90),
            self.percentile(0.99),
            if latency.is_empty() {
                0.0
            } else {
                self.millis(latency.max())
            },
            if latency.is_empty() {
                0.0
            } else {
                latency.mean() / 1000.0
            },
        );
    }
}

/// `500ms`, `30s`, `2m`, `1h`, or a number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration: write e.g. 500ms, 30s or 2m"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`: use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("`{text}` is not a positive duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(
            parse_duration("3d")
                .unwrap_err()
                .contains("unknown unit `d`")
        );
    }
}
