//! One HTTP exchange as the chain sees it, owned by the caller: the request
//! and response as the plugins changed them, the body filters' carried
//! state, and what a phase can end in.

use std::time::Instant;

use natsplug_protocol::{
    BodyChunk, HeaderList, HttpRequest, HttpResponse, PROTOCOL_VERSION, Phase, PhaseReply,
    PhaseRequest,
};

use crate::call::CallError;
use crate::mutations::local_headers;

/// The state of one HTTP exchange through a chain. Made by
/// [`Chain::exchange`](crate::Chain::exchange); hand the same one to every
/// phase of the exchange, in order. A phase whose future is dropped before
/// it finishes (a timeout around it, a client gone) leaves the exchange as
/// the calls it finished left it.
#[derive(Debug)]
pub struct Exchange {
    /// The client's request, with the changes of the `request_filter`s
    /// applied: what to send upstream.
    pub request: HttpRequest,
    /// The response: set by [`Chain::response_filter`](crate::Chain::response_filter)
    /// (with its changes applied) or by a plugin's `end`; set it yourself
    /// when the response phases are not run, for `logging`.
    pub response: Option<HttpResponse>,
    /// A W3C `traceparent` sent with every phase call of the exchange.
    pub traceparent: Option<String>,
    /// The NATS connection the exchange's phase calls go on; `None` for
    /// the chain's own. A proxy running one single-threaded runtime per
    /// thread sets a connection of the exchange's thread, so that a call's
    /// request and reply are written and read on that thread instead of
    /// being handed to the thread of the chain's connection and back.
    pub connection: Option<async_nats::Client>,
    session_id: u64,
    id: String,
    calls: u64,
    started: Instant,
    /// Per plugin of the chain: the `state` of its last chunk reply.
    body_states: Vec<Option<Vec<u8>>>,
    body_finished: bool,
}

impl Exchange {
    pub(crate) fn new(request: HttpRequest, session_id: u64, id: String, plugins: usize) -> Self {
        Exchange {
            request,
            response: None,
            traceparent: None,
            connection: None,
            session_id,
            id,
            calls: 0,
            started: Instant::now(),
            body_states: vec![None; plugins],
            body_finished: false,
        }
    }

    /// The `session_id` sent with every phase call of the exchange.
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// When the exchange began (for `logging`'s `duration_ms`).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Whether the response body is complete: its last chunk was filtered,
    /// or a body filter ended it.
    pub fn body_finished(&self) -> bool {
        self.body_finished
    }

    /// A request for `phase` carrying the exchange's request (and, in the
    /// response phases, its response) themselves, moved out of the
    /// exchange instead of copied for each call, with a fresh request id;
    /// and how to send it. The request body goes to `request_filter` only,
    /// the response body to no phase. What was moved out comes back when
    /// the [`Lending`] is given back or dropped, so a call whose future is
    /// dropped leaves the exchange as it was.
    pub(crate) fn lend(&mut self, phase: Phase) -> (Lending<'_>, Sent<'_>) {
        debug_assert!(
            phase != Phase::Logging,
            "logging calls outlive the exchange"
        );
        let mut request = std::mem::take(&mut self.request);
        let request_body = match phase {
            Phase::RequestFilter => None,
            _ => request.body.take(),
        };
        let mut response = match phase {
            Phase::RequestFilter => None,
            _ => self.response.take(),
        };
        let response_body = match phase {
            Phase::ResponseBodyFilter => response.as_mut().and_then(|r| r.body.take()),
            _ => None,
        };
        let request = self.numbered(phase, request, response);
        let Exchange {
            request: to_request,
            response: to_response,
            traceparent,
            connection,
            ..
        } = self;
        let lending = Lending {
            request,
            request_body,
            response_body,
            to_request,
            to_response,
            given_back: false,
        };
        let sent = Sent {
            traceparent: traceparent.as_deref(),
            connection: connection.as_ref(),
        };
        (lending, sent)
    }

    /// A `logging` request carrying a copy of the exchange as it is now
    /// (without the request body), with a fresh request id and the time
    /// the exchange took: its calls outlive the exchange.
    pub(crate) fn logging_request(&mut self) -> PhaseRequest {
        let request = HttpRequest {
            body: None,
            ..self.request.clone()
        };
        let response = self.response.clone();
        let mut phase_request = self.numbered(Phase::Logging, request, response);
        let elapsed = self.started.elapsed().as_millis();
        phase_request.duration_ms = Some(u64::try_from(elapsed).unwrap_or(u64::MAX));
        phase_request
    }

    /// A request for `phase` with the exchange's next request id.
    fn numbered(
        &mut self,
        phase: Phase,
        request: HttpRequest,
        response: Option<HttpResponse>,
    ) -> PhaseRequest {
        self.calls += 1;
        PhaseRequest {
            version: PROTOCOL_VERSION,
            request_id: format!("{}-{}", self.id, self.calls),
            session_id: Some(self.session_id),
            phase: phase.as_str().to_string(),
            request,
            response,
            chunk: None,
            duration_ms: None,
        }
    }

    pub(crate) fn take_body_state(&mut self, plugin: usize) -> Option<Vec<u8>> {
        self.body_states.get_mut(plugin).and_then(Option::take)
    }

    pub(crate) fn keep_body_state(&mut self, plugin: usize, state: Option<Vec<u8>>) {
        if let Some(slot) = self.body_states.get_mut(plugin) {
            *slot = state;
        }
    }

    pub(crate) fn finish_body(&mut self) {
        self.body_finished = true;
        self.body_states.iter_mut().for_each(|s| *s = None);
    }
}

/// How an exchange's calls are sent: its `traceparent` and connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sent<'a> {
    pub(crate) traceparent: Option<&'a str>,
    pub(crate) connection: Option<&'a async_nats::Client>,
}

/// A phase request lent an exchange's request and response, with the
/// bodies it does not carry kept aside; all of it goes back into the
/// exchange when given back or dropped.
#[derive(Debug)]
pub(crate) struct Lending<'a> {
    pub(crate) request: PhaseRequest,
    request_body: Option<Vec<u8>>,
    response_body: Option<Vec<u8>>,
    to_request: &'a mut HttpRequest,
    to_response: &'a mut Option<HttpResponse>,
    given_back: bool,
}

impl Lending<'_> {
    /// Put everything back; returns the chunk the request carried.
    pub(crate) fn give_back(mut self) -> Option<BodyChunk> {
        self.restore()
    }

    fn restore(&mut self) -> Option<BodyChunk> {
        if std::mem::replace(&mut self.given_back, true) {
            return None;
        }
        *self.to_request = std::mem::take(&mut self.request.request);
        if let Some(body) = self.request_body.take() {
            self.to_request.body = Some(body);
        }
        if let Some(mut response) = self.request.response.take() {
            if let Some(body) = self.response_body.take() {
                response.body = Some(body);
            }
            *self.to_response = Some(response);
        }
        self.request.chunk.take()
    }
}

impl Drop for Lending<'_> {
    fn drop(&mut self) {
        self.restore();
    }
}

/// How a filter phase of the chain ended, when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every plugin let the exchange through: go on (upstream, or to the
    /// client) with the exchange's request or response as they are now.
    Continue,
    /// A plugin answered the client itself (`end`): send this response and
    /// stop; later plugins were not called.
    Respond(LocalResponse),
}

/// A response a plugin answered the client with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// The plugin that answered.
    pub plugin: String,
    /// The status.
    pub status: u16,
    /// The headers: the plugin's `response_headers` applied to none.
    pub headers: HeaderList,
    /// The body (empty when the plugin gave none).
    pub body: Vec<u8>,
}

impl LocalResponse {
    /// The local response of an `end` reply.
    pub(crate) fn from_reply(plugin: &str, reply: PhaseReply) -> LocalResponse {
        LocalResponse {
            plugin: plugin.to_string(),
            // `end` without a status is refused when the reply is read.
            status: reply.status.unwrap_or(500),
            headers: local_headers(reply.response_headers.as_ref()),
            body: reply.body.unwrap_or_default(),
        }
    }

    /// The same response as the protocol's HTTP response.
    pub fn to_http_response(&self) -> HttpResponse {
        HttpResponse {
            status: self.status,
            headers: self.headers.clone(),
            body: None,
        }
    }
}

/// A phase call that failed under failure mode `closed`: the exchange stops
/// and the client gets [`PhaseFailure::status`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{phase} of plugin `{plugin}` failed: {error}")]
pub struct PhaseFailure {
    /// The plugin whose call failed.
    pub plugin: String,
    /// The phase.
    pub phase: Phase,
    /// Why.
    #[source]
    pub error: CallError,
}

impl PhaseFailure {
    /// The status to answer the client with (see [`CallError::status`]).
    pub fn status(&self) -> u16 {
        self.error.status()
    }
}

/// What a response body chunk became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyOutput {
    /// The bytes to send the client in place of the chunk (may be empty:
    /// a filter may hold bytes back for the next chunk).
    pub data: Vec<u8>,
    /// Whether the body ends here: the chunk was the last, or a filter
    /// ended the body (`end`) and the rest of the upstream body is dropped.
    pub end_of_stream: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange() -> Exchange {
        let request = HttpRequest {
            method: "POST".into(),
            path: "/upload".into(),
            headers: vec![("x-a".into(), "1".into())],
            body: Some(b"request body".to_vec()),
            ..HttpRequest::default()
        };
        let mut exchange = Exchange::new(request, 7, "ex".into(), 1);
        exchange.response = Some(HttpResponse {
            status: 200,
            headers: vec![("x-b".into(), "2".into())],
            body: Some(b"response body".to_vec()),
        });
        exchange
    }

    #[test]
    fn each_phase_is_lent_what_it_carries_and_the_exchange_gets_all_back() {
        for phase in [
            Phase::RequestFilter,
            Phase::ResponseFilter,
            Phase::ResponseBodyFilter,
        ] {
            let mut exchange = exchange();
            let (request, response) = (exchange.request.clone(), exchange.response.clone());
            let (mut lending, _) = exchange.lend(phase);
            let sent = &lending.request;
            assert_eq!(sent.request_id, "ex-1");
            assert_eq!(sent.session_id, Some(7));
            assert_eq!(sent.phase, phase.as_str());
            assert_eq!(sent.request.headers, request.headers);
            assert_eq!(
                sent.request.body.is_some(),
                phase == Phase::RequestFilter,
                "{phase}: the request body"
            );
            assert_eq!(
                sent.response.as_ref().map(|r| r.body.is_some()),
                match phase {
                    Phase::RequestFilter => None,
                    Phase::ResponseFilter => Some(true),
                    _ => Some(false),
                },
                "{phase}: the response and its body"
            );
            lending.request.chunk = Some(BodyChunk {
                data: b"chunk".to_vec(),
                end_of_stream: false,
                state: None,
            });
            let chunk = lending.give_back();
            assert_eq!(chunk.map(|c| c.data), Some(b"chunk".to_vec()));
            assert_eq!(exchange.request, request, "{phase}");
            assert_eq!(exchange.response, response, "{phase}");

            // Dropped without being given back, as a cancelled call's is:
            // the exchange is whole all the same.
            let (lending, _) = exchange.lend(phase);
            assert_eq!(lending.request.request_id, "ex-2");
            drop(lending);
            assert_eq!(exchange.request, request, "{phase}: after a drop");
            assert_eq!(exchange.response, response, "{phase}: after a drop");
        }
    }
}
