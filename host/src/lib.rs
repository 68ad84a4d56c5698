//! natsplug: WebAssembly component plugins served behind NATS.
//!
//! The host subscribes to `{prefix}.{plugin}.{phase}` in a queue group for
//! every phase each plugin implements, and runs each request through the
//! plugin's component. The request path, one module per step:
//!
//! [`subscription`] (one per phase of a plugin, on every lane) → [`lane`]
//! (the threads that read NATS, each on a connection of its own, and run
//! short calls) → [`decode`] → [`admission`] (in-flight limits, overload)
//! → [`executor`] (worker threads, for the calls a lane does not run) →
//! [`dispatch`] (instance, guest call, limits) → [`reply`].
//!
//! Around it: [`server`] owns what the request path shares (the served
//! plugins, hot swap, load failures, the drain); [`plugin`] loads
//! components against the contract in `wit/` and runs them in the
//! [`sandbox`] on the [`engine`]; [`sources`] says where plugins come from,
//! followed by [`watch`] (the directory) and [`bucket`] (JetStream);
//! [`logs`], [`metrics`], [`monitor`] and [`discovery`] report; [`config`]
//! holds every setting; [`nats`] reaches the server. The wire types are
//! the `natsplug-protocol` crate.

pub mod admission;
pub mod announce;
pub mod bindings;
pub mod bucket;
pub mod cache;
pub mod config;
pub mod decode;
pub mod discovery;
pub mod dispatch;
pub mod engine;
pub mod executor;
pub mod lane;
pub mod logs;
pub mod metrics;
pub mod monitor;
pub mod nats;
pub mod plugin;
pub mod reply;
pub mod sandbox;
pub mod server;
pub mod sources;
pub mod stats;
pub mod subscription;
pub mod watch;

pub use config::HostConfig;
