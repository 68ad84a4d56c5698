//! One phase call, start to finish: decode the request, pick or make an
//! instance, call the guest under its deadline, check and encode the reply.
//!
//! This is the whole request path minus NATS, so the host and local tools
//! (`natsplug invoke`) give the same answer for the same bytes.

use std::time::Duration;

use crate::bindings::natsplug::plugin::types as wit;
use crate::config::{FailureMode, InstanceMode};
use crate::logs::LogRecord;
use crate::plugin::{LoadedPlugin, PluginInstance};
use crate::sandbox::CallContext;
use natsplug_protocol::Phase;
use natsplug_protocol::{
    self as protocol, Action, BodyChunkView, HeaderMutations, HttpRequestView, HttpResponseView,
    PhaseReply, PhaseRequestView, RequestError,
};

/// Host-wide call settings; per-plugin limits are in [`crate::plugin::PluginLimits`].
#[derive(Debug, Clone)]
pub struct CallSettings {
    /// Reuse warm instances or make one per call.
    pub instance_mode: InstanceMode,
    /// With reuse: calls before an instance is replaced.
    pub max_calls_per_instance: u64,
    /// The largest encoded reply that can be sent.
    pub max_reply_bytes: usize,
}

impl CallSettings {
    /// The settings of a host runtime config.
    pub fn from_runtime(runtime: &crate::config::RuntimeConfig, max_reply_bytes: usize) -> Self {
        CallSettings {
            instance_mode: runtime.instance_mode,
            max_calls_per_instance: runtime.max_calls_per_instance,
            max_reply_bytes,
        }
    }
}

/// The result of one call: the encoded reply, the error it carries (for the
/// service error headers), and what the plugin logged.
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
    /// An error outcome for `request_id`.
    pub fn failure(request_id: String, error: RequestError) -> Outcome {
        let reply = PhaseReply::error(request_id, error.to_string());
        Outcome {
            payload: protocol::encode_reply(&reply),
            error: Some(error),
            records: Vec::new(),
            dropped_records: 0,
            failed_open: None,
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
                payload: protocol::encode_reply(&reply),
                error: None,
                records: Vec::new(),
                dropped_records: 0,
                failed_open: Some(error),
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

/// Run the request in `payload` through `plugin`'s `phase`.
///
/// `slot` holds this worker's warm instance of the plugin; it is reused when
/// it belongs to the same load of the plugin and refilled or emptied as the
/// instance policy says.
pub fn run(
    slot: &mut Option<PluginInstance>,
    plugin: &LoadedPlugin,
    phase: Phase,
    payload: &[u8],
    trace_id: Option<String>,
    settings: &CallSettings,
) -> Outcome {
    let request = match protocol::decode_request_view(payload, phase) {
        Ok(request) => request,
        Err((request_id, error)) => return Outcome::failure(request_id, error),
    };
    let _span = tracing::debug_span!(
        "call",
        plugin = %plugin.name,
        %phase,
        request_id = %request.request_id,
        trace_id = trace_id.as_deref()
    )
    .entered();
    if !plugin.implements(phase) {
        let message = format!(
            "plugin `{}` does not implement phase `{phase}`",
            plugin.name
        );
        return Outcome::failure(
            request.request_id.to_string(),
            RequestError::BadRequest(message),
        );
    }
    if slot.as_ref().is_some_and(|i| i.plugin_id != plugin.id) {
        *slot = None;
    }
    let instance = match slot {
        Some(instance) => instance,
        None => match plugin.instantiate() {
            Ok(instance) => slot.insert(instance),
            Err(error) => {
                let message = format!(
                    "plugin `{}` could not be instantiated: {error:#}",
                    plugin.name
                );
                return Outcome::failure_with_mode(
                    request.request_id.to_string(),
                    RequestError::PluginFailed(message),
                    plugin.limits.failure_mode(phase),
                );
            }
        },
    };
    // Borrowed from the message; copied only if the call fails.
    let request_id = request.request_id;
    let timeout = plugin.limits.call_timeout;
    let result = call(instance, phase, request, trace_id, timeout);
    instance.calls += 1;
    let (records, dropped_records) = instance.store.data_mut().take_records();

    let keep = result.is_ok()
        && settings.instance_mode == InstanceMode::Reuse
        && instance.calls < settings.max_calls_per_instance;
    if !keep {
        *slot = None;
    }

    let failure = match result {
        Ok(reply) => match check_reply(&reply, phase) {
            Ok(()) => {
                let payload = protocol::encode_reply(&reply);
                if payload.len() <= settings.max_reply_bytes {
                    return Outcome {
                        payload,
                        error: None,
                        records,
                        dropped_records,
                        failed_open: None,
                    };
                }
                RequestError::PluginFailed(format!(
                    "plugin `{}` returned a reply of {} bytes in {phase}, above the {} bytes the connection can carry",
                    plugin.name,
                    payload.len(),
                    settings.max_reply_bytes
                ))
            }
            Err(problem) => RequestError::PluginFailed(format!(
                "plugin `{}` returned an invalid decision in {phase}: {problem}",
                plugin.name
            )),
        },
        Err(error) => {
            // A failed instance may be in any state: never reuse it.
            *slot = None;
            classify_failure(&plugin.name, phase, timeout, &error)
        }
    };
    let mode = plugin.limits.failure_mode(phase);
    Outcome {
        records,
        dropped_records,
        ..Outcome::failure_with_mode(request_id.to_string(), failure, mode)
    }
}

/// The guest call alone, for a request already decoded: lower the request
/// into `instance`, run `phase` under `timeout`, lift the decision. [`run`]
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
    instance.store.data_mut().call = CallContext {
        request_id: request_id.to_string(),
        session_id,
        trace_id: trace_id.clone(),
    };
    instance
        .store
        .set_epoch_deadline(crate::engine::deadline_ticks(timeout));
    let wit_request = to_wit_request(&http_request);
    let handler = instance.bindings.natsplug_plugin_handler();
    let store = &mut instance.store;
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

/// Turn a guest error into what the caller is told.
fn classify_failure(
    plugin: &str,
    phase: Phase,
    timeout: Duration,
    error: &wasmtime::Error,
) -> RequestError {
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => RequestError::Timeout(format!(
            "plugin `{plugin}` exceeded its {} ms deadline in {phase}",
            timeout.as_millis()
        )),
        Some(trap) => {
            let trap = trap.to_string();
            RequestError::PluginFailed(format!(
                "plugin `{plugin}` trapped in {phase}: {}{}",
                trap.trim_start_matches("wasm trap: "),
                guest_frames(error)
            ))
        }
        None => {
            RequestError::PluginFailed(format!("plugin `{plugin}` failed in {phase}: {error:#}"))
        }
    }
}

/// The innermost guest function names of a trap's backtrace, when known.
fn guest_frames(error: &wasmtime::Error) -> String {
    let Some(backtrace) = error.downcast_ref::<wasmtime::WasmBacktrace>() else {
        return String::new();
    };
    let names: Vec<String> = backtrace
        .frames()
        .iter()
        .filter_map(|frame| frame.func_name().map(str::to_string))
        .take(3)
        .collect();
    if names.is_empty() {
        String::new()
    } else {
        format!(" (in {})", names.join(" < "))
    }
}

/// Decisions the protocol cannot express are plugin failures.
fn check_reply(reply: &PhaseReply, phase: Phase) -> Result<(), String> {
    if let Some(status) = reply.status
        && !(100..=599).contains(&status)
    {
        return Err(format!("status {status} is not an HTTP status (100-599)"));
    }
    if reply.action == Action::End && reply.status.is_none() {
        return Err("action `end` needs a status".into());
    }
    if let Some(path) = &reply.path {
        if phase != Phase::RequestFilter {
            return Err("`path` can only be rewritten in request_filter".into());
        }
        if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(format!(
                "`{path}` is not a valid request path (it must start with `/` and hold no spaces or control characters)"
            ));
        }
    }
    if reply.state.is_some() && phase != Phase::ResponseBodyFilter {
        return Err("`state` is only meaningful in response_body_filter".into());
    }
    let mutations = [&reply.request_headers, &reply.response_headers];
    for mutation in mutations.into_iter().flatten() {
        for (name, value) in &mutation.set {
            if name.is_empty() || !name.bytes().all(is_header_name_byte) {
                return Err(format!("`{name}` is not a valid header name"));
            }
            if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(format!(
                    "the value of header `{name}` contains CR, LF or NUL"
                ));
            }
        }
    }
    Ok(())
}

fn is_header_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
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
    fn impossible_decisions_are_rejected() {
        let mut reply = PhaseReply::next("r");
        reply.action = Action::End;
        assert_eq!(
            check_reply(&reply, Phase::RequestFilter).unwrap_err(),
            "action `end` needs a status"
        );
        reply.status = Some(700);
        assert!(
            check_reply(&reply, Phase::RequestFilter)
                .unwrap_err()
                .contains("700")
        );
        let mut reply = PhaseReply::next("r");
        reply.request_headers = Some(HeaderMutations {
            set: vec![("x-ok".into(), "a\r\nb".into())],
            remove: vec![],
        });
        assert!(
            check_reply(&reply, Phase::RequestFilter)
                .unwrap_err()
                .contains("CR, LF")
        );
        assert!(check_reply(&PhaseReply::next("r"), Phase::Logging).is_ok());
    }
}
