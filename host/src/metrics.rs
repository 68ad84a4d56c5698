//! The Prometheus exposition of a host's state, built per scrape from the
//! host's counters and the endpoints' latency histograms.

use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use std::collections::BTreeMap;

use crate::server::{Host, LoadFailure, PluginStatus};
use crate::stats::ERROR_CODES;

/// A snapshot of everything exported, taken at scrape time.
#[derive(Debug)]
struct Snapshot {
    plugins: Vec<PluginStatus>,
    failures: BTreeMap<String, LoadFailure>,
    counters: Vec<(&'static str, &'static str, u64)>,
    gauges: Vec<(&'static str, &'static str, i64)>,
    dropped_records: Vec<(&'static str, u64)>,
}

type Labels = Vec<(&'static str, String)>;

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let endpoint_labels = |plugin: &PluginStatus, phase: natsplug_protocol::Phase| -> Labels {
            vec![
                ("plugin", plugin.name.clone()),
                ("phase", phase.to_string()),
            ]
        };

        let counter = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "natsplug_requests",
            "Requests answered, per plugin and phase",
            None,
            counter.metric_type(),
        )?;
        for plugin in &self.plugins {
            for endpoint in &plugin.endpoints {
                let labels = endpoint_labels(plugin, endpoint.phase);
                ConstCounter::new(endpoint.stats.requests)
                    .encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "natsplug_errors",
            "Failed requests by error code (400 bad input, 413 too large, 500 plugin failure, 503 overloaded, 504 deadline)",
            None,
            counter.metric_type(),
        )?;
        for plugin in &self.plugins {
            for endpoint in &plugin.endpoints {
                for (code, count) in ERROR_CODES.iter().zip(endpoint.stats.errors_by_code) {
                    let mut labels = endpoint_labels(plugin, endpoint.phase);
                    labels.push(("code", code.to_string()));
                    ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
                }
            }
        }

        if let Some(first) = self.plugins.iter().flat_map(|p| p.endpoints.first()).next() {
            let mut family = encoder.encode_descriptor(
                "natsplug_request_duration_seconds",
                "Time from receiving a request to sending its reply",
                None,
                first.latency.metric_type(),
            )?;
            for plugin in &self.plugins {
                for endpoint in &plugin.endpoints {
                    let labels = endpoint_labels(plugin, endpoint.phase);
                    endpoint.latency.encode(family.encode_family(&labels)?)?;
                }
            }
        }

        let mut family = encoder.encode_descriptor(
            "natsplug_plugin_reloads",
            "Times a new version of a plugin replaced the served one",
            None,
            counter.metric_type(),
        )?;
        for plugin in &self.plugins {
            let labels: Labels = vec![("plugin", plugin.name.clone())];
            ConstCounter::new(plugin.reloads).encode(family.encode_family(&labels)?)?;
        }

        let gauge = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "natsplug_plugin_info",
            "The plugin version and content hash served (always 1)",
            None,
            gauge.metric_type(),
        )?;
        for plugin in &self.plugins {
            let labels: Labels = vec![
                ("plugin", plugin.name.clone()),
                ("version", plugin.version.clone().unwrap_or_default()),
                ("content_hash", plugin.content_hash.clone()),
                ("origin", plugin.origin.as_str().to_string()),
            ];
            ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "natsplug_plugin_load_failed",
            "A plugin version that failed to load while the previous one (if any) keeps serving (always 1)",
            None,
            gauge.metric_type(),
        )?;
        for (name, failure) in &self.failures {
            let labels: Labels = vec![
                ("plugin", name.clone()),
                ("content_hash", failure.content_hash.clone()),
                ("origin", failure.origin.as_str().to_string()),
            ];
            ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "natsplug_log_records_dropped",
            "Log records not published, by reason",
            None,
            counter.metric_type(),
        )?;
        for (reason, count) in &self.dropped_records {
            let labels: Labels = vec![("reason", reason.to_string())];
            ConstCounter::new(*count).encode(family.encode_family(&labels)?)?;
        }

        for (name, help, value) in &self.counters {
            let metric = ConstCounter::new(*value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        for (name, help, value) in &self.gauges {
            let metric = ConstGauge::new(*value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        Ok(())
    }
}

/// The metrics of `host` in the Prometheus text format.
pub async fn render(host: &Host) -> String {
    let stats = host.stats();
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    let connected = host.client().connection_state() == async_nats::connection::State::Connected;
    let snapshot = Snapshot {
        plugins: host.status().await,
        failures: host.failures().await,
        counters: vec![
            (
                "natsplug_log_records_sent",
                "Log records published to NATS (acknowledged, in durable mode; in plain mode one the server then refused counts here and as dropped, reason refused)",
                load(&stats.log_records_sent),
            ),
            (
                "natsplug_log_publish_failures",
                "Failed publishes of log records",
                load(&stats.log_publish_failures),
            ),
            (
                "natsplug_nats_reconnects",
                "Reconnections to NATS",
                load(&stats.reconnects),
            ),
            (
                "natsplug_slow_consumer_drops",
                "Messages NATS dropped because the host fell behind (slow consumer)",
                load(&stats.slow_consumers),
            ),
            (
                "natsplug_permission_violations",
                "Publishes or subscriptions the server refused",
                load(&stats.permission_violations),
            ),
            (
                "natsplug_bucket_versions_skipped",
                "Bucket versions of a plugin passed over because the plugins directory holds it",
                load(&stats.bucket_versions_skipped),
            ),
            (
                "natsplug_messages_without_reply",
                "Messages on a phase subject without a reply subject, dropped",
                load(&stats.no_reply_dropped),
            ),
            (
                "natsplug_overloaded",
                "Requests refused for lack of a slot (503)",
                load(&stats.overloaded),
            ),
            (
                "natsplug_failed_open",
                "Plugin failures answered with next under an open failure mode",
                load(&stats.failed_open),
            ),
            (
                "natsplug_reply_failures",
                "Replies that could not be published",
                load(&stats.reply_failures),
            ),
        ],
        gauges: vec![
            (
                "natsplug_in_flight",
                "Calls queued or running",
                host.in_flight() as i64,
            ),
            (
                "natsplug_warm_instances",
                "Warm plugin instances kept by the workers",
                stats.warm_instances.load(Ordering::Relaxed),
            ),
            (
                "natsplug_pool_instances",
                "Instance slots of the pooling allocator",
                i64::from(host.config().runtime.pool_instances),
            ),
            (
                "natsplug_nats_connected",
                "1 when connected to NATS",
                i64::from(connected),
            ),
        ],
        dropped_records: vec![
            ("buffer_full", load(&stats.log_records_dropped)),
            ("refused", load(&stats.log_records_refused)),
            ("per_call_cap", load(&stats.records_dropped)),
            (
                "rate_limited",
                stats.log_records_rate_limited.load(Ordering::Relaxed),
            ),
        ],
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        tracing::warn!(%error, "could not encode the metrics");
    }
    text
}
