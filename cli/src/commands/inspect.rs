//! `natsplug inspect`: what a plugin component is, as the host sees it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow};
use clap::Args;
use wasmtime::component::Component;

use crate::local;
use natsplug::bindings::{Contract, SERVED_VERSIONS};
use natsplug::config::HostConfig;
use natsplug::plugin::{self, LoadedPlugin};

pub const EXAMPLES: &str = "Examples:
  natsplug inspect target/wasm32-wasip2/release/authz.wasm
  natsplug inspect plugins/authz.wasm --cache-dir /var/cache/natsplug --json

The exit status is non-zero when the host could not load the component.";

/// Flags of `inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The plugin component (.wasm).
    plugin: PathBuf,
    /// Host config file (TOML): its [runtime] and [cache] settings are used.
    #[arg(long, short, env = "NATSPLUG_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of the compiled-artifact cache to look in [default: ~/.cache/natsplug].
    #[arg(long, env = "NATSPLUG_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// What `inspect` finds out about a component.
#[derive(Debug)]
struct Report {
    file: PathBuf,
    name: String,
    name_error: Option<String>,
    size: usize,
    content_hash: String,
    exports: Vec<String>,
    imports: Vec<String>,
    /// The contract version the component targets, or why none is served.
    contract: Result<Contract, String>,
    plugin: Result<LoadedPlugin, String>,
    cache_dir: Option<PathBuf>,
    cached: bool,
}

pub async fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    tokio::task::spawn_blocking(move || inspect(args))
        .await
        .context("the inspect task failed")?
}

fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let mut config = match &args.config {
        Some(path) => HostConfig::from_file(path)?,
        None => HostConfig::default(),
    };
    if let Some(dir) = &args.cache_dir {
        config.cache.dir = Some(dir.clone());
        config.cache.enabled = true;
    }
    config.validate()?;
    let bytes = local::read_component(&args.plugin)?;
    let content_hash = plugin::content_hash(&bytes);
    let loader = local::loader(&config)?;
    let engine = loader.engine().clone();
    let cache = loader.cache();
    let cached = cache.is_some_and(|c| c.contains(&content_hash));
    // A cached compilation is used as the host would; nothing is written.
    let component = match cache.and_then(|c| c.get(&engine, &content_hash)) {
        Some(component) => component,
        None => Component::new(&engine, &bytes).map_err(|error| {
            anyhow!(
                "{} is not a valid WebAssembly component: {error:#}. Build it for the wasm32-wasip2 target",
                args.plugin.display()
            )
        })?,
    };
    let component_type = component.component_type();
    let exports = component_type
        .exports(&engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let imports = component_type
        .imports(&engine)
        .map(|(name, _)| name.to_string())
        .collect();

    let (name, name_error) = match plugin::plugin_name_of(&args.plugin) {
        Ok(name) => (name, None),
        Err(error) => ("plugin".to_string(), Some(error.to_string())),
    };
    let contract = Contract::of(&name, &component, &engine).map_err(|e| e.to_string());
    let plugin = loader
        .load_component(&name, component, &bytes, &config.plugin_settings(&name))
        .map_err(|e| format!("{e:#}"));
    let report = Report {
        file: args.plugin.clone(),
        name,
        name_error,
        size: bytes.len(),
        content_hash,
        exports,
        imports,
        contract,
        plugin,
        cache_dir: cache.map(|c| c.dir().to_path_buf()),
        cached,
    };
    if args.json {
        println!("{}", report.json());
    } else {
        report.print();
    }
    if let Some(problem) = report.problem() {
        anyhow::bail!("{problem}");
    }
    Ok(ExitCode::SUCCESS)
}

impl Report {
    /// Why the host would not serve this file, if it would not.
    fn problem(&self) -> Option<String> {
        self.contract
            .clone()
            .err()
            .or_else(|| self.plugin.as_ref().err().cloned())
            .or_else(|| self.name_error.clone())
    }

    fn wit(&self) -> String {
        match &self.contract {
            Ok(contract) => format!(
                "natsplug:plugin@{} (this host serves {})",
                contract.version(),
                SERVED_VERSIONS.join(" and ")
            ),
            Err(_) => format!(
                "mismatch: the plugin targets no contract this host serves ({})",
                SERVED_VERSIONS.join(" and ")
            ),
        }
    }

    fn json(&self) -> serde_json::Value {
        let loaded = self.plugin.as_ref().ok();
        serde_json::json!({
            "file": self.file.display().to_string(),
            "name": self.name,
            "version": loaded.and_then(|p| p.version.clone()),
            "phases": loaded.map(|p| p.phases.iter().map(|ph| ph.as_str()).collect::<Vec<_>>()).unwrap_or_default(),
            "wit": {
                "host": SERVED_VERSIONS.map(|v| format!("natsplug:plugin@{v}")),
                "plugin": self.contract.as_ref().ok().map(|c| format!("natsplug:plugin@{}", c.version())),
                "matches": self.contract.is_ok(),
                "summary": self.wit(),
                "error": self.contract.as_ref().err(),
            },
            "size": self.size,
            "content_hash": self.content_hash,
            "cache": {
                "dir": self.cache_dir.as_ref().map(|d| d.display().to_string()),
                "cached": self.cached,
            },
            "exports": self.exports,
            "imports": self.imports,
            "loads": self.problem().is_none(),
            "error": self.problem(),
        })
    }

    fn print(&self) {
        let loaded = self.plugin.as_ref().ok();
        println!("file:     {}", self.file.display());
        println!(
            "plugin:   {}{}",
            self.name,
            if self.name_error.is_some() {
                " (the file name is not a valid plugin name)"
            } else {
                ""
            }
        );
        println!(
            "version:  {}",
            loaded
                .and_then(|p| p.version.as_deref())
                .unwrap_or("(not reported)")
        );
        match &self.plugin {
            Ok(plugin) => println!(
                "phases:   {}",
                plugin
                    .phases
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(_) => println!("phases:   (unknown: the plugin does not load)"),
        }
        println!("wit:      {}", self.wit());
        println!("size:     {} bytes", self.size);
        println!("sha256:   {}", self.content_hash);
        match &self.cache_dir {
            Some(dir) if self.cached => println!("cached:   yes, in {}", dir.display()),
            Some(dir) => println!("cached:   no (not in {})", dir.display()),
            None => println!("cached:   no (the cache is disabled)"),
        }
        println!("exports:");
        for export in &self.exports {
            println!("  {export}");
        }
        println!("imports:");
        for import in &self.imports {
            println!("  {import}");
        }
    }
}
