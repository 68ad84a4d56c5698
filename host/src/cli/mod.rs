//! The command line: a thin layer over the library. Each subcommand lives in
//! its own module.

mod call;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Run WebAssembly component plugins behind NATS.
#[derive(Debug, Parser)]
#[command(name = "natsplug", version, about, long_about = None)]
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
    #[command(after_help = call::EXAMPLES)]
    Call(call::CallArgs),
}

/// Parse the command line, run it, and turn errors into a message and exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,wasmtime=warn,cranelift=warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
