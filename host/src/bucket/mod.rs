//! Plugins in a JetStream object store bucket: the object layout and the
//! metadata that the deploy commands write and hosts read.
//!
//! Layout of a bucket:
//! - `NAME`: the current component of plugin `NAME`; hosts serve it.
//! - `history/NAME/SEQ`: a copy of every push of `NAME`, `SEQ` increasing
//!   (zero-padded), the newest few kept for `rollback`. Hosts ignore them.
//!
//! Every object written by `natsplug push` carries the metadata keys of
//! [`meta`]; a component put by another client still loads (hosts hash the
//! bytes themselves), it only lacks the version and provenance.

pub mod source;

use std::collections::HashMap;

use anyhow::{Context as _, anyhow};
use async_nats::jetstream::{self, object_store::ObjectStore};
use tokio::io::AsyncReadExt as _;

/// The bucket used when none is named.
pub const DEFAULT_BUCKET: &str = "plugins";
/// Prefix of the history copies.
pub const HISTORY_PREFIX: &str = "history/";
/// Pushes kept per plugin for `rollback` by default.
pub const DEFAULT_HISTORY: usize = 5;

/// Object metadata keys written by `natsplug push`.
pub mod meta {
    /// SHA-256 of the component bytes, hex (the host's content hash).
    pub const CONTENT_HASH: &str = "natsplug-content-hash";
    /// The version the component reports in `describe`, when it does.
    pub const PLUGIN_VERSION: &str = "natsplug-plugin-version";
    /// Who pushed: `user@machine`, and the NATS user when one is set.
    pub const PUSHED_BY: &str = "natsplug-pushed-by";
    /// When it was pushed, RFC 3339.
    pub const PUSHED_AT: &str = "natsplug-pushed-at";
    /// The history sequence of the push this object came from.
    pub const SEQUENCE: &str = "natsplug-sequence";
    /// On an object put back by `rollback`: the content hash it replaced.
    pub const ROLLED_BACK_FROM: &str = "natsplug-rolled-back-from";
}

/// What an object name in a plugins bucket stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectName {
    /// The current component of a plugin.
    Plugin(String),
    /// A history copy of a push of a plugin.
    History { plugin: String, sequence: u64 },
    /// Anything else (ignored by hosts).
    Other,
}

impl ObjectName {
    pub fn parse(name: &str) -> ObjectName {
        if let Some(rest) = name.strip_prefix(HISTORY_PREFIX) {
            if let Some((plugin, sequence)) = rest.rsplit_once('/')
                && crate::config::validate_plugin_name(plugin).is_ok()
                && let Ok(sequence) = sequence.parse()
            {
                return ObjectName::History {
                    plugin: plugin.to_string(),
                    sequence,
                };
            }
            return ObjectName::Other;
        }
        if crate::config::validate_plugin_name(name).is_ok() {
            ObjectName::Plugin(name.to_string())
        } else {
            ObjectName::Other
        }
    }
}

/// The object name of history copy `sequence` of `plugin`.
pub fn history_name(plugin: &str, sequence: u64) -> String {
    format!("{HISTORY_PREFIX}{plugin}/{sequence:010}")
}

/// The content hash recorded in an object's metadata, if any.
pub fn recorded_hash(metadata: &HashMap<String, String>) -> Option<&str> {
    metadata.get(meta::CONTENT_HASH).map(String::as_str)
}

/// The content hash (SHA-256, hex, as the host computes it) of an object:
/// from the digest the object store records, else from push's metadata.
pub fn content_hash_of(info: &jetstream::object_store::ObjectInfo) -> Option<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    let from_digest = info
        .digest
        .as_deref()
        .and_then(|digest| digest.strip_prefix("SHA-256="))
        .and_then(|encoded| {
            URL_SAFE
                .decode(encoded)
                .or_else(|_| STANDARD.decode(encoded))
                .ok()
        })
        .filter(|bytes| bytes.len() == 32)
        .map(hex::encode);
    from_digest.or_else(|| recorded_hash(&info.metadata).map(str::to_string))
}

/// Open bucket `bucket`, explaining the usual reasons it cannot be.
pub async fn open(js: &jetstream::Context, bucket: &str) -> anyhow::Result<ObjectStore> {
    js.get_object_store(bucket)
        .await
        .map_err(|error| explain(bucket, anyhow::Error::new(error)))
}

/// Create bucket `bucket` with `replicas` copies, or open it if it exists.
pub async fn create(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> anyhow::Result<ObjectStore> {
    if let Ok(store) = js.get_object_store(bucket).await {
        return Ok(store);
    }
    js.create_object_store(jetstream::object_store::Config {
        bucket: bucket.to_string(),
        description: Some("natsplug plugin components".to_string()),
        num_replicas: replicas.max(1),
        ..Default::default()
    })
    .await
    .map_err(|error| explain(bucket, anyhow::Error::new(error)))
    .with_context(|| format!("creating bucket `{bucket}` with {replicas} replica(s)"))
}

/// Why bucket `bucket` could not be used, in words that say what to do.
pub fn explain(bucket: &str, error: anyhow::Error) -> anyhow::Error {
    let text = format!("{error:?}").to_lowercase();
    if text.contains("stream not found") || text.contains("10059") {
        anyhow!(
            "bucket `{bucket}` does not exist: create it with `natsplug push --create --bucket {bucket} FILE`"
        )
    } else if text.contains("no responders") || text.contains("jetstream not enabled") {
        anyhow!(
            "JetStream is not enabled on the NATS server (bucket `{bucket}` needs it): start nats-server with -js, or enable JetStream in its config"
        )
    } else if text.contains("permission") || text.contains("authorization") {
        anyhow!(
            "the NATS user may not use bucket `{bucket}`: it needs the JetStream API and `$O.{bucket}.>` subjects (see docs/connection.md): {error:#}"
        )
    } else if text.contains("invalid bucket name") || text.contains("invalidbucketname") {
        anyhow!("`{bucket}` is not a valid bucket name: use letters, digits, `-` and `_`")
    } else {
        error.context(format!("opening bucket `{bucket}`"))
    }
}

/// Read object `name` whole, or `None` when it does not exist.
pub async fn read(
    store: &ObjectStore,
    name: &str,
) -> anyhow::Result<Option<(jetstream::object_store::ObjectInfo, Vec<u8>)>> {
    use jetstream::object_store::GetErrorKind;
    let mut object = match store.get(name).await {
        Ok(object) => object,
        Err(error) if matches!(error.kind(), GetErrorKind::NotFound) => return Ok(None),
        Err(error) => {
            return Err(anyhow::Error::new(error).context(format!("reading object `{name}`")));
        }
    };
    let info = object.info().clone();
    if info.deleted {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(info.size);
    object
        .read_to_end(&mut bytes)
        .await
        .with_context(|| format!("reading object `{name}` ({} bytes)", info.size))?;
    Ok(Some((info, bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names() {
        assert_eq!(
            ObjectName::parse("authz"),
            ObjectName::Plugin("authz".into())
        );
        assert_eq!(
            ObjectName::parse(&history_name("authz", 7)),
            ObjectName::History {
                plugin: "authz".into(),
                sequence: 7
            }
        );
        assert_eq!(history_name("authz", 7), "history/authz/0000000007");
        assert_eq!(ObjectName::parse("history/authz/x"), ObjectName::Other);
        assert_eq!(ObjectName::parse("a b"), ObjectName::Other);
        assert_eq!(ObjectName::parse("notes.txt"), ObjectName::Other);
    }
}
