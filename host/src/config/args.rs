//! NATS connection flags, for the commands that connect as the host's
//! `[nats]` section says (`natsplug up`, the bucket commands and the
//! gateway): the same flags and environment variables everywhere. Built
//! with the crate's `args` feature, which brings in `clap`.

use std::path::PathBuf;

use clap::Args;

use super::{NatsConfig, Secret};

/// NATS credentials, TLS and reconnect flags. Any credential flag replaces
/// the credentials of the config file. Prefer the environment variables
/// (or a file) for secrets: command lines are visible to other users.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "NATS connection")]
pub struct NatsArgs {
    /// User name for user/password authentication.
    #[arg(long, env = "NATSPLUG_NATS_USER")]
    nats_user: Option<String>,
    /// Password for user/password authentication.
    #[arg(long, env = "NATSPLUG_NATS_PASSWORD", hide_env_values = true)]
    nats_password: Option<Secret>,
    /// Token authentication.
    #[arg(long, env = "NATSPLUG_NATS_TOKEN", hide_env_values = true)]
    nats_token: Option<Secret>,
    /// File holding an NKey user seed.
    #[arg(long, env = "NATSPLUG_NATS_NKEY_FILE")]
    nats_nkey_file: Option<PathBuf>,
    /// A .creds file (user JWT and seed).
    #[arg(long, env = "NATSPLUG_NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    /// PEM CA certificates that verify the server [default: system roots].
    #[arg(long, env = "NATSPLUG_NATS_TLS_CA")]
    nats_tls_ca: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS.
    #[arg(long, env = "NATSPLUG_NATS_TLS_CERT")]
    nats_tls_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(long, env = "NATSPLUG_NATS_TLS_KEY")]
    nats_tls_key: Option<PathBuf>,
    /// Refuse servers without TLS.
    #[arg(long, env = "NATSPLUG_NATS_TLS_REQUIRED")]
    nats_tls_required: bool,
    /// Reconnect attempts in a row before exiting; 0 = forever [default: 0].
    #[arg(long, env = "NATSPLUG_NATS_MAX_RECONNECTS")]
    nats_max_reconnects: Option<usize>,
    /// First wait between reconnect attempts, in ms [default: 100].
    #[arg(long, env = "NATSPLUG_NATS_RECONNECT_WAIT_MS")]
    nats_reconnect_wait_ms: Option<u64>,
    /// Longest wait between reconnect attempts, in ms [default: 5000].
    #[arg(long, env = "NATSPLUG_NATS_RECONNECT_MAX_WAIT_MS")]
    nats_reconnect_max_wait_ms: Option<u64>,
    /// Deadline of one connection attempt, in ms [default: 5000].
    #[arg(long, env = "NATSPLUG_NATS_CONNECT_TIMEOUT_MS")]
    nats_connect_timeout_ms: Option<u64>,
    /// Longest wait for the drain at shutdown, in ms [default: 30000].
    #[arg(long, env = "NATSPLUG_DRAIN_TIMEOUT_MS")]
    drain_timeout_ms: Option<u64>,
}

impl NatsArgs {
    /// Apply the flags given to `nats`, the config file's section.
    pub fn apply(&self, nats: &mut NatsConfig) {
        let credentials_given = self.nats_user.is_some()
            || self.nats_password.is_some()
            || self.nats_token.is_some()
            || self.nats_nkey_file.is_some()
            || self.nats_creds.is_some();
        if credentials_given {
            nats.user = self.nats_user.clone();
            nats.password = self.nats_password.clone();
            nats.token = self.nats_token.clone();
            nats.nkey_seed_file = self.nats_nkey_file.clone();
            nats.creds_file = self.nats_creds.clone();
        }
        if let Some(path) = &self.nats_tls_ca {
            nats.tls_ca_file = Some(path.clone());
        }
        if let Some(path) = &self.nats_tls_cert {
            nats.tls_cert_file = Some(path.clone());
        }
        if let Some(path) = &self.nats_tls_key {
            nats.tls_key_file = Some(path.clone());
        }
        if self.nats_tls_required {
            nats.tls_required = true;
        }
        if let Some(value) = self.nats_max_reconnects {
            nats.max_reconnects = value;
        }
        if let Some(value) = self.nats_reconnect_wait_ms {
            nats.reconnect_wait_ms = value;
        }
        if let Some(value) = self.nats_reconnect_max_wait_ms {
            nats.reconnect_max_wait_ms = value;
        }
        if let Some(value) = self.nats_connect_timeout_ms {
            nats.connect_timeout_ms = value;
        }
        if let Some(value) = self.drain_timeout_ms {
            nats.drain_timeout_ms = value;
        }
    }
}
