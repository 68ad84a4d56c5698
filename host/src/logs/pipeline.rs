//! The log pipeline: one filter in front of every output.

use super::filter::LogFilter;
use super::{LogRecord, LogSink};

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
