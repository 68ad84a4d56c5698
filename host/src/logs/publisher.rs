//! Publishing log records to NATS without ever slowing a request.
//!
//! [`LogPublisher::emit`] only appends to a bounded buffer (dropping and
//! counting the oldest record when it is full); a background task sends
//! the buffer in batches, when a batch is full or every flush interval.
//! In durable mode the batch goes to a JetStream stream and every record is
//! retried with backoff until acknowledged. On close the buffer is flushed.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{LogRecord, LogSink, Origin};
use crate::config::{LogFormat, LogsConfig};
use crate::stats::HostStats;

/// Longest a closing publisher keeps retrying unacknowledged records.
const CLOSE_RETRY_BUDGET: Duration = Duration::from_secs(5);

struct Shared {
    buffer: Mutex<VecDeque<LogRecord>>,
    capacity: usize,
    batch_size: usize,
    ready: Notify,
    stats: Arc<HostStats>,
}

/// The NATS output of the log pipeline.
pub struct LogPublisher {
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// Where and how batches are sent.
enum Target {
    Core(async_nats::Client),
    Stream(async_nats::jetstream::Context),
}

impl LogPublisher {
    /// Start publishing on `client` as `config` says. In durable mode this
    /// checks (or creates) the stream first.
    pub async fn start(
        client: async_nats::Client,
        config: &LogsConfig,
        stats: Arc<HostStats>,
    ) -> anyhow::Result<LogPublisher> {
        let target = if config.durable {
            let context = async_nats::jetstream::new(client);
            let subjects = vec![
                config
                    .subject
                    .replace("{plugin}", "*")
                    .replace("{level}", "*"),
            ];
            if config.create_stream {
                context
                    .get_or_create_stream(async_nats::jetstream::stream::Config {
                        name: config.stream.clone(),
                        subjects,
                        ..Default::default()
                    })
                    .await
                    .with_context(|| format!("creating the log stream {}", config.stream))?;
            } else {
                context.get_stream(&config.stream).await.with_context(|| {
                    format!(
                        "the log stream {} is not available (create it, or set logs.create_stream = true)",
                        config.stream
                    )
                })?;
            }
            Target::Stream(context)
        } else {
            Target::Core(client)
        };
        let shared = Arc::new(Shared {
            buffer: Mutex::new(VecDeque::new()),
            capacity: config.buffer,
            batch_size: config.batch_size,
            ready: Notify::new(),
            stats,
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            shared.clone(),
            target,
            Encoder {
                subject: config.subject.clone(),
                format: config.format,
                origin: Origin::current(),
            },
            Duration::from_millis(config.flush_interval_ms),
            stop.clone(),
        ));
        Ok(LogPublisher {
            shared,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// Send everything buffered, then stop.
    pub async fn close(&self) {
        self.stop.cancel();
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl LogSink for LogPublisher {
    fn emit(&self, record: LogRecord) {
        let mut buffer = self.shared.buffer.lock().unwrap_or_else(|e| e.into_inner());
        if buffer.len() >= self.shared.capacity {
            buffer.pop_front();
            self.shared
                .stats
                .log_records_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        buffer.push_back(record);
        if buffer.len() >= self.shared.batch_size {
            self.shared.ready.notify_one();
        }
    }
}

struct Encoder {
    subject: String,
    format: LogFormat,
    origin: Origin,
}

impl Encoder {
    fn encode(&self, record: &LogRecord) -> (String, Bytes) {
        let subject = self
            .subject
            .replace("{plugin}", &record.plugin)
            .replace("{level}", record.level.as_str());
        let payload = match self.format {
            LogFormat::Json => record.to_json(&self.origin),
            LogFormat::Text => record.to_text(),
        };
        (subject, Bytes::from(payload))
    }
}

async fn run(
    shared: Arc<Shared>,
    target: Target,
    encoder: Encoder,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let closing = tokio::select! {
            _ = stop.cancelled() => true,
            _ = shared.ready.notified() => false,
            _ = ticker.tick() => false,
        };
        // Send full batches now; a partial one only on the interval or at close.
        loop {
            let batch: Vec<LogRecord> = {
                let mut buffer = shared.buffer.lock().unwrap_or_else(|e| e.into_inner());
                if buffer.is_empty() {
                    break;
                }
                let take = buffer.len().min(shared.batch_size);
                buffer.drain(..take).collect()
            };
            let messages: Vec<(String, Bytes)> = batch.iter().map(|r| encoder.encode(r)).collect();
            send(&target, messages, &shared.stats, closing).await;
        }
        if closing {
            if let Target::Core(client) = &target {
                let _ = client.flush().await;
            }
            return;
        }
    }
}

async fn send(target: &Target, messages: Vec<(String, Bytes)>, stats: &HostStats, closing: bool) {
    let count = messages.len() as u64;
    match target {
        Target::Core(client) => {
            for (subject, payload) in messages {
                if let Err(error) = client.publish(subject, payload).await {
                    stats.log_publish_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%error, "could not publish a log record");
                    return;
                }
            }
            if let Err(error) = client.flush().await {
                tracing::debug!(%error, "could not flush log records");
            }
            stats.log_records_sent.fetch_add(count, Ordering::Relaxed);
        }
        Target::Stream(context) => send_durable(context, messages, stats, closing).await,
    }
}

/// Publish to JetStream and wait for every ack, retrying the unacknowledged
/// records with exponential backoff (forever while running; within
/// [`CLOSE_RETRY_BUDGET`] when closing).
async fn send_durable(
    context: &async_nats::jetstream::Context,
    mut pending: Vec<(String, Bytes)>,
    stats: &HostStats,
    closing: bool,
) {
    let mut backoff = Duration::from_millis(50);
    let started = tokio::time::Instant::now();
    while !pending.is_empty() {
        let mut acks = Vec::with_capacity(pending.len());
        for (subject, payload) in &pending {
            acks.push(context.publish(subject.clone(), payload.clone()).await);
        }
        let mut failed = Vec::new();
        for ((subject, payload), ack) in pending.into_iter().zip(acks) {
            let acknowledged = match ack {
                Ok(future) => future.await.is_ok(),
                Err(_) => false,
            };
            if acknowledged {
                stats.log_records_sent.fetch_add(1, Ordering::Relaxed);
            } else {
                failed.push((subject, payload));
            }
        }
        if failed.is_empty() {
            return;
        }
        stats
            .log_publish_failures
            .fetch_add(failed.len() as u64, Ordering::Relaxed);
        if closing && started.elapsed() > CLOSE_RETRY_BUDGET {
            stats
                .log_records_dropped
                .fetch_add(failed.len() as u64, Ordering::Relaxed);
            tracing::warn!(
                records = failed.len(),
                "log records not acknowledged by JetStream at shutdown"
            );
            return;
        }
        tracing::debug!(
            records = failed.len(),
            ?backoff,
            "retrying unacknowledged log records"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        pending = failed;
    }
}
