//! The plugin's configuration, set per plugin in the host's config file
//! (`[plugin.<name>.config]`).

use crate::bindings::natsplug::plugin::host;

/// The value of `key`, if the host's config sets one.
pub fn get(key: &str) -> Option<String> {
    host::config_get(key)
}

/// Every `(key, value)` entry set for this plugin.
pub fn entries() -> Vec<(String, String)> {
    host::config_entries()
}
