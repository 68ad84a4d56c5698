//! Announcements (docs/protocol.md, section 2): what a host serves of one
//! plugin, published (not requested) on `{prefix}.{plugin}.served` each
//! time the host loads, reloads or removes the plugin. Unlike the phase
//! messages they are JSON, for operators reading them with any client.

use serde::{Deserialize, Serialize};

/// The last token of an announcement's subject.
pub const SERVED_TOKEN: &str = "served";

/// One host's announcement of the phases it now serves for a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The plugin, as in its subjects.
    pub plugin: String,
    /// The phases served now, by name; none once the plugin is removed.
    /// A reader ignores the names it does not know.
    #[serde(default)]
    pub phases: Vec<String>,
    /// The announcing host's id (its discovery instance id).
    #[serde(default)]
    pub host: String,
}

impl Announcement {
    /// The announcement as published.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an announcement is plain JSON")
    }

    /// An announcement as published, when it is one.
    pub fn from_json(payload: &[u8]) -> Result<Announcement, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

/// The subject plugin `plugin`'s announcements go to under `prefix`.
pub fn announcement_subject(prefix: &str, plugin: &str) -> String {
    format!("{prefix}.{plugin}.{SERVED_TOKEN}")
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
        let subject = announcement_subject(prefix, "authz");
        assert_eq!(subject, "nylon.plugin.authz.served");
        assert_eq!(announced_plugin(prefix, &subject), Some("authz"));
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

    #[test]
    fn announcements_read_back_as_written_and_tolerate_what_they_lack() {
        let announcement = Announcement {
            plugin: "authz".into(),
            phases: vec!["request_filter".into(), "logging".into()],
            host: "h1".into(),
        };
        assert_eq!(
            String::from_utf8(announcement.to_json()).unwrap(),
            r#"{"plugin":"authz","phases":["request_filter","logging"],"host":"h1"}"#
        );
        assert_eq!(
            Announcement::from_json(&announcement.to_json()).unwrap(),
            announcement
        );
        let bare = Announcement::from_json(br#"{"plugin":"authz","extra":1}"#).unwrap();
        assert!(bare.phases.is_empty() && bare.host.is_empty());
    }
}
