//! A fleet of `natsplug up` processes serving the plugins of a JetStream
//! object store bucket: pushes reach every host with no failed request, a
//! broken push keeps the fleet on the previous version and `rollback`
//! recovers it, a late host gets the current set, large components travel,
//! the directory wins over the bucket, read-only hosts still load, and a
//! bucket plugin whose subject the server refuses fails the start.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt as _;
use natsplug_protocol::{Action, PhaseReply};
use natsplug_suite::client::request;
use natsplug_suite::fleet::{assert_success, bucket_holding, natsplug, push, until_fleet_reports};
use natsplug_suite::host::install_file;
use natsplug_suite::nats_server::{HOST_LOGIN, free_port, plugin_subjects_denied};
use natsplug_suite::up::{fleet_metadata, padded_component};
use natsplug_suite::{NatsServer, PhaseClient, UpProcess, guests, http_get};

/// The two behaviours a plugin named `edge` switches between: the header
/// injector lets the request through, authz refuses it (no token is
/// configured for it on these hosts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Injects,
    Refuses,
}

fn behaviour_of(reply: &PhaseReply) -> Behaviour {
    match (reply.action, reply.status) {
        (Action::Next, None) => Behaviour::Injects,
        (Action::End, Some(403)) => Behaviour::Refuses,
        other => panic!("unexpected reply {other:?}: {reply:?}"),
    }
}

fn content_hash(path: &str) -> String {
    natsplug::plugin::content_hash(&std::fs::read(path).unwrap())
}

/// A host serving bucket `plugins` (and an empty directory) on `server`.
fn start_host(server: &NatsServer, plugins: &Path, cache: &Path) -> UpProcess {
    start_host_with(server, plugins, cache, &[])
}

fn start_host_with(server: &NatsServer, plugins: &Path, cache: &Path, extra: &[&str]) -> UpProcess {
    let url = server.url();
    let mut args = bucket_host_args(&url, plugins, cache);
    args.extend_from_slice(extra);
    UpProcess::start(&args)
}

/// The `up` flags of a host serving bucket `plugins` and the directory
/// `plugins` on the server at `url`.
fn bucket_host_args<'a>(url: &'a str, plugins: &'a Path, cache: &'a Path) -> Vec<&'a str> {
    vec![
        "--nats",
        url,
        "--bucket",
        "plugins",
        "--plugins",
        plugins.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]
}

/// Wait (at most 10 s) until `counter` reaches `target`.
async fn until_count(counter: &AtomicU64, target: u64, what: &str) {
    let started = Instant::now();
    while counter.load(Ordering::Relaxed) < target {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: {} of {target} within 10 s",
            counter.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The value of counter `name` in the `/metrics` of the host at `monitor`.
fn counter_metric(monitor: std::net::SocketAddr, name: &str) -> u64 {
    let (_, metrics) = http_get(monitor, "/metrics");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
}

async fn send_edge(client: &PhaseClient, id: &str) -> Result<PhaseReply, String> {
    let payload = natsplug_protocol::encode_request(&request("request_filter", id, "GET", "/"));
    match tokio::time::timeout(
        Duration::from_secs(5),
        client.client.request(
            "nylon.plugin.edge.request_filter".to_string(),
            payload.into(),
        ),
    )
    .await
    {
        Ok(Ok(message)) => natsplug_protocol::decode_reply(&message.payload)
            .map_err(|error| format!("undecodable reply: {error}")),
        Ok(Err(error)) => Err(format!("request failed: {error}")),
        Err(_) => Err("no reply within 5 s".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_follows_pushes_without_failures_and_rolls_back_a_broken_one() {
    let server = NatsServer::start_with_args(&["-js"]);
    let url = server.url();
    let nats = server.connect().await;
    let client = PhaseClient::new(nats.clone());
    let v1 = content_hash(guests::HEADER_INJECTOR);
    let v2 = content_hash(guests::AUTHZ);

    push(&url, guests::HEADER_INJECTOR, "edge", &["--create"]);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let caches: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // The first host also serves /metrics and /readyz.
    let monitor: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let monitor_arg = monitor.to_string();
    let hosts: Vec<UpProcess> = (0..3)
        .map(|i| {
            let extra: &[&str] = if i == 0 {
                &["--monitor", &monitor_arg]
            } else {
                &[]
            };
            start_host_with(&server, dirs[i].path(), caches[i].path(), extra)
        })
        .collect();
    let fleet: Vec<&UpProcess> = hosts.iter().collect();
    // Each host loaded the bucket's plugin before saying it was ready.
    until_fleet_reports(&nats, 3, "plugin.edge.hash", Some(&v1), &fleet).await;
    until_fleet_reports(&nats, 3, "plugin.edge.origin", Some("bucket"), &fleet).await;
    assert_eq!(
        behaviour_of(&send_edge(&client, "first").await.unwrap()),
        Behaviour::Injects
    );

    // Push v2 while four clients send continuously.
    let running = Arc::new(AtomicBool::new(true));
    let switched = Arc::new(std::sync::Mutex::new(None::<Instant>));
    // Replies received, and those to requests sent after the fleet switched.
    let answered = Arc::new(AtomicU64::new(0));
    let answered_after = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for sender in 0..4 {
        let client = client.clone();
        let running = running.clone();
        let switched = switched.clone();
        let (answered, answered_after) = (answered.clone(), answered_after.clone());
        senders.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut index = 0;
            while running.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let reply = send_edge(&client, &format!("{sender}-{index}")).await;
                index += 1;
                let converged = *switched.lock().unwrap();
                let after = converged.is_some_and(|at| sent > at);
                answered.fetch_add(1, Ordering::Relaxed);
                if after {
                    answered_after.fetch_add(1, Ordering::Relaxed);
                }
                seen.push((reply.map(|r| behaviour_of(&r)), after));
            }
            seen
        }));
    }
    until_count(&answered, 20, "replies before the push").await;
    let pushed = push(&url, guests::AUTHZ, "edge", &["--create"]);
    assert!(pushed.starts_with("pushed edge"), "{pushed}");
    let took = until_fleet_reports(&nats, 3, "plugin.edge.hash", Some(&v2), &fleet).await;
    *switched.lock().unwrap() = Some(Instant::now());
    eprintln!("all three hosts served the pushed version {took:?} after push returned");
    until_count(&answered_after, 20, "replies after the fleet switched").await;
    running.store(false, Ordering::Relaxed);
    let mut results = Vec::new();
    for sender in senders {
        results.extend(sender.await.unwrap());
    }
    let failures: Vec<_> = results.iter().filter(|(r, _)| r.is_err()).collect();
    assert!(
        failures.is_empty(),
        "failed requests during the push: {failures:?}"
    );
    assert!(results.iter().any(|(r, _)| *r == Ok(Behaviour::Injects)));
    assert!(results.iter().any(|(r, _)| *r == Ok(Behaviour::Refuses)));
    let after: Vec<_> = results.iter().filter(|(_, after)| *after).collect();
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|(r, _)| *r == Ok(Behaviour::Refuses)),
        "a host answered with v1 after the fleet reported v2"
    );

    let status = natsplug(&["status", "--nats", &url], &[]);
    let text = assert_success(&status);
    assert!(text.contains("3/3"), "{text}");

    // A broken component put with a plain object store client (no
    // validation): every host keeps serving v2 and says so.
    let mut errors = nats.subscribe("logs.edge.error").await.unwrap();
    nats.flush().await.unwrap();
    let js = jetstream::new(nats.clone());
    let store = js.get_object_store("plugins").await.unwrap();
    let broken = b"\0asm\x0d\0\x01\0 this is not a component".to_vec();
    let broken_hash = natsplug::plugin::content_hash(&broken);
    store.put("edge", &mut broken.as_slice()).await.unwrap();
    until_fleet_reports(
        &nats,
        3,
        "plugin.edge.failed_hash",
        Some(&broken_hash),
        &fleet,
    )
    .await;
    until_fleet_reports(&nats, 3, "plugin.edge.hash", Some(&v2), &fleet).await;
    for _ in 0..3 {
        let record = tokio::time::timeout(Duration::from_secs(5), errors.next())
            .await
            .expect("a log record from every host")
            .unwrap();
        let record: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
        let message = record["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!(
                "plugin `edge` version {} from bucket `plugins` failed to load; the previous version keeps serving",
                &broken_hash[..12]
            )),
            "{message}"
        );
    }
    for index in 0..20 {
        let reply = send_edge(&client, &format!("broken-{index}"))
            .await
            .unwrap();
        assert_eq!(behaviour_of(&reply), Behaviour::Refuses);
    }
    let (_, metrics) = http_get(monitor, "/metrics");
    assert!(
        metrics.contains(&format!(
            "natsplug_plugin_load_failed{{plugin=\"edge\",content_hash=\"{broken_hash}\",origin=\"bucket\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("content_hash=\"{v2}\",origin=\"bucket\"}} 1")),
        "{metrics}"
    );
    let (ready, why) = http_get(monitor, "/readyz");
    assert_eq!(ready, 503, "{why}");
    let status = natsplug(&["status", "--nats", &url], &[]);
    assert_eq!(
        status.status.code(),
        Some(1),
        "status must fail while hosts lag the bucket"
    );

    // Rollback puts v2 back: the failure clears everywhere.
    assert_success(&natsplug(&["rollback", "edge", "--nats", &url], &[]));
    until_fleet_reports(&nats, 3, "plugin.edge.failed_hash", None, &fleet).await;
    until_fleet_reports(&nats, 3, "plugin.edge.hash", Some(&v2), &fleet).await;
    assert_success(&natsplug(&["status", "--nats", &url], &[]));

    // Rolling back again walks back to v1.
    assert_success(&natsplug(&["rollback", "edge", "--nats", &url], &[]));
    until_fleet_reports(&nats, 3, "plugin.edge.hash", Some(&v1), &fleet).await;
    assert_eq!(
        behaviour_of(&send_edge(&client, "after-rollback").await.unwrap()),
        Behaviour::Injects
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_host_gets_the_current_set_including_a_large_component() {
    let server = NatsServer::start_with_args(&["-js"]);
    let url = server.url();
    let nats = server.connect().await;
    let client = PhaseClient::new(nats.clone());
    let files = tempfile::tempdir().unwrap();
    // About 6 MB: several object store chunks.
    let big = padded_component(&std::fs::read(guests::AUTHZ).unwrap(), 6 << 20);
    let big_file = files.path().join("big.wasm");
    std::fs::write(&big_file, &big).unwrap();

    push(&url, guests::AUTHZ, "edge", &["--create"]);
    push(&url, guests::HEADER_INJECTOR, "edge", &["--create"]);
    push(&url, big_file.to_str().unwrap(), "big", &["--create"]);

    let plugins = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(&server, plugins.path(), cache.path());
    assert_eq!(
        host.ready_lines,
        vec![
            "natsplug ready: 2 plugin(s), 2 subject(s), queue group `natsplug`".to_string(),
            "  nylon.plugin.big.request_filter".to_string(),
            "  nylon.plugin.edge.request_filter".to_string(),
        ]
    );
    let big_hash = natsplug::plugin::content_hash(&big);
    until_fleet_reports(&nats, 1, "plugin.big.hash", Some(&big_hash), &[&host]).await;
    let edge_hash = content_hash(guests::HEADER_INJECTOR);
    until_fleet_reports(&nats, 1, "plugin.edge.hash", Some(&edge_hash), &[&host]).await;
    let reply = client
        .send("big", &request("request_filter", "big-1", "GET", "/"))
        .await;
    assert_eq!(reply.status, Some(403));
    assert_eq!(
        behaviour_of(&send_edge(&client, "late").await.unwrap()),
        Behaviour::Injects
    );

    // `rm` takes a plugin off every host.
    assert_success(&natsplug(&["rm", "big", "--nats", &url], &[]));
    until_fleet_reports(&nats, 1, "plugin.big.hash", None, &[&host]).await;
    let gone = nats
        .request("nylon.plugin.big.request_filter", "".into())
        .await
        .unwrap_err();
    assert_eq!(gone.kind(), async_nats::RequestErrorKind::NoResponders);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_wins_over_the_bucket_until_its_file_goes() {
    let server = NatsServer::start_with_args(&["-js"]);
    let nats = server.connect().await;
    let client = PhaseClient::new(nats.clone());
    let authz = std::fs::read(guests::AUTHZ).unwrap();
    let store = bucket_holding(&nats, "edge", &authz).await;

    let plugins = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let file = install_file(plugins.path(), "edge", guests::HEADER_INJECTOR);
    let monitor: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let host = start_host_with(
        &server,
        plugins.path(),
        cache.path(),
        &["--monitor", &monitor.to_string()],
    );
    // Bounded: a loaded machine may take a moment to answer discovery.
    until_fleet_reports(&nats, 1, "plugin.edge.origin", Some("directory"), &[&host]).await;
    assert_eq!(
        behaviour_of(&send_edge(&client, "dir").await.unwrap()),
        Behaviour::Injects
    );
    // A push to the bucket does not override the local file: the host
    // passes the pushed version over.
    let skipped = "natsplug_bucket_versions_skipped_total";
    let before = counter_metric(monitor, skipped);
    let injector = std::fs::read(guests::HEADER_INJECTOR).unwrap();
    let padded = padded_component(&authz, 10);
    store.put("edge", &mut padded.as_slice()).await.unwrap();
    let started = Instant::now();
    while counter_metric(monitor, skipped) == before {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the push was not passed over within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        fleet_metadata(&nats, 1, "plugin.edge.hash").await,
        vec![Some(natsplug::plugin::content_hash(&injector))]
    );

    // Without the file, the bucket's version serves.
    std::fs::remove_file(&file).unwrap();
    until_fleet_reports(&nats, 1, "plugin.edge.origin", Some("bucket"), &[&host]).await;
    assert_eq!(
        fleet_metadata(&nats, 1, "plugin.edge.hash").await,
        vec![Some(natsplug::plugin::content_hash(&padded))]
    );
    assert_eq!(
        behaviour_of(&send_edge(&client, "bucket").await.unwrap()),
        Behaviour::Refuses
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_hosts_load_and_follow_what_the_deploy_user_pushes() {
    let server = NatsServer::start_with_config(natsplug_suite::nats_server::BUCKET_PERMISSIONS);
    let url = server.url();
    let deploy = server.connect_as("deploy", "deploy-secret").await;
    let injector = std::fs::read(guests::HEADER_INJECTOR).unwrap();
    let store = bucket_holding(&deploy, "edge", &injector).await;

    let plugins = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let host = UpProcess::start_with_env(
        &bucket_host_args(&url, plugins.path(), cache.path()),
        HOST_LOGIN,
    );
    assert_eq!(
        host.ready_lines[0],
        "natsplug ready: 1 plugin(s), 1 subject(s), queue group `natsplug`"
    );
    let client = PhaseClient::new(deploy.clone());
    assert_eq!(
        behaviour_of(&send_edge(&client, "ro-1").await.unwrap()),
        Behaviour::Injects
    );
    let authz = std::fs::read(guests::AUTHZ).unwrap();
    store.put("edge", &mut authz.as_slice()).await.unwrap();
    until_fleet_reports(
        &deploy,
        1,
        "plugin.edge.hash",
        Some(&natsplug::plugin::content_hash(&authz)),
        &[&host],
    )
    .await;
    assert_eq!(
        behaviour_of(&send_edge(&client, "ro-2").await.unwrap()),
        Behaviour::Refuses
    );
    // The host's user cannot write to the bucket.
    let host_user = server.connect_as("host", "host-secret").await;
    let host_js = jetstream::new(host_user);
    let host_store = host_js.get_object_store("plugins").await.unwrap();
    let put = tokio::time::timeout(
        Duration::from_secs(15),
        host_store.put("edge", &mut injector.as_slice()),
    )
    .await;
    assert!(
        !matches!(put, Ok(Ok(_))),
        "the host user wrote to the bucket"
    );
    assert!(
        !host.log().contains("Permissions Violation"),
        "{}",
        host.log()
    );
}

#[tokio::test]
async fn a_bucket_plugin_whose_subject_the_server_refuses_fails_up_naming_the_subject() {
    let server = NatsServer::start_with_config(&plugin_subjects_denied("edge"));
    let url = server.url();
    let deploy = server.connect_as("deploy", "deploy-secret").await;
    let injector = std::fs::read(guests::HEADER_INJECTOR).unwrap();
    bucket_holding(&deploy, "edge", &injector).await;

    let plugins = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut host = UpProcess::spawn(
        &bucket_host_args(&url, plugins.path(), cache.path()),
        HOST_LOGIN,
        std::process::Stdio::null(),
    );
    let status = host.wait_exit();
    assert!(!status.success(), "up served without the refused plugin");
    let log = host.log();
    assert!(
        log.contains(
            "error: NATS refused to let this host subscribe to `nylon.plugin.edge.request_filter`"
        ) && log.contains("lacks subscribe permission there"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_was_cut_off_catches_up_after_it_reconnects() {
    // The server drops a client that misses a ping for about two seconds.
    let server =
        NatsServer::start_with_config("jetstream: enabled\nping_interval: \"1s\"\nping_max: 1\n");
    let url = server.url();
    let nats = server.connect().await;
    let client = PhaseClient::new(nats.clone());
    push(&url, guests::HEADER_INJECTOR, "edge", &["--create"]);
    let plugins = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut host = start_host(&server, plugins.path(), cache.path());
    let pid = host.child.id().to_string();

    // Freeze the host until the server drops it, push meanwhile, thaw it.
    let stop = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    assert!(stop.success());
    push(&url, guests::AUTHZ, "edge", &["--create"]);
    // The server drops the frozen host: its subscription goes with it.
    let started = Instant::now();
    loop {
        let probe = tokio::time::timeout(
            Duration::from_millis(500),
            nats.request("nylon.plugin.edge.request_filter", "".into()),
        )
        .await;
        if let Ok(Err(error)) = &probe
            && error.kind() == async_nats::RequestErrorKind::NoResponders
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the server did not drop the frozen host within 15 s"
        );
    }
    let resume = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap();
    assert!(resume.success());

    until_fleet_reports(
        &nats,
        1,
        "plugin.edge.hash",
        Some(&content_hash(guests::AUTHZ)),
        &[&host],
    )
    .await;
    assert_eq!(
        behaviour_of(&send_edge(&client, "caught-up").await.unwrap()),
        Behaviour::Refuses
    );
    assert!(host.log().contains("reconnected to NATS"), "{}", host.log());
    host.terminate();
    assert!(host.wait_exit().success());
}
