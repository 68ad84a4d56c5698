//! Telling callers at once what this host serves: whenever a plugin is
//! loaded, reloaded or removed, one message on `{prefix}.{plugin}.served`
//! with the phases the host now serves for it (docs/protocol.md, section
//! 2). A caller that skips the phases a plugin lacks learns from it that a
//! new version implements one more, without waiting for its next
//! discovery refresh. Nothing depends on its delivery: it is published,
//! not requested, and `$SRV.INFO` stays the full answer.

use std::sync::atomic::{AtomicBool, Ordering};

use natsplug_protocol::{
    Announcement, Phase, SERVED_TOKEN, announced_plugin, announcement_subject,
};

use crate::nats::{PermissionOperation, PermissionViolation};

/// Publishes a host's announcements.
pub struct Announcer {
    client: async_nats::Client,
    prefix: String,
    host_id: String,
    refusal_logged: AtomicBool,
}

impl Announcer {
    /// Announcements of the host `host_id` serving under `prefix`, sent on
    /// `client`.
    pub fn new(client: async_nats::Client, prefix: &str, host_id: &str) -> Announcer {
        Announcer {
            client,
            prefix: prefix.to_string(),
            host_id: host_id.to_string(),
            refusal_logged: AtomicBool::new(false),
        }
    }

    /// Announce that this host now serves `plugin` with `phases` (none:
    /// it stopped serving it).
    pub async fn served(&self, plugin: &str, phases: &[Phase]) {
        let announcement = Announcement {
            plugin: plugin.to_string(),
            phases: phases
                .iter()
                .map(|phase| phase.as_str().to_string())
                .collect(),
            host: self.host_id.clone(),
        };
        let subject = announcement_subject(&self.prefix, plugin);
        if let Err(error) = self
            .client
            .publish(subject.clone(), announcement.to_json().into())
            .await
        {
            tracing::debug!(%error, subject, "could not announce what this host serves");
        }
    }

    /// Whether `violation` refused an announcement; the first such refusal
    /// is logged, with the permission to grant.
    pub fn refused(&self, violation: &PermissionViolation) -> bool {
        let ours = violation.operation == PermissionOperation::Publish
            && announced_plugin(&self.prefix, &violation.subject).is_some();
        if ours && !self.refusal_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                subject = %violation.subject,
                "NATS refused this host's announcement of what it serves on `{}` (the server said: {}). Callers learn of loaded and reloaded plugins at their next discovery refresh instead; to tell them at once, grant publish on `{}.*.{SERVED_TOKEN}` to the user this host logs in as. This is logged once",
                violation.subject,
                violation.server_message,
                self.prefix,
            );
        }
        ours
    }
}
