//! Admission: whether a received request may run now. A call holds two
//! [`Permits`] from admission until it is done: its plugin's (the plugin's
//! in-flight cap) and the host's (`runtime.max_in_flight`). When one is not
//! free, the overload policy decides: refuse at once (`reject`) or wait up
//! to `runtime.max_queue_wait_ms` (`wait`); a refused request is answered
//! `503`.

use std::sync::Arc;
use std::time::Duration;

use natsplug_protocol::RequestError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{OverloadPolicy, RuntimeConfig};

/// The permits one call holds while it runs; dropping them frees both slots.
#[derive(Debug)]
pub struct Permits {
    /// A slot under the plugin's in-flight cap.
    pub plugin: OwnedSemaphorePermit,
    /// A slot under the host's in-flight cap.
    pub host: OwnedSemaphorePermit,
}

/// Which cap refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The plugin is at its in-flight cap.
    PluginFull,
    /// The host is at its in-flight cap.
    HostFull,
}

impl Refusal {
    /// The `503` error that answers a call of plugin `name` refused so.
    pub fn error(self, name: &str) -> RequestError {
        RequestError::Overloaded(match self {
            Refusal::PluginFull => {
                format!("plugin `{name}` is at its concurrency limit; try again later")
            }
            Refusal::HostFull => format!(
                "the host is at its concurrency limit (serving plugin `{name}`); try again later"
            ),
        })
    }
}

/// The host-wide slots and the overload policy.
#[derive(Debug)]
pub struct Admission {
    host: Arc<Semaphore>,
    max_in_flight: usize,
    overload: OverloadPolicy,
    max_queue_wait: Duration,
}

impl Admission {
    /// Admission under the limits of `runtime`.
    pub fn new(runtime: &RuntimeConfig) -> Admission {
        Admission {
            host: Arc::new(Semaphore::new(runtime.max_in_flight)),
            max_in_flight: runtime.max_in_flight,
            overload: runtime.overload,
            max_queue_wait: Duration::from_millis(runtime.max_queue_wait_ms),
        }
    }

    /// The permits for a call of a plugin whose own slots are `plugin`, or
    /// which cap refuses it. The plugin's permit is taken first: a plugin
    /// at its cap must not hold a host-wide slot while it waits.
    pub async fn admit(&self, plugin: &Arc<Semaphore>) -> Result<Permits, Refusal> {
        let plugin = self.acquire(plugin).await.ok_or(Refusal::PluginFull)?;
        let host = self.acquire(&self.host).await.ok_or(Refusal::HostFull)?;
        Ok(Permits { plugin, host })
    }

    /// The permits for a call of a plugin whose own slots are `plugin`
    /// without waiting: `Some(Ok)` when both are free, `Some(Err)` when the
    /// `reject` policy refuses, `None` when the `wait` policy has the call
    /// wait for them ([`Admission::admit`]).
    pub fn admit_now(&self, plugin: &Arc<Semaphore>) -> Option<Result<Permits, Refusal>> {
        let Ok(plugin) = plugin.clone().try_acquire_owned() else {
            return self.refuse_at_once(Refusal::PluginFull);
        };
        let Ok(host) = self.host.clone().try_acquire_owned() else {
            return self.refuse_at_once(Refusal::HostFull);
        };
        Some(Ok(Permits { plugin, host }))
    }

    fn refuse_at_once(&self, refusal: Refusal) -> Option<Result<Permits, Refusal>> {
        match self.overload {
            OverloadPolicy::Reject => Some(Err(refusal)),
            OverloadPolicy::Wait => None,
        }
    }

    /// Calls admitted and not done yet.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight
            .saturating_sub(self.host.available_permits())
    }

    /// A slot of `semaphore` under the overload policy, or `None`.
    async fn acquire(&self, semaphore: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
        // A free slot is the common case: take it without arming a timer.
        if let Ok(permit) = semaphore.clone().try_acquire_owned() {
            return Some(permit);
        }
        match self.overload {
            OverloadPolicy::Reject => None,
            OverloadPolicy::Wait => {
                tokio::time::timeout(self.max_queue_wait, semaphore.clone().acquire_owned())
                    .await
                    .ok()?
                    .ok()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(max_in_flight: usize, overload: OverloadPolicy) -> RuntimeConfig {
        RuntimeConfig {
            max_in_flight,
            overload,
            max_queue_wait_ms: 20,
            ..RuntimeConfig::default()
        }
    }

    #[tokio::test]
    async fn a_full_plugin_is_refused_before_a_host_slot_is_taken() {
        let admission = Admission::new(&runtime(4, OverloadPolicy::Reject));
        let plugin = Arc::new(Semaphore::new(1));
        let held = admission.admit(&plugin).await.unwrap();
        let refusal = admission.admit(&plugin).await.unwrap_err();
        assert_eq!(refusal, Refusal::PluginFull);
        let refused = refusal.error("p");
        assert_eq!(refused.code(), 503);
        assert!(refused.to_string().contains("plugin `p`"), "{refused}");
        assert_eq!(admission.in_flight(), 1);
        assert_eq!(
            admission.admit_now(&plugin).unwrap().unwrap_err(),
            Refusal::PluginFull
        );
        drop(held);
        assert_eq!(admission.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_full_host_is_refused_and_waiting_gives_up_after_the_queue_wait() {
        let admission = Admission::new(&runtime(1, OverloadPolicy::Wait));
        let first = Arc::new(Semaphore::new(8));
        let second = Arc::new(Semaphore::new(8));
        let held = admission.admit(&first).await.unwrap();
        // Waiting is for `admit`: at once there is no answer yet.
        assert!(admission.admit_now(&second).is_none());
        assert_eq!(second.available_permits(), 8);
        let refused = admission.admit(&second).await.unwrap_err();
        assert_eq!(refused, Refusal::HostFull);
        assert!(
            refused
                .error("b")
                .to_string()
                .contains("the host is at its concurrency limit")
        );
        // The refused call gave back its plugin slot.
        assert_eq!(second.available_permits(), 8);
        drop(held);
        let admitted = admission.admit(&second).await.unwrap();
        assert_eq!(second.available_permits(), 7);
        drop(admitted);
    }
}
