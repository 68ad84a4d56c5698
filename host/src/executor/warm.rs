//! Warm instances: one per plugin for each worker (and one set shared by
//! the calls run on receiving threads), reused from call to call when the
//! instance policy allows, dropped once their plugin is unloaded.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use rustc_hash::FxHashMap;

use crate::plugin::{LoadedPlugin, PluginInstance};
use crate::stats::HostStats;

/// A warm instance of one plugin.
pub struct WarmSlot {
    plugin: Weak<LoadedPlugin>,
    /// The instance, when one is warm.
    pub instance: Option<PluginInstance>,
}

/// Warm instances by plugin name, one each. Looked up on every call, by a
/// name the host chose: a fast hash, not one hardened against chosen keys.
#[derive(Default)]
pub struct WarmInstances(FxHashMap<String, WarmSlot>);

impl WarmInstances {
    /// The slot for `plugin`'s current version.
    pub fn slot(&mut self, plugin: &Arc<LoadedPlugin>) -> &mut WarmSlot {
        // Look up before inserting: the common case needs no copy of the name.
        if !self.0.contains_key(&plugin.name) {
            let empty = WarmSlot {
                plugin: Weak::new(),
                instance: None,
            };
            self.0.insert(plugin.name.clone(), empty);
        }
        let Some(slot) = self.0.get_mut(&plugin.name) else {
            unreachable!("the slot was just inserted")
        };
        if !std::ptr::eq(slot.plugin.as_ptr(), Arc::as_ptr(plugin)) {
            slot.plugin = Arc::downgrade(plugin);
        }
        slot
    }

    /// Drop the instances of unloaded plugins: they hold pool slots.
    pub fn sweep(&mut self, stats: &HostStats) {
        self.0.retain(|_, slot| {
            let keep = slot.plugin.strong_count() > 0;
            if !keep && slot.instance.is_some() {
                stats.warm_instances.fetch_sub(1, Ordering::Relaxed);
            }
            keep
        });
    }
}
