//! The served plugins: each with its current version (swapped atomically
//! on reload, so calls in flight finish on the version they started on),
//! its in-flight slots, and one subscription per phase it implements.
//! Installing, replacing and removing a plugin while serving.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use arc_swap::ArcSwap;
use natsplug_protocol::Phase;
use tokio::sync::Semaphore;

use super::Host;
use crate::logs::LogLevel;
use crate::plugin::LoadedPlugin;
use crate::sources::Origin;
use crate::stats::EndpointSnapshot;
use crate::subscription::PhaseSubscription;

/// A plugin being served and its subscriptions.
pub(super) struct ServedPlugin {
    /// The version new requests run on; swapped atomically on reload.
    pub(super) current: Arc<ArcSwap<LoadedPlugin>>,
    /// Caps the plugin's calls in flight.
    permits: Arc<Semaphore>,
    pub(super) subscriptions: BTreeMap<Phase, PhaseSubscription>,
    /// Times a new version replaced the served one.
    reloads: u64,
    /// Where the served version came from.
    pub(super) origin: Origin,
}

/// What a host serves for one plugin, for status output.
#[derive(Debug, Clone)]
pub struct PluginStatus {
    pub name: String,
    pub version: Option<String>,
    /// The contract version it was built against, e.g. `0.2.0`.
    pub contract: &'static str,
    pub content_hash: String,
    /// Times a new version replaced the served one.
    pub reloads: u64,
    /// Where the served version came from.
    pub origin: Origin,
    pub endpoints: Vec<EndpointStatus>,
}

/// One served phase subject and its counters.
#[derive(Debug, Clone)]
pub struct EndpointStatus {
    pub phase: Phase,
    pub subject: String,
    pub stats: EndpointSnapshot,
    /// The endpoint's latency histogram (shared, live).
    pub latency: prometheus_client::metrics::histogram::Histogram,
}

impl Host {
    /// Serve `plugin`: subscribe to its phases, or, when a plugin of that
    /// name is served already, swap it in. Requests in flight finish on the
    /// version they started on. Returns whether a served version was replaced.
    pub async fn install(&self, plugin: LoadedPlugin) -> anyhow::Result<bool> {
        self.install_from(plugin, Origin::Directory).await
    }

    /// [`Host::install`], recording where the plugin came from.
    pub async fn install_from(&self, plugin: LoadedPlugin, origin: Origin) -> anyhow::Result<bool> {
        if self.closed.load(Ordering::Acquire) {
            bail!("the host is shut down");
        }
        let swap_started = Instant::now();
        let plugin = Arc::new(plugin);
        let mut plugins = self.plugins.lock().await;
        let name = plugin.name.clone();
        let replaced = plugins.contains_key(&name);
        let served = match plugins.remove(&name) {
            Some(mut served) => {
                // Phases the new version dropped are drained first, while
                // the old version still serves what they had received.
                let gone: Vec<Phase> = served
                    .subscriptions
                    .keys()
                    .copied()
                    .filter(|phase| !plugin.implements(*phase))
                    .collect();
                for phase in gone {
                    if let Some(subscription) = served.subscriptions.remove(&phase) {
                        subscription.stop().await;
                    }
                }
                let previous = served.current.swap(plugin.clone());
                served.reloads += 1;
                served.origin = origin;
                if let Err(error) = self.subscribe_missing(&mut served, &plugin).await {
                    // The phases served before go on serving.
                    plugins.insert(name, served);
                    return Err(error);
                }
                let message = format!("plugin `{name}` reloaded");
                tracing::info!(
                    plugin = %name,
                    old_hash = %previous.short_hash(),
                    new_hash = %plugin.short_hash(),
                    origin = origin.as_str(),
                    version = plugin.version.as_deref().unwrap_or("-"),
                    compile_ms = plugin.compile_time.as_millis() as u64,
                    cached = plugin.from_cache,
                    swap_us = swap_started.elapsed().as_micros() as u64,
                    reloads = served.reloads,
                    "{message}"
                );
                self.host_event(&name, LogLevel::Info, message);
                self.announcer.served(&name, &plugin.phases).await;
                served
            }
            None => {
                let mut served = ServedPlugin {
                    current: Arc::new(ArcSwap::new(plugin.clone())),
                    permits: Arc::new(Semaphore::new(plugin.max_in_flight)),
                    subscriptions: BTreeMap::new(),
                    reloads: 0,
                    origin,
                };
                self.subscribe_missing(&mut served, &plugin).await?;
                let subjects: Vec<&str> = served
                    .subscriptions
                    .values()
                    .map(|s| s.subject.as_str())
                    .collect();
                tracing::info!(
                    plugin = %name,
                    version = plugin.version.as_deref().unwrap_or("-"),
                    hash = %plugin.short_hash(),
                    origin = origin.as_str(),
                    compile_ms = plugin.compile_time.as_millis() as u64,
                    cached = plugin.from_cache,
                    subjects = %subjects.join(" "),
                    queue_group = %self.config.subjects.queue_group,
                    "plugin `{name}` loaded"
                );
                self.host_event(&name, LogLevel::Info, format!("plugin `{name}` loaded"));
                self.announcer.served(&name, &plugin.phases).await;
                served
            }
        };
        plugins.insert(name, served);
        Ok(replaced)
    }

    /// Subscribe to the phases of `plugin` that `served` lacks, and wait
    /// for the server to accept them: a subject the server refuses fails
    /// with a [`crate::nats::PermissionViolation`] naming it, and none of
    /// the new subscriptions is kept.
    async fn subscribe_missing(
        &self,
        served: &mut ServedPlugin,
        plugin: &LoadedPlugin,
    ) -> anyhow::Result<()> {
        // One view of the server's errors per lane connection, each taken
        // before subscribing.
        let clients = self.lanes.clients();
        let refusals_before = self.stats.subscription_refusals.load(Ordering::Acquire);
        let errors: Vec<_> = clients
            .iter()
            .map(|_| self.monitor.server_errors())
            .collect();
        // A refusal is reported with the plugin's load failure, not by the
        // monitor as well.
        let subjects: Vec<String> = plugin
            .phases
            .iter()
            .filter(|phase| !served.subscriptions.contains_key(phase))
            .map(|phase| self.subject(&plugin.name, *phase))
            .collect();
        self.monitor.confirming(&subjects);
        let mut added = Vec::new();
        let mut result = self.subscribe_phases(served, plugin, &mut added).await;
        if result.is_ok() && !added.is_empty() {
            let window = Duration::from_millis(self.config.nats.permission_check_ms);
            // Every lane's connection is heard out, so no refusal of these
            // subjects arrives after the confirmation is over.
            let confirmations = clients.iter().zip(errors).map(|(client, errors)| {
                self.monitor
                    .confirm_subscriptions(client, &added, errors, window)
            });
            for confirmed in futures::future::join_all(confirmations).await {
                if let Err(violation) = confirmed
                    && result.is_ok()
                {
                    result = Err(anyhow::Error::new(violation));
                }
            }
            if result.is_err() {
                // A refusal on one connection can end the others' wait
                // early: every connection made the refused subscription, so
                // wait (bounded) until each one's refusal has come in and
                // been counted, before refusals are logged again.
                let deadline = tokio::time::Instant::now() + window;
                while self.stats.subscription_refusals.load(Ordering::Acquire) - refusals_before
                    < clients.len() as u64
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
        self.monitor.confirmed(&subjects);
        if result.is_err() {
            let new: Vec<Phase> = served
                .subscriptions
                .iter()
                .filter(|(_, s)| added.contains(&s.subject))
                .map(|(phase, _)| *phase)
                .collect();
            for phase in new {
                if let Some(subscription) = served.subscriptions.remove(&phase) {
                    subscription.stop().await;
                }
            }
        }
        result
    }

    async fn subscribe_phases(
        &self,
        served: &mut ServedPlugin,
        plugin: &LoadedPlugin,
        added: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        for &phase in &plugin.phases {
            if served.subscriptions.contains_key(&phase) {
                continue;
            }
            let subject = self.subject(&plugin.name, phase);
            let subscription = PhaseSubscription::start(
                &self.lanes,
                subject.clone(),
                self.config.subjects.queue_group.clone(),
                phase,
                served.current.clone(),
                served.permits.clone(),
            )
            .await?;
            added.push(subject);
            served.subscriptions.insert(phase, subscription);
        }
        Ok(())
    }

    /// Stop serving plugin `name`: drain its subscriptions; calls in flight
    /// finish. Returns whether it was served.
    pub async fn remove(&self, name: &str) -> bool {
        let served = self.plugins.lock().await.remove(name);
        match served {
            Some(served) => {
                for subscription in served.subscriptions.into_values() {
                    subscription.stop().await;
                }
                tracing::info!(plugin = %name, "plugin `{name}` removed");
                self.host_event(name, LogLevel::Info, format!("plugin `{name}` removed"));
                self.announcer.served(name, &[]).await;
                true
            }
            None => false,
        }
    }

    /// What is served now, plugin by plugin.
    pub async fn status(&self) -> Vec<PluginStatus> {
        let plugins = self.plugins.lock().await;
        plugins
            .iter()
            .map(|(name, served)| {
                let current = served.current.load();
                PluginStatus {
                    name: name.clone(),
                    version: current.version.clone(),
                    contract: current.contract().version(),
                    content_hash: current.content_hash.clone(),
                    reloads: served.reloads,
                    origin: served.origin,
                    endpoints: served
                        .subscriptions
                        .iter()
                        .map(|(phase, s)| EndpointStatus {
                            phase: *phase,
                            subject: s.subject.clone(),
                            stats: s.stats.snapshot(),
                            latency: s.stats.latency.clone(),
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// The subjects served now.
    pub async fn subjects(&self) -> Vec<String> {
        let plugins = self.plugins.lock().await;
        plugins
            .values()
            .flat_map(|p| p.subscriptions.values().map(|s| s.subject.clone()))
            .collect()
    }

    /// The content hash of the version of `name` served now.
    pub async fn served_hash(&self, name: &str) -> Option<String> {
        let plugins = self.plugins.lock().await;
        plugins
            .get(name)
            .map(|served| served.current.load().content_hash.clone())
    }

    /// Where the served version of `name` came from.
    pub async fn served_origin(&self, name: &str) -> Option<Origin> {
        self.plugins.lock().await.get(name).map(|s| s.origin)
    }
}
