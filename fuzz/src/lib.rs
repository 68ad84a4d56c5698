//! What the fuzz targets check, shared by the targets and the seed corpus
//! generator (`examples/seeds.rs`), which runs every seed through them.
//!
//! A request payload goes where the host sends every message it receives:
//! `peek_request_id` (read first, for refusals of oversized payloads), then
//! `decode_request_view` on each phase's subject, then `decode_request`.
//! Beyond "never panics", each check holds the decoder to the protocol:
//!
//! - the one-pass reader never changes what a message means: a payload is
//!   accepted exactly when serde reads it as a version-1 request of a known
//!   phase and none of its structs is written as an array, on that phase's
//!   subject only, and decodes to serde's value;
//! - every refusal is a 400 whose request id is the one the message carries
//!   (or the one `peek_request_id` reads when it cannot be decoded), and
//!   what a malformed payload is told does not depend on the subject;
//! - what decodes re-encodes, and the encoding decodes to the same request
//!   and re-encodes to the same bytes.
//!
//! A reply payload is decoded exactly as serde alone decodes it (the
//! one-pass reader changes nothing there either) and must, when
//! `decode_reply` takes it, re-encode (with the size-hinted writer, to the
//! bytes plain `rmp_serde` writes) and decode to the same reply.
//!
//! The `roundtrip` target goes the other way: it makes a request and a
//! reply of any content from its input, encodes them and checks that they
//! decode to themselves. Byte-level mutation rarely turns a valid message
//! into another valid one with a different integer width or string length,
//! so this is the target that exercises every encoding of every field.

use libfuzzer_sys::arbitrary::{self, Unstructured};
use natsplug_protocol::{
    self as protocol, Action, BodyChunk, HeaderMutations, HttpRequest, HttpResponse, MAX_NESTING,
    PROTOCOL_VERSION, Phase, PhaseReply, PhaseRequest, PhaseRequestView, RequestError,
};
use serde::Deserialize;

/// `payload` as serde alone reads a request, with the decoder's nesting limit.
fn serde_view(payload: &[u8]) -> Option<PhaseRequestView<'_>> {
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(payload);
    deserializer.set_max_depth(MAX_NESTING);
    PhaseRequestView::deserialize(&mut deserializer).ok()
}

/// `payload` as serde alone reads a reply, with the decoder's nesting limit.
fn serde_reply(payload: &[u8]) -> Option<PhaseReply> {
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(payload);
    deserializer.set_max_depth(MAX_NESTING);
    PhaseReply::deserialize(&mut deserializer).ok()
}

/// Whether `payload` starts with a MessagePack map marker.
fn is_map(payload: &[u8]) -> bool {
    matches!(payload.first(), Some(0x80..=0x8f | 0xde | 0xdf))
}

/// Runs a request payload through the host's decoding steps and checks
/// the results against each other (see the module documentation).
pub fn check_request(payload: &[u8]) {
    let peeked = protocol::peek_request_id(payload);
    // Serde would read a struct written as an array by field position;
    // the protocol refuses it.
    let expected = serde_view(payload).filter(|_| !protocol::struct_written_as_array(payload));

    let mut accepted = None;
    let mut refusals: Vec<(Phase, String, RequestError)> = Vec::new();
    for phase in Phase::ALL {
        match protocol::decode_request_view(payload, phase) {
            Ok(view) => {
                assert!(
                    accepted.is_none(),
                    "accepted on two phase subjects: {payload:?}"
                );
                accepted = Some((phase, view));
            }
            Err((request_id, error)) => {
                assert_eq!(error.code(), 400, "refused with {error:?}");
                assert!(!error.to_string().is_empty());
                refusals.push((phase, request_id, error));
            }
        }
    }

    match &expected {
        Some(request)
            if request.version == PROTOCOL_VERSION && Phase::parse(request.phase).is_some() =>
        {
            let (phase, view) = accepted
                .as_ref()
                .expect("serde reads a valid request that the decoder refuses");
            assert_eq!(phase.as_str(), request.phase);
            assert_eq!(view, request, "the decoder and serde disagree");
        }
        _ => assert!(
            accepted.is_none(),
            "the decoder accepts what serde refuses: {accepted:?}"
        ),
    }

    match &expected {
        // Read whole but refused (version, phase): the request's own id.
        Some(request) => {
            // A request whose top level is an array is refused above;
            // `peek_request_id` reads maps only.
            if is_map(payload) {
                assert_eq!(peeked, request.request_id, "peek_request_id disagrees");
            }
            for (phase, request_id, _) in &refusals {
                assert_eq!(request_id, request.request_id, "id refused on {phase}");
            }
        }
        // Unreadable: the id that can be read, and one answer on every subject.
        None => {
            for (phase, request_id, error) in &refusals {
                assert_eq!(*request_id, peeked, "id refused on {phase}");
                assert_eq!(error, &refusals[0].2, "answer on {phase}");
            }
        }
    }

    if let Some((phase, view)) = accepted {
        let owned = protocol::decode_request(payload, phase).expect("the view was accepted");
        assert_eq!(owned, view.to_request());
        let encoded = protocol::encode_request(&owned);
        let again = protocol::decode_request(&encoded, phase)
            .expect("a decoded request re-encodes to one that decodes");
        assert_eq!(again, owned, "the round trip changed the request");
        assert_eq!(protocol::encode_request(&again), encoded);
    }
}

/// Decodes a reply payload and, when it decodes, checks its round trip.
pub fn check_reply(payload: &[u8]) {
    let by_serde = serde_reply(payload);
    let reply = match protocol::decode_reply(payload) {
        Ok(reply) => reply,
        Err(error) => {
            assert!(!error.to_string().is_empty());
            assert_eq!(by_serde, None, "a reply serde reads was refused");
            return;
        }
    };
    assert_eq!(
        Some(&reply),
        by_serde.as_ref(),
        "the one-pass reader read a reply otherwise than serde"
    );
    let encoded = protocol::encode_reply(&reply);
    assert_eq!(
        encoded,
        rmp_serde::to_vec_named(&reply).expect("replies serialize"),
        "encode_reply writes other bytes than rmp_serde"
    );
    let again =
        protocol::decode_reply(&encoded).expect("a decoded reply re-encodes to one that decodes");
    assert_eq!(again, reply, "the round trip changed the reply");
}

/// Encodes `request` and checks that it decodes, on its phase's subject,
/// to the same request (or, not being a version-1 request of a known phase,
/// is refused with its id), then runs the encoding through [`check_request`].
pub fn check_encoded_request(request: &PhaseRequest) {
    let encoded = protocol::encode_request(request);
    let valid = request.version == PROTOCOL_VERSION;
    for phase in Phase::ALL {
        match protocol::decode_request(&encoded, phase) {
            Ok(decoded) => {
                assert!(
                    valid && phase.as_str() == request.phase,
                    "accepted on {phase}"
                );
                assert_eq!(&decoded, request, "an encoded request decodes to another");
            }
            Err((request_id, error)) => {
                assert!(
                    !valid || phase.as_str() != request.phase,
                    "an encoded request is refused on its own subject: {error}"
                );
                assert_eq!(request_id, request.request_id);
            }
        }
    }
    check_request(&encoded);
}

/// Encodes `reply` and checks that it decodes to the same reply, then runs
/// the encoding through [`check_reply`].
pub fn check_encoded_reply(reply: &PhaseReply) {
    let encoded = protocol::encode_reply(reply);
    let decoded = protocol::decode_reply(&encoded).expect("an encoded reply decodes");
    assert_eq!(&decoded, reply, "an encoded reply decodes to another");
    check_reply(&encoded);
}

/// A phase request made from fuzzer bytes: any strings, bytes and integers
/// (so every MessagePack width of each), version 1 and a known phase most
/// of the time, each optional part present or not.
pub fn arbitrary_request(u: &mut Unstructured<'_>) -> arbitrary::Result<PhaseRequest> {
    let version = if u.ratio(1, 16)? {
        u.arbitrary()?
    } else {
        PROTOCOL_VERSION
    };
    let phase = match u.int_in_range(0..=4)? {
        4 => u.arbitrary()?,
        known => Phase::ALL[known].as_str().to_string(),
    };
    let request_id = u.arbitrary()?;
    let session_id = u.arbitrary()?;
    let request = HttpRequest {
        method: u.arbitrary()?,
        path: u.arbitrary()?,
        query: u.arbitrary()?,
        host: u.arbitrary()?,
        client_ip: u.arbitrary()?,
        headers: u.arbitrary()?,
        body: u.arbitrary()?,
    };
    let response = if u.arbitrary()? {
        Some(HttpResponse {
            status: u.arbitrary()?,
            headers: u.arbitrary()?,
            body: u.arbitrary()?,
        })
    } else {
        None
    };
    let chunk = if u.arbitrary()? {
        Some(BodyChunk {
            data: u.arbitrary()?,
            end_of_stream: u.arbitrary()?,
            state: u.arbitrary()?,
        })
    } else {
        None
    };
    Ok(PhaseRequest {
        version,
        request_id,
        session_id,
        phase,
        request,
        response,
        chunk,
        duration_ms: u.arbitrary()?,
    })
}

/// A reply made from fuzzer bytes, every field free.
pub fn arbitrary_reply(u: &mut Unstructured<'_>) -> arbitrary::Result<PhaseReply> {
    let mutations = |u: &mut Unstructured<'_>| -> arbitrary::Result<Option<HeaderMutations>> {
        Ok(if u.arbitrary()? {
            Some(HeaderMutations {
                set: u.arbitrary()?,
                remove: u.arbitrary()?,
            })
        } else {
            None
        })
    };
    Ok(PhaseReply {
        version: u.arbitrary()?,
        request_id: u.arbitrary()?,
        action: *u.choose(&[Action::Next, Action::End, Action::Error])?,
        request_headers: mutations(u)?,
        response_headers: mutations(u)?,
        status: u.arbitrary()?,
        body: u.arbitrary()?,
        error: u.arbitrary()?,
        path: u.arbitrary()?,
        state: u.arbitrary()?,
    })
}

/// What the `roundtrip` target does with its input: a request, then a
/// reply, made from its bytes, each encoded and checked.
pub fn check_roundtrip(data: &[u8]) {
    let mut u = Unstructured::new(data);
    if let Ok(request) = arbitrary_request(&mut u) {
        check_encoded_request(&request);
    }
    if let Ok(reply) = arbitrary_reply(&mut u) {
        check_encoded_reply(&reply);
    }
}
