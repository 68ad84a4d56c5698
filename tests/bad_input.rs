//! Bad input on the wire never crashes or wedges the host: each case gets an
//! `"error"` reply with the NATS service error headers, and the next request
//! is served normally.

use natsplug_protocol::{Action, PhaseReply};
use natsplug_suite::client::{RawReply, request};
use natsplug_suite::{NatsServer, PhaseClient, TestHost, guests};
use serde::Serialize;

const PLUGIN: &str = "header-injector";

async fn setup(server: &NatsServer) -> (TestHost, PhaseClient) {
    let host = TestHost::start(
        &server.url(),
        &[(PLUGIN, guests::HEADER_INJECTOR)],
        |config| {
            config.runtime.max_request_bytes = 4096;
        },
    )
    .await;
    (host, PhaseClient::new(server.connect().await))
}

/// Assert an error reply with `code` whose message starts with `message`.
fn assert_error(raw: &RawReply, code: u16, request_id: &str, message: &str) {
    let reply: PhaseReply = raw.reply();
    assert_eq!(reply.action, Action::Error);
    assert_eq!(reply.request_id, request_id);
    let error = reply.error.expect("an error message");
    assert!(
        error.starts_with(message),
        "error `{error}` should start with `{message}`"
    );
    assert_eq!(
        raw.header("Nats-Service-Error-Code").as_deref(),
        Some(code.to_string().as_str())
    );
    assert_eq!(
        raw.header("Nats-Service-Error").as_deref(),
        Some(error.as_str())
    );
}

/// The host still answers a good request.
async fn assert_still_serving(client: &PhaseClient) {
    let reply = client
        .send(PLUGIN, &request("request_filter", "after", "GET", "/"))
        .await;
    assert_eq!(reply.action, Action::Next);
    assert_eq!(reply.request_id, "after");
}

#[tokio::test]
async fn malformed_msgpack_gets_a_400() {
    let server = NatsServer::start();
    let (host, client) = setup(&server).await;
    for garbage in [
        &b"\xc1\xc1\xc1"[..],
        b"",
        b"not msgpack at all",
        b"\x93\x01\x02\x03",
    ] {
        let raw = client
            .send_raw(PLUGIN, "request_filter", garbage.to_vec())
            .await
            .unwrap();
        assert_error(&raw, 400, "", "malformed phase request:");
        assert_still_serving(&client).await;
    }
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_message_nested_too_deeply_gets_a_400() {
    let server = NatsServer::start();
    let (host, client) = setup(&server).await;
    // A good request with one more field whose value is 3000 arrays deep.
    let mut deep = natsplug_protocol::encode_request(&request("request_filter", "d", "GET", "/"));
    deep[0] += 1;
    deep.extend(b"\xa4deep");
    deep.extend([0x91; 3000]);
    deep.push(0xc0);
    let raw = client
        .send_raw(PLUGIN, "request_filter", deep)
        .await
        .unwrap();
    assert_error(
        &raw,
        400,
        "",
        "malformed phase request: depth limit exceeded",
    );
    assert_still_serving(&client).await;
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_future_version_gets_a_400_naming_both_versions() {
    let server = NatsServer::start();
    let (host, client) = setup(&server).await;
    let mut future = request("request_filter", "v-2", "GET", "/");
    future.version = 2;
    let raw = client
        .send_raw(
            PLUGIN,
            "request_filter",
            natsplug_protocol::encode_request(&future),
        )
        .await
        .unwrap();
    assert_error(
        &raw,
        400,
        "v-2",
        "unsupported protocol version 2: this host speaks version 1",
    );

    // A future version whose shape changed entirely is still recognised.
    #[derive(Serialize)]
    struct V3<'a> {
        version: u16,
        request_id: &'a str,
        envelope: Vec<u8>,
    }
    let bytes = rmp_serde::to_vec_named(&V3 {
        version: 3,
        request_id: "v-3",
        envelope: vec![1],
    })
    .unwrap();
    let raw = client
        .send_raw(PLUGIN, "request_filter", bytes)
        .await
        .unwrap();
    assert_error(&raw, 400, "v-3", "unsupported protocol version 3");
    assert_still_serving(&client).await;
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_missing_field_gets_a_400_naming_it() {
    let server = NatsServer::start();
    let (host, client) = setup(&server).await;
    #[derive(Serialize)]
    struct NoRequest<'a> {
        version: u16,
        request_id: &'a str,
        phase: &'a str,
    }
    let bytes = rmp_serde::to_vec_named(&NoRequest {
        version: 1,
        request_id: "m-1",
        phase: "request_filter",
    })
    .unwrap();
    let raw = client
        .send_raw(PLUGIN, "request_filter", bytes)
        .await
        .unwrap();
    assert_error(
        &raw,
        400,
        "m-1",
        "malformed phase request: missing field `request`",
    );
    assert_still_serving(&client).await;
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_request_written_as_an_array_gets_a_400() {
    let server = NatsServer::start();
    let (host, client) = setup(&server).await;
    let good = request("request_filter", "a-1", "GET", "/");
    // rmp-serde's `to_vec` writes each struct as an array of its values.
    let positional = rmp_serde::to_vec(&good).unwrap();
    #[derive(Serialize)]
    struct RequestAsArray<'a> {
        version: u16,
        request_id: &'a str,
        phase: &'a str,
        request: (&'a str, &'a str),
    }
    let nested = rmp_serde::to_vec_named(&RequestAsArray {
        version: 1,
        request_id: "a-2",
        phase: "request_filter",
        request: ("GET", "/"),
    })
    .unwrap();
    for (payload, request_id) in [(positional, ""), (nested, "a-2")] {
        let raw = client
            .send_raw(PLUGIN, "request_filter", payload)
            .await
            .unwrap();
        assert_error(
            &raw,
            400,
            request_id,
            "malformed phase request: a request (or its `request`, `response` or `chunk`) \
             written as an array; the protocol writes each as a map of named fields",
        );
        assert_still_serving(&client).await;
    }
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unknown_or_mismatched_phase_gets_a_400() {
    let server = NatsServer::start();
    let (host, client) = setup(&server).await;
    let unknown = request("teleport", "p-1", "GET", "/");
    let raw = client
        .send_raw(
            PLUGIN,
            "request_filter",
            natsplug_protocol::encode_request(&unknown),
        )
        .await
        .unwrap();
    assert_error(
        &raw,
        400,
        "p-1",
        "unknown phase `teleport`: expected one of request_filter, response_filter, response_body_filter, logging",
    );

    let mismatched = request("logging", "p-2", "GET", "/");
    let raw = client
        .send_raw(
            PLUGIN,
            "request_filter",
            natsplug_protocol::encode_request(&mismatched),
        )
        .await
        .unwrap();
    assert_error(
        &raw,
        400,
        "p-2",
        "the request's phase `logging` does not match the subject's phase `request_filter`",
    );
    assert_still_serving(&client).await;
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unknown_plugin_or_phase_subject_gets_no_responders() {
    let server = NatsServer::start();
    let (host, client) = setup(&server).await;
    let bytes = natsplug_protocol::encode_request(&request("request_filter", "u-1", "GET", "/"));
    let error = client
        .send_raw("no-such-plugin", "request_filter", bytes.clone())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), async_nats::RequestErrorKind::NoResponders);
    let error = client.send_raw(PLUGIN, "logging", bytes).await.unwrap_err();
    assert_eq!(error.kind(), async_nats::RequestErrorKind::NoResponders);
    assert_still_serving(&client).await;
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_oversized_payload_gets_a_413() {
    let server = NatsServer::start();
    let (host, client) = setup(&server).await;
    let mut big = request("request_filter", "big", "POST", "/upload");
    big.request.body = Some(vec![b'x'; 8192]);
    let bytes = natsplug_protocol::encode_request(&big);
    let expected = format!(
        "request of {} bytes is above the 4096 bytes this host accepts (runtime.max_request_bytes)",
        bytes.len()
    );
    let raw = client
        .send_raw(PLUGIN, "request_filter", bytes)
        .await
        .unwrap();
    assert_error(&raw, 413, "big", &expected);
    assert_still_serving(&client).await;
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_message_without_reply_subject_is_counted_and_dropped() {
    let server = NatsServer::start();
    let (host, client) = setup(&server).await;
    let bytes = natsplug_protocol::encode_request(&request("request_filter", "n-1", "GET", "/"));
    for _ in 0..3 {
        client
            .client
            .publish(
                "nylon.plugin.header-injector.request_filter",
                bytes.clone().into(),
            )
            .await
            .unwrap();
    }
    client.client.flush().await.unwrap();
    // A request after them is answered, so they have been read by then.
    assert_still_serving(&client).await;
    assert_eq!(
        host.host
            .stats()
            .no_reply_dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    let status = host.host.status().await;
    assert_eq!(
        status[0].endpoints[0].stats.requests, 1,
        "only the answered request counts"
    );
    host.host.shutdown().await.unwrap();
}
