//! Checking what a call produced: a decision the protocol cannot express
//! is a plugin failure, and a guest error (trap, deadline, panic) becomes
//! the error the caller is told.

use std::time::Duration;

use natsplug_protocol::{Action, Phase, PhaseReply, RequestError};

/// Turn a guest error into what the caller is told.
pub fn classify_failure(
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
pub fn decision(reply: &PhaseReply, phase: Phase) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use natsplug_protocol::HeaderMutations;

    use super::*;

    #[test]
    fn impossible_decisions_are_rejected() {
        let mut reply = PhaseReply::next("r");
        reply.action = Action::End;
        assert_eq!(
            decision(&reply, Phase::RequestFilter).unwrap_err(),
            "action `end` needs a status"
        );
        reply.status = Some(700);
        assert!(
            decision(&reply, Phase::RequestFilter)
                .unwrap_err()
                .contains("700")
        );
        let mut reply = PhaseReply::next("r");
        reply.request_headers = Some(HeaderMutations {
            set: vec![("x-ok".into(), "a\r\nb".into())],
            remove: vec![],
        });
        assert!(
            decision(&reply, Phase::RequestFilter)
                .unwrap_err()
                .contains("CR, LF")
        );
        assert!(decision(&PhaseReply::next("r"), Phase::Logging).is_ok());
    }
}
