//! Hot reload from the watch directory: plugins are added, replaced and
//! removed by file changes while clients send requests, and no request
//! fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use natsplug::logs::LogLevel;
use natsplug_protocol::{Action, PhaseReply};
use natsplug_suite::client::request;
use natsplug_suite::host::{deploy_bytes, install_file};
use natsplug_suite::{NatsServer, PhaseClient, TestHost, guests};

/// What a reply says about the plugin version that produced it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Behaviour {
    /// header-injector: continue with its header.
    Injects,
    /// authz with no token configured: 403.
    Forbids,
}

fn behaviour_of(reply: &PhaseReply) -> Behaviour {
    match (reply.action, reply.status) {
        (Action::Next, None) => {
            let set = &reply
                .request_headers
                .as_ref()
                .expect("header mutations")
                .set;
            assert_eq!(
                set[0],
                ("x-plugin".to_string(), "header-injector".to_string())
            );
            Behaviour::Injects
        }
        (Action::End, Some(403)) => Behaviour::Forbids,
        other => panic!("unexpected reply {other:?}: {reply:?}"),
    }
}

/// Send probes until plugin `name` shows `expected`, or fail after 10 s.
async fn wait_for_behaviour(client: &PhaseClient, name: &str, expected: Behaviour) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(raw) = client
            .send_raw(
                name,
                "request_filter",
                natsplug_protocol::encode_request(&request("request_filter", "probe", "GET", "/")),
            )
            .await
            && behaviour_of(&raw.reply()) == expected
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not switch to {expected:?} within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_plugin_fifty_times_under_load_fails_no_request() {
    let server = NatsServer::start();
    let host = TestHost::start(&server.url(), &[("swap", guests::HEADER_INJECTOR)], |_| {}).await;
    let _watcher = host.watch(Duration::from_millis(50));
    let injector = std::fs::read(guests::HEADER_INJECTOR).unwrap();
    let authz = std::fs::read(guests::AUTHZ).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for worker in 0..4 {
        let client = PhaseClient::new(server.connect().await);
        let (stop, answered) = (stop.clone(), answered.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = [0u64; 2];
            let mut index = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("w{worker}-{index}");
                let raw = client
                    .send_raw(
                        "swap",
                        "request_filter",
                        natsplug_protocol::encode_request(&request(
                            "request_filter",
                            &id,
                            "GET",
                            "/",
                        )),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("request {id} failed during a swap: {e}"));
                let reply = raw.reply();
                assert_eq!(reply.request_id, id);
                assert_eq!(raw.header("Nats-Service-Error"), None, "{reply:?}");
                seen[behaviour_of(&reply) as usize] += 1;
                answered.fetch_add(1, Ordering::Relaxed);
                index += 1;
            }
            seen
        }));
    }

    let probe = PhaseClient::new(server.connect().await);
    for swap in 0..50 {
        let (bytes, expected) = if swap % 2 == 0 {
            (&authz, Behaviour::Forbids)
        } else {
            (&injector, Behaviour::Injects)
        };
        deploy_bytes(host.plugins_dir(), "swap", bytes);
        wait_for_behaviour(&probe, "swap", expected).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut totals = [0u64; 2];
    for client in clients {
        let seen = client.await.expect("a client saw a failure");
        totals[0] += seen[0];
        totals[1] += seen[1];
    }
    assert!(
        totals[0] > 0 && totals[1] > 0,
        "both versions answered: {totals:?}"
    );
    assert_eq!(totals[0] + totals[1], answered.load(Ordering::Relaxed));
    let status = host.host.status().await;
    assert_eq!(status[0].reloads, 50);
    assert_eq!(status[0].endpoints[0].stats.errors, 0);
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_added_plugin_is_served_and_a_deleted_one_is_not() {
    let server = NatsServer::start();
    let host = TestHost::start(
        &server.url(),
        &[("header-injector", guests::HEADER_INJECTOR)],
        |_| {},
    )
    .await;
    let _watcher = host.watch(Duration::from_millis(50));
    let client = PhaseClient::new(server.connect().await);

    install_file(host.plugins_dir(), "gate", guests::AUTHZ);
    wait_for_behaviour(&client, "gate", Behaviour::Forbids).await;

    std::fs::remove_file(host.plugins_dir().join("gate.wasm")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let result = client
            .send_raw(
                "gate",
                "request_filter",
                natsplug_protocol::encode_request(&request("request_filter", "d", "GET", "/")),
            )
            .await;
        match result {
            Err(error) if error.kind() == async_nats::RequestErrorKind::NoResponders => break,
            Err(error) => panic!("unexpected error {error}"),
            Ok(_) => assert!(
                Instant::now() < deadline,
                "gate still served 10 s after deletion"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The other plugin never noticed.
    wait_for_behaviour(&client, "header-injector", Behaviour::Injects).await;
    assert_eq!(
        host.host.subjects().await,
        vec!["nylon.plugin.header-injector.request_filter".to_string()]
    );
    let messages = host.records.messages();
    assert!(
        messages.contains(&"plugin `gate` loaded".to_string()),
        "{messages:?}"
    );
    assert!(
        messages.contains(&"plugin `gate` removed".to_string()),
        "{messages:?}"
    );
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_broken_file_leaves_the_working_version_serving_until_fixed() {
    let server = NatsServer::start();
    let host = TestHost::start(&server.url(), &[("gate", guests::HEADER_INJECTOR)], |_| {}).await;
    let _watcher = host.watch(Duration::from_millis(50));
    let client = PhaseClient::new(server.connect().await);

    deploy_bytes(
        host.plugins_dir(),
        "gate",
        b"\0asm\x01\0\0\0 this is not a component",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let failure = loop {
        if let Some(record) = host
            .records
            .records()
            .into_iter()
            .find(|r| r.level == LogLevel::Error)
        {
            break record;
        }
        assert!(Instant::now() < deadline, "no failure reported within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(failure.plugin, "gate");
    assert!(
        failure.message.starts_with("plugin `gate` version ")
            && failure.message.contains(" from the plugins directory failed to load; the previous version keeps serving: `gate` is not a valid WebAssembly component"),
        "{}",
        failure.message
    );
    wait_for_behaviour(&client, "gate", Behaviour::Injects).await;
    assert_eq!(host.host.status().await[0].reloads, 0);

    deploy_bytes(
        host.plugins_dir(),
        "gate",
        &std::fs::read(guests::AUTHZ).unwrap(),
    );
    wait_for_behaviour(&client, "gate", Behaviour::Forbids).await;
    assert_eq!(host.host.status().await[0].reloads, 1);
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_file_written_slowly_in_chunks_loads_once_complete() {
    let server = NatsServer::start();
    let host = TestHost::start(&server.url(), &[], |_| {}).await;
    let watcher = host.watch(Duration::from_millis(300));
    let client = PhaseClient::new(server.connect().await);

    let bytes = std::fs::read(guests::AUTHZ).unwrap();
    {
        use std::io::Write;
        let mut file = std::fs::File::create(host.plugins_dir().join("slow.wasm")).unwrap();
        for piece in bytes.chunks(bytes.len() / 8 + 1) {
            file.write_all(piece).unwrap();
            file.flush().unwrap();
            std::thread::sleep(Duration::from_millis(25));
        }
    }
    wait_for_behaviour(&client, "slow", Behaviour::Forbids).await;
    // The writes came closer together than the debounce, so each one after
    // the first put the load off.
    assert!(watcher.postponed() >= 1, "the writes were not debounced");
    // Every attempt to load the file runs under the plugin's lock and
    // records its failure before the next starts, and the file was
    // complete before the first probe: an attempt on a partial file would
    // be recorded before the load the probe saw. A later one reads the
    // complete file, the same content as served, and changes nothing.
    let status = host.host.status().await;
    assert_eq!(
        status[0].content_hash,
        natsplug::plugin::content_hash(&bytes)
    );
    assert_eq!(status[0].reloads, 0);
    let host_events: Vec<String> = host
        .records
        .records()
        .into_iter()
        .filter(|r| r.request_id.is_none())
        .map(|r| r.message)
        .collect();
    assert_eq!(
        host_events,
        vec!["plugin `slow` loaded".to_string()],
        "one load, no failed attempts"
    );
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_restart_with_a_warm_cache_does_not_recompile() {
    let server = NatsServer::start();
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_path_buf();
    let plugins = [
        ("header-injector", guests::HEADER_INJECTOR),
        ("authz", guests::AUTHZ),
    ];

    let cold = TestHost::start(&server.url(), &plugins, |c| {
        c.cache.dir = Some(cache_dir.clone())
    })
    .await;
    let loader_cache = cold
        .host
        .loader()
        .cache()
        .expect("the cache is on by default");
    assert_eq!((loader_cache.hits(), loader_cache.misses()), (0, 2));
    cold.host.shutdown().await.unwrap();

    let warm = TestHost::start(&server.url(), &plugins, |c| {
        c.cache.dir = Some(cache_dir.clone())
    })
    .await;
    let loader_cache = warm.host.loader().cache().unwrap();
    assert_eq!((loader_cache.hits(), loader_cache.misses()), (2, 0));
    let client = PhaseClient::new(server.connect().await);
    wait_for_behaviour(&client, "header-injector", Behaviour::Injects).await;
    warm.host.shutdown().await.unwrap();

    // With the cache off, nothing is read or written.
    let off = TestHost::start(&server.url(), &plugins, |c| {
        c.cache.enabled = false;
        c.cache.dir = Some(cache_dir.clone());
    })
    .await;
    assert!(off.host.loader().cache().is_none());
    off.host.shutdown().await.unwrap();
}
