//! Loading a plugin: compile the component (or take it from the artifact
//! cache), match it to a contract version this host serves, find which
//! phases it implements (its exports for 0.2.0, `describe` for 0.1.0), run
//! a first instance (and its `init`), and keep it ready to instantiate.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use natsplug_protocol::Phase;
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use super::exports::{Exports, PreparedExports};
use super::{LoadedPlugin, PluginLimits, content_hash, plugin_name_of};
use crate::bindings::{Contract, HOST_INTERFACE, WIT_VERSION};
use crate::cache::ArtifactCache;
use crate::config::{PluginSettings, RuntimeConfig, validate_plugin_name};
use crate::sandbox::{InstanceState, PluginIdentity};

static NEXT_PLUGIN_ID: AtomicU64 = AtomicU64::new(1);

/// Compiles and validates plugins for one engine.
#[derive(Clone)]
pub struct PluginLoader {
    engine: Engine,
    linker: Arc<Linker<InstanceState>>,
    runtime: Arc<RuntimeConfig>,
    cache: Option<Arc<ArtifactCache>>,
}

impl PluginLoader {
    /// A loader for `engine`, with the host-wide limits of `runtime`.
    pub fn new(engine: Engine, runtime: &RuntimeConfig) -> anyhow::Result<Self> {
        let linker = crate::sandbox::build_linker(&engine)?;
        Ok(PluginLoader {
            engine,
            linker: Arc::new(linker),
            runtime: Arc::new(runtime.clone()),
            cache: None,
        })
    }

    /// Keep compiled components in `cache`.
    pub fn with_cache(mut self, cache: ArtifactCache) -> Self {
        self.cache = Some(Arc::new(cache));
        self
    }

    /// The artifact cache, when enabled.
    pub fn cache(&self) -> Option<&ArtifactCache> {
        self.cache.as_deref()
    }

    /// The engine plugins are compiled for.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Load the component at `path`; the plugin name is the file stem.
    pub fn load_file(
        &self,
        path: &Path,
        settings: &PluginSettings,
    ) -> anyhow::Result<LoadedPlugin> {
        let name = plugin_name_of(path)?;
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading plugin file {}", path.display()))?;
        self.load_bytes(&name, &bytes, settings)
    }

    /// Load plugin `name` from component bytes.
    pub fn load_bytes(
        &self,
        name: &str,
        bytes: &[u8],
        settings: &PluginSettings,
    ) -> anyhow::Result<LoadedPlugin> {
        validate_plugin_name(name)?;
        let content_hash = content_hash(bytes);
        let started = Instant::now();
        let cached = self
            .cache
            .as_ref()
            .and_then(|cache| cache.get(&self.engine, &content_hash));
        let from_cache = cached.is_some();
        let component = match cached {
            Some(component) => component,
            None => Component::new(&self.engine, bytes).map_err(|error| {
                anyhow!(
                    "`{name}` is not a valid WebAssembly component: {error:#}. \
                     Build it for the wasm32-wasip2 target (or wrap a core module with `wasm-tools component new`)"
                )
            })?,
        };
        let compile_time = started.elapsed();
        let mut plugin = self.prepare(
            name,
            component.clone(),
            content_hash,
            bytes.len(),
            compile_time,
            settings,
        )?;
        plugin.from_cache = from_cache;
        // Only components that passed validation are worth keeping.
        if !from_cache && let Some(cache) = &self.cache {
            cache.put(&plugin.content_hash, &component);
        }
        Ok(plugin)
    }

    /// Load plugin `name` from a component already compiled for this
    /// loader's engine from `bytes`; the cache is neither read nor written.
    /// For tools that look at the component themselves (`natsplug inspect`).
    pub fn load_component(
        &self,
        name: &str,
        component: Component,
        bytes: &[u8],
        settings: &PluginSettings,
    ) -> anyhow::Result<LoadedPlugin> {
        validate_plugin_name(name)?;
        self.prepare(
            name,
            component,
            content_hash(bytes),
            bytes.len(),
            Duration::ZERO,
            settings,
        )
    }

    fn prepare(
        &self,
        name: &str,
        component: Component,
        content_hash: String,
        size: usize,
        compile_time: Duration,
        settings: &PluginSettings,
    ) -> anyhow::Result<LoadedPlugin> {
        let contract = Contract::of(name, &component, &self.engine)?;
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|error| {
            anyhow!(
                "plugin `{name}` needs an import this host does not provide: {error:#}. \
                 The host provides WASI 0.2 (without sockets or HTTP) and {HOST_INTERFACE}: \
                 build the plugin against the WIT package natsplug:plugin@{WIT_VERSION} and \
                 leave out other imports (for example, componentize-js needs `--disable http fetch-event`)"
            )
        })?;
        let exports = PreparedExports::new(name, contract, instance_pre)?;

        let identity = Arc::new(PluginIdentity {
            name: name.to_string(),
            version: None,
            config: settings.config.clone(),
        });
        let mut plugin = LoadedPlugin {
            id: NEXT_PLUGIN_ID.fetch_add(1, Ordering::Relaxed),
            name: name.to_string(),
            content_hash,
            size,
            version: None,
            phases: Vec::new(),
            max_in_flight: settings
                .max_in_flight
                .unwrap_or(self.runtime.max_in_flight_per_plugin),
            limits: PluginLimits::resolve(&self.runtime, settings),
            compile_time,
            from_cache: false,
            exports,
            identity,
        };
        let mut instance = plugin.instantiate()?;
        let (version, phases) = match contract {
            Contract::V0_1 => describe(name, &mut instance)?,
            Contract::V0_2 => (
                instance.init_version().map(str::to_string),
                plugin.exports.exported_phases(),
            ),
        };
        if phases.is_empty() {
            bail!("plugin `{name}` implements no phase; it would never be called");
        }
        plugin.version = version;
        plugin.phases = phases;
        plugin.identity = Arc::new(PluginIdentity {
            name: name.to_string(),
            version: plugin.version.clone(),
            config: settings.config.clone(),
        });
        Ok(plugin)
    }
}

/// A 0.1.0 plugin's `describe`: its version and the phases it lists.
fn describe(
    name: &str,
    instance: &mut super::PluginInstance,
) -> anyhow::Result<(Option<String>, Vec<Phase>)> {
    instance.begin_call(Default::default(), Duration::from_secs(5));
    let (exports, store, _) = instance.parts();
    let Exports::V0_1(bindings) = exports else {
        unreachable!("describe is called on 0.1.0 plugins only");
    };
    let info = bindings
        .natsplug_plugin_handler()
        .call_describe(store)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("calling `describe` of plugin `{name}`"))?;
    let mut phases: Vec<Phase> = info.phases.iter().map(|p| Phase::from(*p)).collect();
    phases.sort();
    phases.dedup();
    if phases.is_empty() {
        bail!(
            "plugin `{name}` implements no phase (its `describe` lists none); it would never be called"
        );
    }
    Ok((info.version.filter(|v| !v.is_empty()), phases))
}

/// Check that the component targets a contract version this host serves,
/// and say precisely what is wrong when it does not.
pub fn check_exports(name: &str, component: &Component, engine: &Engine) -> anyhow::Result<()> {
    Contract::of(name, component, engine).map(|_| ())
}
