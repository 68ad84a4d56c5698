//! `natsplug call`: send one phase request over NATS and print the reply.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use clap::Args;

use crate::reply::{self, Format};
use crate::request::{RequestArgs, parse_phase};
use natsplug::config::{DEFAULT_NATS_URL, SubjectsConfig};
use natsplug_protocol as protocol;
use natsplug_protocol::Phase;

pub const EXAMPLES: &str = "Examples:
  natsplug call authz request_filter --path /admin -H 'authorization: Bearer s3cret'
  natsplug call header-injector request_filter --method POST --path /x --body @body.json --json
  natsplug call authz request_filter --request admin.yaml
  natsplug call body-redactor response_body_filter --body 'card 4111 1111 1111 1111' --raw > reply.msgpack";

/// Flags of `call`.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// Plugin name.
    plugin: String,
    /// Phase: request_filter, response_filter, response_body_filter or logging.
    phase: String,
    #[command(flatten)]
    request: RequestArgs,
    /// Print the reply as JSON.
    #[arg(long)]
    json: bool,
    /// Write the reply's MessagePack bytes to standard output, unchanged.
    #[arg(long, conflicts_with = "json")]
    raw: bool,
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
    let phase = parse_phase(&args.phase)?;
    let request = args
        .request
        .load()?
        .build(phase, &format!("call-{}", std::process::id()))?;
    let subject = subject(&args.prefix, &args.plugin, phase);
    let client = natsplug::nats::connect(std::slice::from_ref(&args.nats_url)).await?;
    let payload = protocol::encode_request(&request);
    let reply = send(&client, &subject, phase, payload, timeout(args.timeout)?).await?;
    let decoded = protocol::decode_reply(&reply.payload)
        .with_context(|| format!("the reply on {subject} is not a valid phase reply"))?;
    match Format::from_flags(args.json, args.raw) {
        Format::Raw => reply::write_raw(&reply.payload)?,
        Format::Json => println!("{}", reply::reply_json(&decoded)),
        Format::Text => reply::print_reply(&decoded),
    }
    reply::fail_on_error(&decoded)?;
    Ok(ExitCode::SUCCESS)
}

/// `{prefix}.{plugin}.{phase}`.
pub fn subject(prefix: &str, plugin: &str, phase: Phase) -> String {
    format!("{prefix}.{plugin}.{phase}")
}

/// A `--timeout` in seconds as a duration.
pub fn timeout(seconds: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow!("--timeout {seconds} is not a positive number of seconds"))
}

/// Send one request and wait for its reply; the errors say what to check.
pub async fn send(
    client: &async_nats::Client,
    subject: &str,
    phase: Phase,
    payload: Vec<u8>,
    timeout: Duration,
) -> anyhow::Result<async_nats::Message> {
    tokio::time::timeout(
        timeout,
        client.request(subject.to_string(), payload.into()),
    )
    .await
    .map_err(|_| {
        anyhow!(
            "no reply on {subject} within {} s: the host may be overloaded or the plugin slow; raise --timeout",
            timeout.as_secs_f64()
        )
    })?
    .map_err(|error| match error.kind() {
        async_nats::RequestErrorKind::NoResponders => anyhow!(
            "no host serves {subject}: is `natsplug up` running on this NATS server with the plugin loaded, and does the plugin implement {phase}?"
        ),
        _ => anyhow!("request on {subject} failed: {error}"),
    })
}
