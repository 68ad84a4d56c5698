//! Counters per plugin and phase, and their snapshot (what a gateway
//! exports as metrics).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use natsplug_protocol::Phase;

use crate::call::CallError;

/// The position of `phase` in per-phase arrays.
pub(crate) fn phase_index(phase: Phase) -> usize {
    match phase {
        Phase::RequestFilter => 0,
        Phase::ResponseFilter => 1,
        Phase::ResponseBodyFilter => 2,
        Phase::Logging => 3,
    }
}

/// The live counters of one plugin in one phase.
#[derive(Debug, Default)]
pub(crate) struct PhaseCounters {
    calls: AtomicU64,
    retries: AtomicU64,
    timeouts: AtomicU64,
    no_responders: AtomicU64,
    error_replies: Mutex<BTreeMap<u16, u64>>,
    plugin_errors: AtomicU64,
    undecodable: AtomicU64,
    transport_errors: AtomicU64,
    ended: AtomicU64,
    host_failed_open: AtomicU64,
    failed_open: AtomicU64,
    failed_closed: AtomicU64,
    skipped: AtomicU64,
    latency: LatencyCounters,
}

/// Upper bounds of the latency buckets, in microseconds: from 100 µs (a
/// phase call on one machine) to 1 s (far past any sensible budget).
pub const LATENCY_BUCKETS_MICROS: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// A histogram of phase call durations, one counter per bucket.
#[derive(Debug, Default)]
struct LatencyCounters {
    /// Calls per bucket of [`LATENCY_BUCKETS_MICROS`], the last for longer ones.
    buckets: [AtomicU64; LATENCY_BUCKETS_MICROS.len() + 1],
    sum_micros: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl PhaseCounters {
    pub(crate) fn call(&self) {
        bump(&self.calls);
    }
    pub(crate) fn retry(&self) {
        bump(&self.retries);
    }
    pub(crate) fn skipped(&self) {
        bump(&self.skipped);
    }
    pub(crate) fn ended(&self) {
        bump(&self.ended);
    }
    pub(crate) fn host_failed_open(&self) {
        bump(&self.host_failed_open);
    }
    pub(crate) fn failed_open(&self) {
        bump(&self.failed_open);
    }
    pub(crate) fn failed_closed(&self) {
        bump(&self.failed_closed);
    }

    /// Count the duration of one phase call, every attempt included.
    pub(crate) fn took(&self, elapsed: std::time::Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(LATENCY_BUCKETS_MICROS.len());
        bump(&self.latency.buckets[bucket]);
        self.latency.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Count one attempt's error under its kind.
    pub(crate) fn attempt_failed(&self, error: &CallError) {
        match error {
            CallError::NoResponders { .. } => bump(&self.no_responders),
            CallError::Timeout { .. } => bump(&self.timeouts),
            CallError::Host { code, .. } => {
                let mut replies = self
                    .error_replies
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                *replies.entry(*code).or_default() += 1;
            }
            CallError::Plugin { .. } => bump(&self.plugin_errors),
            CallError::Undecodable { .. } => bump(&self.undecodable),
            CallError::TooLarge { .. } | CallError::Transport { .. } => {
                bump(&self.transport_errors)
            }
        }
    }

    fn snapshot(&self) -> PhaseStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        PhaseStats {
            calls: get(&self.calls),
            retries: get(&self.retries),
            timeouts: get(&self.timeouts),
            no_responders: get(&self.no_responders),
            error_replies: self
                .error_replies
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
            plugin_errors: get(&self.plugin_errors),
            undecodable: get(&self.undecodable),
            transport_errors: get(&self.transport_errors),
            ended: get(&self.ended),
            host_failed_open: get(&self.host_failed_open),
            failed_open: get(&self.failed_open),
            failed_closed: get(&self.failed_closed),
            skipped: get(&self.skipped),
            latency: LatencySnapshot {
                buckets: std::array::from_fn(|index| get(&self.latency.buckets[index])),
                sum_micros: get(&self.latency.sum_micros),
            },
        }
    }
}

/// The counters of one plugin, one set per phase.
#[derive(Debug, Default)]
pub(crate) struct PluginCounters {
    phases: [PhaseCounters; 4],
}

impl PluginCounters {
    pub(crate) fn phase(&self, phase: Phase) -> &PhaseCounters {
        &self.phases[phase_index(phase)]
    }

    pub(crate) fn snapshot(&self, plugin: &str) -> PluginStats {
        PluginStats {
            plugin: plugin.to_string(),
            phases: std::array::from_fn(|index| self.phases[index].snapshot()),
        }
    }
}

/// One plugin's counters in one phase, at the time of the snapshot.
///
/// Attempts are counted one by one: a call that timed out twice and then
/// succeeded has `calls: 1, retries: 2, timeouts: 2`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhaseStats {
    /// Phase calls that sent at least one request.
    pub calls: u64,
    /// Attempts after the first.
    pub retries: u64,
    /// Attempts that got no reply in time.
    pub timeouts: u64,
    /// Attempts that met no responders.
    pub no_responders: u64,
    /// Host error replies, by `Nats-Service-Error-Code`.
    pub error_replies: BTreeMap<u16, u64>,
    /// `error` replies from the plugin itself (no error headers).
    pub plugin_errors: u64,
    /// Replies that could not be read.
    pub undecodable: u64,
    /// Requests that could not be sent or were too large.
    pub transport_errors: u64,
    /// `end` replies: the plugin answered the client.
    pub ended: u64,
    /// `next` replies noting a failure the host ignored (its failure mode
    /// for the plugin is open).
    pub host_failed_open: u64,
    /// Failed calls the chain went on from (failure mode open).
    pub failed_open: u64,
    /// Failed calls that stopped the exchange (failure mode closed).
    pub failed_closed: u64,
    /// Phase calls not made (or given up without error) because the
    /// plugin does not implement the phase.
    pub skipped: u64,
    /// How long the phase calls took, every attempt included.
    pub latency: LatencySnapshot,
}

/// Phase call durations: calls per bucket, and their sum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// Calls that took at most [`LATENCY_BUCKETS_MICROS`]`[i]` (and more
    /// than the bound before); the last entry counts the longer ones.
    pub buckets: [u64; LATENCY_BUCKETS_MICROS.len() + 1],
    /// The calls' durations added up, in microseconds.
    pub sum_micros: u64,
}

impl LatencySnapshot {
    /// Calls counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// One plugin's counters, per phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginStats {
    /// The plugin's name.
    pub plugin: String,
    /// The counters of each phase, in [`Phase::ALL`] order.
    pub phases: [PhaseStats; 4],
}

impl PluginStats {
    /// The counters of `phase`.
    pub fn phase(&self, phase: Phase) -> &PhaseStats {
        &self.phases[phase_index(phase)]
    }
}

/// Every counter of a chain at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// The plugins, in chain order.
    pub plugins: Vec<PluginStats>,
    /// Exchanges whose `logging` calls were not sent because
    /// `max_logging_in_flight` were already in flight.
    pub logging_dropped: u64,
    /// `$SRV.INFO` refreshes made.
    pub discovery_refreshes: u64,
}

impl StatsSnapshot {
    /// The counters of `plugin` in `phase`, if the plugin is in the chain.
    pub fn get(&self, plugin: &str, phase: Phase) -> Option<&PhaseStats> {
        self.plugins
            .iter()
            .find(|p| p.plugin == plugin)
            .map(|p| p.phase(phase))
    }
}
