//! The executor: the worker threads that run plugin code.
//!
//! Guest code never runs on the async runtime: a fixed set of OS threads
//! takes jobs from the [`scheduler`], so a busy or stuck plugin cannot
//! delay NATS I/O, and a plugin flooded with slow requests delays its
//! neighbours by one call at most. Each worker keeps one warm instance per
//! plugin (`warm`) and publishes the reply itself (`worker`).
//!
//! A request that arrives while the host has nothing else in flight, for a
//! plugin whose last call was short (`runtime.inline_call_max_us`), runs on
//! the thread that received it: waking a sleeping worker costs more than
//! such a call. The runtime's other tasks (NATS I/O among them) move to
//! another thread for the time of the call (`block_in_place`), so plugin
//! code still never holds them up.

pub mod scheduler;
mod warm;
mod worker;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use natsplug_protocol::Phase;
use tokio_util::task::TaskTracker;

use crate::admission::Permits;
use crate::dispatch::CallSettings;
use crate::logs::LogSink;
use crate::plugin::LoadedPlugin;
use crate::stats::{EndpointStats, HostStats};
use scheduler::{Scheduled, Scheduler};
use warm::WarmInstances;

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

/// What a worker needs besides the job.
#[derive(Clone)]
pub struct WorkerContext {
    pub client: async_nats::Client,
    pub runtime: tokio::runtime::Handle,
    pub settings: CallSettings,
    pub sink: Arc<dyn LogSink>,
    pub stats: Arc<HostStats>,
    /// `runtime.max_in_flight`: the host's slots.
    pub max_in_flight: usize,
    /// `runtime.inline_call_max_us`: the longest last call of a plugin for
    /// its next request to run on the receiving thread; `None`: never (also
    /// on a single-threaded runtime, which cannot hand its tasks over).
    pub inline_call_max: Option<Duration>,
}

/// The pool of worker threads.
pub struct Executor {
    scheduler: Arc<Scheduler<Job>>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Warm instances of the calls run on the receiving thread.
    here_warm: Arc<Mutex<WarmInstances>>,
    /// The tasks of those calls, until their replies are sent.
    here_tasks: TaskTracker,
    context: WorkerContext,
}

impl Executor {
    /// Start `count` worker threads.
    pub fn start(count: usize, context: WorkerContext) -> anyhow::Result<Executor> {
        let scheduler = Arc::new(Scheduler::new(count, SWEEP_INTERVAL));
        let here_warm = Arc::new(Mutex::new(WarmInstances::default()));
        let workers = (0..count)
            .map(|index| {
                let scheduler = scheduler.clone();
                let context = context.clone();
                let here_warm = here_warm.clone();
                std::thread::Builder::new()
                    .name(format!("natsplug-worker-{index}"))
                    .spawn(move || worker::worker_loop(&scheduler, &context, &here_warm))
                    .context("starting a worker thread")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Executor {
            scheduler,
            workers: Mutex::new(workers),
            here_warm,
            here_tasks: TaskTracker::new(),
            context,
        })
    }

    /// Run `job`: on the receiving thread when the host has nothing else
    /// to do (see `Executor::may_run_here`), else queued for the workers.
    pub fn run(self: &Arc<Self>, job: Job) {
        if !self.may_run_here(&job) {
            self.scheduler.submit(job);
            return;
        }
        // A task of its own, so the subscription it came from reads on
        // meanwhile (and what arrives then goes to the workers).
        let executor = self.clone();
        self.here_tasks.spawn(async move {
            let plugin = job.plugin.clone();
            let done = tokio::task::block_in_place(|| {
                let mut warm = lock(&executor.here_warm);
                worker::execute(job, &mut warm, &executor.context)
            });
            drop(done.permits);
            executor.scheduler.finished(&*plugin);
            if let Some(reply) = done.reply {
                reply.publish(&executor.context).await;
            }
            worker::emit(done.records, &executor.context);
        });
    }

    /// Wait until the calls run on receiving threads have sent their
    /// replies (the workers' are sent when [`Executor::shutdown`] returns).
    pub async fn calls_here_done(&self) {
        self.here_tasks.close();
        self.here_tasks.wait().await;
    }

    /// Whether `job` is to run on the thread that received it: when that is
    /// on (`inline_call_max`), it is the only request in flight, and its
    /// plugin's last call was short and has room under its concurrency cap
    /// (then counted as running).
    fn may_run_here(&self, job: &Job) -> bool {
        let Some(max_call) = self.context.inline_call_max else {
            return false;
        };
        let short =
            job.endpoint.last_call_nanos.load(Ordering::Relaxed) <= max_call.as_nanos() as u64;
        short
            && job.permits.alone(self.context.max_in_flight)
            && self.scheduler.start_here(&*job.plugin)
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
