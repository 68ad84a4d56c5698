//! Writes the seed corpus of the fuzz targets, `fuzz/corpus/<target>/`,
//! one file per seed, named after what it holds.
//! The seeds are what the test suite sends (a request of every phase, the
//! lenient forms serde takes, the refusals of tests/bad_input.rs) and the
//! replies the host writes, plus a few malformed messages; and, for the
//! `roundtrip` target, which makes its messages out of any bytes, a few
//! inputs of fixed pseudo-random bytes. Each seed is run through its
//! target's checks before it is written.
//!
//! `cargo run --example seeds` (in `fuzz/`) rewrites the seeds; files of
//! other names in the corpus directories (crashes added there) are kept.

use std::path::Path;

use natsplug_protocol::{
    Action, BodyChunk, HeaderMutations, HttpRequest, HttpResponse, PROTOCOL_VERSION, PhaseReply,
    PhaseRequest, encode_reply, encode_request,
};
use natsplug_protocol_fuzz::{check_reply, check_request, check_roundtrip};
use serde::Serialize;

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// The request the tests' `request()` helper builds.
fn minimal(phase: &str, request_id: &str) -> PhaseRequest {
    PhaseRequest {
        version: PROTOCOL_VERSION,
        request_id: request_id.into(),
        session_id: None,
        phase: phase.into(),
        request: HttpRequest {
            method: "GET".into(),
            path: "/".into(),
            ..Default::default()
        },
        response: None,
        chunk: None,
        duration_ms: None,
    }
}

/// A request with every field of the HTTP request set.
fn full_request(phase: &str) -> PhaseRequest {
    PhaseRequest {
        session_id: Some(7),
        request: HttpRequest {
            method: "POST".into(),
            path: "/api/items".into(),
            query: Some("a=1&b=2".into()),
            host: Some("example.test".into()),
            client_ip: Some("10.0.0.1".into()),
            headers: headers(&[
                ("authorization", "Bearer s3cret"),
                ("x-tag", "a"),
                ("x-tag", "b"),
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
            ]),
            body: Some(b"{\"name\":\"x\"}".to_vec()),
        },
        ..minimal(phase, "r-1")
    }
}

fn response() -> HttpResponse {
    HttpResponse {
        status: 200,
        headers: headers(&[("content-type", "text/plain"), ("server", "up")]),
        body: Some(b"hello from upstream".to_vec()),
    }
}

fn requests() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = vec![
        (
            "request_filter-minimal",
            encode_request(&minimal("request_filter", "a")),
        ),
        (
            "request_filter-full",
            encode_request(&full_request("request_filter")),
        ),
        (
            "request_filter-unicode",
            encode_request(&PhaseRequest {
                request: HttpRequest {
                    method: String::new(),
                    path: "/caf\u{e9}/\u{1f600}".into(),
                    headers: headers(&[("", ""), ("x-name", "J\u{fc}rgen")]),
                    body: Some(Vec::new()),
                    ..Default::default()
                },
                ..minimal("request_filter", "")
            }),
        ),
        (
            "response_filter",
            encode_request(&PhaseRequest {
                response: Some(response()),
                ..full_request("response_filter")
            }),
        ),
        (
            "response_body_filter-first-chunk",
            encode_request(&PhaseRequest {
                response: Some(response()),
                chunk: Some(BodyChunk {
                    data: b"chunk one".to_vec(),
                    end_of_stream: false,
                    state: None,
                }),
                ..full_request("response_body_filter")
            }),
        ),
        (
            "response_body_filter-last-chunk",
            encode_request(&PhaseRequest {
                response: Some(HttpResponse {
                    body: None,
                    ..response()
                }),
                chunk: Some(BodyChunk {
                    data: vec![0, 1, 2, 255],
                    end_of_stream: true,
                    state: Some(vec![0, 255]),
                }),
                ..minimal("response_body_filter", "c-2")
            }),
        ),
        (
            "logging",
            encode_request(&PhaseRequest {
                response: Some(response()),
                duration_ms: Some(u64::MAX),
                session_id: Some(u64::MAX),
                ..full_request("logging")
            }),
        ),
        (
            "request_filter-many-headers",
            encode_request(&PhaseRequest {
                request: HttpRequest {
                    headers: (0..40)
                        .map(|i| (format!("x-header-{i}"), "v".repeat(i)))
                        .collect(),
                    ..full_request("request_filter").request
                },
                ..minimal("request_filter", "h")
            }),
        ),
        // Integers of each MessagePack width, strings of each length form,
        // a bin 16 body and a map 16 (unknown fields make up the count).
        (
            "logging-widths-8-16",
            encode_request(&PhaseRequest {
                session_id: Some(200),
                duration_ms: Some(40_000),
                response: Some(HttpResponse {
                    status: 40_000,
                    ..response()
                }),
                ..minimal("logging", &"i".repeat(40))
            }),
        ),
        (
            "logging-widths-32-64",
            encode_request(&PhaseRequest {
                session_id: Some(70_000),
                duration_ms: Some(1 << 40),
                request: HttpRequest {
                    path: format!("/{}", "p".repeat(300)),
                    body: Some(vec![7; 300]),
                    ..full_request("logging").request
                },
                ..minimal("logging", "w")
            }),
        ),
        // The refusals of tests/bad_input.rs.
        (
            "future-version",
            encode_request(&PhaseRequest {
                version: 2,
                ..minimal("request_filter", "v-2")
            }),
        ),
        ("unknown-phase", encode_request(&minimal("teleport", "p-1"))),
        // Structs written as arrays (every field present, so none shifts).
        (
            "array-form",
            rmp_serde::to_vec(&PhaseRequest {
                response: Some(response()),
                chunk: Some(BodyChunk {
                    data: b"x".to_vec(),
                    end_of_stream: true,
                    state: Some(b"s".to_vec()),
                }),
                duration_ms: Some(3),
                ..full_request("response_body_filter")
            })
            .expect("serializes"),
        ),
    ];

    #[derive(Serialize)]
    struct V3<'a> {
        version: u16,
        request_id: &'a str,
        envelope: Vec<u8>,
    }
    seeds.push((
        "v3-shape",
        rmp_serde::to_vec_named(&V3 {
            version: 3,
            request_id: "v-3",
            envelope: vec![1],
        })
        .expect("serializes"),
    ));

    #[derive(Serialize)]
    struct NoRequest<'a> {
        version: u16,
        request_id: &'a str,
        phase: &'a str,
    }
    seeds.push((
        "missing-request",
        rmp_serde::to_vec_named(&NoRequest {
            version: 1,
            request_id: "m-1",
            phase: "request_filter",
        })
        .expect("serializes"),
    ));

    // Bodies as arrays of integers, nil headers, and an unknown field.
    #[derive(Serialize)]
    struct Lenient<'a> {
        version: i64,
        request_id: &'a str,
        phase: &'a str,
        request: LenientRequest<'a>,
        from_the_future: Vec<u32>,
    }
    #[derive(Serialize)]
    struct LenientRequest<'a> {
        method: &'a str,
        path: &'a str,
        headers: Option<Vec<(String, String)>>,
        body: Vec<u8>,
    }
    seeds.push((
        "lenient-forms",
        rmp_serde::to_vec_named(&Lenient {
            version: 1,
            request_id: "l-1",
            phase: "request_filter",
            request: LenientRequest {
                method: "GET",
                path: "/",
                headers: None,
                body: vec![1, 2, 3],
            },
            from_the_future: vec![1, 2],
        })
        .expect("serializes"),
    ));

    let mut map16 = vec![0xde, 0, 20];
    map16.extend(&encode_request(&minimal("request_filter", "m16"))[1..]);
    for i in 0..15 {
        map16.extend([0xa2, b'x', b'a' + i, i]);
    }
    seeds.push(("map16-unknown-fields", map16));

    // Malformed: the garbage of tests/bad_input.rs, then cut, lying and
    // doubled messages.
    seeds.push(("garbage-c1", b"\xc1\xc1\xc1".to_vec()));
    seeds.push(("garbage-empty", Vec::new()));
    seeds.push(("garbage-text", b"not msgpack at all".to_vec()));
    seeds.push(("garbage-array", b"\x93\x01\x02\x03".to_vec()));
    let mut deep = encode_request(&minimal("request_filter", "d"));
    deep[0] += 1;
    deep.extend(b"\xa4deep");
    deep.extend([0x91; 3000]);
    deep.push(0xc0);
    seeds.push(("nested-too-deeply", deep));
    let full = encode_request(&full_request("request_filter"));
    seeds.push(("truncated", full[..full.len() / 2].to_vec()));
    let mut trailing = full.clone();
    trailing.extend(b"\xc0\xc0");
    seeds.push(("trailing-bytes", trailing));
    // The map claims one more field than it holds, then gets a second `version`.
    let mut twice = encode_request(&minimal("request_filter", "t"));
    twice[0] += 1;
    twice.extend(b"\xa7version\x01");
    seeds.push(("duplicate-field", twice));
    seeds.push((
        "map32-length-lie",
        b"\xdf\xff\xff\xff\xff\xa7version\x01".to_vec(),
    ));
    let mut invalid_utf8 = encode_request(&minimal("request_filter", "u"));
    let at = invalid_utf8
        .windows(2)
        .position(|w| w == b"\xa1/")
        .expect("the path is there");
    invalid_utf8[at + 1] = 0xff;
    seeds.push(("invalid-utf8-path", invalid_utf8));
    seeds
}

fn replies() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = vec![
        ("next", encode_reply(&PhaseReply::next("a"))),
        (
            "error",
            encode_reply(&PhaseReply::error(
                "r-1",
                "malformed phase request: missing field `request`",
            )),
        ),
        (
            "next-with-mutations",
            encode_reply(&PhaseReply {
                request_headers: Some(HeaderMutations {
                    set: headers(&[("x-greeting", "hello"), ("x-request-id", "r-1")]),
                    remove: vec!["authorization".into()],
                }),
                path: Some("/v2/items?a=1".into()),
                ..PhaseReply::next("r-1")
            }),
        ),
        (
            "end",
            encode_reply(&PhaseReply {
                action: Action::End,
                status: Some(403),
                response_headers: Some(HeaderMutations {
                    set: headers(&[("content-type", "text/plain")]),
                    remove: Vec::new(),
                }),
                body: Some(b"forbidden".to_vec()),
                ..PhaseReply::next("r-2")
            }),
        ),
        (
            "body-filter-state",
            encode_reply(&PhaseReply {
                response_headers: Some(HeaderMutations::default()),
                body: Some(vec![0, 1, 255]),
                state: Some(b"carry".to_vec()),
                ..PhaseReply::next("c-1")
            }),
        ),
        (
            "failed-open",
            encode_reply(&PhaseReply {
                error: Some("plugin trapped: unreachable".into()),
                ..PhaseReply::next("f-1")
            }),
        ),
        (
            "widths",
            encode_reply(&PhaseReply {
                action: Action::End,
                status: Some(40_000),
                body: Some(vec![1; 300]),
                error: Some("e".repeat(40)),
                ..PhaseReply::next("r".repeat(300))
            }),
        ),
        (
            "array-form",
            rmp_serde::to_vec(&PhaseReply {
                action: Action::End,
                request_headers: Some(HeaderMutations::default()),
                response_headers: Some(HeaderMutations::default()),
                status: Some(200),
                body: Some(b"b".to_vec()),
                error: Some("e".into()),
                path: Some("/".into()),
                state: Some(b"s".to_vec()),
                ..PhaseReply::next("all")
            })
            .expect("serializes"),
        ),
    ];
    let mut unknown_action = encode_reply(&PhaseReply::next("u"));
    let at = unknown_action
        .windows(4)
        .position(|w| w == b"next")
        .expect("the action is there");
    unknown_action[at..at + 4].copy_from_slice(b"nope");
    seeds.push(("unknown-action", unknown_action));
    let end = encode_reply(&PhaseReply::error("t", "boom"));
    seeds.push(("truncated", end[..end.len() - 3].to_vec()));
    seeds.push(("garbage-c1", b"\xc1\xc1\xc1".to_vec()));
    seeds.push(("garbage-empty", Vec::new()));
    seeds
}

/// Inputs for the `roundtrip` target, which makes messages out of any
/// bytes: a few of each size, from a fixed xorshift sequence.
fn roundtrip_inputs() -> Vec<(&'static str, Vec<u8>)> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u8
    };
    ["small", "medium", "large", "larger"]
        .into_iter()
        .zip([32, 256, 1024, 4000])
        .map(|(name, len)| (name, (0..len).map(|_| next()).collect()))
        .collect()
}

fn write(directory: &Path, seeds: &[(&str, Vec<u8>)], check: fn(&[u8])) {
    std::fs::create_dir_all(directory).expect("the corpus directory can be made");
    for (name, bytes) in seeds {
        check(bytes);
        let path = directory.join(format!("seed-{name}.msgpack"));
        std::fs::write(&path, bytes).expect("the seed can be written");
        println!("{} ({} bytes)", path.display(), bytes.len());
    }
}

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    write(&corpus.join("request"), &requests(), check_request);
    write(&corpus.join("reply"), &replies(), check_reply);
    write(
        &corpus.join("roundtrip"),
        &roundtrip_inputs(),
        check_roundtrip,
    );
}
