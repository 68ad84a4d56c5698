//! Permission violations reported by the server, read from its error text.

/// A permission the server refused to this host's user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "NATS refused to let this host {operation} `{subject}` (the server said: {server_message}). The user this host logs in as lacks {permission} permission there: grant it in the server's authorization config (e.g. {permission} on `{subject}`), or serve under another subjects.prefix"
)]
pub struct PermissionViolation {
    pub operation: PermissionOperation,
    pub subject: String,
    pub server_message: String,
    permission: &'static str,
}

/// What the server refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermissionOperation {
    Subscribe,
    Publish,
}

impl std::fmt::Display for PermissionOperation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PermissionOperation::Subscribe => "subscribe to",
            PermissionOperation::Publish => "publish to",
        })
    }
}

impl PermissionViolation {
    /// Read a server error such as `Permissions Violation for Subscription
    /// to "a.b" using queue "q"` or `Permissions Violation for Publish to "x"`.
    pub fn parse(message: &str) -> Option<PermissionViolation> {
        let (operation, rest) = if let Some(rest) =
            message.strip_prefix("Permissions Violation for Subscription to ")
        {
            (PermissionOperation::Subscribe, rest)
        } else {
            let rest = message.strip_prefix("Permissions Violation for Publish to ")?;
            (PermissionOperation::Publish, rest)
        };
        let subject = rest
            .strip_prefix('"')
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| rest.split_whitespace().next().unwrap_or(""));
        Some(PermissionViolation {
            operation,
            subject: subject.to_string(),
            server_message: message.to_string(),
            permission: match operation {
                PermissionOperation::Subscribe => "subscribe",
                PermissionOperation::Publish => "publish",
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_violations_name_the_subject() {
        let violation = PermissionViolation::parse(
            r#"Permissions Violation for Subscription to "nylon.plugin.authz.request_filter" using queue "natsplug""#,
        )
        .unwrap();
        assert_eq!(violation.operation, PermissionOperation::Subscribe);
        assert_eq!(violation.subject, "nylon.plugin.authz.request_filter");
        assert!(violation.to_string().starts_with(
            "NATS refused to let this host subscribe to `nylon.plugin.authz.request_filter`"
        ));
        let violation =
            PermissionViolation::parse(r#"Permissions Violation for Publish to "_INBOX.abc.1""#)
                .unwrap();
        assert_eq!(violation.operation, PermissionOperation::Publish);
        assert_eq!(violation.subject, "_INBOX.abc.1");
        assert!(PermissionViolation::parse("Maximum Payload Violation").is_none());
    }
}
