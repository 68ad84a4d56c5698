//! Unit tests of the protocol: round trips, field forms, and the errors
//! each mistake gets.

mod fast_reader;
mod fuzz;

use std::borrow::Cow;

use crate::encode::reply_size_hint;
use crate::*;
use serde::Serialize;

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
    let (id, error) = decode_request(&encode_request(&future), Phase::RequestFilter).unwrap_err();
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

mod encoders {
    use crate::*;
    use proptest::prelude::*;

    /// Text and bytes of every length class MessagePack has: fix, 8-bit
    /// and 16-bit lengths.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z-]{0,40}",
            (0usize..3).prop_map(|class| "x".repeat([255, 256, 70_000][class])),
        ]
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            (0usize..2).prop_map(|class| vec![7; [65_535, 65_536][class]]),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// The hand-written encoder writes exactly what serde would: the
        /// wire format stays the one docs/protocol.md describes.
        #[test]
        fn replies_are_encoded_as_rmp_serde_encodes_them(
            reply in super::fast_reader::reply_of(text, bytes),
        ) {
            let by_serde = rmp_serde::to_vec_named(&reply).unwrap();
            prop_assert_eq!(encode_reply(&reply), by_serde);
        }

        /// Likewise for requests, every optional field set or not.
        #[test]
        fn requests_are_encoded_as_rmp_serde_encodes_them(
            request in super::fast_reader::request_of(text, bytes),
        ) {
            let by_serde = rmp_serde::to_vec_named(&request).unwrap();
            prop_assert_eq!(encode_request(&request), by_serde);
        }
    }
}
