//! The proxy: Pingora's `ProxyHttp` phases, each running the route's chain
//! for the phase of the same name through the caller library. Pingora
//! does the proxying (connections, pools, HTTP/1.1 and HTTP/2, framing,
//! timeouts); this module decides what each phase changes.
//!
//! Per exchange: `request_filter` picks the route and runs the chain on
//! the request head; `upstream_request_filter` writes the plugins' changes
//! and the forwarding fields into the upstream request; `response_filter`
//! runs the chain on the upstream response head; `response_body_filter`
//! runs it on each body chunk, only when a plugin of the chain implements
//! that phase; `logging` counts the exchange and sends the chain's
//! `logging` calls without waiting for them.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use natsplug_client::{Exchange, HttpRequest, HttpResponse, Knowledge, Phase, Verdict};
use natsplug_protocol::HeaderList;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, Session};
use pingora::proxy::{FailToProxy, ProxyHttp};
use pingora::{Error, ErrorType, Result};

use crate::drain::{InFlight, InFlightGuard};
use crate::failure::{self, Failure};
use crate::forwarding::{self, Client};
use crate::headers::{apply_difference, header_list};
use crate::metrics::GatewayMetrics;
use crate::routes::Route;
use crate::server::Started;

/// The proxy logic of one proxy thread, shared by its client connections.
pub struct Gateway {
    started: Started,
    in_flight: InFlight,
    connection: Arc<OnceLock<async_nats::Client>>,
}

impl Gateway {
    /// A proxy over what start-up puts in `started`, counting the
    /// exchanges in flight into `in_flight`, sending its phase calls on
    /// the NATS connection start-up puts in `connection`: the thread's
    /// own (until then, the shared one).
    pub fn new(
        started: Started,
        in_flight: InFlight,
        connection: Arc<OnceLock<async_nats::Client>>,
    ) -> Gateway {
        Gateway {
            started,
            in_flight,
            connection,
        }
    }

    fn metrics(&self) -> Option<&GatewayMetrics> {
        self.started.get().map(|running| running.metrics.as_ref())
    }
}

/// What the response body goes through.
#[derive(Debug, Default)]
enum BodyPlan {
    /// Streamed untouched.
    #[default]
    Pass,
    /// Each chunk through the chain's `response_body_filter`.
    Filter,
    /// Replaced by this body (a plugin's or the gateway's own answer made
    /// in a response phase); the upstream's chunks are dropped.
    Replace(Option<Bytes>),
}

/// One exchange's state across the phases.
#[derive(Debug)]
pub struct ExchangeContext {
    started: Instant,
    route: Option<Arc<Route>>,
    /// The chain's view of the exchange (routes with plugins only).
    exchange: Option<Exchange>,
    /// The request fields as the chain's first plugin saw them: the
    /// client's, without the hop-by-hop ones, with the forwarding fields
    /// and the `traceparent` (routes with plugins only). What the plugins
    /// changed is the difference between these and the exchange's.
    shown_headers: HeaderList,
    body: BodyPlan,
    /// The status the client was answered with, once known.
    status: Option<u16>,
    /// Counts the exchange as in flight while the context lives.
    _in_flight: InFlightGuard,
}

impl ExchangeContext {
    fn route_name(&self) -> &str {
        self.route.as_deref().map_or("none", |r| r.name.as_str())
    }
}

fn version_text(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The host a request is for: its `:authority` (HTTP/2, absolute form) or
/// its `Host` field.
fn request_host(request: &RequestHeader) -> Option<&str> {
    if let Some(authority) = request.uri.authority() {
        return Some(authority.as_str());
    }
    request
        .headers
        .get(http::header::HOST)
        .and_then(|value| value.to_str().ok())
}

/// The client's address, when the connection has one.
fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|address| address.as_inet())
        .map(|address| address.ip())
}

/// Who sent `session`'s request, as the forwarding fields tell it.
fn client_of(session: &Session) -> Client<'_> {
    let request = session.req_header();
    Client {
        ip: client_ip(session),
        host: request_host(request),
        version: version_text(request.version),
    }
}

/// The client's request target (path and query).
fn request_target(request: &RequestHeader) -> &str {
    request
        .uri
        .path_and_query()
        .map_or_else(|| request.uri.path(), |target| target.as_str())
}

/// Whether some plugin of the route's chain may implement `phase`.
fn chain_may_run(route: &Route, phase: Phase) -> bool {
    route.chain.as_ref().is_some_and(|chain| {
        chain
            .plugins()
            .any(|plugin| chain.directory().knowledge(plugin, phase) != Knowledge::NotImplemented)
    })
}

/// Whether a response with `status` to a `method` request carries a
/// body (RFC 9110 §6.4.1: none after HEAD, for 1xx, 204 and 304).
fn has_body(method: http::Method, status: http::StatusCode) -> bool {
    method != http::Method::HEAD
        && !status.is_informational()
        && status != http::StatusCode::NO_CONTENT
        && status != http::StatusCode::NOT_MODIFIED
}

/// Fields of a response that describe the upstream connection, removed
/// before the client sees it. `Transfer-Encoding` stays: Pingora frames
/// the client's body from it.
fn strip_response_hop_by_hop(response: &mut ResponseHeader) {
    let upgrading = response.status == http::StatusCode::SWITCHING_PROTOCOLS;
    forwarding::remove_hop_by_hop(response, |name| {
        name == "transfer-encoding" || (upgrading && (name == "upgrade" || name == "connection"))
    });
}

/// Replace `response`'s status and fields by `status` and `headers`, for
/// a body of `length` bytes.
fn replace_head(response: &mut ResponseHeader, status: u16, headers: &HeaderList, length: usize) {
    let names: Vec<http::HeaderName> = response.headers.keys().cloned().collect();
    for name in names {
        response.remove_header(&name);
    }
    let _ = response.set_status(status);
    let refused = apply_difference(response, &HeaderList::new(), headers);
    if !refused.is_empty() {
        tracing::warn!(
            ?refused,
            "a plugin's response fields are not valid HTTP; left out"
        );
    }
    let _ = response.set_content_length(length);
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = ExchangeContext;

    fn new_ctx(&self) -> ExchangeContext {
        ExchangeContext {
            started: Instant::now(),
            route: None,
            exchange: None,
            shown_headers: HeaderList::new(),
            body: BodyPlan::Pass,
            status: None,
            _in_flight: self.in_flight.enter(),
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut ExchangeContext,
    ) -> Result<bool> {
        ctx.started = Instant::now();
        let Some(running) = self.started.get() else {
            // The listener opens only once start-up is done.
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                "the gateway is starting",
            ));
        };
        let request = session.req_header();
        let host = request_host(request);
        let path = request.uri.path();
        let Some(route) = running.routes.find(host, path).cloned() else {
            let failure = Failure::no_route(host, path);
            ctx.status = Some(failure.status);
            failure::respond(session, &failure).await;
            return Ok(true);
        };
        ctx.route = Some(route.clone());
        let Some(chain) = &route.chain else {
            // Without plugins, the upstream request is all there is to
            // change (`upstream_request_filter`).
            return Ok(false);
        };

        let client = client_of(session);
        let mut shown = header_list(&request.headers);
        forwarding::remove_hop_by_hop(&mut shown, |_| false);
        let (traceparent, _) = forwarding::traceparent(&shown);
        forwarding::set_traceparent(&mut shown, &traceparent);
        forwarding::add_forwarding(&mut shown, &client);
        ctx.shown_headers = shown.clone();
        let mut exchange = chain.exchange(HttpRequest {
            method: request.method.as_str().to_string(),
            path: path.to_string(),
            query: request.uri.query().map(str::to_string),
            host: client.host.map(str::to_string),
            client_ip: client.ip.map(forwarding::ip_text),
            headers: shown,
            body: None,
        });
        exchange.traceparent = Some(traceparent);
        exchange.connection = self.connection.get().cloned();
        let verdict = chain.request_filter(&mut exchange).await;
        ctx.exchange = Some(exchange);
        match verdict {
            Ok(Verdict::Continue) => Ok(false),
            Ok(Verdict::Respond(local)) => {
                ctx.status = Some(local.status);
                failure::respond_local(session, local.status, &local.headers, local.body).await;
                Ok(true)
            }
            Err(phase_failure) => {
                let failure = Failure::phase(&phase_failure);
                ctx.status = Some(failure.status);
                if let Some(exchange) = ctx.exchange.as_mut() {
                    exchange.response = Some(HttpResponse {
                        status: failure.status,
                        ..HttpResponse::default()
                    });
                }
                failure::respond(session, &failure).await;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut ExchangeContext,
    ) -> Result<Box<HttpPeer>> {
        match &ctx.route {
            Some(route) => Ok(route.upstream.peer()),
            None => Err(Error::explain(
                ErrorType::InternalError,
                "an exchange reached the upstream without a route",
            )),
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut ExchangeContext,
    ) -> Result<()> {
        // The same changes the plugins' view got in `request_filter`, so
        // that what they changed is all that differs.
        let traceparent = match ctx.exchange.as_ref().and_then(|e| e.traceparent.clone()) {
            Some(traceparent) => traceparent,
            None => forwarding::traceparent(upstream_request).0,
        };
        forwarding::set_traceparent(upstream_request, &traceparent);
        forwarding::add_forwarding(upstream_request, &client_of(session));
        let Some(exchange) = &ctx.exchange else {
            return Ok(());
        };
        let request = &exchange.request;
        if request.body.is_some()
            && let Some(route) = &ctx.route
        {
            // The plugins got no body (`request_filter` does not buffer
            // the client's); one set by a plugin is not applied.
            route.request_body_ignored();
        }
        let refused = apply_difference(upstream_request, &ctx.shown_headers, &request.headers);
        if !refused.is_empty() {
            tracing::warn!(
                route = ctx.route_name(),
                ?refused,
                "request fields a plugin set are not valid HTTP; left out"
            );
        }
        let target = match &request.query {
            Some(query) => format!("{}?{query}", request.path),
            None => request.path.clone(),
        };
        if target != request_target(session.req_header()) {
            let uri = http::Uri::try_from(target.as_str()).map_err(|_| {
                Error::explain(
                    ErrorType::HTTPStatus(500),
                    format!("a plugin set the path `{target}`, which is not a request target"),
                )
            })?;
            upstream_request.set_uri(uri);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut ExchangeContext,
    ) -> Result<()> {
        strip_response_hop_by_hop(upstream_response);
        forwarding::add_via(upstream_response, version_text(upstream_response.version));
        ctx.status = Some(upstream_response.status.as_u16());
        let Some(route) = ctx.route.clone() else {
            return Ok(());
        };
        let (Some(chain), Some(exchange)) = (&route.chain, ctx.exchange.as_mut()) else {
            return Ok(());
        };
        // The response is copied for the plugins only when one may run
        // on it: in this phase, on the body, or at logging.
        let filtering = chain_may_run(&route, Phase::ResponseFilter);
        if !filtering
            && !chain_may_run(&route, Phase::ResponseBodyFilter)
            && !chain_may_run(&route, Phase::Logging)
        {
            return Ok(());
        }
        let headers = header_list(&upstream_response.headers);
        // What the plugins changed is found against this copy.
        let before = filtering.then(|| headers.clone());
        let response = HttpResponse {
            status: upstream_response.status.as_u16(),
            headers,
            body: None,
        };
        match chain.response_filter(exchange, response).await {
            Ok(Verdict::Continue) => {
                if let (Some(before), Some(changed)) = (&before, &exchange.response) {
                    let refused = apply_difference(upstream_response, before, &changed.headers);
                    if !refused.is_empty() {
                        tracing::warn!(
                            route = %route.name,
                            ?refused,
                            "response fields a plugin set are not valid HTTP; left out"
                        );
                    }
                    if changed.status != upstream_response.status.as_u16() {
                        upstream_response.set_status(changed.status).map_err(|_| {
                            Error::explain(
                                ErrorType::HTTPStatus(500),
                                format!("a plugin set the status {}", changed.status),
                            )
                        })?;
                    }
                }
            }
            Ok(Verdict::Respond(local)) => {
                replace_head(
                    upstream_response,
                    local.status,
                    &local.headers,
                    local.body.len(),
                );
                ctx.body = BodyPlan::Replace(Some(Bytes::from(local.body)));
            }
            Err(phase_failure) => {
                let failure = Failure::phase(&phase_failure);
                let body = failure.body();
                replace_head(
                    upstream_response,
                    failure.status,
                    &failure::text_headers(),
                    body.len(),
                );
                exchange.response = Some(HttpResponse {
                    status: failure.status,
                    ..HttpResponse::default()
                });
                ctx.body = BodyPlan::Replace(Some(body));
            }
        }
        ctx.status = Some(upstream_response.status.as_u16());
        let request = session.req_header();
        if matches!(ctx.body, BodyPlan::Pass)
            && has_body(request.method.clone(), upstream_response.status)
            && chain_may_run(&route, Phase::ResponseBodyFilter)
        {
            // The plugins may change the body's length: it goes chunked to
            // an HTTP/1.1 client, and until the connection closes to an
            // HTTP/1.0 one (HTTP/2 frames it itself).
            let chunked = request.version == http::Version::HTTP_11;
            upstream_response.remove_header(&http::header::CONTENT_LENGTH);
            if chunked && upstream_response.headers.get("transfer-encoding").is_none() {
                let _ = upstream_response.insert_header("transfer-encoding", "chunked");
            }
            // The body filters get the head the client gets.
            if let Some(response) = ctx.exchange.as_mut().and_then(|e| e.response.as_mut()) {
                response
                    .headers
                    .retain(|(name, _)| !name.eq_ignore_ascii_case("content-length"));
            }
            ctx.body = BodyPlan::Filter;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut ExchangeContext,
    ) -> Result<Option<std::time::Duration>> {
        match &mut ctx.body {
            BodyPlan::Pass => {}
            BodyPlan::Replace(replacement) => *body = replacement.take(),
            BodyPlan::Filter => {
                let (Some(route), Some(exchange)) = (ctx.route.clone(), ctx.exchange.as_mut())
                else {
                    return Ok(None);
                };
                let Some(chain) = &route.chain else {
                    return Ok(None);
                };
                let data = body.take().map(|b| b.to_vec()).unwrap_or_default();
                let filtered = crate::blocking::run(chain.response_body_filter(
                    exchange,
                    data,
                    end_of_stream,
                ))?;
                match filtered {
                    Ok(output) if output.data.is_empty() => *body = None,
                    Ok(output) => *body = Some(Bytes::from(output.data)),
                    Err(phase_failure) => {
                        // The head is out: the client can only see a cut body.
                        let failure = Failure::phase(&phase_failure);
                        return Err(Error::explain(ErrorType::InternalError, failure.message));
                    }
                }
            }
        }
        Ok(None)
    }

    async fn logging(
        &self,
        session: &mut Session,
        error: Option<&Error>,
        ctx: &mut ExchangeContext,
    ) {
        let status = ctx
            .status
            .or_else(|| session.response_written().map(|r| r.status.as_u16()))
            .unwrap_or(0);
        let elapsed = ctx.started.elapsed();
        let route = ctx.route_name().to_string();
        if let Some(metrics) = self.metrics() {
            metrics.exchange(&route, status, elapsed);
        }
        tracing::debug!(
            target: "natsplug_gateway::access",
            route = %route,
            method = %session.req_header().method,
            target = request_target(session.req_header()),
            status,
            duration_us = elapsed.as_micros() as u64,
            error = error.map(|e| e.to_string()),
            "exchange"
        );
        if let (Some(route), Some(exchange)) = (&ctx.route, ctx.exchange.as_mut())
            && let Some(chain) = &route.chain
        {
            if exchange.response.is_none() {
                exchange.response = Some(HttpResponse {
                    status,
                    ..HttpResponse::default()
                });
            }
            chain.logging(exchange);
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        _ctx: &mut ExchangeContext,
        error: Box<Error>,
    ) -> Box<Error> {
        error
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        error: &Error,
        ctx: &mut ExchangeContext,
    ) -> FailToProxy {
        let route = ctx.route.clone();
        let failure = Failure::proxy(error, route.as_deref().map(|r| &r.upstream.upstream));
        if let (Some(kind), Some(metrics)) = (failure.upstream_kind, self.metrics()) {
            metrics.upstream_failure(ctx.route_name(), kind);
        }
        if failure.status != 0 && session.response_written().is_none() {
            failure::respond(session, &failure).await;
            ctx.status = Some(failure.status);
        }
        if failure.status == 0 {
            // Not the gateway's failure nor the upstream's.
            tracing::debug!(
                route = ctx.route_name(),
                target = request_target(session.req_header()),
                "{}",
                failure.message
            );
        } else {
            tracing::warn!(
                route = ctx.route_name(),
                target = request_target(session.req_header()),
                status = failure.status,
                error = %error,
                "{}",
                failure.message
            );
        }
        FailToProxy {
            error_code: failure.status,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(
        &self,
        _session: &Session,
        _ctx: &ExchangeContext,
        _error: &Error,
    ) -> bool {
        // fail_to_proxy logs every failure, with the route.
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_1xx_204_and_304_answers_have_no_body_to_filter() {
        use http::{Method, StatusCode};
        assert!(has_body(Method::GET, StatusCode::OK));
        assert!(has_body(Method::POST, StatusCode::NOT_FOUND));
        assert!(!has_body(Method::HEAD, StatusCode::OK));
        assert!(!has_body(Method::GET, StatusCode::NO_CONTENT));
        assert!(!has_body(Method::GET, StatusCode::NOT_MODIFIED));
        assert!(!has_body(Method::GET, StatusCode::SWITCHING_PROTOCOLS));
    }
}
