//! Counters kept by the host: per phase endpoint (for `$SRV.STATS` and
//! metrics) and host-wide (messages dropped before reaching a plugin).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use natsplug_protocol::RequestError;

/// The error codes counted separately.
pub const ERROR_CODES: [u16; 5] = [400, 413, 500, 503, 504];

/// Counters of one `{prefix}.{plugin}.{phase}` endpoint.
#[derive(Debug)]
pub struct EndpointStats {
    requests: AtomicU64,
    errors: AtomicU64,
    errors_by_code: [AtomicU64; ERROR_CODES.len()],
    processing_nanos: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Time from receipt to reply, in seconds.
    pub latency: Histogram,
    /// How long the last plugin call took, in nanoseconds; `u64::MAX`
    /// before the first, so a plugin's first call runs on a worker, not on
    /// the lane that received it.
    pub last_call_nanos: AtomicU64,
}

impl Default for EndpointStats {
    fn default() -> Self {
        EndpointStats {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            errors_by_code: Default::default(),
            processing_nanos: AtomicU64::new(0),
            last_error: Mutex::new(None),
            // 25 µs to about 3.3 s.
            latency: Histogram::new(exponential_buckets(0.000_025, 2.0, 18)),
            last_call_nanos: AtomicU64::new(u64::MAX),
        }
    }
}

/// A consistent copy of [`EndpointStats`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointSnapshot {
    pub requests: u64,
    pub errors: u64,
    pub processing_time: Duration,
    pub last_error: Option<String>,
    /// Errors per code of [`ERROR_CODES`].
    pub errors_by_code: [u64; ERROR_CODES.len()],
}

impl EndpointStats {
    /// Count one answered request that took `elapsed`; `error` when it
    /// failed (answered with an error reply, or failing open).
    pub fn record(&self, elapsed: Duration, error: Option<&RequestError>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.processing_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        self.latency.observe(elapsed.as_secs_f64());
        if let Some(error) = error {
            self.errors.fetch_add(1, Ordering::Relaxed);
            if let Some(index) = ERROR_CODES.iter().position(|c| *c == error.code()) {
                self.errors_by_code[index].fetch_add(1, Ordering::Relaxed);
            }
            if let Ok(mut last) = self.last_error.lock() {
                *last = Some(error.to_string());
            }
        }
    }

    /// Current values.
    pub fn snapshot(&self) -> EndpointSnapshot {
        EndpointSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            processing_time: Duration::from_nanos(self.processing_nanos.load(Ordering::Relaxed)),
            last_error: self.last_error.lock().ok().and_then(|l| l.clone()),
            errors_by_code: std::array::from_fn(|i| self.errors_by_code[i].load(Ordering::Relaxed)),
        }
    }
}

/// Host-wide counters.
#[derive(Debug, Default)]
pub struct HostStats {
    /// Messages on a phase subject without a reply subject: dropped.
    pub no_reply_dropped: AtomicU64,
    /// Replies that could not be published.
    pub reply_failures: AtomicU64,
    /// Plugin log records beyond the per-call cap.
    pub records_dropped: AtomicU64,
    /// Requests refused or timed out waiting for a slot (503).
    pub overloaded: AtomicU64,
    /// Plugin failures answered with `"next"` under an open failure mode.
    pub failed_open: AtomicU64,
    /// Log records published (acknowledged, in durable mode).
    pub log_records_sent: AtomicU64,
    /// Log records dropped because the publish buffer was full.
    pub log_records_dropped: AtomicU64,
    /// Log records over a plugin's rate limit.
    pub log_records_rate_limited: Arc<AtomicU64>,
    /// Failed publishes of log records (retried in durable mode).
    pub log_publish_failures: AtomicU64,
    /// Log records on a subject the server refuses this host (no publish
    /// permission): refused by the server, or held back after a refusal.
    pub log_records_refused: AtomicU64,
    /// Warm plugin instances kept by the workers.
    pub warm_instances: std::sync::atomic::AtomicI64,
    /// Messages the NATS client dropped because a subscription's buffer
    /// was full (slow consumer events; a lower bound under a flood).
    pub slow_consumers: AtomicU64,
    /// Times the connection to NATS was lost.
    pub disconnects: AtomicU64,
    /// Times it was re-established after a loss.
    pub reconnects: AtomicU64,
    /// How long the last loss lasted, disconnect to reconnect, in ms.
    pub last_recovery_ms: AtomicU64,
    /// Publishes or subscriptions the server refused (permissions violation).
    pub permission_violations: AtomicU64,
    /// The subscriptions among them: what a plugin's load waits for after
    /// a refusal, so that a publish refused meanwhile cannot stand in for
    /// one.
    pub subscription_refusals: AtomicU64,
    /// Times the bucket's version of a plugin was passed over because the
    /// plugins directory holds the plugin (the directory wins).
    pub bucket_versions_skipped: AtomicU64,
}
