//! natsplug: WebAssembly component plugins served behind NATS.
//!
//! The host subscribes to `{prefix}.{plugin}.{phase}` in a queue group for
//! every phase each plugin implements, and runs each request through the
//! plugin's component. The request path, one module per step:
//!
//! subscription ([`server`]) → decode ([`protocol`]) → pick an instance
//! ([`executor`]) → call the guest ([`dispatch`]) → encode → reply.
//!
//! Plugins are loaded by [`plugin`] against the contract in `wit/`, and run
//! in the sandbox of [`sandbox`] on the engine of [`engine`].

pub mod bindings;
pub mod bucket;
pub mod cache;
pub mod config;
pub mod discovery;
pub mod dispatch;
pub mod engine;
pub mod executor;
pub mod logs;
pub mod metrics;
pub mod monitor;
pub mod nats;
pub mod plugin;
pub mod sandbox;
pub mod server;
pub mod stats;
pub mod watch;

pub use config::HostConfig;
