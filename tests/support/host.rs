//! A host started in-process on a test server, serving copies of chosen
//! guest components from its own temporary plugins directory.

use std::path::{Path, PathBuf};

use natsplug::HostConfig;
use natsplug::server::Host;

/// A running in-process host and its plugins directory.
pub struct TestHost {
    pub host: Host,
    pub dir: tempfile::TempDir,
}

impl TestHost {
    /// Start a host on `nats_url` serving `plugins` (name, component path),
    /// with `configure` applied to the default config.
    pub async fn start(
        nats_url: &str,
        plugins: &[(&str, &str)],
        configure: impl FnOnce(&mut HostConfig),
    ) -> TestHost {
        let dir = tempfile::tempdir().expect("a plugins dir");
        for (name, path) in plugins {
            install_file(dir.path(), name, path);
        }
        let mut config = HostConfig::default();
        config.nats.urls = vec![nats_url.to_string()];
        config.plugins.dir = dir.path().to_path_buf();
        configure(&mut config);
        let client = natsplug::nats::connect(&config.nats_urls())
            .await
            .expect("connecting the host");
        let host = Host::new(config, client).await.expect("starting the host");
        let failures = host.load_directory().await.expect("loading plugins");
        assert!(failures.is_empty(), "plugins failed to load: {failures:?}");
        TestHost { host, dir }
    }

    /// The plugins directory.
    pub fn plugins_dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Copy the component at `source` into `dir` as `<name>.wasm`.
pub fn install_file(dir: &Path, name: &str, source: &str) -> PathBuf {
    let target = dir.join(format!("{name}.wasm"));
    std::fs::copy(source, &target)
        .unwrap_or_else(|e| panic!("copying {source} to {}: {e}", target.display()));
    target
}
