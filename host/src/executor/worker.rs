//! What a worker does with a job: run it on its warm instance through
//! [`dispatch::run`], count it, report a plugin failure, and publish the
//! reply; then emit what the plugin logged.

use std::sync::atomic::Ordering;
use std::time::Instant;

use natsplug_protocol::{self as protocol, Phase, RequestError};

use super::scheduler::{NoJob, Scheduler};
use super::warm::WarmInstances;
use super::{Job, WorkerContext};
use crate::admission::Permits;
use crate::logs::{LogLevel, LogRecord, LogValue};
use crate::plugin::LoadedPlugin;
use crate::reply::{self, Outcome};
use crate::stats::HostStats;
use crate::{decode, dispatch};

/// A worker thread's life: take jobs until the scheduler stops, sweeping
/// the instances of unloaded plugins whenever it is idle.
pub fn worker_loop(scheduler: &Scheduler<Job>, context: &WorkerContext) {
    let mut warm = WarmInstances::default();
    loop {
        match scheduler.next() {
            Ok(job) => {
                let plugin = job.plugin.clone();
                let done = execute(job, &mut warm, context);
                drop(done.permits);
                scheduler.finished(&*plugin);
                if let Some(reply) = done.reply {
                    context
                        .runtime
                        .block_on(reply.publish(&context.client, &context.stats));
                }
                emit(done.records, context);
            }
            Err(NoJob::Stopped) => break,
            Err(NoJob::Idle) => {
                warm.sweep(&context.stats);
            }
        }
    }
}

/// A reply to publish.
pub struct Reply {
    to: async_nats::Subject,
    payload: Vec<u8>,
    error: Option<RequestError>,
}

impl Reply {
    /// Publish it on `client`.
    pub async fn publish(self, client: &async_nats::Client, stats: &HostStats) {
        reply::publish(client, self.to, self.payload, self.error.as_ref(), stats).await;
    }
}

/// A job run: its reply, the permits it held, and its log records, to
/// emit once the reply is on its way.
pub struct Done {
    pub reply: Option<Reply>,
    pub permits: Permits,
    pub records: Vec<LogRecord>,
}

/// Hand `records` to the host's log sink.
pub fn emit(records: Vec<LogRecord>, context: &WorkerContext) {
    for record in records {
        context.sink.emit(record);
    }
}

/// Run `job` on its warm instance in `warm`, count it and report a failure.
pub fn execute(job: Job, warm: &mut WarmInstances, context: &WorkerContext) -> Done {
    let Job {
        plugin,
        phase,
        message,
        endpoint,
        received,
        permits,
    } = job;
    let trace_id = decode::trace_id_in(message.headers.as_ref());
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
        let request_id = protocol::peek_request_id(&message.payload);
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
            ("phase".into(), LogValue::Text(phase.to_string())),
            ("code".into(), LogValue::Integer(i64::from(cause.code()))),
            ("failed_open".into(), LogValue::Boolean(failed_open)),
        ],
    });
}
