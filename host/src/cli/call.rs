//! `natsplug call`: send one phase request over NATS and print the reply.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::Args;

use crate::config::{DEFAULT_NATS_URL, SubjectsConfig};
use crate::phase::Phase;
use crate::protocol::{self, BodyChunk, HttpRequest, HttpResponse, PhaseReply, PhaseRequest};

pub const EXAMPLES: &str = "Examples:
  natsplug call auth request_filter --path /admin -H 'authorization: Bearer s3cret'
  natsplug call header-injector request_filter --method POST --path /x --body @body.json --json";

/// Flags of `call`.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// Plugin name.
    plugin: String,
    /// Phase: request_filter, response_filter, response_body_filter or logging.
    phase: String,
    /// HTTP method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Request path.
    #[arg(long, default_value = "/")]
    path: String,
    /// Request header `name: value`; repeat for more.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Request body (or the chunk for response_body_filter); `@FILE` reads a file.
    #[arg(long)]
    body: Option<String>,
    /// Upstream status, for response phases and logging.
    #[arg(long)]
    status: Option<u16>,
    /// Session id shared by the phases of one exchange.
    #[arg(long)]
    session_id: Option<u64>,
    /// Print the reply as JSON.
    #[arg(long)]
    json: bool,
    /// NATS server URL.
    #[arg(long = "nats", env = "NATSPLUG_NATS_URL", default_value = DEFAULT_NATS_URL)]
    nats_url: String,
    /// Subject prefix.
    #[arg(long, env = "NATSPLUG_PREFIX", default_value_t = SubjectsConfig::default().prefix)]
    prefix: String,
    /// Seconds to wait for the reply.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
}

pub async fn run(args: CallArgs) -> anyhow::Result<ExitCode> {
    let phase = Phase::parse(&args.phase).ok_or_else(|| {
        anyhow!(
            "unknown phase `{}`: use request_filter, response_filter, response_body_filter or logging",
            args.phase
        )
    })?;
    let headers = args
        .headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| anyhow!("header `{h}` is not `name: value`"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let body = match &args.body {
        Some(spec) => Some(match spec.strip_prefix('@') {
            Some(file) => {
                std::fs::read(file).with_context(|| format!("reading body file {file}"))?
            }
            None => spec.clone().into_bytes(),
        }),
        None => None,
    };
    let (request_body, chunk) = if phase == Phase::ResponseBodyFilter {
        (
            None,
            Some(BodyChunk {
                data: body.unwrap_or_default(),
                end_of_stream: true,
                state: None,
            }),
        )
    } else {
        (body, None)
    };
    let response = match phase {
        Phase::RequestFilter => None,
        _ => Some(HttpResponse {
            status: args.status.unwrap_or(200),
            headers: Vec::new(),
            body: None,
        }),
    };
    let request = PhaseRequest {
        version: protocol::PROTOCOL_VERSION,
        request_id: format!("call-{}", std::process::id()),
        session_id: args.session_id,
        phase: phase.as_str().to_string(),
        request: HttpRequest {
            method: args.method.clone(),
            path: args.path.clone(),
            headers,
            body: request_body,
            ..Default::default()
        },
        response,
        chunk,
        duration_ms: (phase == Phase::Logging).then_some(0),
    };
    let subject = format!("{}.{}.{}", args.prefix, args.plugin, phase);
    let client = crate::nats::connect(std::slice::from_ref(&args.nats_url)).await?;
    let reply = tokio::time::timeout(
        Duration::from_secs_f64(args.timeout),
        client.request(subject.clone(), protocol::encode_request(&request).into()),
    )
    .await
    .map_err(|_| anyhow!("no reply on {subject} within {} s", args.timeout))?
    .map_err(|error| match error.kind() {
        async_nats::RequestErrorKind::NoResponders => anyhow!(
            "no host serves {subject}: is the plugin loaded, and does it implement {phase}?"
        ),
        _ => anyhow!("request on {subject} failed: {error}"),
    })?;
    let decoded = protocol::decode_reply(&reply.payload)
        .with_context(|| format!("the reply on {subject} is not a valid phase reply"))?;
    if args.json {
        println!("{}", reply_json(&decoded));
    } else {
        print_reply(&decoded);
    }
    if decoded.action == protocol::Action::Error {
        bail!(
            "the plugin answered with an error: {}",
            decoded.error.unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The reply as JSON; bodies are shown as text when they are UTF-8.
pub fn reply_json(reply: &PhaseReply) -> serde_json::Value {
    let bytes = |b: &Option<Vec<u8>>| match b {
        Some(b) => match std::str::from_utf8(b) {
            Ok(text) => serde_json::Value::String(text.to_string()),
            Err(_) => serde_json::Value::from(b.clone()),
        },
        None => serde_json::Value::Null,
    };
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

fn print_reply(reply: &PhaseReply) {
    let action = match reply.action {
        protocol::Action::Next => "next",
        protocol::Action::End => "end",
        protocol::Action::Error => "error",
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
    if let Some(error) = &reply.error {
        println!("error: {error}");
    }
}
