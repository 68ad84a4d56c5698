//! The reply to a phase request: what the caller does next (docs/protocol.md,
//! "Replies").

use serde::{Deserialize, Serialize};

use crate::PROTOCOL_VERSION;
use crate::message::HeaderList;

/// What the caller does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Continue, applying the mutations.
    Next,
    /// Answer the client now with `status`, `response_headers` and `body`.
    End,
    /// The phase failed; `error` says why.
    Error,
}

/// Header changes: removals apply first, then each `set` replaces all
/// headers of that name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeaderMutations {
    #[serde(default)]
    pub set: HeaderList,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// The reply to a phase request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseReply {
    pub version: u16,
    pub request_id: String,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderMutations>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderMutations>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "serde_bytes")]
    pub body: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `request_filter`: the rewritten request path (a query may follow `?`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `response_body_filter`: bytes to echo in the next chunk's `state`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "serde_bytes")]
    pub state: Option<Vec<u8>>,
}

impl PhaseReply {
    /// A reply that continues unchanged.
    pub fn next(request_id: impl Into<String>) -> Self {
        PhaseReply {
            version: PROTOCOL_VERSION,
            request_id: request_id.into(),
            action: Action::Next,
            request_headers: None,
            response_headers: None,
            status: None,
            body: None,
            error: None,
            path: None,
            state: None,
        }
    }

    /// An `"error"` reply carrying `message`.
    pub fn error(request_id: impl Into<String>, message: impl Into<String>) -> Self {
        PhaseReply {
            action: Action::Error,
            error: Some(message.into()),
            ..PhaseReply::next(request_id)
        }
    }
}
