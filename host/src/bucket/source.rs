//! Serving the plugins of a JetStream object store bucket: load the
//! bucket's current set at start, follow its changes, and compare again
//! after a reconnect and periodically. Every version goes through the same
//! path as a file in the plugins directory ([`Host::apply`]): same
//! validation, same compiled-artifact cache, same zero-failure swap.
//!
//! The directory wins over the bucket for a plugin both hold. A host cut
//! off from NATS keeps serving what it has.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, object_store::ObjectStore};
use futures::StreamExt as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::ObjectName;
use crate::server::{Host, LoadError, SyncOutcome};
use crate::sources::Origin;

/// Plugins loaded side by side in a full pass over the bucket.
const PARALLEL_LOADS: usize = 4;

/// Longest wait between two attempts to open the bucket or its watch.
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Longest wait for the bucket to start a watch or list its objects. A
/// cluster that lost the node of a consumer can leave it silent rather
/// than failed; past this the attempt counts as failed and is retried.
const LISTING_TIMEOUT: Duration = Duration::from_secs(5);

/// A running bucket source; stop it with [`BucketSource::stop`].
pub struct BucketSource {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl BucketSource {
    /// Serve the plugins of `bucket` on `host`. The first pass over the
    /// bucket is done before this returns when the bucket can be read;
    /// when it cannot (missing bucket, JetStream off), the reason is
    /// logged and the source keeps trying in the background.
    pub async fn start(host: Arc<Host>, bucket: String) -> BucketSource {
        let stop = host.background().child_token();
        let follower = Follower {
            js: jetstream::new(host.client().clone()),
            host,
            bucket,
            stop: stop.clone(),
            retrying: Arc::default(),
        };
        let first = follower.open_and_watch().await;
        let task = tokio::spawn(follower.run(first, stop.clone()));
        BucketSource { stop, task }
    }

    /// Stop following the bucket; served plugins stay served.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The task that follows one bucket for one host.
struct Follower {
    js: jetstream::Context,
    host: Arc<Host>,
    bucket: String,
    stop: CancellationToken,
    /// Plugins whose object could not be read and that a task is reading
    /// again with backoff; one such task per plugin.
    retrying: Arc<Mutex<HashSet<String>>>,
}

/// An open bucket with a watch started before the last full pass, so no
/// change in between is missed.
struct Opened {
    store: Arc<ObjectStore>,
    watch: jetstream::object_store::Watch,
}

impl Follower {
    /// Open the bucket, start watching it, then bring every plugin in line.
    async fn open_and_watch(&self) -> anyhow::Result<Opened> {
        let store = Arc::new(super::open(&self.js, &self.bucket).await?);
        let watch = tokio::time::timeout(LISTING_TIMEOUT, store.watch())
            .await
            .map_err(|_| silent(&self.bucket, "start a watch"))?
            .map_err(|error| super::explain(&self.bucket, anyhow::Error::new(error)))?;
        self.resync(&store).await?;
        Ok(Opened { store, watch })
    }

    async fn run(self, first: anyhow::Result<Opened>, stop: CancellationToken) {
        let (released_tx, mut released) = tokio::sync::mpsc::unbounded_channel();
        self.host.sources().on_directory_release(released_tx);
        let mut reconnections = self.host.monitor().reconnections();
        let resync_every = self.host.config().plugins.bucket_resync_secs;
        let mut resync = tokio::time::interval(Duration::from_secs(resync_every.max(1)));
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.reset();
        let mut opened = first;
        let mut retry = Duration::from_secs(1);
        let mut last_error = String::new();
        loop {
            let Opened { store, mut watch } = match opened {
                Ok(opened) => {
                    if !last_error.is_empty() {
                        tracing::info!(bucket = %self.bucket, "serving plugins from bucket `{}` again", self.bucket);
                        last_error.clear();
                    }
                    retry = Duration::from_secs(1);
                    opened
                }
                Err(error) => {
                    let message = format!("{error:#}");
                    if message != last_error {
                        tracing::warn!(bucket = %self.bucket, "cannot serve plugins from bucket `{}` yet (retrying): {message}", self.bucket);
                        last_error = message;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(MAX_RETRY);
                    opened = self.open_and_watch().await;
                    continue;
                }
            };
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    event = watch.next() => match event {
                        Some(Ok(info)) => {
                            if let ObjectName::Plugin(name) = ObjectName::parse(&info.name) {
                                self.spawn_sync(&store, name);
                            }
                        }
                        Some(Err(error)) => {
                            tracing::warn!(bucket = %self.bucket, %error, "the bucket watch failed; reopening it");
                            break;
                        }
                        None => {
                            tracing::warn!(bucket = %self.bucket, "the bucket watch ended; reopening it");
                            break;
                        }
                    },
                    Some(name) = released.recv() => self.spawn_sync(&store, name),
                    changed = reconnections.changed() => {
                        if changed.is_ok() {
                            tracing::info!(bucket = %self.bucket, "reconnected: comparing the served plugins with the bucket");
                            // A cluster still electing the stream's leader
                            // may not answer yet: reopen (with backoff) and
                            // compare again, rather than wait for the next
                            // periodic comparison.
                            if !self.resync_logged(&store).await {
                                break;
                            }
                        }
                    }
                    _ = resync.tick(), if resync_every > 0 => {
                        self.resync_logged(&store).await;
                    }
                }
            }
            opened = self.open_and_watch().await;
        }
    }

    /// Bring plugin `name` in line with the bucket in the background. When
    /// its object cannot be read (a stream electing its leader can leave a
    /// read unanswered), it is read again with backoff until it can be, or
    /// the source stops, rather than left to the next periodic comparison.
    fn spawn_sync(&self, store: &Arc<ObjectStore>, name: String) {
        let host = self.host.clone();
        let store = store.clone();
        let bucket = self.bucket.clone();
        let retrying = self.retrying.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            // Failures to load are logged and recorded by the host.
            let Err(SyncError::Read(error)) = sync_plugin(&host, &store, &name).await else {
                return;
            };
            if !retrying.lock().expect("retry set").insert(name.clone()) {
                // Another task is already reading it again; each of its
                // attempts reads the object's latest version.
                return;
            }
            let mut wait = Duration::from_secs(1);
            let mut error = error;
            loop {
                tracing::warn!(bucket = %bucket, plugin = %name, "could not read plugin `{name}` from bucket `{bucket}` (retrying in {} s): {error:#}", wait.as_secs());
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                match sync_plugin(&host, &store, &name).await {
                    Err(SyncError::Read(again)) => error = again,
                    _ => {
                        tracing::info!(bucket = %bucket, plugin = %name, "read plugin `{name}` from bucket `{bucket}` after retrying");
                        break;
                    }
                }
                wait = (wait * 2).min(MAX_RETRY);
            }
            retrying.lock().expect("retry set").remove(&name);
        });
    }

    /// Compare the served plugins with the bucket; `false` (logged) when
    /// the bucket could not be read.
    async fn resync_logged(&self, store: &Arc<ObjectStore>) -> bool {
        match self.resync(store).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(bucket = %self.bucket, "could not compare the served plugins with the bucket: {error:#}");
                false
            }
        }
    }

    /// Bring every plugin in line with the bucket: load what it holds,
    /// remove what was served from it and is gone.
    async fn resync(&self, store: &Arc<ObjectStore>) -> anyhow::Result<()> {
        let listing = async {
            let mut names = BTreeSet::new();
            let mut list = store
                .list()
                .await
                .map_err(|error| super::explain(&self.bucket, anyhow::Error::new(error)))?;
            while let Some(info) = list.next().await {
                let info = info.map_err(anyhow::Error::new)?;
                if let ObjectName::Plugin(name) = ObjectName::parse(&info.name) {
                    names.insert(name);
                }
            }
            anyhow::Ok(names)
        };
        let names = tokio::time::timeout(LISTING_TIMEOUT, listing)
            .await
            .map_err(|_| silent(&self.bucket, "list its objects"))??;
        // A few at a time: each may compile a component.
        let permits = tokio::sync::Semaphore::new(PARALLEL_LOADS);
        let syncs = names.iter().map(|name| {
            let permits = &permits;
            async move {
                let _permit = permits.acquire().await;
                if let Err(SyncError::Read(_)) = sync_plugin(&self.host, store, name).await {
                    // Read again in the background, with backoff.
                    self.spawn_sync(store, name.clone());
                }
            }
        });
        futures::future::join_all(syncs).await;
        let mut stale: BTreeSet<String> = self
            .host
            .status()
            .await
            .into_iter()
            .filter(|plugin| plugin.origin == Origin::Bucket)
            .map(|plugin| plugin.name)
            .collect();
        stale.extend(
            self.host
                .failures()
                .await
                .into_iter()
                .filter(|(_, failure)| failure.origin == Origin::Bucket)
                .map(|(name, _)| name),
        );
        for name in stale.difference(&names) {
            let lock = self.host.lock_plugin(name).await;
            self.host
                .apply(&lock, Origin::Bucket, None)
                .await
                .map_err(LoadError::into_anyhow)?;
        }
        Ok(())
    }
}

/// Why a plugin could not be brought in line with the bucket.
enum SyncError {
    /// Its version failed to load: already logged and recorded by the host.
    Load,
    /// The bucket could not be read.
    Read(anyhow::Error),
}

/// Bring plugin `name` in line with its object in `store`. The bytes are
/// fetched only when the object's content hash is neither served nor
/// known to fail already.
async fn sync_plugin(
    host: &Host,
    store: &ObjectStore,
    name: &str,
) -> Result<SyncOutcome, SyncError> {
    use jetstream::object_store::InfoErrorKind;
    let lock = host.lock_plugin(name).await;
    if !host.sources().bucket_may_serve(name) {
        host.stats()
            .bucket_versions_skipped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(plugin = %name, "plugin `{name}` is in the plugins directory, which wins over the bucket");
        return Ok(SyncOutcome::Unchanged);
    }
    let info = match store.info(name).await {
        Ok(info) if !info.deleted => Some(info),
        Ok(_) => None,
        Err(error) if matches!(error.kind(), InfoErrorKind::NotFound) => None,
        Err(error) => {
            return Err(SyncError::Read(
                anyhow::Error::new(error).context(format!("reading the info of `{name}`")),
            ));
        }
    };
    let Some(info) = info else {
        return host
            .apply(&lock, Origin::Bucket, None)
            .await
            .map_err(|_| SyncError::Load);
    };
    if let Some(content_hash) = super::content_hash_of(&info) {
        if host
            .confirm_served(&lock, Origin::Bucket, &content_hash)
            .await
        {
            return Ok(SyncOutcome::Unchanged);
        }
        let failed = host.failures().await;
        if failed
            .get(name)
            .is_some_and(|f| f.content_hash == content_hash && f.origin == Origin::Bucket)
        {
            return Ok(SyncOutcome::Unchanged);
        }
    }
    let bytes = super::read(store, name)
        .await
        .map_err(SyncError::Read)?
        .map(|(_, bytes)| bytes);
    host.apply(&lock, Origin::Bucket, bytes)
        .await
        .map_err(|_| SyncError::Load)
}

/// The error of a bucket that did not answer within [`LISTING_TIMEOUT`].
fn silent(bucket: &str, what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "bucket `{bucket}` did not {what} within {} s (is the JetStream cluster electing leaders?)",
        LISTING_TIMEOUT.as_secs()
    )
}
