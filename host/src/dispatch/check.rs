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
            if !is_header_name(name.as_bytes()) {
                return Err(format!("`{name}` is not a valid header name"));
            }
            if has_cr_lf_or_nul(value.as_bytes()) {
                return Err(format!(
                    "the value of header `{name}` contains CR, LF or NUL"
                ));
            }
        }
    }
    Ok(())
}

/// Whether `name` is an HTTP field name: one or more token characters
/// (RFC 9110 §5.1), looked up in a table.
fn is_header_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| TOKEN[usize::from(b)])
}

/// The bytes a token may hold: letters, digits and ``!#$%&'*+-.^_`|~``.
static TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        table[b] = byte.is_ascii_alphanumeric();
        b += 1;
    }
    let symbols = b"!#$%&'*+-.^_`|~";
    let mut i = 0;
    while i < symbols.len() {
        table[symbols[i] as usize] = true;
        i += 1;
    }
    table
};

/// Whether `value` holds a byte no field value may: CR, LF or NUL.
fn has_cr_lf_or_nul(value: &[u8]) -> bool {
    memchr::memchr3(b'\r', b'\n', 0, value).is_some()
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

    #[test]
    fn header_names_are_tokens_and_values_hold_no_cr_lf_or_nul() {
        for b in 0..=255u8 {
            let token = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(is_header_name(&[b'x', b]), token, "byte {b:#04x}");
            let forbidden = matches!(b, b'\r' | b'\n' | 0);
            assert_eq!(
                has_cr_lf_or_nul(&[b'a', b, b'z']),
                forbidden,
                "byte {b:#04x}"
            );
        }
        assert!(!is_header_name(b""));
        assert!(is_header_name(b"x-request-id"));
        assert!(!has_cr_lf_or_nul(b""));
        let mut long = vec![b'a'; 100];
        long.push(b'\n');
        assert!(has_cr_lf_or_nul(&long));
    }
}
