//! `natsplug new`: scaffold a Rust plugin project.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;

use natsplug::config::validate_plugin_name;

pub const EXAMPLES: &str = "Examples:
  natsplug new rate-limiter
  natsplug new rate-limiter --path plugins-src/rate-limiter
  natsplug new rate-limiter --sdk-path ~/src/natsplug/guest-sdk

The project depends on natsplug-sdk by path: --sdk-path, else the guest-sdk
of the natsplug checkout this binary was built from when it still exists,
else the published crate.";

/// Flags of `new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// Plugin (and crate) name: letters, digits, `-` or `_`, starting with a letter.
    name: String,
    /// Directory to create [default: ./NAME].
    #[arg(long)]
    path: Option<PathBuf>,
    /// Path of a natsplug guest-sdk checkout to depend on.
    #[arg(long)]
    sdk_path: Option<PathBuf>,
}

/// Where natsplug-sdk comes from.
#[derive(Debug, Clone, PartialEq)]
enum Sdk {
    Path(PathBuf),
    Published(&'static str),
}

pub async fn run(args: NewArgs) -> anyhow::Result<ExitCode> {
    let name = args.name.as_str();
    validate_plugin_name(name)?;
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        bail!("plugin name `{name}` must start with a letter (it is also the crate name)");
    }
    let dir = args.path.clone().unwrap_or_else(|| PathBuf::from(name));
    if dir.exists()
        && dir
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{} already exists and is not empty: choose another --path, or remove it",
            dir.display()
        );
    }
    let sdk = match &args.sdk_path {
        Some(path) => {
            if !path.join("Cargo.toml").is_file() {
                bail!(
                    "--sdk-path {} holds no Cargo.toml: point it at the guest-sdk directory of a natsplug checkout",
                    path.display()
                );
            }
            Sdk::Path(absolute(path)?)
        }
        None => match built_from_sdk() {
            Some(path) => Sdk::Path(path),
            None => Sdk::Published(env!("CARGO_PKG_VERSION")),
        },
    };

    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let files = [
        ("Cargo.toml", cargo_toml(name, &sdk)),
        ("src/lib.rs", lib_rs(name)),
        ("README.md", readme(name)),
        (".gitignore", "/target\n".to_string()),
    ];
    for (file, text) in &files {
        let path = dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    // Build with the dependency versions the SDK was tested with.
    if let Sdk::Path(sdk) = &sdk
        && let Some(lock) = sdk.parent().map(|p| p.join("Cargo.lock"))
        && lock.is_file()
    {
        std::fs::copy(&lock, dir.join("Cargo.lock"))
            .with_context(|| format!("copying {}", lock.display()))?;
    }

    println!("created plugin `{name}` in {}", dir.display());
    match &sdk {
        Sdk::Path(path) => println!("  natsplug-sdk: {}", path.display()),
        Sdk::Published(version) => println!("  natsplug-sdk: {version} from crates.io"),
    }
    println!(
        "next:\n  cd {}\n  cargo build --target wasm32-wasip2 --release\n  natsplug inspect target/wasm32-wasip2/release/{}.wasm",
        dir.display(),
        file_stem(name)
    );
    Ok(ExitCode::SUCCESS)
}

/// The guest-sdk of the checkout this binary was built from, if still there.
fn built_from_sdk() -> Option<PathBuf> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk");
    sdk.join("Cargo.toml")
        .is_file()
        .then(|| sdk.canonicalize().ok())
        .flatten()
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    path.canonicalize()
        .with_context(|| format!("resolving {}", path.display()))
}

/// The file stem cargo gives the component: the crate name with `_`.
fn file_stem(name: &str) -> String {
    name.replace('-', "_")
}

/// `rate-limiter` → `RateLimiter`; never `Plugin`, the trait's name.
fn type_name(name: &str) -> String {
    let camel: String = name
        .split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect();
    if camel == "Plugin" {
        "MyPlugin".to_string()
    } else {
        camel
    }
}

fn cargo_toml(name: &str, sdk: &Sdk) -> String {
    let dependency = match sdk {
        Sdk::Path(path) => format!("{{ path = {:?} }}", path.display().to_string()),
        Sdk::Published(version) => format!("\"{version}\""),
    };
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
natsplug-sdk = {dependency}

# Fast plugins; opt-level "s" trades a little speed for size.
[profile.release]
opt-level = 3
lto = true
codegen-units = 1
strip = true
panic = "abort"

# A project of its own, even inside another workspace.
[workspace]
"#
    )
}

fn lib_rs(name: &str) -> String {
    let type_name = type_name(name);
    format!(
        r#"//! `{name}`: a natsplug plugin.
//!
//! Adds a header carrying the request id to every request (its name is the
//! `header` config value, default `x-{name}`), and answers requests under
//! `/blocked` itself with a 403.

use std::sync::OnceLock;

use natsplug_sdk::prelude::*;

struct {type_name};

/// The header name, read from the config by `init` on each new instance.
static HEADER: OnceLock<String> = OnceLock::new();

#[natsplug_sdk::plugin]
impl Plugin for {type_name} {{
    fn init(config: Vec<(String, String)>) -> Result<(), String> {{
        let header = config
            .into_iter()
            .find_map(|(key, value)| (key == "header").then_some(value))
            .unwrap_or_else(|| "x-{name}".into());
        let _ = HEADER.set(header);
        Ok(())
    }}

    fn request_filter(ctx: Context, request: Request) -> RequestDecision {{
        if request.path.starts_with("/blocked") {{
            info!("blocked a request", path = request.path.as_str());
            return LocalResponse::new(403)
                .header("content-type", "text/plain")
                .body("blocked by {name}\n")
                .into();
        }}
        let header = HEADER.get().map_or("x-{name}", String::as_str);
        RequestChanges::new()
            .set_header(header, ctx.request_id)
            .into()
    }}
}}
"#
    )
}

fn readme(name: &str) -> String {
    let stem = file_stem(name);
    format!(
        r#"# {name}

A [natsplug](https://github.com/natsplug/natsplug) plugin: a WebAssembly
component the natsplug host serves on `{{prefix}}.{name}.request_filter`.

## Build

```sh
rustup target add wasm32-wasip2   # once
cargo build --target wasm32-wasip2 --release
```

The component is `target/wasm32-wasip2/release/{stem}.wasm`.

## Try it

```sh
natsplug inspect target/wasm32-wasip2/release/{stem}.wasm
natsplug invoke target/wasm32-wasip2/release/{stem}.wasm --path /hello
natsplug invoke target/wasm32-wasip2/release/{stem}.wasm --path /blocked
natsplug invoke target/wasm32-wasip2/release/{stem}.wasm --set header=x-trace
```

## Deploy

The plugin name is the file name, so copy it as `{name}.wasm`:

```sh
cp target/wasm32-wasip2/release/{stem}.wasm /path/to/plugins/{name}.wasm
natsplug up --plugins /path/to/plugins
natsplug call {name} request_filter --path /hello
```
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_camel_case_and_never_the_trait() {
        assert_eq!(type_name("rate-limiter"), "RateLimiter");
        assert_eq!(type_name("geo_ip2"), "GeoIp2");
        assert_eq!(type_name("plugin"), "MyPlugin");
    }

    #[test]
    fn the_manifest_is_standalone_and_names_the_sdk() {
        let manifest = cargo_toml("x", &Sdk::Path(PathBuf::from("/src/guest-sdk")));
        assert!(manifest.contains("natsplug-sdk = { path = \"/src/guest-sdk\" }"));
        assert!(manifest.trim_end().ends_with("[workspace]"));
        let manifest = cargo_toml("x", &Sdk::Published("0.1.0"));
        assert!(manifest.contains("natsplug-sdk = \"0.1.0\""));
    }
}
