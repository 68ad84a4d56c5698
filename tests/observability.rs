//! What operators see: log records published to NATS (JSON and text,
//! batched, bounded, durable), NATS service discovery, and the HTTP
//! monitoring endpoint.

use std::time::{Duration, Instant};

use futures::StreamExt;
use natsplug::config::LogFormat;
use natsplug_protocol::{Action, HttpResponse, encode_request};
use natsplug_suite::client::request;
use natsplug_suite::http_get;
use natsplug_suite::{NatsServer, PhaseClient, TestHost, guests};
use serde_json::Value;

/// A logging-phase request that makes the access logger emit one record.
fn access(request_id: &str) -> Vec<u8> {
    access_with_status(request_id, 200)
}

/// A `logging` request for an exchange answered with `status` (the access
/// logger logs a 5xx at `warn`, the rest at `info`).
fn access_with_status(request_id: &str, status: u16) -> Vec<u8> {
    let mut logging = request("logging", request_id, "GET", "/items");
    logging.session_id = Some(77);
    logging.request.client_ip = Some("198.51.100.4".into());
    logging.response = Some(HttpResponse {
        status,
        headers: vec![],
        body: None,
    });
    logging.duration_ms = Some(3);
    encode_request(&logging)
}

async fn next_record(subscriber: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(5), subscriber.next())
        .await
        .expect("a log record within 5 s")
        .unwrap()
}

/// The next record on `subscriber` that belongs to a call (plugin logs).
async fn next_call_record(subscriber: &mut async_nats::Subscriber) -> (String, Value) {
    loop {
        let message = next_record(subscriber).await;
        let record: Value = serde_json::from_slice(&message.payload).unwrap();
        if record.get("request_id").is_some() {
            return (message.subject.to_string(), record);
        }
    }
}

#[tokio::test]
async fn plugin_records_reach_nats_as_json_with_every_field() {
    let server = NatsServer::start();
    let watcher = server.connect().await;
    let mut records = watcher.subscribe("logs.>").await.unwrap();
    watcher.flush().await.unwrap();
    let host = TestHost::start(
        &server.url(),
        &[("access-logger", guests::ACCESS_LOGGER)],
        |_| {},
    )
    .await;

    let client = server.connect().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    let reply = client
        .request_with_headers(
            "nylon.plugin.access-logger.logging",
            headers,
            access("log-1").into(),
        )
        .await
        .unwrap();
    assert_eq!(
        natsplug_protocol::decode_reply(&reply.payload)
            .unwrap()
            .action,
        Action::Next
    );

    let (subject, record) = next_call_record(&mut records).await;
    assert_eq!(subject, "logs.access-logger.info");
    let timestamp = record["timestamp"].as_str().unwrap();
    assert_eq!(
        timestamp.len(),
        "2026-11-23T10:00:00.123Z".len(),
        "{timestamp}"
    );
    assert!(
        timestamp.ends_with('Z') && timestamp.as_bytes()[19] == b'.',
        "{timestamp}"
    );
    let mut expected = serde_json::json!({
        "timestamp": timestamp,
        "level": "info",
        "message": "GET /items 200",
        "hostname": natsplug::nats::hostname(),
        "process": format!("natsplug[{}]", std::process::id()),
        "plugin": "access-logger",
        "plugin_version": "1.0.0",
        "request_id": "log-1",
        "session_id": 77,
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "fields": {
            "method": "GET",
            "path": "/items",
            "status": 200,
            "duration_ms": 3,
            "client_ip": "198.51.100.4",
            "user_agent": "",
        },
    });
    assert_eq!(record, expected.take());

    // Host events are records too: the load of the plugin came first.
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_text_format_is_one_line_per_record() {
    let server = NatsServer::start();
    let watcher = server.connect().await;
    let mut records = watcher.subscribe("logs.access-logger.info").await.unwrap();
    watcher.flush().await.unwrap();
    let host = TestHost::start(
        &server.url(),
        &[("access-logger", guests::ACCESS_LOGGER)],
        |config| {
            config.logs.format = LogFormat::Text;
        },
    )
    .await;
    let client = PhaseClient::new(server.connect().await);
    client
        .send_raw("access-logger", "logging", access("text-1"))
        .await
        .unwrap();
    let line = loop {
        let message = next_record(&mut records).await;
        let text = String::from_utf8(message.payload.to_vec()).unwrap();
        if text.contains("request_id=") {
            break text;
        }
    };
    let (timestamp, rest) = line.split_once("] ").unwrap();
    assert!(
        timestamp.starts_with('[') && timestamp.ends_with('Z'),
        "{line}"
    );
    assert_eq!(
        rest,
        "[INFO] GET /items 200 plugin=access-logger request_id=text-1 session_id=77 \
         method=GET path=/items status=200 duration_ms=3 client_ip=198.51.100.4 user_agent=\"\""
    );
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn records_are_sent_when_a_batch_fills_and_on_the_interval() {
    let server = NatsServer::start();
    let watcher = server.connect().await;
    let mut records = watcher.subscribe("logs.access-logger.info").await.unwrap();
    watcher.flush().await.unwrap();
    let host = TestHost::start(
        &server.url(),
        &[("access-logger", guests::ACCESS_LOGGER)],
        |config| {
            config.logs.batch_size = 5;
            config.logs.flush_interval_ms = 60_000;
        },
    )
    .await;
    let client = PhaseClient::new(server.connect().await);
    // Every record as it arrives, with the time it did.
    let arrivals = tokio::spawn(async move {
        let mut arrived = Vec::new();
        for _ in 0..5 {
            let message = next_record(&mut records).await;
            arrived.push((Instant::now(), message.payload));
        }
        (arrived, records)
    });
    // The load event plus three calls: four records, below a batch.
    for index in 0..3 {
        client
            .send_raw("access-logger", "logging", access(&format!("b-{index}")))
            .await
            .unwrap();
    }
    // The fifth record fills the batch: only now do the records go out.
    let filled = Instant::now();
    client
        .send_raw("access-logger", "logging", access("b-3"))
        .await
        .unwrap();
    let (arrived, mut records) = arrivals.await.unwrap();
    let mut ids = Vec::new();
    for (at, payload) in &arrived {
        let record: Value = serde_json::from_slice(payload).unwrap();
        let id = record
            .get("request_id")
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_string();
        assert!(
            *at > filled,
            "a partial batch waits for the interval, but {id} arrived before the batch filled"
        );
        ids.push(id);
    }
    // Two workers emit the records of sequential calls, so their order
    // within the batch may vary.
    ids.sort();
    assert_eq!(ids, ["-", "b-0", "b-1", "b-2", "b-3"]);
    host.host.shutdown().await.unwrap();

    // With a short interval, a single record goes out on its own.
    let host = TestHost::start(
        &server.url(),
        &[("access-logger", guests::ACCESS_LOGGER)],
        |config| {
            config.logs.batch_size = 1000;
            config.logs.flush_interval_ms = 50;
        },
    )
    .await;
    let (_, record) = next_call_record_after(&client, &mut records, "i-1").await;
    assert_eq!(record["request_id"], "i-1");
    host.host.shutdown().await.unwrap();
}

async fn next_call_record_after(
    client: &PhaseClient,
    records: &mut async_nats::Subscriber,
    request_id: &str,
) -> (String, Value) {
    client
        .send_raw("access-logger", "logging", access(request_id))
        .await
        .unwrap();
    next_call_record(records).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_beyond_the_buffer_is_dropped_and_counted_without_slowing_requests() {
    let server = NatsServer::start();
    let host = TestHost::start(
        &server.url(),
        &[
            ("misbehave", guests::MISBEHAVE),
            ("header-injector", guests::HEADER_INJECTOR),
        ],
        |config| {
            config.logs.buffer = 10;
            config.logs.batch_size = 10_000;
            config.logs.flush_interval_ms = 60_000;
            config.logs.rate_limit_per_sec = 0;
        },
    )
    .await;
    let client = PhaseClient::new(server.connect().await);
    for _ in 0..3 {
        let payload = encode_request(&request("request_filter", "flood", "GET", "/flood"));
        let raw = client
            .send_raw("misbehave", "request_filter", payload)
            .await
            .unwrap();
        assert_eq!(raw.reply().action, Action::Next);
    }
    // Requests stay fast while the log buffer overflows.
    let started = Instant::now();
    for index in 0..20 {
        let reply = client
            .send(
                "header-injector",
                &request("request_filter", &index.to_string(), "GET", "/"),
            )
            .await;
        assert_eq!(reply.action, Action::Next);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "20 requests took {:?}",
        started.elapsed()
    );
    let stats = host.host.stats();
    let dropped = stats
        .log_records_dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    // 3 × 1000 kept per call + 2 load events, minus the 10 the buffer holds.
    assert_eq!(dropped, 3000 + 2 - 10);
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn level_thresholds_and_rate_limits_apply_per_plugin() {
    let server = NatsServer::start();
    let watcher = server.connect().await;
    let mut records = watcher.subscribe("logs.>").await.unwrap();
    watcher.flush().await.unwrap();
    let host = TestHost::start(
        &server.url(),
        &[
            ("misbehave", guests::MISBEHAVE),
            ("access-logger", guests::ACCESS_LOGGER),
        ],
        |config| {
            // One worker runs every call and emits its records after the
            // reply, so records leave in the order of the calls.
            config.runtime.workers = 1;
            config.runtime.inline_call_max_us = 0;
            config
                .plugin
                .entry("misbehave".into())
                .or_default()
                .log_rate_limit_per_sec = Some(10);
            config
                .plugin
                .entry("access-logger".into())
                .or_default()
                .log_level = Some(natsplug::logs::LogLevel::Warn);
        },
    )
    .await;
    let client = PhaseClient::new(server.connect().await);
    let payload = encode_request(&request("request_filter", "flood", "GET", "/flood"));
    client
        .send_raw("misbehave", "request_filter", payload)
        .await
        .unwrap();
    client
        .send_raw("access-logger", "logging", access("quiet"))
        .await
        .unwrap();
    // A warn record after the info one: records leave in the order they
    // were made (one worker), so once it is here the info record would
    // have been too.
    client
        .send_raw(
            "access-logger",
            "logging",
            access_with_status("marker", 503),
        )
        .await
        .unwrap();
    let mut flood = 0;
    loop {
        let message = next_record(&mut records).await;
        let record: Value = serde_json::from_slice(&message.payload).unwrap();
        assert_ne!(
            record["request_id"], "quiet",
            "info records of access-logger are below its warn threshold"
        );
        match record["request_id"].as_str() {
            Some("flood") => flood += 1,
            Some("marker") => break,
            _ => {}
        }
    }
    // The bucket holds 10 tokens and refills 10 a second; the load event
    // of misbehave took one, and the flood's 1000 records come within one
    // call: 9 pass, or 10 when a token came back between the two. Every
    // other record is counted as limited, none is lost unsaid.
    assert!((9..=10).contains(&flood), "{flood} flood records passed");
    let limited = host
        .host
        .stats()
        .log_records_rate_limited
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(limited + flood, 1000);
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn durable_mode_keeps_every_record_in_jetstream_while_no_consumer_runs() {
    let server = NatsServer::start_with_args(&["-js"]);
    let host = TestHost::start(
        &server.url(),
        &[("access-logger", guests::ACCESS_LOGGER)],
        |config| {
            config.logs.durable = true;
            config.logs.create_stream = true;
            config.logs.batch_size = 10;
        },
    )
    .await;
    let client = PhaseClient::new(server.connect().await);
    for index in 0..50 {
        client
            .send_raw("access-logger", "logging", access(&format!("d-{index}")))
            .await
            .unwrap();
    }
    // Shutting down flushes the buffer and waits for the acks.
    host.host.shutdown().await.unwrap();
    assert_eq!(
        host.host
            .stats()
            .log_records_dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    // A consumer that starts only now reads every record.
    let jetstream = async_nats::jetstream::new(server.connect().await);
    let mut stream = jetstream.get_stream("NATSPLUG_LOGS").await.unwrap();
    let info = stream.info().await.unwrap();
    // 50 calls plus the load event and the removal event at shutdown.
    assert_eq!(info.state.messages, 50 + 1);
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut messages = consumer.fetch().max_messages(100).messages().await.unwrap();
    let mut ids = Vec::new();
    while let Some(Ok(message)) = messages.next().await {
        let record: Value = serde_json::from_slice(&message.payload).unwrap();
        if let Some(id) = record["request_id"].as_str() {
            ids.push(id.to_string());
        }
    }
    // Two workers emit concurrently, so arrival order may differ; nothing
    // is missing and nothing is doubled.
    ids.sort_by_key(|id| id[2..].parse::<u32>().unwrap());
    assert_eq!(ids, (0..50).map(|i| format!("d-{i}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn service_discovery_answers_ping_info_and_stats() {
    let server = NatsServer::start();
    let host = TestHost::start(
        &server.url(),
        &[("header-injector", guests::HEADER_INJECTOR)],
        |_| {},
    )
    .await;
    natsplug::discovery::serve(host.host.clone()).await.unwrap();
    let client = PhaseClient::new(server.connect().await);
    for index in 0..3 {
        client
            .send(
                "header-injector",
                &request("request_filter", &index.to_string(), "GET", "/"),
            )
            .await;
    }
    client
        .send_raw("header-injector", "request_filter", b"junk".to_vec())
        .await
        .unwrap();

    let ask = |subject: &'static str| {
        let client = client.client.clone();
        async move {
            let reply = client.request(subject, "".into()).await.unwrap();
            serde_json::from_slice::<Value>(&reply.payload).unwrap()
        }
    };
    let hash = natsplug::plugin::content_hash(&std::fs::read(guests::HEADER_INJECTOR).unwrap());

    let ping = ask("$SRV.PING").await;
    assert_eq!(ping["type"], "io.nats.micro.v1.ping_response");
    assert_eq!(ping["name"], "natsplug");
    assert_eq!(ping["id"], host.host.id());
    assert_eq!(ping["version"], env!("CARGO_PKG_VERSION"));

    let info = ask("$SRV.INFO.natsplug").await;
    assert_eq!(info["type"], "io.nats.micro.v1.info_response");
    assert_eq!(
        info["metadata"]["plugin.header-injector.hash"],
        hash.as_str()
    );
    assert_eq!(info["metadata"]["plugin.header-injector.version"], "1.0.0");
    assert_eq!(info["metadata"]["hostname"], natsplug::nats::hostname());
    assert_eq!(
        info["endpoints"],
        serde_json::json!([{
            "name": "header-injector-request_filter",
            "subject": "nylon.plugin.header-injector.request_filter",
            "queue_group": "natsplug",
            "metadata": {
                "plugin": "header-injector",
                "phase": "request_filter",
                "plugin_version": "1.0.0",
                "content_hash": hash,
            },
        }])
    );

    let stats = ask("$SRV.STATS").await;
    assert_eq!(stats["type"], "io.nats.micro.v1.stats_response");
    let endpoint = &stats["endpoints"][0];
    assert_eq!(endpoint["name"], "header-injector-request_filter");
    assert_eq!(endpoint["num_requests"], 4);
    assert_eq!(endpoint["num_errors"], 1);
    assert!(
        endpoint["last_error"]
            .as_str()
            .unwrap()
            .starts_with("malformed phase request")
    );
    assert!(endpoint["processing_time"].as_u64().unwrap() > 0);
    assert!(stats["started"].as_str().unwrap().ends_with('Z'));
    host.host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitoring_endpoint_serves_health_readiness_and_metrics() {
    let server = NatsServer::start();
    let host = TestHost::start(
        &server.url(),
        &[("header-injector", guests::HEADER_INJECTOR)],
        |_| {},
    )
    .await;
    let address = natsplug::monitor::serve(host.host.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let client = PhaseClient::new(server.connect().await);
    for index in 0..4 {
        client
            .send(
                "header-injector",
                &request("request_filter", &index.to_string(), "GET", "/"),
            )
            .await;
    }
    client
        .send_raw("header-injector", "request_filter", b"junk".to_vec())
        .await
        .unwrap();

    let get =
        move |path: &'static str| tokio::task::spawn_blocking(move || http_get(address, path));
    assert_eq!(get("/healthz").await.unwrap(), (200, "ok\n".to_string()));
    assert_eq!(get("/readyz").await.unwrap(), (200, "ready\n".to_string()));
    let (status, metrics) = get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    let hash = natsplug::plugin::content_hash(&std::fs::read(guests::HEADER_INJECTOR).unwrap());
    for line in [
        "natsplug_requests_total{plugin=\"header-injector\",phase=\"request_filter\"} 5".to_string(),
        "natsplug_errors_total{plugin=\"header-injector\",phase=\"request_filter\",code=\"400\"} 1".to_string(),
        "natsplug_errors_total{plugin=\"header-injector\",phase=\"request_filter\",code=\"500\"} 0".to_string(),
        "natsplug_request_duration_seconds_count{plugin=\"header-injector\",phase=\"request_filter\"} 5".to_string(),
        format!("natsplug_plugin_info{{plugin=\"header-injector\",version=\"1.0.0\",content_hash=\"{hash}\",origin=\"directory\"}} 1"),
        "natsplug_plugin_reloads_total{plugin=\"header-injector\"} 0".to_string(),
        "natsplug_in_flight 0".to_string(),
        "natsplug_nats_connected 1".to_string(),
        "natsplug_pool_instances 1000".to_string(),
        "natsplug_log_records_dropped_total{reason=\"buffer_full\"} 0".to_string(),
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing `{line}` in:\n{metrics}");
    }
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("natsplug_warm_instances ")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("natsplug_log_records_sent_total ")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("natsplug_nats_reconnects_total 0")),
        "{metrics}"
    );

    // A plugin file that fails to load makes the host not ready.
    natsplug_suite::host::deploy_bytes(host.plugins_dir(), "broken", b"not wasm");
    assert!(
        host.host
            .sync_file(&host.plugins_dir().join("broken.wasm"))
            .await
            .is_err()
    );
    let (status, body) = get("/readyz").await.unwrap();
    assert_eq!(status, 503);
    let hash = natsplug::plugin::content_hash(b"not wasm");
    assert!(
        body.starts_with(&format!(
            "not ready: plugin `broken` (version {} from the directory) failed to load: `broken` is not a valid WebAssembly component",
            &hash[..12]
        )),
        "{body}"
    );
    std::fs::remove_file(host.plugins_dir().join("broken.wasm")).unwrap();
    host.host
        .sync_file(&host.plugins_dir().join("broken.wasm"))
        .await
        .unwrap();
    assert_eq!(get("/readyz").await.unwrap().0, 200);
    assert_eq!(get("/nope").await.unwrap().0, 404);
    host.host.shutdown().await.unwrap();
}
