//! `natsplug rollback`: put the previous version of a plugin, from its
//! history in the bucket, back as the current one.

use std::process::ExitCode;

use anyhow::bail;
use async_nats::jetstream::object_store::ObjectInfo;
use clap::Args;

use crate::bucket::{BucketArgs, Inventory, put, short};
use natsplug::bucket::{self, meta};

pub const EXAMPLES: &str = "Examples:
  natsplug rollback authz       # the version before the current one, on every host
  natsplug rollback authz       # again: one further back

After `rm`, or after an object was put by another client, rollback restores
the newest pushed version.";

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

pub async fn run(args: RollbackArgs) -> anyhow::Result<ExitCode> {
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
    use serde_json::json;

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
