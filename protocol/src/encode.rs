//! Writing messages: phase requests (for callers and tests) and replies.

use crate::message::PhaseRequest;
use crate::reply::{Action, HeaderMutations, PhaseReply};

/// Encode a phase request (for callers and tests).
pub fn encode_request(request: &PhaseRequest) -> Vec<u8> {
    rmp_serde::to_vec_named(request).expect("phase requests always serialize")
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

/// A length MessagePack can carry: no reply comes near 4 GiB, which NATS
/// payloads are far below.
fn u32_len(len: usize) -> u32 {
    u32::try_from(len).expect("a reply field is below 4 GiB")
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
