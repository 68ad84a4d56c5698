//! The last step of the request path: the outcome of a request (its
//! encoded reply, the error it carries, what the plugin logged) and its
//! publication to the caller's reply subject, with the NATS service error
//! headers on an error reply.

use std::sync::atomic::Ordering;

use async_nats::HeaderMap;
use natsplug_protocol::{
    self as protocol, PhaseReply, RequestError, SERVICE_ERROR_CODE_HEADER, SERVICE_ERROR_HEADER,
};

use crate::config::FailureMode;
use crate::logs::LogRecord;
use crate::stats::HostStats;

/// The result of one request: the encoded reply, the error it carries (for
/// the service error headers), and what the plugin logged.
#[derive(Debug)]
pub struct Outcome {
    /// The MessagePack reply payload.
    pub payload: Vec<u8>,
    /// Set when the reply is an `"error"` reply.
    pub error: Option<RequestError>,
    /// Records the plugin logged during the call.
    pub records: Vec<LogRecord>,
    /// Records beyond the per-call cap, not kept.
    pub dropped_records: u64,
    /// Set when the plugin failed but its failure mode is open, so the
    /// reply is a `"next"` carrying this failure as its `error` note.
    pub failed_open: Option<RequestError>,
}

impl Outcome {
    /// The outcome of a call that produced `payload`.
    pub fn success(payload: Vec<u8>) -> Outcome {
        Outcome {
            payload,
            error: None,
            records: Vec::new(),
            dropped_records: 0,
            failed_open: None,
        }
    }

    /// An error outcome for `request_id`.
    pub fn failure(request_id: String, error: RequestError) -> Outcome {
        let reply = PhaseReply::error(request_id, error.to_string());
        Outcome {
            error: Some(error),
            ..Outcome::success(protocol::encode_reply(&reply))
        }
    }

    /// The outcome of `error` for a call under `mode`: an error reply, or,
    /// failing open, a `"next"` with no mutations that notes the failure.
    pub fn failure_with_mode(
        request_id: String,
        error: RequestError,
        mode: FailureMode,
    ) -> Outcome {
        if mode == FailureMode::Open && error.is_plugin_failure() {
            let reply = PhaseReply {
                error: Some(format!("failed open: {error}")),
                ..PhaseReply::next(request_id)
            };
            Outcome {
                failed_open: Some(error),
                ..Outcome::success(protocol::encode_reply(&reply))
            }
        } else {
            Outcome::failure(request_id, error)
        }
    }

    /// The failure this outcome reports or hides, if any.
    pub fn failure_cause(&self) -> Option<&RequestError> {
        self.error.as_ref().or(self.failed_open.as_ref())
    }
}

/// Publish a reply `payload` to `reply_to`, with the service error headers
/// when it carries `error`. A failed publish is counted and logged: the
/// caller's timeout is what tells it.
pub async fn publish(
    client: &async_nats::Client,
    reply_to: async_nats::Subject,
    payload: Vec<u8>,
    error: Option<&RequestError>,
    stats: &HostStats,
) {
    let payload = bytes::Bytes::from(payload);
    let published = match error {
        None => client.publish(reply_to, payload).await,
        Some(error) => {
            let mut headers = HeaderMap::new();
            headers.insert(
                SERVICE_ERROR_HEADER,
                single_line(&error.to_string()).as_str(),
            );
            headers.insert(SERVICE_ERROR_CODE_HEADER, error.code().to_string().as_str());
            client
                .publish_with_headers(reply_to, headers, payload)
                .await
        }
    };
    if let Err(error) = published {
        stats.reply_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%error, "could not publish a reply");
    }
}

/// Header values cannot hold line breaks.
fn single_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}
