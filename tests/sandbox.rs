//! No plugin can hurt the host or its neighbours: loops, memory bombs,
//! stack overflows, panics, invalid or oversized results and log floods
//! each get the right answer in bounded time while a well-behaved plugin on
//! the same host keeps serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use natsplug::HostConfig;
use natsplug::config::{FailureMode, InstanceMode, OverloadPolicy};
use natsplug_protocol::{Action, PhaseReply};
use natsplug_suite::client::{RawReply, request};
use natsplug_suite::{NatsServer, PhaseClient, TestHost, guests};

const TIMEOUT_MS: u64 = 200;

async fn start(
    server: &NatsServer,
    configure: impl FnOnce(&mut HostConfig),
) -> (TestHost, PhaseClient) {
    let host = TestHost::start(
        &server.url(),
        &[
            ("misbehave", guests::MISBEHAVE),
            ("header-injector", guests::HEADER_INJECTOR),
        ],
        |config| {
            config.runtime.workers = 2;
            config.runtime.call_timeout_ms = TIMEOUT_MS;
            config.runtime.max_memory_mb = 32;
            configure(config);
        },
    )
    .await;
    (host, PhaseClient::new(server.connect().await))
}

async fn call(client: &PhaseClient, path: &str) -> RawReply {
    let payload = natsplug_protocol::encode_request(&request("request_filter", path, "GET", path));
    client
        .send_raw("misbehave", "request_filter", payload)
        .await
        .expect("a reply")
}

/// Wait (at most 5 s) until `count` calls are queued or running on `host`.
async fn until_in_flight(host: &TestHost, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while host.host.in_flight() != count {
        assert!(
            Instant::now() < deadline,
            "{} calls in flight, not {count}, after 5 s",
            host.host.in_flight()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn assert_error(raw: &RawReply, code: u16, starts_with: &str) -> PhaseReply {
    let reply = raw.reply();
    assert_eq!(reply.action, Action::Error, "{reply:?}");
    let error = reply.error.clone().unwrap();
    assert!(
        error.starts_with(starts_with),
        "`{error}` should start with `{starts_with}`"
    );
    assert_eq!(
        raw.header("Nats-Service-Error-Code"),
        Some(code.to_string())
    );
    reply
}

/// Send `count` requests to the well-behaved plugin; all must succeed.
async fn neighbour_requests(client: PhaseClient, count: usize) -> usize {
    let mut ok = 0;
    for index in 0..count {
        let reply = client
            .send(
                "header-injector",
                &request("request_filter", &format!("n-{index}"), "GET", "/"),
            )
            .await;
        assert_eq!(
            reply.action,
            Action::Next,
            "a neighbour request failed: {reply:?}"
        );
        ok += 1;
    }
    ok
}

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_gets_a_504_in_time_while_neighbours_are_served() {
    let server = NatsServer::start();
    let (host, client) = start(&server, |config| {
        config
            .plugin
            .entry("misbehave".into())
            .or_default()
            .max_concurrency = Some(1);
    })
    .await;

    let neighbours = tokio::spawn(neighbour_requests(
        PhaseClient::new(server.connect().await),
        100,
    ));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let client = client.clone();
        loops.push(tokio::spawn(async move {
            let started = Instant::now();
            let raw = call(&client, "/loop").await;
            (raw, started.elapsed())
        }));
    }
    for handle in loops {
        let (raw, elapsed) = handle.await.unwrap();
        assert_error(
            &raw,
            504,
            "plugin `misbehave` exceeded its 200 ms deadline in request_filter",
        );
        // Four loops, one at a time (max_concurrency = 1): about 4 × 200 ms.
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    }
    assert_eq!(neighbours.await.unwrap(), 100);
    // The instance that timed out was discarded: the next call is on a fresh one.
    let raw = call(&client, "/ok").await;
    assert_eq!(
        raw.reply().request_headers.unwrap().set,
        vec![("x-calls".to_string(), "1".to_string())]
    );
    host.host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_traps_only_its_call_and_memory_stays_bounded() {
    let server = NatsServer::start();
    let (host, client) = start(&server, |_| {}).await;
    let neighbours = tokio::spawn(neighbour_requests(
        PhaseClient::new(server.connect().await),
        50,
    ));
    // Warm up once so the baseline includes the instance pool's setup.
    assert_error(&call(&client, "/alloc").await, 500, "plugin `misbehave`");
    let before = resident_kib();
    for _ in 0..20 {
        assert_error(&call(&client, "/alloc").await, 500, "plugin `misbehave`");
    }
    let grown_mib = resident_kib().saturating_sub(before) / 1024;
    // 20 bombs of 32 MiB each would be 640 MiB if memory were kept.
    assert!(grown_mib < 128, "resident memory grew by {grown_mib} MiB");
    assert_eq!(neighbours.await.unwrap(), 50);
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn stack_overflow_and_panic_are_500s_and_the_host_serves_on() {
    stack_overflow_and_panic(0).await;
}

// After a short first call, the plugin's calls run on the lane that
// received them, whose stack must hold the guest's.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn stack_overflow_and_panic_are_500s_where_they_were_received_too() {
    stack_overflow_and_panic(100_000).await;
}

async fn stack_overflow_and_panic(inline_call_max_us: u64) {
    let server = NatsServer::start();
    let (host, client) = start(&server, |config| {
        config.runtime.inline_call_max_us = inline_call_max_us;
    })
    .await;
    // A plugin's first call runs on a worker; this one is short, so with
    // calls on lanes allowed the next ones run there.
    assert_eq!(call(&client, "/ok").await.reply().action, Action::Next);
    assert_error(
        &call(&client, "/recurse").await,
        500,
        "plugin `misbehave` trapped in request_filter: call stack exhausted",
    );
    assert_error(
        &call(&client, "/panic").await,
        500,
        "plugin `misbehave` trapped in request_filter: wasm `unreachable` instruction executed",
    );
    assert_eq!(neighbour_requests(client.clone(), 5).await, 5);
    let raw = call(&client, "/ok").await;
    assert_eq!(raw.reply().action, Action::Next);
    // Each failure was reported as a host log record too.
    let failures: Vec<String> = host
        .host_records_with_level(natsplug::logs::LogLevel::Error)
        .into_iter()
        .map(|r| r.request_id.unwrap_or_default())
        .collect();
    assert_eq!(failures, vec!["/recurse".to_string(), "/panic".to_string()]);
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn invalid_or_oversized_results_are_500s() {
    let server = NatsServer::start();
    let (host, client) = start(&server, |_| {}).await;
    assert_error(
        &call(&client, "/bad-status").await,
        500,
        "plugin `misbehave` returned an invalid decision in request_filter: status 9999 is not an HTTP status (100-599)",
    );
    assert_error(
        &call(&client, "/bad-header").await,
        500,
        "plugin `misbehave` returned an invalid decision in request_filter: `bad header` is not a valid header name",
    );
    let raw = call(&client, "/huge").await;
    let reply = assert_error(&raw, 500, "plugin `misbehave` returned a reply of ");
    assert!(reply.error.unwrap().ends_with(&format!(
        "bytes in request_filter, above the {} bytes the connection can carry",
        client.client.server_info().max_payload
    )));
    assert_eq!(call(&client, "/ok").await.reply().action, Action::Next);
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_log_flood_is_capped_per_call_and_counted() {
    let server = NatsServer::start();
    // One worker runs every call and emits its records, in order.
    let (host, client) = start(&server, |config| {
        config.runtime.workers = 1;
        config.runtime.inline_call_max_us = 0;
    })
    .await;
    let raw = call(&client, "/flood").await;
    assert_eq!(raw.reply().action, Action::Next);
    // Dropped records are counted before the reply; kept ones follow it.
    assert_eq!(
        host.host
            .stats()
            .records_dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        4000
    );
    let kept = || {
        host.records
            .records()
            .into_iter()
            .filter(|r| r.request_id.as_deref() == Some("/flood"))
            .count()
    };
    // A marker: the failure record of a later call, emitted by the same
    // worker after every record of the flood.
    assert_error(
        &call(&client, "/panic").await,
        500,
        "plugin `misbehave` trapped",
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !host
        .records
        .records()
        .iter()
        .any(|r| r.request_id.as_deref() == Some("/panic"))
    {
        assert!(Instant::now() < deadline, "no marker record within 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(kept(), natsplug::sandbox::MAX_RECORDS_PER_CALL);
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn failing_open_answers_next_with_a_note_and_no_error_headers() {
    let server = NatsServer::start();
    let (host, client) = start(&server, |config| {
        config
            .plugin
            .entry("misbehave".into())
            .or_default()
            .failure_mode
            .request_filter = Some(FailureMode::Open);
    })
    .await;
    let raw = call(&client, "/panic").await;
    let reply = raw.reply();
    assert_eq!(reply.action, Action::Next);
    assert_eq!(reply.request_headers, None);
    let note = reply.error.unwrap();
    assert!(
        note.starts_with("failed open: plugin `misbehave` trapped in request_filter: wasm `unreachable` instruction executed"),
        "{note}"
    );
    assert_eq!(raw.header("Nats-Service-Error"), None);
    assert_eq!(raw.header("Nats-Service-Error-Code"), None);
    // Still counted as an error and as a failure that failed open.
    assert_eq!(
        host.host
            .stats()
            .failed_open
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let status = host.host.status().await;
    let misbehave = status.iter().find(|p| p.name == "misbehave").unwrap();
    assert_eq!(misbehave.endpoints[0].stats.errors, 1);
    // Bad input is the caller's fault: it is never hidden by failing open.
    let raw = client
        .send_raw("misbehave", "request_filter", b"junk".to_vec())
        .await
        .unwrap();
    assert_error(&raw, 400, "malformed phase request");
    host.host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_its_limit_a_plugin_rejects_with_503_under_the_reject_policy() {
    let server = NatsServer::start();
    let (host, client) = start(&server, |config| {
        config.runtime.overload = OverloadPolicy::Reject;
        config
            .plugin
            .entry("misbehave".into())
            .or_default()
            .max_in_flight = Some(1);
    })
    .await;
    // The slow one takes the plugin's only slot, and the second finds it
    // taken.
    let slow = tokio::spawn({
        let client = client.clone();
        async move { call(&client, "/sleep").await }
    });
    until_in_flight(&host, 1).await;
    let rejected = call(&client, "/ok").await;
    let slow = slow.await.unwrap().reply();
    assert_eq!(slow.action, Action::Next);
    let reply = rejected.reply();
    assert_eq!(reply.action, Action::Error);
    assert_eq!(reply.request_id, "/ok");
    assert_eq!(
        reply.error.as_deref(),
        Some("plugin `misbehave` is at its concurrency limit; try again later")
    );
    assert_eq!(
        rejected
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error-Code"))
            .map(|v| v.as_str()),
        Some("503")
    );
    assert_eq!(
        host.host
            .stats()
            .overloaded
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The neighbour has its own limit and is unaffected.
    assert_eq!(neighbour_requests(client.clone(), 5).await, 5);
    host.host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_its_limit_a_plugin_queues_for_a_bounded_time_under_the_wait_policy() {
    let server = NatsServer::start();
    let (host, client) = start(&server, |config| {
        config.runtime.max_queue_wait_ms = 2000;
        config
            .plugin
            .entry("misbehave".into())
            .or_default()
            .max_in_flight = Some(1);
    })
    .await;
    let [slow, queued] = send_in_order(&client, ["/sleep", "/ok"]).await;
    for message in [slow, queued] {
        assert_eq!(
            natsplug_protocol::decode_reply(&message.payload)
                .unwrap()
                .action,
            Action::Next
        );
    }
    host.host.shutdown().await.unwrap();

    let (host, client) = start(&server, |config| {
        config.runtime.max_queue_wait_ms = 20;
        config
            .plugin
            .entry("misbehave".into())
            .or_default()
            .max_in_flight = Some(1);
    })
    .await;
    // The slow one holds the only slot for longer than the second waits.
    let slow = tokio::spawn({
        let client = client.clone();
        async move { call(&client, "/sleep").await }
    });
    until_in_flight(&host, 1).await;
    let expired = call(&client, "/ok").await;
    assert_eq!(slow.await.unwrap().reply().action, Action::Next);
    let reply = expired.reply();
    assert_eq!(
        reply.error.as_deref(),
        Some("plugin `misbehave` is at its concurrency limit; try again later")
    );
    host.host.shutdown().await.unwrap();
}

// One worker runs every call. A plugin with a backlog of slow calls and a
// neighbour with one call take turns on it: the neighbour waits for the
// slow call that is running, not for the backlog behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_plugins_backlog_delays_a_neighbour_by_one_call_at_most() {
    const SLOW_CALLS: usize = 6;
    let server = NatsServer::start();
    let (host, client) = start(&server, |config| {
        config.runtime.workers = 1;
        config.runtime.inline_call_max_us = 0;
        config.runtime.call_timeout_ms = 5000;
    })
    .await;
    let slow_answered = Arc::new(AtomicUsize::new(0));
    let slow: Vec<_> = (0..SLOW_CALLS)
        .map(|_| {
            let client = client.clone();
            let slow_answered = slow_answered.clone();
            tokio::spawn(async move {
                let raw = call(&client, "/sleep").await;
                slow_answered.fetch_add(1, Ordering::SeqCst);
                raw
            })
        })
        .collect();
    until_in_flight(&host, SLOW_CALLS).await;
    let before = slow_answered.load(Ordering::SeqCst);
    // Each slow call is busy for 100 ms: a backlog is still waiting.
    assert!(
        before + 2 <= SLOW_CALLS,
        "{before} of {SLOW_CALLS} slow calls were answered before the neighbour was sent"
    );
    assert_eq!(neighbour_requests(client.clone(), 1).await, 1);
    let during = slow_answered.load(Ordering::SeqCst) - before;
    assert!(
        during <= 1,
        "{during} slow calls were answered while the neighbour waited; at most 1 may be"
    );
    for handle in slow {
        assert_eq!(handle.await.unwrap().reply().action, Action::Next);
    }
    assert_eq!(slow_answered.load(Ordering::SeqCst), SLOW_CALLS);
    host.host.shutdown().await.unwrap();
}

/// Publish requests for `paths` on one connection, in order, and return
/// their replies in the same order.
async fn send_in_order<const N: usize>(
    client: &PhaseClient,
    paths: [&str; N],
) -> [async_nats::Message; N] {
    let inbox = client.client.new_inbox();
    let mut replies = client.client.subscribe(format!("{inbox}.*")).await.unwrap();
    for (index, path) in paths.iter().enumerate() {
        let payload =
            natsplug_protocol::encode_request(&request("request_filter", path, "GET", path));
        client
            .client
            .publish_with_reply(
                "nylon.plugin.misbehave.request_filter",
                format!("{inbox}.{index}"),
                payload.into(),
            )
            .await
            .unwrap();
    }
    let mut by_index: Vec<Option<async_nats::Message>> = (0..N).map(|_| None).collect();
    for _ in 0..N {
        let message = tokio::time::timeout(
            Duration::from_secs(5),
            futures::StreamExt::next(&mut replies),
        )
        .await
        .expect("a reply within 5 s")
        .unwrap();
        let index: usize = message.subject.rsplit('.').next().unwrap().parse().unwrap();
        by_index[index] = Some(message);
    }
    let messages: Vec<async_nats::Message> = by_index.into_iter().map(Option::unwrap).collect();
    messages
        .try_into()
        .unwrap_or_else(|_| unreachable!("N replies were collected"))
}

#[tokio::test]
async fn warm_instances_are_reused_and_recycled() {
    let calls_seen = |raw: RawReply| raw.reply().request_headers.unwrap().set[0].1.clone();
    let server = NatsServer::start();
    let (host, client) = start(&server, |config| {
        // Every call on the one worker: they meet one warm instance.
        config.runtime.workers = 1;
        config.runtime.inline_call_max_us = 0;
        config.runtime.max_calls_per_instance = 3;
    })
    .await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(calls_seen(call(&client, "/ok").await));
    }
    assert_eq!(
        seen,
        ["1", "2", "3", "1"],
        "reused, then recycled after 3 calls"
    );
    assert_error(
        &call(&client, "/panic").await,
        500,
        "plugin `misbehave` trapped",
    );
    assert_eq!(
        calls_seen(call(&client, "/ok").await),
        "1",
        "a trap discards the instance"
    );
    host.host.shutdown().await.unwrap();

    let (host, client) = start(&server, |config| {
        config.runtime.instance_mode = InstanceMode::Fresh
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            calls_seen(call(&client, "/ok").await),
            "1",
            "fresh: a new instance per call"
        );
    }
    host.host.shutdown().await.unwrap();
}

/// The header a misbehave reply counts its instance's calls in.
fn calls_seen(raw: &RawReply) -> String {
    raw.reply().request_headers.unwrap().set[0].1.clone()
}

// One lane and one worker: a plugin's first call, and any call after a
// slow one, runs on the worker, so the lane that reads NATS is not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_slow_call_runs_on_a_worker_without_holding_up_the_lane() {
    let (neighbours_first, seen) = lone_loop_then_neighbours(100_000).await;
    // The loop (the plugin's first call) ran on the worker, so the lane
    // read and answered the neighbours meanwhile.
    assert!(
        neighbours_first,
        "the neighbours were answered only after the looping call ended"
    );
    // The loop was long: the next request went to the worker too. The one
    // after it was short again and ran on the lane, on an instance of its
    // own (the looping one was discarded).
    assert_eq!(seen, ["1", "1", "2"], "worker, then the lane twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn with_inline_calls_off_every_request_runs_on_a_worker() {
    let (neighbours_first, seen) = lone_loop_then_neighbours(0).await;
    // The neighbours wait for the one worker.
    assert!(
        !neighbours_first,
        "the neighbours were answered while the one worker was looping"
    );
    assert_eq!(seen, ["1", "2", "3"], "one worker, one instance");
}

/// On a host with one worker and `inline_call_max_us` as given: a request
/// that loops until its deadline, sent alone, then five neighbour requests
/// while it loops, then three well-behaved ones to the looping plugin.
/// Whether the neighbours were answered before the loop ended, and the
/// instance call counts of the three.
async fn lone_loop_then_neighbours(inline_call_max_us: u64) -> (bool, Vec<String>) {
    let server = NatsServer::start();
    let (host, client) = start(&server, |config| {
        config.runtime.workers = 1;
        config.runtime.call_timeout_ms = 1500;
        config.runtime.inline_call_max_us = inline_call_max_us;
    })
    .await;
    // The neighbour has been called before: its calls are known short.
    assert_eq!(neighbour_requests(client.clone(), 1).await, 1);
    let looping = tokio::spawn({
        let client = client.clone();
        async move { call(&client, "/loop").await }
    });
    until_in_flight(&host, 1).await;
    assert_eq!(neighbour_requests(client.clone(), 5).await, 5);
    let neighbours_first = !looping.is_finished();
    assert_error(
        &looping.await.unwrap(),
        504,
        "plugin `misbehave` exceeded its 1500 ms deadline",
    );
    let seen = [
        call(&client, "/ok").await,
        call(&client, "/ok").await,
        call(&client, "/ok").await,
    ]
    .iter()
    .map(calls_seen)
    .collect();
    host.host.shutdown().await.unwrap();
    (neighbours_first, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn shutdown_waits_for_a_call_running_where_it_was_received() {
    let server = NatsServer::start();
    let (host, client) = start(&server, |_| {}).await;
    // A short first call (on a worker), so the next one runs on the lane.
    assert_eq!(call(&client, "/ok").await.reply().action, Action::Next);
    let sleeping = tokio::spawn({
        let client = client.clone();
        async move { call(&client, "/sleep").await }
    });
    until_in_flight(&host, 1).await;
    host.host.shutdown().await.unwrap();
    assert_eq!(
        host.host.in_flight(),
        0,
        "shutdown returned while the call was still running"
    );
    assert_eq!(calls_seen(&sleeping.await.unwrap()), "1");
}
