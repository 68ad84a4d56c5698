//! The gateway's counters and the HTTP endpoint that serves them:
//! `/metrics` (Prometheus text: exchanges per route and status, their
//! duration, upstream failures by kind, and every route's chain counters
//! through the caller library's collector), `/healthz` and `/readyz`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use natsplug_client::metrics::ChainCollector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::routes::RouteTable;

/// An exchange's route and final status.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub status: u16,
}

/// A route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

/// A route and a kind of upstream failure.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FailureLabels {
    pub route: String,
    pub kind: &'static str,
}

/// Every counter of the gateway.
#[derive(Debug)]
pub struct GatewayMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram>,
    upstream_failures: Family<FailureLabels, Counter>,
    nats_connections: Gauge,
    registry: Registry,
    ready: AtomicBool,
}

impl GatewayMetrics {
    /// The gateway's metrics, with the chain counters of every route.
    pub fn new(routes: &RouteTable) -> GatewayMetrics {
        let mut registry = Registry::with_prefix("natsplug_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Exchanges answered, by route and status.",
            requests.clone(),
        );
        let durations = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.5, 14))
        });
        registry.register(
            "request_duration_seconds",
            "Time from the request head to the end of the exchange, by route.",
            durations.clone(),
        );
        let upstream_failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "upstream_failures",
            "Exchanges the upstream failed: refused (502), timeout (504), error (502).",
            upstream_failures.clone(),
        );
        let nats_connections = Gauge::default();
        nats_connections.set(1);
        registry.register(
            "nats_connections",
            "NATS connections opened: the shared one, and one of each proxy thread's own.",
            nats_connections.clone(),
        );
        for route in routes.routes() {
            if let Some(chain) = &route.chain {
                registry
                    .sub_registry_with_label(("route".into(), route.name.clone().into()))
                    .register_collector(Box::new(ChainCollector::new(chain.clone())));
            }
        }
        GatewayMetrics {
            requests,
            durations,
            upstream_failures,
            nats_connections,
            registry,
            ready: AtomicBool::new(false),
        }
    }

    /// The gauge of NATS connections opened.
    pub fn nats_connections(&self) -> Gauge {
        self.nats_connections.clone()
    }

    /// Count one finished exchange.
    pub fn exchange(&self, route: &str, status: u16, duration: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                status,
            })
            .inc();
        self.durations
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(duration.as_secs_f64());
    }

    /// Count an upstream failure of `kind`.
    pub fn upstream_failure(&self, route: &str, kind: &'static str) {
        self.upstream_failures
            .get_or_create(&FailureLabels {
                route: route.to_string(),
                kind,
            })
            .inc();
    }

    /// Say whether the gateway takes new exchanges: true once the proxy
    /// listener accepts connections, false again from SIGTERM on.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    fn render(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(%error, "encoding the metrics failed");
        }
        text
    }
}

/// Bind `address` and serve `/metrics`, `/healthz` and `/readyz` on the
/// current runtime. Returns the bound address.
pub async fn serve(
    metrics: Arc<GatewayMetrics>,
    address: SocketAddr,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the metrics endpoint to {address} (metrics_listen)"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| respond(metrics.clone(), request));
                if let Err(error) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%error, "metrics connection ended");
                }
            });
        }
    });
    tracing::info!(address = %bound, "metrics endpoint: /healthz /readyz /metrics");
    Ok(bound)
}

async fn respond(
    metrics: Arc<GatewayMetrics>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    if request.method() != Method::GET {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".into(),
        ));
    }
    Ok(match request.uri().path() {
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" if metrics.ready.load(Ordering::Acquire) => {
            reply(StatusCode::OK, "text/plain", "ready\n".into())
        }
        "/readyz" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: the proxy listener is not open yet, or the gateway is stopping\n".into(),
        ),
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    })
}
