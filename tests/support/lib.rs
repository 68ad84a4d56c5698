//! Test support for the integration tests and benchmarks: the built guest
//! components, a real `nats-server` per test, hosts started on it, a small
//! client for phase requests, a fleet of hosts on the plugin bucket (the
//! command line that feeds it, waiting for it to converge), and for the
//! gateway an HTTP upstream, the gateway process and an HTTP client.

pub mod client;
pub mod fleet;
pub mod gateway;
pub mod host;
pub mod nats_server;
pub mod process;
pub mod up;
pub mod upstream;

pub use client::PhaseClient;
pub use gateway::{GatewayProcess, HttpClient, HttpReply};
pub use host::TestHost;
pub use nats_server::{NatsCluster, NatsServer};
pub use up::UpProcess;
pub use upstream::Upstream;

/// Paths of the guest components built by the build script.
pub mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

/// A `cargo` command for a build run from a test or benchmark.
///
/// Cargo gives a test process the variables of the crate under test
/// (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...) and flags meant for it. Some
/// build scripts track such variables, so a nested build that inherited
/// them would see its dependencies as changed and rebuild them, and the
/// next plain `cargo build` would rebuild them again.
pub fn cargo_command() -> std::process::Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let set_for_the_crate = [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
            "CARGO_ENCODED_RUSTFLAGS",
            "RUSTC_WORKSPACE_WRAPPER",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix));
        if set_for_the_crate || name == "OUT_DIR" {
            command.env_remove(name);
        }
    }
    command
}

/// The `natsplug` binary, built (once per test process) by the same cargo
/// profile as the tests.
pub fn natsplug_binary() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| build_binary("natsplug-cli", "natsplug"))
        .clone()
}

/// The standalone `natsplug-gateway` binary (crate `gateway/`), built
/// (once per test process) by the same cargo profile as the tests.
///
/// `CARGO_BIN_EXE_<name>` names only the binaries of the package under
/// test (this suite), and `cargo test -p natsplug-suite` builds no binary
/// of another package, so it is built here the way [`natsplug_binary`]
/// is: a nested `cargo build` of just that binary, which is quick once
/// built and puts it next to `natsplug` in the profile's directory.
pub fn gateway_binary() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| build_binary("natsplug-gateway", "natsplug-gateway"))
        .clone()
}

/// `cargo build` binary `bin` of workspace package `package` with the
/// profile the running test was built with; its path.
fn build_binary(package: &str, bin: &str) -> std::path::PathBuf {
    let mut dir = std::env::current_exe().expect("the test binary's path");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    let mut command = cargo_command();
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--quiet", "-p", package, "--bin", bin]);
    if profile != "debug" {
        command.args([
            "--profile",
            if profile == "release" {
                "release"
            } else {
                &profile
            },
        ]);
    }
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("running cargo build for {bin}: {e}"));
    assert!(status.success(), "building the {bin} binary failed");
    dir.join(bin)
}

/// `GET path` from an HTTP server at `address`: the status and the body.
pub fn http_get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
