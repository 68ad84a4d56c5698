//! Watching a live connection: reconnects, slow consumers, server errors, subscriptions.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::{Client, Event, ServerError};
use futures::StreamExt as _;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::permissions::{PermissionOperation, PermissionViolation};
use crate::config::NatsConfig;
use crate::stats::HostStats;

/// Watches one connection through the client's event callback: logs
/// disconnects and the time to recover, counts slow consumers and permission
/// violations in [`HostStats`], and tells the host when the client gave up.
pub struct ConnectionMonitor {
    stats: Arc<HostStats>,
    pub(super) client: std::sync::OnceLock<Client>,
    state: std::sync::Mutex<MonitorState>,
    server_errors: broadcast::Sender<String>,
    lost: CancellationToken,
    max_reconnects: usize,
    /// Counts reconnections, for tasks that resynchronise after one.
    reconnected: tokio::sync::watch::Sender<u64>,
    /// Refusals that whoever caused them reports with more context than
    /// the monitor has: counted here, logged there.
    reported_elsewhere: std::sync::Mutex<ReportedElsewhere>,
}

/// See [`ConnectionMonitor::confirming`] and
/// [`ConnectionMonitor::on_publish_refused`].
#[derive(Default)]
struct ReportedElsewhere {
    /// Subjects being subscribed and confirmed, with how many confirmations
    /// of each are under way.
    subscriptions: std::collections::HashMap<String, usize>,
    /// Handlers of publish refusals; one returning true reports it.
    publishes: Vec<Arc<PublishRefusalHandler>>,
}

/// Called with a publish the server refused; returns whether it reported it.
pub type PublishRefusalHandler = dyn Fn(&PermissionViolation) -> bool + Send + Sync;

#[derive(Default)]
struct MonitorState {
    disconnected_at: Option<Instant>,
    last_slow_consumer_log: Option<Instant>,
    slow_consumers_unlogged: u64,
}

/// The longest interval between two slow-consumer log lines.
const SLOW_CONSUMER_LOG_INTERVAL: Duration = Duration::from_secs(5);

impl ConnectionMonitor {
    pub(super) fn new(stats: Arc<HostStats>, config: &NatsConfig) -> ConnectionMonitor {
        ConnectionMonitor {
            stats,
            client: std::sync::OnceLock::new(),
            state: std::sync::Mutex::new(MonitorState::default()),
            server_errors: broadcast::channel(64).0,
            lost: CancellationToken::new(),
            max_reconnects: config.max_reconnects,
            reconnected: tokio::sync::watch::channel(0).0,
            reported_elsewhere: std::sync::Mutex::new(ReportedElsewhere::default()),
        }
    }

    /// A monitor that no connection reports to, for a client connected
    /// elsewhere.
    pub fn detached() -> Arc<ConnectionMonitor> {
        Arc::new(ConnectionMonitor::new(
            Arc::new(HostStats::default()),
            &NatsConfig::default(),
        ))
    }

    /// The counters this monitor updates; the host uses them as its own.
    pub fn stats(&self) -> Arc<HostStats> {
        self.stats.clone()
    }

    /// Cancelled when the client gave up reconnecting (`max_reconnects`).
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Changes every time the client reconnects after a disconnect.
    pub fn reconnections(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reconnected.subscribe()
    }

    /// Errors the server sends from now on (`-ERR` text).
    pub fn server_errors(&self) -> broadcast::Receiver<String> {
        self.server_errors.subscribe()
    }

    /// Mark `subjects` as being subscribed by a caller that confirms them
    /// with [`ConnectionMonitor::confirm_subscriptions`] and reports a
    /// refusal itself (naming what the subject was for): until
    /// [`ConnectionMonitor::confirmed`], a refusal of one is counted but
    /// not logged here. Call before subscribing: the refusal can arrive
    /// before the confirmation starts.
    pub fn confirming(&self, subjects: &[String]) {
        let mut reported = self.reported();
        for subject in subjects {
            *reported.subscriptions.entry(subject.clone()).or_default() += 1;
        }
    }

    /// The confirmation of `subjects` (see [`ConnectionMonitor::confirming`])
    /// is over: later refusals of them are logged here again.
    pub fn confirmed(&self, subjects: &[String]) {
        let mut reported = self.reported();
        for subject in subjects {
            if let Some(count) = reported.subscriptions.get_mut(subject) {
                *count -= 1;
                if *count == 0 {
                    reported.subscriptions.remove(subject);
                }
            }
        }
    }

    /// Hand publish refusals to `handler` first: one it returns true for
    /// is counted in [`HostStats::permission_violations`] and not logged
    /// here (the handler reports it, e.g. once for a whole subject).
    pub fn on_publish_refused(&self, handler: Arc<PublishRefusalHandler>) {
        self.reported().publishes.push(handler);
    }

    /// Whether someone else reports `violation`.
    fn reported_elsewhere(&self, violation: &PermissionViolation) -> bool {
        let handlers = {
            let reported = self.reported();
            match violation.operation {
                PermissionOperation::Subscribe => {
                    return reported.subscriptions.contains_key(&violation.subject);
                }
                PermissionOperation::Publish => reported.publishes.clone(),
            }
        };
        handlers.iter().any(|handler| handler(violation))
    }

    fn reported(&self) -> std::sync::MutexGuard<'_, ReportedElsewhere> {
        self.reported_elsewhere
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn on_event(&self, event: Event) {
        match event {
            Event::Connected => {
                let down_since = self.lock().disconnected_at.take();
                let server = self
                    .client
                    .get()
                    .and_then(|c| c.try_server_info())
                    .map(|i| i.server_name)
                    .unwrap_or_default();
                match down_since {
                    Some(since) => {
                        let recovery = since.elapsed();
                        self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .last_recovery_ms
                            .store(recovery.as_millis() as u64, Ordering::Relaxed);
                        tracing::info!(
                            recovery_ms = recovery.as_millis() as u64,
                            server = %server,
                            "reconnected to NATS after {} ms; subscriptions restored",
                            recovery.as_millis()
                        );
                        self.reconnected.send_modify(|count| *count += 1);
                    }
                    None => tracing::debug!("connected to NATS"),
                }
            }
            Event::Disconnected => {
                self.stats.disconnects.fetch_add(1, Ordering::Relaxed);
                self.lock().disconnected_at.get_or_insert_with(Instant::now);
                let limit = if self.max_reconnects == 0 {
                    "until it comes back".to_string()
                } else {
                    format!("up to {} attempts", self.max_reconnects)
                };
                tracing::warn!("disconnected from NATS; reconnecting {limit}");
            }
            Event::LameDuckMode => tracing::warn!(
                "the NATS server is entering lame duck mode (shutting down); the host will move to another server"
            ),
            Event::SlowConsumer(sid) => self.slow_consumer(sid),
            Event::ServerError(ServerError::SlowConsumer(sid)) => self.slow_consumer(sid),
            Event::ServerError(ServerError::AuthorizationViolation) => tracing::error!(
                "NATS reports an authorization violation: the server no longer accepts this host's credentials"
            ),
            Event::ServerError(ServerError::Other(message)) => {
                if let Some(violation) = PermissionViolation::parse(&message) {
                    // Decided before the counts move: a plugin's load that
                    // reports a refused subscription waits for the count of
                    // them, then stops claiming it, and must not find it
                    // logged here as well.
                    let reported_elsewhere = self.reported_elsewhere(&violation);
                    self.stats
                        .permission_violations
                        .fetch_add(1, Ordering::Relaxed);
                    if violation.operation == PermissionOperation::Subscribe {
                        self.stats
                            .subscription_refusals
                            .fetch_add(1, Ordering::Release);
                    }
                    if !reported_elsewhere {
                        tracing::error!(subject = %violation.subject, "{violation}");
                    }
                } else {
                    tracing::warn!("NATS server error: {message}");
                }
                let _ = self.server_errors.send(message);
            }
            Event::ClientError(async_nats::ClientError::MaxReconnects) => {
                tracing::error!(
                    max_reconnects = self.max_reconnects,
                    "gave up reconnecting to NATS after {} attempts (nats.max_reconnects)",
                    self.max_reconnects
                );
                self.lost.cancel();
            }
            Event::ClientError(error) => {
                let text = error.to_string();
                if text.contains("authorization violation") {
                    tracing::error!(
                        "reconnecting to NATS: the server refused the login (authorization violation); were the credentials changed or revoked? Retrying"
                    );
                } else {
                    tracing::debug!("reconnect attempt failed: {text}");
                }
            }
            Event::Draining => tracing::debug!("draining the NATS connection"),
            Event::Closed => tracing::debug!("NATS connection closed"),
        }
    }

    fn slow_consumer(&self, sid: u64) {
        self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
        let mut state = self.lock();
        state.slow_consumers_unlogged += 1;
        let due = state
            .last_slow_consumer_log
            .is_none_or(|at| at.elapsed() >= SLOW_CONSUMER_LOG_INTERVAL);
        if due {
            let dropped = std::mem::take(&mut state.slow_consumers_unlogged);
            state.last_slow_consumer_log = Some(Instant::now());
            drop(state);
            tracing::warn!(
                sid,
                dropped,
                total = self.stats.slow_consumers.load(Ordering::Relaxed),
                "slow consumer: the host is not keeping up and the NATS client dropped {dropped} message(s); \
                 raise nats.subscription_capacity or runtime.workers, or add hosts to the queue group"
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MonitorState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until the server has processed the subscriptions made so far,
    /// and fail when it refused one of `subjects`. `errors` must have been
    /// taken (with [`ConnectionMonitor::server_errors`]) before subscribing.
    ///
    /// The server answers a refused subscription with a `-ERR` and nothing
    /// else, so this sends a fence after it (a message to a fresh inbox of
    /// its own) and waits for the fence, or for `window` at most.
    pub async fn confirm_subscriptions(
        &self,
        client: &Client,
        subjects: &[String],
        mut errors: broadcast::Receiver<String>,
        window: Duration,
    ) -> Result<(), PermissionViolation> {
        let deadline = tokio::time::Instant::now() + window;
        let fence_subject = client.new_inbox();
        let mut fence = match client.subscribe(fence_subject.clone()).await {
            Ok(fence) => {
                let _ = client
                    .publish(fence_subject.clone(), bytes::Bytes::new())
                    .await;
                Some(fence)
            }
            Err(_) => None,
        };
        let _ = tokio::time::timeout_at(deadline, client.flush()).await;
        // Errors and messages reach us through separate channels; once the
        // fence is back, allow the error path a moment to catch up.
        let mut end = deadline;
        let mut fence_seen = false;
        loop {
            tokio::select! {
                error = errors.recv() => match error {
                    Ok(message) => {
                        let Some(violation) = PermissionViolation::parse(&message) else {
                            continue;
                        };
                        if violation.subject == fence_subject {
                            // The fence was refused: the server has processed
                            // everything before it, and errors arrive in order.
                            if violation.operation == PermissionOperation::Publish {
                                tracing::warn!(
                                    "this host may not publish to `_INBOX.>` subjects: replies to requesters are refused unless the server allows responses (allow_responses) or grants publish on their reply subjects"
                                );
                            }
                            return Ok(());
                        }
                        if violation.operation == PermissionOperation::Subscribe
                            && subjects.contains(&violation.subject)
                        {
                            return Err(violation);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                _ = async {
                    match fence.as_mut() {
                        Some(fence) => { fence.next().await; }
                        None => std::future::pending::<()>().await,
                    }
                }, if !fence_seen => {
                    fence_seen = true;
                    end = end.min(tokio::time::Instant::now() + Duration::from_millis(50));
                }
                _ = tokio::time::sleep_until(end) => {
                    if !fence_seen {
                        tracing::debug!(
                            window_ms = window.as_millis() as u64,
                            "NATS did not confirm the subscriptions in time; assuming they are accepted"
                        );
                    }
                    return Ok(());
                }
            }
        }
    }
}
