//! One phase call: one NATS request to `{prefix}.{plugin}.{phase}`, its
//! reply decoded, and every other way the call can end as a [`CallError`].

use std::time::Duration;

use async_nats::{HeaderMap, RequestErrorKind, Subject};
use bytes::Bytes;
use natsplug_protocol::{
    self as protocol, Action, Phase, PhaseReply, PhaseRequest, SERVICE_ERROR_CODE_HEADER,
    SERVICE_ERROR_HEADER,
};

/// Why a phase call produced no usable reply.
///
/// [`CallError::NoResponders`] and [`CallError::Timeout`] are worth another
/// attempt ([`CallError::is_retryable`]); the rest are answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Nobody serves the subject: no host serves the plugin, or the plugin
    /// does not implement the phase.
    #[error("no responders on `{subject}`")]
    NoResponders { subject: String },
    /// No reply within the call's timeout.
    #[error("no reply on `{subject}` within {} ms", timeout.as_millis())]
    Timeout { subject: String, timeout: Duration },
    /// The host answered with an error reply (`Nats-Service-Error-Code`):
    /// 400 bad request, 413 too large, 500 plugin failure, 503 overload,
    /// 504 plugin deadline.
    #[error("host error {code} on `{subject}`: {message}")]
    Host {
        subject: String,
        code: u16,
        message: String,
    },
    /// The plugin itself decided the phase failed (`action: "error"`
    /// without the host's error headers).
    #[error("plugin failed `{subject}`: {message}")]
    Plugin { subject: String, message: String },
    /// The reply could not be read as a phase reply.
    #[error("undecodable reply on `{subject}`: {reason}")]
    Undecodable { subject: String, reason: String },
    /// The request is larger than the NATS connection can carry.
    #[error("request on `{subject}` is too large: {reason}")]
    TooLarge { subject: String, reason: String },
    /// The request could not be sent or its reply not received.
    #[error("request on `{subject}` failed: {reason}")]
    Transport { subject: String, reason: String },
}

impl CallError {
    /// Whether another attempt may succeed where this one did not: no
    /// responders (a host may appear) and timeouts (another host may answer).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CallError::NoResponders { .. } | CallError::Timeout { .. }
        )
    }

    /// The HTTP status a client is answered with when this failure stops
    /// the exchange: 504 for a timeout (ours or the plugin's deadline), 502
    /// when no host answers or the reply is unreadable, 503 for an
    /// overloaded host, 413 for a request too large to forward, 500 for a
    /// failed plugin or a request the host refused as malformed.
    pub fn status(&self) -> u16 {
        match self {
            CallError::Timeout { .. } => 504,
            CallError::NoResponders { .. }
            | CallError::Undecodable { .. }
            | CallError::Transport { .. } => 502,
            CallError::TooLarge { .. } => 413,
            CallError::Plugin { .. } => 500,
            CallError::Host { code, .. } => match code {
                413 => 413,
                503 => 503,
                504 => 504,
                400 | 500 => 500,
                _ => 502,
            },
        }
    }

    /// The subject the call was sent to.
    pub fn subject(&self) -> &str {
        match self {
            CallError::NoResponders { subject }
            | CallError::Timeout { subject, .. }
            | CallError::Host { subject, .. }
            | CallError::Plugin { subject, .. }
            | CallError::Undecodable { subject, .. }
            | CallError::TooLarge { subject, .. }
            | CallError::Transport { subject, .. } => subject,
        }
    }
}

/// Sends phase requests on one NATS connection, under one subject prefix.
///
/// This is the single-call layer under [`Chain`](crate::Chain): no
/// retries, no policy. Use it directly for a one-off call.
#[derive(Debug, Clone)]
pub struct PhaseCaller {
    client: async_nats::Client,
    prefix: String,
}

impl PhaseCaller {
    /// A caller on `client` for subjects under `prefix` (e.g. `nylon.plugin`).
    pub fn new(client: async_nats::Client, prefix: impl Into<String>) -> PhaseCaller {
        PhaseCaller {
            client,
            prefix: prefix.into(),
        }
    }

    /// The subject of `plugin`'s `phase`.
    pub fn subject(&self, plugin: &str, phase: Phase) -> String {
        format!("{}.{plugin}.{phase}", self.prefix)
    }

    /// The subject prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The NATS connection.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Send `request` to `plugin` on the subject of `request.phase` and wait
    /// up to `timeout` for the reply. A reply with `action: "error"` is an
    /// error ([`CallError::Host`] or [`CallError::Plugin`]); `next` and
    /// `end` replies are returned as they are.
    ///
    /// `traceparent`, when given, is sent as the NATS header of that name.
    pub async fn call(
        &self,
        plugin: &str,
        request: &PhaseRequest,
        timeout: Duration,
        traceparent: Option<&str>,
    ) -> Result<PhaseReply, CallError> {
        self.call_on(&self.client, plugin, request, timeout, traceparent)
            .await
    }

    /// [`PhaseCaller::call`] sent on `connection` instead of the caller's
    /// own: another connection to the same servers.
    pub async fn call_on(
        &self,
        connection: &async_nats::Client,
        plugin: &str,
        request: &PhaseRequest,
        timeout: Duration,
        traceparent: Option<&str>,
    ) -> Result<PhaseReply, CallError> {
        let subject = Subject::from(format!("{}.{plugin}.{}", self.prefix, request.phase));
        call_subject(connection, &subject, request, timeout, traceparent).await
    }
}

/// [`PhaseCaller::call_on`] to a subject made beforehand: a chain makes
/// each of its plugins' phase subjects once, not once per call.
pub(crate) async fn call_subject(
    connection: &async_nats::Client,
    subject: &Subject,
    request: &PhaseRequest,
    timeout: Duration,
    traceparent: Option<&str>,
) -> Result<PhaseReply, CallError> {
    let payload = Bytes::from(protocol::encode_request(request));
    // One timer bounds the call, ours below: a second one inside the
    // NATS client would cost another timer registration (and a wake-up
    // of the runtime's driver) per call for the same deadline.
    let mut nats_request = async_nats::Request::new().payload(payload).timeout(None);
    if let Some(traceparent) = traceparent {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", traceparent);
        nats_request = nats_request.headers(headers);
    }
    // Bounds the publication, should the connection be stuck, and the
    // wait for the reply.
    let sent = tokio::time::timeout(
        timeout,
        connection.send_request(subject.clone(), nats_request),
    )
    .await;
    let message = match sent {
        Err(_) => {
            return Err(CallError::Timeout {
                subject: subject.to_string(),
                timeout,
            });
        }
        Ok(Err(error)) => return Err(request_error(subject.to_string(), timeout, &error)),
        Ok(Ok(message)) => message,
    };
    read_reply(
        subject,
        &request.request_id,
        message.headers.as_ref(),
        &message.payload,
    )
}

fn request_error(
    subject: String,
    timeout: Duration,
    error: &async_nats::RequestError,
) -> CallError {
    match error.kind() {
        RequestErrorKind::NoResponders => CallError::NoResponders { subject },
        RequestErrorKind::TimedOut => CallError::Timeout { subject, timeout },
        RequestErrorKind::MaxPayloadExceeded => CallError::TooLarge {
            subject,
            reason: error.to_string(),
        },
        RequestErrorKind::InvalidSubject | RequestErrorKind::Other => CallError::Transport {
            subject,
            reason: error.to_string(),
        },
    }
}

/// Read a reply message: an error reply of the host by its headers, else
/// the phase reply in the payload.
pub(crate) fn read_reply(
    subject: &str,
    request_id: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<PhaseReply, CallError> {
    let header = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
    };
    if let Some(code) = header(SERVICE_ERROR_CODE_HEADER) {
        let Ok(code) = code.trim().parse::<u16>() else {
            return Err(CallError::Undecodable {
                subject: subject.to_string(),
                reason: format!("`{SERVICE_ERROR_CODE_HEADER}: {code}` is not a number"),
            });
        };
        // The body says the same as the header, without the header's
        // CR/LF replacement; prefer it when it can be read.
        let message = protocol::decode_reply(payload)
            .ok()
            .and_then(|reply| reply.error)
            .or_else(|| header(SERVICE_ERROR_HEADER))
            .unwrap_or_default();
        return Err(CallError::Host {
            subject: subject.to_string(),
            code,
            message,
        });
    }
    let reply = protocol::decode_reply(payload).map_err(|error| CallError::Undecodable {
        subject: subject.to_string(),
        reason: error.to_string(),
    })?;
    if !reply.request_id.is_empty() && reply.request_id != request_id {
        return Err(CallError::Undecodable {
            subject: subject.to_string(),
            reason: format!(
                "the reply is for request `{}`, not `{request_id}`",
                reply.request_id
            ),
        });
    }
    match reply.action {
        Action::Error => Err(CallError::Plugin {
            subject: subject.to_string(),
            message: reply.error.unwrap_or_default(),
        }),
        Action::End if reply.status.is_none() => Err(CallError::Undecodable {
            subject: subject.to_string(),
            reason: "action `end` without a status".into(),
        }),
        Action::Next | Action::End => Ok(reply),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> String {
        "nylon.plugin.p.request_filter".into()
    }

    #[test]
    fn host_error_replies_are_read_from_their_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            SERVICE_ERROR_HEADER,
            "plugin `p` exceeded its 5 ms deadline",
        );
        headers.insert(SERVICE_ERROR_CODE_HEADER, "504");
        let body = protocol::encode_reply(&PhaseReply::error(
            "r-1",
            "plugin `p` exceeded its 5 ms deadline",
        ));
        let error = read_reply(&subject(), "r-1", Some(&headers), &body).unwrap_err();
        assert_eq!(
            error,
            CallError::Host {
                subject: subject(),
                code: 504,
                message: "plugin `p` exceeded its 5 ms deadline".into()
            }
        );
        assert_eq!(error.status(), 504);
        assert!(!error.is_retryable());
    }

    #[test]
    fn a_plugin_error_has_no_headers() {
        let body = protocol::encode_reply(&PhaseReply::error("r-1", "no"));
        let error = read_reply(&subject(), "r-1", None, &body).unwrap_err();
        assert_eq!(
            error,
            CallError::Plugin {
                subject: subject(),
                message: "no".into()
            }
        );
        assert_eq!(error.status(), 500);
    }

    #[test]
    fn unreadable_replies_are_undecodable() {
        for (request_id, payload) in [
            ("r-1", b"junk".to_vec()),
            ("r-1", protocol::encode_reply(&PhaseReply::next("r-2"))),
        ] {
            let error = read_reply(&subject(), request_id, None, &payload).unwrap_err();
            assert!(matches!(error, CallError::Undecodable { .. }), "{error:?}");
            assert_eq!(error.status(), 502);
        }
        let mut end = PhaseReply::next("r-1");
        end.action = Action::End;
        let error = read_reply(&subject(), "r-1", None, &protocol::encode_reply(&end)).unwrap_err();
        assert!(matches!(error, CallError::Undecodable { .. }), "{error:?}");
        // An unreadable request id (`""`) is accepted.
        let reply = read_reply(
            &subject(),
            "r-1",
            None,
            &protocol::encode_reply(&PhaseReply::next("")),
        );
        assert_eq!(reply.unwrap().action, Action::Next);
    }

    #[test]
    fn statuses_follow_the_failure() {
        let host = |code| CallError::Host {
            subject: subject(),
            code,
            message: String::new(),
        };
        assert_eq!(host(400).status(), 500);
        assert_eq!(host(413).status(), 413);
        assert_eq!(host(500).status(), 500);
        assert_eq!(host(503).status(), 503);
        assert_eq!(host(504).status(), 504);
        assert_eq!(host(418).status(), 502);
        let none = CallError::NoResponders { subject: subject() };
        assert_eq!(none.status(), 502);
        assert!(none.is_retryable());
        let late = CallError::Timeout {
            subject: subject(),
            timeout: Duration::from_millis(5),
        };
        assert_eq!(late.status(), 504);
        assert!(late.is_retryable());
        assert_eq!(
            late.to_string(),
            "no reply on `nylon.plugin.p.request_filter` within 5 ms"
        );
    }
}
