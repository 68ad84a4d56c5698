//! Replaces every occurrence of a pattern in response bodies with `*`s of
//! the same length, even when a match is split across two chunks.
//!
//! The pattern is the `pattern` config value (default `secret`). A chunk's
//! last `len(pattern) - 1` bytes could be the start of a match that ends in
//! the next chunk, so they are held back and handed to the caller as
//! `state`, which comes back with the next chunk; the final chunk flushes
//! everything.

use natsplug_sdk::prelude::*;

struct BodyRedactor;

#[natsplug_sdk::plugin]
impl Plugin for BodyRedactor {
    fn response_body_filter(
        _ctx: Context,
        _response: Option<ResponseHead>,
        chunk: Chunk,
    ) -> ChunkDecision {
        let pattern = config::get("pattern").unwrap_or_else(|| "secret".into());
        let pattern = pattern.as_bytes();
        let mut data = chunk.state.unwrap_or_default();
        data.extend_from_slice(&chunk.data);
        let redacted = redact(&mut data, pattern);
        if redacted > 0 {
            debug!("redacted", matches = redacted);
        }
        if chunk.end_of_stream || pattern.len() < 2 {
            return ChunkChanges::new().replace_data(data).into();
        }
        let keep = data.len().saturating_sub(pattern.len() - 1);
        let held = data.split_off(keep);
        ChunkChanges::new()
            .replace_data(data)
            .carry_state(held)
            .into()
    }
}

/// Mask every match of `pattern` in `data`; returns how many there were.
fn redact(data: &mut [u8], pattern: &[u8]) -> usize {
    if pattern.is_empty() || data.len() < pattern.len() {
        return 0;
    }
    let mut count = 0;
    let mut at = 0;
    while at + pattern.len() <= data.len() {
        if &data[at..at + pattern.len()] == pattern {
            data[at..at + pattern.len()].fill(b'*');
            at += pattern.len();
            count += 1;
        } else {
            at += 1;
        }
    }
    count
}
