//! Telling callers at once what this host serves: whenever a plugin is
//! loaded, reloaded or removed, one message on `{prefix}.{plugin}.served`
//! with the phases the host now serves for it (docs/protocol.md, section
//! 2). A caller that skips the phases a plugin lacks learns from it that a
//! new version implements one more, without waiting for its next
//! discovery refresh. Nothing depends on its delivery: it is published,
//! not requested, and `$SRV.INFO` stays the full answer.

use std::sync::atomic::{AtomicBool, Ordering};

use natsplug_protocol::Phase;

use crate::nats::{PermissionOperation, PermissionViolation};

/// The last token of an announcement's subject.
pub const SERVED_TOKEN: &str = "served";

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

    /// The subject plugin `plugin`'s announcements go to.
    pub fn subject(&self, plugin: &str) -> String {
        format!("{}.{plugin}.{SERVED_TOKEN}", self.prefix)
    }

    /// Announce that this host now serves `plugin` with `phases` (none:
    /// it stopped serving it).
    pub async fn served(&self, plugin: &str, phases: &[Phase]) {
        let payload = serde_json::json!({
            "plugin": plugin,
            "phases": phases.iter().map(|phase| phase.as_str()).collect::<Vec<_>>(),
            "host": self.host_id,
        });
        let subject = self.subject(plugin);
        if let Err(error) = self
            .client
            .publish(subject.clone(), payload.to_string().into())
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

/// The plugin `subject` announces under `prefix`, when it is an
/// announcement's subject.
pub fn announced_plugin<'a>(prefix: &str, subject: &'a str) -> Option<&'a str> {
    subject
        .strip_prefix(prefix)?
        .strip_prefix('.')?
        .strip_suffix(SERVED_TOKEN)?
        .strip_suffix('.')
        .filter(|plugin| !plugin.is_empty() && !plugin.contains('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_subjects_name_one_plugin_under_the_prefix() {
        let prefix = "nylon.plugin";
        assert_eq!(
            announced_plugin(prefix, "nylon.plugin.authz.served"),
            Some("authz")
        );
        for other in [
            "nylon.plugin.authz.request_filter",
            "nylon.plugin.served",
            "nylon.plugin.a.b.served",
            "other.authz.served",
            "nylon.pluginx.authz.served",
        ] {
            assert_eq!(announced_plugin(prefix, other), None, "{other}");
        }
    }
}
