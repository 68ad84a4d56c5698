//! The HTTP monitoring endpoint: `/healthz` (the process is up), `/readyz`
//! (connected to NATS and every plugin file loaded) and `/metrics`
//! (Prometheus text format). Off unless `monitoring.listen` is set.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::server::Host;

/// Bind `address` and serve the monitoring endpoint until the host shuts
/// down. Returns the bound address (useful with port 0).
pub async fn serve(host: Arc<Host>, address: SocketAddr) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| {
            format!("binding the monitoring endpoint to {address} (monitoring.listen)")
        })?;
    let bound = listener.local_addr()?;
    let stop = host.background();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "monitoring endpoint: accept failed");
                        continue;
                    }
                },
            };
            let host = host.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| respond(host.clone(), request));
                if let Err(error) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%error, "monitoring connection ended");
                }
            });
        }
    });
    tracing::info!(address = %bound, "monitoring endpoint: /healthz /readyz /metrics");
    Ok(bound)
}

async fn respond(
    host: Arc<Host>,
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
        "/readyz" => match host.readiness().await {
            Ok(()) => reply(StatusCode::OK, "text/plain", "ready\n".into()),
            Err(reason) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {reason}\n"),
            ),
        },
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::render(&host).await,
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /healthz, /readyz or /metrics\n".into(),
        ),
    })
}
