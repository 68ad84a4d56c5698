//! The caller library against real hosts: chains of example plugins over a
//! real nats-server, with exact assertions on the exchange and on the
//! chain's counters.

use std::time::{Duration, Instant};

use futures::StreamExt;
use natsplug::HostConfig;
use natsplug::logs::LogValue;
use natsplug_client::{
    CallError, Chain, DiscoveryConfig, Exchange, FailureMode, HttpRequest, HttpResponse, Knowledge,
    LatencySnapshot, Phase, PhaseStats, PluginConfig, StatsSnapshot, Verdict,
};
use natsplug_suite::host::install_file;
use natsplug_suite::{NatsServer, TestHost, guests};

/// A host serving `plugins` (name, component) that also answers `$SRV.INFO`.
async fn serve(
    server: &NatsServer,
    plugins: &[(&str, &str)],
    configure: impl FnOnce(&mut HostConfig),
) -> TestHost {
    let host = TestHost::start(&server.url(), plugins, configure).await;
    natsplug::discovery::serve(host.host.clone())
        .await
        .expect("serving discovery");
    // The discovery subscriptions are in place once the server has them.
    host.host.client().flush().await.expect("flushing");
    host
}

fn set(config: &mut HostConfig, plugin: &str, key: &str, value: &str) {
    config
        .plugin
        .entry(plugin.into())
        .or_default()
        .config
        .insert(key.into(), value.into());
}

/// Discovery that may be refreshed after every no responders.
fn eager_discovery() -> DiscoveryConfig {
    DiscoveryConfig {
        min_gap_ms: 0,
        ..DiscoveryConfig::default()
    }
}

async fn chain(server: &NatsServer, plugins: Vec<PluginConfig>) -> Chain {
    let mut builder = Chain::builder(server.connect().await).discovery(eager_discovery());
    for plugin in plugins {
        builder = builder.plugin_with(plugin);
    }
    builder.build().await.expect("building the chain")
}

fn get(path: &str, headers: &[(&str, &str)]) -> HttpRequest {
    HttpRequest {
        method: "GET".into(),
        path: path.into(),
        headers: pairs(headers),
        ..Default::default()
    }
}

fn pairs(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// The counters of `plugin` in `phase`, with every call's duration
/// checked to be in the latency histogram exactly once (and then left out,
/// so the counts compare exactly).
fn stats(snapshot: &StatsSnapshot, plugin: &str, phase: Phase) -> PhaseStats {
    let mut stats = snapshot
        .get(plugin, phase)
        .unwrap_or_else(|| panic!("{plugin} is in the chain"))
        .clone();
    assert_eq!(
        stats.latency.count(),
        stats.calls,
        "{plugin} {phase}: one duration per call"
    );
    stats.latency = LatencySnapshot::default();
    stats
}

fn calls(n: u64) -> PhaseStats {
    PhaseStats {
        calls: n,
        ..PhaseStats::default()
    }
}

fn skipped(n: u64) -> PhaseStats {
    PhaseStats {
        skipped: n,
        ..PhaseStats::default()
    }
}

/// Wait (at most 5 s) until `probe` holds.
async fn wait_until(what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !probe() {
        assert!(Instant::now() < deadline, "{what}: not within 5 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A host with three request filters, and `auth-clobber`: the header
/// injector writing its request id into `authorization`.
async fn filters_host(server: &NatsServer) -> TestHost {
    serve(
        server,
        &[
            ("header-injector", guests::HEADER_INJECTOR),
            ("auth-clobber", guests::HEADER_INJECTOR),
            ("authz", guests::AUTHZ),
            ("misbehave", guests::MISBEHAVE),
        ],
        |config| {
            set(config, "header-injector", "header", "x-trace");
            set(config, "auth-clobber", "header", "authorization");
            set(config, "authz", "token", "s3cret");
        },
    )
    .await
}

#[tokio::test]
async fn request_filter_applies_each_plugin_before_the_next() {
    let server = NatsServer::start();
    let host = filters_host(&server).await;
    let chain = chain(
        &server,
        vec![
            PluginConfig::new("header-injector"),
            PluginConfig::new("authz"),
            PluginConfig::new("misbehave"),
        ],
    )
    .await;
    let mut exchange = chain.exchange(get(
        "/ok",
        &[
            ("accept", "*/*"),
            ("X-Trace", "from-the-client"),
            ("authorization", "Bearer s3cret"),
        ],
    ));
    assert_eq!(
        chain.request_filter(&mut exchange).await,
        Ok(Verdict::Continue)
    );

    // The injector replaced the client's x-trace with its request id (the
    // exchange's first call), authz removed the token, misbehave added its
    // count: each change appended in chain order.
    let headers = &exchange.request.headers;
    let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["accept", "x-plugin", "x-trace", "x-calls"]);
    assert_eq!(headers[1].1, "header-injector");
    assert!(headers[2].1.ends_with("-1"), "{headers:?}");
    assert_eq!(headers[3].1, "1");
    assert_eq!(exchange.request.path, "/ok");

    let snapshot = chain.stats();
    for plugin in ["header-injector", "authz", "misbehave"] {
        assert_eq!(
            stats(&snapshot, plugin, Phase::RequestFilter),
            calls(1),
            "{plugin}"
        );
        for phase in [
            Phase::ResponseFilter,
            Phase::ResponseBodyFilter,
            Phase::Logging,
        ] {
            assert_eq!(stats(&snapshot, plugin, phase), PhaseStats::default());
        }
    }
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_exchange_sends_its_calls_on_the_connection_it_is_given() {
    // The hosts are on one server; the chain's own connection is to
    // another, where nothing answers.
    let served = NatsServer::start();
    let host = filters_host(&served).await;
    let empty = NatsServer::start();
    let chain = chain(&empty, vec![PluginConfig::new("header-injector")]).await;

    let mut given = chain.exchange(get("/given", &[]));
    given.connection = Some(served.connect().await);
    assert_eq!(
        chain.request_filter(&mut given).await,
        Ok(Verdict::Continue)
    );
    let names: Vec<&str> = given
        .request
        .headers
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(names, ["x-plugin", "x-trace"]);

    let mut own = chain.exchange(get("/own", &[]));
    let failure = chain
        .request_filter(&mut own)
        .await
        .expect_err("no host on the chain's own connection");
    assert!(
        matches!(failure.error, CallError::NoResponders { .. }),
        "{failure}"
    );
    assert_eq!(failure.status(), 502);

    let stats = &chain.stats();
    let injector = stats.get("header-injector", Phase::RequestFilter).unwrap();
    assert_eq!((injector.calls, injector.failed_closed), (2, 1));
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_end_answers_the_client_and_stops_the_chain() {
    let server = NatsServer::start();
    let host = filters_host(&server).await;
    let chain = chain(
        &server,
        vec![
            PluginConfig::new("auth-clobber"),
            PluginConfig::new("authz"),
            PluginConfig::new("misbehave"),
        ],
    )
    .await;
    // The client's token is right, but authz sees what the plugin before
    // it wrote over it: no bearer token, so 401.
    let mut exchange = chain.exchange(get("/admin", &[("authorization", "Bearer s3cret")]));
    let Ok(Verdict::Respond(local)) = chain.request_filter(&mut exchange).await else {
        panic!("authz answers the client");
    };
    assert_eq!(local.plugin, "authz");
    assert_eq!(local.status, 401);
    assert_eq!(
        local.headers,
        pairs(&[
            ("content-type", "application/json"),
            ("www-authenticate", "Bearer")
        ])
    );
    assert_eq!(
        local.body,
        br#"{"error":"unauthorized","message":"a bearer token is required"}"#
    );
    assert_eq!(exchange.response, Some(local.to_http_response()));

    let snapshot = chain.stats();
    assert_eq!(
        stats(&snapshot, "auth-clobber", Phase::RequestFilter),
        calls(1)
    );
    assert_eq!(
        stats(&snapshot, "authz", Phase::RequestFilter),
        PhaseStats {
            calls: 1,
            ended: 1,
            ..PhaseStats::default()
        }
    );
    assert_eq!(
        stats(&snapshot, "misbehave", Phase::RequestFilter),
        PhaseStats::default()
    );
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn body_filters_chain_their_output_and_carry_their_own_state() {
    let server = NatsServer::start();
    let host = serve(
        &server,
        &[
            ("redact-secret", guests::BODY_REDACTOR),
            ("redact-token", guests::BODY_REDACTOR),
        ],
        |config| set(config, "redact-token", "pattern", "token"),
    )
    .await;
    let chain = chain(
        &server,
        vec![
            PluginConfig::new("redact-secret"),
            PluginConfig::new("redact-token"),
        ],
    )
    .await;
    let mut exchange = chain.exchange(get("/doc", &[]));
    let response = HttpResponse {
        status: 200,
        headers: pairs(&[("content-type", "text/plain")]),
        body: None,
    };
    assert_eq!(
        chain.response_filter(&mut exchange, response).await,
        Ok(Verdict::Continue)
    );
    // Both words are split across chunks.
    let pieces: [&[u8]; 4] = [b"the sec", b"ret tok", b"en: tok", b"en is secret"];
    let mut outputs = Vec::new();
    for (index, piece) in pieces.iter().enumerate() {
        let last = index == pieces.len() - 1;
        let output = chain
            .response_body_filter(&mut exchange, piece.to_vec(), last)
            .await
            .expect("a filtered chunk");
        assert_eq!(output.end_of_stream, last);
        outputs.push(String::from_utf8(output.data).unwrap());
    }
    // The first chunk is held back entirely: `redact-secret` keeps 5 bytes
    // and passes "th", which `redact-token` keeps as its own 4.
    assert_eq!(outputs[0], "");
    assert_eq!(outputs.concat(), "the ****** *****: ***** is ******");
    assert!(exchange.body_finished());

    let snapshot = chain.stats();
    for plugin in ["redact-secret", "redact-token"] {
        assert_eq!(
            stats(&snapshot, plugin, Phase::ResponseBodyFilter),
            calls(4)
        );
        assert_eq!(stats(&snapshot, plugin, Phase::ResponseFilter), skipped(1));
    }
    host.host.shutdown().await.unwrap();
}

/// Misbehave on one host (its calls may occupy every worker), the header
/// injector on another.
async fn misbehave_hosts(server: &NatsServer) -> (TestHost, TestHost) {
    let misbehave = serve(server, &[("misbehave", guests::MISBEHAVE)], |config| {
        config.runtime.workers = 2;
        config.runtime.call_timeout_ms = 500;
    })
    .await;
    let injector = serve(
        server,
        &[("header-injector", guests::HEADER_INJECTOR)],
        |_| {},
    )
    .await;
    (misbehave, injector)
}

#[tokio::test]
async fn a_timeout_fails_closed_with_504_or_open_past_the_plugin() {
    let server = NatsServer::start();
    let (misbehave, injector) = misbehave_hosts(&server).await;
    let closed = chain(
        &server,
        vec![
            PluginConfig::new("misbehave")
                .timeout(Duration::from_millis(100))
                .max_retries(0),
            PluginConfig::new("header-injector"),
        ],
    )
    .await;
    let started = Instant::now();
    let mut exchange = closed.exchange(get("/loop", &[]));
    let failure = closed.request_filter(&mut exchange).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(400), "{elapsed:?}");
    assert_eq!(failure.status(), 504);
    assert_eq!(failure.plugin, "misbehave");
    assert!(
        matches!(failure.error, CallError::Timeout { .. }),
        "{failure:?}"
    );
    let snapshot = closed.stats();
    assert_eq!(
        stats(&snapshot, "misbehave", Phase::RequestFilter),
        PhaseStats {
            calls: 1,
            timeouts: 1,
            failed_closed: 1,
            ..PhaseStats::default()
        }
    );
    assert_eq!(
        stats(&snapshot, "header-injector", Phase::RequestFilter),
        PhaseStats::default()
    );

    // Open, with the default two retries inside a 150 ms budget.
    let open = chain(
        &server,
        vec![
            PluginConfig::new("misbehave")
                .timeout(Duration::from_millis(150))
                .failure_mode(FailureMode::Open),
            PluginConfig::new("header-injector"),
        ],
    )
    .await;
    let started = Instant::now();
    let mut exchange = open.exchange(get("/loop", &[("accept", "*/*")]));
    assert_eq!(
        open.request_filter(&mut exchange).await,
        Ok(Verdict::Continue)
    );
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(450), "{elapsed:?}");
    let names: Vec<&str> = exchange
        .request
        .headers
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(names, ["accept", "x-plugin", "x-request-id"]);
    let snapshot = open.stats();
    assert_eq!(
        stats(&snapshot, "misbehave", Phase::RequestFilter),
        PhaseStats {
            calls: 1,
            retries: 2,
            timeouts: 3,
            failed_open: 1,
            ..PhaseStats::default()
        }
    );
    assert_eq!(
        stats(&snapshot, "header-injector", Phase::RequestFilter),
        calls(1)
    );
    injector.host.shutdown().await.unwrap();
    misbehave.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_trapping_plugin_fails_closed_with_500_or_open_past_it() {
    let server = NatsServer::start();
    let (misbehave, injector) = misbehave_hosts(&server).await;
    let closed = chain(
        &server,
        vec![
            PluginConfig::new("misbehave"),
            PluginConfig::new("header-injector"),
        ],
    )
    .await;
    let mut exchange = closed.exchange(get("/panic", &[]));
    let failure = closed.request_filter(&mut exchange).await.unwrap_err();
    assert_eq!(failure.status(), 500);
    let CallError::Host { code, message, .. } = &failure.error else {
        panic!("a host error reply: {failure:?}");
    };
    assert_eq!(*code, 500);
    assert!(
        message.starts_with("plugin `misbehave` trapped in request_filter"),
        "{message}"
    );
    let snapshot = closed.stats();
    // An error reply is an answer: not retried.
    assert_eq!(
        stats(&snapshot, "misbehave", Phase::RequestFilter),
        PhaseStats {
            calls: 1,
            error_replies: [(500, 1)].into(),
            failed_closed: 1,
            ..PhaseStats::default()
        }
    );
    assert_eq!(
        stats(&snapshot, "header-injector", Phase::RequestFilter),
        PhaseStats::default()
    );

    let open = chain(
        &server,
        vec![
            PluginConfig::new("misbehave").failure_mode(FailureMode::Open),
            PluginConfig::new("header-injector"),
        ],
    )
    .await;
    let mut exchange = open.exchange(get("/panic", &[]));
    assert_eq!(
        open.request_filter(&mut exchange).await,
        Ok(Verdict::Continue)
    );
    let names: Vec<&str> = exchange
        .request
        .headers
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(names, ["x-plugin", "x-request-id"]);
    let snapshot = open.stats();
    assert_eq!(
        stats(&snapshot, "misbehave", Phase::RequestFilter),
        PhaseStats {
            calls: 1,
            error_replies: [(500, 1)].into(),
            failed_open: 1,
            ..PhaseStats::default()
        }
    );
    assert_eq!(
        stats(&snapshot, "header-injector", Phase::RequestFilter),
        calls(1)
    );
    injector.host.shutdown().await.unwrap();
    misbehave.host.shutdown().await.unwrap();
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn phases_a_plugin_lacks_are_skipped_without_a_request() {
    let server = NatsServer::start();
    let host = serve(
        &server,
        &[
            ("header-injector", guests::HEADER_INJECTOR),
            ("body-redactor", guests::BODY_REDACTOR),
            ("access-logger", guests::ACCESS_LOGGER),
        ],
        |config| set(config, "header-injector", "header", "user-agent"),
    )
    .await;
    // Every phase request on the wire, seen from the side.
    let spy_client = server.connect().await;
    let mut spy = spy_client.subscribe("nylon.plugin.>").await.unwrap();
    spy_client.flush().await.unwrap();

    let client = server.connect().await;
    let chain = Chain::builder(client.clone())
        .plugin("header-injector")
        .plugin("body-redactor")
        .plugin("access-logger")
        .build()
        .await
        .unwrap();
    assert_eq!(chain.stats().discovery_refreshes, 1);
    let directory = chain.directory();
    assert_eq!(
        directory.phases("header-injector"),
        Some(vec![Phase::RequestFilter])
    );
    assert_eq!(
        directory.phases("body-redactor"),
        Some(vec![Phase::ResponseBodyFilter])
    );
    assert_eq!(
        directory.phases("access-logger"),
        Some(vec![Phase::Logging])
    );
    assert_eq!(
        directory.knowledge("access-logger", Phase::RequestFilter),
        Knowledge::NotImplemented
    );

    let mut exchange = chain.exchange(get("/doc", &[("user-agent", "curl/8")]));
    exchange.traceparent = Some(TRACEPARENT.into());
    assert_eq!(
        chain.request_filter(&mut exchange).await,
        Ok(Verdict::Continue)
    );
    let response = HttpResponse {
        status: 200,
        ..Default::default()
    };
    assert_eq!(
        chain.response_filter(&mut exchange, response).await,
        Ok(Verdict::Continue)
    );
    let mut body = Vec::new();
    for (piece, last) in [(&b"a sec"[..], false), (&b"ret"[..], true)] {
        let output = chain
            .response_body_filter(&mut exchange, piece.to_vec(), last)
            .await
            .unwrap();
        body.extend(output.data);
    }
    assert_eq!(body, b"a ******");
    assert!(chain.logging(&mut exchange));
    let session = Some(exchange.session_id());
    let logged = || {
        host.records
            .records()
            .into_iter()
            .find(|r| r.plugin == "access-logger" && r.session_id == session)
    };
    wait_until("the access log record", || logged().is_some()).await;

    // The logger saw the request as the injector left it.
    let record = logged().unwrap();
    assert_eq!(record.message, "GET /doc 200");
    assert_eq!(
        record.trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    let user_agent = exchange
        .request
        .headers
        .iter()
        .find(|(n, _)| n == "user-agent")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert!(
        record
            .fields
            .contains(&("user_agent".to_string(), LogValue::Text(user_agent)))
    );

    let snapshot = chain.stats();
    let expected = [
        (
            "header-injector",
            [calls(1), skipped(1), skipped(2), skipped(1)],
        ),
        (
            "body-redactor",
            [skipped(1), skipped(1), calls(2), skipped(1)],
        ),
        (
            "access-logger",
            [skipped(1), skipped(1), skipped(2), calls(1)],
        ),
    ];
    for (plugin, phases) in expected {
        for (phase, want) in Phase::ALL.into_iter().zip(phases) {
            assert_eq!(stats(&snapshot, plugin, phase), want, "{plugin} {phase}");
        }
    }

    // Only the four implemented calls went out, each with the trace
    // context: the end marker, published after them on the same
    // connection, arrives after them.
    client
        .publish("nylon.plugin.end.marker", "".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let mut subjects = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), spy.next())
            .await
            .expect("the spy's messages within 5 s")
            .unwrap();
        if message.subject.as_str() == "nylon.plugin.end.marker" {
            break;
        }
        let traceparent = message
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.as_str().to_string());
        assert_eq!(traceparent.as_deref(), Some(TRACEPARENT));
        subjects.push(message.subject.to_string());
    }
    assert_eq!(
        subjects,
        [
            "nylon.plugin.header-injector.request_filter",
            "nylon.plugin.body-redactor.response_body_filter",
            "nylon.plugin.body-redactor.response_body_filter",
            "nylon.plugin.access-logger.logging",
        ]
    );
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_phase_a_reloaded_plugin_gains_is_called_once_its_host_announces_it() {
    let server = NatsServer::start();
    let host = serve(&server, &[("shifty", guests::HEADER_INJECTOR)], |_| {}).await;
    // No timed refresh within the test: only the announcement can teach.
    let chain = Chain::builder(server.connect().await)
        .discovery(DiscoveryConfig {
            refresh_ms: 3_600_000,
            ..DiscoveryConfig::default()
        })
        .plugin("shifty")
        .build()
        .await
        .unwrap();
    let directory = chain.directory();
    assert_eq!(
        directory.knowledge("shifty", Phase::ResponseFilter),
        Knowledge::NotImplemented
    );
    let response = HttpResponse {
        status: 200,
        ..Default::default()
    };
    let mut before = chain.exchange(get("/doc", &[]));
    assert_eq!(
        chain.request_filter(&mut before).await,
        Ok(Verdict::Continue)
    );
    assert_eq!(
        chain.response_filter(&mut before, response.clone()).await,
        Ok(Verdict::Continue)
    );
    assert_eq!(before.response.as_ref().unwrap().status, 200);

    // A new version of the plugin that also implements response_filter
    // (it adds one to the status).
    let file = install_file(host.plugins_dir(), "shifty", guests::EVERY_PHASE);
    assert_eq!(
        host.host.sync_file(&file).await.unwrap(),
        natsplug::server::SyncOutcome::Reloaded
    );
    wait_until("the announced phase", || {
        directory.knowledge("shifty", Phase::ResponseFilter) == Knowledge::Implemented
    })
    .await;
    assert_eq!(directory.announcements(), 1);
    assert_eq!(
        chain.stats().discovery_refreshes,
        1,
        "learned without a refresh"
    );

    let mut after = chain.exchange(get("/doc", &[]));
    assert_eq!(
        chain.request_filter(&mut after).await,
        Ok(Verdict::Continue)
    );
    assert_eq!(
        chain.response_filter(&mut after, response).await,
        Ok(Verdict::Continue)
    );
    assert_eq!(after.response.as_ref().unwrap().status, 201);
    assert_eq!(
        stats(&chain.stats(), "shifty", Phase::ResponseFilter),
        PhaseStats {
            calls: 1,
            skipped: 1,
            ..PhaseStats::default()
        }
    );
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn no_responders_on_a_phase_the_hosts_lack_teaches_and_is_not_an_error() {
    let server = NatsServer::start();
    // The chain learns every phase of the plugin's first version; the
    // second has request_filter only.
    let host = serve(&server, &[("header-injector", guests::EVERY_PHASE)], |_| {}).await;
    let chain = chain(&server, vec![PluginConfig::new("header-injector")]).await;
    let knowledge = || {
        chain
            .directory()
            .knowledge("header-injector", Phase::ResponseFilter)
    };
    assert_eq!(knowledge(), Knowledge::Implemented);
    let file = install_file(
        host.plugins_dir(),
        "header-injector",
        guests::HEADER_INJECTOR,
    );
    assert_eq!(
        host.host.sync_file(&file).await.unwrap(),
        natsplug::server::SyncOutcome::Reloaded
    );
    // Once the server has the dropped phase's subscription gone...
    let probe = server.connect().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe
        .request("nylon.plugin.header-injector.response_filter", "".into())
        .await
        .map_or_else(
            |error| error.kind() != async_nats::RequestErrorKind::NoResponders,
            |_| true,
        )
    {
        assert!(Instant::now() < deadline, "response_filter still served");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...the chain still takes the phase as implemented: an announcement
    // speaks for one host, so it teaches phases but unlearns none.
    assert_eq!(knowledge(), Knowledge::Implemented);

    let mut exchange = chain.exchange(get("/", &[]));
    assert_eq!(
        chain.request_filter(&mut exchange).await,
        Ok(Verdict::Continue)
    );
    let response = HttpResponse {
        status: 204,
        ..Default::default()
    };
    assert_eq!(
        chain.response_filter(&mut exchange, response.clone()).await,
        Ok(Verdict::Continue)
    );
    assert_eq!(exchange.response, Some(response.clone()));
    let learned = PhaseStats {
        calls: 1,
        no_responders: 1,
        skipped: 1,
        ..PhaseStats::default()
    };
    assert_eq!(
        stats(&chain.stats(), "header-injector", Phase::ResponseFilter),
        learned
    );
    assert_eq!(
        chain
            .directory()
            .knowledge("header-injector", Phase::ResponseFilter),
        Knowledge::NotImplemented
    );

    // The next exchange sends nothing for it.
    let mut next: Exchange = chain.exchange(get("/", &[]));
    assert_eq!(
        chain.response_filter(&mut next, response).await,
        Ok(Verdict::Continue)
    );
    assert_eq!(
        stats(&chain.stats(), "header-injector", Phase::ResponseFilter),
        PhaseStats {
            skipped: 2,
            ..learned
        }
    );
    assert_eq!(
        stats(&chain.stats(), "header-injector", Phase::RequestFilter),
        calls(1)
    );
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_retry_reaches_a_plugin_that_appears_during_the_call() {
    let server = NatsServer::start();
    let host = serve(&server, &[("authz", guests::AUTHZ)], |_| {}).await;
    // One retry in 3 s: after the first no responders, the call waits
    // about half of that before trying again.
    let chain = chain(
        &server,
        vec![
            PluginConfig::new("header-injector")
                .timeout(Duration::from_secs(3))
                .max_retries(1),
        ],
    )
    .await;
    let call = tokio::spawn({
        let chain = chain.clone();
        async move {
            let mut exchange = chain.exchange(get("/", &[]));
            let verdict = chain.request_filter(&mut exchange).await;
            (verdict, exchange)
        }
    });
    wait_until("the first no responders", || {
        chain
            .stats()
            .get("header-injector", Phase::RequestFilter)
            .is_some_and(|s| s.no_responders == 1)
    })
    .await;
    let file = install_file(
        host.plugins_dir(),
        "header-injector",
        guests::HEADER_INJECTOR,
    );
    host.host.sync_file(&file).await.unwrap();

    let (verdict, exchange) = call.await.unwrap();
    assert_eq!(verdict, Ok(Verdict::Continue));
    assert_eq!(exchange.request.headers[0].0, "x-plugin");
    assert_eq!(
        stats(&chain.stats(), "header-injector", Phase::RequestFilter),
        PhaseStats {
            calls: 1,
            retries: 1,
            no_responders: 1,
            ..PhaseStats::default()
        }
    );
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stopped_host_costs_bounded_retries_then_fails_by_policy() {
    let server = NatsServer::start();
    let host = serve(
        &server,
        &[("header-injector", guests::HEADER_INJECTOR)],
        |_| {},
    )
    .await;
    let policy = PluginConfig::new("header-injector").timeout(Duration::from_millis(300));
    let closed = chain(&server, vec![policy.clone()]).await;
    let open = chain(&server, vec![policy.failure_mode(FailureMode::Open)]).await;
    for chain in [&closed, &open] {
        let mut exchange = chain.exchange(get("/", &[]));
        assert_eq!(
            chain.request_filter(&mut exchange).await,
            Ok(Verdict::Continue)
        );
    }
    host.host.shutdown().await.unwrap();

    let started = Instant::now();
    let mut exchange = closed.exchange(get("/", &[]));
    let failure = closed.request_filter(&mut exchange).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(600), "{elapsed:?}");
    assert_eq!(failure.status(), 502);
    assert!(
        matches!(failure.error, CallError::NoResponders { .. }),
        "{failure:?}"
    );
    assert_eq!(
        stats(&closed.stats(), "header-injector", Phase::RequestFilter),
        PhaseStats {
            calls: 2,
            retries: 2,
            no_responders: 3,
            failed_closed: 1,
            ..PhaseStats::default()
        }
    );

    let mut exchange = open.exchange(get("/", &[("accept", "*/*")]));
    assert_eq!(
        open.request_filter(&mut exchange).await,
        Ok(Verdict::Continue)
    );
    assert_eq!(exchange.request.headers, pairs(&[("accept", "*/*")]));
    assert_eq!(
        stats(&open.stats(), "header-injector", Phase::RequestFilter),
        PhaseStats {
            calls: 2,
            retries: 2,
            no_responders: 3,
            failed_open: 1,
            ..PhaseStats::default()
        }
    );
}
