//! A chain: the plugins of an exchange in order, and the four phases run
//! through them, each plugin seeing what the ones before it changed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use natsplug_protocol::{Action, BodyChunk, HttpRequest, Phase, PhaseReply, PhaseRequest};
use tokio::sync::Semaphore;

use crate::call::PhaseCaller;
use crate::exchange::{BodyOutput, Exchange, LocalResponse, PhaseFailure, Sent, Verdict};
use crate::mutations::{apply_to_request, apply_to_response};
use crate::phases::{Knowledge, PhaseDirectory};
use crate::policy::{FailureMode, PhasePolicy};
use crate::retry::{Attempted, Call};
use crate::stats::{PluginCounters, StatsSnapshot, phase_index};

/// An ordered list of plugins, run phase by phase over NATS. Cheap to
/// clone; clones share the connection, the counters and what was learned
/// of the plugins' phases. Made by [`ChainBuilder`](crate::ChainBuilder).
#[derive(Debug, Clone)]
pub struct Chain {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) caller: PhaseCaller,
    pub(crate) directory: Arc<PhaseDirectory>,
    pub(crate) plugins: Vec<ChainPlugin>,
    pub(crate) logging_permits: Arc<Semaphore>,
    pub(crate) logging_dropped: AtomicU64,
    pub(crate) sessions: AtomicU64,
    pub(crate) runtime: tokio::runtime::Handle,
}

/// One plugin of the chain: its name, phase subjects, resolved policies
/// and counters.
#[derive(Debug)]
pub(crate) struct ChainPlugin {
    pub(crate) name: String,
    /// `{prefix}.{name}.{phase}`, by [`phase_index`], made once.
    pub(crate) subjects: [async_nats::Subject; 4],
    pub(crate) policies: [PhasePolicy; 4],
    pub(crate) counters: PluginCounters,
}

impl Chain {
    pub(crate) fn from_inner(inner: Inner) -> Chain {
        Chain {
            inner: Arc::new(inner),
        }
    }

    /// A new exchange for the client's `request`, with its own session id.
    pub fn exchange(&self, request: HttpRequest) -> Exchange {
        let session_id = self.inner.sessions.fetch_add(1, Ordering::Relaxed);
        let id = nuid::next().to_string();
        Exchange::new(request, session_id, id, self.inner.plugins.len())
    }

    /// The plugin names, in chain order.
    pub fn plugins(&self) -> impl Iterator<Item = &str> {
        self.inner.plugins.iter().map(|p| p.name.as_str())
    }

    /// The single-call layer the chain sends with.
    pub fn caller(&self) -> &PhaseCaller {
        &self.inner.caller
    }

    /// What the chain knows of the phases each plugin implements.
    pub fn directory(&self) -> &PhaseDirectory {
        &self.inner.directory
    }

    /// Every counter, now.
    pub fn stats(&self) -> StatsSnapshot {
        StatsSnapshot {
            plugins: self
                .inner
                .plugins
                .iter()
                .map(|p| p.counters.snapshot(&p.name))
                .collect(),
            logging_dropped: self.inner.logging_dropped.load(Ordering::Relaxed),
            discovery_refreshes: self.inner.directory.refreshes(),
        }
    }

    /// Run `request_filter` through the plugins in order. Each `next`
    /// applies its header changes (removals, then sets), path and body to
    /// `exchange.request` before the next plugin is called; the first `end`
    /// answers the client and stops the chain.
    pub async fn request_filter(&self, exchange: &mut Exchange) -> Result<Verdict, PhaseFailure> {
        for index in 0..self.inner.plugins.len() {
            if self.inner.skips(index, Phase::RequestFilter) {
                continue;
            }
            let phase = Phase::RequestFilter;
            let (lending, sent) = exchange.lend(phase);
            let outcome = self.inner.step(index, phase, &lending.request, sent).await;
            lending.give_back();
            let reply = match outcome? {
                None => continue,
                Some(reply) => reply,
            };
            if reply.action == Action::End {
                return Ok(self.inner.respond(index, reply, exchange));
            }
            apply_to_request(&mut exchange.request, reply);
        }
        Ok(Verdict::Continue)
    }

    /// Run `response_filter` on the upstream `response` through the plugins
    /// in order; the response as changed (headers, status) is left in
    /// `exchange.response`. The first `end` replaces the response and stops
    /// the chain.
    pub async fn response_filter(
        &self,
        exchange: &mut Exchange,
        response: natsplug_protocol::HttpResponse,
    ) -> Result<Verdict, PhaseFailure> {
        exchange.response = Some(response);
        for index in 0..self.inner.plugins.len() {
            if self.inner.skips(index, Phase::ResponseFilter) {
                continue;
            }
            let phase = Phase::ResponseFilter;
            let (lending, sent) = exchange.lend(phase);
            let outcome = self.inner.step(index, phase, &lending.request, sent).await;
            lending.give_back();
            let reply = match outcome? {
                None => continue,
                Some(reply) => reply,
            };
            if reply.action == Action::End {
                return Ok(self.inner.respond(index, reply, exchange));
            }
            if let Some(target) = exchange.response.as_mut() {
                apply_to_response(target, &reply);
            }
        }
        Ok(Verdict::Continue)
    }

    /// Run one response body chunk through `response_body_filter`: each
    /// plugin's output is the next one's input, and each plugin's `state`
    /// goes back to it with the exchange's next chunk. Send the chunks in
    /// order, one at a time.
    ///
    /// A plugin failing open passes the chunk on unchanged and loses the
    /// state it carried. A plugin answering `end` ends the body: its `body`
    /// is the last output, later plugins are not called, and chunks after
    /// it give empty output.
    pub async fn response_body_filter(
        &self,
        exchange: &mut Exchange,
        data: Vec<u8>,
        end_of_stream: bool,
    ) -> Result<BodyOutput, PhaseFailure> {
        if exchange.body_finished() {
            return Ok(BodyOutput {
                data: Vec::new(),
                end_of_stream: true,
            });
        }
        let mut data = data;
        for index in 0..self.inner.plugins.len() {
            if self.inner.skips(index, Phase::ResponseBodyFilter) {
                continue;
            }
            let state = exchange.take_body_state(index);
            let phase = Phase::ResponseBodyFilter;
            let (mut lending, sent) = exchange.lend(phase);
            lending.request.chunk = Some(BodyChunk {
                data,
                end_of_stream,
                state,
            });
            let outcome = self.inner.step(index, phase, &lending.request, sent).await;
            let chunk = lending.give_back();
            let outcome = outcome?;
            let unchanged = chunk.map(|c| c.data).unwrap_or_default();
            match outcome {
                None => data = unchanged,
                Some(reply) if reply.action == Action::End => {
                    exchange.finish_body();
                    return Ok(BodyOutput {
                        data: reply.body.unwrap_or_default(),
                        end_of_stream: true,
                    });
                }
                Some(reply) => {
                    data = reply.body.unwrap_or(unchanged);
                    if !end_of_stream {
                        exchange.keep_body_state(index, reply.state);
                    }
                }
            }
        }
        if end_of_stream {
            exchange.finish_body();
        }
        Ok(BodyOutput {
            data,
            end_of_stream,
        })
    }

    /// Send `logging` for the finished exchange to every plugin that may
    /// implement it, without waiting: the calls run on a spawned task,
    /// at most `max_logging_in_flight` exchanges at a time. Returns whether
    /// they were sent; an exchange finding no room is dropped and counted.
    pub fn logging(&self, exchange: &mut Exchange) -> bool {
        let mut calls = Vec::new();
        for index in 0..self.inner.plugins.len() {
            if !self.inner.skips(index, Phase::Logging) {
                calls.push((index, exchange.logging_request()));
            }
        }
        if calls.is_empty() {
            return true;
        }
        let Ok(permit) = self.inner.logging_permits.clone().try_acquire_owned() else {
            self.inner.logging_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                session_id = exchange.session_id(),
                "too many logging calls in flight: this exchange is not logged"
            );
            return false;
        };
        let inner = self.inner.clone();
        let traceparent = exchange.traceparent.clone();
        let connection = exchange.connection.clone();
        self.inner.runtime.spawn(async move {
            let _permit = permit;
            let sends = calls.into_iter().map(|(index, request)| {
                let inner = &inner;
                let sent = Sent {
                    traceparent: traceparent.as_deref(),
                    connection: connection.as_ref(),
                };
                async move { inner.call(index, Phase::Logging, &request, sent).await }
            });
            futures::future::join_all(sends).await;
        });
        true
    }
}

impl Inner {
    /// Whether plugin `index` is known not to implement `phase`; a skip is
    /// counted. Checked before the phase request is built, so a skipped
    /// plugin costs no copy of the exchange.
    fn skips(&self, index: usize, phase: Phase) -> bool {
        let plugin = &self.plugins[index];
        let skipped = self.directory.knowledge(&plugin.name, phase) == Knowledge::NotImplemented;
        if skipped {
            plugin.counters.phase(phase).skipped();
        }
        skipped
    }

    /// Plugin `index`'s part of a phase, called under its policy (the
    /// caller has checked [`Inner::skips`]). `Ok(None)` goes on without it
    /// (the phase turned out not implemented, or the call failed open); a
    /// failure under `closed` stops the chain.
    async fn step(
        &self,
        index: usize,
        phase: Phase,
        request: &PhaseRequest,
        sent: Sent<'_>,
    ) -> Result<Option<PhaseReply>, PhaseFailure> {
        self.call(index, phase, request, sent).await.transpose()
    }

    /// Call plugin `index` under its policy: `Some(Ok)` with a reply,
    /// `Some(Err)` for a failure under `closed`, `None` to go on without it.
    async fn call(
        &self,
        index: usize,
        phase: Phase,
        request: &PhaseRequest,
        sent: Sent<'_>,
    ) -> Option<Result<PhaseReply, PhaseFailure>> {
        let plugin = &self.plugins[index];
        let counters = plugin.counters.phase(phase);
        let policy = plugin.policies[phase_index(phase)];
        let call = Call {
            caller: &self.caller,
            directory: &self.directory,
            plugin: &plugin.name,
            subject: &plugin.subjects[phase_index(phase)],
            phase,
            policy,
            counters,
            traceparent: sent.traceparent,
            connection: sent.connection,
        };
        match call.run(request).await {
            Attempted::Reply(reply) => {
                if reply.action == Action::End {
                    counters.ended();
                }
                if let Some(note) = &reply.error {
                    counters.host_failed_open();
                    tracing::warn!(
                        plugin = %plugin.name,
                        %phase,
                        request_id = %request.request_id,
                        note = %note,
                        "the host went on without the plugin"
                    );
                }
                Some(Ok(reply))
            }
            Attempted::NotImplemented => {
                counters.skipped();
                None
            }
            Attempted::Failed(error) => match policy.failure_mode {
                FailureMode::Open => {
                    counters.failed_open();
                    tracing::warn!(
                        plugin = %plugin.name,
                        %phase,
                        request_id = %request.request_id,
                        %error,
                        "phase call failed; going on without the plugin"
                    );
                    None
                }
                FailureMode::Closed => {
                    counters.failed_closed();
                    tracing::warn!(
                        plugin = %plugin.name,
                        %phase,
                        request_id = %request.request_id,
                        %error,
                        status = error.status(),
                        "phase call failed; stopping the exchange"
                    );
                    Some(Err(PhaseFailure {
                        plugin: plugin.name.clone(),
                        phase,
                        error,
                    }))
                }
            },
        }
    }

    /// Plugin `index` answered `end`: its local response becomes the
    /// exchange's response.
    fn respond(&self, index: usize, reply: PhaseReply, exchange: &mut Exchange) -> Verdict {
        let local = LocalResponse::from_reply(&self.plugins[index].name, reply);
        exchange.response = Some(local.to_http_response());
        Verdict::Respond(local)
    }
}
