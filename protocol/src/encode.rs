//! Writing messages: phase requests (for callers and tests) and replies,
//! each byte for byte as `rmp_serde::to_vec_named` writes them.

use crate::message::{BodyChunk, HeaderList, HttpRequest, HttpResponse, PhaseRequest};
use crate::reply::{Action, HeaderMutations, PhaseReply};

/// Encode a phase request (for callers and tests): the bytes
/// `rmp_serde::to_vec_named` writes for it (a map of the fields that are
/// set, in declaration order), written directly into a buffer sized up
/// front.
pub fn encode_request(request: &PhaseRequest) -> Vec<u8> {
    let mut out = Vec::with_capacity(request_size_hint(request));
    let optional = [
        request.session_id.is_some(),
        request.response.is_some(),
        request.chunk.is_some(),
        request.duration_ms.is_some(),
    ];
    map_len(&mut out, 4 + optional.iter().filter(|set| **set).count());
    str(&mut out, "version");
    uint(&mut out, u64::from(request.version));
    str(&mut out, "request_id");
    str(&mut out, &request.request_id);
    if let Some(session_id) = request.session_id {
        str(&mut out, "session_id");
        uint(&mut out, session_id);
    }
    str(&mut out, "phase");
    str(&mut out, &request.phase);
    str(&mut out, "request");
    http_request(&mut out, &request.request);
    if let Some(response) = &request.response {
        str(&mut out, "response");
        http_response(&mut out, response);
    }
    if let Some(chunk) = &request.chunk {
        str(&mut out, "chunk");
        body_chunk(&mut out, chunk);
    }
    if let Some(duration_ms) = request.duration_ms {
        str(&mut out, "duration_ms");
        uint(&mut out, duration_ms);
    }
    out
}

fn http_request(out: &mut Vec<u8>, request: &HttpRequest) {
    let optional = [
        request.query.is_some(),
        request.host.is_some(),
        request.client_ip.is_some(),
        request.body.is_some(),
    ];
    map_len(out, 3 + optional.iter().filter(|set| **set).count());
    str(out, "method");
    str(out, &request.method);
    str(out, "path");
    str(out, &request.path);
    for (key, text) in [
        ("query", &request.query),
        ("host", &request.host),
        ("client_ip", &request.client_ip),
    ] {
        if let Some(text) = text {
            str(out, key);
            str(out, text);
        }
    }
    str(out, "headers");
    header_list(out, &request.headers);
    if let Some(body) = &request.body {
        str(out, "body");
        bin(out, body);
    }
}

fn http_response(out: &mut Vec<u8>, response: &HttpResponse) {
    map_len(out, 2 + usize::from(response.body.is_some()));
    str(out, "status");
    uint(out, u64::from(response.status));
    str(out, "headers");
    header_list(out, &response.headers);
    if let Some(body) = &response.body {
        str(out, "body");
        bin(out, body);
    }
}

fn body_chunk(out: &mut Vec<u8>, chunk: &BodyChunk) {
    map_len(out, 2 + usize::from(chunk.state.is_some()));
    str(out, "data");
    bin(out, &chunk.data);
    str(out, "end_of_stream");
    out.push(if chunk.end_of_stream { 0xc3 } else { 0xc2 });
    if let Some(state) = &chunk.state {
        str(out, "state");
        bin(out, state);
    }
}

/// Each field a two-element array, as serde writes a tuple.
fn header_list(out: &mut Vec<u8>, headers: &HeaderList) {
    array_len(out, headers.len());
    for (name, value) in headers {
        array_len(out, 2);
        str(out, name);
        str(out, value);
    }
}

/// A bound, give or take a few bytes, on the encoded size of `request`.
fn request_size_hint(request: &PhaseRequest) -> usize {
    // Field names, markers and lengths of each value.
    const FIELD: usize = 24;
    let text = |t: &Option<String>| t.as_ref().map_or(0, |t| FIELD + t.len());
    let bytes = |b: &Option<Vec<u8>>| b.as_ref().map_or(0, |b| FIELD + b.len());
    let headers = |h: &HeaderList| h.iter().map(|(n, v)| n.len() + v.len() + 12).sum::<usize>();
    let http = &request.request;
    8 * FIELD
        + request.request_id.len()
        + request.phase.len()
        + http.method.len()
        + http.path.len()
        + text(&http.query)
        + text(&http.host)
        + text(&http.client_ip)
        + headers(&http.headers)
        + bytes(&http.body)
        + request
            .response
            .as_ref()
            .map_or(0, |r| 3 * FIELD + headers(&r.headers) + bytes(&r.body))
        + request
            .chunk
            .as_ref()
            .map_or(0, |c| 3 * FIELD + c.data.len() + bytes(&c.state))
}

/// Encode a reply: the bytes `rmp_serde::to_vec_named` writes for it (a
/// map of the fields that are set, in declaration order), written directly
/// into a buffer sized up front, which costs a third of going through serde.
pub fn encode_reply(reply: &PhaseReply) -> Vec<u8> {
    let mut out = Vec::with_capacity(reply_size_hint(reply));
    let fields = [
        reply.request_headers.is_some(),
        reply.response_headers.is_some(),
        reply.status.is_some(),
        reply.body.is_some(),
        reply.error.is_some(),
        reply.path.is_some(),
        reply.state.is_some(),
    ];
    map_len(&mut out, 3 + fields.iter().filter(|set| **set).count());
    str(&mut out, "version");
    uint(&mut out, u64::from(reply.version));
    str(&mut out, "request_id");
    str(&mut out, &reply.request_id);
    str(&mut out, "action");
    str(
        &mut out,
        match reply.action {
            Action::Next => "next",
            Action::End => "end",
            Action::Error => "error",
        },
    );
    for (key, mutations) in [
        ("request_headers", &reply.request_headers),
        ("response_headers", &reply.response_headers),
    ] {
        if let Some(mutations) = mutations {
            str(&mut out, key);
            header_mutations(&mut out, mutations);
        }
    }
    if let Some(status) = reply.status {
        str(&mut out, "status");
        uint(&mut out, u64::from(status));
    }
    if let Some(body) = &reply.body {
        str(&mut out, "body");
        bin(&mut out, body);
    }
    for (key, text) in [("error", &reply.error), ("path", &reply.path)] {
        if let Some(text) = text {
            str(&mut out, key);
            str(&mut out, text);
        }
    }
    if let Some(state) = &reply.state {
        str(&mut out, "state");
        bin(&mut out, state);
    }
    out
}

fn header_mutations(out: &mut Vec<u8>, mutations: &HeaderMutations) {
    map_len(out, 2);
    str(out, "set");
    array_len(out, mutations.set.len());
    for (name, value) in &mutations.set {
        array_len(out, 2);
        str(out, name);
        str(out, value);
    }
    str(out, "remove");
    array_len(out, mutations.remove.len());
    for name in &mutations.remove {
        str(out, name);
    }
}

// MessagePack's compact forms, as rmp writes them.

fn map_len(out: &mut Vec<u8>, len: usize) {
    length(out, len, 0x80, 0xde);
}

fn array_len(out: &mut Vec<u8>, len: usize) {
    length(out, len, 0x90, 0xdc);
}

/// A map or array header: `fix | len` up to 15, else `marker16` or the
/// 32-bit marker after it with the length.
fn length(out: &mut Vec<u8>, len: usize, fix: u8, marker16: u8) {
    match u16::try_from(len) {
        Ok(short) if short < 16 => out.push(fix | short as u8),
        Ok(short) => {
            out.push(marker16);
            out.extend_from_slice(&short.to_be_bytes());
        }
        Err(_) => {
            out.push(marker16 + 1);
            out.extend_from_slice(&u32_len(len).to_be_bytes());
        }
    }
}

fn str(out: &mut Vec<u8>, text: &str) {
    match u8::try_from(text.len()) {
        Ok(len) if len < 32 => out.push(0xa0 | len),
        _ => sized(out, text.len(), [0xd9, 0xda, 0xdb]),
    }
    out.extend_from_slice(text.as_bytes());
}

fn bin(out: &mut Vec<u8>, bytes: &[u8]) {
    sized(out, bytes.len(), [0xc4, 0xc5, 0xc6]);
    out.extend_from_slice(bytes);
}

/// A `str` or `bin` header: the marker for an 8-, 16- or 32-bit length,
/// then the length.
fn sized(out: &mut Vec<u8>, len: usize, [marker8, marker16, marker32]: [u8; 3]) {
    if let Ok(len) = u8::try_from(len) {
        out.extend_from_slice(&[marker8, len]);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(marker16);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(marker32);
        out.extend_from_slice(&u32_len(len).to_be_bytes());
    }
}

fn uint(out: &mut Vec<u8>, value: u64) {
    if value < 128 {
        out.push(value as u8);
    } else if let Ok(value) = u8::try_from(value) {
        out.extend_from_slice(&[0xcc, value]);
    } else if let Ok(value) = u16::try_from(value) {
        out.push(0xcd);
        out.extend_from_slice(&value.to_be_bytes());
    } else if let Ok(value) = u32::try_from(value) {
        out.push(0xce);
        out.extend_from_slice(&value.to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&value.to_be_bytes());
    }
}

/// A length MessagePack can carry: no message comes near 4 GiB, which
/// NATS payloads are far below.
fn u32_len(len: usize) -> u32 {
    u32::try_from(len).expect("a message field is below 4 GiB")
}

/// A bound, give or take a few bytes, on the encoded size of `reply`.
pub(crate) fn reply_size_hint(reply: &PhaseReply) -> usize {
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
