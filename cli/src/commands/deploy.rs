//! `natsplug push`, `ls`, `rm` and `rollback`: deploying plugins through a
//! JetStream object store bucket (layout in [`natsplug::bucket`]). Writing the
//! bucket is the right to deploy; hosts only read it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use async_nats::jetstream::{
    self,
    object_store::{ObjectInfo, ObjectMetadata, ObjectStore},
};
use clap::Args;
use futures::StreamExt as _;
use serde_json::json;

use crate::connection::NatsArgs;
use crate::local;
use natsplug::bucket::{self, ObjectName, meta};
use natsplug::config::{HostConfig, NatsConfig};
use natsplug::nats::{ConnectionMonitor, NatsConnection, PermissionOperation, PermissionViolation};

pub const PUSH_EXAMPLES: &str = "Examples:
  natsplug push target/wasm32-wasip2/release/authz.wasm --create
  natsplug push build/rewriter.wasm --name rewriter --nats nats://10.0.0.5:4222 --nats-creds deploy.creds
  natsplug push authz.wasm --create --replicas 3 --keep 10

The component is checked as `natsplug inspect` does before anything is sent;
pushing the content already current does nothing.";

pub const LS_EXAMPLES: &str = "Examples:
  natsplug ls
  natsplug ls --history
  natsplug ls --bucket staging-plugins --json";

pub const RM_EXAMPLES: &str = "Examples:
  natsplug rm authz             # every host stops serving it; history kept for rollback
  natsplug rm authz --purge     # and drop its history";

pub const ROLLBACK_EXAMPLES: &str = "Examples:
  natsplug rollback authz       # the version before the current one, on every host
  natsplug rollback authz       # again: one further back

After `rm`, or after an object was put by another client, rollback restores
the newest pushed version.";

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
    nats_user: Option<String>,
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
        let NatsConnection { client, monitor } = natsplug::nats::connect_with(&config).await?;
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

    fn history_of(&self, plugin: &str) -> &[(u64, ObjectInfo)] {
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
async fn put(
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

async fn delete(
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

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

fn megabytes(size: usize) -> String {
    format!("{:.1} MB", size as f64 / 1e6)
}

/// Who is pushing: `user@machine`, and the NATS user when there is one.
fn pushed_by(nats_user: Option<&str>) -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let mut who = format!("{user}@{}", natsplug::nats::hostname());
    if let Some(nats_user) = nats_user {
        who.push_str(&format!(" (nats user {nats_user})"));
    }
    who
}

/// Flags of `push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The plugin component (.wasm).
    file: PathBuf,
    /// Plugin name [default: the file name without `.wasm`].
    #[arg(long)]
    name: Option<String>,
    /// Create the bucket if it does not exist.
    #[arg(long)]
    create: bool,
    /// Replicas of a bucket created by --create (on a JetStream cluster).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Pushes kept per plugin for rollback.
    #[arg(long, default_value_t = bucket::DEFAULT_HISTORY)]
    keep: usize,
    /// Host config file (TOML): the component is checked with its
    /// [runtime] settings and [plugin.NAME] limits.
    #[arg(long, short, env = "NATSPLUG_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    target: BucketArgs,
}

pub async fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    if args.keep == 0 {
        bail!("--keep must be at least 1: rollback needs the pushed version in the history");
    }
    let name = match &args.name {
        Some(name) => {
            natsplug::config::validate_plugin_name(name)?;
            name.clone()
        }
        None => natsplug::plugin::plugin_name_of(&args.file)?,
    };
    // Check the component exactly as a host would load it, before anything
    // reaches NATS.
    let config = match &args.config {
        Some(path) => HostConfig::from_file(path)?,
        None => HostConfig::default(),
    };
    let bytes = local::read_component(&args.file)?;
    let loader = local::loader(&config)?;
    let settings = config.plugin_settings(&name);
    let (checked_name, checked_bytes) = (name.clone(), bytes.clone());
    let plugin = tokio::task::spawn_blocking(move || {
        loader.load_bytes(&checked_name, &checked_bytes, &settings)
    })
    .await
    .context("the validation task failed")?
    .with_context(|| {
        format!(
            "{} is not a plugin a host can load; nothing was pushed",
            args.file.display()
        )
    })?;

    let bucket_name = &args.target.bucket;
    let connected = args.target.connect().await?;
    let store = if args.create {
        bucket::create(&connected.js, bucket_name, args.replicas).await?
    } else {
        bucket::open(&connected.js, bucket_name).await?
    };
    let inventory = Inventory::read(&store, bucket_name).await?;
    let version = plugin.version.clone();
    let shown_version = version
        .as_deref()
        .map(|v| format!(" {v}"))
        .unwrap_or_default();
    if inventory
        .current
        .get(&name)
        .and_then(bucket::content_hash_of)
        .as_deref()
        == Some(plugin.content_hash.as_str())
    {
        println!(
            "{name}{shown_version} (hash {}) is already current in bucket `{bucket_name}`; nothing pushed",
            short(&plugin.content_hash)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let history = inventory.history_of(&name);
    let sequence = history.last().map_or(1, |(sequence, _)| sequence + 1);
    let mut metadata = HashMap::from([
        (meta::CONTENT_HASH.to_string(), plugin.content_hash.clone()),
        (
            meta::PUSHED_BY.to_string(),
            pushed_by(connected.nats_user.as_deref()),
        ),
        (
            meta::PUSHED_AT.to_string(),
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        ),
        (meta::SEQUENCE.to_string(), sequence.to_string()),
    ]);
    if let Some(version) = &version {
        metadata.insert(meta::PLUGIN_VERSION.to_string(), version.clone());
    }
    put(
        &connected,
        &store,
        bucket_name,
        &name,
        metadata.clone(),
        &bytes,
    )
    .await?;
    put(
        &connected,
        &store,
        bucket_name,
        &bucket::history_name(&name, sequence),
        metadata,
        &bytes,
    )
    .await
    .context("the plugin was pushed, but its history copy (for rollback) was not written")?;
    // The new copy is the newest; keep `keep` in all.
    let excess = (history.len() + 1).saturating_sub(args.keep);
    for (old, _) in &history[..excess] {
        delete(
            &connected,
            &store,
            bucket_name,
            &bucket::history_name(&name, *old),
        )
        .await?;
    }
    connected.client.flush().await.ok();
    println!(
        "pushed {name}{shown_version} (hash {}, {}) to bucket `{bucket_name}` as history #{sequence}",
        short(&plugin.content_hash),
        megabytes(bytes.len())
    );
    Ok(ExitCode::SUCCESS)
}

/// Flags of `ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Also list each plugin's history.
    #[arg(long)]
    history: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: BucketArgs,
}

fn entry_json(info: &ObjectInfo) -> serde_json::Value {
    json!({
        "version": info.metadata.get(meta::PLUGIN_VERSION),
        "content_hash": bucket::content_hash_of(info),
        "size": info.size,
        "pushed_by": info.metadata.get(meta::PUSHED_BY),
        "pushed_at": info.metadata.get(meta::PUSHED_AT),
        "sequence": info.metadata.get(meta::SEQUENCE).and_then(|s| s.parse::<u64>().ok()),
        "rolled_back_from": info.metadata.get(meta::ROLLED_BACK_FROM),
    })
}

fn entry_line(info: &ObjectInfo) -> String {
    let hash = bucket::content_hash_of(info).unwrap_or_default();
    let field = |key: &str| {
        info.metadata
            .get(key)
            .cloned()
            .unwrap_or_else(|| "-".into())
    };
    format!(
        "{:<10} {:<12} {:>9}  {:<20}  {}",
        field(meta::PLUGIN_VERSION),
        short(&hash),
        megabytes(info.size),
        field(meta::PUSHED_AT),
        field(meta::PUSHED_BY)
    )
}

pub async fn ls(args: LsArgs) -> anyhow::Result<ExitCode> {
    let bucket_name = &args.target.bucket;
    let connected = args.target.connect().await?;
    let store = bucket::open(&connected.js, bucket_name).await?;
    let inventory = Inventory::read(&store, bucket_name).await?;
    let mut names: Vec<&String> = inventory.current.keys().collect();
    if args.history {
        names.extend(inventory.history.keys());
        names.sort();
        names.dedup();
    }
    if args.json {
        let plugins: Vec<serde_json::Value> = names
            .iter()
            .map(|name| {
                let current = inventory.current.get(*name);
                let mut object = json!({
                    "name": name,
                    "current": current.map(entry_json),
                });
                if args.history {
                    object["history"] = inventory
                        .history_of(name)
                        .iter()
                        .map(|(_, info)| entry_json(info))
                        .collect();
                }
                object
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "bucket": bucket_name, "plugins": plugins }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    if names.is_empty() {
        println!("bucket `{bucket_name}` holds no plugins (push one with `natsplug push FILE`)");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:<10} {:<12} {:>9}  {:<20}  PUSHED BY",
        "PLUGIN", "VERSION", "HASH", "SIZE", "PUSHED AT"
    );
    for name in names {
        match inventory.current.get(name) {
            Some(info) => println!("{name:<20} {}", entry_line(info)),
            None => println!("{name:<20} (removed; history only)"),
        }
        if args.history {
            let current_hash = inventory
                .current
                .get(name)
                .and_then(bucket::content_hash_of);
            for (sequence, info) in inventory.history_of(name).iter().rev() {
                let marker =
                    if current_hash.is_some() && bucket::content_hash_of(info) == current_hash {
                        "  <- current"
                    } else {
                        ""
                    };
                println!("  #{sequence:<17} {}{marker}", entry_line(info));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Flags of `rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Plugin name.
    name: String,
    /// Also delete the plugin's history (no rollback afterwards).
    #[arg(long)]
    purge: bool,
    #[command(flatten)]
    target: BucketArgs,
}

pub async fn rm(args: RmArgs) -> anyhow::Result<ExitCode> {
    let bucket_name = &args.target.bucket;
    let connected = args.target.connect().await?;
    let store = bucket::open(&connected.js, bucket_name).await?;
    let inventory = Inventory::read(&store, bucket_name).await?;
    let history = inventory.history_of(&args.name);
    let current = inventory.current.contains_key(&args.name);
    let purgeable = args.purge && !history.is_empty();
    if !current && !purgeable {
        bail!(
            "bucket `{bucket_name}` has no plugin `{}` (see `natsplug ls`)",
            args.name
        );
    }
    if current {
        delete(&connected, &store, bucket_name, &args.name).await?;
    }
    let mut purged = 0;
    if args.purge {
        for (sequence, _) in history {
            delete(
                &connected,
                &store,
                bucket_name,
                &bucket::history_name(&args.name, *sequence),
            )
            .await?;
            purged += 1;
        }
    }
    println!(
        "removed {} from bucket `{bucket_name}`{}",
        args.name,
        if args.purge {
            format!(" with its {purged} history copies")
        } else {
            " (its history is kept: `natsplug rollback` restores it)".to_string()
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// Flags of `rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Plugin name.
    name: String,
    #[command(flatten)]
    target: BucketArgs,
}

/// The history entry `rollback` restores, given the current content hash:
/// the newest entry before the newest one holding the current content and
/// different from it; when the current content is in no entry (or there is
/// no current object), the newest entry that differs from it.
pub fn rollback_target<'a>(
    history: &'a [(u64, ObjectInfo)],
    current_hash: Option<&str>,
) -> Option<&'a (u64, ObjectInfo)> {
    let hash_of = |entry: &(u64, ObjectInfo)| bucket::content_hash_of(&entry.1);
    let differs = |entry: &&(u64, ObjectInfo)| hash_of(entry).as_deref() != current_hash;
    let newest_current = current_hash.and_then(|current| {
        history
            .iter()
            .rposition(|entry| hash_of(entry).as_deref() == Some(current))
    });
    match newest_current {
        Some(index) => history[..index].iter().rev().find(differs),
        None => history.iter().rev().find(differs),
    }
}

pub async fn rollback(args: RollbackArgs) -> anyhow::Result<ExitCode> {
    let bucket_name = &args.target.bucket;
    let name = &args.name;
    let connected = args.target.connect().await?;
    let store = bucket::open(&connected.js, bucket_name).await?;
    let inventory = Inventory::read(&store, bucket_name).await?;
    let history = inventory.history_of(name);
    if history.is_empty() && !inventory.current.contains_key(name) {
        bail!("bucket `{bucket_name}` has no plugin `{name}` (see `natsplug ls`)");
    }
    let current_hash = inventory
        .current
        .get(name)
        .and_then(bucket::content_hash_of);
    let Some((sequence, info)) = rollback_target(history, current_hash.as_deref()) else {
        bail!(
            "no earlier version of `{name}` to roll back to: its history in bucket `{bucket_name}` holds {} push(es) (push with a larger --keep to keep more)",
            history.len()
        );
    };
    let history_name = bucket::history_name(name, *sequence);
    let Some((_, bytes)) = bucket::read(&store, &history_name).await? else {
        bail!("history copy `{history_name}` disappeared while rolling back; try again");
    };
    let mut metadata = info.metadata.clone();
    if let Some(current) = &current_hash {
        metadata.insert(meta::ROLLED_BACK_FROM.to_string(), current.clone());
    }
    put(&connected, &store, bucket_name, name, metadata, &bytes).await?;
    connected.client.flush().await.ok();
    let field = |key: &str| {
        info.metadata
            .get(key)
            .cloned()
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "rolled back {name} to {} (hash {}, history #{sequence}, pushed {} by {})",
        field(meta::PLUGIN_VERSION),
        short(&bucket::content_hash_of(info).unwrap_or_default()),
        field(meta::PUSHED_AT),
        field(meta::PUSHED_BY)
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sequence: u64, hash: &str) -> (u64, ObjectInfo) {
        let info: ObjectInfo = serde_json::from_value(json!({
            "name": bucket::history_name("p", sequence),
            "bucket": "plugins",
            "nuid": "x",
            "size": 1,
            "chunks": 1,
            "metadata": { meta::CONTENT_HASH: hash },
        }))
        .unwrap();
        (sequence, info)
    }

    fn target(history: &[(u64, ObjectInfo)], current: Option<&str>) -> Option<u64> {
        rollback_target(history, current).map(|(sequence, _)| *sequence)
    }

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

    #[test]
    fn rollback_walks_back_through_the_history() {
        let history = [entry(1, "a"), entry(2, "b"), entry(3, "c")];
        assert_eq!(target(&history, Some("c")), Some(2));
        assert_eq!(target(&history, Some("b")), Some(1));
        assert_eq!(target(&history, Some("a")), None);
    }

    #[test]
    fn rollback_from_an_unknown_or_missing_current_takes_the_newest_push() {
        let history = [entry(1, "a"), entry(2, "b")];
        assert_eq!(target(&history, Some("garbage")), Some(2));
        assert_eq!(target(&history, None), Some(2));
        assert_eq!(target(&[], None), None);
    }

    #[test]
    fn rollback_skips_repeated_pushes_of_the_current_content() {
        let history = [entry(1, "a"), entry(2, "b"), entry(3, "b")];
        assert_eq!(target(&history, Some("b")), Some(1));
    }
}
