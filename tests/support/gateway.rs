//! `natsplug gateway` as a real child process (its ready line, log,
//! metrics, signals and memory), and an HTTP client to send it requests
//! over HTTP/1.1 keep-alive or h2c with prior knowledge.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::nats_server::free_port;
use crate::natsplug_binary;

/// How long a gateway may take to print its ready line.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A running `natsplug gateway`, its addresses and its log file.
pub struct GatewayProcess {
    pub child: Child,
    /// The proxy listener (`--listen`).
    pub address: SocketAddr,
    /// The metrics listener (`--metrics-listen`).
    pub metrics_address: SocketAddr,
    /// The line printed once listening.
    pub ready_line: String,
    log: tempfile::NamedTempFile,
    _config: Option<tempfile::NamedTempFile>,
}

impl GatewayProcess {
    /// Run `natsplug gateway --listen A --metrics-listen M ARGS` on free
    /// ports and wait for its ready line.
    pub fn start(args: &[&str]) -> GatewayProcess {
        GatewayProcess::launch(None, args)
    }

    /// [`GatewayProcess::start`] with `--config FILE`, the file holding
    /// `config` (TOML). The listen flags override the file's addresses.
    pub fn start_with_config(config: &str, args: &[&str]) -> GatewayProcess {
        let mut file = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("a gateway config file");
        file.write_all(config.as_bytes())
            .expect("writing the gateway config");
        GatewayProcess::launch(Some(file), args)
    }

    /// [`GatewayProcess::start`] on the standalone binary: run
    /// `natsplug-gateway --listen A --metrics-listen M ARGS`.
    pub fn start_standalone(args: &[&str]) -> GatewayProcess {
        GatewayProcess::launch_command(Command::new(crate::gateway_binary()), None, args)
    }

    fn launch(config: Option<tempfile::NamedTempFile>, args: &[&str]) -> GatewayProcess {
        let mut command = Command::new(natsplug_binary());
        command.arg("gateway");
        GatewayProcess::launch_command(command, config, args)
    }

    /// Run `command` (the gateway, its subcommand given) with the listen
    /// flags, `--config` and `args`, and wait for its ready line.
    fn launch_command(
        mut command: Command,
        config: Option<tempfile::NamedTempFile>,
        args: &[&str],
    ) -> GatewayProcess {
        let (listen, metrics) = two_free_ports();
        let address = SocketAddr::from(([127, 0, 0, 1], listen));
        let metrics_address = SocketAddr::from(([127, 0, 0, 1], metrics));
        let log = tempfile::NamedTempFile::new().expect("a log file");
        command
            .args(["--listen", &address.to_string()])
            .args(["--metrics-listen", &metrics_address.to_string()]);
        if let Some(file) = &config {
            command.arg("--config").arg(file.path());
        }
        let mut child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.reopen().expect("the log file"))
            .process_group(0)
            .spawn()
            .expect("starting natsplug gateway");
        let (lines, received) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("the gateway's stdout");
        std::thread::spawn(move || {
            // Keep reading after the ready line so the pipe never fills.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = lines.send(line);
            }
        });
        let mut gateway = GatewayProcess {
            child,
            address,
            metrics_address,
            ready_line: String::new(),
            log,
            _config: config,
        };
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            match received.recv_timeout(Duration::from_millis(50)) {
                Ok(line) if line.starts_with("natsplug gateway ready:") => {
                    gateway.ready_line = line;
                    return gateway;
                }
                Ok(_) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    // Standard output closed: it exited (or is exiting).
                    let status = gateway.wait_exit();
                    panic!(
                        "natsplug gateway exited before it was ready ({status}):\n{}",
                        gateway.log()
                    );
                }
            }
            if let Some(status) = gateway.child.try_wait().unwrap() {
                panic!(
                    "natsplug gateway exited before it was ready ({status}):\n{}",
                    gateway.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "natsplug gateway printed no ready line within {} s; its log:\n{}",
                READY_WITHIN.as_secs(),
                gateway.log()
            );
        }
    }

    /// `http://127.0.0.1:PORT` of the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the gateway logged so far (its standard error).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// The path of the log file.
    pub fn log_path(&self) -> PathBuf {
        self.log.path().to_path_buf()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Resident memory (`VmRSS` of `/proc/PID/status`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the gateway's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmRSS line")
    }

    /// `GET path` on the metrics listener: status and body.
    pub fn metrics_get(&self, path: &str) -> (u16, String) {
        blocking_get(self.metrics_address, path)
            .unwrap_or_else(|error| panic!("GET {path} on the metrics listener: {error:#}"))
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics_text(&self) -> String {
        let (status, body) = self.metrics_get("/metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
    }

    /// The sum of the samples of `name` whose labels include every pair
    /// of `labels` (0 when there is none): pass every label for one series.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics_text(), name, labels)
    }

    /// Wait (at most 10 s) until [`GatewayProcess::metric`] equals
    /// `expected`; panics with the last value otherwise.
    pub fn wait_metric(&self, name: &str, labels: &[(&str, &str)], expected: f64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let value = self.metric(name, labels);
            if value == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} is {value}, not {expected}, after 10 s; /metrics:\n{}",
                self.metrics_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send SIGTERM.
    pub fn terminate(&mut self) {
        crate::process::terminate(&self.child);
    }

    /// Wait up to 20 s for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let log = self.log.path().to_path_buf();
        crate::process::wait_exit(&mut self.child, "natsplug gateway", || {
            std::fs::read_to_string(&log).unwrap_or_default()
        })
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn two_free_ports() -> (u16, u16) {
    let first = free_port();
    loop {
        let second = free_port();
        if second != first {
            return (first, second);
        }
    }
}

/// A blocking `GET path` over HTTP/1.0 (so the body ends with the
/// connection): the status and the body.
pub fn blocking_get(address: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no end of the head in `{text}`"))?;
    let status = head
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status in `{head}`"))?;
    let chunked = head.lines().any(|line| {
        line.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_default();
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
    out
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Every sample of `text` (comments skipped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(parse_sample)
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let end = loop {
            // Skip separators.
            while let Some(&(_, c)) = chars.peek() {
                if c == ',' || c == ' ' {
                    chars.next();
                } else {
                    break;
                }
            }
            let &(start, c) = chars.peek()?;
            if c == '}' {
                break start + 1;
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                let (_, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break,
                    other => value.push(other),
                }
            }
            labels.push((key.trim().to_string(), value));
        };
        rest = &inner[end..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The sum of the samples of `name` in `text` whose labels include every
/// pair of `labels`; 0 when there is none.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    parse_metrics(text)
        .iter()
        .filter(|sample| sample.name == name)
        .filter(|sample| {
            labels
                .iter()
                .all(|(k, v)| sample.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|sample| sample.value)
        .sum()
}

/// A response, its body read in full.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub version: Version,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl HttpReply {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("a JSON body ({e}): {}", self.text()))
    }
}

#[derive(Clone)]
enum Sender {
    Http1(Arc<tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Full<Bytes>>>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One client connection to an HTTP server: HTTP/1.1 with keep-alive
/// (requests one at a time) or h2c with prior knowledge (concurrent
/// streams). Clones share the connection.
#[derive(Clone)]
pub struct HttpClient {
    address: SocketAddr,
    sender: Sender,
}

/// Longest a request may take in full before it counts as failed.
const REQUEST_WITHIN: Duration = Duration::from_secs(30);

impl HttpClient {
    /// An HTTP/1.1 connection to `address`.
    pub async fn http1(address: SocketAddr) -> anyhow::Result<HttpClient> {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(HttpClient {
            address,
            sender: Sender::Http1(Arc::new(tokio::sync::Mutex::new(sender))),
        })
    }

    /// An HTTP/2 connection to `address` without TLS or upgrade (prior knowledge).
    pub async fn h2c(address: SocketAddr) -> anyhow::Result<HttpClient> {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(HttpClient {
            address,
            sender: Sender::Http2(sender),
        })
    }

    /// Send a request and read the whole response. A `host` in `headers`
    /// replaces the default (the server's address); over HTTP/2 it becomes
    /// the `:authority`.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> anyhow::Result<HttpReply> {
        let body = body.into();
        tokio::time::timeout(REQUEST_WITHIN, async {
            let response = self.send_streaming(method, path, headers, body).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok(HttpReply {
                status: parts.status.as_u16(),
                version: parts.version,
                headers: parts
                    .headers
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.as_str().to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
                body,
            })
        })
        .await
        .with_context(|| format!("{method} {path}: no full response within 30 s"))?
    }

    /// `GET path`.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<HttpReply> {
        self.send("GET", path, headers, Bytes::new()).await
    }

    /// Send a request; the response with its body still to read.
    pub async fn send_streaming(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Response<Incoming>> {
        let host = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("host"))
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| self.address.to_string());
        let mut builder = Request::builder().method(method);
        builder = match &self.sender {
            Sender::Http1(_) => builder.uri(path).header("host", &host),
            Sender::Http2(_) => builder
                .uri(format!("http://{host}{path}"))
                .version(Version::HTTP_2),
        };
        for (name, value) in headers {
            if !name.eq_ignore_ascii_case("host") {
                builder = builder.header(*name, *value);
            }
        }
        let request = builder.body(Full::new(body.into()))?;
        let response = match &self.sender {
            Sender::Http1(sender) => {
                let mut sender = sender.lock().await;
                sender.ready().await?;
                sender.send_request(request).await?
            }
            Sender::Http2(sender) => {
                let mut sender = sender.clone();
                sender.ready().await?;
                sender.send_request(request).await?
            }
        };
        Ok(response)
    }
}

/// One request on a new HTTP/1.1 connection; panics when it fails.
pub async fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> HttpReply {
    let client = HttpClient::http1(address)
        .await
        .unwrap_or_else(|e| panic!("connecting to {address}: {e:#}"));
    client
        .send(method, path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} to {address}: {e:#}"))
}

/// `GET path` on a new HTTP/1.1 connection; panics when it fails.
pub async fn get(address: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpReply {
    request(address, "GET", path, headers, Bytes::new()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_summed_over_the_matching_label_sets() {
        let text = "# HELP x_total X.\n# TYPE x_total counter\n\
                    x_total{route=\"a\",status=\"200\"} 3\n\
                    x_total{route=\"a\",status=\"404\"} 2\n\
                    x_total{route=\"b\",status=\"200\"} 5\n\
                    y_seconds_count{route=\"a\"} 4\n\
                    y_seconds_bucket{le=\"+Inf\",route=\"a\"} 4\n\
                    z{note=\"a \\\"q\\\", b\"} 1.5\n\
                    plain 7\n";
        assert_eq!(metric_value(text, "x_total", &[("route", "a")]), 5.0);
        assert_eq!(
            metric_value(text, "x_total", &[("route", "a"), ("status", "200")]),
            3.0
        );
        assert_eq!(metric_value(text, "x_total", &[]), 10.0);
        assert_eq!(metric_value(text, "x_total", &[("route", "c")]), 0.0);
        assert_eq!(metric_value(text, "y_seconds_count", &[]), 4.0);
        assert_eq!(
            metric_value(text, "y_seconds_bucket", &[("le", "+Inf")]),
            4.0
        );
        assert_eq!(metric_value(text, "z", &[("note", "a \"q\", b")]), 1.5);
        assert_eq!(metric_value(text, "plain", &[]), 7.0);
        assert_eq!(metric_value(text, "absent", &[]), 0.0);
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }
}
