//! The state of one plugin instance: an empty WASI context (no files, no
//! network, no environment), memory limits, and the host imports of the
//! WIT `host` interface (logging and per-plugin configuration), the same
//! for every contract version.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::{v0_1, v0_2};
use crate::logs::{LogLevel, LogRecord, LogValue};

/// The most records one call may log; the rest are counted as dropped.
pub const MAX_RECORDS_PER_CALL: usize = 1000;
/// Longer messages and text values are cut to this many bytes.
pub const MAX_LOG_TEXT_BYTES: usize = 4096;
/// Fields beyond this many in one record are left out.
pub const MAX_LOG_FIELDS: usize = 32;

/// `text` cut to at most `MAX_LOG_TEXT_BYTES` on a character boundary.
fn bounded(mut text: String) -> String {
    if text.len() > MAX_LOG_TEXT_BYTES {
        let mut end = MAX_LOG_TEXT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// What every instance of a plugin shares: its name, version and config.
#[derive(Debug)]
pub struct PluginIdentity {
    pub name: String,
    pub version: Option<String>,
    pub config: BTreeMap<String, String>,
}

/// The ids of the call in progress, attached to the records it logs.
#[derive(Debug, Default, Clone)]
struct CallContext {
    request_id: String,
    session_id: Option<u64>,
    trace_id: Option<String>,
}

/// The ids of a call about to start, borrowed from its request.
#[derive(Debug, Default, Clone, Copy)]
pub struct CallIds<'a> {
    pub request_id: &'a str,
    pub session_id: Option<u64>,
    pub trace_id: Option<&'a str>,
}

impl CallContext {
    /// Hold `ids`, copied into the buffers of the ids held before: a warm
    /// instance allocates nothing for them call after call.
    fn hold(&mut self, ids: CallIds<'_>) {
        self.request_id.clear();
        self.request_id.push_str(ids.request_id);
        self.session_id = ids.session_id;
        match (ids.trace_id, &mut self.trace_id) {
            (Some(id), Some(held)) => {
                held.clear();
                held.push_str(id);
            }
            (id, held) => *held = id.map(str::to_string),
        }
    }
}

/// The `T` of every plugin `Store<T>`.
pub struct InstanceState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    identity: Arc<PluginIdentity>,
    call: CallContext,
    records: Vec<LogRecord>,
    dropped_records: u64,
}

impl InstanceState {
    /// A fresh state for an instance of the plugin `identity`, whose linear
    /// memory may grow to `max_memory_bytes`.
    pub fn new(identity: Arc<PluginIdentity>, max_memory_bytes: usize) -> Self {
        InstanceState {
            // Nothing is inherited: no preopened directories, no sockets,
            // no environment, no arguments; stdout and stderr are discarded.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(max_memory_bytes)
                .table_elements(100_000)
                .trap_on_grow_failure(true)
                .build(),
            identity,
            call: CallContext::default(),
            records: Vec::new(),
            dropped_records: 0,
        }
    }

    /// The memory and table limits of the instance, for `Store::limiter`.
    pub fn limits(&mut self) -> &mut StoreLimits {
        &mut self.limits
    }

    /// Start a call: the records it logs carry `ids`.
    pub fn begin_call(&mut self, ids: CallIds<'_>) {
        self.call.hold(ids);
    }

    /// Take the records logged since the last call to this.
    pub fn take_records(&mut self) -> (Vec<LogRecord>, u64) {
        (
            std::mem::take(&mut self.records),
            std::mem::take(&mut self.dropped_records),
        )
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl InstanceState {
    /// Keep a record the plugin logged, within the per-call caps.
    fn log(&mut self, level: LogLevel, message: String, fields: Vec<(String, LogValue)>) {
        if self.records.len() >= MAX_RECORDS_PER_CALL {
            self.dropped_records += 1;
            return;
        }
        let fields = fields
            .into_iter()
            .take(MAX_LOG_FIELDS)
            .map(|(key, value)| {
                let value = match value {
                    LogValue::Text(s) => LogValue::Text(bounded(s)),
                    other => other,
                };
                (bounded(key), value)
            })
            .collect();
        self.records.push(LogRecord {
            timestamp: std::time::SystemTime::now(),
            level,
            message: bounded(message),
            plugin: self.identity.name.clone(),
            plugin_version: self.identity.version.clone(),
            request_id: Some(self.call.request_id.clone()),
            session_id: self.call.session_id,
            trace_id: self.call.trace_id.clone(),
            fields,
        });
    }

    fn config_get(&self, key: &str) -> Option<String> {
        self.identity.config.get(key).cloned()
    }

    /// The plugin's configuration entries.
    pub fn config_entries(&self) -> Vec<(String, String)> {
        self.identity
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// The host imports of one contract version, on the shared implementation.
macro_rules! host_imports {
    ($version:ident) => {
        impl $version::natsplug::plugin::types::Host for InstanceState {}

        impl $version::natsplug::plugin::host::Host for InstanceState {
            fn log(
                &mut self,
                level: $version::natsplug::plugin::host::Level,
                message: String,
                fields: Vec<(String, $version::natsplug::plugin::host::Value)>,
            ) {
                use $version::natsplug::plugin::host::{Level, Value};
                let level = match level {
                    Level::Trace => LogLevel::Trace,
                    Level::Debug => LogLevel::Debug,
                    Level::Info => LogLevel::Info,
                    Level::Warn => LogLevel::Warn,
                    Level::Error => LogLevel::Error,
                };
                let fields = fields
                    .into_iter()
                    .map(|(key, value)| {
                        let value = match value {
                            Value::Text(s) => LogValue::Text(s),
                            Value::Integer(i) => LogValue::Integer(i),
                            Value::Float(f) => LogValue::Float(f),
                            Value::Boolean(b) => LogValue::Boolean(b),
                        };
                        (key, value)
                    })
                    .collect();
                InstanceState::log(self, level, message, fields);
            }

            fn config_get(&mut self, key: String) -> Option<String> {
                InstanceState::config_get(self, &key)
            }

            fn config_entries(&mut self) -> Vec<(String, String)> {
                InstanceState::config_entries(self)
            }
        }
    };
}

host_imports!(v0_1);
host_imports!(v0_2);

/// The linker every plugin is instantiated with: WASI p2 (with an empty
/// context) and the WIT `host` interface of every contract version.
pub fn build_linker(engine: &Engine) -> anyhow::Result<Linker<InstanceState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(anyhow::Error::from)?;
    v0_1::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
        .map_err(anyhow::Error::from)?;
    v0_2::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
        .map_err(anyhow::Error::from)?;
    Ok(linker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_holds_exactly_its_own_ids() {
        let mut held = CallContext::default();
        let traced = CallIds {
            request_id: "r-1",
            session_id: Some(7),
            trace_id: Some("t-1"),
        };
        held.hold(traced);
        assert_eq!(
            (
                held.request_id.as_str(),
                held.session_id,
                held.trace_id.as_deref()
            ),
            ("r-1", Some(7), Some("t-1"))
        );
        held.hold(CallIds {
            request_id: "r-22",
            ..CallIds::default()
        });
        assert_eq!(
            (
                held.request_id.as_str(),
                held.session_id,
                held.trace_id.as_deref()
            ),
            ("r-22", None, None)
        );
        held.hold(CallIds {
            request_id: "r",
            trace_id: Some("t-333"),
            ..traced
        });
        held.hold(CallIds {
            trace_id: Some("t"),
            ..traced
        });
        assert_eq!(
            (held.request_id.as_str(), held.trace_id.as_deref()),
            ("r-1", Some("t"))
        );
    }
}
