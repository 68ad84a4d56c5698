//! Micro benchmarks: protocol decode+encode, a call into a warm instance,
//! and instantiate+call on a fresh instance.
//!
//! `cargo bench --bench micro`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use natsplug::config::{HostConfig, InstanceMode, PluginSettings};
use natsplug::dispatch::{self, CallSettings};
use natsplug::plugin::PluginLoader;
use natsplug::protocol::{self, HttpRequest, PhaseRequest};
use natsplug::{Phase, engine};
use natsplug_suite::guests;

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
    c.bench_function("protocol/decode+encode", |b| {
        b.iter(|| {
            let request =
                protocol::decode_request(black_box(&payload), Phase::RequestFilter).unwrap();
            black_box(request);
            black_box(protocol::encode_reply(black_box(&reply)))
        })
    });
}

fn plugin_benches(c: &mut Criterion) {
    let config = HostConfig::default();
    let engine = engine::build_engine(&config.runtime).unwrap();
    let loader = PluginLoader::new(engine, &config.runtime).unwrap();
    let payload = protocol::encode_request(&typical_request());
    for (name, path) in [
        ("header-injector", guests::HEADER_INJECTOR),
        ("authz", guests::AUTHZ),
    ] {
        let plugin = loader
            .load_bytes(
                name,
                &std::fs::read(path).unwrap(),
                &PluginSettings::default(),
            )
            .unwrap();
        let mut reuse = CallSettings::from_runtime(&config.runtime, 1 << 20);
        reuse.max_calls_per_instance = u64::MAX;
        let mut slot = None;
        c.bench_function(&format!("call/warm/{name}"), |b| {
            b.iter(|| {
                dispatch::run(
                    &mut slot,
                    &plugin,
                    Phase::RequestFilter,
                    &payload,
                    None,
                    &reuse,
                )
            })
        });
        let fresh = CallSettings {
            instance_mode: InstanceMode::Fresh,
            ..reuse.clone()
        };
        c.bench_function(&format!("call/fresh/{name}"), |b| {
            b.iter(|| {
                let mut slot = None;
                dispatch::run(
                    &mut slot,
                    &plugin,
                    Phase::RequestFilter,
                    &payload,
                    None,
                    &fresh,
                )
            })
        });
    }
}

criterion_group!(benches, protocol_benches, plugin_benches);
criterion_main!(benches);
