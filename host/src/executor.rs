//! The worker threads that run plugin code.
//!
//! Guest code never runs on the async runtime: a fixed set of OS threads
//! takes jobs from a scheduler, so a busy or stuck plugin cannot delay NATS
//! I/O. The scheduler keeps one queue per plugin and hands out work
//! round-robin across plugins, never running more calls of one plugin at
//! once than its concurrency cap: a plugin flooded with slow requests
//! delays its neighbours by one call at most, not by its whole backlog.
//! Each worker keeps one warm instance per plugin (when instances are
//! reused) and publishes the reply itself.
//!
//! A request that arrives while the host has nothing else in flight, for a
//! plugin whose last call was short (`runtime.inline_call_max_us`), runs on
//! the thread that received it:
//! waking a sleeping worker costs more than such a call. The runtime's
//! other tasks (NATS I/O among them) move to another thread for the time
//! of the call (`block_in_place`), so plugin code still never holds them up.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::HeaderMap;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::TaskTracker;

use crate::dispatch::{self, CallSettings, Outcome, trace_id_of};
use crate::logs::{LogLevel, LogRecord, LogSink};
use crate::plugin::{LoadedPlugin, PluginInstance};
use crate::stats::{EndpointStats, HostStats};
use natsplug_protocol::Phase;
use natsplug_protocol::{SERVICE_ERROR_CODE_HEADER, SERVICE_ERROR_HEADER};

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
    /// Concurrency permits, released when the call is done, before its
    /// reply is sent (so the caller's next request finds them free).
    pub permits: [OwnedSemaphorePermit; 2],
}

impl Job {
    /// Whether this is the only request in flight on the host.
    fn alone(&self, max_in_flight: usize) -> bool {
        // The plugin's permit, then the host's.
        self.permits[1].semaphore().available_permits() + 1 >= max_in_flight
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

/// One plugin's waiting jobs.
struct PluginQueue {
    jobs: VecDeque<Job>,
    running: usize,
    /// Whether the plugin is in the ready list.
    ready: bool,
}

#[derive(Default)]
struct Queues {
    plugins: HashMap<String, PluginQueue>,
    /// Plugins with a job waiting and room to run it, in turn order.
    ready: VecDeque<String>,
    stopping: bool,
    /// Workers waiting for a job: only then is there anyone to wake.
    idle: usize,
}

struct Scheduler {
    queues: Mutex<Queues>,
    work: Condvar,
    workers: usize,
}

impl Scheduler {
    fn lock(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wake a waiting worker, if any: a notification is a system call even
    /// when nobody waits, and busy workers look at the queues anyway before
    /// they wait.
    fn wake_one(&self, queues: &Queues) {
        if queues.idle > 0 {
            self.work.notify_one();
        }
    }

    fn cap(&self, plugin: &LoadedPlugin) -> usize {
        match plugin.limits.max_concurrency {
            0 => self.workers,
            cap => cap,
        }
    }

    fn submit(&self, job: Job) {
        let cap = self.cap(&job.plugin);
        let mut queues = self.lock();
        let Queues { plugins, ready, .. } = &mut *queues;
        let queue = plugins
            .entry(job.plugin.name.clone())
            .or_insert_with(|| PluginQueue {
                jobs: VecDeque::new(),
                running: 0,
                ready: false,
            });
        queue.jobs.push_back(job);
        if !queue.ready && queue.running < cap {
            queue.ready = true;
            ready.push_back(queue.jobs[0].plugin.name.clone());
            self.wake_one(&queues);
        }
    }

    /// The next job, or `None` when stopping and nothing is left.
    /// `Err(())` when the wait timed out (time to sweep).
    fn next(&self) -> Result<Option<Job>, ()> {
        let mut queues = self.lock();
        loop {
            if let Some(name) = queues.ready.pop_front() {
                let Queues { plugins, ready, .. } = &mut *queues;
                let Some(queue) = plugins.get_mut(&name) else {
                    continue;
                };
                queue.ready = false;
                let Some(job) = queue.jobs.pop_front() else {
                    continue;
                };
                queue.running += 1;
                // Back of the line: other plugins get their turn first.
                if !queue.jobs.is_empty() && queue.running < self.cap(&job.plugin) {
                    queue.ready = true;
                    ready.push_back(name);
                    self.wake_one(&queues);
                }
                return Ok(Some(job));
            }
            if queues.stopping {
                return Ok(None);
            }
            queues.idle += 1;
            let (guard, timeout) = self
                .work
                .wait_timeout(queues, SWEEP_INTERVAL)
                .unwrap_or_else(|e| e.into_inner());
            queues = guard;
            queues.idle -= 1;
            if timeout.timed_out() && queues.ready.is_empty() {
                return Err(());
            }
        }
    }

    /// Count a call of `plugin` about to run outside the workers, if none
    /// of its jobs waits and it has room under its cap.
    fn start_here(&self, plugin: &LoadedPlugin) -> bool {
        let cap = self.cap(plugin);
        let mut queues = self.lock();
        let queue = queues
            .plugins
            .entry(plugin.name.clone())
            .or_insert_with(|| PluginQueue {
                jobs: VecDeque::new(),
                running: 0,
                ready: false,
            });
        if !queue.jobs.is_empty() || queue.running >= cap {
            return false;
        }
        queue.running += 1;
        true
    }

    fn finished(&self, plugin: &LoadedPlugin) {
        let cap = self.cap(plugin);
        let mut queues = self.lock();
        let Queues { plugins, ready, .. } = &mut *queues;
        if let Some(queue) = plugins.get_mut(&plugin.name) {
            queue.running -= 1;
            if queue.jobs.is_empty() {
                if queue.running == 0 {
                    plugins.remove(&plugin.name);
                }
            } else if !queue.ready && queue.running < cap {
                queue.ready = true;
                ready.push_back(plugin.name.clone());
                self.wake_one(&queues);
            }
        }
    }
}

/// The pool of worker threads.
pub struct Executor {
    scheduler: Arc<Scheduler>,
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
        let scheduler = Arc::new(Scheduler {
            queues: Mutex::new(Queues::default()),
            work: Condvar::new(),
            workers: count,
        });
        let here_warm = Arc::new(Mutex::new(WarmInstances::default()));
        // The queues are unbounded; what bounds them are the concurrency
        // permits every job holds.
        let workers = (0..count)
            .map(|index| {
                let scheduler = scheduler.clone();
                let context = context.clone();
                let here_warm = here_warm.clone();
                std::thread::Builder::new()
                    .name(format!("natsplug-worker-{index}"))
                    .spawn(move || worker_loop(&scheduler, &context, &here_warm))
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
    /// to do (see [`Executor::may_run_here`]), else queued for the workers.
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
                execute(job, &mut warm, &executor.context)
            });
            drop(done.permits);
            executor.scheduler.finished(&plugin);
            if let Some(reply) = done.reply {
                reply.publish(&executor.context).await;
            }
            emit(done.records, &executor.context);
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
        short && job.alone(self.context.max_in_flight) && self.scheduler.start_here(&job.plugin)
    }

    /// Finish every job queued so far, then stop the workers. Blocks.
    pub fn shutdown(&self) {
        self.scheduler.lock().stopping = true;
        self.scheduler.work.notify_all();
        let workers = std::mem::take(&mut *lock(&self.workers));
        for worker in workers {
            let _ = worker.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A warm instance of one plugin.
struct WarmSlot {
    plugin: Weak<LoadedPlugin>,
    instance: Option<PluginInstance>,
}

/// Warm instances by plugin name, one each: a worker's own, or those of
/// the calls run on the receiving thread.
#[derive(Default)]
struct WarmInstances(HashMap<String, WarmSlot>);

impl WarmInstances {
    /// The slot for `plugin`'s current version.
    fn slot(&mut self, plugin: &Arc<LoadedPlugin>) -> &mut WarmSlot {
        // Look up before inserting: the common case needs no copy of the name.
        if !self.0.contains_key(&plugin.name) {
            let empty = WarmSlot {
                plugin: Weak::new(),
                instance: None,
            };
            self.0.insert(plugin.name.clone(), empty);
        }
        let Some(slot) = self.0.get_mut(&plugin.name) else {
            unreachable!("the slot was just inserted")
        };
        slot.plugin = Arc::downgrade(plugin);
        slot
    }

    /// Drop the instances of unloaded plugins: they hold pool slots.
    fn sweep(&mut self, stats: &HostStats) {
        self.0.retain(|_, slot| {
            let keep = slot.plugin.strong_count() > 0;
            if !keep && slot.instance.is_some() {
                stats.warm_instances.fetch_sub(1, Ordering::Relaxed);
            }
            keep
        });
    }
}

fn worker_loop(scheduler: &Scheduler, context: &WorkerContext, here_warm: &Mutex<WarmInstances>) {
    let mut warm = WarmInstances::default();
    loop {
        match scheduler.next() {
            Ok(Some(job)) => {
                let plugin = job.plugin.clone();
                let done = execute(job, &mut warm, context);
                drop(done.permits);
                scheduler.finished(&plugin);
                if let Some(reply) = done.reply {
                    context.runtime.block_on(reply.publish(context));
                }
                emit(done.records, context);
            }
            Ok(None) => break,
            Err(()) => {
                warm.sweep(&context.stats);
                if let Ok(mut here_warm) = here_warm.try_lock() {
                    here_warm.sweep(&context.stats);
                }
            }
        }
    }
}

/// A reply to publish.
struct Reply {
    to: async_nats::Subject,
    payload: Vec<u8>,
    error: Option<natsplug_protocol::RequestError>,
}

impl Reply {
    async fn publish(self, context: &WorkerContext) {
        publish_outcome(
            &context.client,
            self.to,
            self.payload,
            self.error.as_ref(),
            &context.stats,
        )
        .await;
    }
}

/// A job run: its reply, the permits it held, and its log records, to
/// emit once the reply is on its way.
struct Done {
    reply: Option<Reply>,
    permits: [OwnedSemaphorePermit; 2],
    records: Vec<LogRecord>,
}

fn emit(records: Vec<LogRecord>, context: &WorkerContext) {
    for record in records {
        context.sink.emit(record);
    }
}

/// Run `job` on its warm instance in `warm`, count it and report a failure.
fn execute(job: Job, warm: &mut WarmInstances, context: &WorkerContext) -> Done {
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
        .and_then(|h| {
            h.iter()
                .find(|(name, _)| AsRef::<str>::as_ref(*name).eq_ignore_ascii_case("traceparent"))
                .and_then(|(_, values)| values.first().map(|v| v.as_str().to_string()))
        })
        .and_then(|v| trace_id_of(&v));
    let slot = warm.slot(&plugin);
    let was_warm = slot.instance.is_some();
    let started = Instant::now();
    let mut outcome = dispatch::run(
        &mut slot.instance,
        &plugin,
        phase,
        &message.payload,
        trace_id,
        &context.settings,
    );
    endpoint
        .last_call_nanos
        .store(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    let warm_change = i64::from(slot.instance.is_some()) - i64::from(was_warm);
    if warm_change != 0 {
        context
            .stats
            .warm_instances
            .fetch_add(warm_change, Ordering::Relaxed);
    }
    let records = std::mem::take(&mut outcome.records);
    // Count before replying, so a caller that has its reply sees it counted.
    endpoint.record(received.elapsed(), outcome.failure_cause());
    if outcome.dropped_records > 0 {
        context
            .stats
            .records_dropped
            .fetch_add(outcome.dropped_records, Ordering::Relaxed);
    }
    if let Some(cause) = outcome.failure_cause()
        && cause.is_plugin_failure()
    {
        let request_id = natsplug_protocol::peek_request_id(&message.payload);
        report_failure(context, &plugin, phase, &request_id, &outcome);
    }
    Done {
        reply: message.reply.map(|to| Reply {
            to,
            payload: outcome.payload,
            error: outcome.error,
        }),
        permits,
        records,
    }
}

/// Log a plugin failure and emit it as a host log record.
fn report_failure(
    context: &WorkerContext,
    plugin: &LoadedPlugin,
    phase: Phase,
    request_id: &str,
    outcome: &Outcome,
) {
    let Some(cause) = outcome.failure_cause() else {
        return;
    };
    let failed_open = outcome.failed_open.is_some();
    tracing::warn!(
        plugin = %plugin.name,
        %phase,
        request_id,
        code = cause.code(),
        failed_open,
        "{cause}"
    );
    if failed_open {
        context.stats.failed_open.fetch_add(1, Ordering::Relaxed);
    }
    context.sink.emit(LogRecord {
        timestamp: std::time::SystemTime::now(),
        level: LogLevel::Error,
        message: cause.to_string(),
        plugin: plugin.name.clone(),
        plugin_version: plugin.version.clone(),
        request_id: Some(request_id.to_string()),
        session_id: None,
        trace_id: None,
        fields: vec![
            (
                "phase".into(),
                crate::logs::LogValue::Text(phase.to_string()),
            ),
            (
                "code".into(),
                crate::logs::LogValue::Integer(i64::from(cause.code())),
            ),
            (
                "failed_open".into(),
                crate::logs::LogValue::Boolean(failed_open),
            ),
        ],
    });
}

/// Publish `outcome` to `reply_to`, with the service error headers when it
/// is an error reply.
pub(crate) async fn publish_outcome(
    client: &async_nats::Client,
    reply_to: async_nats::Subject,
    payload: Vec<u8>,
    error: Option<&natsplug_protocol::RequestError>,
    stats: &HostStats,
) {
    let payload = bytes::Bytes::from(payload);
    let published = match error {
        None => client.publish(reply_to, payload).await,
        Some(error) => {
            let mut headers = HeaderMap::new();
            headers.insert(
                SERVICE_ERROR_HEADER,
                single_line(&error.to_string()).as_str(),
            );
            headers.insert(SERVICE_ERROR_CODE_HEADER, error.code().to_string().as_str());
            client
                .publish_with_headers(reply_to, headers, payload)
                .await
        }
    };
    if let Err(error) = published {
        stats.reply_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%error, "could not publish a reply");
    }
}

/// Header values cannot hold line breaks.
fn single_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}
