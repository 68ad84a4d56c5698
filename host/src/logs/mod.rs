//! Log records emitted by plugins (through the WIT `log` import) and by the
//! host about plugins. Records are handed to a [`LogSink`].

mod filter;
mod pipeline;
mod publisher;
mod record;

use std::time::SystemTime;

pub use self::filter::LogFilter;
pub use self::pipeline::LogPipeline;
pub use self::publisher::LogPublisher;
pub use self::record::Origin;
pub use crate::config::LogLevel;

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
