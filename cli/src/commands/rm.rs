//! `natsplug rm`: remove a plugin from the bucket (and so from every host
//! serving it), keeping its history unless `--purge`.

use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use crate::bucket::{BucketArgs, Inventory, delete};
use natsplug::bucket;

pub const EXAMPLES: &str = "Examples:
  natsplug rm authz             # every host stops serving it; history kept for rollback
  natsplug rm authz --purge     # and drop its history";

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

pub async fn run(args: RmArgs) -> anyhow::Result<ExitCode> {
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
