//! What contract `natsplug:plugin@0.2.0` promises, end to end: a real
//! nats-server, a host loading real components, and phase requests over
//! NATS. The `every-phase` test guest writes `init` and all four phases and
//! echoes what it received into its decision or a log record, so each test
//! checks, exactly, what the host lowered into the call and what it lifted
//! out of the decision:
//!
//! - the host serves exactly the phases a component exports;
//! - header lists reach the plugin in order, with duplicates and case;
//! - each phase's decisions (`next`, `end`, `fail`) become the reply;
//! - `response-body-filter` gets the response head and the chunk, and its
//!   state comes back with the next chunk;
//! - `logging` gets the exchange and its duration;
//! - `init` gets the configuration, its refusal fails the load, and the
//!   version it reports is the plugin's version;
//! - a header value that is not UTF-8 fails the call.

use std::time::{Duration, Instant};

use natsplug::config::PluginSettings;
use natsplug::logs::{LogLevel, LogRecord, LogValue};
use natsplug_protocol::{
    self as protocol, Action, BodyChunk, HeaderMutations, HttpResponse, Phase, PhaseReply,
    PhaseRequest,
};
use natsplug_suite::client::request;
use natsplug_suite::{NatsServer, PhaseClient, TestHost, guests};
use serde_json::Value;

/// The config `every-phase` is served with; `init` gets it in key order.
const CONFIG: [(&str, &str); 2] = [("mode", "echo"), ("greeting", "hello")];

/// A host serving `every-phase` (with [`CONFIG`]) and `header-injector`.
async fn host(server: &NatsServer) -> (TestHost, PhaseClient) {
    let host = TestHost::start(
        &server.url(),
        &[
            ("every-phase", guests::EVERY_PHASE),
            ("header-injector", guests::HEADER_INJECTOR),
        ],
        |config| {
            let settings = config.plugin.entry("every-phase".into()).or_default();
            for (key, value) in CONFIG {
                settings.config.insert(key.into(), value.into());
            }
        },
    )
    .await;
    (host, PhaseClient::new(server.connect().await))
}

fn headers(fields: &[(&str, &str)]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// A reply that only sets these request headers.
fn next_setting(set: &[(&str, &str)], remove: &[&str]) -> HeaderMutations {
    HeaderMutations {
        set: headers(set),
        remove: remove.iter().map(|name| name.to_string()).collect(),
    }
}

/// Send `request` with a `traceparent` NATS header and decode the reply.
async fn send_traced(
    client: &PhaseClient,
    plugin: &str,
    request: &PhaseRequest,
    traceparent: &str,
) -> PhaseReply {
    let mut nats_headers = async_nats::HeaderMap::new();
    nats_headers.insert("traceparent", traceparent);
    let subject = format!("{}.{plugin}.{}", client.prefix, request.phase);
    let message = tokio::time::timeout(
        Duration::from_secs(10),
        client.client.request_with_headers(
            subject,
            nats_headers,
            protocol::encode_request(request).into(),
        ),
    )
    .await
    .expect("a reply within 10 s")
    .expect("a reply");
    protocol::decode_reply(&message.payload).expect("a valid phase reply")
}

/// The record `host` emitted for `request_id` at `level`, waited for (at
/// most 10 s): plugin records go out right after the reply.
async fn record_of(host: &TestHost, request_id: &str, level: LogLevel) -> LogRecord {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = host
            .records
            .records()
            .into_iter()
            .find(|r| r.request_id.as_deref() == Some(request_id) && r.level == level);
        if let Some(record) = found {
            return record;
        }
        assert!(
            Instant::now() < deadline,
            "no {level:?} record for {request_id} within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn text(name: &str, value: &str) -> (String, LogValue) {
    (name.to_string(), LogValue::Text(value.to_string()))
}

fn integer(name: &str, value: i64) -> (String, LogValue) {
    (name.to_string(), LogValue::Integer(value))
}

#[tokio::test]
async fn the_host_serves_exactly_the_phases_a_component_exports() {
    let server = NatsServer::start();
    let (host, client) = host(&server).await;

    let mut subjects = host.host.subjects().await;
    subjects.sort();
    assert_eq!(
        subjects,
        [
            "nylon.plugin.every-phase.logging",
            "nylon.plugin.every-phase.request_filter",
            "nylon.plugin.every-phase.response_body_filter",
            "nylon.plugin.every-phase.response_filter",
            "nylon.plugin.header-injector.request_filter",
        ]
        .map(String::from)
    );
    let status = host.host.status().await;
    assert_eq!(status.len(), 2);
    for plugin in &status {
        assert_eq!(plugin.contract, "0.2.0", "{}", plugin.name);
    }

    // Every phase of every-phase answers, once each.
    for phase in Phase::ALL {
        let mut call = request(phase.as_str(), phase.as_str(), "GET", "/");
        call.response = Some(HttpResponse {
            status: 200,
            headers: vec![],
            body: None,
        });
        call.chunk = Some(BodyChunk {
            data: b"x".to_vec(),
            end_of_stream: true,
            state: None,
        });
        let reply = client.send("every-phase", &call).await;
        assert_eq!(reply.request_id, phase.as_str());
        assert_eq!(reply.action, Action::Next, "{phase}: {reply:?}");
    }
    let every_phase = status.iter().find(|p| p.name == "every-phase").unwrap();
    let mut served: Vec<Phase> = every_phase.endpoints.iter().map(|e| e.phase).collect();
    served.sort();
    assert_eq!(served, Phase::ALL.to_vec());

    // header-injector exports only request-filter: nothing answers on the
    // subjects of its three other phases.
    for phase in ["response_filter", "response_body_filter", "logging"] {
        let error = client
            .send_raw("header-injector", phase, vec![])
            .await
            .unwrap_err();
        assert_eq!(
            error.kind(),
            async_nats::RequestErrorKind::NoResponders,
            "{phase}"
        );
    }
    let injector = status.iter().find(|p| p.name == "header-injector").unwrap();
    assert_eq!(injector.endpoints.len(), 1);
    assert_eq!(injector.endpoints[0].phase, Phase::RequestFilter);
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn request_headers_reach_the_plugin_in_order_with_duplicates_and_case() {
    let server = NatsServer::start();
    let (host, client) = host(&server).await;

    let mut call = request("request_filter", "h-1", "GET", "/headers");
    call.request.headers = headers(&[
        ("Accept", "*/*"),
        ("x-dup", "1"),
        ("X-Dup", "2"),
        ("x-empty", ""),
        ("x-utf8", "café ☕"),
        ("X-DUP", "3"),
        ("x-drop", "gone"),
    ]);
    let reply = client.send("every-phase", &call).await;
    assert_eq!(reply.action, Action::Next);
    let set = reply.request_headers.expect("header changes").set;
    assert_eq!(set.len(), 5);
    assert_eq!(
        set[0],
        (
            "x-seen".to_string(),
            "7 fields: Accept=*/*, x-dup=1, X-Dup=2, x-empty=, x-utf8=café ☕, X-DUP=3, x-drop=gone"
                .to_string()
        )
    );
    // The SDK's lookups compare names case-insensitively: the first value,
    // then every value in order.
    assert_eq!(set[1], ("x-first".to_string(), "1".to_string()));
    assert_eq!(set[2], ("x-all".to_string(), "1,2,3".to_string()));

    // Without headers the list is empty, and lookups find nothing.
    let reply = client
        .send(
            "every-phase",
            &request("request_filter", "h-2", "GET", "/headers"),
        )
        .await;
    let set = reply.request_headers.expect("header changes").set;
    assert_eq!(set[0], ("x-seen".to_string(), "0 fields: ".to_string()));
    assert_eq!(set[1], ("x-first".to_string(), "-".to_string()));
    assert_eq!(set[2], ("x-all".to_string(), "".to_string()));

    // Response headers alike, in response-filter.
    let mut call = request("response_filter", "h-3", "GET", "/headers");
    call.response = Some(HttpResponse {
        status: 200,
        headers: headers(&[
            ("Set-Cookie", "a=1"),
            ("content-type", "text/html"),
            ("set-cookie", "b=2"),
        ]),
        body: None,
    });
    let reply = client.send("every-phase", &call).await;
    let set = reply.response_headers.expect("header changes").set;
    assert_eq!(
        set[0],
        (
            "x-seen".to_string(),
            "3 fields: Set-Cookie=a=1, content-type=text/html, set-cookie=b=2".to_string()
        )
    );
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn request_filter_next_changes_headers_body_and_path() {
    let server = NatsServer::start();
    let (host, client) = host(&server).await;

    let mut call = request("request_filter", "rf-1", "POST", "/orders");
    call.session_id = Some(7);
    call.request.query = Some("a=1&b=2".into());
    call.request.host = Some("example.test".into());
    call.request.client_ip = Some("192.0.2.1".into());
    call.request.body = Some(br#"{"n":1}"#.to_vec());
    call.request.headers = headers(&[("accept", "*/*"), ("x-drop", "secret")]);
    let reply = send_traced(
        &client,
        "every-phase",
        &call,
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
    )
    .await;
    assert_eq!(
        reply,
        PhaseReply {
            version: 1,
            request_id: "rf-1".into(),
            action: Action::Next,
            request_headers: Some(next_setting(
                &[
                    ("x-seen", "2 fields: accept=*/*, x-drop=secret"),
                    ("x-first", "-"),
                    ("x-all", ""),
                    (
                        "x-request",
                        "POST /orders query=a=1&b=2 host=example.test client-ip=192.0.2.1 \
                         request-id=rf-1 session-id=7 trace-id=4bf92f3577b34da6a3ce929d0e0e4736"
                    ),
                    ("x-init", "greeting=hello, mode=echo"),
                ],
                &["x-drop"]
            )),
            response_headers: None,
            status: None,
            body: Some(br#"got: {"n":1}"#.to_vec()),
            error: None,
            path: Some("/rewritten/orders".into()),
            state: None,
        }
    );

    // Absent optional fields arrive absent.
    let reply = client
        .send(
            "every-phase",
            &request("request_filter", "rf-2", "GET", "/"),
        )
        .await;
    let set = reply.request_headers.expect("header changes").set;
    assert_eq!(
        set[3],
        (
            "x-request".to_string(),
            "GET / query=none host=none client-ip=none request-id=rf-2 session-id=none trace-id=none"
                .to_string()
        )
    );
    assert_eq!(reply.body, Some(b"got no body".to_vec()));
    assert_eq!(reply.path, Some("/rewritten/".into()));
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn request_filter_end_and_fail_become_the_reply() {
    let server = NatsServer::start();
    let (host, client) = host(&server).await;

    let mut call = request("request_filter", "re-1", "DELETE", "/end");
    call.request.headers = headers(&[("accept", "text/plain")]);
    let raw = client
        .send_raw(
            "every-phase",
            "request_filter",
            protocol::encode_request(&call),
        )
        .await
        .unwrap();
    assert_eq!(
        raw.reply(),
        PhaseReply {
            version: 1,
            request_id: "re-1".into(),
            action: Action::End,
            request_headers: None,
            response_headers: Some(next_setting(
                &[
                    ("content-type", "text/plain"),
                    ("x-seen", "1 fields: accept=text/plain"),
                ],
                &[]
            )),
            status: Some(418),
            body: Some(b"ended DELETE /end".to_vec()),
            error: None,
            path: None,
            state: None,
        }
    );
    assert_eq!(raw.headers, None);

    let raw = client
        .send_raw(
            "every-phase",
            "request_filter",
            protocol::encode_request(&request("request_filter", "rx-1", "GET", "/fail")),
        )
        .await
        .unwrap();
    assert_eq!(
        raw.reply(),
        PhaseReply::error("rx-1", "told to fail at /fail")
    );
    // The plugin decided to fail: an answer, not a failure of the host
    // call, so no NATS service error.
    assert_eq!(raw.header("Nats-Service-Error-Code"), None);
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn response_filter_changes_status_and_headers_ends_or_fails() {
    let server = NatsServer::start();
    let (host, client) = host(&server).await;
    let upstream = HttpResponse {
        status: 200,
        headers: headers(&[("Content-Type", "text/html"), ("Server", "upstream/1")]),
        body: Some(b"<p>hi</p>".to_vec()),
    };

    let mut call = request("response_filter", "rs-1", "GET", "/page");
    call.request.headers = headers(&[("accept", "text/html")]);
    call.response = Some(upstream.clone());
    let reply = client.send("every-phase", &call).await;
    assert_eq!(
        reply,
        PhaseReply {
            version: 1,
            request_id: "rs-1".into(),
            action: Action::Next,
            request_headers: None,
            response_headers: Some(next_setting(
                &[
                    (
                        "x-seen",
                        "2 fields: Content-Type=text/html, Server=upstream/1"
                    ),
                    ("x-request-seen", "GET /page 1 fields: accept=text/html"),
                    ("x-response-body", "<p>hi</p>"),
                ],
                &["server"]
            )),
            status: Some(201),
            body: None,
            error: None,
            path: None,
            state: None,
        }
    );

    let mut call = request("response_filter", "rs-2", "GET", "/end");
    call.response = Some(upstream.clone());
    let reply = client.send("every-phase", &call).await;
    assert_eq!(
        reply,
        PhaseReply {
            version: 1,
            request_id: "rs-2".into(),
            action: Action::End,
            request_headers: None,
            response_headers: Some(next_setting(&[("x-upstream-status", "200")], &[])),
            status: Some(502),
            body: Some(b"replaced by every-phase".to_vec()),
            error: None,
            path: None,
            state: None,
        }
    );

    let mut call = request("response_filter", "rs-3", "GET", "/fail");
    call.response = Some(HttpResponse {
        status: 404,
        ..upstream
    });
    let reply = client.send("every-phase", &call).await;
    assert_eq!(reply.action, Action::Error);
    assert_eq!(
        reply.error.as_deref(),
        Some("told to fail on status 404 at /fail")
    );
    assert_eq!(
        (reply.status, reply.response_headers, reply.body),
        (None, None, None)
    );
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn response_body_filter_gets_the_response_head_and_carries_state() {
    let server = NatsServer::start();
    let (host, client) = host(&server).await;
    let head = HttpResponse {
        status: 206,
        headers: headers(&[
            ("content-type", "text/plain"),
            ("x-part", "a"),
            ("X-Part", "b"),
        ]),
        // A body sent along is not part of the head the plugin gets.
        body: Some(b"whole body".to_vec()),
    };

    // Three chunks of one exchange; the request (a `/fail` path, headers)
    // is not passed to this phase, so it changes nothing.
    let pieces: [&[u8]; 3] = [b"the sec", b"ret is ", b"out"];
    let mut state = None;
    let mut bodies = Vec::new();
    let mut states = Vec::new();
    for (index, piece) in pieces.iter().enumerate() {
        let mut call = request(
            "response_body_filter",
            &format!("c-{index}"),
            "GET",
            "/fail",
        );
        call.session_id = Some(42);
        call.request.headers = headers(&[("x-request-only", "1")]);
        call.response = Some(head.clone());
        call.chunk = Some(BodyChunk {
            data: piece.to_vec(),
            end_of_stream: index == pieces.len() - 1,
            state: state.take(),
        });
        let reply = client.send("every-phase", &call).await;
        assert_eq!(reply.action, Action::Next, "{reply:?}");
        assert_eq!(reply.request_id, format!("c-{index}"));
        assert_eq!(
            (reply.request_headers, reply.response_headers, reply.status),
            (None, None, None)
        );
        bodies.push(String::from_utf8(reply.body.expect("replaced data")).unwrap());
        states.push(reply.state.clone());
        state = reply.state;
    }
    let head_text = "head=206 3 fields: content-type=text/plain, x-part=a, X-Part=b";
    assert_eq!(
        bodies,
        vec![
            format!("{head_text}; state=none; data=the sec; end=false"),
            format!("{head_text}; state=the sec; data=ret is ; end=false"),
            format!("{head_text}; state=the secret is ; data=out; end=true"),
        ]
    );
    assert_eq!(
        states,
        vec![
            Some(b"the sec".to_vec()),
            Some(b"the secret is ".to_vec()),
            None
        ]
    );

    // Without a response in the request, the plugin gets no head.
    let mut call = request("response_body_filter", "c-3", "GET", "/");
    call.chunk = Some(BodyChunk {
        data: b"alone".to_vec(),
        end_of_stream: true,
        state: None,
    });
    let reply = client.send("every-phase", &call).await;
    assert_eq!(
        reply.body.as_deref(),
        Some(&b"head=no head; state=none; data=alone; end=true"[..])
    );
    assert_eq!(reply.state, None);

    // A chunk `fail` makes the plugin fail.
    call.request_id = "c-4".into();
    call.chunk = Some(BodyChunk {
        data: b"fail".to_vec(),
        end_of_stream: false,
        state: Some(b"kept".to_vec()),
    });
    let reply = client.send("every-phase", &call).await;
    assert_eq!(reply.action, Action::Error);
    assert_eq!(
        reply.error.as_deref(),
        Some("told to fail on a chunk `fail`")
    );
    assert_eq!((reply.body, reply.state), (None, None));
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn logging_gets_the_exchange_and_its_duration() {
    let server = NatsServer::start();
    let (host, client) = host(&server).await;

    let mut call = request("logging", "l-1", "POST", "/orders");
    call.session_id = Some(9);
    call.request.headers = headers(&[("user-agent", "curl/8"), ("x-dup", "1"), ("x-dup", "2")]);
    call.request.body = Some(b"{}".to_vec());
    call.response = Some(HttpResponse {
        status: 201,
        headers: headers(&[("content-length", "2")]),
        body: None,
    });
    call.duration_ms = Some(12);
    let reply = client.send("every-phase", &call).await;
    assert_eq!(reply, PhaseReply::next("l-1"));

    let record = record_of(&host, "l-1", LogLevel::Info).await;
    assert_eq!(record.message, "logged");
    assert_eq!(record.plugin, "every-phase");
    assert_eq!(record.plugin_version.as_deref(), Some("1.2.3"));
    assert_eq!(record.session_id, Some(9));
    assert_eq!(
        record.fields,
        vec![
            text("method", "POST"),
            text("path", "/orders"),
            text(
                "request_headers",
                "3 fields: user-agent=curl/8, x-dup=1, x-dup=2"
            ),
            text("request_body", "{}"),
            integer("status", 201),
            text("response_headers", "1 fields: content-length=2"),
            text("response_body", "none"),
            integer("duration_ms", 12),
            integer("session", 9),
        ]
    );

    // Without a response or a duration, the plugin gets neither.
    let reply = client
        .send("every-phase", &request("logging", "l-2", "GET", "/gone"))
        .await;
    assert_eq!(reply, PhaseReply::next("l-2"));
    let record = record_of(&host, "l-2", LogLevel::Info).await;
    assert_eq!(
        record.fields,
        vec![
            text("method", "GET"),
            text("path", "/gone"),
            text("request_headers", "0 fields: "),
            text("request_body", "none"),
            text("response", "none"),
            text("duration_ms", "none"),
        ]
    );
    let logged = host
        .records
        .records()
        .into_iter()
        .filter(|r| r.plugin == "every-phase" && r.message == "logged")
        .count();
    assert_eq!(logged, 2);
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn init_gets_the_config_and_reports_the_plugin_version() {
    let server = NatsServer::start();
    let (host, client) = host(&server).await;
    natsplug::discovery::serve(host.host.clone()).await.unwrap();

    // `init` ran on the instance before its first call, with every entry.
    let reply = client
        .send("every-phase", &request("request_filter", "i-1", "GET", "/"))
        .await;
    let set = reply.request_headers.expect("header changes").set;
    assert_eq!(
        set[4],
        (
            "x-init".to_string(),
            "greeting=hello, mode=echo".to_string()
        )
    );

    // The version `init` reports (the crate's) is the plugin's version.
    let status = host.host.status().await;
    let every_phase = status.iter().find(|p| p.name == "every-phase").unwrap();
    assert_eq!(every_phase.version.as_deref(), Some("1.2.3"));
    let reply = client
        .client
        .request("$SRV.INFO.natsplug", "".into())
        .await
        .unwrap();
    let info: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(info["metadata"]["plugin.every-phase.version"], "1.2.3");
    assert_eq!(info["metadata"]["plugin.every-phase.contract"], "0.2.0");
    assert_eq!(info["metadata"]["plugin.header-injector.version"], "1.0.0");
    let endpoints: Vec<&Value> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["metadata"]["plugin"] == "every-phase")
        .collect();
    assert_eq!(endpoints.len(), 4);
    for endpoint in endpoints {
        assert_eq!(endpoint["metadata"]["plugin_version"], "1.2.3");
    }

    // A load through the host's loader reports the same.
    let bytes = std::fs::read(guests::EVERY_PHASE).unwrap();
    let loaded = host
        .host
        .loader()
        .load_bytes("every-phase", &bytes, &PluginSettings::default())
        .unwrap();
    assert_eq!(loaded.version.as_deref(), Some("1.2.3"));
    assert_eq!(loaded.phases, Phase::ALL.to_vec());
    assert_eq!(loaded.name, "every-phase");
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn init_refusing_its_config_fails_the_load_with_its_reason() {
    let server = NatsServer::start();
    let refusal =
        "plugin `misbehave` refused its configuration in `init`: `init = \"refuse\"` is set";

    let error = TestHost::try_start(
        &server.url(),
        &[("misbehave", guests::MISBEHAVE)],
        |config| {
            config
                .plugin
                .entry("misbehave".into())
                .or_default()
                .config
                .insert("init".into(), "refuse".into());
        },
    )
    .await
    .err()
    .expect("the load fails");
    assert_eq!(error.root_cause().to_string(), refusal);
    let chain: Vec<String> = error.chain().map(|e| e.to_string()).collect();
    assert_eq!(chain.len(), 2, "{chain:?}");
    assert!(
        chain[0].starts_with("loading ") && chain[0].ends_with("/misbehave.wasm"),
        "{chain:?}"
    );

    // The same component with another value loads and serves.
    let host = TestHost::start(
        &server.url(),
        &[("misbehave", guests::MISBEHAVE)],
        |config| {
            config
                .plugin
                .entry("misbehave".into())
                .or_default()
                .config
                .insert("init".into(), "accept".into());
        },
    )
    .await;
    assert_eq!(
        host.host.subjects().await,
        vec!["nylon.plugin.misbehave.request_filter".to_string()]
    );
    let mut settings = PluginSettings::default();
    settings.config.insert("init".into(), "refuse".into());
    let bytes = std::fs::read(guests::MISBEHAVE).unwrap();
    let error = host
        .host
        .loader()
        .load_bytes("misbehave", &bytes, &settings)
        .expect_err("the load fails");
    assert_eq!(format!("{error:#}"), refusal);
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_header_value_that_is_not_utf8_fails_the_call() {
    let server = NatsServer::start();
    // One worker runs every call, so the second call shows whether the
    // first one's instance was kept.
    let host = TestHost::start(
        &server.url(),
        &[("misbehave", guests::MISBEHAVE)],
        |config| {
            config.runtime.workers = 1;
            config.runtime.inline_call_max_us = 0;
        },
    )
    .await;
    let client = PhaseClient::new(server.connect().await);
    let message = "plugin `misbehave` returned an invalid decision in request_filter: the value it set for header \
                   `x-binary` is not UTF-8, which protocol version 1 cannot carry";

    let raw = client
        .send_raw(
            "misbehave",
            "request_filter",
            protocol::encode_request(&request("request_filter", "bin-1", "GET", "/binary-header")),
        )
        .await
        .unwrap();
    assert_eq!(raw.reply(), PhaseReply::error("bin-1", message));
    assert_eq!(
        raw.header("Nats-Service-Error-Code").as_deref(),
        Some("500")
    );
    assert_eq!(raw.header("Nats-Service-Error").as_deref(), Some(message));

    // The host serves on, on the same instance: the guest answered, it did
    // not fail, so its instance is not thrown away (its second call).
    let reply = client
        .send(
            "misbehave",
            &request("request_filter", "ok-1", "GET", "/ok"),
        )
        .await;
    assert_eq!(reply.action, Action::Next);
    assert_eq!(
        reply.request_headers.map(|h| h.set),
        Some(vec![("x-calls".to_string(), "2".to_string())])
    );

    // One failed call of two, counted as a 500 and logged as an error.
    let status = host.host.status().await;
    let stats = &status[0].endpoints[0].stats;
    assert_eq!((stats.requests, stats.errors), (2, 1));
    let code_500 = natsplug::stats::ERROR_CODES
        .iter()
        .position(|c| *c == 500)
        .unwrap();
    assert_eq!(stats.errors_by_code[code_500], 1);
    assert_eq!(stats.last_error.as_deref(), Some(message));
    let record = record_of(&host, "bin-1", LogLevel::Error).await;
    assert_eq!(record.message, message);
    assert_eq!(record.plugin, "misbehave");
    let errors = host.host_records_with_level(LogLevel::Error).len();
    assert_eq!(errors, 1);
    host.host.shutdown().await.unwrap();
}
