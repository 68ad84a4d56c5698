//! The guest call: lower a decoded request into the instance, run the
//! phase's export under the call's deadline, and lift the decision into a
//! protocol reply.

use std::time::Duration;

use natsplug_protocol::{
    self as protocol, Action, BodyChunkView, HeaderMutations, HttpRequestView, HttpResponseView,
    Phase, PhaseReply, PhaseRequestView,
};

use crate::bindings::natsplug::plugin::types as wit;
use crate::plugin::PluginInstance;

/// The guest call alone, for a request already decoded: lower the request
/// into `instance`, run `phase` under `timeout`, lift the decision. [`super::run`]
/// wraps it with decoding, instance policy, checks and encoding.
pub fn call(
    instance: &mut PluginInstance,
    phase: Phase,
    request: PhaseRequestView<'_>,
    trace_id: Option<String>,
    timeout: Duration,
) -> wasmtime::Result<PhaseReply> {
    let PhaseRequestView {
        request_id,
        session_id,
        request: http_request,
        response,
        chunk,
        duration_ms,
        ..
    } = request;
    let ctx = wit::Context {
        request_id,
        session_id,
        trace_id: trace_id.as_deref(),
    };
    instance.begin_call(
        super::call_context(request_id, session_id, trace_id.as_deref()),
        timeout,
    );
    let wit_request = to_wit_request(&http_request);
    let (handler, store) = instance.handler();
    let decision = match phase {
        Phase::RequestFilter => handler.call_request_filter(store, ctx, wit_request)?,
        Phase::ResponseFilter => {
            let response = response.unwrap_or_default();
            handler.call_response_filter(store, ctx, wit_request, to_wit_response(&response))?
        }
        Phase::ResponseBodyFilter => {
            let chunk = chunk.unwrap_or_default();
            handler.call_response_body_filter(
                store,
                ctx,
                wit_request,
                response.as_ref().map(to_wit_response),
                to_wit_chunk(&chunk),
            )?
        }
        Phase::Logging => {
            let response = response.as_ref().map(to_wit_response);
            handler.call_logging(store, ctx, wit_request, response, duration_ms)?;
            return Ok(PhaseReply::next(request_id));
        }
    };
    Ok(from_wit_decision(request_id.to_string(), decision))
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
