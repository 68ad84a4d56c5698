//! All host configuration in one typed place: read from TOML, overridden by
//! command-line flags and environment variables, validated once at start-up.
//!
//! Every field has a default, so an empty file (or none) is a valid config.
//! The defaults are documented on each field and in the README.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::logs::LogLevel;
use natsplug_protocol::Phase;

/// The whole host configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostConfig {
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// Subject prefix and queue group.
    pub subjects: SubjectsConfig,
    /// Where plugins come from.
    pub plugins: PluginsConfig,
    /// Worker threads, limits and instance reuse.
    pub runtime: RuntimeConfig,
    /// The compiled-artifact cache.
    pub cache: CacheConfig,
    /// Log records published to NATS.
    pub logs: LogsConfig,
    /// The HTTP monitoring endpoint and NATS service discovery.
    pub monitoring: MonitoringConfig,
    /// Per-plugin settings, keyed by plugin name: `[plugin.auth]`.
    pub plugin: BTreeMap<String, PluginSettings>,
}

/// NATS connection settings: servers, credentials, TLS, reconnects and the
/// shutdown drain. See `docs/connection.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs; several for a cluster. Empty (the default): use
    /// `nats://127.0.0.1:4222`, and `up` starts a local `nats-server` there
    /// when none is listening. A URL may carry credentials
    /// (`nats://user:password@host:4222`, or `nats://token@host:4222`).
    pub urls: Vec<String>,
    /// User name for user/password authentication.
    pub user: Option<String>,
    /// Password for user/password authentication.
    pub password: Option<Secret>,
    /// Token authentication.
    pub token: Option<Secret>,
    /// A file holding an NKey user seed (`SU...`), for NKey authentication.
    pub nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (user JWT and seed), for decentralized JWT authentication.
    pub creds_file: Option<PathBuf>,
    /// PEM file of the CA certificates that verify the server; default:
    /// the system's trusted roots.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS (with `tls_key_file`).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Refuse to talk to a server without TLS. Default false (TLS is still
    /// used whenever the server asks for it or a URL is `tls://`).
    pub tls_required: bool,
    /// Deadline of one connection attempt (TCP, TLS and login), in
    /// milliseconds. Default 5000.
    pub connect_timeout_ms: u64,
    /// Reconnect attempts in a row before giving up (then `up` exits with
    /// an error). 0 (the default) = reconnect forever.
    pub max_reconnects: usize,
    /// First wait between reconnect attempts, doubled after each failed
    /// attempt up to `reconnect_max_wait_ms`; each wait is jittered. Default 100.
    pub reconnect_wait_ms: u64,
    /// Longest wait between reconnect attempts. Default 5000.
    pub reconnect_max_wait_ms: u64,
    /// Messages buffered per phase subscription before NATS drops them as a
    /// slow consumer. Default 65536.
    pub subscription_capacity: usize,
    /// After subscribing, the longest wait for the server to confirm (or
    /// refuse) the subscriptions, in milliseconds. Default 2000.
    pub permission_check_ms: u64,
    /// On shutdown, the longest wait for subscriptions to drain and the last
    /// replies to be flushed, in milliseconds. Default 30000.
    pub drain_timeout_ms: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            urls: Vec::new(),
            user: None,
            password: None,
            token: None,
            nkey_seed_file: None,
            creds_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
            connect_timeout_ms: 5000,
            max_reconnects: 0,
            reconnect_wait_ms: 100,
            reconnect_max_wait_ms: 5000,
            subscription_capacity: 65_536,
            permission_check_ms: 2000,
            drain_timeout_ms: 30_000,
        }
    }
}

/// A password or token: its `Debug` output is redacted, so it never shows
/// in logs or error messages.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for handing to the NATS client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(value.to_string()))
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_string())
    }
}

/// How the host proves who it is to NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsAuth {
    None,
    UserPassword {
        user: String,
        password: Secret,
        /// Taken from a URL rather than `nats.user`/`nats.password`.
        from_url: bool,
    },
    Token {
        token: Secret,
        from_url: bool,
    },
    NkeySeedFile(PathBuf),
    CredsFile(PathBuf),
}

impl NatsAuth {
    /// What a person should check when the server refuses this login.
    pub fn describe(&self) -> String {
        match self {
            NatsAuth::None => "no credentials".into(),
            NatsAuth::UserPassword {
                user,
                from_url: false,
                ..
            } => format!("user `{user}` with the password of nats.password"),
            NatsAuth::UserPassword {
                user,
                from_url: true,
                ..
            } => format!("user `{user}` with the password from the URL"),
            NatsAuth::Token {
                from_url: false, ..
            } => "the token of nats.token".into(),
            NatsAuth::Token { from_url: true, .. } => "the token from the URL".into(),
            NatsAuth::NkeySeedFile(path) => {
                format!("the NKey seed of nats.nkey_seed_file {}", path.display())
            }
            NatsAuth::CredsFile(path) => {
                format!("the user JWT of nats.creds_file {}", path.display())
            }
        }
    }
}

impl NatsConfig {
    /// The URLs to connect to (the local default when none is set).
    pub fn urls_or_default(&self) -> Vec<String> {
        if self.urls.is_empty() {
            vec![DEFAULT_NATS_URL.to_string()]
        } else {
            self.urls.clone()
        }
    }

    /// The one authentication method configured, from the keys or from
    /// credentials in a URL. Errors when several are given.
    pub fn auth(&self) -> anyhow::Result<NatsAuth> {
        let mut methods: Vec<(&str, NatsAuth)> = Vec::new();
        match (&self.user, &self.password) {
            (Some(user), password) => methods.push((
                "nats.user/nats.password",
                NatsAuth::UserPassword {
                    user: user.clone(),
                    password: password.clone().unwrap_or_else(|| Secret::new("")),
                    from_url: false,
                },
            )),
            (None, Some(_)) => bail!("nats.password is set without nats.user; set both"),
            (None, None) => {}
        }
        if let Some(token) = &self.token {
            methods.push((
                "nats.token",
                NatsAuth::Token {
                    token: token.clone(),
                    from_url: false,
                },
            ));
        }
        if let Some(path) = &self.nkey_seed_file {
            methods.push(("nats.nkey_seed_file", NatsAuth::NkeySeedFile(path.clone())));
        }
        if let Some(path) = &self.creds_file {
            methods.push(("nats.creds_file", NatsAuth::CredsFile(path.clone())));
        }
        let mut from_urls: Vec<NatsAuth> = Vec::new();
        for url in &self.urls {
            if let Some(auth) = url_credentials(url)
                && !from_urls.contains(&auth)
            {
                from_urls.push(auth);
            }
        }
        if from_urls.len() > 1 {
            bail!(
                "nats.urls carry different credentials; put the same credentials in every URL, or use nats.user/nats.password or nats.token instead"
            );
        }
        if let Some(auth) = from_urls.pop() {
            methods.push(("credentials in nats.urls", auth));
        }
        if methods.len() > 1 {
            let names: Vec<&str> = methods.iter().map(|(name, _)| *name).collect();
            bail!(
                "more than one NATS authentication method is configured ({}); keep exactly one",
                names.join(", ")
            );
        }
        Ok(methods
            .pop()
            .map(|(_, auth)| auth)
            .unwrap_or(NatsAuth::None))
    }
}

/// The credentials embedded in `url` (`user:password@` or `token@`), decoded.
fn url_credentials(url: &str) -> Option<NatsAuth> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (userinfo, _) = authority.rsplit_once('@')?;
    match userinfo.split_once(':') {
        Some((user, password)) => Some(NatsAuth::UserPassword {
            user: percent_decode(user),
            password: Secret::new(percent_decode(password)),
            from_url: true,
        }),
        None if !userinfo.is_empty() => Some(NatsAuth::Token {
            token: Secret::new(percent_decode(userinfo)),
            from_url: true,
        }),
        None => None,
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%'
            && index + 2 < bytes.len()
            && let Ok(hex) = std::str::from_utf8(&bytes[index + 1..index + 3])
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `url` without the credentials it may carry, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    match scheme {
        Some(scheme) => format!("{scheme}://{host}{tail}"),
        None => format!("{host}{tail}"),
    }
}

/// Subject layout: plugins are served on `{prefix}.{plugin}.{phase}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubjectsConfig {
    /// Default `nylon.plugin`.
    pub prefix: String,
    /// Queue group of every phase subscription. Default `natsplug`.
    pub queue_group: String,
}

impl Default for SubjectsConfig {
    fn default() -> Self {
        SubjectsConfig {
            prefix: "nylon.plugin".into(),
            queue_group: "natsplug".into(),
        }
    }
}

/// Plugin source settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// Directory of `.wasm` components; plugin name = file stem. Default `plugins`.
    pub dir: PathBuf,
    /// Reload plugins when files in `dir` change. Default true.
    pub watch: bool,
    /// Quiet time after the last write to a file before it is loaded, in
    /// milliseconds. A file renamed into the directory loads at once. Default 200.
    pub debounce_ms: u64,
    /// JetStream object store bucket to serve plugins from, beside the
    /// directory (which wins when both hold a plugin). Default none.
    pub bucket: Option<String>,
    /// Compare the served plugins with the bucket this often, in seconds,
    /// besides following its changes (0: only follow changes). Default 60.
    pub bucket_resync_secs: u64,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dir: PathBuf::from("plugins"),
            watch: true,
            debounce_ms: 200,
            bucket: None,
            bucket_resync_secs: 60,
        }
    }
}

/// How log records are published to NATS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogsConfig {
    /// Publish records to NATS. Default true.
    pub enabled: bool,
    /// Subject template; `{plugin}` and `{level}` are filled in. Default `logs.{plugin}.{level}`.
    pub subject: String,
    /// `json` (default) or `text`.
    pub format: LogFormat,
    /// Lowest level published (plugins can override). Default `info`.
    pub level: LogLevel,
    /// Records per second per plugin (plugins can override); 0 = no limit. Default 1000.
    pub rate_limit_per_sec: u32,
    /// Records held while waiting to be sent; the oldest are dropped when full. Default 10000.
    pub buffer: usize,
    /// Records sent per batch. Default 100.
    pub batch_size: usize,
    /// Longest a record waits before its batch is sent, in ms. Default 100.
    pub flush_interval_ms: u64,
    /// Publish to a JetStream stream and wait for acks, retrying, instead of
    /// plain publishes. Default false.
    pub durable: bool,
    /// With `durable`: the stream. Default `NATSPLUG_LOGS`.
    pub stream: String,
    /// With `durable`: create the stream when it does not exist. Default false.
    pub create_stream: bool,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            enabled: true,
            subject: "logs.{plugin}.{level}".into(),
            format: LogFormat::Json,
            level: LogLevel::Info,
            rate_limit_per_sec: 1000,
            buffer: 10_000,
            batch_size: 100,
            flush_interval_ms: 100,
            durable: false,
            stream: "NATSPLUG_LOGS".into(),
            create_stream: false,
        }
    }
}

/// Encoding of published log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per message.
    Json,
    /// `[ts] [LEVEL] message key=value ...`
    Text,
}

/// Operational endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitoringConfig {
    /// Address of the HTTP endpoint (`/healthz`, `/readyz`, `/metrics`);
    /// off unless set. Use `127.0.0.1:PORT` to keep it local.
    pub listen: Option<String>,
    /// Answer NATS service discovery (`$SRV.PING/INFO/STATS`). Default true.
    pub discovery: bool,
    /// Service name in discovery. Default `natsplug`.
    pub service_name: String,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        MonitoringConfig {
            listen: None,
            discovery: true,
            service_name: "natsplug".into(),
        }
    }
}

/// Compiled-artifact cache settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Keep compiled components on disk. Default true.
    pub enabled: bool,
    /// Where; default `$XDG_CACHE_HOME/natsplug` or `~/.cache/natsplug`.
    pub dir: Option<PathBuf>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            dir: None,
        }
    }
}

/// How plugin instances are kept between calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceMode {
    /// A warm instance per worker thread and plugin serves many calls, and
    /// is replaced after `max_calls_per_instance` calls, any trap, or a reload.
    Reuse,
    /// A new instance for every call: nothing survives between calls.
    Fresh,
}

/// Execution settings shared by all plugins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Threads that run plugin code. 0 (the default) = one per CPU core.
    pub workers: usize,
    /// `reuse` (default) or `fresh`.
    pub instance_mode: InstanceMode,
    /// With `reuse`, calls served by one instance before it is replaced. Default 10000.
    pub max_calls_per_instance: u64,
    /// Deadline of one plugin call in milliseconds. Default 1000.
    pub call_timeout_ms: u64,
    /// Linear memory cap per instance, in MiB. Default 64.
    pub max_memory_mb: u64,
    /// Largest accepted request payload in bytes. Default 1 MiB.
    pub max_request_bytes: usize,
    /// Calls in flight (queued or running) per host. Default 1024.
    pub max_in_flight: usize,
    /// Calls in flight per plugin, unless the plugin sets its own. Default 256.
    pub max_in_flight_per_plugin: usize,
    /// Instance slots of the pooling allocator. Default 1000.
    pub pool_instances: u32,
    /// Calls of one plugin running at once (on worker threads); the rest
    /// wait their turn, taken round-robin across plugins. 0 (the default) =
    /// as many as there are workers.
    pub max_concurrency_per_plugin: usize,
    /// What a request meets when its plugin or the host is at its
    /// in-flight cap: `wait` (default, up to `max_queue_wait_ms`) or
    /// `reject` (a 503 error reply at once).
    pub overload: OverloadPolicy,
    /// With `overload = "wait"`: the longest a request waits for a slot
    /// before it gets a 503. Default 1000.
    pub max_queue_wait_ms: u64,
    /// A request that finds the host with nothing else in flight runs on
    /// the thread that received it (sparing the wake-up of a worker) when
    /// its plugin's last call took at most this many microseconds; that
    /// thread's NATS I/O moves to another thread meanwhile. 0 = every call
    /// runs on a worker thread. Default 1000.
    pub inline_call_max_us: u64,
    /// Per phase: answer `error` (closed) or `next` (open) when a plugin
    /// traps, times out or hits a limit. Default closed for the filter
    /// phases, open for logging.
    pub failure_mode: FailureModes,
}

/// What happens to a request that finds no free slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverloadPolicy {
    /// Wait for a slot, up to `max_queue_wait_ms`.
    Wait,
    /// Answer 503 at once.
    Reject,
}

/// What a caller is told when a plugin fails (trap, timeout, limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// An `"error"` reply with the service error headers: the caller stops.
    Closed,
    /// A `"next"` reply without mutations, with the failure in `error`: the
    /// caller goes on as if the plugin were absent.
    Open,
}

/// A failure mode per phase; unset phases take the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FailureModes {
    pub request_filter: Option<FailureMode>,
    pub response_filter: Option<FailureMode>,
    pub response_body_filter: Option<FailureMode>,
    pub logging: Option<FailureMode>,
}

impl FailureModes {
    /// The mode set for `phase`, if any.
    pub fn get(&self, phase: Phase) -> Option<FailureMode> {
        match phase {
            Phase::RequestFilter => self.request_filter,
            Phase::ResponseFilter => self.response_filter,
            Phase::ResponseBodyFilter => self.response_body_filter,
            Phase::Logging => self.logging,
        }
    }

    /// The mode of `phase`: this one's, else `fallback`'s, else the built-in
    /// default (closed, but open for logging).
    pub fn resolve(&self, fallback: &FailureModes, phase: Phase) -> FailureMode {
        self.get(phase)
            .or(fallback.get(phase))
            .unwrap_or(match phase {
                Phase::Logging => FailureMode::Open,
                _ => FailureMode::Closed,
            })
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: 0,
            instance_mode: InstanceMode::Reuse,
            max_calls_per_instance: 10_000,
            call_timeout_ms: 1000,
            max_memory_mb: 64,
            max_request_bytes: 1024 * 1024,
            max_in_flight: 1024,
            max_in_flight_per_plugin: 256,
            pool_instances: 1000,
            max_concurrency_per_plugin: 0,
            overload: OverloadPolicy::Wait,
            max_queue_wait_ms: 1000,
            inline_call_max_us: 1000,
            failure_mode: FailureModes::default(),
        }
    }
}

impl RuntimeConfig {
    /// The number of worker threads to start.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }
    }
}

/// Settings of one plugin: `[plugin.NAME]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginSettings {
    /// Calls in flight for this plugin; default `runtime.max_in_flight_per_plugin`.
    pub max_in_flight: Option<usize>,
    /// Calls of this plugin running at once; default `runtime.max_concurrency_per_plugin`.
    pub max_concurrency: Option<usize>,
    /// Deadline of one call; default `runtime.call_timeout_ms`.
    pub call_timeout_ms: Option<u64>,
    /// Linear memory cap per instance; default `runtime.max_memory_mb`.
    pub max_memory_mb: Option<u64>,
    /// Failure mode per phase; unset phases follow `runtime.failure_mode`.
    pub failure_mode: FailureModes,
    /// Lowest level of this plugin's records that is published; default `logs.level`.
    pub log_level: Option<LogLevel>,
    /// Records per second this plugin may publish; default `logs.rate_limit_per_sec`.
    pub log_rate_limit_per_sec: Option<u32>,
    /// Values the plugin reads with `config-get`: `[plugin.NAME.config]`.
    /// Strings, numbers and booleans are accepted and passed as text.
    #[serde(deserialize_with = "scalar_map")]
    pub config: BTreeMap<String, String>,
}

fn scalar_map<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let raw = BTreeMap::<String, toml::Value>::deserialize(deserializer)?;
    raw.into_iter()
        .map(|(key, value)| {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "plugin config value `{key}` is a {}; use a string, number or boolean",
                        other.type_str()
                    )));
                }
            };
            Ok((key, text))
        })
        .collect()
}

impl HostConfig {
    /// Read a TOML config file.
    pub fn from_file(path: &Path) -> anyhow::Result<HostConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        HostConfig::from_toml(&text).with_context(|| format!("in config file {}", path.display()))
    }

    /// Parse TOML text.
    pub fn from_toml(text: &str) -> anyhow::Result<HostConfig> {
        Ok(toml::from_str(text)?)
    }

    /// The NATS URLs to connect to (the local default when none is set).
    pub fn nats_urls(&self) -> Vec<String> {
        self.nats.urls_or_default()
    }

    /// The settings of plugin `name` (defaults when it has none).
    pub fn plugin_settings(&self, name: &str) -> PluginSettings {
        self.plugin.get(name).cloned().unwrap_or_default()
    }

    /// The in-flight cap of plugin `name`.
    pub fn plugin_max_in_flight(&self, name: &str) -> usize {
        self.plugin
            .get(name)
            .and_then(|s| s.max_in_flight)
            .unwrap_or(self.runtime.max_in_flight_per_plugin)
    }

    /// Check every value; the error says which key is wrong and how to fix it.
    pub fn validate(&self) -> anyhow::Result<()> {
        validate_subject("subjects.prefix", &self.subjects.prefix)?;
        if !valid_token(&self.subjects.queue_group) {
            bail!(
                "subjects.queue_group `{}` is not a valid queue group: use letters, digits, `-`, `_` or `.`, no spaces or wildcards",
                self.subjects.queue_group
            );
        }
        self.validate_nats()?;
        if let Some(bucket) = &self.plugins.bucket {
            let ok = !bucket.is_empty()
                && bucket
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
            if !ok {
                bail!(
                    "plugins.bucket `{bucket}` is not a valid bucket name: use letters, digits, `-` and `_`"
                );
            }
        }
        let runtime = &self.runtime;
        let positive = [
            (
                "runtime.max_calls_per_instance",
                runtime.max_calls_per_instance,
            ),
            ("runtime.call_timeout_ms", runtime.call_timeout_ms),
            ("runtime.max_memory_mb", runtime.max_memory_mb),
            (
                "runtime.max_request_bytes",
                runtime.max_request_bytes as u64,
            ),
            ("runtime.max_in_flight", runtime.max_in_flight as u64),
            (
                "runtime.max_in_flight_per_plugin",
                runtime.max_in_flight_per_plugin as u64,
            ),
            ("runtime.pool_instances", u64::from(runtime.pool_instances)),
            ("runtime.max_queue_wait_ms", runtime.max_queue_wait_ms),
        ];
        for (key, value) in positive {
            if value == 0 {
                bail!("{key} must be greater than 0");
            }
        }
        if runtime.max_memory_mb > 4096 {
            bail!(
                "runtime.max_memory_mb is {}; a 32-bit wasm memory holds at most 4096 MiB",
                runtime.max_memory_mb
            );
        }
        let needed = runtime.worker_count() as u64;
        if u64::from(runtime.pool_instances) < needed {
            bail!(
                "runtime.pool_instances ({}) is below the worker count ({needed}): every worker needs at least one instance slot",
                runtime.pool_instances
            );
        }
        let logs = &self.logs;
        for (key, value) in [
            ("logs.buffer", logs.buffer as u64),
            ("logs.batch_size", logs.batch_size as u64),
            ("logs.flush_interval_ms", logs.flush_interval_ms),
        ] {
            if value == 0 {
                bail!("{key} must be greater than 0");
            }
        }
        let sample = logs
            .subject
            .replace("{plugin}", "p")
            .replace("{level}", "info");
        validate_subject("logs.subject", &sample).map_err(|_| {
            anyhow::anyhow!(
                "logs.subject `{}` is not a valid subject template: dot-separated tokens, with `{{plugin}}` and `{{level}}` as placeholders",
                logs.subject
            )
        })?;
        if logs.durable && !valid_token(&logs.stream) {
            bail!("logs.stream `{}` is not a valid stream name", logs.stream);
        }
        if let Some(listen) = &self.monitoring.listen
            && listen.parse::<std::net::SocketAddr>().is_err()
        {
            bail!(
                "monitoring.listen `{listen}` is not an address: use IP:PORT, e.g. 127.0.0.1:9464"
            );
        }
        if !self
            .monitoring
            .service_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
            || self.monitoring.service_name.is_empty()
        {
            bail!(
                "monitoring.service_name `{}` may hold only letters, digits, `-` and `_`",
                self.monitoring.service_name
            );
        }
        for (name, settings) in &self.plugin {
            validate_plugin_name(name).with_context(|| format!("in [plugin.{name}]"))?;
            for (key, value) in [
                ("max_in_flight", settings.max_in_flight.map(|v| v as u64)),
                (
                    "max_concurrency",
                    settings.max_concurrency.map(|v| v as u64),
                ),
                ("call_timeout_ms", settings.call_timeout_ms),
                ("max_memory_mb", settings.max_memory_mb),
            ] {
                if value == Some(0) {
                    bail!("plugin.{name}.{key} must be greater than 0");
                }
            }
            if let Some(memory) = settings.max_memory_mb
                && memory > runtime.max_memory_mb
            {
                bail!(
                    "plugin.{name}.max_memory_mb ({memory}) is above runtime.max_memory_mb ({}), the size of every instance slot; raise runtime.max_memory_mb",
                    runtime.max_memory_mb
                );
            }
        }
        Ok(())
    }
}

impl HostConfig {
    fn validate_nats(&self) -> anyhow::Result<()> {
        let nats = &self.nats;
        for url in &nats.urls {
            if url.trim().is_empty() {
                bail!("nats.urls contains an empty URL");
            }
            if let Err(error) = url.parse::<async_nats::ServerAddr>() {
                bail!(
                    "nats.urls: `{}` is not a valid NATS URL ({error}); write nats://HOST:PORT or tls://HOST:PORT",
                    redact_url(url)
                );
            }
        }
        nats.auth()?;
        match (&nats.tls_cert_file, &nats.tls_key_file) {
            (Some(_), None) => bail!(
                "nats.tls_cert_file is set without nats.tls_key_file; mutual TLS needs both the certificate and its private key"
            ),
            (None, Some(_)) => bail!(
                "nats.tls_key_file is set without nats.tls_cert_file; mutual TLS needs both the certificate and its private key"
            ),
            _ => {}
        }
        for (key, value) in [
            ("nats.connect_timeout_ms", nats.connect_timeout_ms),
            ("nats.reconnect_wait_ms", nats.reconnect_wait_ms),
            ("nats.reconnect_max_wait_ms", nats.reconnect_max_wait_ms),
            (
                "nats.subscription_capacity",
                nats.subscription_capacity as u64,
            ),
            ("nats.permission_check_ms", nats.permission_check_ms),
            ("nats.drain_timeout_ms", nats.drain_timeout_ms),
        ] {
            if value == 0 {
                bail!("{key} must be greater than 0");
            }
        }
        if nats.reconnect_max_wait_ms < nats.reconnect_wait_ms {
            bail!(
                "nats.reconnect_max_wait_ms ({}) is below nats.reconnect_wait_ms ({}); the longest wait cannot be shorter than the first",
                nats.reconnect_max_wait_ms,
                nats.reconnect_wait_ms
            );
        }
        Ok(())
    }
}

/// The NATS URL used when none is configured.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// Whether `token` can be one token of a NATS subject or a queue group name.
fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn validate_subject(key: &str, subject: &str) -> anyhow::Result<()> {
    let ok = !subject.is_empty()
        && subject
            .split('.')
            .all(|token| !token.is_empty() && valid_token(token));
    if !ok {
        bail!(
            "{key} `{subject}` is not a valid subject prefix: use dot-separated tokens of letters, digits, `-` or `_` (no wildcards, spaces or empty tokens)"
        );
    }
    Ok(())
}

/// Check that `name` can be a plugin name: a single NATS subject token.
pub fn validate_plugin_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if !ok {
        bail!(
            "plugin name `{name}` is not a valid NATS subject token: use letters, digits, `-` or `_` (rename the file)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_defaults() {
        let config = HostConfig::from_toml("").unwrap();
        assert_eq!(config, HostConfig::default());
        assert_eq!(config.subjects.prefix, "nylon.plugin");
        assert_eq!(
            config.nats_urls(),
            vec!["nats://127.0.0.1:4222".to_string()]
        );
        config.validate().unwrap();
    }

    #[test]
    fn full_config_parses() {
        let config = HostConfig::from_toml(
            r#"
            [nats]
            urls = ["nats://a:4222", "nats://b:4222"]
            [subjects]
            prefix = "edge.plugins"
            queue_group = "edge"
            [plugins]
            dir = "/srv/plugins"
            [runtime]
            workers = 3
            instance_mode = "fresh"
            call_timeout_ms = 250
            [plugin.auth]
            max_in_flight = 8
            [plugin.auth.failure_mode]
            request_filter = "open"
            [plugin.auth.config]
            token = "s3cret"
            retries = 3
            strict = true
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.runtime.instance_mode, InstanceMode::Fresh);
        assert_eq!(config.plugin_max_in_flight("auth"), 8);
        assert_eq!(config.plugin_max_in_flight("other"), 256);
        let auth = config.plugin_settings("auth");
        let runtime_modes = &config.runtime.failure_mode;
        assert_eq!(
            auth.failure_mode
                .resolve(runtime_modes, Phase::RequestFilter),
            FailureMode::Open
        );
        assert_eq!(
            auth.failure_mode
                .resolve(runtime_modes, Phase::ResponseFilter),
            FailureMode::Closed
        );
        assert_eq!(
            auth.failure_mode.resolve(runtime_modes, Phase::Logging),
            FailureMode::Open
        );
        assert_eq!(auth.config["retries"], "3");
        assert_eq!(auth.config["strict"], "true");
    }

    #[test]
    fn mistakes_are_named() {
        let error = HostConfig::from_toml("[runtime]\nworkerz = 2").unwrap_err();
        assert!(
            format!("{error:#}").contains("unknown field `workerz`"),
            "{error:#}"
        );

        let mut config = HostConfig::default();
        config.subjects.prefix = "a.*".into();
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.starts_with("subjects.prefix `a.*` is not a valid subject prefix"),
            "{error}"
        );

        let mut config = HostConfig::default();
        config.runtime.call_timeout_ms = 0;
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "runtime.call_timeout_ms must be greater than 0"
        );
        assert!(validate_plugin_name("bad name").is_err());
        assert!(validate_plugin_name("auth-v2").is_ok());
    }

    #[test]
    fn nats_connection_keys_parse_and_default() {
        let config = HostConfig::from_toml(
            r#"
            [nats]
            urls = ["tls://a:4222", "tls://b:4222"]
            creds_file = "/etc/natsplug/host.creds"
            tls_ca_file = "/etc/natsplug/ca.pem"
            tls_required = true
            max_reconnects = 60
            reconnect_wait_ms = 250
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.nats.auth().unwrap(),
            NatsAuth::CredsFile("/etc/natsplug/host.creds".into())
        );
        assert_eq!(config.nats.max_reconnects, 60);
        assert_eq!(config.nats.reconnect_max_wait_ms, 5000);
        assert_eq!(config.nats.drain_timeout_ms, 30_000);
        assert_eq!(HostConfig::default().nats.max_reconnects, 0, "forever");
    }

    #[test]
    fn credentials_come_from_one_place() {
        let mut nats = NatsConfig {
            urls: vec!["nats://host:p%40ss@a:4222".into()],
            ..NatsConfig::default()
        };
        assert_eq!(
            nats.auth().unwrap(),
            NatsAuth::UserPassword {
                user: "host".into(),
                password: Secret::new("p@ss"),
                from_url: true
            }
        );
        nats.urls = vec!["nats://s3cret@a:4222".into()];
        assert_eq!(
            nats.auth().unwrap(),
            NatsAuth::Token {
                token: Secret::new("s3cret"),
                from_url: true
            }
        );
        nats.token = Some(Secret::new("other"));
        let error = nats.auth().unwrap_err().to_string();
        assert!(
            error.contains("more than one NATS authentication method is configured (nats.token, credentials in nats.urls)"),
            "{error}"
        );
        assert!(!error.contains("s3cret") && !error.contains("other"));

        let nats = NatsConfig {
            password: Some(Secret::new("x")),
            ..NatsConfig::default()
        };
        assert!(
            nats.auth()
                .unwrap_err()
                .to_string()
                .contains("without nats.user")
        );

        let mut config = HostConfig::default();
        config.nats.tls_cert_file = Some("cert.pem".into());
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .starts_with("nats.tls_cert_file is set without nats.tls_key_file")
        );
    }

    #[test]
    fn secrets_stay_out_of_debug_output_and_urls_are_redacted() {
        let config = HostConfig::from_toml(
            "[nats]\nuser = \"host\"\npassword = \"hunter2\"\ntoken = \"tok3n\"\n",
        )
        .unwrap();
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("tok3n"),
            "{shown}"
        );
        assert_eq!(config.nats.password.as_ref().unwrap().expose(), "hunter2");
        assert_eq!(
            redact_url("nats://user:hunter2@10.0.0.1:4222"),
            "nats://10.0.0.1:4222"
        );
        assert_eq!(redact_url("tok3n@host:4222"), "host:4222");
        assert_eq!(redact_url("nats://a:4222"), "nats://a:4222");
        let mut config = HostConfig::default();
        config.nats.urls = vec!["nats://user:hunter2@bad host:4222".into()];
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("is not a valid NATS URL"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }
}
