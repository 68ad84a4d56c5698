//! Publishing log records to NATS without ever slowing a request.
//!
//! [`LogPublisher::emit`] only appends to a bounded buffer (dropping and
//! counting the oldest record when it is full); a background task sends
//! the buffer in batches, when a batch is full or every flush interval.
//!
//! In durable mode a batch goes to a JetStream stream, each record with a
//! message id so that the stream stores a record sent twice once. Records
//! the stream did not acknowledge go back to the front of the buffer and
//! are sent again after a backoff. They count against the same bound, so
//! while JetStream is down the host holds at most `logs.buffer` records,
//! the newest, and drops (and counts) the older ones. On close the buffer
//! is flushed, retrying for [`CLOSE_RETRY_BUDGET`] at most.
//!
//! A log subject the server refuses (the host's user lacks publish
//! permission there) is reported once. Its records are counted as refused
//! and not sent for [`REFUSED_HOLD`]; then one is tried again.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{LogRecord, LogSink, Origin};
use crate::config::{LogFormat, LogsConfig};
use crate::nats::{PermissionOperation, PermissionViolation};
use crate::stats::HostStats;

/// Longest a closing publisher keeps retrying unacknowledged records.
const CLOSE_RETRY_BUDGET: Duration = Duration::from_secs(5);

/// The first wait before records JetStream did not take are sent again;
/// it doubles up to [`MAX_BACKOFF`] while they keep failing.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// The longest wait between two attempts to send unacknowledged records.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How long records on a subject the server refused are dropped unsent
/// before one is tried again (the permission may have been granted since).
const REFUSED_HOLD: Duration = Duration::from_secs(30);

/// A record waiting to be sent, with its number (its message id in durable
/// mode).
struct Entry {
    sequence: u64,
    record: LogRecord,
}

struct Buffer {
    entries: VecDeque<Entry>,
    next_sequence: u64,
}

struct Shared {
    buffer: Mutex<Buffer>,
    capacity: usize,
    batch_size: usize,
    ready: Notify,
    stats: Arc<HostStats>,
    /// Log subjects the server refused, until when their records are held back.
    refused: Mutex<HashMap<String, Instant>>,
    /// Whether a refusal was logged already.
    refusal_logged: AtomicBool,
    /// The log subjects, with `*` for a token holding a placeholder.
    pattern: Vec<String>,
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
    Stream {
        context: async_nats::jetstream::Context,
        /// Makes message ids unique across hosts and restarts.
        id_prefix: String,
    },
}

/// The subjects of `template` as a subject with wildcards: `logs.*.*`.
fn wildcard_subject(template: &str) -> String {
    template
        .split('.')
        .map(|token| {
            if token.contains("{plugin}") || token.contains("{level}") {
                "*"
            } else {
                token
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

impl LogPublisher {
    /// Start publishing on `client` as `config` says. In durable mode this
    /// checks (or creates) the stream first.
    pub async fn start(
        client: async_nats::Client,
        config: &LogsConfig,
        stats: Arc<HostStats>,
    ) -> anyhow::Result<LogPublisher> {
        let subjects = wildcard_subject(&config.subject);
        let target = if config.durable {
            let context = async_nats::jetstream::new(client);
            if config.create_stream {
                context
                    .get_or_create_stream(async_nats::jetstream::stream::Config {
                        name: config.stream.clone(),
                        subjects: vec![subjects.clone()],
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
            Target::Stream {
                context,
                id_prefix: nuid::next().to_string(),
            }
        } else {
            Target::Core(client)
        };
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer {
                entries: VecDeque::new(),
                next_sequence: 0,
            }),
            capacity: config.buffer,
            batch_size: config.batch_size,
            ready: Notify::new(),
            stats,
            refused: Mutex::new(HashMap::new()),
            refusal_logged: AtomicBool::new(false),
            pattern: subjects.split('.').map(str::to_string).collect(),
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

    /// Take note of a publish the server refused, when it was one of the
    /// log records: count it, hold back the subject's records for
    /// `REFUSED_HOLD`, and log the first such refusal. Returns whether
    /// it was (so it is not logged again elsewhere).
    pub fn refused(&self, violation: &PermissionViolation) -> bool {
        let shared = &self.shared;
        if violation.operation != PermissionOperation::Publish
            || !shared.matches(&violation.subject)
        {
            return false;
        }
        shared
            .stats
            .log_records_refused
            .fetch_add(1, Ordering::Relaxed);
        shared
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(violation.subject.clone(), Instant::now() + REFUSED_HOLD);
        if !shared.refusal_logged.swap(true, Ordering::Relaxed) {
            tracing::error!(
                subject = %violation.subject,
                "NATS refused this host's log records on `{}` (the server said: {}). The user this host logs in as lacks publish permission there: grant publish on `{}` in the server's authorization config, set logs.subject to subjects it may publish to, or set logs.enabled = false. Refused records are dropped and counted (natsplug_log_records_dropped_total{{reason=\"refused\"}}); this is logged once",
                violation.subject,
                violation.server_message,
                shared.pattern.join("."),
            );
        }
        true
    }
}

impl Shared {
    /// Whether `subject` is one of the log subjects.
    fn matches(&self, subject: &str) -> bool {
        let tokens: Vec<&str> = subject.split('.').collect();
        tokens.len() == self.pattern.len()
            && self
                .pattern
                .iter()
                .zip(tokens)
                .all(|(pattern, token)| pattern == "*" || pattern == token)
    }

    /// Whether records on `subject` are held back after a refusal.
    fn held_back(&self, subject: &str) -> bool {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        match refused.get(subject) {
            Some(until) if Instant::now() < *until => true,
            Some(_) => {
                refused.remove(subject);
                false
            }
            None => false,
        }
    }

    /// Up to a batch of the oldest records.
    fn take_batch(&self) -> Vec<Entry> {
        let mut buffer = self.lock();
        let take = buffer.entries.len().min(self.batch_size);
        buffer.entries.drain(..take).collect()
    }

    /// Put records that were not sent back in front of the buffer, then
    /// drop the oldest beyond its bound.
    fn put_back(&self, unsent: Vec<Entry>) {
        let mut buffer = self.lock();
        for entry in unsent.into_iter().rev() {
            buffer.entries.push_front(entry);
        }
        let excess = buffer.entries.len().saturating_sub(self.capacity);
        if excess > 0 {
            buffer.entries.drain(..excess);
            self.stats
                .log_records_dropped
                .fetch_add(excess as u64, Ordering::Relaxed);
        }
    }

    /// Drop every record still waiting, counting them.
    fn drop_all(&self) -> usize {
        let mut buffer = self.lock();
        let count = buffer.entries.len();
        buffer.entries.clear();
        self.stats
            .log_records_dropped
            .fetch_add(count as u64, Ordering::Relaxed);
        count
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl LogSink for LogPublisher {
    fn emit(&self, record: LogRecord) {
        let mut buffer = self.shared.lock();
        if buffer.entries.len() >= self.shared.capacity {
            buffer.entries.pop_front();
            self.shared
                .stats
                .log_records_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        let sequence = buffer.next_sequence;
        buffer.next_sequence += 1;
        buffer.entries.push_back(Entry { sequence, record });
        if buffer.entries.len() >= self.shared.batch_size {
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
    fn subject(&self, record: &LogRecord) -> String {
        self.subject
            .replace("{plugin}", &record.plugin)
            .replace("{level}", record.level.as_str())
    }

    fn payload(&self, record: &LogRecord) -> Bytes {
        Bytes::from(match self.format {
            LogFormat::Json => record.to_json(&self.origin),
            LogFormat::Text => record.to_text(),
        })
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
    // Set while JetStream does not take the records: wait this long first.
    let mut backoff: Option<Duration> = None;
    loop {
        let closing = match backoff {
            Some(wait) => tokio::select! {
                _ = stop.cancelled() => true,
                _ = tokio::time::sleep(wait) => false,
            },
            None => tokio::select! {
                _ = stop.cancelled() => true,
                _ = shared.ready.notified() => false,
                _ = ticker.tick() => false,
            },
        };
        if closing {
            close(&shared, &target, &encoder).await;
            return;
        }
        // Send full batches now; a partial one only on the interval or at close.
        backoff = loop {
            let batch = shared.take_batch();
            if batch.is_empty() {
                break None;
            }
            let unsent = send(&target, &encoder, batch, &shared).await;
            if !unsent.is_empty() {
                shared.put_back(unsent);
                let next = backoff.map_or(FIRST_BACKOFF, |wait| (wait * 2).min(MAX_BACKOFF));
                tracing::debug!(backoff = ?next, "JetStream did not take the log records; retrying");
                break Some(next);
            }
        };
    }
}

/// Send what is left, retrying unacknowledged records within
/// [`CLOSE_RETRY_BUDGET`].
async fn close(shared: &Shared, target: &Target, encoder: &Encoder) {
    let deadline = tokio::time::Instant::now() + CLOSE_RETRY_BUDGET;
    let mut wait = FIRST_BACKOFF;
    loop {
        let batch = shared.take_batch();
        if batch.is_empty() {
            break;
        }
        let unsent = send(target, encoder, batch, shared).await;
        if unsent.is_empty() {
            continue;
        }
        shared.put_back(unsent);
        if tokio::time::Instant::now() + wait > deadline {
            let dropped = shared.drop_all();
            tracing::warn!(
                records = dropped,
                "log records not acknowledged by JetStream at shutdown; dropped"
            );
            break;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_BACKOFF);
    }
    if let Target::Core(client) = target {
        let _ = client.flush().await;
    }
}

/// Send `batch`; returns the records JetStream did not acknowledge (none
/// in plain mode, where a publish is not acknowledged).
async fn send(
    target: &Target,
    encoder: &Encoder,
    batch: Vec<Entry>,
    shared: &Shared,
) -> Vec<Entry> {
    let stats = &shared.stats;
    let mut outgoing = Vec::with_capacity(batch.len());
    for entry in batch {
        let subject = encoder.subject(&entry.record);
        if shared.held_back(&subject) {
            stats.log_records_refused.fetch_add(1, Ordering::Relaxed);
        } else {
            outgoing.push((subject, entry));
        }
    }
    match target {
        Target::Core(client) => {
            for (subject, entry) in outgoing {
                match client
                    .publish(subject, encoder.payload(&entry.record))
                    .await
                {
                    Ok(()) => {
                        stats.log_records_sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        stats.log_publish_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%error, "could not publish a log record");
                    }
                }
            }
            if let Err(error) = client.flush().await {
                tracing::debug!(%error, "could not flush log records");
            }
            Vec::new()
        }
        Target::Stream { context, id_prefix } => {
            send_durable(context, id_prefix, encoder, outgoing, stats).await
        }
    }
}

/// Publish to JetStream and wait for every ack; returns the records not
/// acknowledged.
async fn send_durable(
    context: &async_nats::jetstream::Context,
    id_prefix: &str,
    encoder: &Encoder,
    outgoing: Vec<(String, Entry)>,
    stats: &HostStats,
) -> Vec<Entry> {
    let mut acks = Vec::with_capacity(outgoing.len());
    for (subject, entry) in outgoing {
        let message = async_nats::jetstream::message::PublishMessage::build()
            .payload(encoder.payload(&entry.record))
            .message_id(format!("{id_prefix}.{}", entry.sequence));
        let ack = context.send_publish(subject, message).await;
        acks.push((entry, ack));
    }
    let mut unsent = Vec::new();
    for (entry, ack) in acks {
        let acknowledged = match ack {
            Ok(future) => future.await.is_ok(),
            Err(_) => false,
        };
        if acknowledged {
            stats.log_records_sent.fetch_add(1, Ordering::Relaxed);
        } else {
            unsent.push(entry);
        }
    }
    if !unsent.is_empty() {
        stats
            .log_publish_failures
            .fetch_add(unsent.len() as u64, Ordering::Relaxed);
    }
    unsent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_subjects_are_the_template_with_wildcards() {
        assert_eq!(wildcard_subject("logs.{plugin}.{level}"), "logs.*.*");
        assert_eq!(wildcard_subject("a.b-{plugin}.c"), "a.*.c");
    }
}
