//! Builds the example plugins and the test guests for `wasm32-wasip2` and
//! exposes their paths as constants (`natsplug_suite::guests`), so tests and
//! benchmarks name the component they need and never build it by hand.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (package, constant name) of every guest.
const GUESTS: &[(&str, &str)] = &[
    ("header-injector", "HEADER_INJECTOR"),
    ("authz", "AUTHZ"),
    ("body-redactor", "BODY_REDACTOR"),
    ("access-logger", "ACCESS_LOGGER"),
    ("misbehave", "MISBEHAVE"),
    ("every-phase", "EVERY_PHASE"),
];

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    for watched in ["examples", "guest-sdk", "wit", "tests/guests"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let target_dir = root.join("target").join("guests");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&root)
        .args(["build", "--target", "wasm32-wasip2", "--profile", "guest"])
        .arg("--target-dir")
        .arg(&target_dir);
    for (package, _) in GUESTS {
        command.args(["-p", package]);
    }
    // The outer build's flags are for the host target, not for wasm.
    for variable in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        command.env_remove(variable);
    }
    let status = command
        .status()
        .expect("running cargo to build the wasm guests");
    if !status.success() {
        panic!(
            "building the example plugins for wasm32-wasip2 failed (see above). \
             If the target is missing, run `rustup target add wasm32-wasip2`."
        );
    }

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    let wasm_dir = target_dir.join("wasm32-wasip2").join("guest");
    let mut constants = String::new();
    for (package, constant) in GUESTS {
        let file = wasm_dir.join(format!("{}.wasm", package.replace('-', "_")));
        assert!(
            exists(&file),
            "the guest build did not produce {}",
            file.display()
        );
        writeln!(
            constants,
            "/// `{package}` built for wasm32-wasip2.\npub const {constant}: &str = {:?};",
            file.display().to_string()
        )
        .expect("writing to a string");
    }
    writeln!(
        constants,
        "/// Every guest: (package name, path).\npub const ALL: &[(&str, &str)] = &[{}];",
        GUESTS
            .iter()
            .map(|(package, constant)| format!("({package:?}, {constant})"))
            .collect::<Vec<_>>()
            .join(", ")
    )
    .expect("writing to a string");
    std::fs::write(out_dir.join("guests.rs"), constants).expect("writing guests.rs");
}

fn exists(path: &Path) -> bool {
    path.is_file()
}
