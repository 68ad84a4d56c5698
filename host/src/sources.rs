//! Where plugins come from: the plugins directory and the JetStream bucket,
//! and the one rule between them. A `.wasm` file in the directory wins over
//! the bucket's object of the same name (a file is a deliberate local
//! override); when the file leaves, the bucket's version is served again.
//! The directory is required unless a bucket is configured.
//!
//! Both sources bring a plugin in line through the same path (the host's
//! `apply`); the `watch` module follows the directory, `bucket::source`
//! the bucket. This module depends on neither.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context as _;
use tokio::sync::mpsc::UnboundedSender;

use crate::config::PluginsConfig;

/// Where a plugin's component comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A `.wasm` file in the plugins directory.
    Directory,
    /// An object in the JetStream object store bucket.
    Bucket,
}

impl Origin {
    /// The name shown in status output and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Directory => "directory",
            Origin::Bucket => "bucket",
        }
    }
}

/// The two sources of one host and the rule between them.
pub struct Sources {
    dir: PathBuf,
    bucket: Option<String>,
    /// Told the name of a plugin whose file left the directory, so the
    /// bucket (if any) can serve its version instead.
    released: Mutex<Option<UnboundedSender<String>>>,
}

impl Sources {
    /// The sources of a host configured with `plugins`.
    pub fn new(plugins: &PluginsConfig) -> Sources {
        Sources {
            dir: plugins.dir.clone(),
            bucket: plugins.bucket.clone(),
            released: Mutex::new(None),
        }
    }

    /// Whether the plugins directory is a source: it must be readable,
    /// unless a bucket is configured and the directory does not exist.
    /// Checked before anything is started.
    pub fn uses_directory(plugins: &PluginsConfig) -> anyhow::Result<bool> {
        match wasm_files(&plugins.dir) {
            Ok(_) => Ok(true),
            Err(_) if plugins.bucket.is_some() && !plugins.dir.exists() => {
                tracing::info!(
                    dir = %plugins.dir.display(),
                    "no plugins directory; serving the bucket's plugins only"
                );
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    /// The plugins directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where versions from `origin` come from, as messages name it.
    pub fn describe(&self, origin: Origin) -> String {
        match origin {
            Origin::Directory => "the plugins directory".to_string(),
            Origin::Bucket => format!("bucket `{}`", self.bucket.as_deref().unwrap_or_default()),
        }
    }

    /// Whether the bucket may serve plugin `name`: not while the directory
    /// holds a file for it.
    pub fn bucket_may_serve(&self, name: &str) -> bool {
        !self.dir.join(format!("{name}.wasm")).is_file()
    }

    /// Have `sender` told the name of every plugin whose file leaves the
    /// plugins directory.
    pub fn on_directory_release(&self, sender: UnboundedSender<String>) {
        *self.released.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender);
    }

    /// The directory no longer holds plugin `name`: the bucket may serve it.
    pub fn directory_released(&self, name: String) {
        let released = self.released.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = released.as_ref() {
            let _ = sender.send(name);
        }
    }
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
