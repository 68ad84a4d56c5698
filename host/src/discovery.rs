//! NATS service discovery (the micro-services protocol, ADR-32): every
//! host answers `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` (also with the
//! service name, and name plus instance id) with one endpoint per served
//! plugin phase, so `nats micro ls/info/stats` sees every host and plugin.
//!
//! This is answered by hand rather than with async-nats' `service` module
//! because the phase endpoints come and go with hot reload, are drained
//! rather than dropped, and reply with a protocol body on errors.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::server::{Host, LoadFailure, PluginStatus};

/// The `$SRV` verbs answered.
const VERBS: [&str; 3] = ["PING", "INFO", "STATS"];

/// Subscribe to the discovery subjects and answer them until the host shuts
/// down.
pub async fn serve(host: Arc<Host>) -> anyhow::Result<()> {
    let client = host.client().clone();
    let name = host.config().monitoring.service_name.clone();
    let mut subscriptions = Vec::new();
    for verb in VERBS {
        for subject in [
            format!("$SRV.{verb}"),
            format!("$SRV.{verb}.{name}"),
            format!("$SRV.{verb}.{name}.{}", host.id()),
        ] {
            let subscriber = client
                .subscribe(subject.clone())
                .await
                .map_err(|e| anyhow::anyhow!("subscribing to {subject}: {e}"))?;
            subscriptions.push(subscriber.map(move |message| (verb, message)));
        }
    }
    let mut requests = futures::stream::select_all(subscriptions);
    let stop = host.background();
    tokio::spawn(async move {
        loop {
            let (verb, message) = tokio::select! {
                _ = stop.cancelled() => break,
                next = requests.next() => match next {
                    Some(next) => next,
                    None => break,
                },
            };
            let Some(reply) = message.reply else { continue };
            let body = match verb {
                "PING" => ping(&host),
                "INFO" => info(&host).await,
                _ => stats(&host).await,
            };
            if let Err(error) = client.publish(reply, body.to_string().into()).await {
                tracing::debug!(%error, "could not answer a discovery request");
            }
        }
    });
    Ok(())
}

/// What every reply carries: who the host is, and in its metadata which
/// version of each plugin it serves (`plugin.NAME.hash`, `.version`,
/// `.origin`, `.contract`) and which version failed to load (`plugin.NAME.failed_hash`,
/// `.failed_error`), so a fleet's convergence can be read from `$SRV.INFO`.
fn identity(
    host: &Host,
    kind: &str,
    plugins: &[PluginStatus],
    failures: &BTreeMap<String, LoadFailure>,
) -> serde_json::Map<String, Value> {
    let config = host.config();
    let mut metadata = BTreeMap::new();
    metadata.insert("hostname".to_string(), crate::nats::hostname());
    metadata.insert("subject_prefix".to_string(), config.subjects.prefix.clone());
    metadata.insert(
        "queue_group".to_string(),
        config.subjects.queue_group.clone(),
    );
    for plugin in plugins {
        metadata.insert(
            format!("plugin.{}.hash", plugin.name),
            plugin.content_hash.clone(),
        );
        if let Some(version) = &plugin.version {
            metadata.insert(format!("plugin.{}.version", plugin.name), version.clone());
        }
        metadata.insert(
            format!("plugin.{}.origin", plugin.name),
            plugin.origin.as_str().to_string(),
        );
        metadata.insert(
            format!("plugin.{}.contract", plugin.name),
            plugin.contract.to_string(),
        );
    }
    for (name, failure) in failures {
        metadata.insert(
            format!("plugin.{name}.failed_hash"),
            failure.content_hash.clone(),
        );
        metadata.insert(
            format!("plugin.{name}.failed_error"),
            failure.error.to_string(),
        );
    }
    if let Some(bucket) = &config.plugins.bucket {
        metadata.insert("bucket".to_string(), bucket.clone());
    }
    let mut object = serde_json::Map::new();
    object.insert(
        "type".into(),
        json!(format!("io.nats.micro.v1.{kind}_response")),
    );
    object.insert("name".into(), json!(config.monitoring.service_name));
    object.insert("id".into(), json!(host.id()));
    object.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
    object.insert("metadata".into(), json!(metadata));
    object
}

fn ping(host: &Host) -> Value {
    // PING carries no plugin metadata, so it needs no lock.
    Value::Object(identity(host, "ping", &[], &BTreeMap::new()))
}

/// `{plugin}-{phase}`: endpoint names allow letters, digits, `-` and `_`.
fn endpoint_name(plugin: &str, phase: natsplug_protocol::Phase) -> String {
    format!("{plugin}-{phase}")
}

async fn info(host: &Host) -> Value {
    let plugins = host.status().await;
    let failures = host.failures().await;
    let mut object = identity(host, "info", &plugins, &failures);
    object.insert(
        "description".into(),
        json!("WebAssembly plugins served on NATS phase subjects"),
    );
    let queue_group = &host.config().subjects.queue_group;
    let endpoints: Vec<Value> = plugins
        .iter()
        .flat_map(|plugin| {
            plugin.endpoints.iter().map(move |endpoint| {
                json!({
                    "name": endpoint_name(&plugin.name, endpoint.phase),
                    "subject": endpoint.subject,
                    "queue_group": queue_group,
                    "metadata": {
                        "plugin": plugin.name,
                        "phase": endpoint.phase.as_str(),
                        "plugin_version": plugin.version.clone().unwrap_or_default(),
                        "content_hash": plugin.content_hash,
                    },
                })
            })
        })
        .collect();
    object.insert("endpoints".into(), json!(endpoints));
    Value::Object(object)
}

async fn stats(host: &Host) -> Value {
    let plugins = host.status().await;
    let failures = host.failures().await;
    let mut object = identity(host, "stats", &plugins, &failures);
    object.insert(
        "started".into(),
        json!(humantime::format_rfc3339_millis(host.started()).to_string()),
    );
    let queue_group = &host.config().subjects.queue_group;
    let endpoints: Vec<Value> = plugins
        .iter()
        .flat_map(|plugin| {
            plugin.endpoints.iter().map(move |endpoint| {
                let stats = &endpoint.stats;
                let total = stats.processing_time.as_nanos() as u64;
                let average = total.checked_div(stats.requests).unwrap_or(0);
                json!({
                    "name": endpoint_name(&plugin.name, endpoint.phase),
                    "subject": endpoint.subject,
                    "queue_group": queue_group,
                    "num_requests": stats.requests,
                    "num_errors": stats.errors,
                    "last_error": stats.last_error.clone().unwrap_or_default(),
                    "processing_time": total,
                    "average_processing_time": average,
                    "data": Value::Null,
                })
            })
        })
        .collect();
    object.insert("endpoints".into(), json!(endpoints));
    Value::Object(object)
}
