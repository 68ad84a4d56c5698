//! Loading a plugin: compile the component, check it against the WIT
//! contract, ask it which phases it implements, and keep it ready to
//! instantiate (an `InstancePre`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, types::ComponentItem};
use wasmtime::{Engine, Store};

use crate::bindings::{self, HANDLER_INTERFACE, HOST_INTERFACE, PluginPre, WIT_VERSION};
use crate::cache::ArtifactCache;
use crate::config::{FailureMode, PluginSettings, RuntimeConfig, validate_plugin_name};
use crate::sandbox::{InstanceState, PluginIdentity};
use natsplug_protocol::Phase;

static NEXT_PLUGIN_ID: AtomicU64 = AtomicU64::new(1);

/// A compiled, validated plugin, ready to instantiate. Shared by every call
/// that started on this version; a reload makes a new one.
pub struct LoadedPlugin {
    /// Unique per load: instances are tied to the load that made them.
    pub id: u64,
    /// The plugin name (file stem); the `{plugin}` token of its subjects.
    pub name: String,
    /// SHA-256 of the component bytes, hex.
    pub content_hash: String,
    /// Size of the component in bytes.
    pub size: usize,
    /// The version the plugin reports, if any.
    pub version: Option<String>,
    /// The phases the plugin implements, in exchange order.
    pub phases: Vec<Phase>,
    /// Calls of this plugin allowed in flight.
    pub max_in_flight: usize,
    /// Limits and failure policy of this plugin's calls.
    pub limits: PluginLimits,
    /// Time spent compiling (or loading from the cache) the component.
    pub compile_time: Duration,
    /// Whether the compiled component came from the artifact cache.
    pub from_cache: bool,
    pre: PluginPre<InstanceState>,
    identity: Arc<PluginIdentity>,
}

/// The resolved limits of one plugin: its own settings over the host's.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginLimits {
    /// Deadline of one call.
    pub call_timeout: Duration,
    /// Linear memory cap per instance.
    pub max_memory_bytes: usize,
    /// Calls running at once on worker threads (0 = no cap).
    pub max_concurrency: usize,
    /// Failure mode per phase, indexed like [`Phase::ALL`].
    pub failure_modes: [FailureMode; 4],
}

impl PluginLimits {
    /// Resolve `settings` over the host-wide `runtime` defaults.
    pub fn resolve(runtime: &RuntimeConfig, settings: &PluginSettings) -> PluginLimits {
        let memory_mb = settings.max_memory_mb.unwrap_or(runtime.max_memory_mb);
        PluginLimits {
            call_timeout: Duration::from_millis(
                settings.call_timeout_ms.unwrap_or(runtime.call_timeout_ms),
            ),
            max_memory_bytes: usize::try_from(memory_mb * 1024 * 1024).unwrap_or(usize::MAX),
            max_concurrency: settings
                .max_concurrency
                .unwrap_or(runtime.max_concurrency_per_plugin),
            failure_modes: Phase::ALL
                .map(|phase| settings.failure_mode.resolve(&runtime.failure_mode, phase)),
        }
    }

    /// The failure mode of `phase`.
    pub fn failure_mode(&self, phase: Phase) -> FailureMode {
        self.failure_modes[phase as usize]
    }
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("content_hash", &self.content_hash)
            .field("version", &self.version)
            .field("phases", &self.phases)
            .finish_non_exhaustive()
    }
}

/// A live instance of a plugin and its store.
pub struct PluginInstance {
    pub(crate) store: Store<InstanceState>,
    pub(crate) bindings: bindings::Plugin,
    /// The [`LoadedPlugin::id`] this instance was made from.
    pub plugin_id: u64,
    /// Calls served so far.
    pub calls: u64,
}

impl LoadedPlugin {
    /// A new instance with its own store, limits and empty WASI context.
    pub fn instantiate(&self) -> anyhow::Result<PluginInstance> {
        let state = InstanceState::new(self.identity.clone(), self.limits.max_memory_bytes);
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|state| &mut state.limits);
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

    /// Whether the plugin implements `phase`.
    pub fn implements(&self, phase: Phase) -> bool {
        self.phases.contains(&phase)
    }

    /// The short form of the content hash used in logs.
    pub fn short_hash(&self) -> &str {
        &self.content_hash[..12.min(self.content_hash.len())]
    }
}

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
        check_exports(name, &component, &self.engine)?;
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|error| {
            anyhow!(
                "plugin `{name}` needs an import this host does not provide: {error:#}. \
                 The host provides WASI 0.2 (without sockets or HTTP) and {HOST_INTERFACE}: \
                 build the plugin against the WIT package natsplug:plugin@{WIT_VERSION} and \
                 leave out other imports (for example, componentize-js needs `--disable http fetch-event`)"
            )
        })?;
        let pre = PluginPre::new(instance_pre)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("plugin `{name}` does not match the `plugin` world"))?;

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
            pre,
            identity,
        };
        let mut instance = plugin.instantiate()?;
        instance
            .store
            .set_epoch_deadline(crate::engine::deadline_ticks(Duration::from_secs(5)));
        let info = instance
            .bindings
            .natsplug_plugin_handler()
            .call_describe(&mut instance.store)
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
        plugin.version = info.version.filter(|v| !v.is_empty());
        plugin.phases = phases;
        plugin.identity = Arc::new(PluginIdentity {
            name: name.to_string(),
            version: plugin.version.clone(),
            config: settings.config.clone(),
        });
        Ok(plugin)
    }
}

/// The content hash of component bytes: SHA-256, hex.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The plugin name of a component file: its stem, checked as a subject token.
pub fn plugin_name_of(path: &Path) -> anyhow::Result<String> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| anyhow!("plugin file {} has no usable name", path.display()))?;
    validate_plugin_name(stem)?;
    Ok(stem.to_string())
}

/// Check that the component exports our handler interface at our version,
/// and say precisely what is wrong when it does not.
pub fn check_exports(name: &str, component: &Component, engine: &Engine) -> anyhow::Result<()> {
    let component_type = component.component_type();
    let exports: Vec<(String, bool)> = component_type
        .exports(engine)
        .map(|(export, item)| {
            (
                export.to_string(),
                matches!(item.ty, ComponentItem::ComponentInstance(_)),
            )
        })
        .collect();
    if exports
        .iter()
        .any(|(export, _)| export == HANDLER_INTERFACE)
    {
        return Ok(());
    }
    let unversioned = HANDLER_INTERFACE
        .split('@')
        .next()
        .unwrap_or(HANDLER_INTERFACE);
    if let Some((other, _)) = exports
        .iter()
        .find(|(export, _)| export.starts_with(&format!("{unversioned}@")))
    {
        bail!(
            "plugin `{name}` exports `{other}` but this host serves `{HANDLER_INTERFACE}`: \
             rebuild the plugin against the WIT package natsplug:plugin@{WIT_VERSION}"
        );
    }
    let listed = if exports.is_empty() {
        "nothing".to_string()
    } else {
        exports
            .iter()
            .map(|(e, _)| format!("`{e}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    bail!(
        "plugin `{name}` does not export `{HANDLER_INTERFACE}` (it exports {listed}): \
         a plugin targets the `plugin` world of natsplug:plugin@{WIT_VERSION}"
    )
}
