//! The executor: the worker threads that run the calls a lane does not.
//!
//! A lane runs the calls of plugins whose last call was short itself
//! ([`crate::lane`]); the rest (plugins that were slow, or at their
//! concurrency cap with calls waiting) come here. A fixed set of OS threads
//! takes them from the [`scheduler`], so a busy or stuck plugin cannot
//! delay NATS I/O, and a plugin flooded with slow requests delays its
//! neighbours by one call at most. Each worker keeps one warm instance per
//! plugin (`warm`) and publishes the reply itself (`worker`). The scheduler
//! also counts the calls lanes run of plugins with a cap of their own, so
//! such a cap holds for lanes and workers together.

pub mod scheduler;
pub mod warm;
pub mod worker;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use natsplug_protocol::Phase;

use crate::admission::Permits;
use crate::dispatch::CallSettings;
use crate::logs::LogSink;
use crate::plugin::LoadedPlugin;
use crate::stats::{EndpointStats, HostStats};
use scheduler::{Scheduled, Scheduler};

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
    /// The admission permits, released when the call is done, before its
    /// reply is sent (so the caller's next request finds them free).
    pub permits: Permits,
}

impl Scheduled for Job {
    fn plugin_name(&self) -> &str {
        &self.plugin.name
    }
    fn max_concurrency(&self) -> usize {
        self.plugin.limits.max_concurrency
    }
}

impl Scheduled for LoadedPlugin {
    fn plugin_name(&self) -> &str {
        &self.name
    }
    fn max_concurrency(&self) -> usize {
        self.limits.max_concurrency
    }
}

/// How a call run on a lane counts against its plugin's cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunHere {
    /// Counted as running: the plugin has a cap of its own.
    Counted,
    /// Not counted: the plugin has no cap of its own.
    Uncounted,
}

/// What a worker needs besides the job.
#[derive(Clone)]
pub struct WorkerContext {
    pub client: async_nats::Client,
    pub runtime: tokio::runtime::Handle,
    pub settings: CallSettings,
    pub sink: Arc<dyn LogSink>,
    pub stats: Arc<HostStats>,
    /// `runtime.inline_call_max_us`: the longest last call of a plugin for
    /// its next request to run on the lane that received it; `None`: never.
    pub inline_call_max: Option<Duration>,
}

/// The pool of worker threads.
pub struct Executor {
    scheduler: Arc<Scheduler<Job>>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    context: WorkerContext,
}

impl Executor {
    /// Start `count` worker threads.
    pub fn start(count: usize, context: WorkerContext) -> anyhow::Result<Executor> {
        let scheduler = Arc::new(Scheduler::new(count, SWEEP_INTERVAL));
        let workers = (0..count)
            .map(|index| {
                let scheduler = scheduler.clone();
                let context = context.clone();
                std::thread::Builder::new()
                    .name(format!("natsplug-worker-{index}"))
                    .spawn(move || worker::worker_loop(&scheduler, &context))
                    .context("starting a worker thread")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Executor {
            scheduler,
            workers: Mutex::new(workers),
            context,
        })
    }

    /// What the workers run with; lanes run their calls with it too.
    pub fn context(&self) -> &WorkerContext {
        &self.context
    }

    /// Queue `job` for the workers, behind the other jobs of its plugin.
    pub fn submit(&self, job: Job) {
        self.scheduler.submit(job);
    }

    /// Whether a call of `job`'s plugin may run on the calling lane: its
    /// plugin's last call was short (`inline_call_max`), and, when the
    /// plugin has a concurrency cap of its own, none of its jobs waits here
    /// and it has room under the cap (then counted as running until
    /// [`Executor::finished_here`]).
    pub fn may_run_here(&self, job: &Job) -> Option<RunHere> {
        let max_call = self.context.inline_call_max?;
        if job.endpoint.last_call_nanos.load(Ordering::Relaxed) > max_call.as_nanos() as u64 {
            return None;
        }
        if job.plugin.limits.max_concurrency == 0 {
            return Some(RunHere::Uncounted);
        }
        self.scheduler
            .start_here(&*job.plugin)
            .then_some(RunHere::Counted)
    }

    /// A call started after [`Executor::may_run_here`] is done.
    pub fn finished_here(&self, plugin: &LoadedPlugin, run: RunHere) {
        if run == RunHere::Counted {
            self.scheduler.finished(plugin);
        }
    }

    /// Finish every job queued so far, then stop the workers. Blocks.
    pub fn shutdown(&self) {
        self.scheduler.stop();
        let workers = std::mem::take(&mut *lock(&self.workers));
        for worker in workers {
            let _ = worker.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
