//! Dispatch: one phase call, start to finish, on the thread that runs it.
//! Decode the request ([`crate::decode`]), pick or make an instance under
//! the instance policy, call the guest under its deadline (`guest`), check
//! the decision (`check`) and encode the reply.
//!
//! This is the whole request path minus NATS, so the host and local tools
//! (`natsplug invoke`) give the same answer for the same bytes.

mod check;
mod guest;

use natsplug_protocol::{self as protocol, Phase, RequestError};

use crate::config::{InstanceMode, RuntimeConfig};
use crate::decode;
use crate::plugin::{LoadedPlugin, PluginInstance};
use crate::reply::Outcome;

pub use guest::call;

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
    pub fn from_runtime(runtime: &RuntimeConfig, max_reply_bytes: usize) -> Self {
        CallSettings {
            instance_mode: runtime.instance_mode,
            max_calls_per_instance: runtime.max_calls_per_instance,
            max_reply_bytes,
        }
    }
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
    let request = match decode::request(payload, phase) {
        Ok(request) => request,
        Err(refused) => return refused,
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
    let result = call(instance, phase, &request, trace_id, timeout);
    let (records, dropped_records) = instance.end_call();
    // A decision the guest returned but the protocol cannot carry is the
    // guest's answer, like any invalid decision: the instance is sound.
    let result = result.map_err(
        |error| match error.downcast::<guest::UnsendableDecision>() {
            Ok(problem) => Unsuccessful::Invalid(problem.to_string()),
            Err(error) => Unsuccessful::Failed(error),
        },
    );
    let answered = !matches!(result, Err(Unsuccessful::Failed(_)));

    let keep = answered
        && settings.instance_mode == InstanceMode::Reuse
        && instance.calls() < settings.max_calls_per_instance;
    if !keep {
        *slot = None;
    }

    let failure = match result {
        Err(Unsuccessful::Invalid(problem)) => RequestError::PluginFailed(format!(
            "plugin `{}` returned an invalid decision in {phase}: {problem}",
            plugin.name
        )),
        Ok(reply) => match check::decision(&reply, phase) {
            Ok(()) => {
                let payload = protocol::encode_reply(&reply);
                if payload.len() <= settings.max_reply_bytes {
                    return Outcome {
                        records,
                        dropped_records,
                        ..Outcome::success(payload)
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
        Err(Unsuccessful::Failed(error)) => {
            // A failed instance may be in any state: never reuse it.
            *slot = None;
            check::classify_failure(&plugin.name, phase, timeout, &error)
        }
    };
    let mode = plugin.limits.failure_mode(phase);
    Outcome {
        records,
        dropped_records,
        ..Outcome::failure_with_mode(request_id.to_string(), failure, mode)
    }
}

/// Why a guest call gave no reply to send.
enum Unsuccessful {
    /// The guest answered with a decision the protocol cannot carry.
    Invalid(String),
    /// The guest failed: trapped, ran out of time, or could not be called.
    Failed(wasmtime::Error),
}
