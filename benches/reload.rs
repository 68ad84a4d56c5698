//! Hot-reload latency: time from a plugin file landing in the watch
//! directory (renamed into place) to the new version answering over NATS,
//! for a small Rust plugin and, when built, the large Python and
//! JavaScript ones; cold (never compiled) and with the compiled cache warm.
//!
//! `cargo bench -p natsplug-suite --bench reload` (build the polyglot examples first with
//! `examples/build-polyglot.sh` to include the large plugins)

use std::path::Path;
use std::time::{Duration, Instant};

use natsplug_protocol::{Action, encode_request};
use natsplug_suite::client::request;
use natsplug_suite::host::deploy_bytes;
use natsplug_suite::{NatsServer, PhaseClient, TestHost, guests};

/// Deploy `bytes` as plugin `probe` and wait until a reply shows `answers`.
async fn time_reload(
    host: &TestHost,
    client: &PhaseClient,
    bytes: &[u8],
    answers: impl Fn(&natsplug_protocol::PhaseReply) -> bool,
) -> Duration {
    let started = Instant::now();
    deploy_bytes(host.plugins_dir(), "probe", bytes);
    loop {
        let payload = encode_request(&request("request_filter", "probe", "POST", "/old/path"));
        if let Ok(raw) = client.send_raw("probe", "request_filter", payload).await
            && answers(&raw.reply())
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the new version never answered"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn polyglot(name: &str) -> Option<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/guests/polyglot")
        .join(format!("{name}.wasm"));
    std::fs::read(path).ok()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let server = NatsServer::start();
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_path_buf();
    // The baseline is the header injector: `next` without a status.
    let host = TestHost::start(
        &server.url(),
        &[("probe", guests::HEADER_INJECTOR)],
        |config| {
            config.cache.dir = Some(cache_dir.clone());
        },
    )
    .await;
    let _watcher = host.watch(Duration::from_millis(
        host.host.config().plugins.debounce_ms,
    ));
    let client = PhaseClient::new(server.connect().await);
    let injector = std::fs::read(guests::HEADER_INJECTOR).unwrap();
    let is_injector = |r: &natsplug_protocol::PhaseReply| {
        r.request_headers
            .as_ref()
            .is_some_and(|m| m.set.first().is_some_and(|(n, _)| n == "x-plugin"))
    };

    let mut candidates = vec![("authz (Rust, small)", std::fs::read(guests::AUTHZ).unwrap())];
    if let Some(bytes) = polyglot("python-validator") {
        candidates.push(("python-validator (large)", bytes));
    }
    if let Some(bytes) = polyglot("js-rewriter") {
        candidates.push(("js-rewriter (large)", bytes));
    }
    println!(
        "{:<26} {:>10} {:>8} {:>12}",
        "plugin", "size", "cache", "land→answer"
    );
    for (name, bytes) in &candidates {
        // Anything but the injector's answer shows the new version.
        let differs =
            |r: &natsplug_protocol::PhaseReply| !is_injector(r) && r.action != Action::Error;
        for cache in ["cold", "warm"] {
            let elapsed = time_reload(&host, &client, bytes, differs).await;
            println!(
                "{name:<26} {:>8.1}MB {cache:>8} {:>10.0}ms",
                bytes.len() as f64 / 1e6,
                elapsed.as_secs_f64() * 1000.0
            );
            // Back to the injector (cached) before the next measurement.
            time_reload(&host, &client, &injector, is_injector).await;
        }
    }
    host.host.shutdown().await.unwrap();
}
