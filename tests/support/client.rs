//! A phase-request client: builds requests, sends them, decodes replies.

use std::time::Duration;

use async_nats::HeaderMap;
use natsplug_protocol::{self as protocol, HttpRequest, PhaseReply, PhaseRequest};

/// Sends phase requests to `{prefix}.{plugin}.{phase}`.
#[derive(Clone)]
pub struct PhaseClient {
    pub client: async_nats::Client,
    pub prefix: String,
}

/// A reply with the NATS headers it came with.
#[derive(Debug)]
pub struct RawReply {
    pub payload: bytes::Bytes,
    pub headers: Option<HeaderMap>,
}

impl RawReply {
    /// The decoded phase reply.
    pub fn reply(&self) -> PhaseReply {
        protocol::decode_reply(&self.payload).expect("a valid phase reply")
    }

    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
    }
}

impl PhaseClient {
    /// A client for the default prefix.
    pub fn new(client: async_nats::Client) -> Self {
        PhaseClient {
            client,
            prefix: "nylon.plugin".into(),
        }
    }

    /// Send raw bytes to a plugin phase and wait for the reply.
    pub async fn send_raw(
        &self,
        plugin: &str,
        phase: &str,
        payload: Vec<u8>,
    ) -> Result<RawReply, async_nats::RequestError> {
        let subject = format!("{}.{plugin}.{phase}", self.prefix);
        let message = tokio::time::timeout(
            Duration::from_secs(10),
            self.client.request(subject, payload.into()),
        )
        .await
        .expect("a reply within 10 s")?;
        Ok(RawReply {
            payload: message.payload,
            headers: message.headers,
        })
    }

    /// Send `request` and decode the reply.
    pub async fn send(&self, plugin: &str, request: &PhaseRequest) -> PhaseReply {
        self.send_raw(plugin, &request.phase, protocol::encode_request(request))
            .await
            .expect("a reply")
            .reply()
    }
}

/// A version-1 request for `phase` with `method` and `path`.
pub fn request(phase: &str, request_id: &str, method: &str, path: &str) -> PhaseRequest {
    PhaseRequest {
        version: protocol::PROTOCOL_VERSION,
        request_id: request_id.to_string(),
        session_id: None,
        phase: phase.to_string(),
        request: HttpRequest {
            method: method.to_string(),
            path: path.to_string(),
            ..Default::default()
        },
        response: None,
        chunk: None,
        duration_ms: None,
    }
}
