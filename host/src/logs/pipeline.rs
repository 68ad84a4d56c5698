//! The log pipeline: one filter in front of every output.

use std::sync::Arc;

use super::filter::LogFilter;
use super::{LogRecord, LogSink};

/// Filters records, then hands each to every output, and plugin records
/// also to the echo (the host's own log).
pub struct LogPipeline {
    filter: LogFilter,
    echo: Option<Arc<dyn LogSink>>,
    outputs: Vec<Arc<dyn LogSink>>,
}

impl LogPipeline {
    /// A pipeline through `filter` to `outputs`.
    pub fn new(filter: LogFilter, outputs: Vec<Arc<dyn LogSink>>) -> LogPipeline {
        LogPipeline {
            filter,
            echo: None,
            outputs,
        }
    }

    /// Also hand plugin records (not host events) to `echo`.
    pub fn with_echo(mut self, echo: Arc<dyn LogSink>) -> LogPipeline {
        self.echo = Some(echo);
        self
    }

    /// A record of the host about a plugin (loaded, reloaded, failed to
    /// load, removed). The host logs these itself, with more fields, so
    /// the echo does not get them: the outputs only.
    pub fn emit_host_event(&self, record: LogRecord) {
        if self.filter.admit(&record) {
            self.send(record);
        }
    }

    fn send(&self, record: LogRecord) {
        if let Some((last, rest)) = self.outputs.split_last() {
            for output in rest {
                output.emit(record.clone());
            }
            last.emit(record);
        }
    }
}

impl LogSink for LogPipeline {
    fn emit(&self, record: LogRecord) {
        if !self.filter.admit(&record) {
            return;
        }
        if let Some(echo) = &self.echo {
            echo.emit(record.clone());
        }
        self.send(record);
    }
}
