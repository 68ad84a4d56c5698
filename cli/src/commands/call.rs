//! `natsplug call`: send one phase request over NATS and print the reply.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use crate::remote;
use crate::reply::{self, Format};
use crate::request::{RequestArgs, parse_phase};
use natsplug::config::{DEFAULT_NATS_URL, SubjectsConfig};
use natsplug_protocol as protocol;

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
    let subject = remote::subject(&args.prefix, &args.plugin, phase);
    let client = natsplug::nats::connect(std::slice::from_ref(&args.nats_url)).await?;
    let payload = protocol::encode_request(&request);
    let reply = remote::send(
        &client,
        &subject,
        phase,
        payload,
        remote::timeout(args.timeout)?,
    )
    .await?;
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
