//! A live instance of a plugin: its store (sandbox state, limits,
//! deadline) and its bindings. Calls go through [`PluginInstance::begin_call`]
//! and [`PluginInstance::end_call`], which own the store's per-call state.

use std::time::Duration;

use anyhow::Context as _;
use wasmtime::Store;

use super::LoadedPlugin;
use crate::bindings::{self, exports::natsplug::plugin::handler::Guest};
use crate::logs::LogRecord;
use crate::sandbox::{CallContext, InstanceState};

/// A live instance of a plugin and its store.
pub struct PluginInstance {
    store: Store<InstanceState>,
    bindings: bindings::Plugin,
    /// The [`LoadedPlugin::id`] this instance was made from.
    pub plugin_id: u64,
    /// Calls served so far.
    calls: u64,
}

impl LoadedPlugin {
    /// A new instance with its own store, limits and empty WASI context.
    pub fn instantiate(&self) -> anyhow::Result<PluginInstance> {
        let state = InstanceState::new(self.identity.clone(), self.limits.max_memory_bytes);
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|state| state.limits());
        store.epoch_deadline_trap();
        // Start-up code (static initialisers) runs under the same deadline
        // as a call would.
        store.set_epoch_deadline(crate::engine::deadline_ticks(Duration::from_secs(10)));
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("instantiating plugin `{}`", self.name))?;
        Ok(PluginInstance {
            store,
            bindings,
            plugin_id: self.id,
            calls: 0,
        })
    }
}

impl PluginInstance {
    /// Get ready for a call: the ids its log records carry, and the
    /// deadline after which the call traps.
    pub fn begin_call(&mut self, call: CallContext, timeout: Duration) {
        self.store.data_mut().begin_call(call);
        self.store
            .set_epoch_deadline(crate::engine::deadline_ticks(timeout));
    }

    /// The guest's handler and the store to call it with.
    pub fn handler(&mut self) -> (&Guest, &mut Store<InstanceState>) {
        (self.bindings.natsplug_plugin_handler(), &mut self.store)
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
}
