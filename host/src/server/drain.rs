//! The shutdown drain: stop taking requests, answer every request already
//! received, flush the connection, all within `nats.drain_timeout_ms`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::Host;
use crate::subscription::PhaseSubscription;

impl Host {
    /// Stop taking requests, answer every request already received, then
    /// flush the connection. The host serves nothing afterwards.
    ///
    /// The drain is bounded by `nats.drain_timeout_ms`: with NATS out of
    /// reach, the host gives up waiting for it after that long, says so,
    /// and returns an error.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        let limit = Duration::from_millis(self.config.nats.drain_timeout_ms);
        let deadline = tokio::time::Instant::now() + limit;
        self.closed.store(true, Ordering::Release);
        let plugins = std::mem::take(&mut *self.plugins.lock().await);
        let subscriptions: Vec<PhaseSubscription> = plugins
            .into_values()
            .flat_map(|served| served.subscriptions.into_values())
            .collect();
        // Stop them all at once; they drain side by side.
        for subscription in &subscriptions {
            subscription.begin_stop();
        }
        let mut abandoned = Vec::new();
        for subscription in subscriptions {
            let subject = subscription.subject.clone();
            if !subscription.finish_by(deadline).await {
                abandoned.push(subject);
            }
        }
        // The lanes run what they queued (handing some to the workers),
        // then the workers run theirs.
        let lanes_done = tokio::time::timeout_at(deadline, self.lanes.stop()).await;
        let executor = self.executor.clone();
        let workers = tokio::task::spawn_blocking(move || executor.shutdown());
        let workers_done = match lanes_done {
            Ok(()) => tokio::time::timeout_at(deadline, workers).await,
            Err(elapsed) => Err(elapsed),
        };
        let flushed = match workers_done {
            Ok(joined) => {
                joined.context("waiting for the workers")?;
                self.background.cancel();
                if let Some(publisher) = &self.publisher {
                    // Log records of the last calls go out before the connection closes.
                    let _ = tokio::time::timeout_at(deadline, publisher.close()).await;
                }
                tokio::time::timeout_at(deadline, self.client.flush())
                    .await
                    .ok()
                    .map(|result| result.context("flushing the last replies to NATS"))
            }
            Err(_) => None,
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match flushed {
            Some(Ok(())) if abandoned.is_empty() => {
                tracing::info!(elapsed_ms, "drained");
                Ok(())
            }
            Some(Err(error)) => Err(error),
            _ => {
                let message = format!(
                    "gave up draining after {} ms (nats.drain_timeout_ms): {}",
                    limit.as_millis(),
                    if abandoned.is_empty() {
                        "the last replies could not be flushed to NATS".to_string()
                    } else {
                        format!(
                            "{} subscription(s) did not drain ({}); is NATS reachable?",
                            abandoned.len(),
                            abandoned.join(", ")
                        )
                    }
                );
                tracing::error!(elapsed_ms, "{message}");
                bail!(message)
            }
        }
    }
}
