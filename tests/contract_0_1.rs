//! Contract 0.1.0 keeps working unchanged: components built against
//! `natsplug:plugin@0.1.0` (the four examples as they were built before
//! 0.2.0 existed, kept in `tests/fixtures/contract-0.1.0/`) are served by
//! this host with every reply identical, byte for byte, to the replies
//! recorded when 0.1.0 was the only contract (`replies.txt` there), with
//! the same subjects, `$SRV.INFO` metadata and log records.
//!
//! `NATSPLUG_BLESS=1 cargo test -p natsplug-suite --test contract_0_1`
//! rewrites `replies.txt`; do that only when the wire protocol itself
//! changes on purpose.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use natsplug_protocol::{self as protocol, BodyChunk, HttpResponse, PhaseRequest};
use natsplug_suite::client::request;
use natsplug_suite::{NatsServer, PhaseClient, TestHost};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/contract-0.1.0")
        .join(name)
}

fn component(plugin: &str) -> String {
    fixture(&format!("{plugin}.wasm")).display().to_string()
}

/// Every recorded case: a name, the plugin, and its request.
fn cases() -> Vec<(&'static str, &'static str, PhaseRequest)> {
    let mut cases = Vec::new();
    let mut plain = request("request_filter", "h-1", "GET", "/");
    plain.request.headers = vec![("accept".into(), "*/*".into())];
    cases.push(("header-injector request_filter", "header-injector", plain));

    cases.push((
        "authz without a token",
        "authz",
        request("request_filter", "a-1", "GET", "/admin"),
    ));
    let mut wrong = request("request_filter", "a-2", "GET", "/admin");
    wrong.request.headers = vec![("Authorization".into(), "Bearer nope".into())];
    cases.push(("authz with a wrong token", "authz", wrong));
    let mut right = request("request_filter", "a-3", "POST", "/admin");
    right.session_id = Some(7);
    right.request.query = Some("a=1&b=2".into());
    right.request.host = Some("example.test".into());
    right.request.client_ip = Some("192.0.2.1".into());
    right.request.body = Some(b"{}".to_vec());
    right.request.headers = vec![
        ("accept".into(), "*/*".into()),
        ("authorization".into(), "Bearer s3cret".into()),
        ("x-dup".into(), "1".into()),
        ("x-dup".into(), "2".into()),
    ];
    cases.push(("authz with the right token", "authz", right));
    cases.push((
        "authz on a public path",
        "authz",
        request("request_filter", "a-4", "GET", "/health"),
    ));

    let pieces: [(&[u8], Option<&[u8]>); 3] = [
        (b"the sec", None),
        (b"ret is sec", Some(b"e sec")),
        (b"ret", Some(b"s sec")),
    ];
    for (index, (data, state)) in pieces.iter().enumerate() {
        let mut chunk = request("response_body_filter", &format!("b-{index}"), "GET", "/doc");
        chunk.session_id = Some(42);
        chunk.response = Some(HttpResponse {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: None,
        });
        chunk.chunk = Some(BodyChunk {
            data: data.to_vec(),
            end_of_stream: index == pieces.len() - 1,
            state: state.map(<[u8]>::to_vec),
        });
        let name = [
            "body-redactor chunk 0",
            "body-redactor chunk 1",
            "body-redactor chunk 2",
        ];
        cases.push((name[index], "body-redactor", chunk));
    }

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
    cases.push(("access-logger logging", "access-logger", logging));
    cases
}

/// `replies.txt`: one `name<TAB>hex of the reply` line per case.
fn recorded() -> BTreeMap<String, String> {
    std::fs::read_to_string(fixture("replies.txt"))
        .expect("tests/fixtures/contract-0.1.0/replies.txt")
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (name, hex) = line.split_once('\t').expect("name<TAB>hex");
            (name.to_string(), hex.to_string())
        })
        .collect()
}

async fn host(server: &NatsServer) -> TestHost {
    let plugins =
        ["header-injector", "authz", "body-redactor", "access-logger"].map(|p| (p, component(p)));
    let plugins: Vec<(&str, &str)> = plugins.iter().map(|(p, c)| (*p, c.as_str())).collect();
    TestHost::start(&server.url(), &plugins, |config| {
        let settings = config.plugin.entry("authz".into()).or_default();
        settings.config.insert("token".into(), "s3cret".into());
        settings
            .config
            .insert("public_paths".into(), "/health,/login".into());
    })
    .await
}

#[tokio::test]
async fn a_0_1_0_component_is_served_byte_for_byte_as_before() {
    let server = NatsServer::start();
    let host = host(&server).await;
    let client = PhaseClient::new(server.connect().await);

    let mut replies = BTreeMap::new();
    for (name, plugin, request) in cases() {
        let reply = client
            .send_raw(plugin, &request.phase, protocol::encode_request(&request))
            .await
            .unwrap_or_else(|error| panic!("{name}: {error}"));
        assert_eq!(reply.headers, None, "{name}: a reply without NATS headers");
        replies.insert(name.to_string(), hex::encode(&reply.payload));
    }
    if std::env::var_os("NATSPLUG_BLESS").is_some() {
        let text: String = replies
            .iter()
            .map(|(name, hex)| format!("{name}\t{hex}\n"))
            .collect();
        std::fs::write(fixture("replies.txt"), text).unwrap();
    }
    let recorded = recorded();
    assert_eq!(replies.len(), recorded.len(), "every recorded case is sent");
    let differing: Vec<&String> = replies
        .iter()
        .filter(|(name, hex)| recorded.get(*name) != Some(hex))
        .map(|(name, _)| name)
        .collect();
    assert!(
        differing.is_empty(),
        "{} of {} replies differ from the recorded ones: {differing:?}",
        differing.len(),
        replies.len()
    );

    // Each plugin is served on exactly the phases its `describe` lists.
    assert_eq!(
        host.host.subjects().await,
        [
            "nylon.plugin.access-logger.logging",
            "nylon.plugin.authz.request_filter",
            "nylon.plugin.body-redactor.response_body_filter",
            "nylon.plugin.header-injector.request_filter",
        ]
        .map(String::from)
    );
    // Its record carries the version `describe` gave; it is emitted right
    // after the reply.
    let started = std::time::Instant::now();
    let record = loop {
        let records = host.records.records();
        if let Some(record) = records
            .into_iter()
            .find(|r| r.request_id.as_deref() == Some("l-1"))
        {
            break record;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "no record for l-1 within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(record.message, "POST /orders 201");
    assert_eq!(record.plugin_version.as_deref(), Some("1.0.0"));
    assert_eq!(record.session_id, Some(9));
    host.host.shutdown().await.unwrap();
}
