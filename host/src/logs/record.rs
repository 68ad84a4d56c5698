//! The published forms of a record: JSON stamped with its [`Origin`], or one line of text.

use super::{LogRecord, LogValue};

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
