//! The first step of the request path: a served phase of a plugin,
//! subscribed in the queue group on every lane ([`crate::lane`]), which
//! reads its messages. Stopped, it drains: every lane unsubscribes, then
//! still hands on every message that had already arrived.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use natsplug_protocol::Phase;
use tokio::sync::{Semaphore, oneshot};

use crate::lane::Lanes;
use crate::plugin::LoadedPlugin;
use crate::stats::EndpointStats;

/// What one phase subscription serves: a phase of a plugin, whose current
/// version and in-flight slots are shared by all its phases.
pub struct Served {
    pub phase: Phase,
    /// The version new requests run on; swapped on reload.
    pub plugin: Arc<ArcSwap<LoadedPlugin>>,
    /// The plugin's in-flight slots.
    pub permits: Arc<Semaphore>,
    /// Where the phase's requests are counted.
    pub stats: Arc<EndpointStats>,
}

/// A running phase subscription.
pub struct PhaseSubscription {
    pub subject: String,
    pub stats: Arc<EndpointStats>,
    lanes: Arc<Lanes>,
    /// The lanes' answers to the drain, once begun.
    draining: Mutex<Option<Vec<oneshot::Receiver<()>>>>,
}

impl PhaseSubscription {
    /// Subscribe every lane to `subject` in `queue_group` and start serving
    /// `phase` of `plugin`.
    pub async fn start(
        lanes: &Arc<Lanes>,
        subject: String,
        queue_group: String,
        phase: Phase,
        plugin: Arc<ArcSwap<LoadedPlugin>>,
        permits: Arc<Semaphore>,
    ) -> anyhow::Result<PhaseSubscription> {
        let stats = Arc::new(EndpointStats::default());
        let served = Arc::new(Served {
            phase,
            plugin,
            permits,
            stats: stats.clone(),
        });
        lanes.subscribe(&subject, &queue_group, served).await?;
        Ok(PhaseSubscription {
            subject,
            stats,
            lanes: lanes.clone(),
            draining: Mutex::new(None),
        })
    }

    /// Tell the lanes to stop taking requests and drain, without waiting.
    pub fn begin_stop(&self) {
        let mut draining = self.draining.lock().unwrap_or_else(|e| e.into_inner());
        if draining.is_none() {
            *draining = Some(self.lanes.drain(&self.subject));
        }
    }

    fn answers(&self) -> Vec<oneshot::Receiver<()>> {
        self.begin_stop();
        let mut draining = self.draining.lock().unwrap_or_else(|e| e.into_inner());
        draining.take().unwrap_or_default()
    }

    /// Stop and wait until every message received has been handed on.
    pub async fn stop(self) {
        for drained in self.answers() {
            let _ = drained.await;
        }
    }

    /// Wait until every lane has handed on what it received, up to
    /// `deadline`; `false` when that did not happen in time.
    pub async fn finish_by(self, deadline: tokio::time::Instant) -> bool {
        let answers = self.answers();
        tokio::time::timeout_at(deadline, async {
            for drained in answers {
                let _ = drained.await;
            }
        })
        .await
        .is_ok()
    }
}
