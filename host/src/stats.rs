//! Counters kept by the host: per phase endpoint (for `$SRV.STATS` and
//! metrics) and host-wide (messages dropped before reaching a plugin).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters of one `{prefix}.{plugin}.{phase}` endpoint.
#[derive(Debug, Default)]
pub struct EndpointStats {
    requests: AtomicU64,
    errors: AtomicU64,
    processing_nanos: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A consistent copy of [`EndpointStats`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointSnapshot {
    pub requests: u64,
    pub errors: u64,
    pub processing_time: Duration,
    pub last_error: Option<String>,
}

impl EndpointStats {
    /// Count one answered request that took `elapsed`; `error` when it
    /// was answered with an error reply.
    pub fn record(&self, elapsed: Duration, error: Option<&str>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.processing_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        if let Some(error) = error {
            self.errors.fetch_add(1, Ordering::Relaxed);
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
}
