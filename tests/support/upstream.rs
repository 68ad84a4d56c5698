//! A real HTTP/1.1 upstream for the gateway tests, on hyper, with its own
//! thread and runtime: it echoes what it received, streams, stalls, sends
//! big bodies and any status, and counts requests and abandoned bodies.
//!
//! | path | answer |
//! | --- | --- |
//! | `/status/NNN` | status NNN, body `status NNN\n` (none for 1xx, 204, 304) |
//! | `/stream?chunks=a,b,c&delay_ms=N` | 200, chunked, one chunk per (percent-decoded) item, N ms apart |
//! | `/slow?ms=N` | 200 `slow\n` after N ms |
//! | `/big?mb=N` | 200, chunked, N MiB of `x` in 64 KiB chunks |
//! | `/echo...` and any other path | 200 JSON `{"method","path","headers","body_len","version"}` of the request as received |
//!
//! An echo with `hop=1` in its query also sends hop-by-hop headers back
//! (`Connection: x-up-hop`, `X-Up-Hop`, `Keep-Alive`) beside `X-Kept`.
//! An echo of a request carrying `x-reply-server: NAME` answers with
//! `server: NAME`. Every response carries `x-upstream: <name>`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// A request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
}

#[derive(Default)]
struct Stats {
    accepted: AtomicU64,
    requests: AtomicU64,
    cancelled: AtomicU64,
    completed: AtomicU64,
    seen: Mutex<Vec<Seen>>,
}

/// A running upstream; stopped when dropped.
pub struct Upstream {
    address: SocketAddr,
    name: String,
    stats: Arc<Stats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    /// Start an upstream named `upstream` on 127.0.0.1 and a free port.
    pub fn start() -> Upstream {
        Upstream::start_named("upstream")
    }

    /// Start an upstream whose responses carry `x-upstream: <name>`.
    pub fn start_named(name: &str) -> Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the upstream");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let address = listener.local_addr().expect("the upstream's address");
        let stats = Arc::new(Stats::default());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = {
            let stats = stats.clone();
            let name = name.to_string();
            std::thread::Builder::new()
                .name(format!("upstream-{name}"))
                .spawn(move || serve(listener, name, stats, stopped))
                .expect("starting the upstream thread")
        };
        Upstream {
            address,
            name: name.to_string(),
            stats,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The listening address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The name in the `x-upstream` response header.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.stats.accepted.load(Ordering::Relaxed)
    }

    /// Requests received so far (counted when their head arrives).
    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::SeqCst)
    }

    /// Streamed bodies (`/stream`, `/big`) dropped before their end: the
    /// receiver went away.
    pub fn cancelled(&self) -> u64 {
        self.stats.cancelled.load(Ordering::SeqCst)
    }

    /// Streamed bodies sent to their end.
    pub fn completed(&self) -> u64 {
        self.stats.completed.load(Ordering::SeqCst)
    }

    /// Every request received so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.stats.seen.lock().unwrap().clone()
    }

    /// Wait up to `limit` until `probe` holds for this upstream; false if it
    /// never did. This blocks the calling thread: from async code that
    /// must keep running meanwhile, poll the counters instead.
    pub fn wait_for(&self, limit: Duration, probe: impl Fn(&Upstream) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while !probe(self) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Stop accepting and drop every open connection.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An address on 127.0.0.1 where nothing listens: connections are refused.
pub fn refused_address() -> SocketAddr {
    let port = crate::nats_server::free_port();
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn serve(
    listener: std::net::TcpListener,
    name: String,
    stats: Arc<Stats>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the upstream's runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
        let name: Arc<str> = name.into();
        let accept = async {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                stats.accepted.fetch_add(1, Ordering::Relaxed);
                let stats = stats.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        handle(request, name.clone(), stats.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        };
        tokio::select! {
            _ = accept => {}
            _ = stopped => {}
        }
    });
    // Dropping the runtime cancels every connection task.
    drop(runtime);
}

type Reply = Response<UpstreamBody>;

async fn handle(
    request: Request<Incoming>,
    name: Arc<str>,
    stats: Arc<Stats>,
) -> Result<Reply, Infallible> {
    stats.requests.fetch_add(1, Ordering::SeqCst);
    let method = request.method().to_string();
    let target = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let path = request.uri().path().to_string();
    let query = parse_query(request.uri().query().unwrap_or(""));
    let version = format!("{:?}", request.version());
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let reply_server = request.headers().get("x-reply-server").cloned();
    let body_len = match request.into_body().collect().await {
        Ok(body) => body.to_bytes().len(),
        Err(_) => 0,
    };
    stats.seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: target.clone(),
        headers: headers.clone(),
        body_len,
    });

    let number = |key: &str| -> u64 {
        query
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_default()
    };
    let mut response = if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        let body = if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Bytes::new()
        } else {
            Bytes::from(format!("status {}\n", status.as_u16()))
        };
        let mut response = Response::new(UpstreamBody::full(body));
        *response.status_mut() = status;
        response
    } else if path == "/stream" {
        let chunks: Vec<Bytes> = query
            .get("chunks")
            .map(|list| {
                list.split(',')
                    .map(|item| Bytes::from(percent_decode(item)))
                    .collect()
            })
            .unwrap_or_default();
        let delay = Duration::from_millis(number("delay_ms"));
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            for (index, chunk) in chunks.into_iter().enumerate() {
                if index > 0 && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if sender.send(chunk).await.is_err() {
                    break;
                }
            }
        });
        Response::new(UpstreamBody::streamed(
            Source::Channel(receiver),
            stats.clone(),
        ))
    } else if path == "/slow" {
        tokio::time::sleep(Duration::from_millis(number("ms"))).await;
        Response::new(UpstreamBody::full(Bytes::from_static(b"slow\n")))
    } else if path == "/big" {
        let chunks = number("mb") * (1 << 20) / BIG_CHUNK.len() as u64;
        Response::new(UpstreamBody::streamed(Source::Big(chunks), stats.clone()))
    } else {
        let echo = serde_json::json!({
            "method": method,
            "path": target,
            "headers": headers,
            "body_len": body_len,
            "version": version,
        });
        let mut response = Response::new(UpstreamBody::full(Bytes::from(echo.to_string())));
        let headers = response.headers_mut();
        headers.insert("content-type", "application/json".parse().unwrap());
        if query.get("hop").map(String::as_str) == Some("1") {
            headers.insert("connection", "x-up-hop".parse().unwrap());
            headers.insert("x-up-hop", "dropped".parse().unwrap());
            headers.insert("keep-alive", "timeout=5".parse().unwrap());
            headers.insert("x-kept", "kept".parse().unwrap());
        }
        if let Some(server) = reply_server {
            headers.insert("server", server);
        }
        response
    };
    response
        .headers_mut()
        .insert("x-upstream", name.parse().unwrap());
    Ok(response)
}

/// One 64 KiB chunk of a `/big` body.
static BIG_CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

enum Source {
    Full(Option<Bytes>),
    Channel(tokio::sync::mpsc::Receiver<Bytes>),
    Big(u64),
}

/// A response body; a streamed one counts itself cancelled when dropped
/// before its end.
pub struct UpstreamBody {
    source: Source,
    /// Set for streamed bodies.
    stats: Option<Arc<Stats>>,
    finished: bool,
}

impl UpstreamBody {
    fn full(bytes: Bytes) -> UpstreamBody {
        UpstreamBody {
            source: Source::Full(Some(bytes)),
            stats: None,
            finished: false,
        }
    }

    fn streamed(source: Source, stats: Arc<Stats>) -> UpstreamBody {
        UpstreamBody {
            source,
            stats: Some(stats),
            finished: false,
        }
    }

    fn finish(&mut self) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if !self.finished {
            self.finished = true;
            if let Some(stats) = &self.stats {
                stats.completed.fetch_add(1, Ordering::SeqCst);
            }
        }
        Poll::Ready(None)
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        match &mut this.source {
            Source::Full(bytes) => match bytes.take() {
                Some(bytes) if !bytes.is_empty() => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                _ => this.finish(),
            },
            Source::Channel(receiver) => match receiver.poll_recv(cx) {
                Poll::Ready(Some(chunk)) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                Poll::Ready(None) => this.finish(),
                Poll::Pending => Poll::Pending,
            },
            Source::Big(left) => {
                if *left == 0 {
                    return this.finish();
                }
                *left -= 1;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&BIG_CHUNK)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Full(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
            _ => false,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match &self.source {
            Source::Full(bytes) => {
                hyper::body::SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            _ => hyper::body::SizeHint::default(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if !self.finished
            && let Some(stats) = &self.stats
        {
            stats.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) => (key.to_string(), value.to_string()),
            None => (pair.to_string(), String::new()),
        })
        .collect()
}

/// `%XX` escapes decoded (and `+` kept as is).
pub fn percent_decode(text: &str) -> Vec<u8> {
    fn hex(byte: u8) -> Option<u8> {
        (byte as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%'
            && index + 2 < bytes.len()
            && let (Some(high), Some(low)) = (hex(bytes[index + 1]), hex(bytes[index + 2]))
        {
            out.push(high << 4 | low);
            index += 3;
            continue;
        }
        out.push(bytes[index]);
        index += 1;
    }
    out
}
