//! The worker threads that run plugin code.
//!
//! Guest code never runs on the async runtime: a fixed set of OS threads
//! takes jobs from a queue, so a busy or stuck plugin cannot delay NATS
//! I/O. Each worker keeps one warm instance per plugin (when instances are
//! reused) and publishes the reply itself.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::HeaderMap;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tokio::sync::OwnedSemaphorePermit;

use crate::dispatch::{self, CallSettings, trace_id_of};
use crate::logs::LogSink;
use crate::phase::Phase;
use crate::plugin::{LoadedPlugin, PluginInstance};
use crate::protocol::{SERVICE_ERROR_CODE_HEADER, SERVICE_ERROR_HEADER};
use crate::stats::{EndpointStats, HostStats};

/// How often an idle worker drops instances of unloaded plugins.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A request on its way to a plugin.
pub struct Job {
    /// The plugin version the request will run on.
    pub plugin: Arc<LoadedPlugin>,
    pub phase: Phase,
    pub message: async_nats::Message,
    /// Where the outcome is counted.
    pub endpoint: Arc<EndpointStats>,
    /// When the host received the message.
    pub received: Instant,
    /// Concurrency permits, released when the reply is sent.
    pub permits: Vec<OwnedSemaphorePermit>,
}

/// What the queue carries.
enum Task {
    Run(Job),
    /// Sent once per worker at shutdown, behind every queued job.
    Stop,
}

/// The pool of worker threads.
pub struct Executor {
    sender: Sender<Task>,
    workers: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// What a worker needs besides the job.
#[derive(Clone)]
pub struct WorkerContext {
    pub client: async_nats::Client,
    pub runtime: tokio::runtime::Handle,
    pub settings: CallSettings,
    pub sink: Arc<dyn LogSink>,
    pub stats: Arc<HostStats>,
}

impl Executor {
    /// Start `count` worker threads.
    pub fn start(count: usize, context: WorkerContext) -> anyhow::Result<Executor> {
        // The queue is unbounded; what bounds it are the concurrency permits
        // every job holds.
        let (sender, receiver) = crossbeam_channel::unbounded::<Task>();
        let workers = (0..count)
            .map(|index| {
                let receiver = receiver.clone();
                let context = context.clone();
                std::thread::Builder::new()
                    .name(format!("natsplug-worker-{index}"))
                    .spawn(move || worker_loop(receiver, context))
                    .context("starting a worker thread")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Executor {
            sender,
            workers: std::sync::Mutex::new(workers),
        })
    }

    /// Queue a job.
    pub fn submit(&self, job: Job) {
        // The receivers live as long as the executor: sending cannot fail.
        let _ = self.sender.send(Task::Run(job));
    }

    /// Finish every job queued so far, then stop the workers. Blocks.
    pub fn shutdown(&self) {
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for _ in &workers {
            let _ = self.sender.send(Task::Stop);
        }
        for worker in workers {
            let _ = worker.join();
        }
    }
}

/// A worker's warm instance of one plugin.
struct WarmSlot {
    plugin: Weak<LoadedPlugin>,
    instance: Option<PluginInstance>,
}

fn worker_loop(receiver: Receiver<Task>, context: WorkerContext) {
    let mut warm: HashMap<String, WarmSlot> = HashMap::new();
    loop {
        match receiver.recv_timeout(SWEEP_INTERVAL) {
            Ok(Task::Run(job)) => run_job(job, &mut warm, &context),
            Ok(Task::Stop) => break,
            Err(RecvTimeoutError::Timeout) => {
                // Instances of unloaded plugins hold pool slots: release them.
                warm.retain(|_, slot| slot.plugin.strong_count() > 0);
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
}

fn run_job(job: Job, warm: &mut HashMap<String, WarmSlot>, context: &WorkerContext) {
    let Job {
        plugin,
        phase,
        message,
        endpoint,
        received,
        permits,
    } = job;
    let trace_id = message
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .and_then(|v| trace_id_of(v.as_str()));
    let slot = warm.entry(plugin.name.clone()).or_insert_with(|| WarmSlot {
        plugin: Weak::new(),
        instance: None,
    });
    slot.plugin = Arc::downgrade(&plugin);
    let outcome = dispatch::run(
        &mut slot.instance,
        &plugin,
        phase,
        &message.payload,
        trace_id,
        &context.settings,
    );
    if let Some(reply_to) = message.reply {
        let published = match &outcome.error {
            None => context
                .runtime
                .block_on(context.client.publish(reply_to, outcome.payload.into())),
            Some(error) => {
                let mut headers = HeaderMap::new();
                headers.insert(
                    SERVICE_ERROR_HEADER,
                    single_line(&error.to_string()).as_str(),
                );
                headers.insert(SERVICE_ERROR_CODE_HEADER, error.code().to_string().as_str());
                context
                    .runtime
                    .block_on(context.client.publish_with_headers(
                        reply_to,
                        headers,
                        outcome.payload.into(),
                    ))
            }
        };
        if let Err(error) = published {
            context
                .stats
                .reply_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(plugin = %plugin.name, %phase, %error, "could not publish a reply");
        }
    }
    let error_text = outcome.error.as_ref().map(|e| e.to_string());
    if let Some(error) = &outcome.error {
        tracing::debug!(plugin = %plugin.name, %phase, code = error.code(), %error, "error reply");
    }
    endpoint.record(received.elapsed(), error_text.as_deref());
    drop(permits);
    for record in outcome.records {
        context.sink.emit(record);
    }
    if outcome.dropped_records > 0 {
        context.stats.records_dropped.fetch_add(
            outcome.dropped_records,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

/// Header values cannot hold line breaks.
pub(crate) fn single_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}
