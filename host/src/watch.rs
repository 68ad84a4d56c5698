//! Hot reload: watch the plugins directory and bring each plugin in line
//! with its file ([`Host::sync_file`]) once the file has settled.
//!
//! A file written in place is loaded after `debounce` of quiet, so a copy
//! or an editor's save in several writes gives one reload. A file renamed
//! into the directory (the atomic way to deploy: write `name.wasm.tmp` or a
//! file elsewhere, then `mv` it to `name.wasm`) and a deleted file are
//! acted on at once. Hidden files (`.name.wasm`) and other extensions are
//! ignored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use notify::event::{ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::server::Host;

/// A running directory watcher; stops when [`DirectoryWatcher::stop`] is
/// called or it is dropped.
pub struct DirectoryWatcher {
    _watcher: notify::RecommendedWatcher,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    postponed: Arc<AtomicU64>,
}

impl DirectoryWatcher {
    /// Watch `host`'s plugins directory.
    pub fn start(host: Arc<Host>, debounce: Duration) -> anyhow::Result<DirectoryWatcher> {
        let dir = host.config().plugins.dir.clone();
        let (sender, receiver) = mpsc::unbounded_channel::<(PathBuf, bool)>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let event = match event {
                    Ok(event) => event,
                    Err(error) => {
                        tracing::warn!(%error, "plugins directory watch error");
                        return;
                    }
                };
                // Renames and removals leave nothing half-done: act at once.
                let settled = matches!(
                    event.kind,
                    EventKind::Remove(_)
                        | EventKind::Modify(ModifyKind::Name(
                            RenameMode::To | RenameMode::From | RenameMode::Both
                        ))
                );
                if matches!(event.kind, EventKind::Access(_)) {
                    return;
                }
                for path in event.paths {
                    let _ = sender.send((path, settled));
                }
            })
            .context("creating the plugins directory watcher")?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("watching the plugins directory {}", dir.display()))?;
        let stop = CancellationToken::new();
        let postponed = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(
            host,
            dir.clone(),
            receiver,
            debounce,
            stop.clone(),
            postponed.clone(),
        ));
        tracing::info!(dir = %dir.display(), debounce_ms = debounce.as_millis() as u64, "watching for plugin changes");
        Ok(DirectoryWatcher {
            _watcher: watcher,
            stop,
            task: Some(task),
            postponed,
        })
    }

    /// Writes to a plugin file that put off its pending load: the file was
    /// still being written, so it is loaded only after `debounce` of quiet.
    pub fn postponed(&self) -> u64 {
        self.postponed.load(Ordering::Relaxed)
    }

    /// Stop watching; changes already being applied finish first.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for DirectoryWatcher {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Whether a path in the watched directory names a plugin file.
fn is_plugin_file(dir: &Path, path: &Path) -> bool {
    let visible = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| !n.starts_with('.'));
    visible && path.extension().is_some_and(|e| e == "wasm") && path.parent() == Some(dir)
}

async fn run(
    host: Arc<Host>,
    dir: PathBuf,
    mut events: mpsc::UnboundedReceiver<(PathBuf, bool)>,
    debounce: Duration,
    stop: CancellationToken,
    postponed: Arc<AtomicU64>,
) {
    // notify reports absolute paths under the watched path as given.
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let mut due: HashMap<PathBuf, Instant> = HashMap::new();
    let mut applying: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let next = due.values().min().copied();
        tokio::select! {
            _ = stop.cancelled() => break,
            event = events.recv() => match event {
                Some((path, settled)) => {
                    let path = match path.parent().and_then(|p| std::fs::canonicalize(p).ok()) {
                        Some(parent) => parent.join(path.file_name().unwrap_or_default()),
                        None => path,
                    };
                    if is_plugin_file(&dir, &path) {
                        let wait = if settled { Duration::ZERO } else { debounce };
                        if due.insert(path, Instant::now() + wait).is_some() && !settled {
                            postponed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                None => break,
            },
            _ = sleep_until(next) => {
                let now = Instant::now();
                let ready: Vec<PathBuf> = due
                    .iter()
                    .filter(|(_, at)| **at <= now)
                    .map(|(path, _)| path.clone())
                    .collect();
                applying.retain(|task| !task.is_finished());
                for path in ready {
                    due.remove(&path);
                    let host = host.clone();
                    // Each plugin applies on its own task: one slow compile
                    // delays no other plugin.
                    applying.push(tokio::spawn(async move {
                        // Failures are logged by sync_file itself.
                        if let Ok(outcome) = host.sync_file(&path).await {
                            tracing::debug!(file = %path.display(), ?outcome, "plugin file applied");
                        }
                    }));
                }
            }
        }
    }
    for task in applying {
        let _ = task.await;
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
