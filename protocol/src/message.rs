//! The owned messages a caller sends: a phase request and the HTTP request,
//! response and body chunk it carries (docs/protocol.md, "Phase requests").

use serde::{Deserialize, Serialize};

/// An HTTP header list: `[name, value]` pairs, order kept, duplicates allowed.
pub type HeaderList = Vec<(String, String)>;

/// A phase request, sent by the caller to `{prefix}.{plugin}.{phase}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseRequest {
    /// Protocol version; must be [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
    pub version: u16,
    /// Echoed in the reply.
    pub request_id: String,
    /// The same for every phase of one HTTP exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<u64>,
    /// The phase name; must match the subject's phase.
    pub phase: String,
    /// The HTTP request.
    pub request: HttpRequest,
    /// The upstream response: response phases and logging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HttpResponse>,
    /// The body chunk: `response_body_filter` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<BodyChunk>,
    /// Time the exchange took: logging only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// The HTTP request of an exchange.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    #[serde(default, deserialize_with = "nil_as_empty")]
    pub headers: HeaderList,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "serde_bytes")]
    pub body: Option<Vec<u8>>,
}

/// A header list, owned or borrowed, where `nil` stands for an empty one.
pub(crate) fn nil_as_empty<'de, D, Headers>(deserializer: D) -> Result<Headers, D::Error>
where
    D: serde::Deserializer<'de>,
    Headers: Deserialize<'de> + Default,
{
    Ok(Option::<Headers>::deserialize(deserializer)?.unwrap_or_default())
}

/// The upstream HTTP response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpResponse {
    pub status: u16,
    #[serde(default, deserialize_with = "nil_as_empty")]
    pub headers: HeaderList,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "serde_bytes")]
    pub body: Option<Vec<u8>>,
}

/// One chunk of a response body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BodyChunk {
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    pub end_of_stream: bool,
    /// The `state` of the previous chunk's reply, echoed by the caller.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "serde_bytes")]
    pub state: Option<Vec<u8>>,
}
