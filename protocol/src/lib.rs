//! The natsplug wire protocol, version 1: the MessagePack messages exchanged
//! on the plugin phase subjects `{prefix}.{plugin}.{phase}`. This crate
//! mirrors `docs/protocol.md`, the specification; the host and every caller
//! read and write messages through it, and nothing else touches MessagePack.
//!
//! Messages are MessagePack maps with named fields. Byte fields are `bin`.
//! Unknown fields are ignored and absent optional fields mean "none".
//!
//! - [`PhaseRequest`] (owned, for callers) and [`PhaseRequestView`]
//!   (borrowed from the message, for hosts) are what a caller sends;
//!   [`encode_request`] and [`decode_request_view`] write and read them.
//! - [`PhaseReply`] is the answer; [`encode_reply`] and [`decode_reply`].
//! - [`RequestError`] is why a request was refused, with its error code.
//! - [`Announcement`] is what a host serves of a plugin, on
//!   [`announcement_subject`] (JSON, not MessagePack).
//!
//! The crate has no I/O and no async runtime: a proxy can depend on it alone.

mod announcement;
mod decode;
mod encode;
mod error;
mod fast;
mod message;
mod phase;
mod reply;
mod view;

#[cfg(test)]
mod tests;

pub use announcement::{Announcement, SERVED_TOKEN, announced_plugin, announcement_subject};
pub use decode::{MAX_NESTING, decode_reply, decode_request, decode_request_view, peek_request_id};
pub use encode::{encode_reply, encode_request};
pub use error::RequestError;
pub use fast::struct_written_as_array;
pub use message::{BodyChunk, HeaderList, HttpRequest, HttpResponse, PhaseRequest};
pub use phase::Phase;
pub use reply::{Action, HeaderMutations, PhaseReply};
pub use view::{BodyChunkView, HttpRequestView, HttpResponseView, PhaseRequestView};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Header carrying the error message of an error reply (NATS micro services).
pub const SERVICE_ERROR_HEADER: &str = "Nats-Service-Error";
/// Header carrying the numeric error code of an error reply.
pub const SERVICE_ERROR_CODE_HEADER: &str = "Nats-Service-Error-Code";
