//! `natsplug gateway`: an HTTP reverse proxy that puts plugin chains in
//! front of any HTTP service. Built on Pingora, whose `ProxyHttp` phases
//! our phases are named after: each Pingora phase runs the route's chain
//! for that phase over NATS through the caller library
//! (`natsplug-client`), while Pingora does the proxying itself.
//!
//! The request path, one module per step:
//! - [`routes`]: the route for the request's host and path;
//! - [`forwarding`]: hop-by-hop fields out, `Via`/`Forwarded`/
//!   `X-Forwarded-*` in, a `traceparent` for every exchange;
//! - [`headers`]: the plugins' view of a message head, and their changes
//!   written back;
//! - [`proxy`]: the Pingora phases and the chain in each;
//! - [`blocking`]: the body filter's phase calls from Pingora's
//!   synchronous body hook;
//! - [`failure`]: 404, 502, 504 and plugin failures, said in words;
//! - [`metrics`]: `/metrics`, `/healthz`, `/readyz`.
//!
//! Around it: [`config`] (one typed configuration), [`args`] (the command
//! line), [`upstream`] (an upstream URL and its Pingora peer),
//! [`server`] (start-up and the runtimes) and [`drain`] (stopping without
//! dropping exchanges).

pub mod args;
pub mod blocking;
pub mod config;
pub mod drain;
pub mod failure;
pub mod forwarding;
pub mod headers;
pub mod metrics;
pub mod proxy;
pub mod routes;
pub mod server;
pub mod upstream;

pub use args::GatewayArgs;
pub use config::GatewayConfig;
pub use server::run;

/// The log filter when `RUST_LOG` is unset: the gateway's start-up and
/// failures, Pingora's warnings.
pub const DEFAULT_LOG_FILTER: &str = "info,pingora_core=warn,pingora_proxy=warn,pingora=warn";

/// Run the gateway as `args` say; on a start-up error, print it and
/// return exit status 1.
pub fn main_with(args: &GatewayArgs) -> std::process::ExitCode {
    let started = args.config().and_then(run);
    match started {
        Ok(never) => match never {},
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
