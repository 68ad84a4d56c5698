//! `natsplug`, the command line: a thin layer over the `natsplug` library.
//! Each subcommand lives in its own module under [`commands`]; the modules
//! beside it hold what several subcommands share.

mod bucket;
mod commands;
mod local;
mod remote;
mod reply;
mod request;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commands::{bench, call, inspect, invoke, ls, new, push, rm, rollback, status, up};

pub const EXAMPLES: &str = "Examples:
  natsplug new rate-limiter                                  # scaffold a plugin
  natsplug inspect rate_limiter.wasm                         # what the host sees in it
  natsplug invoke rate_limiter.wasm --path /x                # run it locally, no NATS
  natsplug up --plugins ./plugins                            # serve a directory
  natsplug call rate-limiter request_filter --path /x        # one request over NATS
  natsplug bench rate-limiter request_filter --duration 30s  # load test
  natsplug push rate_limiter.wasm --create                   # deploy to every host serving the bucket
  natsplug status                                            # which host serves which version
  natsplug gateway --upstream http://127.0.0.1:9000 --plugins authz   # an HTTP proxy running the chain

Every subcommand has its own --help with examples.";

/// Run WebAssembly component plugins behind NATS.
#[derive(Debug, Parser)]
#[command(name = "natsplug", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the plugins of a directory on NATS phase subjects.
    #[command(visible_alias = "serve", after_help = up::EXAMPLES)]
    Up(up::UpArgs),
    /// Send one phase request over NATS and print the reply.
    #[command(after_help = with_request_format(call::EXAMPLES))]
    Call(call::CallArgs),
    /// Run a plugin file's phase locally (no NATS) and print the reply and its logs.
    #[command(after_help = with_request_format(invoke::EXAMPLES))]
    Invoke(invoke::InvokeArgs),
    /// Show what a plugin component exports and imports, its phases, version and hash.
    #[command(after_help = inspect::EXAMPLES)]
    Inspect(inspect::InspectArgs),
    /// Create a Rust plugin project from a template.
    #[command(after_help = new::EXAMPLES)]
    New(new::NewArgs),
    /// Load-test a plugin phase over NATS: throughput and latency percentiles.
    #[command(after_help = with_request_format(bench::EXAMPLES))]
    Bench(bench::BenchArgs),
    /// Check a component and put it into the plugins bucket: every host serving the bucket loads it.
    #[command(after_help = push::EXAMPLES)]
    Push(push::PushArgs),
    /// List the plugins in the bucket, with versions and hashes.
    #[command(after_help = ls::EXAMPLES)]
    Ls(ls::LsArgs),
    /// Remove a plugin from the bucket (and so from every host serving it).
    #[command(after_help = rm::EXAMPLES)]
    Rm(rm::RmArgs),
    /// Put the previous version of a plugin back into the bucket.
    #[command(after_help = rollback::EXAMPLES)]
    Rollback(rollback::RollbackArgs),
    /// Which hosts serve which version of each plugin, against the bucket.
    #[command(after_help = status::EXAMPLES)]
    Status(status::StatusArgs),
    /// Run an HTTP reverse proxy that runs plugin chains over NATS in front of a service.
    #[command(after_help = natsplug_gateway::args::EXAMPLES)]
    Gateway(natsplug_gateway::GatewayArgs),
}

/// Parse the command line, run it, and turn errors into a message and exit code 1.
fn main() -> ExitCode {
    let cli = Cli::parse();
    // The gateway runs on Pingora's runtimes, not on this one.
    if let Command::Gateway(args) = &cli.command {
        init_tracing(natsplug_gateway::DEFAULT_LOG_FILTER);
        return natsplug_gateway::main_with(args);
    }
    // The host narrates its work; the tools print only their results (and
    // warnings) unless RUST_LOG asks for more.
    init_tracing(match cli.command {
        Command::Up(_) => "info,wasmtime=warn,cranelift=warn",
        // The deploy commands report refusals in their own error message.
        Command::Push(_)
        | Command::Ls(_)
        | Command::Rm(_)
        | Command::Rollback(_)
        | Command::Status(_) => "warn,natsplug::nats=off",
        _ => "warn",
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(async_threads(&cli.command))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: could not start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up::run(args).await,
            Command::Call(args) => call::run(args).await,
            Command::Invoke(args) => invoke::run(args).await,
            Command::Inspect(args) => inspect::run(args).await,
            Command::New(args) => new::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Push(args) => push::run(args).await,
            Command::Ls(args) => ls::run(args).await,
            Command::Rm(args) => rm::run(args).await,
            Command::Rollback(args) => rollback::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Gateway(_) => unreachable!("the gateway runs before the runtime starts"),
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Threads of the async runtime. `up` runs plugin code on its own worker
/// threads (one per core by default), so its async side only moves
/// messages: one thread per four cores, at least one, leaves the cores to
/// the workers and spares waking a second thread for every message. The
/// other commands keep one per core. `TOKIO_WORKER_THREADS`, when set,
/// decides instead.
fn async_threads(command: &Command) -> usize {
    if let Some(threads) = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        return threads;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match command {
        Command::Up(_) => (cores / 4).max(1),
        _ => cores,
    }
}

/// Examples followed by the request-file format, for the subcommands that
/// build a phase request.
fn with_request_format(examples: &str) -> String {
    format!("{examples}\n\n{}", request::file::FORMAT)
}

fn init_tracing(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
