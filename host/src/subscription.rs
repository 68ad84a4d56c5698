//! The first step of the request path: one queue subscription per phase
//! of a served plugin. Its task reads messages, refuses what cannot run
//! (no reply subject, too large, no free permits) and hands the rest to the
//! executor; stopped, it drains: unsubscribes, then still hands on every
//! message that had already arrived.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use async_nats::{Client, Subscriber};
use futures::StreamExt as _;
use natsplug_protocol::{self as protocol, Phase};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::decode;
use crate::executor::{Executor, Job};
use crate::plugin::LoadedPlugin;
use crate::reply::{self, Outcome};
use crate::stats::{EndpointStats, HostStats};

/// What every subscription task shares: the way from a received message
/// to the executor.
#[derive(Clone)]
pub struct Receiver {
    pub client: Client,
    pub admission: Arc<Admission>,
    pub executor: Arc<Executor>,
    /// `runtime.max_request_bytes`.
    pub max_request_bytes: usize,
    pub stats: Arc<HostStats>,
}

/// What one subscription serves: a phase of a plugin, whose current
/// version and in-flight slots are shared by all its phases.
pub struct Served {
    pub phase: Phase,
    /// The version new requests run on; swapped on reload.
    pub plugin: Arc<ArcSwap<LoadedPlugin>>,
    /// The plugin's in-flight slots.
    pub permits: Arc<Semaphore>,
}

/// A running phase subscription.
pub struct PhaseSubscription {
    pub subject: String,
    pub stats: Arc<EndpointStats>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl PhaseSubscription {
    /// Subscribe to `subject` in `queue_group` and start serving `served`.
    pub async fn start(
        receiver: &Receiver,
        subject: String,
        queue_group: String,
        served: Served,
    ) -> anyhow::Result<PhaseSubscription> {
        let subscriber = receiver
            .client
            .queue_subscribe(subject.clone(), queue_group)
            .await
            .with_context(|| format!("subscribing to {subject}"))?;
        let stats = Arc::new(EndpointStats::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(
            subscriber,
            served,
            stats.clone(),
            receiver.clone(),
            stop.clone(),
        ));
        Ok(PhaseSubscription {
            subject,
            stats,
            stop,
            task,
        })
    }

    /// Tell the task to stop taking requests and drain, without waiting.
    pub fn begin_stop(&self) {
        self.stop.cancel();
    }

    /// Stop and wait until every message received has been handed on.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Err(error) = self.task.await {
            tracing::error!(subject = %self.subject, %error, "subscription task failed");
        }
    }

    /// Wait until the task is done, up to `deadline`; on time out the task
    /// is aborted and `false` returned.
    pub async fn finish_by(mut self, deadline: tokio::time::Instant) -> bool {
        match tokio::time::timeout_at(deadline, &mut self.task).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::error!(subject = %self.subject, %error, "subscription task failed");
                true
            }
            Err(_) => {
                self.task.abort();
                false
            }
        }
    }
}

/// Read one phase subscription until stopped, then drain it.
async fn serve(
    mut subscriber: Subscriber,
    served: Served,
    stats: Arc<EndpointStats>,
    receiver: Receiver,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            message = subscriber.next() => match message {
                Some(message) => receiver.receive(message, &served, &stats).await,
                None => return,
            },
        }
    }
    if let Err(error) = subscriber.drain().await {
        tracing::warn!(phase = %served.phase, %error, "could not drain a subscription");
        return;
    }
    while let Some(message) = subscriber.next().await {
        receiver.receive(message, &served, &stats).await;
    }
}

impl Receiver {
    /// Take one message: refuse it (answered here) or hand it to the executor.
    async fn receive(
        &self,
        message: async_nats::Message,
        served: &Served,
        stats: &Arc<EndpointStats>,
    ) {
        let received = Instant::now();
        let Some(reply_to) = message.reply.clone() else {
            self.stats.no_reply_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(subject = %message.subject, "dropped a message without a reply subject");
            return;
        };
        if let Some(outcome) = decode::refuse_oversized(&message.payload, self.max_request_bytes) {
            self.refuse(reply_to, outcome, stats, received).await;
            return;
        }
        let permits = match self.admission.admit(&served.permits).await {
            Ok(permits) => permits,
            Err(refusal) => {
                self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
                let current = served.plugin.load();
                let outcome = Outcome::failure_with_mode(
                    protocol::peek_request_id(&message.payload),
                    refusal.error(&current.name),
                    current.limits.failure_mode(served.phase),
                );
                self.refuse(reply_to, outcome, stats, received).await;
                return;
            }
        };
        self.executor.run(Job {
            plugin: served.plugin.load_full(),
            phase: served.phase,
            message,
            endpoint: stats.clone(),
            received,
            permits,
        });
    }

    /// Answer a request refused before it reached a plugin.
    async fn refuse(
        &self,
        reply_to: async_nats::Subject,
        outcome: Outcome,
        stats: &EndpointStats,
        received: Instant,
    ) {
        // Count before replying, so a caller that has its reply sees it counted.
        stats.record(received.elapsed(), outcome.failure_cause());
        reply::publish(
            &self.client,
            reply_to,
            outcome.payload,
            outcome.error.as_ref(),
            &self.stats,
        )
        .await;
    }
}
