//! `natsplug gateway` with real parts: a nats-server per test, `natsplug
//! up` hosts serving the example plugins, a real HTTP upstream, and the
//! gateway as a process, driven over HTTP/1.1, h2c, curl and raw TCP.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::BodyExt as _;
use natsplug_suite::gateway::{get, request};
use natsplug_suite::host::{deploy_bytes, install_file, shared_cache_dir};
use natsplug_suite::up::path_arg;
use natsplug_suite::upstream::refused_address;
use natsplug_suite::{
    GatewayProcess, HttpClient, HttpReply, NatsServer, UpProcess, Upstream, guests,
};

const TOKEN: &str = "s3cret";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const ERROR_PREFIX: &str = "natsplug gateway: ";

/// The host config of every test: the settings of each plugin name used.
const HOST_CONFIG: &str = r#"
[plugin.authz.config]
token = "s3cret"

[plugin.auth-clobber.config]
header = "authorization"

[plugin.tagger.config]
header = "x-tag"

[plugin.misbehave]
call_timeout_ms = 1000

[plugin.every-phase.config]
greeting = "hello"
"#;

/// A plugins directory (copies of guest components under chosen names)
/// and the host config file.
struct Plugins {
    dir: tempfile::TempDir,
    config: tempfile::NamedTempFile,
}

fn plugins(list: &[(&str, &str)]) -> Plugins {
    let dir = tempfile::tempdir().unwrap();
    for (name, component) in list {
        install_file(dir.path(), name, component);
    }
    let mut config = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    config.write_all(HOST_CONFIG.as_bytes()).unwrap();
    Plugins { dir, config }
}

/// `natsplug up` on `plugins`, answering discovery (as `up` does).
fn start_host(server: &NatsServer, plugins: &Plugins) -> UpProcess {
    let (dir, config, cache) = (
        path_arg(plugins.dir.path()),
        path_arg(plugins.config.path()),
        path_arg(&shared_cache_dir()),
    );
    let up = UpProcess::start(&[
        "--nats",
        &server.url(),
        "--plugins",
        &dir,
        "--config",
        &config,
        "--cache-dir",
        &cache,
        "--workers",
        "4",
    ]);
    assert!(
        !up.ready_lines[0].contains("failed to load"),
        "{:?}\n{}",
        up.ready_lines,
        up.log()
    );
    up
}

/// A gateway with one route (`default`) to `upstream` through `chain`
/// (comma-separated, empty for none).
fn gateway(
    server: &NatsServer,
    upstream: &Upstream,
    chain: &str,
    extra: &[&str],
) -> GatewayProcess {
    let (nats, url) = (server.url(), upstream.url());
    let mut args = vec!["--nats", &nats, "--upstream", &url];
    if !chain.is_empty() {
        args.extend(["--plugins", chain]);
    }
    args.extend(extra);
    GatewayProcess::start(&args)
}

/// The values of header `name` in an echo of what the upstream received.
fn seen(echo: &serde_json::Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .unwrap_or_else(|| panic!("an echo: {echo}"))
        .iter()
        .filter(|pair| pair[0].as_str().unwrap().eq_ignore_ascii_case(name))
        .map(|pair| pair[1].as_str().unwrap().to_string())
        .collect()
}

/// The values of `name` joined as one list, however the proxy appended.
fn seen_joined(echo: &serde_json::Value, name: &str) -> String {
    seen(echo, name).join(", ")
}

fn phase_labels<'a>(route: &'a str, plugin: &'a str, phase: &'a str) -> [(&'a str, &'a str); 3] {
    [("route", route), ("plugin", plugin), ("phase", phase)]
}

fn assert_gateway_error(reply: &HttpReply, status: u16) {
    assert_eq!(reply.status, status, "{}", reply.text());
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain"),
        "content-type `{content_type}`"
    );
    assert!(reply.text().starts_with(ERROR_PREFIX), "{}", reply.text());
}

/// Wait (at most 10 s) until `probe` holds.
async fn wait_until(what: &str, probe: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !probe() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The next `logs.access-logger.info` record (JSON) for `path`, within 10 s.
async fn access_record(records: &mut async_nats::Subscriber, path: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let message = tokio::time::timeout_at(deadline, records.next())
            .await
            .unwrap_or_else(|_| panic!("no access log record for {path} within 10 s"))
            .unwrap();
        let record: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        if record["fields"]["path"] == path {
            return record;
        }
    }
}

#[tokio::test]
async fn authz_answers_401_without_a_token_and_the_upstream_is_not_called() {
    let server = NatsServer::start();
    let plugins = plugins(&[("authz", guests::AUTHZ)]);
    let _host = start_host(&server, &plugins);
    let upstream = Upstream::start();
    let gateway = gateway(&server, &upstream, "authz", &[]);
    assert_eq!(
        gateway.ready_line,
        format!(
            "natsplug gateway ready: listening on {}, 1 route(s)",
            gateway.address
        )
    );

    let denied = get(gateway.address, "/echo/admin", &[]).await;
    assert_eq!(denied.status, 401);
    assert_eq!(denied.header("content-type"), Some("application/json"));
    assert_eq!(denied.header("www-authenticate"), Some("Bearer"));
    assert_eq!(
        denied.text(),
        r#"{"error":"unauthorized","message":"a bearer token is required"}"#
    );
    let wrong = get(
        gateway.address,
        "/echo/admin",
        &[("authorization", "Bearer wrong")],
    )
    .await;
    assert_eq!(wrong.status, 403);
    assert_eq!(
        wrong.text(),
        r#"{"error":"forbidden","message":"the bearer token is not valid"}"#
    );
    assert_eq!(upstream.requests(), 0, "the upstream was called");

    // Plugins see the request as it will go upstream: a header the client
    // names in `Connection` is hop-by-hop, gone before authz runs.
    let bearer = format!("Bearer {TOKEN}");
    let hop = get(
        gateway.address,
        "/echo/admin",
        &[("authorization", &bearer), ("connection", "authorization")],
    )
    .await;
    assert_eq!(hop.status, 401, "{}", hop.text());
    assert_eq!(upstream.requests(), 0, "the upstream was called");

    let allowed = get(
        gateway.address,
        "/echo/admin?x=1",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    assert_eq!(allowed.header("x-upstream"), Some("upstream"));
    let echo = allowed.json();
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/echo/admin?x=1");
    // authz let the token through and took it off the request.
    assert_eq!(seen(&echo, "authorization"), Vec::<String>::new());
    assert_eq!(upstream.requests(), 1);

    let authz = phase_labels("default", "authz", "request_filter");
    gateway.wait_metric("natsplug_gateway_phase_calls_total", &authz, 4.0);
    let ended = [&authz[..], &[("outcome", "ended")]].concat();
    gateway.wait_metric("natsplug_gateway_phase_outcomes_total", &ended, 3.0);
    for (status, count) in [("401", 2.0), ("403", 1.0), ("200", 1.0)] {
        gateway.wait_metric(
            "natsplug_gateway_requests_total",
            &[("route", "default"), ("status", status)],
            count,
        );
    }
}

#[tokio::test]
async fn each_phase_changes_what_the_upstream_and_the_client_see() {
    let server = NatsServer::start();
    let watcher = server.connect().await;
    let mut records = watcher.subscribe("logs.access-logger.info").await.unwrap();
    watcher.flush().await.unwrap();
    let plugins = plugins(&[
        ("header-injector", guests::HEADER_INJECTOR),
        ("body-redactor", guests::BODY_REDACTOR),
        ("access-logger", guests::ACCESS_LOGGER),
    ]);
    let _host = start_host(&server, &plugins);
    let upstream = Upstream::start();
    let gateway = gateway(
        &server,
        &upstream,
        "header-injector,body-redactor,access-logger",
        &[],
    );

    let reply = get(
        gateway.address,
        "/echo/phases",
        &[("x-note", "my secret"), ("user-agent", "phase-test")],
    )
    .await;
    assert_eq!(reply.status, 200);
    // response_body_filter: the body was filtered, so sent chunked.
    assert_eq!(reply.header("content-length"), None);
    assert_eq!(reply.header("transfer-encoding"), Some("chunked"));
    let echo = reply.json();
    // request_filter: the upstream got the injected headers.
    assert_eq!(seen(&echo, "x-plugin"), ["header-injector"]);
    let request_ids = seen(&echo, "x-request-id");
    assert_eq!(request_ids.len(), 1);
    assert!(!request_ids[0].is_empty());
    // The upstream saw the secret; the client sees it masked.
    assert_eq!(seen(&echo, "x-note"), ["my ******"]);
    let received = upstream.seen();
    assert_eq!(received.len(), 1);
    assert!(
        received[0]
            .headers
            .contains(&("x-note".into(), "my secret".into()))
    );
    assert!(!reply.text().contains("secret"), "{}", reply.text());

    // logging: one access record, with the request as forwarded.
    let record = access_record(&mut records, "/echo/phases").await;
    assert_eq!(record["message"], "GET /echo/phases 200");
    assert_eq!(record["fields"]["status"], 200);
    assert_eq!(record["fields"]["user_agent"], "phase-test");

    for (plugin, phase, calls) in [
        ("header-injector", "request_filter", 1.0),
        ("access-logger", "logging", 1.0),
        // Phases a plugin does not implement are not sent.
        ("body-redactor", "request_filter", 0.0),
        ("access-logger", "request_filter", 0.0),
        ("header-injector", "response_body_filter", 0.0),
    ] {
        gateway.wait_metric(
            "natsplug_gateway_phase_calls_total",
            &phase_labels("default", plugin, phase),
            calls,
        );
    }
    assert!(
        gateway.metric(
            "natsplug_gateway_phase_calls_total",
            &phase_labels("default", "body-redactor", "response_body_filter"),
        ) >= 1.0
    );
    // Each exchange counts a phase a plugin does not implement as skipped.
    for (plugin, phase, skipped) in [
        ("header-injector", "response_filter", 1.0),
        ("header-injector", "logging", 1.0),
        ("body-redactor", "request_filter", 1.0),
        ("body-redactor", "response_body_filter", 0.0),
        ("access-logger", "response_body_filter", 1.0),
        ("access-logger", "logging", 0.0),
    ] {
        let labels = [
            &phase_labels("default", plugin, phase)[..],
            &[("outcome", "skipped")],
        ]
        .concat();
        assert_eq!(
            gateway.metric("natsplug_gateway_phase_outcomes_total", &labels),
            skipped,
            "{plugin} {phase}"
        );
    }
}

/// `natsplug up` serving the `every-phase` test guest (from its plugins
/// directory, kept while they live), and a gateway with three routes to
/// `upstream`: `/plain` without plugins, host `open.test` through
/// `every-phase` whose `request_filter` fails open, and every other
/// request through `every-phase`.
fn every_phase_gateway(
    server: &NatsServer,
    upstream: &Upstream,
) -> (Plugins, UpProcess, GatewayProcess) {
    let plugins = plugins(&[("every-phase", guests::EVERY_PHASE)]);
    let host = start_host(server, &plugins);
    let config = format!(
        r#"
[nats]
urls = ["{nats}"]

[[routes]]
name = "plain"
path_prefix = "/plain"
upstream = "{url}"
plugins = []

[[routes]]
name = "request-open"
host = "open.test"
upstream = "{url}"
plugins = [{{ name = "every-phase", request_filter = {{ failure_mode = "open", max_retries = 0 }} }}]

[[routes]]
name = "default"
upstream = "{url}"
plugins = ["every-phase"]
"#,
        nats = server.url(),
        url = upstream.url()
    );
    let gateway = GatewayProcess::start_with_config(&config, &[]);
    (plugins, host, gateway)
}

/// The last fields of a test client's request to `gateway` as forwarded,
/// listed the way `every-phase` does (`name=value, ...`): the client's
/// `traceparent` ([`TRACEPARENT`]), its `content-length` when it has a
/// body, and the gateway's forwarding fields.
fn forwarded_fields(gateway: SocketAddr, content_length: Option<usize>) -> String {
    let length = content_length.map_or(String::new(), |n| format!(", content-length={n}"));
    format!(
        "traceparent={TRACEPARENT}{length}, x-forwarded-for=127.0.0.1, \
         forwarded=for=127.0.0.1;host=\"{gateway}\";proto=http, x-forwarded-host={gateway}, \
         x-forwarded-proto=http, via=1.1 natsplug"
    )
}

#[tokio::test]
async fn every_phase_rewrites_the_upstream_request_and_the_clients_status_and_fields() {
    let server = NatsServer::start();
    let upstream = Upstream::start();
    let (_plugins, _host, gateway) = every_phase_gateway(&server, &upstream);
    let at = gateway.address;

    // Without the plugin the upstream's `server` field and status reach the
    // client as they are.
    let plain = get(at, "/plain/echo", &[("x-reply-server", "echo-server")]).await;
    assert_eq!(plain.status, 200, "{}", plain.text());
    assert_eq!(plain.header("server"), Some("echo-server"));
    assert_eq!(upstream.requests(), 1);

    let reply = request(
        at,
        "POST",
        "/echo/phases?q=1",
        &[
            ("x-drop", "drop me"),
            ("x-dup", "a"),
            ("x-dup", "b"),
            ("x-reply-server", "echo-server"),
            ("traceparent", TRACEPARENT),
        ],
        "hello",
    )
    .await;
    assert_eq!(upstream.requests(), 2, "{}", reply.text());

    // request_filter: the upstream gets the rewritten path (a new target
    // without a `?` has no query), without `x-drop`, with the fields the
    // plugin set; `x-seen` lists what the plugin got: the fields as they
    // would go upstream, `x-drop` among them.
    let received = upstream.seen();
    assert_eq!(received.len(), 2);
    let forwarded = &received[1];
    assert_eq!(forwarded.method, "POST");
    assert_eq!(forwarded.path, "/rewritten/echo/phases");
    let plugin_saw = format!(
        "12 fields: host={at}, x-drop=drop me, x-dup=a, x-dup=b, x-reply-server=echo-server, {}",
        forwarded_fields(at, Some(5))
    );
    let described = forwarded
        .headers
        .iter()
        .find(|(name, _)| name == "x-request")
        .map(|(_, value)| value.as_str())
        .unwrap_or_else(|| panic!("no x-request upstream: {forwarded:?}"));
    assert!(
        described.starts_with(&format!(
            "POST /echo/phases query=q=1 host={at} client-ip=127.0.0.1 request-id="
        )) && described.ends_with(" trace-id=4bf92f3577b34da6a3ce929d0e0e4736"),
        "x-request `{described}`"
    );
    let mut headers: Vec<(String, String)> = forwarded
        .headers
        .iter()
        .filter(|(name, _)| name != "x-request")
        .cloned()
        .collect();
    headers.sort();
    let at_text = at.to_string();
    let mut expected: Vec<(String, String)> = [
        ("host", at_text.as_str()),
        ("x-dup", "a"),
        ("x-dup", "b"),
        ("x-reply-server", "echo-server"),
        ("traceparent", TRACEPARENT),
        ("content-length", "5"),
        ("x-forwarded-for", "127.0.0.1"),
        (
            "forwarded",
            &format!("for=127.0.0.1;host=\"{at}\";proto=http"),
        ),
        ("x-forwarded-host", &at_text),
        ("x-forwarded-proto", "http"),
        ("via", "1.1 natsplug"),
        ("x-seen", &plugin_saw),
        ("x-first", "a"),
        ("x-all", "a,b"),
        ("x-init", "greeting=hello"),
    ]
    .iter()
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .collect();
    expected.sort();
    assert_eq!(headers, expected);
    // Request bodies are not sent to plugins: the upstream gets the
    // client's, not the one the plugin put in place of the absent one, and
    // the gateway says so once for the route.
    assert_eq!(forwarded.body_len, "hello".len());
    let warnings = |log: String| {
        log.lines()
            .filter(|line| line.contains("set a request body in request_filter"))
            .count()
    };
    wait_until("the ignored body's warning", || warnings(gateway.log()) > 0).await;

    // response_filter: the upstream's 200 plus one, its fields without
    // `server`, and the plugin's; it saw the request as rewritten.
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.header("server"), None, "{:?}", reply.headers);
    assert_eq!(reply.header_values("x-upstream"), ["upstream"]);
    assert_eq!(reply.header_values("x-response-body"), ["none"]);
    let date = reply.header("date").expect("a date field");
    let response_seen = reply.header_values("x-seen");
    assert_eq!(response_seen.len(), 1, "{:?}", reply.headers);
    let (before, after) = response_seen[0]
        .split_once(", content-length=")
        .unwrap_or_else(|| panic!("x-seen `{}`", response_seen[0]));
    assert_eq!(
        before,
        "6 fields: content-type=application/json, server=echo-server, x-upstream=upstream"
    );
    let (length, after) = after.split_once(',').unwrap();
    assert!(length.parse::<u64>().is_ok(), "content-length `{length}`");
    assert_eq!(after, format!(" date={date}, via=1.1 natsplug"));
    // response_body_filter: the head it gets is the one the client got,
    // without the upstream's `content-length` (the body goes chunked).
    let body = reply.text();
    let (head, _) = body
        .split_once("; state=")
        .unwrap_or_else(|| panic!("the body filter's output: {body}"));
    assert!(
        head.starts_with(
            "head=201 7 fields: content-type=application/json, x-upstream=upstream, date="
        ),
        "{head}"
    );
    assert_eq!(reply.header("content-length"), None, "{:?}", reply.headers);
    let request_seen = reply.header_values("x-request-seen");
    assert_eq!(request_seen.len(), 1, "{:?}", reply.headers);
    let expected_start = format!(
        "POST /rewritten/echo/phases 16 fields: host={at}, x-dup=a, x-dup=b, \
         x-reply-server=echo-server, {}, x-seen={plugin_saw}, x-first=a, x-all=a,b, \
         x-request=POST /echo/phases query=q=1",
        forwarded_fields(at, Some(5))
    );
    assert!(
        request_seen[0].starts_with(&expected_start)
            && request_seen[0].ends_with(", x-init=greeting=hello"),
        "x-request-seen `{}`",
        request_seen[0]
    );

    let plugin = |phase| phase_labels("default", "every-phase", phase);
    for (phase, calls) in [("request_filter", 1.0), ("response_filter", 1.0)] {
        gateway.wait_metric("natsplug_gateway_phase_calls_total", &plugin(phase), calls);
    }
    for (route, status) in [("plain", "200"), ("default", "201")] {
        gateway.wait_metric(
            "natsplug_gateway_requests_total",
            &[("route", route), ("status", status)],
            1.0,
        );
    }
    assert_eq!(upstream.requests(), 2);

    // A second exchange through the route adds no second warning.
    let again = request(at, "POST", "/echo/again", &[], "again").await;
    assert_eq!(again.status, 201, "{}", again.text());
    assert_eq!(upstream.requests(), 3);
    assert_eq!(upstream.seen()[2].body_len, "again".len());
    gateway.wait_metric(
        "natsplug_gateway_requests_total",
        &[("route", "default"), ("status", "201")],
        2.0,
    );
    assert_eq!(warnings(gateway.log()), 1, "{}", gateway.log());
}

#[tokio::test]
async fn every_phase_ending_in_request_filter_answers_the_client_and_the_upstream_is_not_called() {
    let server = NatsServer::start();
    let upstream = Upstream::start();
    let (_plugins, _host, gateway) = every_phase_gateway(&server, &upstream);
    let at = gateway.address;

    // `/end` is answered by request_filter, so neither the upstream nor
    // response_filter (whose own `/end` answer this path cannot reach: the
    // request never gets that far) is called.
    let ended = get(at, "/end", &[("traceparent", TRACEPARENT)]).await;
    assert_eq!(ended.status, 418, "{}", ended.text());
    assert_eq!(ended.text(), "ended GET /end");
    assert_eq!(ended.header_values("content-type"), ["text/plain"]);
    assert_eq!(ended.header_values("content-length"), ["14"]);
    let forwarded = forwarded_fields(at, None);
    assert_eq!(
        ended.header_values("x-seen"),
        [format!("7 fields: host={at}, {forwarded}")]
    );
    assert_eq!(ended.header("server"), None);
    assert_eq!(upstream.requests(), 0);

    let plugin = |phase| phase_labels("default", "every-phase", phase);
    let ended_outcome = [&plugin("request_filter")[..], &[("outcome", "ended")]].concat();
    gateway.wait_metric("natsplug_gateway_phase_outcomes_total", &ended_outcome, 1.0);
    gateway.wait_metric(
        "natsplug_gateway_requests_total",
        &[("route", "default"), ("status", "418")],
        1.0,
    );
    assert_eq!(
        gateway.metric(
            "natsplug_gateway_phase_calls_total",
            &plugin("response_filter")
        ),
        0.0
    );
    assert_eq!(upstream.requests(), 0);
}

#[tokio::test]
async fn a_failed_response_filter_replaces_the_upstreams_answer_with_500_when_closed() {
    let server = NatsServer::start();
    let upstream = Upstream::start();
    let (_plugins, _host, gateway) = every_phase_gateway(&server, &upstream);

    // On `/fail` both of every-phase's filters fail: request_filter, open
    // on this route, lets the request through unchanged; response_filter,
    // closed, has the gateway answer in place of the upstream.
    let reply = get(gateway.address, "/fail", &[("host", "open.test")]).await;
    assert_gateway_error(&reply, 500);
    assert_eq!(
        reply.text(),
        "natsplug gateway: plugin `every-phase` failed in response_filter: plugin failed \
         `nylon.plugin.every-phase.response_filter`: told to fail on status 200 at /fail\n"
    );
    assert_eq!(reply.header("x-upstream"), None, "{:?}", reply.headers);
    let received = upstream.seen();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].path, "/fail");
    assert!(
        !received[0].headers.iter().any(|(name, _)| name == "x-seen"),
        "{:?}",
        received[0]
    );

    let plugin = |phase| phase_labels("request-open", "every-phase", phase);
    let outcome = |phase, outcome| [&plugin(phase)[..], &[("outcome", outcome)]].concat();
    gateway.wait_metric(
        "natsplug_gateway_phase_outcomes_total",
        &outcome("request_filter", "failed_open"),
        1.0,
    );
    gateway.wait_metric(
        "natsplug_gateway_phase_outcomes_total",
        &outcome("response_filter", "failed_closed"),
        1.0,
    );
    gateway.wait_metric(
        "natsplug_gateway_requests_total",
        &[("route", "request-open"), ("status", "500")],
        1.0,
    );
    // The gateway's answer replaced the body: nothing was left to filter.
    assert_eq!(
        gateway.metric(
            "natsplug_gateway_phase_calls_total",
            &plugin("response_body_filter")
        ),
        0.0
    );
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test]
async fn a_chain_of_three_runs_in_order_each_seeing_the_changes_before_it() {
    let server = NatsServer::start();
    let plugins = plugins(&[
        ("header-injector", guests::HEADER_INJECTOR),
        ("authz", guests::AUTHZ),
        ("auth-clobber", guests::HEADER_INJECTOR),
    ]);
    let _host = start_host(&server, &plugins);
    let upstream = Upstream::start();
    let config = format!(
        r#"
[nats]
urls = ["{nats}"]

[[routes]]
name = "forward"
path_prefix = "/forward"
upstream = "{url}"
plugins = ["header-injector", "authz", "auth-clobber"]

[[routes]]
name = "reverse"
path_prefix = "/reverse"
upstream = "{url}"
plugins = ["auth-clobber", "authz", "header-injector"]
"#,
        nats = server.url(),
        url = upstream.url()
    );
    let gateway = GatewayProcess::start_with_config(&config, &[]);
    assert_eq!(
        gateway.ready_line,
        format!(
            "natsplug gateway ready: listening on {}, 2 route(s)",
            gateway.address
        )
    );
    let bearer = format!("Bearer {TOKEN}");

    // authz checks the client's token, removes it, and auth-clobber then
    // writes its request id into `authorization`.
    let forward = get(
        gateway.address,
        "/forward/x",
        &[("authorization", &bearer), ("accept", "*/*")],
    )
    .await;
    assert_eq!(forward.status, 200, "{}", forward.text());
    let echo = forward.json();
    assert_eq!(echo["path"], "/forward/x");
    assert_eq!(seen(&echo, "x-plugin"), ["header-injector"]);
    assert_eq!(seen(&echo, "accept"), ["*/*"]);
    let authorization = seen(&echo, "authorization");
    assert_eq!(authorization.len(), 1, "{echo}");
    assert_ne!(authorization[0], bearer);
    assert!(!authorization[0].is_empty());
    assert_eq!(seen(&echo, "x-request-id").len(), 1);

    // The other way round, authz sees the clobbered header: 401.
    let reverse = get(gateway.address, "/reverse/x", &[("authorization", &bearer)]).await;
    assert_eq!(reverse.status, 401, "{}", reverse.text());
    assert_eq!(upstream.requests(), 1);

    for (route, plugin, calls) in [
        ("forward", "header-injector", 1.0),
        ("forward", "authz", 1.0),
        ("forward", "auth-clobber", 1.0),
        ("reverse", "auth-clobber", 1.0),
        ("reverse", "authz", 1.0),
        ("reverse", "header-injector", 0.0),
    ] {
        gateway.wait_metric(
            "natsplug_gateway_phase_calls_total",
            &phase_labels(route, plugin, "request_filter"),
            calls,
        );
    }
}

#[tokio::test]
async fn an_end_from_the_second_plugin_stops_the_third() {
    let server = NatsServer::start();
    let plugins = plugins(&[
        ("header-injector", guests::HEADER_INJECTOR),
        ("authz", guests::AUTHZ),
        ("misbehave", guests::MISBEHAVE),
    ]);
    let _host = start_host(&server, &plugins);
    let upstream = Upstream::start();
    let gateway = gateway(&server, &upstream, "header-injector,authz,misbehave", &[]);

    let client = HttpClient::http1(gateway.address).await.unwrap();
    for _ in 0..5 {
        let reply = client.get("/echo/ok", &[]).await.unwrap();
        assert_eq!(reply.status, 401, "{}", reply.text());
    }
    let request_filter = |plugin| phase_labels("default", plugin, "request_filter");
    gateway.wait_metric(
        "natsplug_gateway_phase_calls_total",
        &request_filter("header-injector"),
        5.0,
    );
    gateway.wait_metric(
        "natsplug_gateway_phase_calls_total",
        &request_filter("authz"),
        5.0,
    );
    let ended = [&request_filter("authz")[..], &[("outcome", "ended")]].concat();
    gateway.wait_metric("natsplug_gateway_phase_outcomes_total", &ended, 5.0);
    assert_eq!(
        gateway.metric(
            "natsplug_gateway_phase_calls_total",
            &request_filter("misbehave")
        ),
        0.0
    );
    assert_eq!(upstream.requests(), 0);

    // With the token, the third plugin runs: its header reaches the upstream.
    let bearer = format!("Bearer {TOKEN}");
    let reply = client
        .get("/echo/ok", &[("authorization", &bearer)])
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(seen(&reply.json(), "x-calls").len(), 1);
    // No plugin filters bodies: the upstream's framing is kept.
    assert_eq!(
        reply.header("content-length"),
        Some(reply.body.len().to_string().as_str())
    );
    gateway.wait_metric(
        "natsplug_gateway_phase_calls_total",
        &request_filter("misbehave"),
        1.0,
    );
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test]
async fn body_redaction_spans_the_chunks_of_a_streamed_response() {
    let server = NatsServer::start();
    let plugins = plugins(&[("body-redactor", guests::BODY_REDACTOR)]);
    let _host = start_host(&server, &plugins);
    let upstream = Upstream::start();
    let gateway = gateway(&server, &upstream, "body-redactor", &[]);

    // "my secret is a secret, not a secret!", with matches split across chunks.
    let path =
        "/stream?chunks=my%20sec,ret%20is%20a%20se,cret%2C%20not,%20a%20secre,t!&delay_ms=20";
    let reply = get(gateway.address, path, &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "my ****** is a ******, not a ******!");
    assert_eq!(reply.header("content-length"), None);
    assert_eq!(upstream.completed(), 1);
    let chunks = gateway.metric(
        "natsplug_gateway_phase_calls_total",
        &phase_labels("default", "body-redactor", "response_body_filter"),
    );
    assert!(chunks >= 5.0, "{chunks} body filter calls for 5 chunks");

    // Answers without a body are not reframed for the body filter.
    for (method, path, status) in [("HEAD", "/echo/head", 200), ("GET", "/status/204", 204)] {
        let reply = request(gateway.address, method, path, &[], Bytes::new()).await;
        assert_eq!(reply.status, status, "{method} {path}");
        assert_eq!(reply.header("transfer-encoding"), None, "{method} {path}");
        assert_eq!(reply.text(), "", "{method} {path}");
    }

    // Without the plugin the same stream is untouched.
    let plain = GatewayProcess::start(&["--nats", &server.url(), "--upstream", &upstream.url()]);
    let reply = get(plain.address, path, &[]).await;
    assert_eq!(reply.text(), "my secret is a secret, not a secret!");
}

#[tokio::test]
async fn timing_out_and_trapping_plugins_fail_closed_or_open_as_configured() {
    let server = NatsServer::start();
    let plugins = plugins(&[("misbehave", guests::MISBEHAVE)]);
    let _host = start_host(&server, &plugins);
    let upstream = Upstream::start();
    // The host lets a call run 1000 ms; the gateway waits 150 ms, once.
    let config = format!(
        r#"
[nats]
urls = ["{nats}"]

[chain]
defaults = {{ timeout_ms = 150, max_retries = 0, failure_mode = "closed" }}

[[routes]]
name = "closed"
host = "closed.test"
upstream = "{url}"
plugins = ["misbehave"]

[[routes]]
name = "open"
host = "open.test"
upstream = "{url}"
plugins = [{{ name = "misbehave", failure_mode = "open" }}]
"#,
        nats = server.url(),
        url = upstream.url()
    );
    let gateway = GatewayProcess::start_with_config(&config, &[]);
    let at = gateway.address;

    // A behaving call goes through on either route.
    let ok = get(at, "/ok", &[("host", "closed.test")]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(seen(&ok.json(), "x-calls").len(), 1);

    // A trap: 500 when closed; when open the upstream answers.
    let trapped = get(at, "/panic", &[("host", "closed.test")]).await;
    assert_gateway_error(&trapped, 500);
    let passed = get(at, "/panic", &[("host", "open.test")]).await;
    assert_eq!(passed.status, 200, "{}", passed.text());
    assert_eq!(passed.json()["path"], "/panic");
    assert_eq!(seen(&passed.json(), "x-calls"), Vec::<String>::new());

    // A timeout: 504 when closed, within the budget; open passes over it.
    let started = Instant::now();
    let timed_out = get(at, "/loop", &[("host", "closed.test")]).await;
    assert_gateway_error(&timed_out, 504);
    // (The host's own deadline would also give a 504, but after 1000 ms.)
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "504 after {:?}, not after the 150 ms budget",
        started.elapsed()
    );
    let passed = get(at, "/loop", &[("host", "open.test")]).await;
    assert_eq!(passed.status, 200, "{}", passed.text());
    assert_eq!(passed.json()["path"], "/loop");
    assert_eq!(upstream.requests(), 3);

    let labels = |route, extra: (&'static str, &'static str)| {
        let mut labels = phase_labels(route, "misbehave", "request_filter").to_vec();
        labels.push(extra);
        labels
    };
    for (route, outcome, count) in [
        ("closed", "failed_closed", 2.0),
        ("closed", "failed_open", 0.0),
        ("open", "failed_open", 2.0),
        ("open", "failed_closed", 0.0),
    ] {
        gateway.wait_metric(
            "natsplug_gateway_phase_outcomes_total",
            &labels(route, ("outcome", outcome)),
            count,
        );
    }
    for route in ["closed", "open"] {
        for kind in ["timeout", "host_error"] {
            gateway.wait_metric(
                "natsplug_gateway_phase_failures_total",
                &labels(route, ("kind", kind)),
                1.0,
            );
        }
        assert_eq!(
            gateway.metric(
                "natsplug_gateway_phase_retries_total",
                &phase_labels(route, "misbehave", "request_filter")
            ),
            0.0
        );
    }
    gateway.wait_metric(
        "natsplug_gateway_requests_total",
        &[("route", "closed"), ("status", "504")],
        1.0,
    );
    gateway.wait_metric(
        "natsplug_gateway_requests_total",
        &[("route", "closed"), ("status", "500")],
        1.0,
    );
    gateway.wait_metric(
        "natsplug_gateway_requests_total",
        &[("route", "open"), ("status", "200")],
        2.0,
    );
}

/// Requests sent over and over by a few keep-alive clients until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    matched: Arc<AtomicU64>,
    workers: Vec<tokio::task::JoinHandle<Worker>>,
}

#[derive(Debug, Default)]
struct Worker {
    ok: u64,
    failures: Vec<String>,
    /// Whether the probe held for the worker's last successful reply.
    last_matched: Option<bool>,
}

impl Load {
    /// `clients` clients sending `GET path`; `probe` tells the replies of
    /// the behaviour a test waits for.
    fn start(
        address: SocketAddr,
        clients: usize,
        path: &'static str,
        probe: fn(&HttpReply) -> bool,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let matched = Arc::new(AtomicU64::new(0));
        let workers = (0..clients)
            .map(|_| {
                let (stop, ok, matched) = (stop.clone(), ok.clone(), matched.clone());
                tokio::spawn(async move {
                    let mut worker = Worker::default();
                    let mut client = None;
                    while !stop.load(Ordering::SeqCst) {
                        if client.is_none() {
                            match HttpClient::http1(address).await {
                                Ok(connected) => client = Some(connected),
                                Err(error) => {
                                    worker.failures.push(format!("connect: {error:#}"));
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                    continue;
                                }
                            }
                        }
                        match client.as_ref().unwrap().get(path, &[]).await {
                            Ok(reply) if reply.status == 200 => {
                                worker.ok += 1;
                                ok.fetch_add(1, Ordering::SeqCst);
                                let hit = probe(&reply);
                                if hit {
                                    matched.fetch_add(1, Ordering::SeqCst);
                                }
                                worker.last_matched = Some(hit);
                            }
                            Ok(reply) => worker.failures.push(format!(
                                "status {}: {}",
                                reply.status,
                                reply.text()
                            )),
                            Err(error) => {
                                worker.failures.push(format!("{error:#}"));
                                client = None;
                            }
                        }
                    }
                    worker
                })
            })
            .collect();
        Load {
            stop,
            ok,
            matched,
            workers,
        }
    }

    /// Wait (at most `limit`) until `count` reaches `target`.
    async fn wait(&self, what: &str, count: &AtomicU64, target: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        while count.load(Ordering::SeqCst) < target {
            assert!(
                Instant::now() < deadline,
                "{what}: {} of {target} within {limit:?}",
                count.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_ok(&self, target: u64) {
        self.wait(
            "successful requests",
            &self.ok,
            target,
            Duration::from_secs(30),
        )
        .await;
    }

    async fn finish(self) -> Vec<Worker> {
        self.stop.store(true, Ordering::SeqCst);
        let mut workers = Vec::new();
        for worker in self.workers {
            workers.push(worker.await.unwrap());
        }
        workers
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_reloaded_while_serving_fails_no_request_and_its_new_version_serves() {
    let server = NatsServer::start();
    let plugins = plugins(&[("tagger", guests::HEADER_INJECTOR)]);
    let _host = start_host(&server, &plugins);
    let upstream = Upstream::start();
    let gateway = gateway(&server, &upstream, "tagger", &[]);

    // Before: the header injector (`x-tag`); after: the misbehave plugin,
    // which counts its calls in `x-calls` instead.
    fn reloaded(reply: &HttpReply) -> bool {
        let echo = reply.json();
        let (calls, tags) = (seen(&echo, "x-calls"), seen(&echo, "x-tag"));
        assert!(
            calls.len() + tags.len() == 1,
            "exactly one version ran: {echo}"
        );
        calls.len() == 1
    }
    let load = Load::start(gateway.address, 4, "/echo/reload", reloaded);
    load.wait_ok(100).await;
    assert_eq!(load.matched.load(Ordering::SeqCst), 0);
    let swap = std::fs::read(guests::MISBEHAVE).unwrap();
    deploy_bytes(plugins.dir.path(), "tagger", &swap);
    load.wait(
        "replies of the new version",
        &load.matched,
        1,
        Duration::from_secs(20),
    )
    .await;
    let after = load.ok.load(Ordering::SeqCst);
    load.wait_ok(after + 200).await;
    let workers = load.finish().await;

    let failures: Vec<&String> = workers.iter().flat_map(|w| &w.failures).collect();
    let ok: u64 = workers.iter().map(|w| w.ok).sum();
    eprintln!(
        "hot reload: {ok} requests served, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    for worker in &workers {
        assert_eq!(worker.last_matched, Some(true), "{worker:?}");
    }
    gateway.wait_metric(
        "natsplug_gateway_requests_total",
        &[("route", "default"), ("status", "200")],
        ok as f64,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_in_a_two_host_queue_group_fails_no_request() {
    let server = NatsServer::start();
    let plugins = plugins(&[("header-injector", guests::HEADER_INJECTOR)]);
    let mut first = start_host(&server, &plugins);
    let _second = start_host(&server, &plugins);
    let upstream = Upstream::start();
    // 600 ms budget, so each of the three attempts has 200 ms.
    let gateway = gateway(
        &server,
        &upstream,
        "header-injector",
        &["--timeout-ms", "600"],
    );

    fn injected(reply: &HttpReply) -> bool {
        seen(&reply.json(), "x-plugin") == ["header-injector"]
    }
    let load = Load::start(gateway.address, 4, "/echo/load", injected);
    load.wait_ok(200).await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let after = load.ok.load(Ordering::SeqCst);
    load.wait_ok(after + 400).await;
    let workers = load.finish().await;

    let failures: Vec<&String> = workers.iter().flat_map(|w| &w.failures).collect();
    let ok: u64 = workers.iter().map(|w| w.ok).sum();
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    assert_eq!(load_matched(&workers), workers.len());
    let labels = phase_labels("default", "header-injector", "request_filter");
    gateway.wait_metric("natsplug_gateway_phase_calls_total", &labels, ok as f64);
    let retries = gateway.metric("natsplug_gateway_phase_retries_total", &labels);
    let timeouts = gateway.metric(
        "natsplug_gateway_phase_failures_total",
        &[&labels[..], &[("kind", "timeout")]].concat(),
    );
    let no_responders = gateway.metric(
        "natsplug_gateway_phase_failures_total",
        &[&labels[..], &[("kind", "no_responders")]].concat(),
    );
    eprintln!(
        "host killed under load: {ok} requests, 0 failed, {retries} retries \
         ({timeouts} attempts timed out, {no_responders} found no responders)"
    );
    // Every retry followed a failed attempt, and none of them failed the request.
    assert_eq!(retries, timeouts + no_responders);
    assert_eq!(
        gateway.metric(
            "natsplug_gateway_phase_outcomes_total",
            &[&labels[..], &[("outcome", "failed_closed")]].concat()
        ),
        0.0
    );
}

fn load_matched(workers: &[Worker]) -> usize {
    workers
        .iter()
        .filter(|w| w.last_matched == Some(true))
        .count()
}

#[tokio::test]
async fn upstream_failures_and_unrouted_requests_get_502_504_and_404() {
    let server = NatsServer::start();
    let upstream = Upstream::start();
    let config = format!(
        r#"
[[routes]]
name = "down"
path_prefix = "/down"
upstream = "http://{refused}"
plugins = []

[[routes]]
name = "slow"
path_prefix = "/slow"
upstream = "{url}"
read_timeout_ms = 300
plugins = []

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "{url}"
plugins = []
"#,
        refused = refused_address(),
        url = upstream.url()
    );
    let gateway = GatewayProcess::start_with_config(&config, &["--nats", &server.url()]);
    let at = gateway.address;

    assert_eq!(get(at, "/api/ok", &[]).await.status, 200);
    assert_gateway_error(&get(at, "/down/x", &[]).await, 502);
    let started = Instant::now();
    assert_gateway_error(&get(at, "/slow?ms=3000", &[]).await, 504);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(2500),
        "504 after {waited:?} for a 300 ms read timeout"
    );
    assert_gateway_error(&get(at, "/nowhere", &[]).await, 404);
    // `/api` matches `/api` and `/api/...`, not `/apix`.
    assert_gateway_error(&get(at, "/apix", &[]).await, 404);
    assert_eq!(get(at, "/api", &[]).await.status, 200);
    assert_eq!(upstream.requests(), 3);

    for (route, kind) in [("down", "refused"), ("slow", "timeout")] {
        gateway.wait_metric(
            "natsplug_gateway_upstream_failures_total",
            &[("route", route), ("kind", kind)],
            1.0,
        );
    }
    for (route, status, count) in [
        ("down", "502", 1.0),
        ("slow", "504", 1.0),
        ("api", "200", 2.0),
    ] {
        gateway.wait_metric(
            "natsplug_gateway_requests_total",
            &[("route", route), ("status", status)],
            count,
        );
    }
}

#[tokio::test]
async fn a_client_going_away_mid_stream_cancels_the_upstream_response() {
    let server = NatsServer::start();
    let upstream = Upstream::start();
    let gateway = gateway(&server, &upstream, "", &[]);

    // 200 chunks, 50 ms apart: 10 s of body.
    let chunks = vec!["part"; 200].join(",");
    let mut stream = TcpStream::connect(gateway.address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /stream?chunks={chunks}&delay_ms=50 HTTP/1.1\r\nHost: test\r\n\r\n"
    )
    .unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&received).contains("part") {
        let read = stream.read(&mut buffer).unwrap();
        assert!(read > 0, "the gateway closed the stream");
        received.extend_from_slice(&buffer[..read]);
    }
    assert!(received.starts_with(b"HTTP/1.1 200"));
    assert_eq!(upstream.cancelled(), 0);
    drop(stream);

    wait_until("the upstream's response cancelled", || {
        upstream.cancelled() == 1
    })
    .await;
    assert_eq!(upstream.completed(), 0);
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test]
async fn forwarding_removes_hop_by_hop_headers_and_adds_the_forwarding_ones() {
    let server = NatsServer::start();
    let plugins = plugins(&[("header-injector", guests::HEADER_INJECTOR)]);
    let _host = start_host(&server, &plugins);
    let upstream = Upstream::start();
    let gateway = gateway(&server, &upstream, "header-injector", &[]);

    let reply = get(
        gateway.address,
        "/echo/forwarded?hop=1",
        &[
            ("host", "shop.example"),
            ("connection", "keep-alive, x-drop-me"),
            ("x-drop-me", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-keep", "kept"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let echo = reply.json();
    for name in ["x-drop-me", "keep-alive", "proxy-connection", "te"] {
        assert_eq!(seen(&echo, name), Vec::<String>::new(), "{name}: {echo}");
    }
    assert!(
        !seen_joined(&echo, "connection").contains("x-drop-me"),
        "{echo}"
    );
    assert_eq!(seen(&echo, "x-keep"), ["kept"]);
    assert_eq!(seen(&echo, "x-plugin"), ["header-injector"]);
    assert_eq!(
        seen_joined(&echo, "x-forwarded-for"),
        "203.0.113.7, 127.0.0.1"
    );
    assert_eq!(seen(&echo, "x-forwarded-proto"), ["http"]);
    assert_eq!(seen(&echo, "x-forwarded-host"), ["shop.example"]);
    assert_eq!(seen_joined(&echo, "via"), "1.1 natsplug");

    // The upstream's hop-by-hop headers do not reach the client either.
    assert_eq!(reply.header("x-kept"), Some("kept"));
    assert_eq!(reply.header("x-up-hop"), None);
    assert_eq!(reply.header("keep-alive"), None);
    assert!(
        !reply
            .header_values("connection")
            .join(",")
            .contains("x-up-hop")
    );
    assert_eq!(reply.header_values("via").join(", "), "1.1 natsplug");

    // RFC 7239: the host is a quoted string (it may carry a port).
    assert_eq!(
        seen_joined(&echo, "forwarded"),
        "for=127.0.0.1;host=\"shop.example\";proto=http"
    );
}

#[tokio::test]
async fn traceparent_reaches_the_upstream_and_the_plugins_and_is_made_when_missing() {
    let server = NatsServer::start();
    let watcher = server.connect().await;
    let mut records = watcher.subscribe("logs.access-logger.info").await.unwrap();
    watcher.flush().await.unwrap();
    let plugins = plugins(&[
        ("header-injector", guests::HEADER_INJECTOR),
        ("access-logger", guests::ACCESS_LOGGER),
    ]);
    let _host = start_host(&server, &plugins);
    let upstream = Upstream::start();
    let gateway = gateway(&server, &upstream, "header-injector,access-logger", &[]);

    let traced = get(
        gateway.address,
        "/echo/traced",
        &[("traceparent", TRACEPARENT)],
    )
    .await;
    assert_eq!(traced.status, 200);
    assert_eq!(seen(&traced.json(), "traceparent"), [TRACEPARENT]);
    let record = access_record(&mut records, "/echo/traced").await;
    assert_eq!(record["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");

    let untraced = get(gateway.address, "/echo/untraced", &[]).await;
    assert_eq!(untraced.status, 200);
    let made = seen(&untraced.json(), "traceparent");
    assert_eq!(made.len(), 1, "{}", untraced.text());
    let parts: Vec<&str> = made[0].split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    assert!(
        parts.len() == 4
            && parts[0] == "00"
            && hex(parts[1], 32)
            && hex(parts[2], 16)
            && parts[3] == "01"
            && parts[1] != "0".repeat(32),
        "made traceparent `{}`",
        made[0]
    );
    let record = access_record(&mut records, "/echo/untraced").await;
    assert_eq!(record["trace_id"], parts[1].to_ascii_lowercase());
    // Each exchange gets its own.
    let again = get(gateway.address, "/echo/untraced", &[]).await;
    assert_ne!(seen(&again.json(), "traceparent"), made);
}

#[tokio::test]
async fn routes_from_a_config_file_pick_the_upstream_and_chain_by_host_and_path() {
    let server = NatsServer::start();
    let plugins = plugins(&[
        ("header-injector", guests::HEADER_INJECTOR),
        ("tagger", guests::HEADER_INJECTOR),
    ]);
    let _host = start_host(&server, &plugins);
    let site = Upstream::start_named("site");
    let api = Upstream::start_named("api");
    let config = format!(
        r#"
[nats]
urls = ["{nats}"]

[[routes]]
name = "site"
host = "Site.Test"
upstream = "{site}"
plugins = ["header-injector"]

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "{api}"
plugins = ["tagger"]
"#,
        nats = server.url(),
        site = site.url(),
        api = api.url()
    );
    let gateway = GatewayProcess::start_with_config(&config, &[]);
    let at = gateway.address;

    // A host route wins over an any-host route, whatever the path; the
    // port and the case of the host do not matter.
    let to_site = get(at, "/api/orders", &[("host", "site.test:8080")]).await;
    assert_eq!(to_site.status, 200);
    assert_eq!(to_site.header("x-upstream"), Some("site"));
    let echo = to_site.json();
    assert_eq!(seen(&echo, "x-plugin"), ["header-injector"]);
    assert_eq!(seen(&echo, "x-request-id").len(), 1);
    assert_eq!(seen(&echo, "x-tag"), Vec::<String>::new());

    for path in ["/api/orders", "/api"] {
        let to_api = get(at, path, &[("host", "other.test")]).await;
        assert_eq!(to_api.status, 200);
        assert_eq!(to_api.header("x-upstream"), Some("api"));
        let echo = to_api.json();
        assert_eq!(echo["path"], path);
        assert_eq!(seen(&echo, "x-plugin"), ["header-injector"]);
        assert_eq!(seen(&echo, "x-tag").len(), 1);
        assert_eq!(seen(&echo, "x-request-id"), Vec::<String>::new());
    }
    assert_gateway_error(&get(at, "/apix", &[("host", "other.test")]).await, 404);
    // Over HTTP/2 the `:authority` picks the route.
    let h2 = HttpClient::h2c(at).await.unwrap();
    let reply = h2.get("/", &[("host", "site.test")]).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-upstream"), Some("site"));
    assert_eq!((site.requests(), api.requests()), (2, 2));
    for (route, count) in [("site", 2.0), ("api", 2.0)] {
        gateway.wait_metric(
            "natsplug_gateway_requests_total",
            &[("route", route), ("status", "200")],
            count,
        );
    }
    gateway.wait_metric(
        "natsplug_gateway_phase_calls_total",
        &phase_labels("api", "tagger", "request_filter"),
        2.0,
    );
}

#[tokio::test]
async fn http2_clients_with_prior_knowledge_are_served() {
    let server = NatsServer::start();
    let plugins = plugins(&[("header-injector", guests::HEADER_INJECTOR)]);
    let _host = start_host(&server, &plugins);
    let upstream = Upstream::start();
    let gateway = gateway(&server, &upstream, "header-injector", &[]);

    let client = HttpClient::h2c(gateway.address).await.unwrap();
    let reply = client.get("/echo/h2", &[]).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.version, hyper::Version::HTTP_2);
    assert_eq!(seen(&reply.json(), "x-plugin"), ["header-injector"]);

    // Concurrent streams on the one connection, with request bodies.
    let replies = futures::future::join_all((0..20usize).map(|index| {
        let client = client.clone();
        async move {
            let body = Bytes::from(vec![b'a'; index * 100]);
            client
                .send("POST", &format!("/echo/h2/{index}"), &[], body)
                .await
                .unwrap()
        }
    }))
    .await;
    for (index, reply) in replies.iter().enumerate() {
        assert_eq!(reply.status, 200);
        let echo = reply.json();
        assert_eq!(echo["method"], "POST");
        assert_eq!(echo["path"], format!("/echo/h2/{index}"));
        assert_eq!(echo["body_len"], index * 100);
    }
    assert_eq!(upstream.requests(), 21);
    gateway.wait_metric(
        "natsplug_gateway_requests_total",
        &[("route", "default"), ("status", "200")],
        21.0,
    );
}

#[tokio::test]
async fn curl_gets_exact_answers_over_http1_and_http2() {
    let server = NatsServer::start();
    let plugins = plugins(&[("authz", guests::AUTHZ)]);
    let _host = start_host(&server, &plugins);
    let upstream = Upstream::start();
    let gateway = gateway(&server, &upstream, "authz", &[]);
    let url = gateway.url();

    let curl = |args: &[&str]| {
        let output = std::process::Command::new("/usr/bin/curl")
            .args(["-sS", "--max-time", "20"])
            .args(args)
            .output()
            .expect("running curl");
        assert!(
            output.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let bearer = format!("authorization: Bearer {TOKEN}");
    let stream = format!("{url}/stream?chunks=hello,%20world");
    assert_eq!(
        curl(&[
            "-H",
            &bearer,
            "-w",
            "|%{http_code}|%{http_version}",
            &stream
        ]),
        "hello world|200|1.1"
    );
    assert_eq!(
        curl(&[
            "--http2-prior-knowledge",
            "-H",
            &bearer,
            "-w",
            "|%{http_code}|%{http_version}",
            &stream
        ]),
        "hello world|200|2"
    );
    let denied = r#"{"error":"unauthorized","message":"a bearer token is required"}"#;
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        assert_eq!(
            curl(&[
                version,
                "-w",
                "|%{http_code}|%{content_type}",
                &format!("{url}/echo/curl")
            ]),
            format!("{denied}|401|application/json")
        );
    }
    assert_eq!(
        curl(&[
            "-H",
            &bearer,
            "-X",
            "PUT",
            "--data-binary",
            "12345",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{url}/status/201")
        ]),
        "201"
    );
    assert_eq!(upstream.requests(), 3);
}

/// `GET /big?mb=MIB` through `gateway`, read as it comes, with the
/// gateway's resident memory sampled every 8 MiB: the bytes received and
/// the peak growth of resident memory over the start, in MiB.
async fn stream_big(gateway: &GatewayProcess, mib: u64) -> (u64, u64) {
    let client = HttpClient::http1(gateway.address).await.unwrap();
    // Warm up: pools and buffers are allocated by the first exchange.
    assert_eq!(
        client.get("/big?mb=1", &[]).await.unwrap().body.len(),
        1 << 20
    );
    let before = gateway.rss_kib();
    let started = Instant::now();
    let response = client
        .send_streaming("GET", &format!("/big?mb={mib}"), &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let (mut received, mut next_sample, mut peak) = (0u64, 0u64, before);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received += data.len() as u64;
        }
        if received >= next_sample {
            peak = peak.max(gateway.rss_kib());
            next_sample += 8 << 20;
        }
    }
    peak = peak.max(gateway.rss_kib());
    let growth = peak.saturating_sub(before) / 1024;
    eprintln!(
        "{mib} MiB through the gateway in {:?}; resident memory {} MiB before, peak growth {growth} MiB",
        started.elapsed(),
        before / 1024
    );
    (received, growth)
}

#[tokio::test]
async fn a_big_streamed_response_passes_through_in_bounded_memory() {
    let server = NatsServer::start();
    let upstream = Upstream::start();
    let gateway = gateway(&server, &upstream, "", &[]);
    let (received, growth) = stream_big(&gateway, 1024).await;
    assert_eq!(received, 1024 << 20);
    assert!(growth < 150, "resident memory grew by {growth} MiB");
    assert_eq!(upstream.completed(), 2);
}

#[tokio::test]
async fn a_big_response_through_a_body_filter_streams_in_bounded_memory() {
    let server = NatsServer::start();
    let plugins = plugins(&[("body-redactor", guests::BODY_REDACTOR)]);
    let _host = start_host(&server, &plugins);
    let upstream = Upstream::start();
    let gateway = gateway(&server, &upstream, "body-redactor", &[]);
    // Each chunk is a NATS round trip, so a smaller body, and a bound well
    // below its size: the body is never held whole.
    let (received, growth) = stream_big(&gateway, 128).await;
    assert_eq!(received, 128 << 20);
    assert!(growth < 48, "resident memory grew by {growth} MiB");
    assert_eq!(upstream.completed(), 2);
}

/// A malformed request, or one at the edge of what HTTP/1.1 allows.
fn malformed_request() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::collection::vec;
    use proptest::prelude::*;

    let method = prop_oneof![
        Just("GET".to_string()),
        "[A-Z]{1,12}",
        "[ -~]{0,12}",
        Just(String::new())
    ];
    let target = prop_oneof![
        Just("/echo/fuzz".to_string()),
        "/[ -~]{0,40}",
        "[a-z*]{1,3}://[ -~]{0,20}",
        "[^/ ][!-~]{0,20}",
    ];
    let version = prop_oneof![
        Just("HTTP/1.1"),
        Just("HTTP/1.0"),
        Just("HTTP/2.0"),
        Just("HTTP/9.9"),
        Just("HTTP/1.1 extra"),
        Just("HTTX/1.1"),
        Just("")
    ];
    let request_line = (method, target, version)
        .prop_map(|(m, t, v)| format!("{m} {t} {v}\r\nHost: fuzz\r\n\r\n").into_bytes());
    let garbage = vec(any::<u8>(), 0..2048);
    let oversized = (1usize..1536).prop_map(|kib| {
        let mut request = b"GET /echo/fuzz HTTP/1.1\r\nHost: fuzz\r\nX-Big: ".to_vec();
        request.extend(std::iter::repeat_n(b'a', kib * 1024));
        request.extend_from_slice(b"\r\n\r\n");
        request
    });
    let many_headers = (1usize..3000).prop_map(|count| {
        let mut request = b"GET /echo/fuzz HTTP/1.1\r\nHost: fuzz\r\n".to_vec();
        for index in 0..count {
            request.extend_from_slice(format!("X-H{index}: {index}\r\n").as_bytes());
        }
        request.extend_from_slice(b"\r\n");
        request
    });
    let chunk_size = prop_oneof![
        Just("zz".to_string()),
        Just("-1".to_string()),
        Just("ffffffffffffffffffff".to_string()),
        Just("5;ext=\"unterminated".to_string()),
        Just(String::new()),
        "[0-9a-f]{1,3}",
        "[ -~]{1,8}",
    ];
    let chunked = (vec(chunk_size, 1..4), "[a-z]{0,40}", any::<bool>()).prop_map(
        |(sizes, data, terminate)| {
            let mut request =
                b"POST /echo/fuzz HTTP/1.1\r\nHost: fuzz\r\nTransfer-Encoding: chunked\r\n\r\n"
                    .to_vec();
            for size in sizes {
                request.extend_from_slice(format!("{size}\r\n{data}\r\n").as_bytes());
            }
            if terminate {
                request.extend_from_slice(b"0\r\n\r\n");
            }
            request
        },
    );
    let binary_value = vec(128u8..=255, 1..64).prop_map(|value| {
        let mut request = b"GET /echo/fuzz HTTP/1.1\r\nHost: fuzz\r\nX-Bin: ".to_vec();
        request.extend(value);
        request.extend_from_slice(b"\r\n\r\n");
        request
    });
    let framing = prop_oneof![
        Just("Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        Just("Content-Length: -1\r\n\r\n"),
        Just("Content-Length: 99999999999999999999\r\n\r\n"),
        Just("Content-Length: 100\r\n\r\nshort"),
        Just("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        Just("Transfer-Encoding: gzip, chunked, identity\r\n\r\n0\r\n\r\n"),
        Just("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        Just("Bad Header: x\r\n\r\n"),
        Just("NoColon\r\n\r\n"),
        Just("X-Fold: a\r\n folded\r\n\r\n"),
        Just("X-Nul: a\0b\r\n\r\n"),
        Just(": empty-name\r\n\r\n"),
        Just("X-Bare-Lf: a\n\n"),
        Just("Host: second\r\n\r\n"),
        Just("Expect: 100-continue\r\nContent-Length: 3\r\n\r\n"),
        Just("Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"),
    ]
    .prop_map(|tail| format!("POST /echo/fuzz HTTP/1.1\r\nHost: fuzz\r\n{tail}").into_bytes());
    let valid = b"POST /echo/fuzz HTTP/1.1\r\nHost: fuzz\r\nContent-Length: 11\r\n\r\nhello world";
    let truncated = (0..valid.len()).prop_map(move |cut| valid[..cut].to_vec());
    let mutated = vec((0..valid.len(), any::<u8>()), 1..6).prop_map(move |flips| {
        let mut request = valid.to_vec();
        for (at, byte) in flips {
            request[at] = byte;
        }
        request
    });
    prop_oneof![
        garbage,
        request_line,
        oversized,
        many_headers,
        chunked,
        binary_value,
        framing,
        truncated,
        mutated,
    ]
}

/// What came back on a connection: the status line (its first 12 bytes),
/// `closed` when it closed without a byte, `silent` when nothing came
/// within a second.
fn read_answer(stream: &mut TcpStream) -> String {
    let mut response = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => {
                response.extend_from_slice(&buffer[..read]);
                if response.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if response.is_empty() {
                    return "silent".into();
                }
                break;
            }
            Err(_) => break,
        }
    }
    if response.is_empty() {
        return "closed".into();
    }
    let text = String::from_utf8_lossy(&response);
    let line = text.lines().next().unwrap_or_default();
    line.get(..12).unwrap_or(line).to_string()
}

/// Send `bytes` on a new connection and read the answer; when the gateway
/// waits for more, close the sending side and read again.
fn send_raw(address: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = match TcpStream::connect(address) {
        Ok(stream) => stream,
        Err(error) => return format!("connect failed: {error}"),
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // The gateway may answer and close before reading everything.
    let _ = stream.write_all(bytes);
    let answer = read_answer(&mut stream);
    if answer != "silent" {
        return answer;
    }
    let _ = stream.shutdown(Shutdown::Write);
    format!("silent, then {}", read_answer(&mut stream))
}

/// Send 300 requests of [`malformed_request`] (a fixed seed) to `gateway`,
/// 16 connections at a time, and assert that it kept accepting and runs.
async fn send_malformed_requests(gateway: &mut GatewayProcess) {
    use proptest::strategy::{Strategy as _, ValueTree as _};
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    const CASES: usize = 300;
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let strategy = malformed_request();
    let cases: Vec<Vec<u8>> = (0..CASES)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect();
    let address = gateway.address;
    let started = Instant::now();
    let outcomes: Vec<String> = tokio::task::spawn_blocking(move || {
        let cases = Arc::new(cases);
        let threads: Vec<_> = (0..16)
            .map(|thread| {
                let cases = cases.clone();
                std::thread::spawn(move || {
                    (thread..cases.len())
                        .step_by(16)
                        .map(|index| send_raw(address, &cases[index]))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    })
    .await
    .unwrap();
    let mut tally = std::collections::BTreeMap::new();
    for outcome in &outcomes {
        *tally.entry(outcome.as_str()).or_insert(0) += 1;
    }
    eprintln!(
        "{CASES} malformed requests in {:?}: {tally:?}",
        started.elapsed()
    );
    assert!(
        !outcomes.iter().any(|o| o.starts_with("connect failed")),
        "the gateway stopped accepting: {tally:?}\n{}",
        gateway.log()
    );
    assert!(
        gateway.is_running(),
        "the gateway exited:\n{}",
        gateway.log()
    );
}

/// `/healthz` answers, the process runs, and it never logged a panic.
fn assert_healthy_without_a_panic(gateway: &mut GatewayProcess) {
    assert_eq!(gateway.metrics_get("/healthz").0, 200);
    assert!(gateway.is_running());
    let log = gateway.log();
    assert!(!log.contains("panicked"), "the gateway panicked:\n{log}");
}

#[tokio::test]
async fn malformed_requests_never_take_the_gateway_down() {
    let server = NatsServer::start();
    let upstream = Upstream::start();
    let mut gateway = gateway(&server, &upstream, "", &[]);
    send_malformed_requests(&mut gateway).await;
    let good = get(gateway.address, "/echo/after", &[]).await;
    assert_eq!(good.status, 200);
    assert_eq!(good.json()["path"], "/echo/after");
    assert_healthy_without_a_panic(&mut gateway);
}

#[tokio::test]
async fn malformed_requests_never_take_down_a_gateway_with_a_chain_and_its_plugin_still_runs() {
    let server = NatsServer::start();
    let plugins = plugins(&[("header-injector", guests::HEADER_INJECTOR)]);
    let _host = start_host(&server, &plugins);
    let upstream = Upstream::start();
    let mut gateway = gateway(&server, &upstream, "header-injector", &[]);
    send_malformed_requests(&mut gateway).await;
    let before = upstream.requests();
    let good = get(gateway.address, "/echo/after", &[]).await;
    assert_eq!(good.status, 200, "{}", good.text());
    let echo = good.json();
    assert_eq!(echo["path"], "/echo/after");
    assert_eq!(seen(&echo, "x-plugin"), ["header-injector"]);
    let request_ids = seen(&echo, "x-request-id");
    assert_eq!(request_ids.len(), 1, "{echo}");
    assert!(!request_ids[0].is_empty());
    assert_eq!(upstream.requests(), before + 1);
    assert_healthy_without_a_panic(&mut gateway);
}

#[tokio::test]
async fn each_proxy_thread_calls_plugins_on_a_nats_connection_of_its_own() {
    let server = NatsServer::start();
    let plugins = plugins(&[("header-injector", guests::HEADER_INJECTOR)]);
    let _host = start_host(&server, &plugins);
    let upstream = Upstream::start();
    let gateway = gateway(&server, &upstream, "header-injector", &["--threads", "3"]);
    // The shared connection, and one of each proxy thread's own.
    let connections = "natsplug_gateway_nats_connections";
    gateway.wait_metric(connections, &[], 4.0);

    // The kernel spreads client connections over the threads' listeners;
    // whichever thread serves an exchange, it goes through the plugin, and
    // the upstream connections are reused.
    let mut served = 0;
    for index in 0..48 {
        let client = HttpClient::http1(gateway.address).await.unwrap();
        for turn in 0..2 {
            let reply = client
                .get(&format!("/echo/{index}/{turn}"), &[])
                .await
                .unwrap();
            assert_eq!(reply.status, 200);
            assert_eq!(seen(&reply.json(), "x-plugin"), ["header-injector"]);
            served += 1;
        }
    }
    assert_eq!(gateway.metric(connections, &[]), 4.0, "opened once each");
    let injector = phase_labels("default", "header-injector", "request_filter");
    gateway.wait_metric(
        "natsplug_gateway_phase_calls_total",
        &injector,
        served as f64,
    );
    assert!(
        upstream.accepted() <= 3 * 2,
        "{} upstream connections for {served} sequential exchanges",
        upstream.accepted()
    );
}

#[tokio::test]
async fn metrics_count_requests_exactly_and_sigterm_exits_cleanly() {
    let server = NatsServer::start();
    let plugins = plugins(&[("header-injector", guests::HEADER_INJECTOR)]);
    let _host = start_host(&server, &plugins);
    let upstream = Upstream::start();
    let mut gateway = gateway(&server, &upstream, "header-injector", &[]);
    assert_eq!(gateway.metrics_get("/healthz").0, 200);
    assert_eq!(gateway.metrics_get("/readyz").0, 200);

    let client = HttpClient::http1(gateway.address).await.unwrap();
    for index in 0..7 {
        let reply = client.get(&format!("/echo/{index}"), &[]).await.unwrap();
        assert_eq!(reply.status, 200);
    }
    for _ in 0..3 {
        let reply = client.get("/status/404", &[]).await.unwrap();
        assert_eq!(reply.status, 404);
        assert_eq!(reply.text(), "status 404\n");
    }
    // An upstream's own 5xx is passed on as it is.
    let reply = client.get("/status/503", &[]).await.unwrap();
    assert_eq!(reply.status, 503);
    assert_eq!(reply.text(), "status 503\n");
    let route = [("route", "default")];
    for (status, count) in [("200", 7.0), ("404", 3.0), ("503", 1.0)] {
        gateway.wait_metric(
            "natsplug_gateway_requests_total",
            &[("route", "default"), ("status", status)],
            count,
        );
    }
    gateway.wait_metric("natsplug_gateway_requests_total", &route, 11.0);
    gateway.wait_metric(
        "natsplug_gateway_request_duration_seconds_count",
        &route,
        11.0,
    );
    let injector = phase_labels("default", "header-injector", "request_filter");
    gateway.wait_metric("natsplug_gateway_phase_calls_total", &injector, 11.0);
    gateway.wait_metric(
        "natsplug_gateway_phase_duration_seconds_count",
        &injector,
        11.0,
    );
    assert_eq!(
        gateway.metric("natsplug_gateway_phase_retries_total", &injector),
        0.0
    );
    assert_eq!(
        gateway.metric("natsplug_gateway_upstream_failures_total", &route),
        0.0
    );
    assert_eq!(upstream.requests(), 11);

    drop(client);
    gateway.terminate();
    let status = gateway.wait_exit();
    assert_eq!(status.code(), Some(0), "{status}; log:\n{}", gateway.log());
}

#[tokio::test]
async fn sigterm_finishes_the_requests_in_flight_and_exits_0() {
    let server = NatsServer::start();
    let upstream = Upstream::start();
    let mut gateway = gateway(&server, &upstream, "", &[]);
    let address = gateway.address;
    let in_flight = tokio::spawn(async move { get(address, "/slow?ms=1500", &[]).await });
    wait_until("the request reaching the upstream", || {
        upstream.requests() == 1
    })
    .await;
    gateway.terminate();
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "slow\n");
    let status = gateway.wait_exit();
    assert_eq!(status.code(), Some(0), "{status}; log:\n{}", gateway.log());
    assert!(
        TcpStream::connect(address).is_err(),
        "the gateway still accepts after exiting"
    );
}

#[tokio::test]
async fn the_standalone_natsplug_gateway_binary_proxies_through_a_plugin_chain() {
    let server = NatsServer::start();
    let plugins = plugins(&[("header-injector", guests::HEADER_INJECTOR)]);
    let _host = start_host(&server, &plugins);
    let upstream = Upstream::start();
    // The gateway crate's own binary, built for the suite by
    // `natsplug_suite::gateway_binary` (see there why not CARGO_BIN_EXE_).
    let gateway = GatewayProcess::start_standalone(&[
        "--nats",
        &server.url(),
        "--upstream",
        &upstream.url(),
        "--plugins",
        "header-injector",
    ]);
    let executable = std::fs::read_link(format!("/proc/{}/exe", gateway.pid())).unwrap();
    assert_eq!(
        executable.file_name().and_then(|name| name.to_str()),
        Some("natsplug-gateway"),
        "{}",
        executable.display()
    );
    assert_eq!(
        gateway.ready_line,
        format!(
            "natsplug gateway ready: listening on {}, 1 route(s)",
            gateway.address
        )
    );

    let reply = get(gateway.address, "/echo/standalone", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let echo = reply.json();
    assert_eq!(echo["path"], "/echo/standalone");
    assert_eq!(seen(&echo, "x-plugin"), ["header-injector"]);
    assert_eq!(seen(&echo, "x-request-id").len(), 1, "{echo}");
    assert_eq!(upstream.requests(), 1);
    gateway.wait_metric(
        "natsplug_gateway_phase_calls_total",
        &phase_labels("default", "header-injector", "request_filter"),
        1.0,
    );
}

/// Run `natsplug gateway ARGS` to its end: exit code and standard error.
fn run_gateway(args: &[&str]) -> (Option<i32>, String) {
    let output = std::process::Command::new(natsplug_suite::natsplug_binary())
        .arg("gateway")
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.stdout.is_empty(),
        "printed `{}`",
        String::from_utf8_lossy(&output.stdout)
    );
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn assert_one_error_line(stderr: &str) {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
}

#[test]
fn startup_errors_are_one_error_line_and_exit_1() {
    let upstream = format!("http://{}", refused_address());
    let listen = format!("127.0.0.1:{}", natsplug_suite::nats_server::free_port());

    // NATS unreachable.
    let (code, stderr) = run_gateway(&[
        "--nats",
        "nats://127.0.0.1:1",
        "--upstream",
        &upstream,
        "--listen",
        &listen,
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_one_error_line(&stderr);

    // A mistake in a chain is named before NATS is reached.
    let (code, stderr) = run_gateway(&[
        "--nats",
        "nats://127.0.0.1:1",
        "--upstream",
        &upstream,
        "--plugins",
        "authz,a.b",
        "--listen",
        &listen,
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_one_error_line(&stderr);
    assert!(
        stderr.contains("route `default`: its chain: `a.b` is not a plugin name"),
        "{stderr}"
    );

    // A route without an upstream.
    let server = NatsServer::start();
    let mut config = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    config
        .write_all(b"[[routes]]\nname = \"broken\"\npath_prefix = \"/\"\n")
        .unwrap();
    let config_path = path_arg(config.path());
    let (code, stderr) = run_gateway(&[
        "--nats",
        &server.url(),
        "--config",
        &config_path,
        "--listen",
        &listen,
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_one_error_line(&stderr);

    // The listen address taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let (code, stderr) = run_gateway(&[
        "--nats",
        &server.url(),
        "--upstream",
        &upstream,
        "--listen",
        &taken,
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_one_error_line(&stderr);
}

#[tokio::test]
async fn a_plugin_no_host_serves_fails_closed_with_502_or_open_to_the_upstream() {
    let server = NatsServer::start();
    let upstream = Upstream::start();
    let labels = phase_labels("default", "ghost", "request_filter");
    let outcome = |name| [&labels[..], &[("outcome", name)]].concat();

    let closed = gateway(&server, &upstream, "ghost", &[]);
    let reply = get(closed.address, "/echo/ghost", &[]).await;
    assert_gateway_error(&reply, 502);
    assert_eq!(upstream.requests(), 0);
    closed.wait_metric(
        "natsplug_gateway_phase_outcomes_total",
        &outcome("failed_closed"),
        1.0,
    );
    let no_responders = [&labels[..], &[("kind", "no_responders")]].concat();
    assert!(closed.metric("natsplug_gateway_phase_failures_total", &no_responders) >= 1.0);

    let open = gateway(
        &server,
        &upstream,
        "ghost",
        &["--failure-mode", "open", "--max-retries", "0"],
    );
    let reply = get(open.address, "/echo/ghost", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(upstream.requests(), 1);
    open.wait_metric(
        "natsplug_gateway_phase_outcomes_total",
        &outcome("failed_open"),
        1.0,
    );
    open.wait_metric("natsplug_gateway_phase_failures_total", &no_responders, 1.0);
    assert_eq!(
        open.metric("natsplug_gateway_phase_retries_total", &labels),
        0.0
    );
}

#[tokio::test]
async fn request_bodies_stream_to_the_upstream_untouched() {
    let server = NatsServer::start();
    let plugins = plugins(&[("header-injector", guests::HEADER_INJECTOR)]);
    let _host = start_host(&server, &plugins);
    let upstream = Upstream::start();
    let gateway = gateway(&server, &upstream, "header-injector", &[]);
    let body = vec![b'z'; 3 << 20];
    let reply = request(gateway.address, "PUT", "/echo/upload", &[], body).await;
    assert_eq!(reply.status, 200);
    let echo = reply.json();
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["body_len"], 3 << 20);
    assert_eq!(seen(&echo, "x-plugin"), ["header-injector"]);
}

/// The gateway takes the host's `[nats]` section: the same login works for
/// both, and a wrong one stops the gateway at start with the reason.
#[tokio::test]
async fn the_gateway_logs_in_to_nats_with_the_hosts_nats_section_or_its_flags() {
    let server = NatsServer::start_with_config(
        "authorization {\n  users = [ { user: edge, password: \"3dge-secret\" } ]\n}\n",
    );
    let port = server.port();
    let plugins = plugins(&[("header-injector", guests::HEADER_INJECTOR)]);
    let (dir, host_config, cache) = (
        path_arg(plugins.dir.path()),
        path_arg(plugins.config.path()),
        path_arg(&shared_cache_dir()),
    );
    let logged_in = format!("nats://edge:3dge-secret@127.0.0.1:{port}");
    let _host = UpProcess::start(&[
        "--nats",
        &logged_in,
        "--plugins",
        &dir,
        "--config",
        &host_config,
        "--cache-dir",
        &cache,
    ]);
    let upstream = Upstream::start();
    let section = |password: &str| {
        format!(
            "[nats]\nurls = [\"nats://127.0.0.1:{port}\"]\nuser = \"edge\"\npassword = \"{password}\"\n\n[[routes]]\nupstream = \"{}\"\nplugins = [\"header-injector\"]\n",
            upstream.url()
        )
    };

    let gateway = GatewayProcess::start_with_config(&section("3dge-secret"), &[]);
    let reply = get(gateway.address, "/echo/login", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(seen(&reply.json(), "x-plugin"), ["header-injector"]);

    let mut wrong = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    wrong.write_all(section("wrong").as_bytes()).unwrap();
    let listen = format!("127.0.0.1:{}", natsplug_suite::nats_server::free_port());
    let (code, stderr) = run_gateway(&["--config", &path_arg(wrong.path()), "--listen", &listen]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_one_error_line(&stderr);
    assert!(
        stderr.contains("refused the login (authorization violation) for user `edge` with the password of nats.password"),
        "{stderr}"
    );

    // The same login from the flags `natsplug up` takes.
    let (nats_url, upstream_url) = (format!("nats://127.0.0.1:{port}"), upstream.url());
    let login = |password: &'static str| {
        [
            "--nats",
            nats_url.as_str(),
            "--nats-user",
            "edge",
            "--nats-password",
            password,
            "--upstream",
            upstream_url.as_str(),
            "--plugins",
            "header-injector",
        ]
    };
    let flagged = GatewayProcess::start(&login("3dge-secret"));
    let reply = get(flagged.address, "/echo/flags", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(seen(&reply.json(), "x-plugin"), ["header-injector"]);
    let listen = format!("127.0.0.1:{}", natsplug_suite::nats_server::free_port());
    let mut refused = login("wrong").to_vec();
    refused.extend(["--listen", &listen]);
    let (code, stderr) = run_gateway(&refused);
    assert_eq!(code, Some(1), "{stderr}");
    assert_one_error_line(&stderr);
    assert!(
        stderr.contains("refused the login (authorization violation) for user `edge`"),
        "{stderr}"
    );
}
