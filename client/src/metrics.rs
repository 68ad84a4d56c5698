//! A chain's counters as Prometheus metrics (feature `prometheus`): a
//! collector that reads [`Chain::stats`] at every scrape, so the numbers
//! are the chain's own and nothing is counted twice.
//!
//! ```no_run
//! # async fn f(chain: natsplug_client::Chain) {
//! use prometheus_client::registry::Registry;
//! let mut registry = Registry::with_prefix("proxy");
//! registry
//!     .sub_registry_with_label(("route".into(), "api".into()))
//!     .register_collector(Box::new(natsplug_client::metrics::ChainCollector::new(chain)));
//! # }
//! ```
//!
//! Metrics, each labelled `plugin` and `phase`:
//! - `phase_calls_total`, `phase_retries_total`;
//! - `phase_failures_total{kind}`: attempts that failed, `kind` one of
//!   `timeout`, `no_responders`, `host_error`, `plugin_error`,
//!   `undecodable`, `transport`;
//! - `phase_outcomes_total{outcome}`: `ended`, `failed_open`,
//!   `failed_closed`, `skipped`, `host_failed_open`;
//! - `phase_duration_seconds`: a histogram of whole calls, retries included;
//!
//! and `logging_dropped_total`, `discovery_refreshes_total`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

use crate::Chain;
use crate::stats::{LATENCY_BUCKETS_MICROS, PhaseStats};

/// Exports one chain's counters at every scrape.
#[derive(Debug)]
pub struct ChainCollector {
    chain: Chain,
}

impl ChainCollector {
    /// A collector of `chain`'s counters (clones of the chain share them).
    pub fn new(chain: Chain) -> ChainCollector {
        ChainCollector { chain }
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// The failures of one phase by kind, as exported.
fn failures(stats: &PhaseStats) -> [(&'static str, u64); 6] {
    [
        ("timeout", stats.timeouts),
        ("no_responders", stats.no_responders),
        ("host_error", stats.error_replies.values().sum()),
        ("plugin_error", stats.plugin_errors),
        ("undecodable", stats.undecodable),
        ("transport", stats.transport_errors),
    ]
}

/// The endings of one phase by outcome, as exported.
fn outcomes(stats: &PhaseStats) -> [(&'static str, u64); 5] {
    [
        ("ended", stats.ended),
        ("failed_open", stats.failed_open),
        ("failed_closed", stats.failed_closed),
        ("skipped", stats.skipped),
        ("host_failed_open", stats.host_failed_open),
    ]
}

impl Collector for ChainCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.chain.stats();
        let phases: Vec<(Labels<'_>, &PhaseStats)> = snapshot
            .plugins
            .iter()
            .flat_map(|plugin| {
                natsplug_protocol::Phase::ALL.into_iter().map(move |phase| {
                    let labels = vec![
                        ("plugin", plugin.plugin.as_str()),
                        ("phase", phase.as_str()),
                    ];
                    (labels, plugin.phase(phase))
                })
            })
            .collect();

        let counter = |encoder: &mut DescriptorEncoder,
                       name: &str,
                       help: &str,
                       values: &mut dyn Iterator<Item = (Labels<'_>, u64)>|
         -> Result<(), std::fmt::Error> {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, value) in values {
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
            Ok(())
        };

        counter(
            &mut encoder,
            "phase_calls",
            "Phase calls that sent at least one request.",
            &mut phases.iter().map(|(l, s)| (l.clone(), s.calls)),
        )?;
        counter(
            &mut encoder,
            "phase_retries",
            "Attempts after the first (after no responders or a timeout).",
            &mut phases.iter().map(|(l, s)| (l.clone(), s.retries)),
        )?;
        counter(
            &mut encoder,
            "phase_failures",
            "Attempts that failed, by kind.",
            &mut phases.iter().flat_map(|(l, s)| {
                failures(s).into_iter().map(move |(kind, value)| {
                    let mut labels = l.clone();
                    labels.push(("kind", kind));
                    (labels, value)
                })
            }),
        )?;
        counter(
            &mut encoder,
            "phase_outcomes",
            "How phase calls ended besides a plain reply, by outcome.",
            &mut phases.iter().flat_map(|(l, s)| {
                outcomes(s).into_iter().map(move |(outcome, value)| {
                    let mut labels = l.clone();
                    labels.push(("outcome", outcome));
                    (labels, value)
                })
            }),
        )?;

        let mut family = encoder.encode_descriptor(
            "phase_duration_seconds",
            "Duration of whole phase calls, retries included.",
            None,
            MetricType::Histogram,
        )?;
        for (labels, stats) in &phases {
            let latency = &stats.latency;
            let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_MICROS
                .iter()
                .map(|&micros| micros as f64 / 1e6)
                .chain([f64::INFINITY])
                .zip(latency.buckets)
                .collect();
            family
                .encode_family(labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    latency.sum_micros as f64 / 1e6,
                    latency.count(),
                    &buckets,
                    None,
                )?;
        }

        counter(
            &mut encoder,
            "logging_dropped",
            "Exchanges not logged because too many logging calls were in flight.",
            &mut std::iter::once((Vec::new(), snapshot.logging_dropped)),
        )?;
        counter(
            &mut encoder,
            "discovery_refreshes",
            "$SRV.INFO refreshes made to learn which phases plugins implement.",
            &mut std::iter::once((Vec::new(), snapshot.discovery_refreshes)),
        )?;
        Ok(())
    }
}
