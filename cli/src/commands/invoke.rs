//! `natsplug invoke`: run one phase of a plugin file locally, without NATS,
//! through the host's own request path ([`natsplug::dispatch::run`]), and print
//! the reply and the records the plugin logged.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};
use clap::Args;

use crate::local;
use crate::reply::{self, Format};
use crate::request::{RequestArgs, parse_phase};
use natsplug::config::HostConfig;
use natsplug::decode;
use natsplug::dispatch::{self, CallSettings};
use natsplug::logs::{LogRecord, LogValue};
use natsplug_protocol as protocol;
use natsplug_protocol::Phase;

pub const EXAMPLES: &str = "Examples:
  natsplug invoke target/wasm32-wasip2/release/authz.wasm --path /admin --set token=s3cret
  natsplug invoke authz.wasm request_filter --request admin.yaml --json
  natsplug invoke access-logger.wasm logging --path /x --status 503
  natsplug invoke authz.wasm --config natsplug.toml -H 'authorization: Bearer s3cret'

The reply is the one `natsplug up` would send for the same request: the same
limits (deadline, memory), failure modes and plugin config apply. Without
a PHASE, the request file's `phase` or the plugin's only phase is used.";

/// The largest reply a default NATS server carries (its `max_payload`).
pub const DEFAULT_MAX_REPLY_BYTES: usize = 1024 * 1024;

/// Flags of `invoke`.
#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// The plugin component (.wasm).
    plugin: PathBuf,
    /// Phase: request_filter, response_filter, response_body_filter or logging.
    phase: Option<String>,
    #[command(flatten)]
    request: RequestArgs,
    /// Host config file (TOML): its [runtime] limits and [plugin.NAME] settings apply.
    #[arg(long, short, env = "NATSPLUG_CONFIG")]
    config: Option<PathBuf>,
    /// Plugin name, for [plugin.NAME] and the log records [default: the file stem].
    #[arg(long)]
    name: Option<String>,
    /// Plugin config value `key=value` (read with `config::get`); repeat for more.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// W3C `traceparent` of the request; its trace id is passed to the plugin.
    #[arg(long)]
    traceparent: Option<String>,
    /// Largest reply, as the NATS server's max_payload would allow.
    #[arg(long, default_value_t = DEFAULT_MAX_REPLY_BYTES)]
    max_reply_bytes: usize,
    /// Directory of the compiled-artifact cache [default: ~/.cache/natsplug].
    #[arg(long, env = "NATSPLUG_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile the plugin instead of using the cache.
    #[arg(long)]
    no_cache: bool,
    /// Print the reply and the log records as JSON.
    #[arg(long)]
    json: bool,
    /// Write the reply's MessagePack bytes to standard output, unchanged
    /// (log records go to standard error).
    #[arg(long, conflicts_with = "json")]
    raw: bool,
}

pub async fn run(args: InvokeArgs) -> anyhow::Result<ExitCode> {
    // Compiling and calling the plugin are blocking work.
    tokio::task::spawn_blocking(move || invoke(args))
        .await
        .context("the invoke task failed")?
}

fn invoke(args: InvokeArgs) -> anyhow::Result<ExitCode> {
    let mut config = match &args.config {
        Some(path) => HostConfig::from_file(path)?,
        None => HostConfig::default(),
    };
    if let Some(dir) = &args.cache_dir {
        config.cache.dir = Some(dir.clone());
    }
    if args.no_cache {
        config.cache.enabled = false;
    }
    config.validate()?;
    let name = match &args.name {
        Some(name) => name.clone(),
        None => natsplug::plugin::plugin_name_of(&args.plugin)
            .context("pass --name with a valid plugin name")?,
    };
    let mut settings = config.plugin_settings(&name);
    for pair in &args.set {
        let (key, value) = pair
            .split_once('=')
            .filter(|(key, _)| !key.trim().is_empty())
            .ok_or_else(|| {
                anyhow!("--set `{pair}` is not `key=value` (e.g. --set token=s3cret)")
            })?;
        settings
            .config
            .insert(key.trim().to_string(), value.to_string());
    }
    let spec = args.request.load()?;

    let bytes = local::read_component(&args.plugin)?;
    let loader = local::loader(&config)?;
    let plugin = loader
        .load_bytes(&name, &bytes, &settings)
        .with_context(|| format!("loading {}", args.plugin.display()))?;
    let implemented = plugin
        .phases
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let phase = match (&args.phase, spec.file_phase()?) {
        (Some(phase), _) => parse_phase(phase)?,
        (None, Some(phase)) => phase,
        (None, None) => match plugin.phases.as_slice() {
            [only] => *only,
            _ => bail!("plugin `{name}` implements {implemented}: name the phase to run"),
        },
    };
    if !plugin.implements(phase) {
        bail!(
            "plugin `{name}` does not implement {phase} (it implements {implemented}): the host would not serve that subject"
        );
    }

    let request = spec.build(phase, &format!("invoke-{}", std::process::id()))?;
    let payload = protocol::encode_request(&request);
    let trace_id = args.traceparent.as_deref().and_then(decode::trace_id_of);
    let settings = CallSettings::from_runtime(&config.runtime, args.max_reply_bytes);
    let outcome = match decode::refuse_oversized(&payload, config.runtime.max_request_bytes) {
        Some(refused) => refused,
        None => dispatch::run(&mut None, &plugin, phase, &payload, trace_id, &settings),
    };
    let decoded = protocol::decode_reply(&outcome.payload)
        .context("the plugin's reply could not be decoded")?;

    match Format::from_flags(args.json, args.raw) {
        Format::Json => {
            let output = serde_json::json!({
                "plugin": plugin.name,
                "phase": phase.as_str(),
                "reply": reply::reply_json(&decoded),
                "logs": outcome.records.iter().map(record_json).collect::<Vec<_>>(),
                "dropped_logs": outcome.dropped_records,
            });
            println!("{output}");
        }
        Format::Raw => {
            reply::write_raw(&outcome.payload)?;
            print_records(&outcome.records, outcome.dropped_records, phase, true);
        }
        Format::Text => {
            reply::print_reply(&decoded);
            print_records(&outcome.records, outcome.dropped_records, phase, false);
        }
    }
    reply::fail_on_error(&decoded)?;
    Ok(ExitCode::SUCCESS)
}

/// A log record as JSON; fields keep their types.
pub fn record_json(record: &LogRecord) -> serde_json::Value {
    let fields: serde_json::Map<String, serde_json::Value> = record
        .fields
        .iter()
        .map(|(key, value)| {
            let value = match value {
                LogValue::Text(text) => serde_json::Value::from(text.as_str()),
                LogValue::Integer(i) => serde_json::Value::from(*i),
                LogValue::Float(f) => serde_json::Value::from(*f),
                LogValue::Boolean(b) => serde_json::Value::from(*b),
            };
            (key.clone(), value)
        })
        .collect();
    serde_json::json!({
        "level": record.level.as_str(),
        "message": record.message,
        "fields": fields,
        "plugin": record.plugin,
        "plugin_version": record.plugin_version,
        "request_id": record.request_id,
        "session_id": record.session_id,
        "trace_id": record.trace_id,
    })
}

fn print_records(records: &[LogRecord], dropped: u64, phase: Phase, to_stderr: bool) {
    let mut lines = Vec::new();
    if records.is_empty() {
        lines.push(format!("logs: none in {phase}"));
    } else {
        lines.push(format!("logs ({}):", records.len()));
    }
    for record in records {
        let mut line = format!("  {:<5} {}", record.level.as_str(), record.message);
        for (key, value) in &record.fields {
            line.push_str(&format!(" {key}={value}"));
        }
        lines.push(line);
    }
    if dropped > 0 {
        lines.push(format!(
            "  ({dropped} more record(s) dropped: one call keeps at most {})",
            natsplug::sandbox::MAX_RECORDS_PER_CALL
        ));
    }
    for line in lines {
        if to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}
