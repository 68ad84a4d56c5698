//! Reading a received request: the size bound checked before anything
//! else, the phase request borrowed from the message's bytes, and the
//! trace id of its `traceparent` header. A request refused here becomes
//! its error [`Outcome`] and never reaches a plugin.

use async_nats::HeaderMap;
use natsplug_protocol::{self as protocol, Phase, PhaseRequestView, RequestError};

use crate::reply::Outcome;

/// The refusal of a payload larger than `max_request_bytes` (what the host
/// answers before a plugin sees it), or `None` when it fits.
pub fn refuse_oversized(payload: &[u8], max_request_bytes: usize) -> Option<Outcome> {
    (payload.len() > max_request_bytes).then(|| {
        let error = RequestError::TooLarge(format!(
            "request of {} bytes is above the {} bytes this host accepts (runtime.max_request_bytes)",
            payload.len(),
            max_request_bytes
        ));
        Outcome::failure(protocol::peek_request_id(payload), error)
    })
}

/// The phase request of `payload`, received on the subject of `phase`, or
/// the error reply that refuses it.
pub fn request(payload: &[u8], phase: Phase) -> Result<PhaseRequestView<'_>, Outcome> {
    protocol::decode_request_view(payload, phase)
        .map_err(|(request_id, error)| Outcome::failure(request_id, error))
}

/// The trace id of the message's `traceparent` header, if it has a valid one.
pub fn trace_id_in(headers: Option<&HeaderMap>) -> Option<String> {
    let value = headers?
        .iter()
        .find(|(name, _)| AsRef::<str>::as_ref(*name).eq_ignore_ascii_case("traceparent"))
        .and_then(|(_, values)| values.first())?;
    trace_id_of(value.as_str())
}

/// The trace id of a W3C `traceparent` value (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.trim().split('-');
    let _version = parts.next()?;
    let trace_id = parts.next()?;
    let valid = trace_id.len() == 32
        && trace_id.bytes().all(|b| b.is_ascii_hexdigit())
        && trace_id.bytes().any(|b| b != b'0');
    valid.then(|| trace_id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_yields_the_trace_id() {
        assert_eq!(
            trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id_of("00-0000-00f067aa0ba902b7-01"), None);
        assert_eq!(
            trace_id_of("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id_of("garbage"), None);
    }

    #[test]
    fn the_traceparent_header_is_found_whatever_its_case() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "TraceParent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        assert_eq!(
            trace_id_in(Some(&headers)).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id_in(None), None);
    }
}
