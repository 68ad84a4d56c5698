//! What the bucket commands (`push`, `ls`, `rm`, `rollback`, `status`)
//! share: the flags naming the bucket, the connection, the bucket's
//! inventory, and writes that fail at once when the server refuses them.
//! The bucket is a JetStream object store (layout in [`natsplug::bucket`]);
//! writing it is the right to deploy, and hosts only read it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{
    self,
    object_store::{ObjectInfo, ObjectMetadata, ObjectStore},
};
use clap::Args;
use futures::StreamExt as _;

use natsplug::bucket::{self, ObjectName};
use natsplug::config::NatsConfig;
use natsplug::config::args::NatsArgs;
use natsplug::nats::{ConnectionMonitor, NatsConnection, PermissionOperation, PermissionViolation};

/// Which bucket, on which NATS, as whom.
#[derive(Debug, Args)]
pub struct BucketArgs {
    /// NATS server URL; repeat (or separate with commas) for a cluster.
    #[arg(
        long = "nats",
        env = "NATSPLUG_NATS_URL",
        value_delimiter = ',',
        default_value = natsplug::config::DEFAULT_NATS_URL
    )]
    nats_urls: Vec<String>,
    /// The plugins bucket (a JetStream object store).
    #[arg(long, env = "NATSPLUG_BUCKET", default_value = bucket::DEFAULT_BUCKET)]
    pub bucket: String,
    #[command(flatten)]
    nats: Box<NatsArgs>,
}

/// A connection to NATS with its JetStream context.
pub struct Connected {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    monitor: Arc<ConnectionMonitor>,
    /// The NATS user name, when one is configured.
    pub nats_user: Option<String>,
}

impl BucketArgs {
    pub async fn connect(&self) -> anyhow::Result<Connected> {
        let mut config = NatsConfig {
            urls: self.nats_urls.clone(),
            ..NatsConfig::default()
        };
        self.nats.apply(&mut config);
        // A command fails rather than waiting forever for a server.
        config.max_reconnects = config.max_reconnects.clamp(1, 5);
        let NatsConnection {
            client, monitor, ..
        } = natsplug::nats::connect_with(&config).await?;
        Ok(Connected {
            js: jetstream::new(client.clone()),
            client,
            monitor,
            nats_user: config.user.clone(),
        })
    }
}

/// The bucket's objects, by plugin.
#[derive(Debug, Default)]
pub struct Inventory {
    /// The current object of each plugin.
    pub current: BTreeMap<String, ObjectInfo>,
    /// The history copies of each plugin, oldest first.
    pub history: BTreeMap<String, Vec<(u64, ObjectInfo)>>,
}

impl Inventory {
    pub async fn read(store: &ObjectStore, bucket_name: &str) -> anyhow::Result<Inventory> {
        let mut inventory = Inventory::default();
        let mut list = store
            .list()
            .await
            .map_err(|e| bucket::explain(bucket_name, anyhow::Error::new(e)))?;
        while let Some(info) = list.next().await {
            let info = info.with_context(|| format!("listing bucket `{bucket_name}`"))?;
            match ObjectName::parse(&info.name) {
                ObjectName::Plugin(name) => {
                    inventory.current.insert(name, info);
                }
                ObjectName::History { plugin, sequence } => {
                    inventory
                        .history
                        .entry(plugin)
                        .or_default()
                        .push((sequence, info));
                }
                ObjectName::Other => {}
            }
        }
        for entries in inventory.history.values_mut() {
            entries.sort_by_key(|(sequence, _)| *sequence);
        }
        Ok(inventory)
    }

    pub fn history_of(&self, plugin: &str) -> &[(u64, ObjectInfo)] {
        self.history.get(plugin).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Run a write to the bucket, failing at once with a clear message when
/// the server refuses it for lack of permission (rather than after the
/// JetStream acknowledgement times out).
async fn guarded<T, E>(
    connected: &Connected,
    bucket_name: &str,
    what: &str,
    write: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let mut errors = connected.monitor.server_errors();
    let refused = async {
        loop {
            match errors.recv().await {
                Ok(message) => {
                    if let Some(violation) = PermissionViolation::parse(&message)
                        && violation.operation == PermissionOperation::Publish
                    {
                        return violation;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    std::future::pending::<()>().await;
                }
            }
        }
    };
    tokio::select! {
        result = write => result.map_err(|e| bucket::explain(bucket_name, anyhow::Error::new(e)).context(what.to_string())),
        violation = refused => Err(refusal(bucket_name, connected.nats_user.as_deref(), &violation.subject)),
    }
}

/// The error for a write to bucket `bucket_name` that the server refused
/// on `subject`: the bucket's own subjects, or a JetStream API subject
/// (purging a deleted object's chunks, say).
fn refusal(bucket_name: &str, nats_user: Option<&str>, subject: &str) -> anyhow::Error {
    let user = nats_user.map(|u| format!(" `{u}`")).unwrap_or_default();
    let bucket_subjects = format!("$O.{bucket_name}.>");
    let missing = if subject.starts_with(&bucket_subjects[..bucket_subjects.len() - 1]) {
        bucket_subjects
    } else {
        subject.to_string()
    };
    anyhow::anyhow!(
        "not allowed to write to bucket `{bucket_name}`: the NATS user{user} lacks publish permission on `{missing}` (the server refused `{subject}`). Writing to the bucket is the right to deploy; use the deploy user's credentials"
    )
}

/// Put `bytes` as object `name` with `metadata`.
pub async fn put(
    connected: &Connected,
    store: &ObjectStore,
    bucket_name: &str,
    name: &str,
    metadata: HashMap<String, String>,
    bytes: &[u8],
) -> anyhow::Result<ObjectInfo> {
    let object = ObjectMetadata {
        name: name.to_string(),
        metadata,
        ..Default::default()
    };
    let mut reader = bytes;
    guarded(
        connected,
        bucket_name,
        &format!("writing `{name}` to bucket `{bucket_name}`"),
        store.put(object, &mut reader),
    )
    .await
}

/// Delete object `name`.
pub async fn delete(
    connected: &Connected,
    store: &ObjectStore,
    bucket_name: &str,
    name: &str,
) -> anyhow::Result<()> {
    guarded(
        connected,
        bucket_name,
        &format!("deleting `{name}` from bucket `{bucket_name}`"),
        store.delete(name),
    )
    .await
}

/// How long the bucket commands keep retrying a JetStream call that timed
/// out. A cluster that lost a node answers again once its streams have
/// elected new leaders, within seconds; a server that is simply gone
/// fails the connection instead.
pub const TIMEOUT_RETRY_WINDOW: Duration = Duration::from_secs(30);

/// Run `attempt` again while it fails by timing out, up to
/// [`TIMEOUT_RETRY_WINDOW`], saying so once on standard error. Every
/// bucket write is safe to repeat: a put replaces the object whole.
pub async fn retrying_timeouts<T, F, Fut>(what: &str, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT_RETRY_WINDOW;
    let mut said = false;
    loop {
        match attempt().await {
            Err(error) if is_timeout(&error) && tokio::time::Instant::now() < deadline => {
                if !said {
                    eprintln!(
                        "JetStream did not answer in time while {what} ({error:#}); retrying for up to {} s, as a cluster that lost a node does until its streams have new leaders",
                        TIMEOUT_RETRY_WINDOW.as_secs()
                    );
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(error) if is_timeout(&error) => {
                return Err(error.context(format!(
                    "JetStream did not answer for {} s; check that the cluster has a quorum (`nats-server` logs name the stream leader elections)",
                    TIMEOUT_RETRY_WINDOW.as_secs()
                )));
            }
            done => return done,
        }
    }
}

/// Whether `error` says a JetStream request got no answer in time.
fn is_timeout(error: &anyhow::Error) -> bool {
    let text = format!("{error:#}").to_lowercase();
    text.contains("timed out") || text.contains("timeout")
}

/// The first 12 characters of a hash or id, as the commands show it.
pub fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// A size in bytes, shown in megabytes.
pub fn megabytes(size: usize) -> String {
    format!("{:.1} MB", size as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_permission_that_is_missing() {
        let message = |subject: &str| refusal("plugins", Some("host"), subject).to_string();
        assert_eq!(
            message("$O.plugins.C.abc"),
            "not allowed to write to bucket `plugins`: the NATS user `host` lacks publish permission on `$O.plugins.>` (the server refused `$O.plugins.C.abc`). Writing to the bucket is the right to deploy; use the deploy user's credentials"
        );
        assert!(message("$JS.API.STREAM.PURGE.OBJ_plugins").contains(
            "lacks publish permission on `$JS.API.STREAM.PURGE.OBJ_plugins` (the server refused"
        ));
        // Another bucket's subjects are not this bucket's.
        assert!(
            message("$O.plugins-staging.C.abc")
                .contains("lacks publish permission on `$O.plugins-staging.C.abc`")
        );
        assert!(
            refusal("plugins", None, "$O.plugins.M.x")
                .to_string()
                .contains("the NATS user lacks publish permission on `$O.plugins.>`")
        );
    }
}
