//! A host started in-process on a test server, serving copies of chosen
//! guest components from its own temporary plugins directory.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use natsplug::HostConfig;
use natsplug::logs::{LogRecord, LogSink};
use natsplug::server::Host;

/// A running in-process host and its plugins directory.
pub struct TestHost {
    pub host: Arc<Host>,
    pub dir: tempfile::TempDir,
    /// Every log record the host emitted (plugin logs and host events).
    pub records: Arc<CollectSink>,
}

/// A log sink that keeps every record, for assertions.
#[derive(Default)]
pub struct CollectSink(Mutex<Vec<LogRecord>>);

impl CollectSink {
    /// A copy of the records so far.
    pub fn records(&self) -> Vec<LogRecord> {
        self.0.lock().unwrap().clone()
    }

    /// The messages of the records so far.
    pub fn messages(&self) -> Vec<String> {
        self.records().into_iter().map(|r| r.message).collect()
    }
}

impl LogSink for CollectSink {
    fn emit(&self, record: LogRecord) {
        self.0.lock().unwrap().push(record);
    }
}

/// The compiled-artifact cache shared by the tests.
pub fn shared_cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("test-cache")
}

impl TestHost {
    /// Start a host on `nats_url` serving `plugins` (name, component path),
    /// with `configure` applied to the default config.
    pub async fn start(
        nats_url: &str,
        plugins: &[(&str, &str)],
        configure: impl FnOnce(&mut HostConfig),
    ) -> TestHost {
        TestHost::try_start(nats_url, plugins, configure)
            .await
            .unwrap_or_else(|error| panic!("starting the host: {error:#}"))
    }

    /// Like [`TestHost::start`], returning what went wrong instead of
    /// panicking: connecting (with the configured credentials and TLS),
    /// building the host, or any plugin failing to load.
    pub async fn try_start(
        nats_url: &str,
        plugins: &[(&str, &str)],
        configure: impl FnOnce(&mut HostConfig),
    ) -> anyhow::Result<TestHost> {
        let dir = tempfile::tempdir().expect("a plugins dir");
        for (name, path) in plugins {
            install_file(dir.path(), name, path);
        }
        let mut config = HostConfig::default();
        config.nats.urls = vec![nats_url.to_string()];
        config.plugins.dir = dir.path().to_path_buf();
        config.cache.dir = Some(shared_cache_dir());
        configure(&mut config);
        let mut nats = config.nats.clone();
        nats.urls = config.nats_urls();
        let connection = natsplug::nats::connect_with(&nats).await?;
        let records = Arc::new(CollectSink::default());
        let host = Host::with_connection(config, connection, records.clone()).await?;
        let mut failures = host.load_directory().await?;
        if let Some((path, error)) = failures.pop() {
            return Err(error.context(format!("loading {}", path.display())));
        }
        Ok(TestHost {
            host: Arc::new(host),
            dir,
            records,
        })
    }

    /// The records emitted at `level`.
    pub fn host_records_with_level(&self, level: natsplug::logs::LogLevel) -> Vec<LogRecord> {
        self.records
            .records()
            .into_iter()
            .filter(|r| r.level == level)
            .collect()
    }

    /// Start hot reload on the plugins directory.
    pub fn watch(&self, debounce: std::time::Duration) -> natsplug::watch::DirectoryWatcher {
        natsplug::watch::DirectoryWatcher::start(self.host.clone(), debounce)
            .expect("watching the plugins dir")
    }

    /// The plugins directory.
    pub fn plugins_dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Put `bytes` in `dir` as `<name>.wasm` the atomic way: write a hidden
/// temporary file, then rename it into place.
pub fn deploy_bytes(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let temporary = dir.join(format!(".{name}.wasm.tmp"));
    let target = dir.join(format!("{name}.wasm"));
    std::fs::write(&temporary, bytes).expect("writing the temporary file");
    std::fs::rename(&temporary, &target).expect("renaming into place");
    target
}

/// Copy the component at `source` into `dir` as `<name>.wasm`.
pub fn install_file(dir: &Path, name: &str, source: &str) -> PathBuf {
    let target = dir.join(format!("{name}.wasm"));
    std::fs::copy(source, &target)
        .unwrap_or_else(|e| panic!("copying {source} to {}: {e}", target.display()));
    target
}
