//! `natsplug ls`: the plugins in the bucket, with their versions, hashes
//! and (with `--history`) the copies `rollback` can restore.

use std::process::ExitCode;

use async_nats::jetstream::object_store::ObjectInfo;
use clap::Args;
use serde_json::json;

use crate::bucket::{BucketArgs, Inventory, megabytes, short};
use natsplug::bucket::{self, meta};

pub const EXAMPLES: &str = "Examples:
  natsplug ls
  natsplug ls --history
  natsplug ls --bucket staging-plugins --json";

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

pub async fn run(args: LsArgs) -> anyhow::Result<ExitCode> {
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
