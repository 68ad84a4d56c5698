//! Scaling out: hosts started in one queue group share the load fairly,
//! and a host added while the load runs takes its share with no failed
//! request. Hosts are real `natsplug up` processes; each names the header
//! the header injector sets differently, so every reply says who answered.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use natsplug_protocol::{self as protocol, PhaseReply};
use natsplug_suite::client::request;
use natsplug_suite::host::install_file;
use natsplug_suite::{NatsServer, UpProcess, guests};

const SUBJECT: &str = "nylon.plugin.header-injector.request_filter";

/// A host whose header injector sets header `x-host-{id}`.
struct Host {
    _process: UpProcess,
    _dirs: [tempfile::TempDir; 3],
}

fn start_host(url: &str, id: usize) -> Host {
    let plugins = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let config = tempfile::tempdir().unwrap();
    install_file(plugins.path(), "header-injector", guests::HEADER_INJECTOR);
    let file = config.path().join("natsplug.toml");
    std::fs::write(
        &file,
        format!("[plugin.header-injector.config]\nheader = \"x-host-{id}\"\n"),
    )
    .unwrap();
    let process = UpProcess::start(&[
        "--nats",
        url,
        "--config",
        file.to_str().unwrap(),
        "--plugins",
        plugins.path().to_str().unwrap(),
        "--cache-dir",
        cache.path().to_str().unwrap(),
    ]);
    Host {
        _process: process,
        _dirs: [plugins, cache, config],
    }
}

fn answered_by(reply: &PhaseReply) -> String {
    reply
        .request_headers
        .as_ref()
        .expect("header mutations")
        .set
        .iter()
        .map(|(name, _)| name.to_string())
        .find(|name| name.starts_with("x-host-"))
        .expect("a host header")
}

async fn send(client: &async_nats::Client, id: &str) -> Result<String, String> {
    let payload = protocol::encode_request(&request("request_filter", id, "GET", "/"));
    match tokio::time::timeout(
        Duration::from_secs(10),
        client.request(SUBJECT, payload.into()),
    )
    .await
    {
        Ok(Ok(message)) => protocol::decode_reply(&message.payload)
            .map(|reply| answered_by(&reply))
            .map_err(|e| format!("{id}: undecodable reply: {e}")),
        Ok(Err(error)) => Err(format!("{id}: {error}")),
        Err(_) => Err(format!("{id}: no reply within 10 s")),
    }
}

/// Wait (at most 20 s) until `counter` reaches `target`.
async fn until_count(counter: &AtomicU64, target: u64, what: &str) {
    let started = Instant::now();
    while counter.load(Ordering::Relaxed) < target {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: {} of {target} within 20 s",
            counter.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_in_one_queue_group_each_take_a_fair_share() {
    const REQUESTS: usize = 3000;
    const IN_FLIGHT: usize = 16;
    let server = NatsServer::start();
    let _hosts: Vec<Host> = (0..3).map(|id| start_host(&server.url(), id)).collect();
    let client = server.connect().await;

    let mut senders = Vec::new();
    for sender in 0..IN_FLIGHT {
        let client = client.clone();
        senders.push(tokio::spawn(async move {
            let mut answered = Vec::new();
            for index in (sender..REQUESTS).step_by(IN_FLIGHT) {
                answered.push(send(&client, &index.to_string()).await);
            }
            answered
        }));
    }
    let mut shares = BTreeMap::<String, usize>::new();
    for sender in senders {
        for answer in sender.await.unwrap() {
            *shares
                .entry(answer.expect("every request answered"))
                .or_default() += 1;
        }
    }
    eprintln!("shares of {REQUESTS} requests: {shares:?}");
    assert_eq!(shares.len(), 3, "{shares:?}");
    assert_eq!(shares.values().sum::<usize>(), REQUESTS);
    // NATS picks a queue member uniformly at random: a host's share is
    // binomial (n = 3000, p = 1/3), standard deviation about 26, so ±250
    // is more than 9 standard deviations (odds below 1e-20).
    for (host, count) in &shares {
        assert!(
            (750..=1250).contains(count),
            "{host} took {count} of {REQUESTS}: {shares:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_added_under_load_takes_traffic_without_errors() {
    let server = NatsServer::start();
    let first = vec![start_host(&server.url(), 0), start_host(&server.url(), 1)];
    let client = server.connect().await;
    let running = Arc::new(AtomicBool::new(true));
    let joined = Arc::new(AtomicBool::new(false));
    // Replies so far, and replies to requests sent after the third host joined.
    let replies = Arc::new(AtomicU64::new(0));
    let replies_after = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for sender in 0..4 {
        let client = client.clone();
        let running = running.clone();
        let joined = joined.clone();
        let (replies, replies_after) = (replies.clone(), replies_after.clone());
        senders.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut index = 0;
            while running.load(Ordering::Relaxed) {
                let after_join = joined.load(Ordering::Relaxed);
                answers.push((
                    send(&client, &format!("{sender}-{index}")).await,
                    after_join,
                ));
                replies.fetch_add(1, Ordering::Relaxed);
                if after_join {
                    replies_after.fetch_add(1, Ordering::Relaxed);
                }
                index += 1;
            }
            answers
        }));
    }
    until_count(&replies, 200, "replies from the first two hosts").await;
    // `start_host` returns once the new host printed its ready line.
    let third = tokio::task::spawn_blocking({
        let url = server.url();
        move || start_host(&url, 2)
    });
    let third = third.await.unwrap();
    joined.store(true, Ordering::Relaxed);
    until_count(&replies_after, 600, "replies after the join").await;
    running.store(false, Ordering::Relaxed);

    let mut answers = Vec::new();
    for sender in senders {
        answers.extend(sender.await.unwrap());
    }
    let failures: Vec<&String> = answers
        .iter()
        .filter_map(|(answer, _)| answer.as_ref().err())
        .collect();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    let after: Vec<&String> = answers
        .iter()
        .filter(|(_, after_join)| *after_join)
        .map(|(answer, _)| answer.as_ref().unwrap())
        .collect();
    let by_new_host = after.iter().filter(|host| **host == "x-host-2").count();
    eprintln!(
        "{} requests in all; {} after the third host joined, {by_new_host} answered by it",
        answers.len(),
        after.len()
    );
    assert!(
        by_new_host * 10 >= after.len(),
        "the new host answered {by_new_host} of {} requests after it joined",
        after.len()
    );
    drop((first, third));
}
