//! Connecting to NATS with the configured servers, credentials, TLS and reconnect backoff.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use async_nats::{Client, ConnectOptions};

use super::connection_name;
use super::explain::explain_connect_error;
use super::monitor::ConnectionMonitor;
use crate::config::{NatsAuth, NatsConfig, redact_url};
use crate::stats::HostStats;

/// A live NATS connection and what watches it.
pub struct NatsConnection {
    pub client: Client,
    pub monitor: Arc<ConnectionMonitor>,
    /// The settings it was made with, when more connections like it may
    /// be opened (the host gives each lane one); `None` for a connection
    /// made elsewhere, which the lanes then share.
    pub settings: Option<NatsConfig>,
}

/// Connect to the first reachable server of `urls`, without credentials
/// or TLS settings of its own (what `natsplug call` needs).
pub async fn connect(urls: &[String]) -> anyhow::Result<Client> {
    let config = NatsConfig {
        urls: urls.to_vec(),
        ..NatsConfig::default()
    };
    Ok(connect_with(&config).await?.client)
}

/// Connect as `config` says. The first connection is bounded: one pass over
/// the servers, each attempt within `connect_timeout_ms`. A refused login,
/// a bad certificate or an unreachable server fails here with a message
/// that names the problem and what to check. Once connected, the client
/// reconnects on its own (forever, unless `max_reconnects` is set), with
/// jittered exponential backoff, and restores every subscription.
pub async fn connect_with(config: &NatsConfig) -> anyhow::Result<NatsConnection> {
    let monitor = Arc::new(ConnectionMonitor::new(
        Arc::new(HostStats::default()),
        config,
    ));
    let events = monitor.clone();
    let client = open(config, Publishes::AnySubject, move |event| {
        events.on_event(event)
    })
    .await?;
    let _ = monitor.client.set(client.clone());
    let info = client.server_info();
    tracing::info!(
        server = %info.server_name,
        version = %info.version,
        urls = %shown_urls(config),
        auth = %auth_kind(&config.auth()?),
        tls = config.tls_required || config.tls_ca_file.is_some() || info.tls_required,
        "connected to NATS"
    );
    Ok(NatsConnection {
        client,
        monitor,
        settings: Some(config.clone()),
    })
}

/// Another connection as `config` says, for a lane of a host whose own
/// connection `monitor` watches: what the server reports on it (refusals,
/// slow consumers) counts and logs there; its disconnects and reconnects
/// are the host connection's to report.
pub async fn connect_lane(
    config: &NatsConfig,
    monitor: Arc<ConnectionMonitor>,
) -> anyhow::Result<Client> {
    open(config, Publishes::RepliesOnly, move |event| match event {
        async_nats::Event::Connected
        | async_nats::Event::Disconnected
        | async_nats::Event::LameDuckMode
        | async_nats::Event::Draining
        | async_nats::Event::Closed
        | async_nats::Event::ClientError(_) => {
            tracing::debug!(%event, "lane connection");
        }
        event => monitor.on_event(event),
    })
    .await
}

/// The configured URLs, with passwords hidden, for messages.
fn shown_urls(config: &NatsConfig) -> String {
    let shown: Vec<String> = config
        .urls_or_default()
        .iter()
        .map(|u| redact_url(u))
        .collect();
    shown.join(", ")
}

/// What a connection publishes to.
#[derive(Clone, Copy, PartialEq)]
enum Publishes {
    /// Subjects of the host's own making (logs, announcements, replies).
    AnySubject,
    /// Only the reply subjects of messages it received: the server parsed
    /// them out of a message's protocol line, so they cannot hold the
    /// whitespace the client's check on each publish looks for.
    RepliesOnly,
}

/// Open a connection as `config` says, handing its events to `on_event`.
async fn open(
    config: &NatsConfig,
    publishes: Publishes,
    on_event: impl Fn(async_nats::Event) + Send + Sync + 'static,
) -> anyhow::Result<Client> {
    let urls = config.urls_or_default();
    let shown = shown_urls(config);
    let addresses = urls
        .iter()
        .map(|u| u.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing the NATS URLs {shown}"))?;
    let auth = config.auth()?;
    let on_event = Arc::new(on_event);
    let timeout = Duration::from_millis(config.connect_timeout_ms);
    let mut options = ConnectOptions::new()
        .name(connection_name())
        .connection_timeout(timeout)
        .max_reconnects(config.max_reconnects)
        .subscription_capacity(config.subscription_capacity)
        .skip_subject_validation(publishes == Publishes::RepliesOnly)
        .reconnect_delay_callback({
            let base = Duration::from_millis(config.reconnect_wait_ms);
            let max = Duration::from_millis(config.reconnect_max_wait_ms);
            move |attempt| reconnect_delay(attempt, base, max)
        })
        .event_callback(move |event| {
            let on_event = on_event.clone();
            async move { on_event(event) }
        });
    options = match &auth {
        NatsAuth::None => options,
        NatsAuth::UserPassword { user, password, .. } => {
            options.user_and_password(user.clone(), password.expose().to_string())
        }
        NatsAuth::Token { token, .. } => options.token(token.expose().to_string()),
        NatsAuth::NkeySeedFile(path) => options.nkey(read_seed(path)?),
        NatsAuth::CredsFile(path) => {
            readable("nats.creds_file", path)?;
            options
                .credentials_file(path)
                .await
                .map_err(|error| {
                    anyhow!(
                        "nats.creds_file {} is not a usable .creds file: {error}. It must hold a user JWT and a user NKey seed, as `nsc generate creds` writes them",
                        path.display()
                    )
                })?
        }
    };
    if config.tls_required {
        options = options.require_tls(true);
    }
    if let Some(path) = &config.tls_ca_file {
        readable("nats.tls_ca_file", path)?;
        options = options.add_root_certificates(path.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
        readable("nats.tls_cert_file", cert)?;
        readable("nats.tls_key_file", key)?;
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    // The client makes one pass over the servers; this bounds it as a whole
    // (each attempt is bounded by `connection_timeout`, plus backoff).
    let bound = (timeout + Duration::from_millis(config.reconnect_max_wait_ms))
        * (addresses.len() as u32 + 1);
    let client = match tokio::time::timeout(bound, options.connect(addresses)).await {
        Ok(Ok(client)) => client,
        Ok(Err(error)) => return Err(explain_connect_error(&error, &shown, config, &auth)),
        Err(_) => bail!(
            "could not connect to NATS at {shown}: no server answered within {} ms. Is a nats-server running there, and reachable from here?",
            bound.as_millis()
        ),
    };
    Ok(client)
}

/// The name of an authentication method (never the secret).
fn auth_kind(auth: &NatsAuth) -> &'static str {
    match auth {
        NatsAuth::None => "none",
        NatsAuth::UserPassword { .. } => "user/password",
        NatsAuth::Token { .. } => "token",
        NatsAuth::NkeySeedFile(_) => "nkey",
        NatsAuth::CredsFile(_) => "creds (JWT)",
    }
}

fn readable(key: &str, path: &std::path::Path) -> anyhow::Result<()> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|error| anyhow!("{key} {}: cannot read it ({error})", path.display()))
}

/// The user seed in the NKey file at `path`.
fn read_seed(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        anyhow!(
            "nats.nkey_seed_file {}: cannot read it ({error})",
            path.display()
        )
    })?;
    text.lines()
        .map(str::trim)
        .find(|line| line.starts_with("SU"))
        .map(str::to_string)
        .ok_or_else(|| {
            anyhow!(
                "nats.nkey_seed_file {} holds no NKey user seed (a line starting with `SU`, as `nk -gen user` writes it)",
                path.display()
            )
        })
}

/// The wait before reconnect attempt `attempt` (1 is the first): none for
/// the first, then `base` doubled per attempt up to `max`, with "equal
/// jitter": a random point in the upper half of that, so that many hosts
/// losing one server do not all come back in the same instant.
pub fn reconnect_delay(attempt: usize, base: Duration, max: Duration) -> Duration {
    if attempt <= 1 {
        return Duration::ZERO;
    }
    let doublings = (attempt - 2).min(30) as u32;
    let backoff = base.saturating_mul(1u32 << doublings).min(max);
    let half = backoff / 2;
    let spread = (backoff - half).as_nanos() as u64;
    half + Duration::from_nanos(if spread == 0 {
        0
    } else {
        random_u64() % spread
    })
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_waits_back_off_with_jitter_up_to_the_cap() {
        let base = Duration::from_millis(100);
        let max = Duration::from_millis(5000);
        assert_eq!(reconnect_delay(1, base, max), Duration::ZERO);
        for _ in 0..100 {
            let second = reconnect_delay(2, base, max);
            assert!((base / 2..=base).contains(&second), "{second:?}");
            let fourth = reconnect_delay(4, base, max);
            assert!((base * 2..=base * 4).contains(&fourth), "{fourth:?}");
            let late = reconnect_delay(1000, base, max);
            assert!((max / 2..=max).contains(&late), "{late:?}");
        }
        let spread: std::collections::BTreeSet<_> =
            (0..20).map(|_| reconnect_delay(8, base, max)).collect();
        assert!(spread.len() > 1, "the waits are jittered");
    }
}
