//! Lanes: the threads that read NATS and run short calls.
//!
//! Each lane is an OS thread with a single-threaded async runtime and, on a
//! host that can open more connections like its own, a NATS connection of
//! its own, on which it holds a queue subscription for every served phase
//! subject. The server spreads each subject's requests over all lanes of
//! all hosts in the queue group. A lane reads what has arrived into its own
//! fair queue (`queue.rs`), runs the calls of plugins whose last call was
//! short right there and writes their replies on its own connection: under
//! load, a request crosses no thread. Calls of plugins that were slow, or
//! that must wait for a slot, go to the executor's workers, so a plugin
//! that turns slow holds up at most the one call it is in.

mod queue;
mod run;
mod subscriptions;

use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use async_nats::Client;
use tokio::sync::{mpsc, oneshot};

use crate::admission::Admission;
use crate::config::NatsConfig;
use crate::executor::Executor;
use crate::nats::ConnectionMonitor;
use crate::stats::HostStats;
use crate::subscription::Served;

/// Where the lanes' connections come from.
pub enum LaneConnections {
    /// Each lane opens one with these settings; what the server reports on
    /// them counts at the host connection's monitor.
    Own(NatsConfig, Arc<ConnectionMonitor>),
    /// The lanes share this one (a connection made elsewhere).
    Shared(Client),
}

/// What every lane shares.
pub struct LaneShared {
    pub admission: Arc<Admission>,
    pub executor: Arc<Executor>,
    /// `runtime.max_request_bytes`.
    pub max_request_bytes: usize,
    pub stats: Arc<HostStats>,
    /// Requests a lane may have waiting for a slot before it stops reading
    /// (`nats.subscription_capacity`): then its subscriptions fill up, and
    /// the NATS client reports a slow consumer.
    pub max_waiting: usize,
    /// The longest a stopping lane waits to flush its last replies
    /// (`nats.drain_timeout_ms`).
    pub flush_timeout: std::time::Duration,
}

enum Command {
    Subscribe {
        subject: String,
        queue_group: String,
        served: Arc<Served>,
        done: oneshot::Sender<Result<(), async_nats::SubscribeError>>,
    },
    Drain {
        subject: String,
        done: oneshot::Sender<()>,
    },
    /// Run what is queued, wait for the requests waiting for a slot, flush
    /// the connection and end.
    Stop,
}

struct LaneHandle {
    commands: mpsc::UnboundedSender<Command>,
    client: Client,
}

/// The host's lanes.
pub struct Lanes {
    lanes: Vec<LaneHandle>,
    shared_connection: bool,
    /// Each lane's thread says so here when it ends.
    ended: Mutex<Vec<oneshot::Receiver<()>>>,
}

impl Lanes {
    /// Start `count` lanes, each connected once this returns.
    pub async fn start(
        count: usize,
        connections: LaneConnections,
        shared: Arc<LaneShared>,
    ) -> anyhow::Result<Lanes> {
        let shared_connection = matches!(connections, LaneConnections::Shared(_));
        let connections = Arc::new(connections);
        let mut starting = Vec::with_capacity(count);
        let mut ended = Vec::with_capacity(count);
        for index in 0..count {
            let (commands, receiver) = mpsc::unbounded_channel();
            let (ready, connected) = oneshot::channel();
            let (end, lane_ended) = oneshot::channel();
            let connections = connections.clone();
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("natsplug-lane-{index}"))
                .spawn(move || {
                    run::lane_thread(connections, shared, receiver, ready);
                    let _ = end.send(());
                })
                .context("starting a lane thread")?;
            ended.push(lane_ended);
            starting.push((commands, connected));
        }
        // The lanes connect side by side.
        let mut lanes = Vec::with_capacity(count);
        for (index, (commands, connected)) in starting.into_iter().enumerate() {
            let client = connected
                .await
                .context("a lane thread ended while connecting")?
                .with_context(|| format!("connecting lane {index} to NATS"))?;
            lanes.push(LaneHandle { commands, client });
        }
        Ok(Lanes {
            lanes,
            shared_connection,
            ended: Mutex::new(ended),
        })
    }

    /// The connections the lanes subscribe on, each once.
    pub fn clients(&self) -> Vec<Client> {
        if self.shared_connection {
            self.lanes
                .iter()
                .take(1)
                .map(|l| l.client.clone())
                .collect()
        } else {
            self.lanes.iter().map(|l| l.client.clone()).collect()
        }
    }

    /// Subscribe every lane to `subject` in `queue_group`, serving `served`.
    /// On failure, the lanes that did subscribe are drained again.
    pub async fn subscribe(
        &self,
        subject: &str,
        queue_group: &str,
        served: Arc<Served>,
    ) -> anyhow::Result<()> {
        let mut waits = Vec::with_capacity(self.lanes.len());
        for lane in &self.lanes {
            let (done, subscribed) = oneshot::channel();
            let _ = lane.commands.send(Command::Subscribe {
                subject: subject.to_string(),
                queue_group: queue_group.to_string(),
                served: served.clone(),
                done,
            });
            waits.push(subscribed);
        }
        let mut failure = None;
        for subscribed in waits {
            let result = match subscribed.await {
                Ok(result) => result.map_err(anyhow::Error::new),
                Err(_) => Err(anyhow::anyhow!("a lane has stopped")),
            };
            if let Err(error) = result {
                failure.get_or_insert(error);
            }
        }
        match failure {
            None => Ok(()),
            Some(error) => {
                for drained in self.drain(subject) {
                    let _ = drained.await;
                }
                Err(error.context(format!("subscribing to {subject}")))
            }
        }
    }

    /// Tell every lane to drain `subject`; each answer comes once that
    /// lane has handed on every message it had received for it.
    pub fn drain(&self, subject: &str) -> Vec<oneshot::Receiver<()>> {
        self.lanes
            .iter()
            .map(|lane| {
                let (done, drained) = oneshot::channel();
                let _ = lane.commands.send(Command::Drain {
                    subject: subject.to_string(),
                    done,
                });
                drained
            })
            .collect()
    }

    /// Stop the lanes (after their subscriptions are drained): each runs
    /// what it has queued, flushes its connection and ends. Returns once
    /// all have ended (bound it: a lane may be in a long call).
    pub async fn stop(&self) {
        for lane in &self.lanes {
            let _ = lane.commands.send(Command::Stop);
        }
        let ended = std::mem::take(&mut *self.ended.lock().unwrap_or_else(|e| e.into_inner()));
        for lane_ended in ended {
            let _ = lane_ended.await;
        }
    }
}
