//! Writing messages: phase requests (for callers and tests) and replies.

use crate::message::PhaseRequest;
use crate::reply::{HeaderMutations, PhaseReply};

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
