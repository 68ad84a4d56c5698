//! Learning which phases each plugin implements, so a chain does not pay a
//! round trip for a phase nobody serves.
//!
//! A host subscribes only to the phases a plugin implements and lists each
//! as an endpoint in its `$SRV.INFO` answer (subject
//! `{prefix}.{plugin}.{phase}`). The directory asks every host, merges the
//! answers, and refreshes them on a timer and when a call meets no
//! responders. Only a plugin some host lists is known: a phase missing from
//! a listed plugin is not implemented and is skipped; a plugin no host lists
//! is unknown and every phase of it is called.
//!
//! Between refreshes it listens to the hosts' announcements
//! (`{prefix}.{plugin}.served`, sent when a host loads, reloads or removes
//! a plugin): a phase a host announces is implemented from then on, so a
//! new version's new phase is called at once rather than at the next
//! refresh. A phase a host stops serving is unlearned the usual way, by
//! the refresh its first call's no responders prompts.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::StatusCode;
use futures::StreamExt;
use natsplug_protocol::{Announcement, Phase};
use serde::Deserialize;
use tokio::time::Instant;

use crate::policy::DiscoveryConfig;
use crate::stats::phase_index;

/// What the directory knows of one plugin's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Knowledge {
    /// A host serves the plugin with this phase.
    Implemented,
    /// Hosts serve the plugin, none with this phase.
    NotImplemented,
    /// No host answering discovery serves the plugin.
    Unknown,
}

/// The phases each plugin is served with, as the hosts last told.
#[derive(Debug)]
pub struct PhaseDirectory {
    client: async_nats::Client,
    prefix: String,
    config: DiscoveryConfig,
    known: RwLock<Known>,
    /// One refresh at a time; callers arriving meanwhile share its result.
    refreshing: tokio::sync::Mutex<()>,
    refreshes: AtomicU64,
    announcements: AtomicU64,
    /// The task listening to the announcements, stopped with the directory.
    listener: std::sync::OnceLock<tokio::task::AbortHandle>,
}

#[derive(Debug, Default)]
struct Known {
    plugins: HashMap<String, [bool; 4]>,
    hosts: usize,
    refreshed_at: Option<Instant>,
    /// Announced phases, kept from when they arrived until a refresh that
    /// started after them: one under way may have been answered before
    /// them, so they are merged into its answer.
    announced: Vec<(Instant, String, [bool; 4])>,
}

/// The longest an announcement is kept for a refresh under way.
const ANNOUNCEMENTS_KEPT: Duration = Duration::from_secs(60);

/// `served` with every phase of `also` added.
fn merge(served: &mut [bool; 4], also: [bool; 4]) {
    for (phase, announced) in served.iter_mut().zip(also) {
        *phase |= announced;
    }
}

#[derive(Deserialize)]
struct Info {
    #[serde(default)]
    endpoints: Vec<Endpoint>,
}

#[derive(Deserialize)]
struct Endpoint {
    subject: String,
}

impl PhaseDirectory {
    /// A directory, knowing nothing yet, for the hosts serving `prefix`.
    pub fn new(
        client: async_nats::Client,
        prefix: impl Into<String>,
        config: DiscoveryConfig,
    ) -> PhaseDirectory {
        PhaseDirectory {
            client,
            prefix: prefix.into(),
            config,
            known: RwLock::new(Known::default()),
            refreshing: tokio::sync::Mutex::new(()),
            refreshes: AtomicU64::new(0),
            announcements: AtomicU64::new(0),
            listener: std::sync::OnceLock::new(),
        }
    }

    /// How many announcements taught the directory a phase.
    pub fn announcements(&self) -> u64 {
        self.announcements.load(Ordering::Relaxed)
    }

    /// Take in an announcement on `subject`: the phases a host now serves
    /// for its plugin are implemented. Announcements of other prefixes, or
    /// that cannot be read, are ignored.
    pub fn learn_announcement(&self, subject: &str, payload: &[u8]) {
        let Some(plugin) = natsplug_protocol::announced_plugin(&self.prefix, subject) else {
            return;
        };
        let announcement = match Announcement::from_json(payload) {
            Ok(announcement) => announcement,
            Err(error) => {
                tracing::debug!(%error, subject, "ignored an unreadable announcement");
                return;
            }
        };
        let mut served = [false; 4];
        for phase in announcement.phases.iter().filter_map(|p| Phase::parse(p)) {
            served[phase_index(phase)] = true;
        }
        if served == [false; 4] {
            // One host stopped serving it; others may still.
            return;
        }
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        let entry = known.plugins.entry(plugin.to_string()).or_default();
        let before = *entry;
        merge(entry, served);
        let taught = *entry != before;
        // Kept for the refreshes under way, a minute at most whatever
        // becomes of them.
        known
            .announced
            .retain(|(at, _, _)| at.elapsed() < ANNOUNCEMENTS_KEPT);
        known
            .announced
            .push((Instant::now(), plugin.to_string(), served));
        drop(known);
        if taught {
            self.announcements.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(plugin, phases = ?announcement.phases, "a host announced new phases");
        }
    }

    /// Whether discovery is used at all.
    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// What is known of `plugin`'s `phase`.
    pub fn knowledge(&self, plugin: &str, phase: Phase) -> Knowledge {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        match known.plugins.get(plugin) {
            None => Knowledge::Unknown,
            Some(phases) if phases[phase_index(phase)] => Knowledge::Implemented,
            Some(_) => Knowledge::NotImplemented,
        }
    }

    /// The phases of `plugin`, if a host serves it.
    pub fn phases(&self, plugin: &str) -> Option<Vec<Phase>> {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        known.plugins.get(plugin).map(|served| {
            Phase::ALL
                .into_iter()
                .filter(|phase| served[phase_index(*phase)])
                .collect()
        })
    }

    /// How many refreshes were made.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    fn refreshed_at(&self) -> Option<Instant> {
        self.known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .refreshed_at
    }

    /// Ask the hosts now and replace what is known with their answers. A
    /// refresh already under way is waited for instead of starting another.
    /// Returns how many hosts answered; on a NATS failure, what was known
    /// stays.
    pub async fn refresh(&self) -> Result<usize, async_nats::Error> {
        let asked = Instant::now();
        let _turn = self.refreshing.lock().await;
        if self.refreshed_at().is_some_and(|at| at >= asked) {
            return Ok(self.known_host_count());
        }
        let started = Instant::now();
        let (hosts, plugins) = self.ask().await?;
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            hosts,
            plugins = plugins.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "refreshed the phases served"
        );
        let mut plugins = plugins;
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        known.announced.retain(|(at, _, _)| *at >= started);
        for (_, plugin, served) in &known.announced {
            merge(plugins.entry(plugin.clone()).or_default(), *served);
        }
        known.plugins = plugins;
        known.hosts = hosts;
        known.refreshed_at = Some(Instant::now());
        Ok(hosts)
    }

    fn known_host_count(&self) -> usize {
        self.known.read().unwrap_or_else(|p| p.into_inner()).hosts
    }

    /// A refresh prompted by a call that met no responders: made unless
    /// discovery is off or the last one is less than `min_gap_ms` old.
    /// Returns whether it was made.
    pub async fn refresh_after_no_responders(&self) -> bool {
        if !self.config.enabled {
            return false;
        }
        let gap = Duration::from_millis(self.config.min_gap_ms);
        if self.refreshed_at().is_some_and(|at| at.elapsed() < gap) {
            return false;
        }
        match self.refresh().await {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(%error, "could not refresh the phases served");
                false
            }
        }
    }

    /// Refresh every `refresh_ms`, and take in the hosts' announcements,
    /// until `directory` is dropped.
    pub(crate) async fn keep_fresh(directory: &std::sync::Arc<PhaseDirectory>) {
        if !directory.config.enabled {
            return;
        }
        let subject = natsplug_protocol::announcement_subject(&directory.prefix, "*");
        match directory.client.subscribe(subject.clone()).await {
            Ok(mut announcements) => {
                let weak = std::sync::Arc::downgrade(directory);
                let listener = tokio::spawn(async move {
                    while let Some(message) = announcements.next().await {
                        let Some(directory) = weak.upgrade() else {
                            break;
                        };
                        directory.learn_announcement(&message.subject, &message.payload);
                    }
                });
                let _ = directory.listener.set(listener.abort_handle());
            }
            Err(error) => tracing::warn!(
                %error,
                subject,
                "could not listen to the hosts' announcements; new phases are learned at each refresh"
            ),
        }
        let period = Duration::from_millis(directory.config.refresh_ms.max(1));
        let weak = std::sync::Arc::downgrade(directory);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(directory) = weak.upgrade() else {
                    break;
                };
                if let Err(error) = directory.refresh().await {
                    tracing::warn!(%error, "could not refresh the phases served");
                }
            }
        });
    }

    /// Publish one `$SRV.INFO` request and merge the answers arriving within
    /// the window: how many hosts answered and each plugin's phases.
    async fn ask(&self) -> Result<(usize, HashMap<String, [bool; 4]>), async_nats::Error> {
        let inbox = self.client.new_inbox();
        let mut answers = self.client.subscribe(inbox.clone()).await?;
        self.client
            .publish_with_reply(
                format!("$SRV.INFO.{}", self.config.service_name),
                inbox,
                bytes::Bytes::new(),
            )
            .await?;
        self.client.flush().await?;
        let window = Duration::from_millis(self.config.window_ms);
        let end = Instant::now() + window;
        let quiet = window / 4;
        let mut deadline = end;
        let mut hosts = 0;
        let mut plugins: HashMap<String, [bool; 4]> = HashMap::new();
        while let Ok(Some(answer)) = tokio::time::timeout_at(deadline, answers.next()).await {
            if answer.status == Some(StatusCode::NO_RESPONDERS) {
                break;
            }
            match serde_json::from_slice::<Info>(&answer.payload) {
                Ok(info) => {
                    hosts += 1;
                    for endpoint in info.endpoints {
                        if let Some((plugin, phase)) = self.parse_subject(&endpoint.subject) {
                            plugins.entry(plugin.to_string()).or_default()[phase_index(phase)] =
                                true;
                        }
                    }
                }
                Err(error) => tracing::debug!(%error, "ignored an unreadable $SRV.INFO answer"),
            }
            deadline = end.min(Instant::now() + quiet);
        }
        let _ = answers.unsubscribe().await;
        Ok((hosts, plugins))
    }

    /// `{prefix}.{plugin}.{phase}` → plugin and phase; other subjects (other
    /// prefixes) are not ours.
    fn parse_subject<'a>(&self, subject: &'a str) -> Option<(&'a str, Phase)> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('.')?;
        let (plugin, phase) = rest.split_once('.')?;
        if plugin.is_empty() {
            return None;
        }
        Some((plugin, Phase::parse(phase)?))
    }
}

impl Drop for PhaseDirectory {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.get() {
            listener.abort();
        }
    }
}
