//! `natsplug up`: run the host.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;

use natsplug::bucket::source::BucketSource;
use natsplug::config::HostConfig;
use natsplug::nats::{self, EmbeddedServer};
use natsplug::server::Host;
use natsplug::sources::{Origin, Sources};
use natsplug::watch::DirectoryWatcher;

pub const EXAMPLES: &str = "Examples:
  natsplug up --plugins ./plugins
  natsplug up --bucket plugins --nats nats://10.0.0.5:4222     # plugins pushed with `natsplug push`
  natsplug up --config natsplug.toml --nats nats://10.0.0.5:4222
  natsplug up --nats tls://a:4222,tls://b:4222 --nats-creds host.creds --nats-tls-ca ca.pem
  RUST_LOG=natsplug=debug natsplug up";

/// Flags of `up`; each overrides the config file.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// TOML configuration file.
    #[arg(long, short, env = "NATSPLUG_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of .wasm plugins [default: plugins].
    #[arg(long, env = "NATSPLUG_PLUGINS")]
    plugins: Option<PathBuf>,
    /// NATS server URL; repeat (or separate with commas) for a cluster.
    /// Without one, a local nats-server is used or started.
    #[arg(long = "nats", env = "NATSPLUG_NATS_URL", value_delimiter = ',')]
    nats_urls: Vec<String>,
    /// Subject prefix [default: nylon.plugin].
    #[arg(long, env = "NATSPLUG_PREFIX")]
    prefix: Option<String>,
    /// Queue group of every subscription [default: natsplug].
    #[arg(long, env = "NATSPLUG_QUEUE_GROUP")]
    queue_group: Option<String>,
    /// Lanes (threads reading NATS and running short calls), and as many
    /// worker threads for the other calls [default: one of each per core].
    #[arg(long, env = "NATSPLUG_WORKERS")]
    workers: Option<usize>,
    /// Also serve the plugins of this JetStream object store bucket (see
    /// `natsplug push`); a plugin in the directory wins over the bucket's.
    #[arg(long, env = "NATSPLUG_BUCKET")]
    bucket: Option<String>,
    /// Do not watch the plugins directory (immutable deployments).
    #[arg(long)]
    no_watch: bool,
    /// Directory of the compiled-artifact cache [default: ~/.cache/natsplug].
    #[arg(long, env = "NATSPLUG_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile every plugin at start instead of using the cache.
    #[arg(long)]
    no_cache: bool,
    /// Serve /healthz, /readyz and /metrics on this address (e.g. 127.0.0.1:9464).
    #[arg(long, env = "NATSPLUG_MONITOR")]
    monitor: Option<String>,
    #[command(flatten)]
    nats: Box<natsplug::config::args::NatsArgs>,
}

impl UpArgs {
    /// The config file (or defaults) with the flags applied.
    fn resolve(&self) -> anyhow::Result<HostConfig> {
        let mut config = match &self.config {
            Some(path) => HostConfig::from_file(path)?,
            None => HostConfig::default(),
        };
        if let Some(dir) = &self.plugins {
            config.plugins.dir = dir.clone();
        }
        if !self.nats_urls.is_empty() {
            config.nats.urls = self.nats_urls.clone();
        }
        if let Some(prefix) = &self.prefix {
            config.subjects.prefix = prefix.clone();
        }
        if let Some(group) = &self.queue_group {
            config.subjects.queue_group = group.clone();
        }
        if let Some(workers) = self.workers {
            config.runtime.workers = workers;
        }
        if let Some(bucket) = &self.bucket {
            config.plugins.bucket = Some(bucket.clone());
        }
        if self.no_watch {
            config.plugins.watch = false;
        }
        if let Some(dir) = &self.cache_dir {
            config.cache.dir = Some(dir.clone());
        }
        if self.no_cache {
            config.cache.enabled = false;
        }
        if let Some(address) = &self.monitor {
            config.monitoring.listen = Some(address.clone());
        }
        self.nats.apply(&mut config.nats);
        config.validate()?;
        Ok(config)
    }
}

pub async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let config = args.resolve()?;
    // Check the directory before anything is started. With a bucket, the
    // directory is optional.
    let use_directory = Sources::uses_directory(&config.plugins)?;

    let embedded = if config.nats.urls.is_empty() && !nats::is_listening(nats::LOCAL_ADDR) {
        Some(EmbeddedServer::start().await?)
    } else {
        None
    };
    // Shared with the second-signal exit, which must stop it too.
    let embedded = Arc::new(tokio::sync::Mutex::new(embedded));
    let mut nats_config = config.nats.clone();
    nats_config.urls = config.nats_urls();
    let connection = nats::connect_with(&nats_config).await?;
    let lost = connection.monitor.lost();
    let host = Arc::new(
        Host::with_connection(config, connection, Arc::new(natsplug::logs::NullSink))
            .await
            .context("starting the host")?,
    );
    let mut failures = if use_directory {
        host.load_directory().await?
    } else {
        Vec::new()
    };
    let bucket = match host.config().plugins.bucket.clone() {
        Some(bucket) => Some(BucketSource::start(host.clone(), bucket).await),
        None => None,
    };
    // A subject the account may not subscribe to is a deployment error:
    // fail the start rather than serve part of the plugins.
    let refused = host.failures().await;
    if let Some(violation) = refused.values().find_map(|failure| failure.error.refusal()) {
        bail!("{violation}");
    }
    failures.extend(
        refused
            .into_iter()
            .filter(|(_, failure)| failure.origin == Origin::Bucket)
            .map(|(name, failure)| (PathBuf::from(name), failure.error.into_anyhow())),
    );
    if host.config().monitoring.discovery {
        natsplug::discovery::serve(host.clone()).await?;
    }
    if let Some(address) = &host.config().monitoring.listen {
        let address = address.parse().context("monitoring.listen")?;
        natsplug::monitor::serve(host.clone(), address).await?;
    }
    let watcher = if host.config().plugins.watch && use_directory {
        let debounce = Duration::from_millis(host.config().plugins.debounce_ms);
        Some(DirectoryWatcher::start(host.clone(), debounce)?)
    } else {
        None
    };

    let subjects = host.subjects().await;
    let status = host.status().await;
    let mut ready = format!(
        "natsplug ready: {} plugin(s), {} subject(s), queue group `{}`{}\n",
        status.len(),
        subjects.len(),
        host.config().subjects.queue_group,
        if failures.is_empty() {
            String::new()
        } else {
            format!(", {} plugin(s) failed to load", failures.len())
        }
    );
    for subject in &subjects {
        ready.push_str(&format!("  {subject}\n"));
    }
    // Listen for signals before saying ready: a SIGTERM that follows the
    // ready line at once must drain, not kill.
    let mut signals = ShutdownSignals::listen();
    // The ready lines are for whoever started the host. If it has stopped
    // reading them (a closed pipe), the host serves on all the same.
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout
        .write_all(ready.as_bytes())
        .and_then(|()| stdout.flush())
    {
        tracing::warn!(%error, "could not print the ready lines to standard output");
    }
    drop(stdout);

    tokio::select! {
        _ = signals.next() => {}
        _ = lost.cancelled() => {
            bail!(
                "lost the connection to NATS: gave up after {} reconnect attempts (nats.max_reconnects; 0 reconnects forever)",
                host.config().nats.max_reconnects
            );
        }
    }
    tracing::info!(
        "shutting down: draining subscriptions, finishing calls in flight (signal again to exit now)"
    );
    let embedded_on_exit = embedded.clone();
    tokio::spawn(async move {
        signals.next().await;
        eprintln!("second signal: exiting now");
        if let Some(server) = embedded_on_exit.lock().await.take() {
            server.stop().await;
        }
        std::process::exit(130);
    });
    if let Some(watcher) = watcher {
        watcher.stop().await;
    }
    if let Some(bucket) = bucket {
        bucket.stop().await;
    }
    host.shutdown().await?;
    if let Some(server) = embedded.lock().await.take() {
        server.stop().await;
    }
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM and Ctrl-C (SIGINT), each taken over from its default action
/// (exit at once) from the moment this is made.
struct ShutdownSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    fn listen() -> ShutdownSignals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            ShutdownSignals {
                term: signal(SignalKind::terminate()).ok(),
                interrupt: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        ShutdownSignals {}
    }

    /// Wait for the next SIGTERM or Ctrl-C.
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                _ = recv(&mut self.term) => {},
                _ = recv(&mut self.interrupt) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
