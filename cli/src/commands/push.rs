//! `natsplug push`: check a component as a host would load it, then put it
//! into the plugins bucket with a history copy for `rollback`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::bucket::{BucketArgs, Inventory, delete, megabytes, put, retrying_timeouts, short};
use crate::local;
use natsplug::bucket::{self, meta};
use natsplug::config::HostConfig;

pub const EXAMPLES: &str = "Examples:
  natsplug push target/wasm32-wasip2/release/authz.wasm --create
  natsplug push build/rewriter.wasm --name rewriter --nats nats://10.0.0.5:4222 --nats-creds deploy.creds
  natsplug push authz.wasm --create --replicas 3 --keep 10

The component is checked as `natsplug inspect` does before anything is sent;
pushing the content already current does nothing.";

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

pub async fn run(args: PushArgs) -> anyhow::Result<ExitCode> {
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
    let store = retrying_timeouts("opening the bucket", || async {
        if args.create {
            bucket::create(&connected.js, bucket_name, args.replicas).await
        } else {
            bucket::open(&connected.js, bucket_name).await
        }
    })
    .await?;
    let inventory = retrying_timeouts("reading the bucket", || {
        Inventory::read(&store, bucket_name)
    })
    .await?;
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
    retrying_timeouts("writing the plugin", || {
        put(
            &connected,
            &store,
            bucket_name,
            &name,
            metadata.clone(),
            &bytes,
        )
    })
    .await?;
    let history_name = bucket::history_name(&name, sequence);
    retrying_timeouts("writing its history copy", || {
        put(
            &connected,
            &store,
            bucket_name,
            &history_name,
            metadata.clone(),
            &bytes,
        )
    })
    .await
    .context("the plugin was pushed, but its history copy (for rollback) was not written")?;
    // The new copy is the newest; keep `keep` in all.
    let excess = (history.len() + 1).saturating_sub(args.keep);
    for (old, _) in &history[..excess] {
        let old_name = bucket::history_name(&name, *old);
        retrying_timeouts("removing an old history copy", || {
            delete(&connected, &store, bucket_name, &old_name)
        })
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
