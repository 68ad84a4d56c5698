//! What `invoke`, `inspect` and `push` share: reading a component file
//! with clear errors, and the engine, loader and cache the host would use.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use natsplug::cache::ArtifactCache;
use natsplug::config::HostConfig;
use natsplug::plugin::PluginLoader;

/// The first bytes of every WebAssembly binary.
const WASM_MAGIC: &[u8; 4] = b"\0asm";
/// The version and layer of a core module (version 1).
const CORE_MODULE_VERSION: [u8; 4] = [1, 0, 0, 0];

/// Read the component at `path`, refusing what cannot be a component.
pub fn read_component(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "reading {} (give the path of a plugin component, e.g. target/wasm32-wasip2/release/NAME.wasm)",
            path.display()
        )
    })?;
    if bytes.len() < 8 || &bytes[..4] != WASM_MAGIC {
        bail!(
            "{} is not a WebAssembly file (it does not start with the `\\0asm` magic bytes): \
             give a plugin component built with `cargo build --target wasm32-wasip2 --release`",
            path.display()
        );
    }
    if bytes[4..8] == CORE_MODULE_VERSION {
        bail!(
            "{} is a core WebAssembly module, not a component: build the plugin for the \
             wasm32-wasip2 target (not wasm32-wasip1 or wasm32-unknown-unknown), or wrap the \
             module with `wasm-tools component new`",
            path.display()
        );
    }
    Ok(bytes)
}

/// The cache directory of `config`: its `cache.dir` or the default.
pub fn cache_root(config: &HostConfig) -> PathBuf {
    config
        .cache
        .dir
        .clone()
        .unwrap_or_else(ArtifactCache::default_root)
}

/// A loader with the engine the host builds for `config`, and the
/// host's compiled-artifact cache when `cache.enabled`.
pub fn loader(config: &HostConfig) -> anyhow::Result<PluginLoader> {
    let engine = natsplug::engine::build_engine(&config.runtime)?;
    let loader = PluginLoader::new(engine, &config.runtime)?;
    if !config.cache.enabled {
        return Ok(loader);
    }
    match ArtifactCache::open(&cache_root(config), loader.engine()) {
        Ok(cache) => Ok(loader.with_cache(cache)),
        Err(error) => {
            tracing::warn!("{error:#}; compiling without a cache");
            Ok(loader)
        }
    }
}
