//! Scaling out: hosts in one queue group share the requests, and each
//! request is answered exactly once.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use natsplug_suite::client::request;
use natsplug_suite::{NatsServer, TestHost, guests};

#[tokio::test]
async fn two_hosts_share_work_and_answer_each_request_once() {
    let server = NatsServer::start();
    let first = TestHost::start(
        &server.url(),
        &[("header-injector", guests::HEADER_INJECTOR)],
        |_| {},
    )
    .await;
    let second = TestHost::start(
        &server.url(),
        &[("header-injector", guests::HEADER_INJECTOR)],
        |_| {},
    )
    .await;

    // Count replies by hand: one inbox, every reply that arrives on it.
    let client = server.connect().await;
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(format!("{inbox}.*")).await.unwrap();
    const REQUESTS: usize = 400;
    for index in 0..REQUESTS {
        let payload = natsplug_protocol::encode_request(&request(
            "request_filter",
            &format!("q-{index}"),
            "GET",
            "/",
        ));
        client
            .publish_with_reply(
                "nylon.plugin.header-injector.request_filter",
                format!("{inbox}.{index}"),
                payload.into(),
            )
            .await
            .unwrap();
    }
    client.flush().await.unwrap();

    let mut seen = HashSet::new();
    while seen.len() < REQUESTS {
        let message = tokio::time::timeout(Duration::from_secs(10), replies.next())
            .await
            .expect("every request answered within 10 s")
            .unwrap();
        let reply = natsplug_protocol::decode_reply(&message.payload).unwrap();
        assert_eq!(
            message.subject.as_str(),
            format!("{inbox}.{}", &reply.request_id[2..])
        );
        assert!(
            seen.insert(reply.request_id.clone()),
            "{} answered twice",
            reply.request_id
        );
    }
    // No late duplicates either: a host counts a request before it
    // replies, and between them the hosts served each request once.
    let (a, b) = (served(&first).await, served(&second).await);
    assert_eq!(a + b, REQUESTS as u64);
    assert!(a > 0 && b > 0, "both hosts take work: {a} + {b}");
    first.host.shutdown().await.unwrap();
    second.host.shutdown().await.unwrap();
}

async fn served(host: &TestHost) -> u64 {
    host.host.status().await[0].endpoints[0].stats.requests
}
