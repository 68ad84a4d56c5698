//! Test support for the integration tests and benchmarks: the built guest
//! components, a real `nats-server` per test, hosts started on it, and a
//! small client for phase requests.

pub mod client;
pub mod host;
pub mod nats_server;

pub use client::PhaseClient;
pub use host::TestHost;
pub use nats_server::NatsServer;

/// Paths of the guest components built by the build script.
pub mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

/// The `natsplug` binary built for these tests.
pub fn natsplug_binary() -> std::path::PathBuf {
    let mut path = std::env::current_exe().expect("the test binary's path");
    path.pop();
    if path.ends_with("deps") {
        path.pop();
    }
    path.join("natsplug")
}
