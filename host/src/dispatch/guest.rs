//! The guest call: lower a decoded request into the instance, run the
//! phase's export under the call's deadline, and lift the decision into a
//! protocol reply, for each contract version.

use std::time::Duration;

use natsplug_protocol::{
    self as protocol, Action, BodyChunkView, HeaderMutations, HttpRequestView, HttpResponseView,
    Phase, PhaseReply, PhaseRequestView,
};

use crate::bindings::v0_1::natsplug::plugin::types as wit;
use crate::bindings::v0_2::natsplug::plugin::types as wit2;
use crate::bindings::{v0_1, v0_2};
use crate::plugin::{Exports, ExportsV0_2, PluginInstance, Scratch};
use crate::sandbox::CallIds;

/// The guest call alone, for a request already decoded: lower the request
/// into `instance`, run `phase` under `timeout`, lift the decision. [`super::run`]
/// wraps it with decoding, instance policy, checks and encoding.
pub fn call(
    instance: &mut PluginInstance,
    phase: Phase,
    request: &PhaseRequestView<'_>,
    trace_id: Option<String>,
    timeout: Duration,
) -> wasmtime::Result<PhaseReply> {
    // Borrowed: the view is large, and a move of it is a copy.
    let &PhaseRequestView {
        request_id,
        session_id,
        request: ref http_request,
        ref response,
        ref chunk,
        duration_ms,
        ..
    } = request;
    let ids = CallIds {
        request_id,
        session_id,
        trace_id: trace_id.as_deref(),
    };
    instance.begin_call(ids, timeout);
    let (exports, store, scratch) = instance.parts();
    let exchange = Exchange {
        request: http_request,
        response: response.as_ref(),
        chunk: chunk.as_ref(),
        duration_ms,
    };
    match exports {
        Exports::V0_1(bindings) => {
            let ctx = wit::Context {
                request_id,
                session_id,
                trace_id: trace_id.as_deref(),
            };
            call_v0_1(bindings, store, phase, ctx, exchange, request_id)
        }
        Exports::V0_2(exports) => {
            let ctx = wit2::Context {
                request_id,
                session_id,
                trace_id: trace_id.as_deref(),
            };
            call_v0_2(exports, store, scratch, phase, ctx, exchange, request_id)
        }
    }
}

/// The parts of a decoded request a phase may pass to the guest.
#[derive(Clone, Copy)]
struct Exchange<'r, 'a> {
    request: &'r HttpRequestView<'a>,
    response: Option<&'r HttpResponseView<'a>>,
    chunk: Option<&'r BodyChunkView<'a>>,
    duration_ms: Option<u64>,
}

type GuestStore<'s> = &'s mut wasmtime::Store<crate::sandbox::InstanceState>;

fn call_v0_1(
    bindings: &v0_1::Plugin,
    store: GuestStore<'_>,
    phase: Phase,
    ctx: wit::Context<'_>,
    exchange: Exchange<'_, '_>,
    request_id: &str,
) -> wasmtime::Result<PhaseReply> {
    let handler = bindings.natsplug_plugin_handler();
    let wit_request = to_wit_request(exchange.request);
    let decision = match phase {
        Phase::RequestFilter => handler.call_request_filter(store, ctx, wit_request)?,
        Phase::ResponseFilter => {
            let absent = HttpResponseView::default();
            let response = exchange.response.unwrap_or(&absent);
            handler.call_response_filter(store, ctx, wit_request, to_wit_response(response))?
        }
        Phase::ResponseBodyFilter => {
            let absent = BodyChunkView::default();
            let chunk = exchange.chunk.unwrap_or(&absent);
            handler.call_response_body_filter(
                store,
                ctx,
                wit_request,
                exchange.response.map(to_wit_response),
                to_wit_chunk(chunk),
            )?
        }
        Phase::Logging => {
            let response = exchange.response.map(to_wit_response);
            handler.call_logging(store, ctx, wit_request, response, exchange.duration_ms)?;
            return Ok(PhaseReply::next(request_id));
        }
    };
    Ok(from_wit_decision(request_id.to_string(), decision))
}

/// A 0.2.0 call. The header lists are encoded into the instance's scratch
/// buffers and lowered as one list each; `response-body-filter` gets the
/// response's status and headers and the chunk, not the request.
fn call_v0_2(
    exports: &ExportsV0_2,
    store: GuestStore<'_>,
    scratch: &mut Scratch,
    phase: Phase,
    ctx: wit2::Context<'_>,
    exchange: Exchange<'_, '_>,
    request_id: &str,
) -> wasmtime::Result<PhaseReply> {
    let not_exported = || wasmtime::format_err!("the component does not export `{phase}`");
    let Scratch {
        request_fields,
        response_fields,
    } = scratch;
    request_fields.clear();
    response_fields.clear();
    let needs_request = phase != Phase::ResponseBodyFilter;
    if needs_request {
        v0_2::encode_fields(request_fields, &exchange.request.headers);
    }
    if let Some(response) = exchange.response {
        v0_2::encode_fields(response_fields, &response.headers);
    }
    let r = exchange.request;
    let request = wit2::Request {
        method: r.method,
        path: r.path,
        query: r.query,
        host: r.host,
        client_ip: r.client_ip,
        headers: request_fields,
        body: r.body.as_deref(),
    };
    let response = exchange.response.map(|response| wit2::Response {
        status: response.status,
        headers: response_fields,
        body: response.body.as_deref(),
    });
    let mut reply = PhaseReply::next(request_id);
    match phase {
        Phase::RequestFilter => {
            let guest = exports.request_filter.as_ref().ok_or_else(not_exported)?;
            match guest.call_request_filter(store, ctx, request)? {
                wit2::RequestDecision::Next(changes) => {
                    reply.request_headers = changes.headers.map(from_wit2_changes).transpose()?;
                    reply.body = changes.body;
                    reply.path = changes.path;
                }
                wit2::RequestDecision::End(local) => end_with(&mut reply, local)?,
                wit2::RequestDecision::Fail(reason) => fail_with(&mut reply, reason),
            }
        }
        Phase::ResponseFilter => {
            let guest = exports.response_filter.as_ref().ok_or_else(not_exported)?;
            let response = response.unwrap_or(wit2::Response {
                status: 0,
                headers: &[],
                body: None,
            });
            match guest.call_response_filter(store, ctx, request, response)? {
                wit2::ResponseDecision::Next(changes) => {
                    reply.status = changes.status;
                    reply.response_headers = changes.headers.map(from_wit2_changes).transpose()?;
                }
                wit2::ResponseDecision::End(local) => end_with(&mut reply, local)?,
                wit2::ResponseDecision::Fail(reason) => fail_with(&mut reply, reason),
            }
        }
        Phase::ResponseBodyFilter => {
            let guest = exports
                .response_body_filter
                .as_ref()
                .ok_or_else(not_exported)?;
            let head = response.map(|r| wit2::ResponseHead {
                status: r.status,
                headers: r.headers,
            });
            let absent = BodyChunkView::default();
            let chunk = exchange.chunk.unwrap_or(&absent);
            let chunk = wit2::Chunk {
                data: &chunk.data,
                end_of_stream: chunk.end_of_stream,
                state: chunk.state.as_deref(),
            };
            match guest.call_response_body_filter(store, ctx, head, chunk)? {
                wit2::ChunkDecision::Next(changes) => {
                    reply.body = changes.data;
                    reply.state = changes.state;
                }
                wit2::ChunkDecision::Fail(reason) => fail_with(&mut reply, reason),
            }
        }
        Phase::Logging => {
            let guest = exports.logging.as_ref().ok_or_else(not_exported)?;
            guest.call_logging(store, ctx, request, response, exchange.duration_ms)?;
        }
    }
    Ok(reply)
}

/// A decision the guest returned normally that the wire protocol cannot
/// carry: an invalid decision, not a failed instance.
#[derive(Debug)]
pub struct UnsendableDecision(String);

impl std::fmt::Display for UnsendableDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UnsendableDecision {}

/// A header value the wire protocol can carry: UTF-8 text.
fn wire_value(name: &str, value: Vec<u8>) -> wasmtime::Result<String> {
    String::from_utf8(value).map_err(|_| {
        wasmtime::Error::new(UnsendableDecision(format!(
            "the value it set for header `{name}` is not UTF-8, which protocol version {} cannot carry",
            protocol::PROTOCOL_VERSION
        )))
    })
}

fn wire_fields(fields: Vec<(String, Vec<u8>)>) -> wasmtime::Result<Vec<(String, String)>> {
    fields
        .into_iter()
        .map(|(name, value)| {
            let value = wire_value(&name, value)?;
            Ok((name, value))
        })
        .collect()
}

fn from_wit2_changes(changes: wit2::HeaderChanges) -> wasmtime::Result<HeaderMutations> {
    Ok(HeaderMutations {
        set: wire_fields(changes.set)?,
        remove: changes.remove,
    })
}

fn end_with(reply: &mut PhaseReply, local: wit2::LocalResponse) -> wasmtime::Result<()> {
    reply.action = Action::End;
    reply.status = Some(local.status);
    if !local.headers.is_empty() {
        reply.response_headers = Some(HeaderMutations {
            set: wire_fields(local.headers)?,
            remove: Vec::new(),
        });
    }
    reply.body = local.body;
    Ok(())
}

fn fail_with(reply: &mut PhaseReply, reason: String) {
    reply.action = Action::Error;
    reply.error = Some(reason);
}

fn to_wit_request<'a>(r: &'a HttpRequestView<'a>) -> wit::Request<'a> {
    wit::Request {
        method: r.method,
        path: r.path,
        query: r.query,
        host: r.host,
        client_ip: r.client_ip,
        headers: &r.headers,
        body: r.body.as_deref(),
    }
}

fn to_wit_response<'a>(r: &'a HttpResponseView<'a>) -> wit::Response<'a> {
    wit::Response {
        status: r.status,
        headers: &r.headers,
        body: r.body.as_deref(),
    }
}

fn to_wit_chunk<'a>(c: &'a BodyChunkView<'a>) -> wit::Chunk<'a> {
    wit::Chunk {
        data: &c.data,
        end_of_stream: c.end_of_stream,
        state: c.state.as_deref(),
    }
}

fn from_wit_mutations(m: wit::HeaderMutations) -> HeaderMutations {
    HeaderMutations {
        set: m.set,
        remove: m.remove,
    }
}

fn from_wit_decision(request_id: String, d: wit::Decision) -> PhaseReply {
    PhaseReply {
        version: protocol::PROTOCOL_VERSION,
        request_id,
        action: match d.action {
            wit::Action::Next => Action::Next,
            wit::Action::End => Action::End,
            wit::Action::Fail => Action::Error,
        },
        request_headers: d.request_headers.map(from_wit_mutations),
        response_headers: d.response_headers.map(from_wit_mutations),
        status: d.status,
        body: d.body,
        error: d.error,
        path: d.path,
        state: d.state,
    }
}
