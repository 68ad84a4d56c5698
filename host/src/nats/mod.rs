//! Reaching NATS: connecting with the configured servers, credentials and
//! TLS; watching the connection (reconnects, slow consumers, permission
//! violations); and the embedded default of `up`, a local `nats-server`
//! child process started when no URL is configured and nothing listens on
//! 127.0.0.1:4222.

mod connect;
mod embedded;
mod explain;
mod monitor;
mod permissions;

pub use self::connect::{NatsConnection, connect, connect_lane, connect_with, reconnect_delay};
pub use self::embedded::{EmbeddedServer, LOCAL_ADDR, is_listening, which};
pub use self::monitor::{ConnectionMonitor, PublishRefusalHandler};
pub use self::permissions::{PermissionOperation, PermissionViolation};

/// The connection name the host announces: `natsplug@<hostname>:<pid>`.
pub fn connection_name() -> String {
    let hostname = hostname();
    format!("natsplug@{hostname}:{}", std::process::id())
}

/// This machine's host name, or `localhost` when it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}
