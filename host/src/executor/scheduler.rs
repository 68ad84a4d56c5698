//! The executor's scheduler: one queue per plugin, handed out round-robin
//! across plugins, never more calls of one plugin running at once than its
//! concurrency cap. A plugin flooded with slow requests delays its
//! neighbours by one call at most, not by its whole backlog.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// What the scheduler needs to know of a job, or of the plugin it calls.
pub trait Scheduled {
    /// The plugin called: jobs of one plugin share a queue.
    fn plugin_name(&self) -> &str;
    /// The plugin's cap on calls running at once (0: no cap of its own).
    fn max_concurrency(&self) -> usize;
}

/// One plugin's waiting jobs.
struct PluginQueue<J> {
    jobs: VecDeque<J>,
    running: usize,
    /// Whether the plugin is in the ready list.
    ready: bool,
}

impl<J> PluginQueue<J> {
    fn new() -> Self {
        PluginQueue {
            jobs: VecDeque::new(),
            running: 0,
            ready: false,
        }
    }
}

struct Queues<J> {
    plugins: HashMap<String, PluginQueue<J>>,
    /// Plugins with a job waiting and room to run it, in turn order.
    ready: VecDeque<String>,
    stopping: bool,
    /// Workers waiting for a job: only then is there anyone to wake.
    idle: usize,
}

/// Why [`Scheduler::next`] returned without a job.
#[derive(Debug, PartialEq, Eq)]
pub enum NoJob {
    /// Stopping, and nothing is left to run.
    Stopped,
    /// Nothing to run for the whole wait: time for the caller's chores.
    Idle,
}

/// The queues shared by the workers. The queues are unbounded; what bounds
/// them are the admission permits every job holds.
pub struct Scheduler<J> {
    queues: Mutex<Queues<J>>,
    work: Condvar,
    /// Calls of one plugin at once when it sets no cap: one per worker.
    workers: usize,
    /// How long [`Scheduler::next`] waits before it reports [`NoJob::Idle`].
    idle_wait: Duration,
}

impl<J: Scheduled> Scheduler<J> {
    /// A scheduler for `workers` workers that wait at most `idle_wait`.
    pub fn new(workers: usize, idle_wait: Duration) -> Self {
        Scheduler {
            queues: Mutex::new(Queues {
                plugins: HashMap::new(),
                ready: VecDeque::new(),
                stopping: false,
                idle: 0,
            }),
            work: Condvar::new(),
            workers,
            idle_wait,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queues<J>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wake a waiting worker, if any: a notification is a system call even
    /// when nobody waits, and busy workers look at the queues anyway before
    /// they wait.
    fn wake_one(&self, queues: &Queues<J>) {
        if queues.idle > 0 {
            self.work.notify_one();
        }
    }

    fn cap(&self, plugin: &impl Scheduled) -> usize {
        match plugin.max_concurrency() {
            0 => self.workers,
            cap => cap,
        }
    }

    /// Queue `job` behind the other jobs of its plugin.
    pub fn submit(&self, job: J) {
        let cap = self.cap(&job);
        let mut queues = self.lock();
        let Queues { plugins, ready, .. } = &mut *queues;
        let queue = plugins
            .entry(job.plugin_name().to_string())
            .or_insert_with(PluginQueue::new);
        queue.jobs.push_back(job);
        if !queue.ready && queue.running < cap {
            queue.ready = true;
            ready.push_back(queue.jobs[0].plugin_name().to_string());
            self.wake_one(&queues);
        }
    }

    /// The next job to run, counted as running until [`Scheduler::finished`];
    /// waits for one up to the idle wait.
    pub fn next(&self) -> Result<J, NoJob> {
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
                if !queue.jobs.is_empty() && queue.running < self.cap(&job) {
                    queue.ready = true;
                    ready.push_back(name);
                    self.wake_one(&queues);
                }
                return Ok(job);
            }
            if queues.stopping {
                return Err(NoJob::Stopped);
            }
            queues.idle += 1;
            let (guard, timeout) = self
                .work
                .wait_timeout(queues, self.idle_wait)
                .unwrap_or_else(|e| e.into_inner());
            queues = guard;
            queues.idle -= 1;
            if timeout.timed_out() && queues.ready.is_empty() {
                return Err(NoJob::Idle);
            }
        }
    }

    /// Count a call of `plugin` about to run outside the workers, if none
    /// of its jobs waits and it has room under its cap.
    pub fn start_here(&self, plugin: &impl Scheduled) -> bool {
        let cap = self.cap(plugin);
        let mut queues = self.lock();
        let queue = queues
            .plugins
            .entry(plugin.plugin_name().to_string())
            .or_insert_with(PluginQueue::new);
        if !queue.jobs.is_empty() || queue.running >= cap {
            return false;
        }
        queue.running += 1;
        true
    }

    /// A call of `plugin` (from [`Scheduler::next`] or
    /// [`Scheduler::start_here`]) is done: its plugin may run another.
    pub fn finished(&self, plugin: &impl Scheduled) {
        let cap = self.cap(plugin);
        let mut queues = self.lock();
        let Queues { plugins, ready, .. } = &mut *queues;
        if let Some(queue) = plugins.get_mut(plugin.plugin_name()) {
            queue.running -= 1;
            if queue.jobs.is_empty() {
                if queue.running == 0 {
                    plugins.remove(plugin.plugin_name());
                }
            } else if !queue.ready && queue.running < cap {
                queue.ready = true;
                ready.push_back(plugin.plugin_name().to_string());
                self.wake_one(&queues);
            }
        }
    }

    /// Let the workers run what is queued, then have [`Scheduler::next`]
    /// report [`NoJob::Stopped`].
    pub fn stop(&self) {
        self.lock().stopping = true;
        self.work.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job of plugin `plugin`, capped at `cap` calls at once, numbered `id`.
    #[derive(Debug, Clone, PartialEq)]
    struct TestJob {
        plugin: &'static str,
        cap: usize,
        id: u32,
    }

    impl Scheduled for TestJob {
        fn plugin_name(&self) -> &str {
            self.plugin
        }
        fn max_concurrency(&self) -> usize {
            self.cap
        }
    }

    fn job(plugin: &'static str, cap: usize, id: u32) -> TestJob {
        TestJob { plugin, cap, id }
    }

    fn scheduler(workers: usize) -> Scheduler<TestJob> {
        Scheduler::new(workers, Duration::from_millis(10))
    }

    fn ids(jobs: &[TestJob]) -> Vec<(&'static str, u32)> {
        jobs.iter().map(|j| (j.plugin, j.id)).collect()
    }

    #[test]
    fn plugins_take_turns_whatever_their_backlog() {
        let scheduler = scheduler(8);
        for id in 0..4 {
            scheduler.submit(job("flooded", 0, id));
        }
        scheduler.submit(job("quiet", 0, 0));
        scheduler.submit(job("quiet", 0, 1));
        let order: Vec<TestJob> = (0..6).map(|_| scheduler.next().unwrap()).collect();
        assert_eq!(
            ids(&order),
            [
                ("flooded", 0),
                ("quiet", 0),
                ("flooded", 1),
                ("quiet", 1),
                ("flooded", 2),
                ("flooded", 3)
            ]
        );
    }

    #[test]
    fn a_capped_plugin_runs_no_more_calls_at_once_than_its_cap() {
        let scheduler = scheduler(8);
        for id in 0..3 {
            scheduler.submit(job("slow", 1, id));
        }
        scheduler.submit(job("other", 0, 0));
        let first = scheduler.next().unwrap();
        assert_eq!((first.plugin, first.id), ("slow", 0));
        // The slow plugin is at its cap: only the other plugin is handed out.
        assert_eq!(scheduler.next().unwrap().plugin, "other");
        assert_eq!(scheduler.next(), Err(NoJob::Idle));
        scheduler.finished(&first);
        assert_eq!(scheduler.next().unwrap().id, 1);
    }

    #[test]
    fn without_a_cap_a_plugin_runs_one_call_per_worker() {
        let scheduler = scheduler(2);
        for id in 0..3 {
            scheduler.submit(job("p", 0, id));
        }
        let a = scheduler.next().unwrap();
        let _b = scheduler.next().unwrap();
        assert_eq!(scheduler.next(), Err(NoJob::Idle));
        scheduler.finished(&a);
        assert_eq!(scheduler.next().unwrap().id, 2);
    }

    #[test]
    fn a_call_run_here_counts_against_the_cap_and_waits_for_queued_jobs() {
        let scheduler = scheduler(4);
        let plugin = job("p", 1, 0);
        assert!(scheduler.start_here(&plugin));
        // At its cap: neither another call here nor a queued job may start.
        assert!(!scheduler.start_here(&plugin));
        scheduler.submit(job("p", 1, 1));
        assert_eq!(scheduler.next(), Err(NoJob::Idle));
        scheduler.finished(&plugin);
        assert_eq!(scheduler.next().unwrap().id, 1);
        // A job waits: a call here would overtake it.
        scheduler.submit(job("p", 1, 2));
        assert!(!scheduler.start_here(&plugin));
    }

    #[test]
    fn stopping_hands_out_what_is_queued_then_reports_stopped() {
        let scheduler = scheduler(2);
        scheduler.submit(job("p", 0, 0));
        scheduler.stop();
        assert_eq!(scheduler.next().unwrap().id, 0);
        assert_eq!(scheduler.next(), Err(NoJob::Stopped));
    }

    #[test]
    fn a_waiting_worker_is_woken_by_a_submit() {
        let scheduler = std::sync::Arc::new(Scheduler::new(2, Duration::from_secs(30)));
        let worker = {
            let scheduler = scheduler.clone();
            std::thread::spawn(move || scheduler.next())
        };
        // Submit once the worker waits, so the wake-up is what it gets.
        while scheduler.lock().idle == 0 {
            std::thread::yield_now();
        }
        scheduler.submit(job("p", 0, 7));
        assert_eq!(worker.join().unwrap().unwrap().id, 7);
    }
}
