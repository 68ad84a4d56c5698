//! Every example plugin end to end: a real nats-server, a host loading the
//! built components from a plugins directory, and requests over NATS with
//! exact assertions on the reply.

use natsplug_protocol::{Action, BodyChunk, HeaderMutations, HttpResponse};
use natsplug_suite::client::request;
use natsplug_suite::{NatsServer, PhaseClient, TestHost, guests};

#[tokio::test]
async fn header_injector_adds_its_headers() {
    let server = NatsServer::start();
    let host = TestHost::start(
        &server.url(),
        &[("header-injector", guests::HEADER_INJECTOR)],
        |_| {},
    )
    .await;
    let client = PhaseClient::new(server.connect().await);

    let reply = client
        .send(
            "header-injector",
            &request("request_filter", "req-1", "GET", "/"),
        )
        .await;
    assert_eq!(reply.version, 1);
    assert_eq!(reply.request_id, "req-1");
    assert_eq!(reply.action, Action::Next);
    assert_eq!(
        reply.request_headers,
        Some(HeaderMutations {
            set: vec![
                ("x-plugin".into(), "header-injector".into()),
                ("x-request-id".into(), "req-1".into()),
            ],
            remove: vec![],
        })
    );
    assert_eq!(reply.response_headers, None);
    assert_eq!(reply.status, None);
    assert_eq!(reply.body, None);
    assert_eq!(reply.error, None);

    // It implements only request_filter, so only that subject is served.
    assert_eq!(
        host.host.subjects().await,
        vec!["nylon.plugin.header-injector.request_filter".to_string()]
    );
    let error = client
        .send_raw("header-injector", "response_filter", vec![])
        .await
        .unwrap_err();
    assert_eq!(error.kind(), async_nats::RequestErrorKind::NoResponders);
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn header_injector_reads_its_config() {
    let server = NatsServer::start();
    let host = TestHost::start(
        &server.url(),
        &[("header-injector", guests::HEADER_INJECTOR)],
        |config| {
            config
                .plugin
                .entry("header-injector".into())
                .or_default()
                .config
                .insert("header".into(), "x-trace".into());
        },
    )
    .await;
    let client = PhaseClient::new(server.connect().await);
    let reply = client
        .send(
            "header-injector",
            &request("request_filter", "abc", "GET", "/"),
        )
        .await;
    assert_eq!(
        reply.request_headers.unwrap().set,
        vec![
            ("x-plugin".to_string(), "header-injector".to_string()),
            ("x-trace".to_string(), "abc".to_string()),
        ]
    );
    host.host.shutdown().await.unwrap();
}

async fn authz_host(server: &NatsServer) -> TestHost {
    TestHost::start(&server.url(), &[("authz", guests::AUTHZ)], |config| {
        let settings = config.plugin.entry("authz".into()).or_default();
        settings.config.insert("token".into(), "s3cret".into());
        settings
            .config
            .insert("public_paths".into(), "/health,/login".into());
    })
    .await
}

#[tokio::test]
async fn authz_answers_401_without_a_token() {
    let server = NatsServer::start();
    let host = authz_host(&server).await;
    let client = PhaseClient::new(server.connect().await);

    let reply = client
        .send("authz", &request("request_filter", "a-1", "GET", "/admin"))
        .await;
    assert_eq!(reply.action, Action::End);
    assert_eq!(reply.status, Some(401));
    assert_eq!(
        reply.body.as_deref(),
        Some(&br#"{"error":"unauthorized","message":"a bearer token is required"}"#[..])
    );
    assert_eq!(
        reply.response_headers.unwrap().set,
        vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("www-authenticate".to_string(), "Bearer".to_string()),
        ]
    );
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn authz_answers_403_for_a_wrong_token_and_passes_the_right_one() {
    let server = NatsServer::start();
    let host = authz_host(&server).await;
    let client = PhaseClient::new(server.connect().await);

    let mut wrong = request("request_filter", "a-2", "GET", "/admin");
    wrong.request.headers = vec![("Authorization".into(), "Bearer nope".into())];
    let reply = client.send("authz", &wrong).await;
    assert_eq!(reply.action, Action::End);
    assert_eq!(reply.status, Some(403));
    assert_eq!(
        reply.body.as_deref(),
        Some(&br#"{"error":"forbidden","message":"the bearer token is not valid"}"#[..])
    );

    let mut right = request("request_filter", "a-3", "GET", "/admin");
    right.request.headers = vec![
        ("accept".into(), "*/*".into()),
        ("authorization".into(), "Bearer s3cret".into()),
    ];
    let reply = client.send("authz", &right).await;
    assert_eq!(reply.action, Action::Next);
    assert_eq!(reply.status, None);
    assert_eq!(reply.body, None);
    assert_eq!(
        reply.request_headers,
        Some(HeaderMutations {
            set: vec![],
            remove: vec!["authorization".into()],
        })
    );

    let public = client
        .send("authz", &request("request_filter", "a-4", "GET", "/health"))
        .await;
    assert_eq!(public.action, Action::Next);
    assert_eq!(public.request_headers, None);
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn body_redactor_masks_matches_even_across_chunks() {
    let server = NatsServer::start();
    let host = TestHost::start(
        &server.url(),
        &[("body-redactor", guests::BODY_REDACTOR)],
        |_| {},
    )
    .await;
    let client = PhaseClient::new(server.connect().await);

    // "the secret is secret" arrives as "the sec" + "ret is sec" + "ret".
    let pieces: [&[u8]; 3] = [b"the sec", b"ret is sec", b"ret"];
    let mut state = None;
    let mut output = Vec::new();
    for (index, piece) in pieces.iter().enumerate() {
        let mut chunk = request("response_body_filter", &format!("b-{index}"), "GET", "/doc");
        chunk.session_id = Some(42);
        chunk.response = Some(HttpResponse {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: None,
        });
        chunk.chunk = Some(BodyChunk {
            data: piece.to_vec(),
            end_of_stream: index == pieces.len() - 1,
            state: state.take(),
        });
        let reply = client.send("body-redactor", &chunk).await;
        assert_eq!(reply.action, Action::Next);
        assert_eq!(reply.request_id, format!("b-{index}"));
        output.extend(reply.body.expect("the rewritten chunk"));
        state = reply.state;
        if index == pieces.len() - 1 {
            assert_eq!(state, None, "the last chunk flushes everything");
        } else {
            assert_eq!(
                state.as_ref().map(Vec::len),
                Some(5),
                "holds back len(pattern)-1 bytes"
            );
        }
    }
    assert_eq!(String::from_utf8(output).unwrap(), "the ****** is ******");
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn access_logger_emits_a_structured_record_and_continues() {
    use natsplug::logs::{LogLevel, LogValue};

    let server = NatsServer::start();
    let host = TestHost::start(
        &server.url(),
        &[("access-logger", guests::ACCESS_LOGGER)],
        |_| {},
    )
    .await;
    let client = PhaseClient::new(server.connect().await);

    let mut logging = request("logging", "l-1", "POST", "/orders");
    logging.session_id = Some(9);
    logging.request.client_ip = Some("192.0.2.7".into());
    logging.request.headers = vec![("user-agent".into(), "curl/8".into())];
    logging.response = Some(HttpResponse {
        status: 201,
        headers: vec![],
        body: None,
    });
    logging.duration_ms = Some(12);
    let reply = client.send("access-logger", &logging).await;
    assert_eq!(reply.action, Action::Next);
    assert_eq!(reply.request_id, "l-1");
    assert_eq!(reply.request_headers, None);

    // The record is emitted right after the reply is sent.
    let record = wait_for(|| {
        host.records
            .records()
            .into_iter()
            .find(|r| r.request_id.as_deref() == Some("l-1"))
    })
    .await;
    assert_eq!(record.level, LogLevel::Info);
    assert_eq!(record.message, "POST /orders 201");
    assert_eq!(record.plugin, "access-logger");
    assert_eq!(record.plugin_version.as_deref(), Some("1.0.0"));
    assert_eq!(record.request_id.as_deref(), Some("l-1"));
    assert_eq!(record.session_id, Some(9));
    assert_eq!(
        record.fields,
        vec![
            ("method".to_string(), LogValue::Text("POST".into())),
            ("path".to_string(), LogValue::Text("/orders".into())),
            ("status".to_string(), LogValue::Integer(201)),
            ("duration_ms".to_string(), LogValue::Integer(12)),
            ("client_ip".to_string(), LogValue::Text("192.0.2.7".into())),
            ("user_agent".to_string(), LogValue::Text("curl/8".into())),
        ]
    );
    host.host.shutdown().await.unwrap();
}

async fn wait_for<T>(mut probe: impl FnMut() -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(value) = probe() {
            return value;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("condition not met within 2 s");
}
