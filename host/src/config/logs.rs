//! The `[logs]` section: how log records are published, their encoding and levels.

use serde::{Deserialize, Serialize};

/// How log records are published to NATS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogsConfig {
    /// Publish records to NATS. Default true.
    pub enabled: bool,
    /// Subject template; `{plugin}` and `{level}` are filled in. Default `logs.{plugin}.{level}`.
    pub subject: String,
    /// `json` (default) or `text`.
    pub format: LogFormat,
    /// Lowest level published (plugins can override). Default `info`.
    pub level: LogLevel,
    /// Records per second per plugin (plugins can override); 0 = no limit. Default 1000.
    pub rate_limit_per_sec: u32,
    /// Records held while waiting to be sent; the oldest are dropped when full. Default 10000.
    pub buffer: usize,
    /// Records sent per batch. Default 100.
    pub batch_size: usize,
    /// Longest a record waits before its batch is sent, in ms. Default 100.
    pub flush_interval_ms: u64,
    /// Publish to a JetStream stream and wait for acks, retrying, instead of
    /// plain publishes. Default false.
    pub durable: bool,
    /// With `durable`: the stream. Default `NATSPLUG_LOGS`.
    pub stream: String,
    /// With `durable`: create the stream when it does not exist. Default false.
    pub create_stream: bool,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            enabled: true,
            subject: "logs.{plugin}.{level}".into(),
            format: LogFormat::Json,
            level: LogLevel::Info,
            rate_limit_per_sec: 1000,
            buffer: 10_000,
            batch_size: 100,
            flush_interval_ms: 100,
            durable: false,
            stream: "NATSPLUG_LOGS".into(),
            create_stream: false,
        }
    }
}

/// Encoding of published log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per message.
    Json,
    /// `[ts] [LEVEL] message key=value ...`
    Text,
}

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
