//! One lane's life: connect, then read, queue and run until stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::{Client, Message, Subject};
use futures::FutureExt as _;
use natsplug_protocol as protocol;
use tokio::sync::{Notify, mpsc, oneshot};

use super::queue::LaneQueue;
use super::subscriptions::LaneSubscriptions;
use super::{Command, LaneConnections, LaneShared};
use crate::admission::{Permits, Refusal};
use crate::decode;
use crate::executor::warm::WarmInstances;
use crate::executor::worker::Reply;
use crate::executor::{Job, worker};
use crate::logs::LogRecord;
use crate::reply::{self, Outcome};
use crate::stats::{EndpointStats, HostStats};
use crate::subscription::Served;

/// How often an idle lane drops instances of unloaded plugins.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Calls a lane runs back to back, outside its runtime, before it goes
/// back in to publish their replies and let its connection write and read
/// (it also goes back whenever its queue is empty).
const MAX_RUN_WITHOUT_IO: usize = 32;

/// The body of a lane's thread: connect (telling `ready` how it went),
/// then serve `commands` until told to stop.
pub(super) fn lane_thread(
    connections: Arc<LaneConnections>,
    shared: Arc<LaneShared>,
    commands: mpsc::UnboundedReceiver<Command>,
    ready: oneshot::Sender<anyhow::Result<Client>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = ready.send(Err(
                anyhow::Error::new(error).context("building a lane's runtime")
            ));
            return;
        }
    };
    let client = runtime.block_on(async {
        match &*connections {
            LaneConnections::Own(settings, monitor) => {
                crate::nats::connect_lane(settings, monitor.clone()).await
            }
            LaneConnections::Shared(client) => Ok(client.clone()),
        }
    });
    drop(connections);
    let client = match client {
        Ok(client) => client,
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    let _ = ready.send(Ok(client.clone()));
    let mut lane = {
        // Its timer belongs to the lane's runtime.
        let _runtime = runtime.enter();
        Lane::new(client, shared)
    };
    let mut commands = commands;
    // Plugin code runs outside the runtime: WASI's blocking calls start
    // runtimes of their own, which cannot happen inside another. The lane
    // runs what it has queued, a batch at a time, then goes back into its
    // runtime to publish the replies and read more: one entry into the
    // runtime per batch, not per call.
    let executor = lane.shared.executor.clone();
    let mut finished = Vec::new();
    while runtime.block_on(lane.fill(&mut commands, &mut finished)) {
        for _ in 0..MAX_RUN_WITHOUT_IO {
            let Some(job) = lane.queue.pop() else {
                break;
            };
            // Asked again for each call: one of the batch may turn slow.
            let Some(run) = executor.may_run_here(&job) else {
                executor.submit(job);
                continue;
            };
            let plugin = job.plugin.clone();
            let done = worker::execute(job, &mut lane.warm, executor.context());
            drop(done.permits);
            executor.finished_here(&plugin, run);
            finished.push((done.reply, done.records));
        }
    }
    let flushed = runtime.block_on(async {
        tokio::time::timeout(lane.shared.flush_timeout, lane.client.flush()).await
    });
    match flushed {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "could not flush a lane's last replies"),
        Err(_) => tracing::warn!("gave up flushing a lane's last replies: is NATS reachable?"),
    }
}

/// What woke an idle lane.
enum Woken {
    Command(Option<Command>),
    Message(Message, Arc<Served>),
    Waited,
    Sweep,
}

struct Lane {
    client: Client,
    shared: Arc<LaneShared>,
    queue: LaneQueue<Job>,
    subscriptions: LaneSubscriptions,
    warm: WarmInstances,
    /// Requests of this lane waiting for a slot.
    waiting: Arc<AtomicUsize>,
    /// Told when one of them stops waiting.
    waited: Arc<Notify>,
    sweep: tokio::time::Interval,
    /// Told to stop: ends once nothing is queued or waiting.
    stopping: bool,
}

impl Lane {
    fn new(client: Client, shared: Arc<LaneShared>) -> Lane {
        Lane {
            client,
            shared,
            queue: LaneQueue::default(),
            subscriptions: LaneSubscriptions::default(),
            warm: WarmInstances::default(),
            waiting: Arc::new(AtomicUsize::new(0)),
            waited: Arc::new(Notify::new()),
            sweep: {
                let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
                sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                sweep
            },
            stopping: false,
        }
    }

    /// Publish the replies of the calls run since the last time (emptying
    /// `finished`), then wait until there are calls to run: `false` once
    /// stopped with nothing left. Meanwhile: commands, reading, sweeping.
    async fn fill(
        &mut self,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        finished: &mut Vec<(Option<Reply>, Vec<LogRecord>)>,
    ) -> bool {
        let published = !finished.is_empty();
        if published {
            let context = self.shared.executor.context();
            for (reply, records) in finished.drain(..) {
                if let Some(reply) = reply {
                    reply.publish(&self.client, &context.stats).await;
                }
                worker::emit(records, context);
            }
        }
        loop {
            while let Ok(command) = commands.try_recv() {
                self.stopping |= self.apply(command).await;
            }
            self.take_arrived().await;
            if !self.queue.is_empty() {
                if published {
                    // The connection writes the replies, and reads, before
                    // the next batch.
                    tokio::task::yield_now().await;
                    self.take_arrived().await;
                }
                return true;
            }
            if self.stopping && self.waiting.load(Ordering::Acquire) == 0 {
                return false;
            }
            let accepting = self.accepting();
            let woken = tokio::select! {
                biased;
                command = commands.recv() => Woken::Command(command),
                (message, served) = self.subscriptions.next(), if accepting => {
                    Woken::Message(message, served)
                }
                _ = self.waited.notified() => Woken::Waited,
                _ = self.sweep.tick() => Woken::Sweep,
            };
            match woken {
                Woken::Command(Some(command)) => self.stopping |= self.apply(command).await,
                Woken::Command(None) => self.stopping = true,
                Woken::Message(message, served) => self.receive(message, served).await,
                Woken::Waited => {}
                Woken::Sweep => self.warm.sweep(&self.shared.stats),
            }
        }
    }

    /// Apply `command`; whether it is the one to stop.
    async fn apply(&mut self, command: Command) -> bool {
        match command {
            Command::Subscribe {
                subject,
                queue_group,
                served,
                done,
            } => {
                let result = self
                    .client
                    .queue_subscribe(subject.clone(), queue_group)
                    .await
                    .map(|subscriber| self.subscriptions.add(subject, subscriber, served));
                let _ = done.send(result);
                false
            }
            Command::Drain { subject, done } => {
                self.subscriptions.drain(&subject, done).await;
                false
            }
            Command::Stop => true,
        }
    }

    /// Whether to read more: not while as many requests as the NATS
    /// client buffers per subscription wait for a slot.
    fn accepting(&self) -> bool {
        self.waiting.load(Ordering::Acquire) < self.shared.max_waiting
    }

    /// Take every message that has arrived, without waiting.
    async fn take_arrived(&mut self) {
        while self.accepting() {
            let Some((message, served)) = self.subscriptions.next().now_or_never() else {
                return;
            };
            self.receive(message, served).await;
        }
    }

    /// Take one message: refuse it (answered here), queue it, or leave it
    /// waiting for a slot.
    async fn receive(&mut self, message: Message, served: Arc<Served>) {
        let received = Instant::now();
        let stats = &self.shared.stats;
        if message.reply.is_none() {
            stats.no_reply_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(subject = %message.subject, "dropped a message without a reply subject");
            return;
        }
        let refused =
            match decode::refuse_oversized(&message.payload, self.shared.max_request_bytes) {
                Some(outcome) => outcome,
                None => match self.shared.admission.admit_now(&served.permits) {
                    Some(Ok(permits)) => {
                        self.queue.push(job(&served, message, received, permits));
                        return;
                    }
                    Some(Err(refusal)) => overloaded(&served, &message, refusal, stats),
                    None => {
                        self.wait_for_a_slot(message, served, received);
                        return;
                    }
                },
            };
        // Present (checked above), and taken rather than cloned: the
        // message is done with it.
        let Some(reply_to) = message.reply else {
            return;
        };
        refuse(
            &self.client,
            stats,
            reply_to,
            refused,
            &served.stats,
            received,
        )
        .await;
    }

    /// Leave `message` waiting for a slot (the `wait` overload policy); once
    /// admitted it goes to the workers, for this lane reads on meanwhile.
    fn wait_for_a_slot(&self, message: Message, served: Arc<Served>, received: Instant) {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let client = self.client.clone();
        let shared = self.shared.clone();
        let waiting = self.waiting.clone();
        let waited = self.waited.clone();
        tokio::spawn(async move {
            match shared.admission.admit(&served.permits).await {
                Ok(permits) => shared
                    .executor
                    .submit(job(&served, message, received, permits)),
                Err(refusal) => {
                    let stats = &shared.stats;
                    let outcome = overloaded(&served, &message, refusal, stats);
                    if let Some(reply_to) = message.reply {
                        refuse(&client, stats, reply_to, outcome, &served.stats, received).await;
                    }
                }
            }
            waiting.fetch_sub(1, Ordering::AcqRel);
            waited.notify_one();
        });
    }
}

fn job(served: &Served, message: Message, received: Instant, permits: Permits) -> Job {
    Job {
        plugin: served.plugin.load_full(),
        phase: served.phase,
        message,
        endpoint: served.stats.clone(),
        received,
        permits,
    }
}

/// The answer to a request `refusal` keeps from running.
fn overloaded(served: &Served, message: &Message, refusal: Refusal, stats: &HostStats) -> Outcome {
    stats.overloaded.fetch_add(1, Ordering::Relaxed);
    let current = served.plugin.load();
    Outcome::failure_with_mode(
        protocol::peek_request_id(&message.payload),
        refusal.error(&current.name),
        current.limits.failure_mode(served.phase),
    )
}

/// Answer a request refused before it reached a plugin.
async fn refuse(
    client: &Client,
    stats: &HostStats,
    reply_to: Subject,
    outcome: Outcome,
    endpoint: &EndpointStats,
    received: Instant,
) {
    // Count before replying, so a caller that has its reply sees it counted.
    endpoint.record(received.elapsed(), outcome.failure_cause());
    reply::publish(
        client,
        reply_to,
        outcome.payload,
        outcome.error.as_ref(),
        stats,
    )
    .await;
}
