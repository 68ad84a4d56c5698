//! The `[nats]` section: servers, credentials, TLS, the login method, and redacted URLs.

use std::path::PathBuf;

use anyhow::bail;
use serde::{Deserialize, Serialize};

/// The NATS URL used when none is configured.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

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
