//! The plugins written in other languages, end to end: the Python validator
//! (componentize-py) and the JavaScript path rewriter (componentize-js),
//! served by a host on a real nats-server, with exact assertions on the
//! replies. Both are built against contract natsplug:plugin@0.2.0 from a
//! world of their own that exports only `init` and `request-filter`; the
//! tests check that with `natsplug inspect`, and that each `init` refuses a
//! bad configuration, failing the load.
//!
//! Cargo does not build these components: `examples/build-polyglot.sh` does,
//! into `target/guests/polyglot/`. A missing component fails the test.
//!
//! `measure_polyglot_components` (ignored by default) prints the numbers
//! quoted in the examples' READMEs:
//! `cargo test -p natsplug-suite --release --test polyglot -- --ignored --nocapture measure`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use natsplug::logs::{LogLevel, LogValue};
use natsplug_protocol::{Action, HeaderMutations, PhaseReply, PhaseRequest};
use natsplug_suite::client::request;
use natsplug_suite::host::{install_file, shared_cache_dir};
use natsplug_suite::{NatsServer, PhaseClient, TestHost, natsplug_binary};
use serde_json::{Value, json};

/// The built component `<name>.wasm`, or a failure saying how to build it.
fn polyglot_component(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("guests")
        .join("polyglot")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: the Python and JavaScript example plugins are not built by cargo. \
         Run `examples/build-polyglot.sh` (it needs python3 and node/npm) before `cargo test`.",
        path.display()
    );
    path.display().to_string()
}

fn post_json(request_id: &str, path: &str, body: &str) -> PhaseRequest {
    let mut phase_request = request("request_filter", request_id, "POST", path);
    phase_request.request.headers = vec![(
        "Content-Type".into(),
        "application/json; charset=utf-8".into(),
    )];
    phase_request.request.body = Some(body.as_bytes().to_vec());
    phase_request
}

/// `reply` is a `next` with no change at all.
fn assert_unchanged(reply: &PhaseReply, request_id: &str) {
    assert_eq!(reply.version, 1);
    assert_eq!(reply.request_id, request_id);
    assert_eq!(reply.action, Action::Next, "{reply:?}");
    assert_eq!(reply.request_headers, None);
    assert_eq!(reply.response_headers, None);
    assert_eq!(reply.status, None);
    assert_eq!(reply.body, None);
    assert_eq!(reply.error, None);
    assert_eq!(reply.path, None);
    assert_eq!(reply.state, None);
}

/// `reply` answers the client with `status` and the JSON `body`.
fn assert_answer(reply: &PhaseReply, request_id: &str, status: u16, body: &str) {
    assert_eq!(reply.request_id, request_id);
    assert_eq!(reply.action, Action::End, "{reply:?}");
    assert_eq!(reply.status, Some(status));
    assert_eq!(
        String::from_utf8(reply.body.clone().expect("a response body")).unwrap(),
        body
    );
    assert_eq!(
        reply.response_headers,
        Some(HeaderMutations {
            set: vec![("content-type".into(), "application/json".into())],
            remove: vec![],
        })
    );
    assert_eq!(reply.request_headers, None);
    assert_eq!(reply.error, None);
    assert_eq!(reply.path, None);
}

/// `natsplug inspect --json` of `component`, looked up in the test cache (a
/// host of the test loaded it already, so it is not compiled again).
async fn inspect(natsplug: &Path, component: &str) -> Value {
    let output = tokio::process::Command::new(natsplug)
        .args(["inspect", component, "--json", "--cache-dir"])
        .arg(shared_cache_dir())
        .output()
        .await
        .expect("running natsplug inspect");
    assert!(
        output.status.success(),
        "natsplug inspect {component} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("inspect prints JSON")
}

/// What `natsplug inspect` says of a polyglot example: contract 0.2.0, the
/// exports `exports` exactly, its version, the one phase it serves, and
/// imports of the 0.2.0 host interface only.
fn assert_contract_0_2(report: &Value, name: &str, exports: &[&str]) {
    assert_eq!(report["name"], name);
    assert_eq!(report["wit"]["plugin"], "natsplug:plugin@0.2.0", "{report}");
    assert_eq!(report["wit"]["matches"], true);
    assert_eq!(report["exports"], json!(exports), "{name}");
    assert_eq!(report["phases"], json!(["request_filter"]), "{name}");
    assert_eq!(
        report["version"], "1.0.0",
        "{name}: the version `init` reports"
    );
    let natsplug_imports: Vec<&str> = report["imports"]
        .as_array()
        .expect("an imports list")
        .iter()
        .filter_map(Value::as_str)
        .filter(|import| import.starts_with("natsplug:"))
        .collect();
    assert_eq!(
        natsplug_imports,
        ["natsplug:plugin/host@0.2.0", "natsplug:plugin/types@0.2.0"],
        "{name}"
    );
    assert_eq!(report["loads"], true);
    assert_eq!(report["error"], Value::Null);
}

/// Copy `component` into the host's plugins directory under each name of
/// `names` and load the directory again: the load failures, by plugin name,
/// in name order, as the host reports them.
async fn load_more(host: &TestHost, component: &str, names: &[&str]) -> Vec<(String, String)> {
    for name in names {
        install_file(host.plugins_dir(), name, component);
    }
    let mut failures: Vec<(String, String)> = host
        .host
        .load_directory()
        .await
        .expect("listing the plugins directory")
        .into_iter()
        .map(|(path, error)| {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            (name, format!("{error:#}"))
        })
        .collect();
    failures.sort();
    failures
}

/// Every error record the host emitted for plugin `name`.
fn error_records(host: &TestHost, name: &str) -> Vec<String> {
    host.host_records_with_level(LogLevel::Error)
        .into_iter()
        .filter(|r| r.plugin == name)
        .map(|r| r.message)
        .collect()
}

/// The record the host emits when file `component`, deployed as `name`,
/// failed to load with `error`.
fn load_failure_record(component: &str, name: &str, error: &str) -> String {
    let hash = natsplug::plugin::content_hash(&std::fs::read(component).unwrap());
    format!(
        "plugin `{name}` version {} from the plugins directory failed to load: {error}",
        &hash[..12]
    )
}

#[tokio::test]
async fn python_validator_checks_json_bodies() {
    let component = polyglot_component("python-validator");
    let natsplug = natsplug_binary();
    let server = NatsServer::start();
    // The same component twice: with the built-in schema, and with one from
    // its config (the second load comes from the compiled-artifact cache).
    // Two more names get a bad schema; they are loaded at the end.
    let host = TestHost::start(
        &server.url(),
        &[
            ("python-validator", component.as_str()),
            ("sku-validator", component.as_str()),
        ],
        |config| {
            config
                .plugin
                .entry("sku-validator".into())
                .or_default()
                .config
                .insert(
                    "schema".into(),
                    r#"{"type": "object", "required": ["sku"],
                        "properties": {"sku": {"type": "string", "maxLength": 8},
                                       "tier": {"enum": ["gold", "silver"]}},
                        "additionalProperties": false}"#
                        .into(),
                );
            for (name, schema) in [
                ("array-schema", r#"[{"type": "object"}]"#),
                ("broken-schema", r#"{"type": "object""#),
            ] {
                config
                    .plugin
                    .entry(name.into())
                    .or_default()
                    .config
                    .insert("schema".into(), schema.into());
            }
        },
    )
    .await;
    assert_eq!(
        host.host.subjects().await,
        vec![
            "nylon.plugin.python-validator.request_filter".to_string(),
            "nylon.plugin.sku-validator.request_filter".to_string(),
        ]
    );
    // componentize-py leaves its own build-time interface, `exports` (the
    // initialiser it runs while building), in every component it makes; the
    // host ignores it.
    assert_contract_0_2(
        &inspect(&natsplug, &component).await,
        "python-validator",
        &[
            "exports",
            "natsplug:plugin/init@0.2.0",
            "natsplug:plugin/request-filter@0.2.0",
        ],
    );
    let client = PhaseClient::new(server.connect().await);

    // Valid: passes unchanged.
    let reply = client
        .send(
            "python-validator",
            &post_json("p-1", "/orders", r#"{"name": "widget", "quantity": 3}"#),
        )
        .await;
    assert_unchanged(&reply, "p-1");

    // Invalid: every reason, in schema order.
    let reply = client
        .send(
            "python-validator",
            &post_json("p-2", "/orders", r#"{"quantity": 0, "note": "x"}"#),
        )
        .await;
    assert_answer(
        &reply,
        "p-2",
        422,
        r#"{"error":"validation_failed","reasons":[{"field":"/name","message":"is required"},{"field":"/quantity","message":"must be at least 1"}]}"#,
    );
    let reply = client
        .send(
            "python-validator",
            &post_json("p-3", "/orders", r#"{"name": "", "quantity": true}"#),
        )
        .await;
    assert_answer(
        &reply,
        "p-3",
        422,
        r#"{"error":"validation_failed","reasons":[{"field":"/name","message":"must be at least 1 character long"},{"field":"/quantity","message":"must be an integer, not boolean"}]}"#,
    );
    let reply = client
        .send(
            "python-validator",
            &post_json("p-4", "/orders", r#"[{"name": "widget", "quantity": 3}]"#),
        )
        .await;
    assert_answer(
        &reply,
        "p-4",
        422,
        r#"{"error":"validation_failed","reasons":[{"field":"","message":"must be an object, not array"}]}"#,
    );

    // Not JSON: 400 for a body that does not parse, 415 for another media type.
    let reply = client
        .send(
            "python-validator",
            &post_json("p-5", "/orders", r#"{"name": "widget", quantity: 3}"#),
        )
        .await;
    assert_answer(
        &reply,
        "p-5",
        400,
        r#"{"error":"malformed_json","message":"the body is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 20 (char 19)"}"#,
    );
    let reply = client
        .send(
            "python-validator",
            &post_json("p-6", "/orders", r#"{"quantity": NaN}"#),
        )
        .await;
    assert_answer(
        &reply,
        "p-6",
        400,
        r#"{"error":"malformed_json","message":"the body is not valid JSON: NaN is not a JSON value"}"#,
    );
    let mut no_body = post_json("p-7", "/orders", "");
    no_body.request.body = None;
    let reply = client.send("python-validator", &no_body).await;
    assert_answer(
        &reply,
        "p-7",
        400,
        r#"{"error":"malformed_json","message":"a JSON body is required"}"#,
    );
    let mut form = post_json("p-8", "/orders", "name=widget&quantity=3");
    form.request.headers = vec![(
        "content-type".into(),
        "application/x-www-form-urlencoded".into(),
    )];
    let reply = client.send("python-validator", &form).await;
    assert_answer(
        &reply,
        "p-8",
        415,
        r#"{"error":"unsupported_media_type","message":"the body must be application/json, not application/x-www-form-urlencoded"}"#,
    );

    // Methods without a body to check pass untouched.
    let reply = client
        .send(
            "python-validator",
            &request("request_filter", "p-9", "GET", "/orders"),
        )
        .await;
    assert_unchanged(&reply, "p-9");

    // The schema from the config.
    let reply = client
        .send(
            "sku-validator",
            &post_json("s-1", "/items", r#"{"sku": "AB-12", "tier": "gold"}"#),
        )
        .await;
    assert_unchanged(&reply, "s-1");
    let reply = client
        .send(
            "sku-validator",
            &post_json(
                "s-2",
                "/items",
                r#"{"sku": "ABCDEFGHIJ", "tier": "bronze", "name": "widget"}"#,
            ),
        )
        .await;
    assert_answer(
        &reply,
        "s-2",
        422,
        r#"{"error":"validation_failed","reasons":[{"field":"/sku","message":"must be at most 8 characters long"},{"field":"/tier","message":"must be one of \"gold\", \"silver\""},{"field":"/name","message":"is not allowed"}]}"#,
    );

    // One log record per rejection, through the host's `log` import (records
    // are emitted right after the reply is sent).
    let rejections = wait_for(|| {
        let records: Vec<_> = host
            .records
            .records()
            .into_iter()
            .filter(|r| r.message == "rejected a request body")
            .collect();
        (records.len() >= 8).then_some(records)
    })
    .await;
    let mut ids: Vec<_> = rejections
        .iter()
        .map(|r| r.request_id.clone().unwrap_or_default())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        ["p-2", "p-3", "p-4", "p-5", "p-6", "p-7", "p-8", "s-2"],
        "one record per rejected request, none for the others"
    );
    let record = rejections
        .iter()
        .find(|r| r.request_id.as_deref() == Some("p-2"))
        .unwrap();
    assert_eq!(record.level, LogLevel::Warn);
    assert_eq!(record.message, "rejected a request body");
    assert_eq!(record.plugin, "python-validator");
    assert_eq!(record.plugin_version.as_deref(), Some("1.0.0"));
    assert_eq!(
        record.fields,
        vec![
            ("method".to_string(), LogValue::Text("POST".into())),
            ("path".to_string(), LogValue::Text("/orders".into())),
            ("status".to_string(), LogValue::Integer(422)),
            ("reasons".to_string(), LogValue::Integer(2)),
        ]
    );

    // A schema that is not a JSON object is refused by `init`: the load
    // fails, saying why, and the plugin is not served.
    let failures = load_more(&host, &component, &["array-schema", "broken-schema"]).await;
    let refusals = [
        (
            "array-schema",
            "plugin `array-schema` refused its configuration in `init`: \
             config `schema` must be a JSON object, not array",
        ),
        (
            "broken-schema",
            "plugin `broken-schema` refused its configuration in `init`: \
             config `schema` is not valid JSON: Expecting ',' delimiter: line 1 column 18 (char 17)",
        ),
    ];
    assert_eq!(
        failures,
        refusals.map(|(name, refusal)| (name.to_string(), refusal.to_string()))
    );
    for (name, refusal) in refusals {
        assert_eq!(
            error_records(&host, name),
            [load_failure_record(&component, name, refusal)],
            "one error record for {name}"
        );
    }
    assert_eq!(
        host.host.subjects().await,
        vec![
            "nylon.plugin.python-validator.request_filter".to_string(),
            "nylon.plugin.sku-validator.request_filter".to_string(),
        ]
    );
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn js_rewriter_rewrites_paths_by_its_table() {
    let component = polyglot_component("js-rewriter");
    let natsplug = natsplug_binary();
    let server = NatsServer::start();
    // `js-rewriter-broken`, with a malformed table, is loaded at the end.
    let host = TestHost::start(
        &server.url(),
        &[("js-rewriter", component.as_str())],
        |config| {
            config
                .plugin
                .entry("js-rewriter".into())
                .or_default()
                .config
                .insert(
                    "routes".into(),
                    "/old=/new, /api/v1=/v2,/api=/backend/".into(),
                );
            config
                .plugin
                .entry("js-rewriter-broken".into())
                .or_default()
                .config
                .insert("routes".into(), "/old=/new,nonsense".into());
        },
    )
    .await;
    assert_eq!(
        host.host.subjects().await,
        vec!["nylon.plugin.js-rewriter.request_filter".to_string()]
    );
    assert_contract_0_2(
        &inspect(&natsplug, &component).await,
        "js-rewriter",
        &[
            "natsplug:plugin/init@0.2.0",
            "natsplug:plugin/request-filter@0.2.0",
        ],
    );
    let client = PhaseClient::new(server.connect().await);

    let cases = [
        // (request path, query, rewritten path sent back)
        ("/old", None, "/new"),
        ("/old/page", Some("x=1&y=2"), "/new/page?x=1&y=2"),
        // The longest matching prefix wins.
        ("/api/v1/users", None, "/v2/users"),
        // Prefixes match whole segments: `/api/v1` is no prefix of `/api/v10`.
        ("/api/v10", None, "/backend/v10"),
        ("/api", None, "/backend"),
    ];
    for (index, (path, query, rewritten)) in cases.into_iter().enumerate() {
        let request_id = format!("j-{index}");
        let mut phase_request = request("request_filter", &request_id, "GET", path);
        phase_request.request.query = query.map(str::to_string);
        let reply = client.send("js-rewriter", &phase_request).await;
        assert_eq!(reply.request_id, request_id);
        assert_eq!(reply.action, Action::Next, "{reply:?}");
        assert_eq!(reply.path.as_deref(), Some(rewritten), "{path}");
        let new_path = rewritten.split('?').next().unwrap();
        assert_eq!(
            reply.request_headers,
            Some(HeaderMutations {
                set: vec![
                    ("x-original-path".into(), path.into()),
                    ("x-rewritten-path".into(), new_path.into()),
                ],
                remove: vec![],
            }),
            "{path}"
        );
        assert_eq!(reply.response_headers, None);
        assert_eq!(reply.status, None);
        assert_eq!(reply.body, None);
        assert_eq!(reply.error, None);
    }

    // No route matches: unchanged.
    for (index, path) in ["/older", "/", "/static/old"].into_iter().enumerate() {
        let request_id = format!("u-{index}");
        let reply = client
            .send(
                "js-rewriter",
                &request("request_filter", &request_id, "GET", path),
            )
            .await;
        assert_unchanged(&reply, &request_id);
    }

    // Each rewrite is logged with both paths.
    let record = wait_for(|| {
        host.records
            .records()
            .into_iter()
            .find(|r| r.request_id.as_deref() == Some("j-2"))
    })
    .await;
    assert_eq!(record.level, LogLevel::Info);
    assert_eq!(record.message, "rewrote the request path");
    assert_eq!(record.plugin, "js-rewriter");
    assert_eq!(record.plugin_version.as_deref(), Some("1.0.0"));
    assert_eq!(
        record.fields,
        vec![
            ("from".to_string(), LogValue::Text("/api/v1/users".into())),
            ("to".to_string(), LogValue::Text("/v2/users".into())),
        ]
    );

    // A malformed table is refused by `init`, saying which entry is wrong:
    // the load fails and the plugin is not served.
    let refusal = "plugin `js-rewriter-broken` refused its configuration in `init`: \
                   config `routes`: route `nonsense` is not of the form /from=/to";
    let failures = load_more(&host, &component, &["js-rewriter-broken"]).await;
    assert_eq!(
        failures,
        [("js-rewriter-broken".to_string(), refusal.to_string())]
    );
    assert_eq!(
        error_records(&host, "js-rewriter-broken"),
        [load_failure_record(
            &component,
            "js-rewriter-broken",
            refusal
        )]
    );
    assert_eq!(
        host.host.subjects().await,
        vec!["nylon.plugin.js-rewriter.request_filter".to_string()]
    );
    host.host.shutdown().await.unwrap();
}

/// Size, compile, instantiate and call times of the polyglot components,
/// with a Rust example for comparison. Run it in release for the READMEs.
#[test]
#[ignore = "a measurement, not a check: run it with --ignored --nocapture"]
fn measure_polyglot_components() {
    use natsplug::config::{PluginSettings, RuntimeConfig};
    use natsplug::dispatch::{self, CallSettings};
    use natsplug::plugin::PluginLoader;
    use natsplug_protocol as protocol;
    use natsplug_protocol::Phase;

    let runtime = RuntimeConfig::default();
    let engine = natsplug::engine::build_engine(&runtime).expect("an engine");
    // No artifact cache: every load compiles.
    let loader = PluginLoader::new(engine, &runtime).expect("a loader");
    let call_settings = CallSettings::from_runtime(&runtime, 1024 * 1024);

    let mut settings = PluginSettings::default();
    settings
        .config
        .insert("routes".into(), "/old=/new,/api/v1=/v2".into());
    let python_request = protocol::encode_request(&post_json(
        "m",
        "/orders",
        r#"{"name": "widget", "quantity": 3}"#,
    ));
    let js_request = protocol::encode_request(&request("request_filter", "m", "GET", "/old/page"));
    let subjects = [
        (
            "python-validator".to_string(),
            polyglot_component("python-validator"),
            python_request,
        ),
        (
            "js-rewriter".to_string(),
            polyglot_component("js-rewriter"),
            js_request.clone(),
        ),
        (
            "header-injector".to_string(),
            natsplug_suite::guests::HEADER_INJECTOR.to_string(),
            js_request,
        ),
    ];

    println!(
        "| component | size | compile (Component::new) | instantiate (median of 20) | first call on a new instance | warm call (median of 1000) |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, path, payload) in subjects {
        let bytes = std::fs::read(&path).expect("the component");
        let plugin = loader
            .load_bytes(&name, &bytes, &settings)
            .unwrap_or_else(|e| panic!("loading {name}: {e:#}"));

        let mut instantiate = Vec::new();
        for _ in 0..20 {
            let started = Instant::now();
            let instance = plugin.instantiate().expect("an instance");
            instantiate.push(started.elapsed());
            drop(instance);
        }

        let mut slot = Some(plugin.instantiate().expect("an instance"));
        let started = Instant::now();
        let outcome = dispatch::run(
            &mut slot,
            &plugin,
            Phase::RequestFilter,
            &payload,
            None,
            &call_settings,
        );
        let first_call = started.elapsed();
        assert!(outcome.error.is_none(), "{name}: {:?}", outcome.error);

        let mut warm = Vec::new();
        for _ in 0..1000 {
            let started = Instant::now();
            let outcome = dispatch::run(
                &mut slot,
                &plugin,
                Phase::RequestFilter,
                &payload,
                None,
                &call_settings,
            );
            warm.push(started.elapsed());
            assert!(outcome.error.is_none(), "{name}: {:?}", outcome.error);
        }
        println!(
            "| {name} | {:.1} MB ({} bytes) | {:.2} s | {} | {} | {} |",
            bytes.len() as f64 / 1e6,
            bytes.len(),
            plugin.compile_time.as_secs_f64(),
            show(median(&mut instantiate)),
            show(first_call),
            show(median(&mut warm)),
        );
    }
}

async fn wait_for<T>(mut probe: impl FnMut() -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(value) = probe() {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 2 s");
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn show(duration: Duration) -> String {
    if duration >= Duration::from_millis(1) {
        format!("{:.2} ms", duration.as_secs_f64() * 1e3)
    } else {
        format!("{:.1} µs", duration.as_secs_f64() * 1e6)
    }
}
