//! The wire protocol, version 1: the MessagePack messages exchanged on the
//! phase subjects. This module mirrors `docs/protocol.md`; nothing else in
//! the host touches MessagePack.
//!
//! Messages are MessagePack maps with named fields. Byte fields are `bin`.
//! Unknown fields are ignored and absent optional fields mean "none".

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::phase::Phase;

mod fast;

/// The protocol version this host speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Header carrying the error message of an error reply (NATS micro services).
pub const SERVICE_ERROR_HEADER: &str = "Nats-Service-Error";
/// Header carrying the numeric error code of an error reply.
pub const SERVICE_ERROR_CODE_HEADER: &str = "Nats-Service-Error-Code";

/// An HTTP header list: `[name, value]` pairs, order kept, duplicates allowed.
pub type HeaderList = Vec<(String, String)>;

/// A phase request, sent by the caller to `{prefix}.{plugin}.{phase}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseRequest {
    /// Protocol version; must be [`PROTOCOL_VERSION`].
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
fn nil_as_empty<'de, D, Headers>(deserializer: D) -> Result<Headers, D::Error>
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

/// A phase request borrowed from the bytes of its message: what the host
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

/// Why a request was refused before or while it ran, with the code sent in
/// `Nats-Service-Error-Code`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The payload is not a valid version-1 phase request (400).
    #[error("{0}")]
    BadRequest(String),
    /// The payload is larger than the host accepts (413).
    #[error("{0}")]
    TooLarge(String),
    /// The plugin failed: trap, panic, invalid result (500).
    #[error("{0}")]
    PluginFailed(String),
    /// The host is at its concurrency limit (503).
    #[error("{0}")]
    Overloaded(String),
    /// The plugin call ran past its deadline (504).
    #[error("{0}")]
    Timeout(String),
}

impl RequestError {
    /// Whether the plugin or a limit caused it (as opposed to the caller's
    /// input): these follow the plugin's failure mode.
    pub fn is_plugin_failure(&self) -> bool {
        matches!(
            self,
            RequestError::PluginFailed(_) | RequestError::Overloaded(_) | RequestError::Timeout(_)
        )
    }

    /// The numeric code for `Nats-Service-Error-Code`.
    pub fn code(&self) -> u16 {
        match self {
            RequestError::BadRequest(_) => 400,
            RequestError::TooLarge(_) => 413,
            RequestError::PluginFailed(_) => 500,
            RequestError::Overloaded(_) => 503,
            RequestError::Timeout(_) => 504,
        }
    }
}

/// The fields of a request that can still be read when the whole request
/// cannot: used to echo `request_id` and explain a version mismatch.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    version: Option<u16>,
    #[serde(default)]
    request_id: Option<String>,
}

/// Decode a phase request arriving on the subject of `phase`.
///
/// On failure returns the request id (when readable) and the error to send.
pub fn decode_request(
    payload: &[u8],
    phase: Phase,
) -> Result<PhaseRequest, (String, RequestError)> {
    decode_request_view(payload, phase).map(|view| view.to_request())
}

/// Decode a phase request arriving on the subject of `phase`, borrowing
/// from `payload`: the request path's decoder.
///
/// On failure returns the request id (when readable) and the error to send.
pub fn decode_request_view(
    payload: &[u8],
    phase: Phase,
) -> Result<PhaseRequestView<'_>, (String, RequestError)> {
    // The common shape is read in one pass; the rest, errors included,
    // by serde.
    let decoded = match fast::decode(payload) {
        Some(request) => Ok(request),
        None => from_message::<PhaseRequestView<'_>>(payload),
    };
    match decoded {
        Ok(request) => {
            if request.version != PROTOCOL_VERSION {
                return Err((
                    request.request_id.to_string(),
                    unsupported_version(request.version),
                ));
            }
            if request.phase != phase.as_str() {
                let message = match Phase::parse(request.phase) {
                    Some(_) => format!(
                        "the request's phase `{}` does not match the subject's phase `{}`",
                        request.phase, phase
                    ),
                    None => format!(
                        "unknown phase `{}`: expected one of {}",
                        request.phase,
                        Phase::ALL.map(|p| p.as_str()).join(", ")
                    ),
                };
                return Err((
                    request.request_id.to_string(),
                    RequestError::BadRequest(message),
                ));
            }
            Ok(request)
        }
        Err(decode_error) => {
            let envelope = from_message::<Envelope>(payload).ok();
            let request_id = envelope
                .as_ref()
                .and_then(|e| e.request_id.clone())
                .unwrap_or_default();
            let error = match envelope.and_then(|e| e.version) {
                Some(version) if version != PROTOCOL_VERSION => unsupported_version(version),
                _ => RequestError::BadRequest(format!(
                    "malformed phase request: {decode_error} (expected a MessagePack map as described in docs/protocol.md)"
                )),
            };
            Err((request_id, error))
        }
    }
}

/// The `request_id` of a payload, when it can be read; empty otherwise.
/// Reads only that field, for replies to requests refused unread.
pub fn peek_request_id(payload: &[u8]) -> String {
    from_message::<Envelope>(payload)
        .ok()
        .and_then(|e| e.request_id)
        .unwrap_or_default()
}

fn unsupported_version(version: u16) -> RequestError {
    RequestError::BadRequest(format!(
        "unsupported protocol version {version}: this host speaks version {PROTOCOL_VERSION}"
    ))
}

/// Encode a phase request (for callers and tests).
pub fn encode_request(request: &PhaseRequest) -> Vec<u8> {
    rmp_serde::to_vec_named(request).expect("phase requests always serialize")
}

/// Encode a reply.
pub fn encode_reply(reply: &PhaseReply) -> Vec<u8> {
    // Sized up front: growing the buffer field by field costs more than
    // the encoding itself.
    let mut buffer = Vec::with_capacity(reply_size_hint(reply));
    rmp_serde::encode::write_named(&mut buffer, reply).expect("phase replies always serialize");
    buffer
}

/// A bound, give or take a few bytes, on the encoded size of `reply`.
fn reply_size_hint(reply: &PhaseReply) -> usize {
    // Field names, markers and lengths of each value.
    const FIELD: usize = 24;
    let mutations = |m: &Option<HeaderMutations>| {
        m.as_ref().map_or(0, |m| {
            2 * FIELD
                + m.set
                    .iter()
                    .map(|(n, v)| n.len() + v.len() + 12)
                    .sum::<usize>()
                + m.remove.iter().map(|n| n.len() + 6).sum::<usize>()
        })
    };
    let text = |t: &Option<String>| t.as_ref().map_or(0, |t| FIELD + t.len());
    let bytes = |b: &Option<Vec<u8>>| b.as_ref().map_or(0, |b| FIELD + b.len());
    3 * FIELD
        + reply.request_id.len()
        + mutations(&reply.request_headers)
        + mutations(&reply.response_headers)
        + reply.status.map_or(0, |_| FIELD)
        + bytes(&reply.body)
        + text(&reply.error)
        + text(&reply.path)
        + bytes(&reply.state)
}

/// Decode a reply (for callers and tests).
pub fn decode_reply(payload: &[u8]) -> Result<PhaseReply, rmp_serde::decode::Error> {
    from_message(payload)
}

/// How deeply arrays and maps may nest in a message. A request is four
/// levels deep; the limit keeps a hostile message from exhausting the
/// decoding thread's stack while unknown fields are skipped.
pub const MAX_NESTING: usize = 64;

/// Decode `payload` with serde, refusing nesting beyond [`MAX_NESTING`].
fn from_message<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(payload);
    deserializer.set_max_depth(MAX_NESTING);
    T::deserialize(&mut deserializer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PhaseRequest {
        PhaseRequest {
            version: 1,
            request_id: "r-1".into(),
            session_id: Some(7),
            phase: "request_filter".into(),
            request: HttpRequest {
                method: "POST".into(),
                path: "/x".into(),
                query: Some("a=1".into()),
                host: None,
                client_ip: Some("10.0.0.1".into()),
                headers: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
                body: Some(b"hello".to_vec()),
            },
            response: None,
            chunk: None,
            duration_ms: None,
        }
    }

    #[test]
    fn request_round_trips() {
        let request = sample();
        let bytes = encode_request(&request);
        assert_eq!(
            decode_request(&bytes, Phase::RequestFilter).unwrap(),
            request
        );
    }

    #[test]
    fn the_view_borrows_from_the_message() {
        let bytes = encode_request(&sample());
        let view = decode_request_view(&bytes, Phase::RequestFilter).unwrap();
        let inside = |s: &[u8]| bytes.as_ptr_range().contains(&s.as_ptr());
        assert!(inside(view.request_id.as_bytes()));
        assert!(inside(view.request.headers[0].1.as_bytes()));
        assert!(matches!(view.request.body, Some(Cow::Borrowed(b)) if inside(b)));
        assert_eq!(view.to_request(), sample());

        let full = PhaseRequest {
            phase: "response_body_filter".into(),
            response: Some(HttpResponse {
                status: 200,
                headers: vec![("content-type".into(), "text/plain".into())],
                body: Some(b"body".to_vec()),
            }),
            chunk: Some(BodyChunk {
                data: b"chunk".to_vec(),
                end_of_stream: true,
                state: Some(vec![0, 255]),
            }),
            duration_ms: Some(12),
            ..sample()
        };
        let bytes = encode_request(&full);
        let view = decode_request_view(&bytes, Phase::ResponseBodyFilter).unwrap();
        assert_eq!(view.to_request(), full);
    }

    #[test]
    fn bodies_sent_as_arrays_of_integers_are_read_too() {
        #[derive(Serialize)]
        struct Lenient<'a> {
            version: u16,
            request_id: &'a str,
            phase: &'a str,
            request: LenientRequest<'a>,
        }
        #[derive(Serialize)]
        struct LenientRequest<'a> {
            method: &'a str,
            path: &'a str,
            headers: Option<Vec<(String, String)>>,
            body: Vec<u8>,
        }
        let bytes = rmp_serde::to_vec_named(&Lenient {
            version: 1,
            request_id: "r",
            phase: "request_filter",
            request: LenientRequest {
                method: "GET",
                path: "/",
                headers: None,
                body: vec![1, 2, 3],
            },
        })
        .unwrap();
        let request = decode_request(&bytes, Phase::RequestFilter).unwrap();
        assert_eq!(request.request.body, Some(vec![1, 2, 3]));
        assert!(request.request.headers.is_empty());
    }

    #[test]
    fn byte_fields_are_msgpack_bin() {
        let bytes = encode_request(&sample());
        // bin 8 marker (0xc4), length 5, then the raw bytes.
        let needle = [0xc4, 5, b'h', b'e', b'l', b'l', b'o'];
        assert!(bytes.windows(needle.len()).any(|w| w == needle));
        let reply = PhaseReply {
            body: Some(vec![1, 2, 3]),
            ..PhaseReply::next("r")
        };
        let bytes = encode_reply(&reply);
        assert!(bytes.windows(5).any(|w| w == [0xc4, 3, 1, 2, 3]));
        assert_eq!(decode_reply(&bytes).unwrap(), reply);
    }

    #[test]
    fn unknown_fields_are_ignored_and_absent_options_are_none() {
        #[derive(Serialize)]
        struct Extra<'a> {
            version: u16,
            request_id: &'a str,
            phase: &'a str,
            request: HttpRequest,
            from_the_future: Vec<u32>,
        }
        let bytes = rmp_serde::to_vec_named(&Extra {
            version: 1,
            request_id: "r-2",
            phase: "logging",
            request: HttpRequest {
                method: "GET".into(),
                path: "/".into(),
                ..Default::default()
            },
            from_the_future: vec![1, 2],
        })
        .unwrap();
        let request = decode_request(&bytes, Phase::Logging).unwrap();
        assert_eq!(request.request_id, "r-2");
        assert_eq!(request.session_id, None);
        assert_eq!(request.response, None);
        assert_eq!(request.request.body, None);
    }

    #[test]
    fn reply_action_is_a_lowercase_string() {
        let bytes = encode_reply(&PhaseReply::error("r", "boom"));
        // fixstr "action" followed by fixstr "error".
        let needle = b"\xa6action\xa5error";
        assert!(bytes.windows(needle.len()).any(|w| w == needle));
    }

    #[test]
    fn the_size_hint_covers_the_encoding() {
        let long = "v".repeat(300);
        let full = PhaseReply {
            action: Action::End,
            request_headers: Some(HeaderMutations {
                set: vec![("x-a".into(), long.clone()), ("b".into(), String::new())],
                remove: vec!["c".into(), long.clone()],
            }),
            response_headers: Some(HeaderMutations::default()),
            status: Some(65535),
            body: Some(vec![0; 70_000]),
            error: Some(long.clone()),
            path: Some(format!("/{long}")),
            state: Some(vec![1; 300]),
            ..PhaseReply::next(long.clone())
        };
        for reply in [PhaseReply::next(""), PhaseReply::error("r", "boom"), full] {
            let encoded = rmp_serde::to_vec_named(&reply).unwrap();
            assert!(reply_size_hint(&reply) >= encoded.len());
            assert_eq!(encode_reply(&reply), encoded);
        }
    }

    #[test]
    fn errors_name_the_problem() {
        let (_, error) = decode_request(b"\xc1garbage", Phase::RequestFilter).unwrap_err();
        assert_eq!(error.code(), 400);
        assert!(error.to_string().starts_with("malformed phase request"));

        let mut future = sample();
        future.version = 2;
        let (id, error) =
            decode_request(&encode_request(&future), Phase::RequestFilter).unwrap_err();
        assert_eq!(id, "r-1");
        assert_eq!(
            error.to_string(),
            "unsupported protocol version 2: this host speaks version 1"
        );

        let (_, error) = decode_request(&encode_request(&sample()), Phase::Logging).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the request's phase `request_filter` does not match the subject's phase `logging`"
        );

        #[derive(Serialize)]
        struct Missing<'a> {
            version: u16,
            request_id: &'a str,
            phase: &'a str,
        }
        let bytes = rmp_serde::to_vec_named(&Missing {
            version: 1,
            request_id: "r-3",
            phase: "logging",
        })
        .unwrap();
        let (id, error) = decode_request(&bytes, Phase::Logging).unwrap_err();
        assert_eq!(id, "r-3");
        assert!(
            error.to_string().contains("missing field `request`"),
            "{error}"
        );
    }

    mod fuzz {
        //! The decoder against arbitrary input: it may refuse, never panic.
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                for phase in Phase::ALL {
                    let _ = decode_request(&bytes, phase);
                }
                let _ = peek_request_id(&bytes);
                let _ = decode_reply(&bytes);
            }

            #[test]
            fn mutated_valid_requests_never_panic(
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                cut in any::<prop::sample::Index>(),
            ) {
                let mut bytes = encode_request(&sample());
                for (index, value) in flips {
                    let at = index.index(bytes.len());
                    bytes[at] = value;
                }
                let keep = cut.index(bytes.len() + 1);
                bytes.truncate(keep);
                let _ = decode_request(&bytes, Phase::RequestFilter);
            }
        }

        fn sample() -> PhaseRequest {
            super::sample()
        }
    }

    mod fast_reader {
        //! The one-pass reader against serde: it reads every request a
        //! client library writes, and whenever it answers, it answers
        //! exactly what serde would.
        use super::super::*;
        use proptest::option::of;
        use proptest::prelude::*;

        /// Any text, including the empty string and multi-byte characters.
        fn text() -> impl Strategy<Value = String> {
            prop_oneof![".{0,12}", "[a-z-]{0,40}", ".{30,300}"]
        }

        fn headers() -> impl Strategy<Value = HeaderList> {
            proptest::collection::vec((text(), text()), 0..20)
        }

        fn bytes() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(any::<u8>(), 0..300)
        }

        fn request() -> impl Strategy<Value = PhaseRequest> {
            let http = (
                text(),
                text(),
                of(text()),
                of(text()),
                of(text()),
                headers(),
                of(bytes()),
            )
                .prop_map(
                    |(method, path, query, host, client_ip, headers, body)| HttpRequest {
                        method,
                        path,
                        query,
                        host,
                        client_ip,
                        headers,
                        body,
                    },
                );
            let response =
                (any::<u16>(), headers(), of(bytes())).prop_map(|(status, headers, body)| {
                    HttpResponse {
                        status,
                        headers,
                        body,
                    }
                });
            let chunk =
                (bytes(), any::<bool>(), of(bytes())).prop_map(|(data, end_of_stream, state)| {
                    BodyChunk {
                        data,
                        end_of_stream,
                        state,
                    }
                });
            (
                any::<u16>(),
                text(),
                of(any::<u64>()),
                prop::sample::select(Phase::ALL.map(|p| p.as_str().to_string()).to_vec()),
                http,
                of(response),
                of(chunk),
                of(any::<u64>()),
            )
                .prop_map(
                    |(
                        version,
                        request_id,
                        session_id,
                        phase,
                        request,
                        response,
                        chunk,
                        duration_ms,
                    )| {
                        PhaseRequest {
                            version,
                            request_id,
                            session_id,
                            phase,
                            request,
                            response,
                            chunk,
                            duration_ms,
                        }
                    },
                )
        }

        /// A request with a field no version of the protocol defines.
        #[derive(Serialize)]
        struct WithUnknownField {
            #[serde(flatten)]
            request: PhaseRequest,
            from_the_future: FutureField,
        }

        /// A value of every MessagePack kind, nested in a map.
        #[derive(Serialize)]
        struct FutureField {
            number: i64,
            float: f64,
            flag: Option<bool>,
            #[serde(with = "serde_bytes")]
            bytes: Vec<u8>,
            nested: Vec<(String, Vec<u8>)>,
            headers: HeaderList,
        }

        /// Holds the reader to serde's answer for `bytes`.
        fn agrees_with_serde(bytes: &[u8]) -> Result<(), TestCaseError> {
            if let Some(view) = fast::decode(bytes) {
                let by_serde = from_message::<PhaseRequestView<'_>>(bytes);
                prop_assert_eq!(Some(view), by_serde.ok());
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn reads_every_request_a_client_writes(request in request()) {
                let bytes = encode_request(&request);
                let view = fast::decode(&bytes);
                prop_assert!(view.is_some());
                prop_assert_eq!(view.unwrap().to_request(), request);
            }

            #[test]
            fn skips_unknown_fields_of_any_shape(
                request in request(),
                number in any::<i64>(),
                float in any::<f64>(),
                flag in of(any::<bool>()),
                raw in bytes(),
                nested in proptest::collection::vec((text(), bytes()), 0..4),
                headers in headers(),
            ) {
                let bytes = rmp_serde::to_vec_named(&WithUnknownField {
                    request: request.clone(),
                    from_the_future: FutureField { number, float, flag, bytes: raw, nested, headers },
                }).unwrap();
                let view = fast::decode(&bytes);
                prop_assert!(view.is_some());
                prop_assert_eq!(view.unwrap().to_request(), request);
            }

            #[test]
            fn answers_as_serde_does_on_damaged_requests(
                request in request(),
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
                cut in any::<prop::sample::Index>(),
            ) {
                let mut bytes = encode_request(&request);
                for (index, value) in flips {
                    let at = index.index(bytes.len());
                    bytes[at] = value;
                }
                agrees_with_serde(&bytes)?;
                bytes.truncate(cut.index(bytes.len() + 1));
                agrees_with_serde(&bytes)?;
            }

            #[test]
            fn answers_as_serde_does_on_arbitrary_bytes(
                bytes in proptest::collection::vec(any::<u8>(), 0..512),
            ) {
                agrees_with_serde(&bytes)?;
            }
        }

        #[test]
        fn leaves_lenient_forms_and_errors_to_serde() {
            let request = super::sample();
            // The version as a signed integer, as some libraries write
            // small numbers.
            let plain = encode_request(&request);
            let at = plain
                .windows(9)
                .position(|w| w == b"\xa7version\x01")
                .unwrap();
            let signed = [&plain[..at + 8], b"\xd0", &plain[at + 8..]].concat();
            assert_eq!(fast::decode(&signed), None);
            assert_eq!(
                decode_request(&signed, Phase::RequestFilter).unwrap(),
                request
            );
            // A field given twice.
            let mut twice = encode_request(&request);
            twice[0] += 1;
            twice.extend(rmp_serde::to_vec("version").unwrap());
            twice.push(1);
            assert_eq!(fast::decode(&twice), None);
            // An unknown field nested beyond serde's depth limit.
            let mut deep = encode_request(&request);
            deep[0] += 1;
            deep.extend(rmp_serde::to_vec("from_the_future").unwrap());
            deep.extend([0x91; 2000]);
            deep.push(0xc0);
            assert_eq!(fast::decode(&deep), None);
            let (id, error) = decode_request(&deep, Phase::RequestFilter).unwrap_err();
            assert_eq!((id.as_str(), error.code()), ("", 400));
            assert!(
                error.to_string().contains("depth limit exceeded"),
                "{error}"
            );
            // Nesting within the limit is skipped, by both readers.
            let mut nested = encode_request(&request);
            nested[0] += 1;
            nested.extend(rmp_serde::to_vec("from_the_future").unwrap());
            nested.extend([0x91; 40]);
            nested.push(0xc0);
            assert_eq!(fast::decode(&nested).unwrap().to_request(), request);
            assert_eq!(
                from_message::<PhaseRequestView<'_>>(&nested)
                    .unwrap()
                    .to_request(),
                request
            );
            // Trailing bytes after the map.
            let mut trailing = encode_request(&request);
            trailing.push(0xc0);
            assert_eq!(fast::decode(&trailing), None);
        }
    }
}
