//! `natsplug status`: the convergence of a fleet. Asks every host
//! (`$SRV.INFO`) which version of each plugin it serves, and compares with
//! the plugins bucket.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use futures::StreamExt as _;
use serde_json::{Value, json};

use crate::bucket::{BucketArgs, Inventory, short};
use crate::remote;
use natsplug::bucket;

pub const EXAMPLES: &str = "Examples:
  natsplug status
  natsplug push authz.wasm && until natsplug status >/dev/null; do sleep 1; done

The exit status is 0 when every host that serves (or failed to load) a
plugin serves the bucket's current version of it, and every host following
the bucket serves each of its plugins; 1 otherwise, or when no host answers.";

/// Flags of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Service name the hosts answer discovery under.
    #[arg(long, default_value = "natsplug")]
    service: String,
    /// Seconds to wait for hosts to answer.
    #[arg(long, default_value_t = 1.0)]
    wait: f64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: BucketArgs,
}

/// What one host reports about one plugin.
#[derive(Debug, Default, Clone)]
struct HostView {
    host: String,
    served: Option<String>,
    origin: Option<String>,
    failed: Option<(String, String)>,
}

/// One plugin across the fleet.
#[derive(Debug, Default)]
struct PluginView {
    bucket_hash: Option<String>,
    bucket_version: Option<String>,
    hosts: Vec<HostView>,
}

impl PluginView {
    /// Every host that knows the plugin (or follows the bucket holding
    /// it) serves the bucket's version and failed on nothing; a plugin the
    /// bucket lacks is converged when no host serves it from the bucket.
    fn converged(&self) -> bool {
        match &self.bucket_hash {
            Some(hash) => self
                .hosts
                .iter()
                .all(|h| h.served.as_ref() == Some(hash) && h.failed.is_none()),
            None => self
                .hosts
                .iter()
                .all(|h| h.origin.as_deref() == Some("directory") && h.failed.is_none()),
        }
    }

    /// Count each of `followers` (hosts following the bucket) that does
    /// not report the plugin at all: it has yet to load it.
    fn add_missing(&mut self, followers: &[String]) {
        for follower in followers {
            if !self.hosts.iter().any(|h| &h.host == follower) {
                self.hosts.push(HostView {
                    host: follower.clone(),
                    ..HostView::default()
                });
            }
        }
    }

    fn summary(&self) -> String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for host in &self.hosts {
            if let Some(served) = &host.served {
                *counts.entry(served.as_str()).or_default() += 1;
            }
        }
        let serving: usize = counts.values().sum();
        let mut parts = Vec::new();
        match (&self.bucket_hash, counts.len()) {
            (Some(hash), 1) if counts.contains_key(hash.as_str()) => {
                parts.push(format!(
                    "{serving}/{} hosts on {}",
                    self.hosts.len(),
                    short(hash)
                ));
            }
            _ => {
                // Most hosts first.
                let mut counts: Vec<(&str, usize)> = counts.into_iter().collect();
                counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                for (hash, count) in counts {
                    parts.push(format!("{count} on {}", short(hash)));
                }
            }
        }
        let without = self
            .hosts
            .iter()
            .filter(|h| h.served.is_none() && h.failed.is_none())
            .count();
        if without > 0 {
            parts.push(format!("{without} following the bucket without it"));
        }
        for host in &self.hosts {
            if let Some((hash, error)) = &host.failed {
                parts.push(format!(
                    "{} failed to load {}: {error}",
                    host.host,
                    short(hash)
                ));
            }
        }
        if parts.is_empty() {
            parts.push("no host serves it".into());
        }
        parts.join("; ")
    }
}

pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let wait = remote::timeout(args.wait)?;
    let bucket_name = &args.target.bucket;
    let connected = args.target.connect().await?;
    let infos = collect_infos(&connected.client, &args.service, wait).await?;

    let mut plugins: BTreeMap<String, PluginView> = BTreeMap::new();
    let bucket_note = match bucket::open(&connected.js, bucket_name).await {
        Ok(store) => {
            let inventory = Inventory::read(&store, bucket_name).await?;
            for (name, info) in &inventory.current {
                let view = plugins.entry(name.clone()).or_default();
                view.bucket_hash = bucket::content_hash_of(info);
                view.bucket_version = info.metadata.get(bucket::meta::PLUGIN_VERSION).cloned();
            }
            None
        }
        Err(error) => Some(format!("{error:#}")),
    };
    // Hosts that follow this bucket, which should serve all of it.
    let mut followers = Vec::new();
    for info in &infos {
        let metadata = info["metadata"].as_object().cloned().unwrap_or_default();
        let host = format!(
            "{} ({})",
            metadata
                .get("hostname")
                .and_then(Value::as_str)
                .unwrap_or("?"),
            info["id"].as_str().map(short).unwrap_or("?")
        );
        let get = |key: String| {
            metadata
                .get(&key)
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let names: BTreeSet<String> = metadata
            .keys()
            .filter_map(|key| key.strip_prefix("plugin."))
            .filter_map(|rest| rest.rsplit_once('.').map(|(name, _)| name.to_string()))
            .collect();
        for name in names {
            let view = HostView {
                host: host.clone(),
                served: get(format!("plugin.{name}.hash")),
                origin: get(format!("plugin.{name}.origin")),
                failed: get(format!("plugin.{name}.failed_hash")).map(|hash| {
                    (
                        hash,
                        get(format!("plugin.{name}.failed_error")).unwrap_or_default(),
                    )
                }),
            };
            plugins.entry(name).or_default().hosts.push(view);
        }
        if metadata.get("bucket").and_then(Value::as_str) == Some(bucket_name.as_str()) {
            followers.push(host);
        }
    }
    for view in plugins.values_mut() {
        if view.bucket_hash.is_some() {
            view.add_missing(&followers);
        }
    }
    let converged = !infos.is_empty() && plugins.values().all(PluginView::converged);

    if args.json {
        let list: Vec<Value> = plugins
            .iter()
            .map(|(name, view)| {
                json!({
                    "name": name,
                    "bucket": { "content_hash": view.bucket_hash, "version": view.bucket_version },
                    "converged": view.converged(),
                    "hosts": view.hosts.iter().map(|h| json!({
                        "host": h.host,
                        "content_hash": h.served,
                        "origin": h.origin,
                        "failed": h.failed.as_ref().map(|(hash, error)| json!({"content_hash": hash, "error": error})),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "hosts": infos.len(),
                "bucket": bucket_name,
                "bucket_error": bucket_note,
                "converged": converged,
                "plugins": list,
            }))?
        );
    } else {
        println!(
            "{} host(s) answering as `{}`; bucket `{bucket_name}`{}",
            infos.len(),
            args.service,
            bucket_note
                .as_ref()
                .map(|note| format!(" unavailable: {note}"))
                .unwrap_or_default()
        );
        if !plugins.is_empty() {
            println!("{:<20} {:<24} HOSTS", "PLUGIN", "BUCKET");
        }
        for (name, view) in &plugins {
            let in_bucket = match (&view.bucket_hash, &view.bucket_version) {
                (Some(hash), Some(version)) => format!("{version} {}", short(hash)),
                (Some(hash), None) => short(hash).to_string(),
                (None, _) => "-".to_string(),
            };
            let mark = if view.converged() {
                ""
            } else {
                "  (not converged)"
            };
            println!("{name:<20} {in_bucket:<24} {}{mark}", view.summary());
        }
        if infos.is_empty() {
            println!("no host answered within {:.1} s", wait.as_secs_f64());
        }
    }
    Ok(if converged {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Every `$SRV.INFO.{service}` reply that arrives within `wait`.
async fn collect_infos(
    client: &async_nats::Client,
    service: &str,
    wait: Duration,
) -> anyhow::Result<Vec<Value>> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await?;
    client
        .publish_with_reply(format!("$SRV.INFO.{service}"), inbox, "".into())
        .await?;
    client.flush().await?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut infos = Vec::new();
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, replies.next()).await {
        if let Ok(info) = serde_json::from_slice::<Value>(&message.payload) {
            infos.push(info);
        }
    }
    Ok(infos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serving(host: &str, hash: &str) -> HostView {
        HostView {
            host: host.into(),
            served: Some(hash.into()),
            origin: Some("bucket".into()),
            failed: None,
        }
    }

    fn plugin(hosts: Vec<HostView>) -> PluginView {
        PluginView {
            bucket_hash: Some("aaaa".into()),
            bucket_version: None,
            hosts,
        }
    }

    #[test]
    fn a_follower_without_the_plugin_is_not_converged() {
        let mut view = plugin(vec![serving("a", "aaaa")]);
        assert!(view.converged());
        view.add_missing(&["a".to_string(), "b".to_string()]);
        assert!(!view.converged());
        assert_eq!(
            view.summary(),
            "1/2 hosts on aaaa; 1 following the bucket without it"
        );
    }

    #[test]
    fn hosts_on_other_versions_and_failures_are_listed() {
        let mut failed = serving("c", "bbbb");
        failed.failed = Some(("cccc".into(), "no describe export".into()));
        let view = plugin(vec![serving("a", "aaaa"), serving("b", "bbbb"), failed]);
        assert!(!view.converged());
        assert_eq!(
            view.summary(),
            "2 on bbbb; 1 on aaaa; c failed to load cccc: no describe export"
        );
    }
}
