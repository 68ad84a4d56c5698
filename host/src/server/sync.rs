//! Bringing a plugin in line with what a source holds for it: load a new
//! version, reload a changed one, remove one that is gone, and remember a
//! version that failed to load (the previous one keeps serving) until a
//! good one arrives. One lock per plugin keeps its changes in order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Host, short};
use crate::logs::LogLevel;
use crate::nats::PermissionViolation;
use crate::sources::{Origin, wasm_files};

/// A version of a plugin that failed to load (the previous version, if
/// any, keeps serving).
#[derive(Debug, Clone)]
pub struct LoadFailure {
    pub content_hash: String,
    pub origin: Origin,
    pub error: LoadError,
}

/// Why a version of a plugin could not be served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// The NATS server refused to let the host subscribe to one of the
    /// plugin's phase subjects: a deployment error, not the plugin's.
    #[error(transparent)]
    Refused(PermissionViolation),
    /// The component could not be read, compiled, checked against the
    /// contract or served.
    #[error("{0:#}")]
    Failed(Arc<anyhow::Error>),
}

impl LoadError {
    /// The permission the server refused, when that is why.
    pub fn refusal(&self) -> Option<&PermissionViolation> {
        match self {
            LoadError::Refused(violation) => Some(violation),
            LoadError::Failed(_) => None,
        }
    }

    /// The error as returned to a caller that works with `anyhow`: a refusal
    /// stays a [`PermissionViolation`] that can be downcast to.
    pub fn into_anyhow(self) -> anyhow::Error {
        match self {
            LoadError::Refused(violation) => anyhow::Error::new(violation),
            LoadError::Failed(error) => {
                Arc::try_unwrap(error).unwrap_or_else(|shared| anyhow::anyhow!("{shared:#}"))
            }
        }
    }
}

impl From<anyhow::Error> for LoadError {
    fn from(error: anyhow::Error) -> LoadError {
        match error.downcast_ref::<PermissionViolation>() {
            Some(violation) => LoadError::Refused(violation.clone()),
            None => LoadError::Failed(Arc::new(error)),
        }
    }
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

impl Host {
    /// Load every `*.wasm` in the configured plugins directory. A file that
    /// fails to load is reported and skipped; the others are served.
    /// Returns the files that failed, with why.
    pub async fn load_directory(&self) -> anyhow::Result<Vec<(PathBuf, anyhow::Error)>> {
        let dir = self.sources.dir().to_path_buf();
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
            self.sources.directory_released(name);
        }
        outcome.map_err(LoadError::into_anyhow)
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
    ) -> Result<SyncOutcome, LoadError> {
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
        .map_err(|error| anyhow::Error::new(error).context("the compile task failed"))?;
        let installed = match compiled {
            Ok(plugin) => self.install_from(plugin, origin).await,
            Err(error) => Err(error),
        };
        match installed {
            Ok(replaced) => {
                self.clear_failure(name, None).await;
                Ok(if replaced {
                    SyncOutcome::Reloaded
                } else {
                    SyncOutcome::Loaded
                })
            }
            Err(error) => {
                let error = LoadError::from(error);
                let failure = LoadFailure {
                    content_hash,
                    origin,
                    error: error.clone(),
                };
                self.record_failure(name, failure, served_hash.is_some())
                    .await;
                Err(error)
            }
        }
    }

    /// Log, emit and keep the failure of a version of plugin `name`.
    async fn record_failure(&self, name: &str, failure: LoadFailure, previous_serves: bool) {
        let source = self.sources.describe(failure.origin);
        let version = short(&failure.content_hash);
        let error = &failure.error;
        let message = if previous_serves {
            format!(
                "plugin `{name}` version {version} from {source} failed to load; the previous version keeps serving: {error}"
            )
        } else {
            format!("plugin `{name}` version {version} from {source} failed to load: {error}")
        };
        tracing::error!(plugin = %name, hash = %version, origin = failure.origin.as_str(), "{message}");
        self.failures.lock().await.insert(name.to_string(), failure);
        self.host_event(name, LogLevel::Error, message);
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
}
