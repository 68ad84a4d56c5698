//! What the client is told when an exchange cannot go on: no route, a
//! plugin failing under `closed`, an upstream refusing, timing out or
//! breaking. Every such answer is `text/plain`, starts with
//! `natsplug gateway: ` and says what happened.

use bytes::Bytes;
use natsplug_client::PhaseFailure;
use natsplug_protocol::HeaderList;
use pingora::http::ResponseHeader;
use pingora::prelude::Session;
use pingora::{Error, ErrorSource, ErrorType};

use crate::upstream::Upstream;

/// An answer the gateway makes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The status; 0 when the client is gone and nothing can be sent.
    pub status: u16,
    /// What happened, for the client and the log.
    pub message: String,
    /// The kind of upstream failure, for the metrics.
    pub upstream_kind: Option<&'static str>,
}

impl Failure {
    /// No route serves the host and path.
    pub fn no_route(host: Option<&str>, path: &str) -> Failure {
        Failure {
            status: 404,
            message: format!(
                "no route serves host `{}` and path `{path}`",
                host.unwrap_or("")
            ),
            upstream_kind: None,
        }
    }

    /// A plugin failed under `closed`.
    pub fn phase(failure: &PhaseFailure) -> Failure {
        Failure {
            status: failure.status(),
            message: format!(
                "plugin `{}` failed in {}: {}",
                failure.plugin, failure.phase, failure.error
            ),
            upstream_kind: None,
        }
    }

    /// Pingora gave up on the exchange with `error`.
    pub fn proxy(error: &Error, upstream: Option<&Upstream>) -> Failure {
        let url = upstream.map_or("the upstream", |u| u.url.as_str());
        let upstream_failure = |status, kind, message: String| Failure {
            status,
            message,
            upstream_kind: Some(kind),
        };
        match (error.etype(), error.esource()) {
            (ErrorType::HTTPStatus(code), _) => Failure {
                status: *code,
                message: error
                    .context
                    .as_ref()
                    .map_or_else(|| format!("status {code}"), |c| c.to_string()),
                upstream_kind: None,
            },
            (ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout, _) => upstream_failure(
                504,
                "timeout",
                format!("the upstream {url} did not accept a connection in time"),
            ),
            (ErrorType::ReadTimedout | ErrorType::WriteTimedout, ErrorSource::Upstream) => {
                upstream_failure(
                    504,
                    "timeout",
                    format!("the upstream {url} did not answer in time"),
                )
            }
            (ErrorType::ConnectRefused | ErrorType::ConnectNoRoute, _) => upstream_failure(
                502,
                "refused",
                format!("the upstream {url} refused the connection (is it running?)"),
            ),
            (_, ErrorSource::Upstream) => upstream_failure(
                502,
                "error",
                format!("the upstream {url} failed: {}", error.etype().as_str()),
            ),
            (
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed,
                ErrorSource::Downstream,
            ) => Failure {
                status: 0,
                message: "the client went away".into(),
                upstream_kind: None,
            },
            (_, ErrorSource::Downstream) => Failure {
                status: 400,
                message: format!("the request could not be read: {}", error.etype().as_str()),
                upstream_kind: None,
            },
            _ => Failure {
                status: 500,
                message: format!("the exchange failed: {error}"),
                upstream_kind: None,
            },
        }
    }

    /// The body the client gets.
    pub fn body(&self) -> Bytes {
        Bytes::from(format!("natsplug gateway: {}\n", self.message))
    }
}

/// The fields of the gateway's own answers.
pub fn text_headers() -> HeaderList {
    vec![(
        "content-type".to_string(),
        "text/plain; charset=utf-8".to_string(),
    )]
}

/// Answer the client with `failure`.
pub async fn respond(session: &mut Session, failure: &Failure) {
    if failure.status == 0 {
        return;
    }
    respond_local(
        session,
        failure.status,
        &text_headers(),
        failure.body().to_vec(),
    )
    .await;
}

/// Answer the client with `status`, `headers` and `body` (a plugin's
/// `end`, or the gateway's own answer).
pub async fn respond_local(
    session: &mut Session,
    status: u16,
    headers: &HeaderList,
    body: Vec<u8>,
) {
    let mut response = match ResponseHeader::build(status, Some(headers.len() + 1)) {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(status, "not an HTTP status; answering 500");
            match ResponseHeader::build(500, None) {
                Ok(response) => response,
                Err(_) => return,
            }
        }
    };
    let refused = crate::headers::apply_difference(&mut response, &HeaderList::new(), headers);
    if !refused.is_empty() {
        tracing::warn!(
            ?refused,
            "fields of a local response are not valid HTTP; left out"
        );
    }
    response.remove_header(&http::header::TRANSFER_ENCODING);
    let _ = response.set_content_length(body.len());
    let empty = body.is_empty();
    if let Err(error) = session
        .write_response_header(Box::new(response), empty)
        .await
    {
        tracing::debug!(%error, "the client went away before the answer");
        return;
    }
    if !empty
        && let Err(error) = session
            .write_response_body(Some(Bytes::from(body)), true)
            .await
    {
        tracing::debug!(%error, "the client went away during the answer");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_errors_map_to_502_and_504() {
        let upstream = Upstream::parse("http://127.0.0.1:9").unwrap();
        let mut refused = Error::new(ErrorType::ConnectRefused);
        refused.esource = ErrorSource::Upstream;
        let failure = Failure::proxy(&refused, Some(&upstream));
        assert_eq!(
            (failure.status, failure.upstream_kind),
            (502, Some("refused"))
        );
        assert!(failure.message.contains("http://127.0.0.1:9 refused"));
        let mut timeout = Error::new(ErrorType::ReadTimedout);
        timeout.esource = ErrorSource::Upstream;
        let failure = Failure::proxy(&timeout, Some(&upstream));
        assert_eq!(
            (failure.status, failure.upstream_kind),
            (504, Some("timeout"))
        );
        let failure = Failure::proxy(&Error::new(ErrorType::ConnectTimedout), None);
        assert_eq!(failure.status, 504);
        let mut gone = Error::new(ErrorType::ConnectionClosed);
        gone.esource = ErrorSource::Downstream;
        assert_eq!(Failure::proxy(&gone, None).status, 0);
        let mut bad = Error::new(ErrorType::InvalidHTTPHeader);
        bad.esource = ErrorSource::Downstream;
        assert_eq!(Failure::proxy(&bad, None).status, 400);
        assert_eq!(
            Failure::no_route(Some("a"), "/x").body(),
            "natsplug gateway: no route serves host `a` and path `/x`\n"
        );
    }
}
