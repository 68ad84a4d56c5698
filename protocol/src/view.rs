//! Phase requests borrowed from the bytes of their message: what a host
//! decodes on the request path, and their owned copies.

use std::borrow::Cow;

use serde::Deserialize;

use crate::message::{BodyChunk, HttpRequest, HttpResponse, PhaseRequest, nil_as_empty};

/// decodes on the request path. Strings and bodies point into the message,
/// so decoding allocates only the header lists.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PhaseRequestView<'a> {
    pub version: u16,
    pub request_id: &'a str,
    #[serde(default)]
    pub session_id: Option<u64>,
    pub phase: &'a str,
    #[serde(borrow)]
    pub request: HttpRequestView<'a>,
    #[serde(default, borrow)]
    pub response: Option<HttpResponseView<'a>>,
    #[serde(default, borrow)]
    pub chunk: Option<BodyChunkView<'a>>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
}

/// [`HttpRequest`], borrowed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HttpRequestView<'a> {
    pub method: &'a str,
    pub path: &'a str,
    #[serde(default)]
    pub query: Option<&'a str>,
    #[serde(default)]
    pub host: Option<&'a str>,
    #[serde(default)]
    pub client_ip: Option<&'a str>,
    #[serde(default, borrow, deserialize_with = "nil_as_empty")]
    pub headers: Vec<(&'a str, &'a str)>,
    #[serde(default, borrow, with = "serde_bytes")]
    pub body: Option<Cow<'a, [u8]>>,
}

/// [`HttpResponse`], borrowed.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct HttpResponseView<'a> {
    pub status: u16,
    #[serde(default, borrow, deserialize_with = "nil_as_empty")]
    pub headers: Vec<(&'a str, &'a str)>,
    #[serde(default, borrow, with = "serde_bytes")]
    pub body: Option<Cow<'a, [u8]>>,
}

/// [`BodyChunk`], borrowed.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct BodyChunkView<'a> {
    #[serde(borrow, with = "serde_bytes")]
    pub data: Cow<'a, [u8]>,
    pub end_of_stream: bool,
    #[serde(default, borrow, with = "serde_bytes")]
    pub state: Option<Cow<'a, [u8]>>,
}

impl PhaseRequestView<'_> {
    /// This request, copied into an owned [`PhaseRequest`].
    pub fn to_request(&self) -> PhaseRequest {
        let headers = |h: &[(&str, &str)]| {
            h.iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        let bytes = |b: &Option<Cow<'_, [u8]>>| b.as_ref().map(|b| b.to_vec());
        let r = &self.request;
        PhaseRequest {
            version: self.version,
            request_id: self.request_id.to_string(),
            session_id: self.session_id,
            phase: self.phase.to_string(),
            request: HttpRequest {
                method: r.method.to_string(),
                path: r.path.to_string(),
                query: r.query.map(str::to_string),
                host: r.host.map(str::to_string),
                client_ip: r.client_ip.map(str::to_string),
                headers: headers(&r.headers),
                body: bytes(&r.body),
            },
            response: self.response.as_ref().map(|r| HttpResponse {
                status: r.status,
                headers: headers(&r.headers),
                body: bytes(&r.body),
            }),
            chunk: self.chunk.as_ref().map(|c| BodyChunk {
                data: c.data.to_vec(),
                end_of_stream: c.end_of_stream,
                state: bytes(&c.state),
            }),
            duration_ms: self.duration_ms,
        }
    }
}
