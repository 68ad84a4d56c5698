//! Log records emitted by plugins (through the WIT `log` import) and by the
//! host about plugins. Records are handed to a [`LogSink`].

use std::time::SystemTime;

/// Severity of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// Lower-case name: `info`, `error`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// A typed field value.
#[derive(Debug, Clone, PartialEq)]
pub enum LogValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
}

impl std::fmt::Display for LogValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogValue::Text(s) => f.write_str(s),
            LogValue::Integer(i) => write!(f, "{i}"),
            LogValue::Float(x) => write!(f, "{x}"),
            LogValue::Boolean(b) => write!(f, "{b}"),
        }
    }
}

/// One log record.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    pub timestamp: SystemTime,
    pub level: LogLevel,
    pub message: String,
    pub plugin: String,
    pub plugin_version: Option<String>,
    pub request_id: Option<String>,
    pub session_id: Option<u64>,
    pub trace_id: Option<String>,
    pub fields: Vec<(String, LogValue)>,
}

/// Where records go. Implementations must not block: they are called on
/// the request path.
pub trait LogSink: Send + Sync {
    /// Accept one record.
    fn emit(&self, record: LogRecord);
}

/// A sink that discards records.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullSink;

impl LogSink for NullSink {
    fn emit(&self, _record: LogRecord) {}
}

/// A sink that writes records to the host's own `tracing` output.
#[derive(Debug, Default, Clone, Copy)]
pub struct TracingSink;

impl LogSink for TracingSink {
    fn emit(&self, record: LogRecord) {
        let fields = record
            .fields
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        let request_id = record.request_id.as_deref().unwrap_or("");
        macro_rules! emit {
            ($level:ident) => {
                tracing::$level!(
                    target: "natsplug::plugin_log",
                    plugin = %record.plugin,
                    request_id,
                    session_id = record.session_id,
                    fields = %fields,
                    "{}",
                    record.message
                )
            };
        }
        match record.level {
            LogLevel::Trace => emit!(trace),
            LogLevel::Debug => emit!(debug),
            LogLevel::Info => emit!(info),
            LogLevel::Warn => emit!(warn),
            LogLevel::Error => emit!(error),
        }
    }
}

impl std::str::FromStr for LogLevel {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "trace" => Ok(LogLevel::Trace),
            "debug" => Ok(LogLevel::Debug),
            "info" => Ok(LogLevel::Info),
            "warn" | "warning" => Ok(LogLevel::Warn),
            "error" => Ok(LogLevel::Error),
            other => Err(format!(
                "`{other}` is not a log level: use trace, debug, info, warn or error"
            )),
        }
    }
}

impl serde::Serialize for LogLevel {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for LogLevel {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Where records come from, stamped on every published record.
#[derive(Debug, Clone)]
pub struct Origin {
    /// This machine's host name.
    pub hostname: String,
    /// `natsplug[<pid>]`.
    pub process: String,
}

impl Origin {
    /// The origin of this process.
    pub fn current() -> Origin {
        Origin {
            hostname: crate::nats::hostname(),
            process: format!("natsplug[{}]", std::process::id()),
        }
    }
}

impl LogRecord {
    /// RFC 3339 UTC with milliseconds, e.g. `2026-11-23T10:00:00.123Z`.
    pub fn timestamp_text(&self) -> String {
        humantime::format_rfc3339_millis(self.timestamp).to_string()
    }

    /// The JSON form published to NATS.
    pub fn to_json(&self, origin: &Origin) -> Vec<u8> {
        let fields: serde_json::Map<String, serde_json::Value> = self
            .fields
            .iter()
            .map(|(key, value)| {
                let value = match value {
                    LogValue::Text(s) => serde_json::Value::from(s.as_str()),
                    LogValue::Integer(i) => serde_json::Value::from(*i),
                    LogValue::Float(f) => serde_json::Value::from(*f),
                    LogValue::Boolean(b) => serde_json::Value::from(*b),
                };
                (key.clone(), value)
            })
            .collect();
        let mut object = serde_json::json!({
            "timestamp": self.timestamp_text(),
            "level": self.level.as_str(),
            "message": self.message,
            "hostname": origin.hostname,
            "process": origin.process,
            "plugin": self.plugin,
            "fields": fields,
        });
        let extra = [
            (
                "plugin_version",
                self.plugin_version.clone().map(serde_json::Value::from),
            ),
            (
                "request_id",
                self.request_id.clone().map(serde_json::Value::from),
            ),
            ("session_id", self.session_id.map(serde_json::Value::from)),
            (
                "trace_id",
                self.trace_id.clone().map(serde_json::Value::from),
            ),
        ];
        for (key, value) in extra {
            if let Some(value) = value {
                object[key] = value;
            }
        }
        serde_json::to_vec(&object).unwrap_or_default()
    }

    /// The text form: `[ts] [LEVEL] message key=value ...`, with the plugin
    /// and call ids as the first keys.
    pub fn to_text(&self) -> Vec<u8> {
        use std::fmt::Write as _;
        let mut line = format!(
            "[{}] [{}] {} plugin={}",
            self.timestamp_text(),
            self.level.as_str().to_ascii_uppercase(),
            self.message,
            self.plugin
        );
        if let Some(id) = &self.request_id {
            let _ = write!(line, " request_id={id}");
        }
        if let Some(id) = self.session_id {
            let _ = write!(line, " session_id={id}");
        }
        if let Some(id) = &self.trace_id {
            let _ = write!(line, " trace_id={id}");
        }
        for (key, value) in &self.fields {
            match value {
                LogValue::Text(text) if text.is_empty() || text.contains([' ', '"', '=']) => {
                    let _ = write!(line, " {key}={text:?}");
                }
                other => {
                    let _ = write!(line, " {key}={other}");
                }
            }
        }
        line.into_bytes()
    }
}

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

/// Filters records, then hands each to every output.
pub struct LogPipeline {
    filter: LogFilter,
    outputs: Vec<std::sync::Arc<dyn LogSink>>,
}

impl LogPipeline {
    /// A pipeline through `filter` to `outputs`.
    pub fn new(filter: LogFilter, outputs: Vec<std::sync::Arc<dyn LogSink>>) -> LogPipeline {
        LogPipeline { filter, outputs }
    }
}

impl LogSink for LogPipeline {
    fn emit(&self, record: LogRecord) {
        if !self.filter.admit(&record) {
            return;
        }
        if let Some((last, rest)) = self.outputs.split_last() {
            for output in rest {
                output.emit(record.clone());
            }
            last.emit(record);
        }
    }
}
