//! The serving host: one queue subscription per implemented phase of every
//! plugin, feeding the [`Executor`]; installing, replacing and removing
//! plugins while serving; draining on shutdown.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use arc_swap::ArcSwap;
use async_nats::{Client, Subscriber};
use futures::StreamExt;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{HostConfig, OverloadPolicy};
use crate::dispatch::{CallSettings, Outcome};
use crate::executor::{Executor, Job, WorkerContext, publish_outcome};
use crate::logs::LogPublisher;
use crate::logs::{LogFilter, LogLevel, LogPipeline, LogRecord, LogSink, NullSink, TracingSink};
use crate::nats::{ConnectionMonitor, NatsConnection};
use crate::plugin::{LoadedPlugin, PluginLoader};
use crate::stats::{EndpointSnapshot, EndpointStats, HostStats};
use natsplug_protocol::Phase;
use natsplug_protocol::{self as protocol, RequestError};

/// A plugin being served and its subscriptions.
struct ServedPlugin {
    /// The version new requests run on; swapped atomically on reload.
    current: Arc<ArcSwap<LoadedPlugin>>,
    /// Caps the plugin's calls in flight.
    permits: Arc<Semaphore>,
    subscriptions: BTreeMap<Phase, PhaseSubscription>,
    /// Times a new version replaced the served one.
    reloads: u64,
    /// Where the served version came from.
    origin: Origin,
}

struct PhaseSubscription {
    subject: String,
    stats: Arc<EndpointStats>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// What a host serves for one plugin, for status output.
#[derive(Debug, Clone)]
pub struct PluginStatus {
    pub name: String,
    pub version: Option<String>,
    pub content_hash: String,
    /// Times a new version replaced the served one.
    pub reloads: u64,
    /// Where the served version came from.
    pub origin: Origin,
    pub endpoints: Vec<EndpointStatus>,
}

/// Where a plugin's component comes from. When both hold a plugin of the
/// same name, the directory wins: a file is a deliberate local override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A `.wasm` file in the plugins directory.
    Directory,
    /// An object in the JetStream object store bucket.
    Bucket,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Directory => "directory",
            Origin::Bucket => "bucket",
        }
    }
}

/// A version of a plugin that failed to load (the previous version, if
/// any, keeps serving).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadFailure {
    pub content_hash: String,
    pub origin: Origin,
    pub error: String,
}

/// Held while one plugin is brought in line with a source: changes to one
/// plugin apply in order, changes to different plugins in parallel.
pub struct PluginLock {
    name: String,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl PluginLock {
    /// The plugin locked.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// What [`Host::sync_file`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    /// A plugin that was not served is now.
    Loaded,
    /// A new version replaced the served one.
    Reloaded,
    /// The file is gone and so is the plugin.
    Removed,
    /// Nothing to do: same content as served, or nothing served and no file.
    Unchanged,
}

/// One served phase subject and its counters.
#[derive(Debug, Clone)]
pub struct EndpointStatus {
    pub phase: Phase,
    pub subject: String,
    pub stats: EndpointSnapshot,
    /// The endpoint's latency histogram (shared, live).
    pub latency: prometheus_client::metrics::histogram::Histogram,
}

/// Everything a subscription task needs.
#[derive(Clone)]
struct Dispatcher {
    client: Client,
    executor: Arc<Executor>,
    host_permits: Arc<Semaphore>,
    max_request_bytes: usize,
    overload: OverloadPolicy,
    max_queue_wait: std::time::Duration,
    stats: Arc<HostStats>,
}

/// A running host.
pub struct Host {
    config: Arc<HostConfig>,
    loader: PluginLoader,
    dispatcher: Dispatcher,
    plugins: Mutex<BTreeMap<String, ServedPlugin>>,
    stats: Arc<HostStats>,
    sink: Arc<dyn LogSink>,
    publisher: Option<Arc<LogPublisher>>,
    started: std::time::SystemTime,
    id: String,
    /// Cancels the background tasks (discovery, monitoring) at shutdown.
    background: CancellationToken,
    /// One lock per plugin name: changes to one plugin apply in order,
    /// changes to different plugins in parallel.
    sync_locks: std::sync::Mutex<BTreeMap<String, Arc<Mutex<()>>>>,
    closed: std::sync::atomic::AtomicBool,
    /// Plugins whose last version failed to load and is not fixed yet.
    failures: Mutex<BTreeMap<String, LoadFailure>>,
    /// Told the name of a plugin whose file left the directory, so the
    /// bucket (if any) can serve its version instead.
    directory_released: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedSender<String>>>,
    /// Watches the connection; confirms subscriptions.
    monitor: Arc<ConnectionMonitor>,
}

impl Host {
    /// Build the runtime for `config` on the connection `client`. Serves
    /// nothing until plugins are installed (see [`Host::load_directory`]).
    pub async fn new(config: HostConfig, client: Client) -> anyhow::Result<Host> {
        Host::with_sink(config, client, Arc::new(NullSink)).await
    }

    /// Like [`Host::new`], with log records also going to `sink` (besides
    /// the host's own log and NATS).
    pub async fn with_sink(
        config: HostConfig,
        client: Client,
        sink: Arc<dyn LogSink>,
    ) -> anyhow::Result<Host> {
        let connection = NatsConnection {
            client,
            monitor: ConnectionMonitor::detached(),
        };
        Host::with_connection(config, connection, sink).await
    }

    /// Build the runtime on a connection made by
    /// [`crate::nats::connect_with`]: connection events (reconnects, slow
    /// consumers, permission violations) count in the host's stats.
    pub async fn with_connection(
        config: HostConfig,
        connection: NatsConnection,
        sink: Arc<dyn LogSink>,
    ) -> anyhow::Result<Host> {
        let NatsConnection { client, monitor } = connection;
        config.validate()?;
        let runtime = &config.runtime;
        let engine = crate::engine::build_engine(runtime)?;
        let mut loader = PluginLoader::new(engine, runtime)?;
        if config.cache.enabled {
            let root = config
                .cache
                .dir
                .clone()
                .unwrap_or_else(crate::cache::ArtifactCache::default_root);
            match crate::cache::ArtifactCache::open(&root, loader.engine()) {
                Ok(cache) => {
                    tracing::debug!(dir = %cache.dir().display(), "compiled-artifact cache");
                    loader = loader.with_cache(cache);
                }
                Err(error) => tracing::warn!("{error:#}; compiling without a cache"),
            }
        }
        let server_max_payload = client.server_info().max_payload;
        let max_reply_bytes = if server_max_payload > 0 {
            server_max_payload
        } else {
            usize::MAX
        };
        if runtime.max_request_bytes > max_reply_bytes {
            tracing::warn!(
                max_request_bytes = runtime.max_request_bytes,
                server_max_payload,
                "runtime.max_request_bytes is above the NATS server's max_payload; the server rejects larger messages first"
            );
        }
        let stats = monitor.stats();
        let publisher = if config.logs.enabled {
            let publisher = LogPublisher::start(client.clone(), &config.logs, stats.clone())
                .await
                .context("starting the log publisher")?;
            Some(Arc::new(publisher))
        } else {
            None
        };
        let mut outputs: Vec<Arc<dyn LogSink>> = vec![Arc::new(TracingSink), sink];
        if let Some(publisher) = &publisher {
            outputs.push(publisher.clone());
        }
        let sink: Arc<dyn LogSink> = Arc::new(LogPipeline::new(
            LogFilter::new(&config, stats.log_records_rate_limited.clone()),
            outputs,
        ));
        let executor = Executor::start(
            runtime.worker_count(),
            WorkerContext {
                client: client.clone(),
                runtime: tokio::runtime::Handle::current(),
                settings: CallSettings::from_runtime(runtime, max_reply_bytes),
                sink: sink.clone(),
                stats: stats.clone(),
                max_in_flight: runtime.max_in_flight,
                // Running a call where it was received needs a runtime that
                // can hand its other tasks to another thread meanwhile.
                inline_call_max: (runtime.inline_call_max_us > 0
                    && tokio::runtime::Handle::current().runtime_flavor()
                        == tokio::runtime::RuntimeFlavor::MultiThread)
                    .then(|| std::time::Duration::from_micros(runtime.inline_call_max_us)),
            },
        )?;
        let dispatcher = Dispatcher {
            client,
            executor: Arc::new(executor),
            host_permits: Arc::new(Semaphore::new(runtime.max_in_flight)),
            max_request_bytes: runtime.max_request_bytes,
            overload: runtime.overload,
            max_queue_wait: std::time::Duration::from_millis(runtime.max_queue_wait_ms),
            stats: stats.clone(),
        };
        Ok(Host {
            config: Arc::new(config),
            loader,
            dispatcher,
            plugins: Mutex::new(BTreeMap::new()),
            stats,
            sink,
            publisher,
            started: std::time::SystemTime::now(),
            id: nuid::next().to_string(),
            background: CancellationToken::new(),
            sync_locks: std::sync::Mutex::new(BTreeMap::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
            failures: Mutex::new(BTreeMap::new()),
            directory_released: std::sync::Mutex::new(None),
            monitor,
        })
    }

    /// The configuration the host runs with.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// The loader plugins are compiled with.
    pub fn loader(&self) -> &PluginLoader {
        &self.loader
    }

    /// Host-wide counters.
    pub fn stats(&self) -> &HostStats {
        &self.stats
    }

    /// The NATS connection the host serves on.
    pub fn client(&self) -> &Client {
        &self.dispatcher.client
    }

    /// The unique id of this host (its service instance id in discovery).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// When the host started.
    pub fn started(&self) -> std::time::SystemTime {
        self.started
    }

    /// Calls queued or running now.
    pub fn in_flight(&self) -> usize {
        self.config
            .runtime
            .max_in_flight
            .saturating_sub(self.dispatcher.host_permits.available_permits())
    }

    /// A token cancelled at shutdown, for tasks that live as long as the host.
    pub fn background(&self) -> CancellationToken {
        self.background.clone()
    }

    /// Why the host is not ready, if it is not: NATS disconnected, or a
    /// plugin version (from the directory or the bucket) that failed to load.
    pub async fn readiness(&self) -> Result<(), String> {
        if self.dispatcher.client.connection_state() != async_nats::connection::State::Connected {
            return Err("not connected to NATS".into());
        }
        let failures = self.failures.lock().await;
        if let Some((name, failure)) = failures.iter().next() {
            return Err(format!(
                "plugin `{name}` (version {} from the {}) failed to load: {}",
                short(&failure.content_hash),
                failure.origin.as_str(),
                failure.error
            ));
        }
        Ok(())
    }

    /// What watches the NATS connection.
    pub fn monitor(&self) -> &Arc<ConnectionMonitor> {
        &self.monitor
    }

    /// The subject of `phase` of plugin `name`.
    pub fn subject(&self, plugin: &str, phase: Phase) -> String {
        format!("{}.{plugin}.{phase}", self.config.subjects.prefix)
    }

    /// Load every `*.wasm` in the configured plugins directory. A file that
    /// fails to load is reported and skipped; the others are served.
    /// Returns the files that failed, with why.
    pub async fn load_directory(&self) -> anyhow::Result<Vec<(PathBuf, anyhow::Error)>> {
        let dir = self.config.plugins.dir.clone();
        let files = wasm_files(&dir)?;
        if files.is_empty() && self.config.plugins.bucket.is_none() {
            tracing::warn!(dir = %dir.display(), "no .wasm plugins in the plugins directory yet");
        }
        let mut failures = Vec::new();
        for path in files {
            if let Err(error) = self.sync_file(&path).await {
                failures.push((path, error));
            }
        }
        Ok(failures)
    }

    /// Bring the plugin of `path` in line with the file: load it, reload it
    /// when its content changed, or remove it when the file is gone. A file
    /// that fails to load leaves the served version as it was; the error
    /// is logged, emitted as a log record and returned.
    pub async fn sync_file(&self, path: &Path) -> anyhow::Result<SyncOutcome> {
        let name = crate::plugin::plugin_name_of(path)?;
        let lock = self.lock_plugin(&name).await;
        let bytes = match tokio::fs::read(path).await {
            Ok(bytes) => Some(bytes),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => {
                return Err(anyhow::Error::new(error)
                    .context(format!("reading plugin file {}", path.display())));
            }
        };
        let gone = bytes.is_none();
        let outcome = self.apply(&lock, Origin::Directory, bytes).await;
        drop(lock);
        if gone {
            let released = self
                .directory_released
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(sender) = released.as_ref() {
                let _ = sender.send(name);
            }
        }
        outcome
    }

    /// Take the lock of plugin `name`, to [`Host::apply`] a version of it.
    pub async fn lock_plugin(&self, name: &str) -> PluginLock {
        let lock = {
            let mut locks = self.sync_locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(name.to_string()).or_default().clone()
        };
        PluginLock {
            name: name.to_string(),
            _guard: lock.lock_owned().await,
        }
    }

    /// Bring the locked plugin in line with what `origin` holds for it:
    /// `Some(bytes)` is loaded (or reloaded when its content differs from
    /// the served version); `None` removes the plugin if it was served from
    /// `origin`. A version that fails to load leaves the served one as it
    /// was; the failure is logged, emitted as a log record, kept for
    /// readiness and discovery until a good version arrives, and returned.
    pub async fn apply(
        &self,
        lock: &PluginLock,
        origin: Origin,
        bytes: Option<Vec<u8>>,
    ) -> anyhow::Result<SyncOutcome> {
        let name = lock.name();
        let Some(bytes) = bytes else {
            self.clear_failure(name, Some(origin)).await;
            let served_from_origin = self.served_origin(name).await == Some(origin);
            return Ok(if served_from_origin && self.remove(name).await {
                SyncOutcome::Removed
            } else {
                SyncOutcome::Unchanged
            });
        };
        let content_hash = crate::plugin::content_hash(&bytes);
        let served_hash = self.served_hash(name).await;
        if served_hash.as_deref() == Some(content_hash.as_str()) {
            self.clear_failure(name, None).await;
            if let Some(served) = self.plugins.lock().await.get_mut(name) {
                served.origin = origin;
            }
            return Ok(SyncOutcome::Unchanged);
        }
        let loader = self.loader.clone();
        let settings = self.config.plugin_settings(name);
        let compile_name = name.to_string();
        let compiled = tokio::task::spawn_blocking(move || {
            loader.load_bytes(&compile_name, &bytes, &settings)
        })
        .await
        .context("the compile task failed")?;
        match compiled {
            Ok(plugin) => {
                self.clear_failure(name, None).await;
                let replaced = self.install_from(plugin, origin).await?;
                Ok(if replaced {
                    SyncOutcome::Reloaded
                } else {
                    SyncOutcome::Loaded
                })
            }
            Err(error) => {
                let source = match origin {
                    Origin::Directory => "the plugins directory".to_string(),
                    Origin::Bucket => format!(
                        "bucket `{}`",
                        self.config.plugins.bucket.as_deref().unwrap_or_default()
                    ),
                };
                let version = short(&content_hash);
                let message = if served_hash.is_some() {
                    format!(
                        "plugin `{name}` version {version} from {source} failed to load; the previous version keeps serving: {error:#}"
                    )
                } else {
                    format!(
                        "plugin `{name}` version {version} from {source} failed to load: {error:#}"
                    )
                };
                tracing::error!(plugin = %name, hash = %version, origin = origin.as_str(), "{message}");
                self.failures.lock().await.insert(
                    name.to_string(),
                    LoadFailure {
                        content_hash,
                        origin,
                        error: format!("{error:#}"),
                    },
                );
                self.host_event(name, LogLevel::Error, message);
                Err(error)
            }
        }
    }

    /// When the served version of the locked plugin has `content_hash`,
    /// record it as coming from `origin`, forget any failure of another
    /// version, and return true: there is nothing to load.
    pub async fn confirm_served(
        &self,
        lock: &PluginLock,
        origin: Origin,
        content_hash: &str,
    ) -> bool {
        let name = lock.name();
        {
            let mut plugins = self.plugins.lock().await;
            match plugins.get_mut(name) {
                Some(served) if served.current.load().content_hash == content_hash => {
                    served.origin = origin;
                }
                _ => return false,
            }
        }
        self.clear_failure(name, None).await;
        true
    }

    /// Forget the load failure of `name` (only one from `origin`, if given).
    async fn clear_failure(&self, name: &str, origin: Option<Origin>) {
        let mut failures = self.failures.lock().await;
        if failures
            .get(name)
            .is_some_and(|f| origin.is_none_or(|origin| f.origin == origin))
        {
            failures.remove(name);
        }
    }

    /// Plugin versions that failed to load and are not fixed yet.
    pub async fn failures(&self) -> BTreeMap<String, LoadFailure> {
        self.failures.lock().await.clone()
    }

    /// Where the served version of `name` came from.
    pub async fn served_origin(&self, name: &str) -> Option<Origin> {
        self.plugins.lock().await.get(name).map(|s| s.origin)
    }

    /// Whether the plugins directory holds a file for plugin `name` (which
    /// then wins over the bucket).
    pub fn directory_holds(&self, name: &str) -> bool {
        self.config
            .plugins
            .dir
            .join(format!("{name}.wasm"))
            .is_file()
    }

    /// Have `sender` told the name of every plugin whose file leaves the
    /// plugins directory.
    pub fn on_directory_release(&self, sender: tokio::sync::mpsc::UnboundedSender<String>) {
        *self
            .directory_released
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(sender);
    }

    /// The content hash of the version of `name` served now.
    pub async fn served_hash(&self, name: &str) -> Option<String> {
        let plugins = self.plugins.lock().await;
        plugins
            .get(name)
            .map(|served| served.current.load().content_hash.clone())
    }

    /// Emit a host event about plugin `name` as a log record.
    fn host_event(&self, name: &str, level: LogLevel, message: String) {
        self.sink.emit(LogRecord {
            timestamp: std::time::SystemTime::now(),
            level,
            message,
            plugin: name.to_string(),
            plugin_version: None,
            request_id: None,
            session_id: None,
            trace_id: None,
            fields: Vec::new(),
        });
    }

    /// Serve `plugin`: subscribe to its phases, or, when a plugin of that
    /// name is served already, swap it in. Requests in flight finish on the
    /// version they started on. Returns whether a served version was replaced.
    pub async fn install(&self, plugin: LoadedPlugin) -> anyhow::Result<bool> {
        self.install_from(plugin, Origin::Directory).await
    }

    /// [`Host::install`], recording where the plugin came from.
    pub async fn install_from(&self, plugin: LoadedPlugin, origin: Origin) -> anyhow::Result<bool> {
        if self.closed.load(Ordering::Acquire) {
            bail!("the host is shut down");
        }
        let swap_started = Instant::now();
        let plugin = Arc::new(plugin);
        let mut plugins = self.plugins.lock().await;
        let name = plugin.name.clone();
        let replaced = plugins.contains_key(&name);
        let served = match plugins.remove(&name) {
            Some(mut served) => {
                // Phases the new version dropped are drained first, while
                // the old version still serves what they had received.
                let gone: Vec<Phase> = served
                    .subscriptions
                    .keys()
                    .copied()
                    .filter(|phase| !plugin.implements(*phase))
                    .collect();
                for phase in gone {
                    if let Some(subscription) = served.subscriptions.remove(&phase) {
                        stop_subscription(subscription).await;
                    }
                }
                let previous = served.current.swap(plugin.clone());
                served.reloads += 1;
                served.origin = origin;
                if let Err(error) = self.subscribe_missing(&mut served, &plugin).await {
                    // The phases served before go on serving.
                    plugins.insert(name, served);
                    return Err(error);
                }
                let message = format!("plugin `{name}` reloaded");
                tracing::info!(
                    plugin = %name,
                    old_hash = %previous.short_hash(),
                    new_hash = %plugin.short_hash(),
                    origin = origin.as_str(),
                    version = plugin.version.as_deref().unwrap_or("-"),
                    compile_ms = plugin.compile_time.as_millis() as u64,
                    cached = plugin.from_cache,
                    swap_us = swap_started.elapsed().as_micros() as u64,
                    reloads = served.reloads,
                    "{message}"
                );
                self.host_event(&name, LogLevel::Info, message);
                served
            }
            None => {
                let mut served = ServedPlugin {
                    current: Arc::new(ArcSwap::new(plugin.clone())),
                    permits: Arc::new(Semaphore::new(plugin.max_in_flight)),
                    subscriptions: BTreeMap::new(),
                    reloads: 0,
                    origin,
                };
                self.subscribe_missing(&mut served, &plugin).await?;
                let subjects: Vec<&str> = served
                    .subscriptions
                    .values()
                    .map(|s| s.subject.as_str())
                    .collect();
                tracing::info!(
                    plugin = %name,
                    version = plugin.version.as_deref().unwrap_or("-"),
                    hash = %plugin.short_hash(),
                    origin = origin.as_str(),
                    compile_ms = plugin.compile_time.as_millis() as u64,
                    cached = plugin.from_cache,
                    subjects = %subjects.join(" "),
                    queue_group = %self.config.subjects.queue_group,
                    "plugin `{name}` loaded"
                );
                self.host_event(&name, LogLevel::Info, format!("plugin `{name}` loaded"));
                served
            }
        };
        plugins.insert(name, served);
        Ok(replaced)
    }

    /// Subscribe to the phases of `plugin` that `served` lacks, and wait
    /// for the server to accept them: a subject the server refuses fails
    /// with a [`crate::nats::PermissionViolation`] naming it, and none of
    /// the new subscriptions is kept.
    async fn subscribe_missing(
        &self,
        served: &mut ServedPlugin,
        plugin: &LoadedPlugin,
    ) -> anyhow::Result<()> {
        let errors = self.monitor.server_errors();
        let mut added = Vec::new();
        let subscribed = self.subscribe_phases(served, plugin, &mut added).await;
        let result = match subscribed {
            Ok(()) if added.is_empty() => Ok(()),
            Ok(()) => self
                .monitor
                .confirm_subscriptions(
                    &self.dispatcher.client,
                    &added,
                    errors,
                    Duration::from_millis(self.config.nats.permission_check_ms),
                )
                .await
                .map_err(anyhow::Error::new),
            Err(error) => Err(error),
        };
        if result.is_err() {
            let new: Vec<Phase> = served
                .subscriptions
                .iter()
                .filter(|(_, s)| added.contains(&s.subject))
                .map(|(phase, _)| *phase)
                .collect();
            for phase in new {
                if let Some(subscription) = served.subscriptions.remove(&phase) {
                    stop_subscription(subscription).await;
                }
            }
        }
        result
    }

    async fn subscribe_phases(
        &self,
        served: &mut ServedPlugin,
        plugin: &LoadedPlugin,
        added: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        for &phase in &plugin.phases {
            if served.subscriptions.contains_key(&phase) {
                continue;
            }
            let subject = self.subject(&plugin.name, phase);
            let subscriber = self
                .dispatcher
                .client
                .queue_subscribe(subject.clone(), self.config.subjects.queue_group.clone())
                .await
                .with_context(|| format!("subscribing to {subject}"))?;
            added.push(subject.clone());
            let stats = Arc::new(EndpointStats::default());
            let stop = CancellationToken::new();
            let task = tokio::spawn(serve_subscription(
                subscriber,
                phase,
                served.current.clone(),
                served.permits.clone(),
                stats.clone(),
                self.dispatcher.clone(),
                stop.clone(),
            ));
            served.subscriptions.insert(
                phase,
                PhaseSubscription {
                    subject,
                    stats,
                    stop,
                    task,
                },
            );
        }
        Ok(())
    }

    /// Stop serving plugin `name`: drain its subscriptions; calls in flight
    /// finish. Returns whether it was served.
    pub async fn remove(&self, name: &str) -> bool {
        let served = self.plugins.lock().await.remove(name);
        match served {
            Some(served) => {
                for subscription in served.subscriptions.into_values() {
                    stop_subscription(subscription).await;
                }
                tracing::info!(plugin = %name, "plugin `{name}` removed");
                self.host_event(name, LogLevel::Info, format!("plugin `{name}` removed"));
                true
            }
            None => false,
        }
    }

    /// What is served now, plugin by plugin.
    pub async fn status(&self) -> Vec<PluginStatus> {
        let plugins = self.plugins.lock().await;
        plugins
            .iter()
            .map(|(name, served)| {
                let current = served.current.load();
                PluginStatus {
                    name: name.clone(),
                    version: current.version.clone(),
                    content_hash: current.content_hash.clone(),
                    reloads: served.reloads,
                    origin: served.origin,
                    endpoints: served
                        .subscriptions
                        .iter()
                        .map(|(phase, s)| EndpointStatus {
                            phase: *phase,
                            subject: s.subject.clone(),
                            stats: s.stats.snapshot(),
                            latency: s.stats.latency.clone(),
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// The subjects served now.
    pub async fn subjects(&self) -> Vec<String> {
        let plugins = self.plugins.lock().await;
        plugins
            .values()
            .flat_map(|p| p.subscriptions.values().map(|s| s.subject.clone()))
            .collect()
    }

    /// Stop taking requests, answer every request already received, then
    /// flush the connection. The host serves nothing afterwards.
    ///
    /// The drain is bounded by `nats.drain_timeout_ms`: with NATS out of
    /// reach, the host gives up waiting for it after that long, says so,
    /// and returns an error.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        let limit = Duration::from_millis(self.config.nats.drain_timeout_ms);
        let deadline = tokio::time::Instant::now() + limit;
        self.closed.store(true, Ordering::Release);
        let plugins = std::mem::take(&mut *self.plugins.lock().await);
        let subscriptions: Vec<PhaseSubscription> = plugins
            .into_values()
            .flat_map(|served| served.subscriptions.into_values())
            .collect();
        // Stop them all at once; they drain side by side.
        for subscription in &subscriptions {
            subscription.stop.cancel();
        }
        let mut abandoned = Vec::new();
        for mut subscription in subscriptions {
            match tokio::time::timeout_at(deadline, &mut subscription.task).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::error!(subject = %subscription.subject, %error, "subscription task failed")
                }
                Err(_) => {
                    subscription.task.abort();
                    abandoned.push(subscription.subject);
                }
            }
        }
        let executor = self.dispatcher.executor.clone();
        let workers = tokio::task::spawn_blocking(move || executor.shutdown());
        let workers_done = tokio::time::timeout_at(deadline, async {
            let joined = workers.await;
            self.dispatcher.executor.calls_here_done().await;
            joined
        })
        .await;
        let flushed = match workers_done {
            Ok(joined) => {
                joined.context("waiting for the workers")?;
                self.background.cancel();
                if let Some(publisher) = &self.publisher {
                    // Log records of the last calls go out before the connection closes.
                    let _ = tokio::time::timeout_at(deadline, publisher.close()).await;
                }
                tokio::time::timeout_at(deadline, self.dispatcher.client.flush())
                    .await
                    .ok()
                    .map(|result| result.context("flushing the last replies to NATS"))
            }
            Err(_) => None,
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match flushed {
            Some(Ok(())) if abandoned.is_empty() => {
                tracing::info!(elapsed_ms, "drained");
                Ok(())
            }
            Some(Err(error)) => Err(error),
            _ => {
                let message = format!(
                    "gave up draining after {} ms (nats.drain_timeout_ms): {}",
                    limit.as_millis(),
                    if abandoned.is_empty() {
                        "the last replies could not be flushed to NATS".to_string()
                    } else {
                        format!(
                            "{} subscription(s) did not drain ({}); is NATS reachable?",
                            abandoned.len(),
                            abandoned.join(", ")
                        )
                    }
                );
                tracing::error!(elapsed_ms, "{message}");
                bail!(message)
            }
        }
    }
}

/// The first 12 hex digits of a content hash, as logs show it.
fn short(content_hash: &str) -> &str {
    &content_hash[..content_hash.len().min(12)]
}

/// The `*.wasm` files of `dir`, sorted.
pub fn wasm_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "reading the plugins directory {} (create it, or point --plugins at the directory holding your .wasm files)",
            dir.display()
        )
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "wasm") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

async fn stop_subscription(subscription: PhaseSubscription) {
    subscription.stop.cancel();
    if let Err(error) = subscription.task.await {
        tracing::error!(subject = %subscription.subject, %error, "subscription task failed");
    }
}

/// Read one phase subscription until stopped, then drain it: unsubscribe
/// and still dispatch every message that had already arrived.
async fn serve_subscription(
    mut subscriber: Subscriber,
    phase: Phase,
    plugin: Arc<ArcSwap<LoadedPlugin>>,
    permits: Arc<Semaphore>,
    stats: Arc<EndpointStats>,
    dispatcher: Dispatcher,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            message = subscriber.next() => match message {
                Some(message) => dispatcher.dispatch(message, phase, &plugin, &permits, &stats).await,
                None => return,
            },
        }
    }
    if let Err(error) = subscriber.drain().await {
        tracing::warn!(%phase, %error, "could not drain a subscription");
        return;
    }
    while let Some(message) = subscriber.next().await {
        dispatcher
            .dispatch(message, phase, &plugin, &permits, &stats)
            .await;
    }
}

impl Dispatcher {
    async fn dispatch(
        &self,
        message: async_nats::Message,
        phase: Phase,
        plugin: &ArcSwap<LoadedPlugin>,
        permits: &Arc<Semaphore>,
        stats: &Arc<EndpointStats>,
    ) {
        let received = Instant::now();
        let Some(reply_to) = message.reply.clone() else {
            self.stats.no_reply_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(subject = %message.subject, "dropped a message without a reply subject");
            return;
        };
        if let Some(outcome) =
            crate::dispatch::refuse_oversized(&message.payload, self.max_request_bytes)
        {
            self.reply(reply_to, outcome, stats, received).await;
            return;
        }
        // The plugin's permit first: a plugin at its cap must not hold a
        // host-wide slot while it waits. Both are held until the call is done.
        let permits = match self.acquire(permits).await {
            None => Err("plugin `{}` is at its concurrency limit; try again later"),
            Some(plugin_permit) => match self.acquire(&self.host_permits).await {
                None => Err(
                    "the host is at its concurrency limit (serving plugin `{}`); try again later",
                ),
                Some(host_permit) => Ok([plugin_permit, host_permit]),
            },
        };
        let permits = match permits {
            Ok(permits) => permits,
            Err(template) => {
                self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
                let current = plugin.load();
                let error = RequestError::Overloaded(template.replace("{}", &current.name));
                let outcome = Outcome::failure_with_mode(
                    protocol::peek_request_id(&message.payload),
                    error,
                    current.limits.failure_mode(phase),
                );
                self.reply(reply_to, outcome, stats, received).await;
                return;
            }
        };
        self.executor.run(Job {
            plugin: plugin.load_full(),
            phase,
            message,
            endpoint: stats.clone(),
            received,
            permits,
        });
    }

    /// A slot of `semaphore` under the overload policy, or `None`.
    async fn acquire(&self, semaphore: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
        // A free slot is the common case: take it without arming a timer.
        if let Ok(permit) = semaphore.clone().try_acquire_owned() {
            return Some(permit);
        }
        match self.overload {
            OverloadPolicy::Reject => None,
            OverloadPolicy::Wait => {
                tokio::time::timeout(self.max_queue_wait, semaphore.clone().acquire_owned())
                    .await
                    .ok()?
                    .ok()
            }
        }
    }

    async fn reply(
        &self,
        reply_to: async_nats::Subject,
        outcome: Outcome,
        stats: &EndpointStats,
        received: Instant,
    ) {
        // Count before replying, so a caller that has its reply sees it counted.
        stats.record(received.elapsed(), outcome.failure_cause());
        publish_outcome(
            &self.client,
            reply_to,
            outcome.payload,
            outcome.error.as_ref(),
            &self.stats,
        )
        .await;
    }
}
