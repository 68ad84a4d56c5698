//! `natsplug-gateway`: the gateway as a binary of its own (the same as
//! `natsplug gateway`).

use clap::Parser;

use natsplug_gateway::{DEFAULT_LOG_FILTER, GatewayArgs, args::EXAMPLES};

#[derive(Debug, Parser)]
#[command(name = "natsplug-gateway", version, about, long_about = None, after_help = EXAMPLES)]
struct Cli {
    #[command(flatten)]
    args: GatewayArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    natsplug_gateway::main_with(&cli.args)
}
