//! A live instance of a plugin: its store (sandbox state, limits,
//! deadline) and its bound exports. Calls go through
//! [`PluginInstance::begin_call`] and [`PluginInstance::end_call`], which
//! own the store's per-call state.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use wasmtime::Store;

use super::LoadedPlugin;
use super::exports::Exports;
use crate::logs::LogRecord;
use crate::sandbox::{CallIds, InstanceState};

/// Longest a new instance may spend in start-up code and its `init` hook.
const START_UP_DEADLINE: Duration = Duration::from_secs(10);

/// A live instance of a plugin and its store.
pub struct PluginInstance {
    store: Store<InstanceState>,
    exports: Exports,
    /// Reused buffers for the header lists of a 0.2.0 call.
    scratch: Scratch,
    /// The [`LoadedPlugin::id`] this instance was made from.
    pub plugin_id: u64,
    /// Calls served so far.
    calls: u64,
    /// The version a 0.2.0 plugin's `init` reported.
    init_version: Option<String>,
}

/// Buffers a call encodes header lists into, kept from call to call.
#[derive(Default)]
pub struct Scratch {
    pub request_fields: Vec<u8>,
    pub response_fields: Vec<u8>,
}

impl LoadedPlugin {
    /// A new instance with its own store, limits and empty WASI context,
    /// after its `init` hook (0.2.0) accepted the plugin's configuration.
    pub fn instantiate(&self) -> anyhow::Result<PluginInstance> {
        let state = InstanceState::new(self.identity.clone(), self.limits.max_memory_bytes);
        let mut store = Store::new(self.exports.engine(), state);
        store.limiter(|state| state.limits());
        store.epoch_deadline_trap();
        // Start-up code (static initialisers) runs under the same deadline
        // as a call would.
        store.set_epoch_deadline(crate::engine::deadline_ticks(START_UP_DEADLINE));
        let exports = self
            .exports
            .instantiate(&mut store)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("instantiating plugin `{}`", self.name))?;
        let mut instance = PluginInstance {
            store,
            exports,
            scratch: Scratch::default(),
            plugin_id: self.id,
            calls: 0,
            init_version: None,
        };
        instance.init(&self.name)?;
        Ok(instance)
    }
}

impl PluginInstance {
    /// Run a 0.2.0 plugin's `init` hook, when it exports one.
    fn init(&mut self, name: &str) -> anyhow::Result<()> {
        let Exports::V0_2(exports) = &self.exports else {
            return Ok(());
        };
        let Some(init) = &exports.init else {
            return Ok(());
        };
        let config = self.store.data().config_entries();
        let config: Vec<(&str, &str)> = config
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.store.data_mut().begin_call(CallIds::default());
        self.store
            .set_epoch_deadline(crate::engine::deadline_ticks(START_UP_DEADLINE));
        let outcome = init
            .call_init(&mut self.store, &config)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("calling `init` of plugin `{name}`"))?;
        // Records `init` logged go out with those of the instance's first
        // call, without a request id.
        match outcome {
            Ok(info) => {
                self.init_version = info.version.filter(|v| !v.is_empty());
                Ok(())
            }
            Err(reason) => Err(anyhow!(
                "plugin `{name}` refused its configuration in `init`: {reason}"
            )),
        }
    }

    /// Get ready for a call: the ids its log records carry, and the
    /// deadline after which the call traps.
    pub fn begin_call(&mut self, ids: CallIds<'_>, timeout: Duration) {
        self.store.data_mut().begin_call(ids);
        self.store
            .set_epoch_deadline(crate::engine::deadline_ticks(timeout));
    }

    /// The instance's exports, its store and its scratch buffers, to call it.
    pub fn parts(&mut self) -> (&Exports, &mut Store<InstanceState>, &mut Scratch) {
        (&self.exports, &mut self.store, &mut self.scratch)
    }

    /// A call is over: count it, and take the records it logged (and how
    /// many were dropped over the per-call cap).
    pub fn end_call(&mut self) -> (Vec<LogRecord>, u64) {
        self.calls += 1;
        self.store.data_mut().take_records()
    }

    /// Calls served so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// The version the plugin's `init` reported (0.2.0 plugins).
    pub fn init_version(&self) -> Option<&str> {
        self.init_version.as_deref()
    }
}
