//! Stopping without dropping exchanges. On SIGTERM the gateway says it is
//! not ready (`/readyz` 503), keeps accepting for `grace_period_ms` (for a
//! load balancer to notice), then closes its listener and waits for the
//! exchanges in flight to finish (at most `shutdown_timeout_ms`) before it
//! flushes what the chains still send and exits 0. SIGINT stops at once.
//!
//! Pingora broadcasts the shutdown to its listeners and then keeps its
//! runtimes alive for a fixed grace period; the drain task below ends the
//! process as soon as nothing is in flight instead of waiting it out.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{SignalKind, signal};

use crate::server::Started;

/// The number of exchanges in flight.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

/// One exchange in flight; it leaves the count when dropped.
#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicUsize>);

impl InFlight {
    /// Count an exchange until the guard is dropped.
    pub fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.0.clone())
    }

    /// Exchanges in flight now.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The signals that stop the gateway: SIGTERM (graceful, after the grace
/// period), SIGQUIT (graceful, at once), SIGINT (at once). Pingora's
/// hand-over of the listening sockets to a new process is not offered:
/// each proxy thread binds a socket of its own, which Pingora's hand-over
/// does not know.
pub struct Signals {
    pub grace_period: Duration,
    pub started: Started,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut quit), Ok(mut terminate), Ok(mut interrupt)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("could not watch for signals; SIGKILL is the only way to stop");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = quit.recv() => {
                if let Some(running) = self.started.get() {
                    running.metrics.set_ready(false);
                }
                tracing::info!("SIGQUIT: closing the listener now");
                ShutdownSignal::GracefulTerminate
            }
            _ = interrupt.recv() => ShutdownSignal::FastShutdown,
            _ = terminate.recv() => {
                if let Some(running) = self.started.get() {
                    running.metrics.set_ready(false);
                }
                tracing::info!(
                    grace_period_ms = self.grace_period.as_millis() as u64,
                    "SIGTERM: not ready any more; closing the listener after the grace period"
                );
                tokio::time::sleep(self.grace_period).await;
                ShutdownSignal::GracefulTerminate
            }
        }
    }
}

/// Once the shutdown is broadcast: wait for the exchanges in flight, let
/// the NATS connections send what is buffered, and exit 0.
pub struct Drain {
    pub in_flight: InFlight,
    pub timeout: Duration,
    pub started: Started,
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut waiting = self.in_flight.count();
        tracing::info!(
            in_flight = waiting,
            "listener closed; finishing the exchanges in flight"
        );
        while waiting > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            waiting = self.in_flight.count();
        }
        if waiting > 0 {
            tracing::warn!(
                in_flight = waiting,
                timeout_ms = self.timeout.as_millis() as u64,
                "shutdown_timeout_ms passed with exchanges still in flight; they are cut"
            );
        }
        if let Some(running) = self.started.get() {
            let threads = running
                .thread_connections
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone();
            let connections = std::iter::once(running.client.clone()).chain(threads);
            let flushed = async {
                for client in connections {
                    let _ = client.flush().await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), flushed).await;
        }
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "natsplug gateway stopped"
        );
        std::process::exit(0);
    }
}
