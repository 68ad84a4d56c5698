//! What a running host does when NATS refuses it something: a plugin added
//! while serving (a file dropped into the plugins directory, or a push to
//! the bucket) whose phase subject the host's user may not subscribe to;
//! log records the user may not publish; and durable log records while
//! JetStream is down.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use natsplug_protocol::Action;
use natsplug_suite::client::request;
use natsplug_suite::fleet::{assert_success, bucket_holding, natsplug};
use natsplug_suite::host::deploy_bytes;
use natsplug_suite::nats_server::{DEPLOY_LOGIN, HOST_LOGIN, free_port, plugin_subjects_denied};
use natsplug_suite::up::host_infos;
use natsplug_suite::{NatsServer, PhaseClient, UpProcess, guests, http_get};

/// The subject the server refuses to the host.
const REFUSED_SUBJECT: &str = "nylon.plugin.authz.request_filter";

/// Poll `check` every 20 ms until it returns `Some`, for at most `bound`.
async fn until<T>(bound: Duration, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Requests sent back to back to one plugin until stopped: how many were
/// answered with `next`, and what went wrong with the others.
struct Load {
    running: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Load {
    fn start(client: PhaseClient, plugin: &'static str) -> Load {
        let running = Arc::new(AtomicBool::new(true));
        let answered = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (running, answered) = (running.clone(), answered.clone());
            async move {
                let mut failures = Vec::new();
                let mut index = 0;
                let mut worst = Duration::ZERO;
                while running.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let id = format!("load-{index}");
                    index += 1;
                    let payload = natsplug_protocol::encode_request(&request(
                        "request_filter",
                        &id,
                        "GET",
                        "/",
                    ));
                    let subject = format!("nylon.plugin.{plugin}.request_filter");
                    let reply = tokio::time::timeout(
                        Duration::from_secs(2),
                        client.client.request(subject, payload.into()),
                    )
                    .await;
                    match reply {
                        Ok(Ok(message)) => {
                            match natsplug_protocol::decode_reply(&message.payload) {
                                Ok(reply) if reply.action == Action::Next => {
                                    answered.fetch_add(1, Ordering::Relaxed);
                                }
                                other => failures.push(format!("{id}: {other:?}")),
                            }
                        }
                        Ok(Err(error)) => failures.push(format!("{id}: {error}")),
                        Err(_) => failures.push(format!("{id}: no reply within 2 s")),
                    }
                    worst = worst.max(sent.elapsed());
                }
                eprintln!("slowest of the requests sent back to back: {worst:?}");
                failures
            }
        });
        Load {
            running,
            answered,
            task,
        }
    }

    /// Stop, and return how many requests were answered.
    async fn stop(self) -> u64 {
        self.running.store(false, Ordering::Relaxed);
        let failures = self.task.await.unwrap();
        assert!(failures.is_empty(), "failed requests: {failures:?}");
        self.answered.load(Ordering::Relaxed)
    }
}

/// `natsplug up` as user `host` on `server`, with `/readyz` and `/metrics`
/// on a local port, serving `plugins` and whatever `extra` adds.
fn start_up(
    server: &NatsServer,
    plugins: &Path,
    cache: &Path,
    extra: &[&str],
) -> (UpProcess, std::net::SocketAddr) {
    let monitor: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let url = server.url();
    let monitor_arg = monitor.to_string();
    let mut args = vec![
        "--nats",
        &url,
        "--plugins",
        plugins.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--monitor",
        &monitor_arg,
    ];
    args.extend_from_slice(extra);
    (UpProcess::start_with_env(&args, HOST_LOGIN), monitor)
}

/// The lines of `log` that name the refused subject.
fn refusal_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains(&format!("`{REFUSED_SUBJECT}`")))
        .map(str::to_string)
        .collect()
}

/// Everything a running host shows once it refused plugin `authz`: one log
/// line naming the subject and the fix, no endpoint of `authz` in
/// `$SRV.INFO` (its failure in the metadata), `/readyz` naming the subject,
/// and `/metrics` with the failure and without the plugin.
async fn assert_refused_and_not_served(
    host: &UpProcess,
    monitor: std::net::SocketAddr,
    client: &async_nats::Client,
    served: &str,
) {
    let lines = refusal_lines(&host.log());
    assert_eq!(lines.len(), 1, "{}", host.log());
    assert!(
        lines[0].contains("plugin `authz`")
            && lines[0].contains("failed to load")
            && lines[0].contains("lacks subscribe permission there")
            && lines[0].contains("grant it in the server's authorization config"),
        "{}",
        lines[0]
    );

    let infos = host_infos(client, 1, Duration::from_secs(2)).await;
    assert_eq!(infos.len(), 1);
    let info = &infos[0];
    let subjects: Vec<&str> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|endpoint| endpoint["subject"].as_str().unwrap())
        .collect();
    assert_eq!(
        subjects,
        vec![format!("nylon.plugin.{served}.request_filter")]
    );
    let metadata = &info["metadata"];
    assert!(metadata.get("plugin.authz.hash").is_none(), "{metadata}");
    let failed = metadata["plugin.authz.failed_error"].as_str().unwrap();
    assert!(failed.contains(REFUSED_SUBJECT), "{failed}");

    let (status, body) = http_get(monitor, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("plugin `authz`") && body.contains(REFUSED_SUBJECT),
        "{body}"
    );
    let (_, metrics) = http_get(monitor, "/metrics");
    assert!(
        metrics.lines().any(
            |l| l.starts_with("natsplug_plugin_load_failed{plugin=\"authz\"") && l.ends_with(" 1")
        ),
        "{metrics}"
    );
    assert!(
        !metrics.contains("natsplug_plugin_info{plugin=\"authz\""),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("natsplug_plugin_info{{plugin=\"{served}\"")),
        "{metrics}"
    );

    // Nothing answers on the refused subject.
    let error = client
        .request(REFUSED_SUBJECT, "".into())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), async_nats::RequestErrorKind::NoResponders);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_dropped_in_whose_subject_is_refused_is_reported_and_the_others_keep_serving() {
    let server = NatsServer::start_with_config(&plugin_subjects_denied("authz"));
    let plugins = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    natsplug_suite::host::install_file(plugins.path(), "header-injector", guests::HEADER_INJECTOR);
    let (host, monitor) = start_up(&server, plugins.path(), cache.path(), &[]);
    let client = server.connect_as("deploy", "deploy-secret").await;
    assert_eq!(http_get(monitor, "/readyz").0, 200);

    let load = Load::start(PhaseClient::new(client.clone()), "header-injector");
    deploy_bytes(
        plugins.path(),
        "authz",
        &std::fs::read(guests::AUTHZ).unwrap(),
    );
    until(Duration::from_secs(10), "the refusal logged", async || {
        (!refusal_lines(&host.log()).is_empty()).then_some(())
    })
    .await;
    assert_refused_and_not_served(&host, monitor, &client, "header-injector").await;
    let answered = load.stop().await;
    assert!(answered > 0);
    eprintln!("{answered} requests answered while the refused plugin was added");

    // The file taken away, the host is ready again.
    std::fs::remove_file(plugins.path().join("authz.wasm")).unwrap();
    until(Duration::from_secs(10), "ready again", async || {
        (http_get(monitor, "/readyz").0 == 200).then_some(())
    })
    .await;
    assert_eq!(refusal_lines(&host.log()).len(), 1, "{}", host.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_whose_subject_is_refused_is_reported_and_the_others_keep_serving() {
    let server = NatsServer::start_with_config(&plugin_subjects_denied("authz"));
    let client = server.connect_as("deploy", "deploy-secret").await;
    let injector = std::fs::read(guests::HEADER_INJECTOR).unwrap();
    bucket_holding(&client, "edge", &injector).await;
    let plugins = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (host, monitor) = start_up(
        &server,
        plugins.path(),
        cache.path(),
        &["--bucket", "plugins"],
    );
    assert_eq!(http_get(monitor, "/readyz").0, 200);

    let load = Load::start(PhaseClient::new(client.clone()), "edge");
    assert_success(&natsplug(
        &[
            "push",
            guests::AUTHZ,
            "--name",
            "authz",
            "--nats",
            &server.url(),
        ],
        DEPLOY_LOGIN,
    ));
    until(Duration::from_secs(10), "the refusal logged", async || {
        (!refusal_lines(&host.log()).is_empty()).then_some(())
    })
    .await;
    assert_refused_and_not_served(&host, monitor, &client, "edge").await;
    let infos = host_infos(&client, 1, Duration::from_secs(2)).await;
    assert_eq!(
        infos[0]["metadata"]["plugin.authz.failed_hash"],
        natsplug::plugin::content_hash(&std::fs::read(guests::AUTHZ).unwrap())
    );
    let answered = load.stop().await;
    assert!(answered > 0);
    eprintln!("{answered} requests answered while the refused plugin was pushed");

    // Taken out of the bucket, the host is ready again.
    assert_success(&natsplug(
        &["rm", "authz", "--nats", &server.url()],
        DEPLOY_LOGIN,
    ));
    until(Duration::from_secs(10), "ready again", async || {
        (http_get(monitor, "/readyz").0 == 200).then_some(())
    })
    .await;
    assert_eq!(refusal_lines(&host.log()).len(), 1, "{}", host.log());
}

// ---------------------------------------------------------------- log records

/// A `logging` request that makes the access logger emit one `info` record.
fn access(request_id: &str) -> Vec<u8> {
    let mut logging = request("logging", request_id, "GET", "/items");
    logging.response = Some(natsplug_protocol::HttpResponse {
        status: 200,
        headers: vec![],
        body: None,
    });
    natsplug_protocol::encode_request(&logging)
}

/// Send `count` access records `{prefix}-0` ... one after the other and
/// check each is answered.
async fn send_access(client: &PhaseClient, prefix: &str, count: usize) {
    for index in 0..count {
        let reply = client
            .send_raw(
                "access-logger",
                "logging",
                access(&format!("{prefix}-{index}")),
            )
            .await
            .expect("a reply")
            .reply();
        assert_eq!(reply.action, Action::Next, "{reply:?}");
    }
}

/// The value of the metric line starting with `series ` in `metrics`.
fn metric(metrics: &str, series: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Server users: `host` may publish anything but log records; `client`
/// may do anything.
const LOGS_REFUSED: &str = r#"
authorization {
  users: [
    { user: host, password: host-secret, permissions: { publish: { deny: ["logs.>"] } } }
    { user: client, password: client-secret }
  ]
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_log_records_are_counted_logged_once_and_requests_still_answered() {
    let server = NatsServer::start_with_config(LOGS_REFUSED);
    let plugins = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    natsplug_suite::host::install_file(plugins.path(), "access-logger", guests::ACCESS_LOGGER);
    let (host, monitor) = start_up(&server, plugins.path(), cache.path(), &[]);
    let refusal = "NATS refused this host's log records on `logs.access-logger.info`";
    let logged = || {
        host.log()
            .lines()
            .filter(|line| line.contains(refusal))
            .count()
    };
    // The host's first record (the plugin loaded) is refused by the server.
    until(
        Duration::from_secs(10),
        "the first refusal logged",
        async || (logged() > 0).then_some(()),
    )
    .await;

    let client = PhaseClient::new(server.connect_as("client", "client-secret").await);
    send_access(&client, "refused", 40).await;
    // The load event (published, then refused by the server) and the 40
    // call records (held back by the host): 41 refused.
    let refused = until(Duration::from_secs(10), "41 records refused", async || {
        let (_, metrics) = http_get(monitor, "/metrics");
        metric(
            &metrics,
            "natsplug_log_records_dropped_total{reason=\"refused\"}",
        )
        .filter(|refused| *refused >= 41)
        .map(|_| metrics)
    })
    .await;
    assert_eq!(
        metric(
            &refused,
            "natsplug_log_records_dropped_total{reason=\"refused\"}"
        ),
        Some(41),
        "{refused}"
    );
    // Only the load event went to the server.
    assert_eq!(
        metric(&refused, "natsplug_permission_violations_total"),
        Some(1)
    );
    assert_eq!(metric(&refused, "natsplug_log_records_sent_total"), Some(1));
    assert_eq!(
        metric(
            &refused,
            "natsplug_requests_total{plugin=\"access-logger\",phase=\"logging\"}"
        ),
        Some(40)
    );
    assert_eq!(logged(), 1, "{}", host.log());
    let line = host
        .log()
        .lines()
        .find(|line| line.contains(refusal))
        .unwrap()
        .to_string();
    assert!(
        line.contains("grant publish on `logs.*.*`") && line.contains("logs.enabled = false"),
        "{line}"
    );
}

/// A server with JetStream on, and the same with it off: turning it off by
/// a config reload keeps core NATS serving on the same connections while
/// every JetStream publish fails; turning it back on restores the streams
/// from the store.
const JETSTREAM_ON: &str = "server_name: solo\njetstream: enabled\n";
const JETSTREAM_OFF: &str = "server_name: solo\njetstream: disabled\n";

/// The request ids of the records in stream `NATSPLUG_LOGS`, in order,
/// and the number of records without one (host events).
async fn stored_records(jetstream: &async_nats::jetstream::Context) -> (Vec<String>, usize) {
    use futures::StreamExt as _;
    let stream = jetstream.get_stream("NATSPLUG_LOGS").await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let total = stream.get_info().await.unwrap().state.messages as usize;
    let mut messages = consumer
        .fetch()
        .max_messages(total)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let (mut ids, mut events) = (Vec::new(), 0);
    while let Some(message) = messages.next().await {
        let record: serde_json::Value = serde_json::from_slice(&message.unwrap().payload).unwrap();
        match record["request_id"].as_str() {
            Some(id) => ids.push(id.to_string()),
            None => events += 1,
        }
    }
    (ids, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_records_wait_out_a_jetstream_outage_within_the_buffer_and_arrive_once() {
    const BUFFER: usize = 20;
    const DURING: usize = 50;
    let server = NatsServer::start_with_config(JETSTREAM_ON);
    let host = natsplug_suite::TestHost::start(
        &server.url(),
        &[("access-logger", guests::ACCESS_LOGGER)],
        |config| {
            config.logs.durable = true;
            config.logs.create_stream = true;
            config.logs.buffer = BUFFER;
            config.logs.batch_size = 5;
            config.logs.flush_interval_ms = 20;
            // One thread runs every call and emits its records, so records
            // reach the buffer in the order of the requests.
            config.runtime.workers = 1;
            config.runtime.inline_call_max_us = 0;
        },
    )
    .await;
    let stats = host.host.stats();
    let sent = || stats.log_records_sent.load(Ordering::Relaxed);
    let dropped = || stats.log_records_dropped.load(Ordering::Relaxed);
    let client = PhaseClient::new(server.connect().await);
    let jetstream = async_nats::jetstream::new(server.connect().await);

    // Before: the load event and 10 records are stored.
    send_access(&client, "before", 10).await;
    until(
        Duration::from_secs(10),
        "11 records acknowledged",
        async || (sent() == 11).then_some(()),
    )
    .await;

    // JetStream off; core NATS serves on. A stream of its own tells when
    // JetStream stopped taking messages.
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: "PROBE".into(),
            subjects: vec!["probe".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    server.reload(JETSTREAM_OFF);
    until(Duration::from_secs(10), "JetStream off", async || {
        let stored = match jetstream.publish("probe", "".into()).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        (!stored).then_some(())
    })
    .await;
    send_access(&client, "during", DURING).await;
    // The host keeps the newest BUFFER records and drops the others.
    until(
        Duration::from_secs(10),
        "the buffer at its bound",
        async || (dropped() >= (DURING - BUFFER) as u64).then_some(()),
    )
    .await;
    assert_eq!(dropped(), (DURING - BUFFER) as u64);
    assert_eq!(sent(), 11);
    assert!(stats.log_publish_failures.load(Ordering::Relaxed) > 0);

    // JetStream back: the records held arrive.
    let outage_ended = Instant::now();
    server.reload(JETSTREAM_ON);
    until(
        Duration::from_secs(10),
        "the held records acknowledged",
        async || (sent() >= (11 + BUFFER) as u64).then_some(()),
    )
    .await;
    eprintln!(
        "held records stored {:?} after JetStream came back",
        outage_ended.elapsed()
    );
    // Once closed, the publisher sends nothing more: the stream is final.
    host.host.shutdown().await.unwrap();
    assert_eq!(sent(), (11 + BUFFER) as u64);
    assert_eq!(dropped(), (DURING - BUFFER) as u64);

    let (ids, events) = stored_records(&jetstream).await;
    assert_eq!(events, 1, "the load event");
    let expected: Vec<String> = (0..10)
        .map(|i| format!("before-{i}"))
        .chain((DURING - BUFFER..DURING).map(|i| format!("during-{i}")))
        .collect();
    assert_eq!(ids, expected);
}
