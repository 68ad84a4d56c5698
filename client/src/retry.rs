//! One phase call under its policy: attempts inside the timeout budget,
//! another one after no responders or a timeout, and what no responders
//! teaches about the phases a plugin implements.

use natsplug_protocol::{Phase, PhaseReply, PhaseRequest};
use tokio::time::Instant;

use crate::call::{CallError, PhaseCaller, call_subject};
use crate::phases::{Knowledge, PhaseDirectory};
use crate::policy::PhasePolicy;
use crate::stats::PhaseCounters;

/// How a phase call under its policy ended.
#[derive(Debug)]
pub(crate) enum Attempted {
    /// A `next` or `end` reply.
    Reply(PhaseReply),
    /// No responders, and the hosts then said the plugin does not
    /// implement the phase.
    NotImplemented,
    /// The last attempt's error.
    Failed(CallError),
}

/// What one call needs to know.
pub(crate) struct Call<'a> {
    pub caller: &'a PhaseCaller,
    pub directory: &'a PhaseDirectory,
    pub plugin: &'a str,
    /// The plugin's subject for `phase`.
    pub subject: &'a async_nats::Subject,
    pub phase: Phase,
    pub policy: PhasePolicy,
    pub counters: &'a PhaseCounters,
    pub traceparent: Option<&'a str>,
    /// The exchange's own connection, else the caller's.
    pub connection: Option<&'a async_nats::Client>,
}

impl Call<'_> {
    /// Send `request`, retrying within the budget.
    ///
    /// The policy's timeout is the whole budget: each attempt gets an equal
    /// share of what is left, so a host lost with the request leaves time
    /// for another. After no responders the discovery is refreshed (within
    /// a share of the budget) before the next attempt: if the hosts now say
    /// the plugin lacks the phase, the call ends without error; otherwise
    /// the rest of that share is waited out, giving a host time to appear,
    /// unless the refresh found one.
    pub(crate) async fn run(&self, request: &PhaseRequest) -> Attempted {
        let started = Instant::now();
        let attempted = self.attempt(request).await;
        self.counters.took(started.elapsed());
        attempted
    }

    async fn attempt(&self, request: &PhaseRequest) -> Attempted {
        let phase = self.phase.as_str();
        self.counters.call();
        let deadline = Instant::now() + self.policy.timeout;
        let attempts = self.policy.max_retries.saturating_add(1);
        let mut made = 0u32;
        loop {
            let left = attempts - made;
            let share = deadline.saturating_duration_since(Instant::now()) / left;
            let connection = self.connection.unwrap_or(self.caller.client());
            let error = match call_subject(
                connection,
                self.subject,
                request,
                share,
                self.traceparent,
            )
            .await
            {
                Ok(reply) => return Attempted::Reply(reply),
                Err(error) => error,
            };
            made += 1;
            self.counters.attempt_failed(&error);
            tracing::debug!(
                plugin = self.plugin,
                phase,
                request_id = %request.request_id,
                attempt = made,
                %error,
                "phase call attempt failed"
            );
            if !error.is_retryable() {
                return Attempted::Failed(error);
            }
            if matches!(error, CallError::NoResponders { .. }) {
                // `left` counts this attempt: the pause takes the share of
                // the budget it would have had among the attempts to come.
                let pause = deadline.saturating_duration_since(Instant::now()) / left;
                let pause_end = Instant::now() + pause;
                let refreshed = tokio::time::timeout_at(
                    pause_end,
                    self.directory.refresh_after_no_responders(),
                )
                .await
                .unwrap_or(false);
                match self.directory.knowledge(self.plugin, self.phase) {
                    Knowledge::NotImplemented => return Attempted::NotImplemented,
                    Knowledge::Implemented if refreshed => {}
                    _ if made < attempts => tokio::time::sleep_until(pause_end).await,
                    _ => {}
                }
            }
            if made >= attempts || Instant::now() >= deadline {
                return Attempted::Failed(error);
            }
            self.counters.retry();
        }
    }
}
