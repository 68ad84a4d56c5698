//! The one-pass reader against serde: it reads every request a
//! client library writes, and whenever it answers, it answers
//! exactly what serde would.
use crate::decode::from_message;
use crate::fast;
use crate::*;
use proptest::option::of;
use proptest::prelude::*;
use serde::Serialize;

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
    request_of(text, bytes)
}

/// Any phase request, every optional field set or not, its texts from
/// `text` and its bytes from `bytes`.
pub(super) fn request_of<T, B>(
    text: impl Fn() -> T,
    bytes: impl Fn() -> B,
) -> impl Strategy<Value = PhaseRequest>
where
    T: Strategy<Value = String> + 'static,
    B: Strategy<Value = Vec<u8>> + 'static,
{
    let headers = || proptest::collection::vec((text(), text()), 0..20);
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
        (any::<u16>(), headers(), of(bytes())).prop_map(|(status, headers, body)| HttpResponse {
            status,
            headers,
            body,
        });
    let chunk =
        (bytes(), any::<bool>(), of(bytes())).prop_map(|(data, end_of_stream, state)| BodyChunk {
            data,
            end_of_stream,
            state,
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
            |(version, request_id, session_id, phase, request, response, chunk, duration_ms)| {
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

/// Holds `agrees` true of `bytes` with `flips` written over it, then of
/// what is left of it cut at `cut`.
fn damaged(
    mut bytes: Vec<u8>,
    flips: Vec<(prop::sample::Index, u8)>,
    cut: prop::sample::Index,
    agrees: fn(&[u8]) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    for (index, value) in flips {
        let at = index.index(bytes.len());
        bytes[at] = value;
    }
    agrees(&bytes)?;
    bytes.truncate(cut.index(bytes.len() + 1));
    agrees(&bytes)
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
        damaged(encode_request(&request), flips, cut, agrees_with_serde)?;
    }

    #[test]
    fn answers_as_serde_does_on_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        agrees_with_serde(&bytes)?;
        reply_agrees_with_serde(&bytes)?;
    }
}

#[test]
fn a_struct_written_as_an_array_is_refused_with_a_400() {
    let request = PhaseRequest {
        response: Some(HttpResponse {
            status: 200,
            headers: vec![("x".into(), "y".into())],
            body: None,
        }),
        ..super::sample()
    };
    let named = encode_request(&request);
    assert!(!crate::struct_written_as_array(&named));
    // rmp-serde's `to_vec` writes every struct as an array of its fields.
    let positional = rmp_serde::to_vec(&request).unwrap();
    // Each of the three nested structs as an array inside a map.
    let nested = ["request", "response", "chunk"].map(|field| {
        let mut value = required_fields(&request);
        value.push((field.to_string(), vec![0x90]));
        encode_map(value)
    });
    for payload in std::iter::once(&positional).chain(&nested) {
        assert!(crate::struct_written_as_array(payload), "{payload:?}");
        assert_eq!(fast::decode(payload), None);
        let (id, error) = decode_request(payload, Phase::RequestFilter).unwrap_err();
        assert_eq!(error.code(), 400);
        assert!(
            error
                .to_string()
                .starts_with("malformed phase request: a request (or its `request`, `response` or `chunk`) written as an array"),
            "{error}"
        );
        // The id is read from a map, as for any refusal; not from an array.
        let expected_id = if payload == &positional { "" } else { "r-1" };
        assert_eq!(id, expected_id);
    }
}

/// The top-level fields a request cannot do without but `request`, as
/// (name, encoded value) pairs.
fn required_fields(request: &PhaseRequest) -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "version".into(),
            rmp_serde::to_vec(&request.version).unwrap(),
        ),
        (
            "request_id".into(),
            rmp_serde::to_vec(&request.request_id).unwrap(),
        ),
        ("phase".into(), rmp_serde::to_vec(&request.phase).unwrap()),
    ]
}

/// A MessagePack map of up to 15 `pairs`, values already encoded.
fn encode_map(pairs: Vec<(String, Vec<u8>)>) -> Vec<u8> {
    let mut out = vec![0x80 | pairs.len() as u8];
    for (name, value) in pairs {
        out.extend(rmp_serde::to_vec(&name).unwrap());
        out.extend(value);
    }
    out
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

fn reply() -> impl Strategy<Value = PhaseReply> {
    reply_of(text, bytes)
}

/// Any phase reply, every optional field set or not, its texts from
/// `text` and its bytes from `bytes`.
pub(super) fn reply_of<T, B>(
    text: impl Fn() -> T,
    bytes: impl Fn() -> B,
) -> impl Strategy<Value = PhaseReply>
where
    T: Strategy<Value = String> + 'static,
    B: Strategy<Value = Vec<u8>> + 'static,
{
    let mutations = || {
        (
            proptest::collection::vec((text(), text()), 0..20),
            proptest::collection::vec(text(), 0..20),
        )
            .prop_map(|(set, remove)| HeaderMutations { set, remove })
    };
    (
        (
            any::<u16>(),
            text(),
            prop::sample::select(vec![Action::Next, Action::End, Action::Error]),
        ),
        (of(mutations()), of(mutations()), of(any::<u16>())),
        (of(bytes()), of(text()), of(text()), of(bytes())),
    )
        .prop_map(
            |(
                (version, request_id, action),
                (request_headers, response_headers, status),
                (body, error, path, state),
            )| PhaseReply {
                version,
                request_id,
                action,
                request_headers,
                response_headers,
                status,
                body,
                error,
                path,
                state,
            },
        )
}

/// A reply with a field no version of the protocol defines.
#[derive(Serialize)]
struct ReplyWithUnknownField {
    #[serde(flatten)]
    reply: PhaseReply,
    from_the_future: FutureField,
}

/// Holds the reply reader to serde's answer for `bytes`.
fn reply_agrees_with_serde(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Some(reply) = fast::decode_reply(bytes) {
        prop_assert_eq!(Some(reply), from_message::<PhaseReply>(bytes).ok());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn reads_every_reply_a_host_writes(reply in reply()) {
        let bytes = encode_reply(&reply);
        prop_assert_eq!(fast::decode_reply(&bytes), Some(reply.clone()));
        // As rmp-serde writes it too.
        let named = rmp_serde::to_vec_named(&reply).unwrap();
        prop_assert_eq!(fast::decode_reply(&named), Some(reply));
    }

    #[test]
    fn skips_unknown_reply_fields_of_any_shape(
        reply in reply(),
        number in any::<i64>(),
        float in any::<f64>(),
        flag in of(any::<bool>()),
        raw in bytes(),
        nested in proptest::collection::vec((text(), bytes()), 0..4),
        headers in headers(),
    ) {
        let bytes = rmp_serde::to_vec_named(&ReplyWithUnknownField {
            reply: reply.clone(),
            from_the_future: FutureField { number, float, flag, bytes: raw, nested, headers },
        }).unwrap();
        prop_assert_eq!(fast::decode_reply(&bytes), Some(reply));
    }

    #[test]
    fn answers_as_serde_does_on_damaged_replies(
        reply in reply(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        damaged(encode_reply(&reply), flips, cut, reply_agrees_with_serde)?;
    }
}

#[test]
fn leaves_lenient_reply_forms_to_serde() {
    let reply = PhaseReply {
        status: Some(200),
        body: Some(b"ok".to_vec()),
        ..PhaseReply::next("r-1")
    };
    // A body written as a `str`, which serde reads as its bytes.
    let plain = encode_reply(&reply);
    let at = plain.windows(4).position(|w| w == b"\xc4\x02ok").unwrap();
    let as_text = [&plain[..at], b"\xa2ok", &plain[at + 4..]].concat();
    assert_eq!(fast::decode_reply(&as_text), None);
    assert_eq!(decode_reply(&as_text).unwrap(), reply);
    // A field given twice: serde's error.
    let mut twice = encode_reply(&reply);
    twice[0] += 1;
    twice.extend(rmp_serde::to_vec("status").unwrap());
    twice.push(7);
    assert_eq!(fast::decode_reply(&twice), None);
    assert!(
        decode_reply(&twice)
            .unwrap_err()
            .to_string()
            .contains("duplicate field"),
    );
}
