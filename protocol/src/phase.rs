//! The four phases of an HTTP exchange and their subject tokens.

use std::fmt;

/// A phase a plugin can implement. Its name is the last token of the
/// phase subject and the `phase` field of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    RequestFilter,
    ResponseFilter,
    ResponseBodyFilter,
    Logging,
}

impl Phase {
    /// Every phase, in exchange order.
    pub const ALL: [Phase; 4] = [
        Phase::RequestFilter,
        Phase::ResponseFilter,
        Phase::ResponseBodyFilter,
        Phase::Logging,
    ];

    /// The wire and subject name, e.g. `request_filter`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::RequestFilter => "request_filter",
            Phase::ResponseFilter => "response_filter",
            Phase::ResponseBodyFilter => "response_body_filter",
            Phase::Logging => "logging",
        }
    }

    /// The phase called `name` on the wire.
    pub fn parse(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
