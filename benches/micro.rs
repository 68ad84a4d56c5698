//! Micro benchmarks: protocol decode+encode; a call into a warm instance,
//! both the whole dispatch (`call/warm`: decode, call, encode) and the
//! guest call alone (`guest/warm`); instantiate+call on a fresh instance.
//! For the Rust header injector and authorizer and, when built, the
//! JavaScript path rewriter.
//!
//! `cargo bench -p natsplug-suite --bench micro` (build the JavaScript example first with
//! `examples/build-polyglot.sh` to include it)

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use natsplug::cache::ArtifactCache;
use natsplug::config::{HostConfig, InstanceMode, PluginSettings};
use natsplug::dispatch::{self, CallSettings};
use natsplug::engine;
use natsplug::plugin::{LoadedPlugin, PluginLoader};
use natsplug_protocol::Phase;
use natsplug_protocol::{self as protocol, Action, HttpRequest, PhaseReply, PhaseRequest};
use natsplug_suite::guests;
use natsplug_suite::host::shared_cache_dir;

/// A typical request: 8 headers and a small body.
fn typical_request() -> PhaseRequest {
    PhaseRequest {
        version: 1,
        request_id: "0b8f5e1c-4d7e-4a8e-9d55-2f1c3a7d9e01".into(),
        session_id: Some(4242),
        phase: "request_filter".into(),
        request: HttpRequest {
            method: "POST".into(),
            path: "/api/v1/orders".into(),
            query: Some("expand=items".into()),
            host: Some("shop.example.com".into()),
            client_ip: Some("203.0.113.9".into()),
            headers: vec![
                ("host".into(), "shop.example.com".into()),
                (
                    "user-agent".into(),
                    "Mozilla/5.0 (X11; Linux x86_64)".into(),
                ),
                ("accept".into(), "application/json".into()),
                ("accept-encoding".into(), "gzip, br".into()),
                ("content-type".into(), "application/json".into()),
                ("content-length".into(), "64".into()),
                ("authorization".into(), "Bearer s3cret".into()),
                ("x-forwarded-for".into(), "203.0.113.9".into()),
            ],
            body: Some(br#"{"item":"book","quantity":2,"note":"gift wrap, please"}"#.to_vec()),
        },
        response: None,
        chunk: None,
        duration_ms: None,
    }
}

fn protocol_benches(c: &mut Criterion) {
    let payload = protocol::encode_request(&typical_request());
    let reply = protocol::PhaseReply {
        request_headers: Some(protocol::HeaderMutations {
            set: vec![("x-plugin".into(), "header-injector".into())],
            remove: vec![],
        }),
        ..protocol::PhaseReply::next("0b8f5e1c-4d7e-4a8e-9d55-2f1c3a7d9e01")
    };
    // The host's request path decodes into a view borrowing from the message.
    c.bench_function("protocol/decode+encode", |b| {
        b.iter(|| {
            let request =
                protocol::decode_request_view(black_box(&payload), Phase::RequestFilter).unwrap();
            black_box(request);
            black_box(protocol::encode_reply(black_box(&reply)))
        })
    });
}

fn plugin_benches(c: &mut Criterion) {
    let mut config = HostConfig::default();
    // A few pool slots are enough here, and a small reservation lets the
    // benchmark run under `valgrind --tool=callgrind` too.
    config.runtime.pool_instances = 2;
    let engine = engine::build_engine(&config.runtime).unwrap();
    // Compiled components are cached with the tests' ones, so a large
    // component compiles on the first run only.
    let cache = ArtifactCache::open(&shared_cache_dir(), &engine).unwrap();
    let loader = PluginLoader::new(engine, &config.runtime)
        .unwrap()
        .with_cache(cache);
    let payload = protocol::encode_request(&typical_request());
    let with_config = |key: &str, value: &str| PluginSettings {
        config: [(key.to_string(), value.to_string())].into(),
        ..PluginSettings::default()
    };

    let injector = loader
        .load_bytes(
            "header-injector",
            &std::fs::read(guests::HEADER_INJECTOR).unwrap(),
            &PluginSettings::default(),
        )
        .unwrap();
    call_benches(
        c,
        "header-injector",
        &injector,
        &payload,
        &config,
        |reply| reply.request_headers.as_ref().map(|h| h.set.len()) == Some(2),
    );

    // The token the typical request carries: the request is let through.
    let authz = loader
        .load_bytes(
            "authz",
            &std::fs::read(guests::AUTHZ).unwrap(),
            &with_config("token", "s3cret"),
        )
        .unwrap();
    call_benches(c, "authz", &authz, &payload, &config, |reply| {
        reply.request_headers.as_ref().map(|h| h.remove.as_slice())
            == Some(&["authorization".to_string()][..])
    });

    // The same two examples built against contract 0.1.0 (the test
    // fixtures), for the cost of the older contract's calls.
    let fixture = |name: &str| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/contract-0.1.0")
            .join(format!("{name}.wasm"))
    };
    let injector_0_1 = loader
        .load_bytes(
            "header-injector",
            &std::fs::read(fixture("header-injector")).unwrap(),
            &PluginSettings::default(),
        )
        .unwrap();
    call_benches(
        c,
        "header-injector-0.1.0",
        &injector_0_1,
        &payload,
        &config,
        |reply| reply.request_headers.as_ref().map(|h| h.set.len()) == Some(2),
    );
    let authz_0_1 = loader
        .load_bytes(
            "authz",
            &std::fs::read(fixture("authz")).unwrap(),
            &with_config("token", "s3cret"),
        )
        .unwrap();
    call_benches(c, "authz-0.1.0", &authz_0_1, &payload, &config, |reply| {
        reply.request_headers.as_ref().map(|h| h.remove.as_slice())
            == Some(&["authorization".to_string()][..])
    });

    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/guests/polyglot/js-rewriter.wasm");
    let Ok(bytes) = std::fs::read(&js) else {
        eprintln!(
            "skipping the js-rewriter benchmarks: {} is missing; run `examples/build-polyglot.sh` to build it",
            js.display()
        );
        return;
    };
    let started = Instant::now();
    // A route matching the typical request: every call rewrites its path,
    // sets two headers and logs a record.
    let rewriter = loader
        .load_bytes("js-rewriter", &bytes, &with_config("routes", "/api/v1=/v2"))
        .unwrap();
    eprintln!(
        "js-rewriter loaded in {:.1} s (compiled on the first run, then from the cache in {})",
        started.elapsed().as_secs_f64(),
        shared_cache_dir().display()
    );
    call_benches(c, "js-rewriter", &rewriter, &payload, &config, |reply| {
        reply.path.as_deref() == Some("/v2/orders?expand=items")
    });
}

/// `call/warm/NAME`, a call into a warm instance, and `call/fresh/NAME`,
/// instantiate then call; first checks that a call answers `next` and
/// that `expected` holds for its reply.
fn call_benches(
    c: &mut Criterion,
    name: &str,
    plugin: &LoadedPlugin,
    payload: &[u8],
    config: &HostConfig,
    expected: impl Fn(&PhaseReply) -> bool,
) {
    let mut reuse = CallSettings::from_runtime(&config.runtime, 1 << 20);
    reuse.max_calls_per_instance = u64::MAX;
    let fresh = CallSettings {
        instance_mode: InstanceMode::Fresh,
        ..reuse.clone()
    };
    let call = |slot: &mut Option<_>, settings: &CallSettings| {
        dispatch::run(slot, plugin, Phase::RequestFilter, payload, None, settings)
    };

    let mut slot = None;
    let reply = protocol::decode_reply(&call(&mut slot, &reuse).payload).unwrap();
    assert!(
        reply.action == Action::Next && expected(&reply),
        "{name} did not answer as expected: {reply:?}"
    );
    c.bench_function(&format!("call/warm/{name}"), |b| {
        b.iter(|| call(&mut slot, &reuse))
    });
    // The guest call alone: the request decoded once, the reply not encoded
    // (decode and encode are `protocol/decode+encode`).
    let request = protocol::decode_request_view(payload, Phase::RequestFilter).unwrap();
    let timeout = plugin.limits.call_timeout;
    let mut instance = plugin.instantiate().unwrap();
    c.bench_function(&format!("guest/warm/{name}"), |b| {
        b.iter(|| {
            dispatch::call(&mut instance, Phase::RequestFilter, &request, None, timeout).unwrap()
        })
    });
    drop(instance);
    c.bench_function(&format!("call/fresh/{name}"), |b| {
        b.iter(|| call(&mut None, &fresh))
    });
}

criterion_group!(benches, protocol_benches, plugin_benches);
criterion_main!(benches);
