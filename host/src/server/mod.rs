//! The serving host: what it owns and how it starts. The request path runs
//! through [`crate::subscription`] → [`crate::lane`] → [`crate::decode`] →
//! [`crate::admission`] → [`crate::executor`] → [`crate::dispatch`] →
//! [`crate::reply`]; the host sets it up and keeps the state it shares:
//! the served plugins (`registry`), the versions brought in from the
//! directory and the bucket (`sync`), and the shutdown drain (`drain`).

mod drain;
mod registry;
mod sync;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context as _;
use async_nats::Client;
use natsplug_protocol::Phase;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::config::HostConfig;
use crate::dispatch::CallSettings;
use crate::executor::{Executor, WorkerContext};
use crate::lane::{LaneConnections, LaneShared, Lanes};
use crate::logs::{
    LogFilter, LogLevel, LogPipeline, LogPublisher, LogRecord, LogSink, NullSink, TracingSink,
};
use crate::nats::{ConnectionMonitor, NatsConnection};
use crate::plugin::PluginLoader;
use crate::sources::Sources;
use crate::stats::HostStats;

pub use crate::sources::{Origin, wasm_files};
pub use registry::{EndpointStatus, PluginStatus};
pub use sync::{LoadError, LoadFailure, PluginLock, SyncOutcome};

/// A running host.
pub struct Host {
    config: Arc<HostConfig>,
    loader: PluginLoader,
    /// The host's own connection: control, discovery, logs, the workers'
    /// replies.
    client: Client,
    admission: Arc<Admission>,
    /// The worker threads, for the calls the lanes do not run.
    executor: Arc<Executor>,
    /// The threads that read the phase subscriptions.
    lanes: Arc<Lanes>,
    /// The served plugins, by name.
    plugins: Mutex<BTreeMap<String, registry::ServedPlugin>>,
    stats: Arc<HostStats>,
    /// Where plugin records and host events go.
    sink: Arc<LogPipeline>,
    publisher: Option<Arc<LogPublisher>>,
    started: std::time::SystemTime,
    id: String,
    /// Cancels the background tasks (discovery, monitoring) at shutdown.
    background: CancellationToken,
    /// One lock per plugin name: changes to one plugin apply in order,
    /// changes to different plugins in parallel.
    sync_locks: std::sync::Mutex<BTreeMap<String, Arc<Mutex<()>>>>,
    closed: AtomicBool,
    /// Plugins whose last version failed to load and is not fixed yet.
    failures: Mutex<BTreeMap<String, LoadFailure>>,
    /// The directory, the bucket, and which wins.
    sources: Sources,
    /// Watches the connection; confirms subscriptions.
    monitor: Arc<ConnectionMonitor>,
    /// Tells callers what the host serves when it changes.
    announcer: Arc<crate::announce::Announcer>,
}

impl Host {
    /// Build the runtime for `config` on the connection `client`. Serves
    /// nothing until plugins are installed (see [`Host::load_directory`]).
    pub async fn new(config: HostConfig, client: Client) -> anyhow::Result<Host> {
        Host::with_sink(config, client, Arc::new(NullSink)).await
    }

    /// Like [`Host::new`], with log records also going to `sink` (besides
    /// the host's own log and NATS). The lanes share `client`; a host built
    /// with [`Host::with_connection`] on a connection from
    /// [`crate::nats::connect_with`] gives each lane a connection of its own.
    pub async fn with_sink(
        config: HostConfig,
        client: Client,
        sink: Arc<dyn LogSink>,
    ) -> anyhow::Result<Host> {
        let connection = NatsConnection {
            client,
            monitor: ConnectionMonitor::detached(),
            settings: None,
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
        let NatsConnection {
            client,
            monitor,
            settings,
        } = connection;
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
        let id = nuid::next().to_string();
        let announcer = Arc::new(crate::announce::Announcer::new(
            client.clone(),
            &config.subjects.prefix,
            &id,
        ));
        let refusals = announcer.clone();
        monitor.on_publish_refused(Arc::new(move |violation| refusals.refused(violation)));
        let publisher = if config.logs.enabled {
            let publisher = LogPublisher::start(client.clone(), &config.logs, stats.clone())
                .await
                .context("starting the log publisher")?;
            let publisher = Arc::new(publisher);
            // Refused log records are the publisher's to count and report.
            let refusals = publisher.clone();
            monitor.on_publish_refused(Arc::new(move |violation| refusals.refused(violation)));
            Some(publisher)
        } else {
            None
        };
        let mut outputs: Vec<Arc<dyn LogSink>> = vec![sink];
        if let Some(publisher) = &publisher {
            outputs.push(publisher.clone());
        }
        let sink = Arc::new(
            LogPipeline::new(
                LogFilter::new(&config, stats.log_records_rate_limited.clone()),
                outputs,
            )
            .with_echo(Arc::new(TracingSink)),
        );
        let executor = Executor::start(
            runtime.worker_count(),
            WorkerContext {
                client: client.clone(),
                runtime: tokio::runtime::Handle::current(),
                settings: CallSettings::from_runtime(runtime, max_reply_bytes),
                sink: sink.clone(),
                stats: stats.clone(),
                inline_call_max: (runtime.inline_call_max_us > 0)
                    .then(|| std::time::Duration::from_micros(runtime.inline_call_max_us)),
            },
        )?;
        let admission = Arc::new(Admission::new(runtime));
        let executor = Arc::new(executor);
        let lane_connections = match settings {
            Some(settings) => LaneConnections::Own(settings, monitor.clone()),
            None => LaneConnections::Shared(client.clone()),
        };
        let lanes = Lanes::start(
            runtime.worker_count(),
            lane_connections,
            Arc::new(LaneShared {
                admission: admission.clone(),
                executor: executor.clone(),
                max_request_bytes: runtime.max_request_bytes,
                stats: stats.clone(),
                max_waiting: config.nats.subscription_capacity.max(1),
                flush_timeout: std::time::Duration::from_millis(config.nats.drain_timeout_ms),
            }),
        )
        .await
        .context("starting the lanes")?;
        Ok(Host {
            sources: Sources::new(&config.plugins),
            config: Arc::new(config),
            loader,
            client,
            admission,
            executor,
            lanes: Arc::new(lanes),
            plugins: Mutex::new(BTreeMap::new()),
            stats,
            sink,
            publisher,
            started: std::time::SystemTime::now(),
            id,
            background: CancellationToken::new(),
            sync_locks: std::sync::Mutex::new(BTreeMap::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
            failures: Mutex::new(BTreeMap::new()),
            monitor,
            announcer,
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
        &self.client
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
        self.admission.in_flight()
    }

    /// A token cancelled at shutdown, for tasks that live as long as the host.
    pub fn background(&self) -> CancellationToken {
        self.background.clone()
    }

    /// Why the host is not ready, if it is not: NATS disconnected, or a
    /// plugin version (from the directory or the bucket) that failed to load.
    pub async fn readiness(&self) -> Result<(), String> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
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

    /// Where plugins come from, and the rule between the directory and the bucket.
    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    /// What watches the NATS connection.
    pub fn monitor(&self) -> &Arc<ConnectionMonitor> {
        &self.monitor
    }

    /// The subject of `phase` of plugin `name`.
    pub fn subject(&self, plugin: &str, phase: Phase) -> String {
        format!("{}.{plugin}.{phase}", self.config.subjects.prefix)
    }

    /// Emit a host event about plugin `name` as a log record.
    fn host_event(&self, name: &str, level: LogLevel, message: String) {
        self.sink.emit_host_event(LogRecord {
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
}

/// The first 12 hex digits of a content hash, as logs show it.
fn short(content_hash: &str) -> &str {
    &content_hash[..content_hash.len().min(12)]
}
