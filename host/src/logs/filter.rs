//! Per-plugin level thresholds and rate limits applied to records.

use super::{LogLevel, LogRecord};

/// Drops records below a plugin's level threshold or beyond its rate.
pub struct LogFilter {
    default_level: LogLevel,
    levels: std::collections::HashMap<String, LogLevel>,
    default_rate: u32,
    rates: std::collections::HashMap<String, u32>,
    buckets: std::sync::Mutex<std::collections::HashMap<String, TokenBucket>>,
    rate_limited: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

struct TokenBucket {
    tokens: f64,
    updated: std::time::Instant,
}

impl LogFilter {
    /// A filter from the host config; rate-limited records are counted in
    /// `rate_limited`.
    pub fn new(
        config: &crate::config::HostConfig,
        rate_limited: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> LogFilter {
        LogFilter {
            default_level: config.logs.level,
            levels: config
                .plugin
                .iter()
                .filter_map(|(name, s)| s.log_level.map(|l| (name.clone(), l)))
                .collect(),
            default_rate: config.logs.rate_limit_per_sec,
            rates: config
                .plugin
                .iter()
                .filter_map(|(name, s)| s.log_rate_limit_per_sec.map(|r| (name.clone(), r)))
                .collect(),
            buckets: std::sync::Mutex::new(std::collections::HashMap::new()),
            rate_limited,
        }
    }

    /// Whether `record` passes.
    pub fn admit(&self, record: &LogRecord) -> bool {
        let threshold = self
            .levels
            .get(&record.plugin)
            .copied()
            .unwrap_or(self.default_level);
        if record.level < threshold {
            return false;
        }
        let rate = self
            .rates
            .get(&record.plugin)
            .copied()
            .unwrap_or(self.default_rate);
        if rate == 0 {
            return true;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        let bucket = buckets.entry(record.plugin.clone()).or_insert(TokenBucket {
            tokens: f64::from(rate),
            updated: now,
        });
        let refill = now.duration_since(bucket.updated).as_secs_f64() * f64::from(rate);
        bucket.tokens = (bucket.tokens + refill).min(f64::from(rate));
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            self.rate_limited
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            false
        }
    }
}
