//! Reading messages: phase requests (the one-pass reader first, serde for
//! the rest and for the wording of errors) and replies.

use serde::Deserialize;

use crate::PROTOCOL_VERSION;
use crate::error::RequestError;
use crate::fast;
use crate::message::PhaseRequest;
use crate::phase::Phase;
use crate::reply::PhaseReply;
use crate::view::PhaseRequestView;

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
        None if fast::struct_written_as_array(payload) => {
            return Err((
                peek_request_id(payload),
                RequestError::BadRequest(
                    "malformed phase request: a request (or its `request`, `response` or `chunk`) \
                     written as an array; the protocol writes each as a map of named fields \
                     (with rmp-serde, `to_vec_named`; see docs/protocol.md)"
                        .to_string(),
                ),
            ));
        }
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

/// Decode a reply (for callers and tests): the common shape in one pass,
/// the rest, errors included, by serde.
pub fn decode_reply(payload: &[u8]) -> Result<PhaseReply, rmp_serde::decode::Error> {
    match fast::decode_reply(payload) {
        Some(reply) => Ok(reply),
        None => from_message(payload),
    }
}

/// How deeply arrays and maps may nest in a message. A request is four
/// levels deep; the limit keeps a hostile message from exhausting the
/// decoding thread's stack while unknown fields are skipped.
pub const MAX_NESTING: usize = 64;

/// Decode `payload` with serde, refusing nesting beyond [`MAX_NESTING`].
pub(crate) fn from_message<'a, T: Deserialize<'a>>(
    payload: &'a [u8],
) -> Result<T, rmp_serde::decode::Error> {
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(payload);
    deserializer.set_max_depth(MAX_NESTING);
    T::deserialize(&mut deserializer)
}
