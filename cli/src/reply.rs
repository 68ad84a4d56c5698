//! Showing a phase reply (`call`, `invoke`): as text, as JSON, or as the raw
//! MessagePack bytes.

use std::io::Write as _;

use anyhow::Context as _;
use base64::Engine as _;

use natsplug_protocol::{self as protocol, Action, PhaseReply};

/// How a reply is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Raw,
}

impl Format {
    /// The format chosen by the `--json` and `--raw` flags.
    pub fn from_flags(json: bool, raw: bool) -> Format {
        if raw {
            Format::Raw
        } else if json {
            Format::Json
        } else {
            Format::Text
        }
    }
}

/// Bytes as JSON: a string when they are UTF-8, `{"base64": "..."}` when
/// not (the same form a request file takes).
pub fn bytes_json(bytes: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::Value::String(text.to_string()),
        Err(_) => serde_json::json!({
            "base64": base64::engine::general_purpose::STANDARD.encode(bytes)
        }),
    }
}

/// The reply as JSON, every field present (`null` when absent).
pub fn reply_json(reply: &PhaseReply) -> serde_json::Value {
    let bytes = |b: &Option<Vec<u8>>| b.as_deref().map_or(serde_json::Value::Null, bytes_json);
    let mutations = |m: &Option<protocol::HeaderMutations>| match m {
        Some(m) => serde_json::json!({ "set": m.set, "remove": m.remove }),
        None => serde_json::Value::Null,
    };
    serde_json::json!({
        "version": reply.version,
        "request_id": reply.request_id,
        "action": reply.action,
        "request_headers": mutations(&reply.request_headers),
        "response_headers": mutations(&reply.response_headers),
        "status": reply.status,
        "body": bytes(&reply.body),
        "error": reply.error,
        "path": reply.path,
        "state": bytes(&reply.state),
    })
}

/// The reply as `key: value` lines.
pub fn print_reply(reply: &PhaseReply) {
    let action = match reply.action {
        Action::Next => "next",
        Action::End => "end",
        Action::Error => "error",
    };
    println!("action: {action}");
    if let Some(status) = reply.status {
        println!("status: {status}");
    }
    for (label, mutations) in [
        ("request", &reply.request_headers),
        ("response", &reply.response_headers),
    ] {
        if let Some(m) = mutations {
            for (name, value) in &m.set {
                println!("{label} header set: {name}: {value}");
            }
            for name in &m.remove {
                println!("{label} header removed: {name}");
            }
        }
    }
    if let Some(path) = &reply.path {
        println!("path: {path}");
    }
    if let Some(body) = &reply.body {
        println!("body: {}", String::from_utf8_lossy(body));
    }
    if let Some(state) = &reply.state {
        println!("state: {}", String::from_utf8_lossy(state));
    }
    if let Some(error) = &reply.error {
        println!("error: {error}");
    }
}

/// Write the encoded reply to standard output as it is.
pub fn write_raw(payload: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(payload)
        .and_then(|()| stdout.flush())
        .context("writing the reply to standard output")
}

/// The error a reply carries, as the command's failure: an `error` reply
/// makes the command exit non-zero after it was printed.
pub fn fail_on_error(reply: &PhaseReply) -> anyhow::Result<()> {
    if reply.action == Action::Error {
        anyhow::bail!(
            "the plugin answered with an error: {}",
            reply.error.as_deref().unwrap_or_default()
        );
    }
    Ok(())
}
