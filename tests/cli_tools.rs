//! The plugin author's and operator's subcommands as real processes:
//! `call`, `invoke`, `inspect`, `new` and `bench`, on real files, a real
//! nats-server and a real host.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use natsplug_suite::host::shared_cache_dir;
use natsplug_suite::{NatsServer, TestHost, cargo_command, guests, natsplug_binary};
use serde_json::{Value, json};

/// Run `natsplug ARGS` and wait for it (blocking: for tests without an
/// in-process host).
fn natsplug<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(natsplug_binary())
        .args(args)
        .output()
        .expect("running natsplug")
}

/// Run `natsplug ARGS` without blocking the runtime an in-process host
/// serves on.
async fn natsplug_async<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    tokio::process::Command::new(natsplug_binary())
        .args(args)
        .output()
        .await
        .expect("running natsplug")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The JSON a successful run printed.
fn json_of(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "natsplug failed: {}\n{}",
        output.status,
        stderr(output)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(output)))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The cargo target directory the tests were built in.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/cli_tools-<hash>
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

async fn authz_host(server: &NatsServer) -> TestHost {
    TestHost::start(&server.url(), &[("authz", guests::AUTHZ)], |config| {
        let settings = config.plugin.entry("authz".into()).or_default();
        settings.config.insert("token".into(), "s3cret".into());
        settings
            .config
            .insert("public_paths".into(), "/health,/login".into());
    })
    .await
}

#[test]
fn every_subcommand_has_help_with_examples() {
    let output = natsplug(["--help"]);
    assert!(output.status.success());
    let help = stdout(&output);
    for command in ["up", "call", "invoke", "inspect", "new", "bench"] {
        assert!(
            help.contains(&format!("\n  {command} ")),
            "`{command}` missing from:\n{help}"
        );
        assert!(help.contains(&format!("  natsplug {command} ")), "{help}");
    }
    for command in ["up", "call", "invoke", "inspect", "new", "bench"] {
        let output = natsplug([command, "--help"]);
        assert!(output.status.success(), "{command} --help failed");
        let help = stdout(&output);
        assert!(
            help.contains(&format!("Examples:\n  natsplug {command} ")),
            "{command} --help has no examples:\n{help}"
        );
        let builds_requests = matches!(command, "call" | "invoke" | "bench");
        assert_eq!(
            help.contains("Request file (--request FILE, JSON or YAML"),
            builds_requests,
            "{command} --help and the request-file format:\n{help}"
        );
    }
}

#[tokio::test]
async fn call_returns_the_plugins_exact_reply() {
    let server = NatsServer::start();
    let host = authz_host(&server).await;
    let files = tempfile::tempdir().unwrap();
    let url = server.url();

    // From a JSON request file, as JSON.
    let request = write(
        files.path(),
        "admin.json",
        r#"{"request_id": "call-1", "request": {"method": "GET", "path": "/admin"}}"#,
    );
    let output = natsplug_async([
        "call",
        "authz",
        "request_filter",
        "--request",
        request.to_str().unwrap(),
        "--json",
        "--nats",
        &url,
    ])
    .await;
    assert_eq!(
        json_of(&output),
        json!({
            "version": 1,
            "request_id": "call-1",
            "action": "end",
            "request_headers": null,
            "response_headers": {
                "set": [["content-type", "application/json"], ["www-authenticate", "Bearer"]],
                "remove": [],
            },
            "status": 401,
            "body": r#"{"error":"unauthorized","message":"a bearer token is required"}"#,
            "error": null,
            "path": null,
            "state": null,
        })
    );

    // From a YAML request file, as text.
    let request = write(
        files.path(),
        "wrong.yaml",
        "request:\n  path: /admin\n  headers:\n    authorization: Bearer nope\n",
    );
    let output = natsplug_async([
        "call",
        "authz",
        "request_filter",
        "-r",
        request.to_str().unwrap(),
        "--nats",
        &url,
    ])
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "action: end\nstatus: 403\nresponse header set: content-type: application/json\n\
         body: {\"error\":\"forbidden\",\"message\":\"the bearer token is not valid\"}\n"
    );

    // From flags alone.
    let output = natsplug_async([
        "call",
        "authz",
        "request_filter",
        "--path",
        "/admin",
        "-H",
        "authorization: Bearer s3cret",
        "--nats",
        &url,
    ])
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "action: next\nrequest header removed: authorization\n"
    );

    // Nothing serves the subject: the error says what to check.
    let output = natsplug_async(["call", "nope", "request_filter", "--nats", &url]).await;
    assert!(!output.status.success());
    assert_eq!(
        stderr(&output).trim_end(),
        "error: no host serves nylon.plugin.nope.request_filter: is `natsplug up` running on this \
         NATS server with the plugin loaded, and does the plugin implement request_filter?"
    );

    // A mistake in the request file is named.
    let bad = write(files.path(), "bad.json", r#"{"request": {"pth": "/"}}"#);
    let output = natsplug_async([
        "call",
        "authz",
        "request_filter",
        "--request",
        bad.to_str().unwrap(),
        "--nats",
        &url,
    ])
    .await;
    assert!(!output.status.success());
    let error = stderr(&output);
    assert!(
        error.contains(&format!(
            "error: request file {} is not a valid JSON request (see `natsplug call --help` for the format): unknown field `pth`",
            bad.display()
        )),
        "{error}"
    );
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn invoke_gives_the_same_reply_as_the_host() {
    let server = NatsServer::start();
    let host = authz_host(&server).await;
    let files = tempfile::tempdir().unwrap();
    let url = server.url();
    // The host's plugin config, as a config file for one half of the
    // requests and as --set flags for the other.
    let config = write(
        files.path(),
        "natsplug.toml",
        "[plugin.authz.config]\ntoken = \"s3cret\"\npublic_paths = \"/health,/login\"\n",
    );
    let requests = [
        r#"{"request_id": "same-1", "request": {"path": "/admin"}}"#,
        "request_id: same-2\nrequest:\n  path: /admin\n  headers: [[authorization, Bearer nope]]\n",
        "request_id: same-3\nsession_id: 9\nrequest:\n  method: POST\n  path: /admin\n  headers:\n    accept: '*/*'\n    authorization: Bearer s3cret\n  body: {base64: AAEC/w==}\n",
        r#"{"request_id": "same-4", "phase": "request_filter", "request": {"path": "/health"}}"#,
    ];
    let mut actions = Vec::new();
    for (index, text) in requests.iter().enumerate() {
        let extension = if text.starts_with('{') {
            "json"
        } else {
            "yaml"
        };
        let file = write(files.path(), &format!("r{index}.{extension}"), text);
        let file = file.to_str().unwrap();
        let config_flags: Vec<&str> = if index % 2 == 0 {
            vec!["--config", config.to_str().unwrap()]
        } else {
            vec![
                "--set",
                "token=s3cret",
                "--set",
                "public_paths=/health,/login",
            ]
        };
        let cache = shared_cache_dir();
        let invoke = |output: &'static str| {
            let mut args = vec![
                "invoke",
                guests::AUTHZ,
                "request_filter",
                "--name",
                "authz",
                "--request",
                file,
                "--cache-dir",
                cache.to_str().unwrap(),
                output,
            ];
            args.extend(&config_flags);
            args
        };
        let call = |output: &'static str| {
            vec![
                "call",
                "authz",
                "request_filter",
                "--request",
                file,
                "--nats",
                &url,
                output,
            ]
        };

        // Byte for byte: the encoded replies.
        let from_host = natsplug_async(call("--raw")).await;
        assert!(from_host.status.success(), "{}", stderr(&from_host));
        let local = natsplug_async(invoke("--raw")).await;
        assert!(local.status.success(), "{}", stderr(&local));
        assert!(!from_host.stdout.is_empty());
        assert_eq!(local.stdout, from_host.stdout, "request {index}");
        let reply = natsplug_protocol::decode_reply(&local.stdout).unwrap();
        assert_eq!(reply.request_id, format!("same-{}", index + 1));
        actions.push((reply.action, reply.status));

        // And as JSON.
        let from_host = json_of(&natsplug_async(call("--json")).await);
        let local = json_of(&natsplug_async(invoke("--json")).await);
        assert_eq!(local["reply"], from_host, "request {index}");
        assert_eq!(local["plugin"], "authz");
        assert_eq!(local["phase"], "request_filter");
    }
    use natsplug_protocol::Action;
    assert_eq!(
        actions,
        vec![
            (Action::End, Some(401)),
            (Action::End, Some(403)),
            (Action::Next, None),
            (Action::Next, None),
        ]
    );
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn invoke_prints_the_log_records_the_host_would_emit() {
    let server = NatsServer::start();
    let host = TestHost::start(
        &server.url(),
        &[("access-logger", guests::ACCESS_LOGGER)],
        |_| {},
    )
    .await;
    let files = tempfile::tempdir().unwrap();
    let request = write(
        files.path(),
        "log.yaml",
        "request_id: log-1\nsession_id: 5\nrequest:\n  method: PUT\n  path: /items/7\n  client_ip: 10.1.2.3\n  headers:\n    user-agent: curl/8\nresponse:\n  status: 503\nduration_ms: 42\n",
    );
    let request = request.to_str().unwrap();
    let cache = shared_cache_dir();
    let cache = cache.to_str().unwrap();

    let output = natsplug_async([
        "invoke",
        guests::ACCESS_LOGGER,
        "--name",
        "access-logger",
        "--request",
        request,
        "--cache-dir",
        cache,
        "--json",
    ])
    .await;
    let local = json_of(&output);
    assert_eq!(local["phase"], "logging");
    assert_eq!(local["dropped_logs"], 0);
    assert_eq!(
        local["logs"],
        json!([{
            "level": "warn",
            "message": "PUT /items/7 503",
            "fields": {
                "method": "PUT",
                "path": "/items/7",
                "status": 503,
                "duration_ms": 42,
                "client_ip": "10.1.2.3",
                "user_agent": "curl/8",
            },
            "plugin": "access-logger",
            "plugin_version": "1.0.0",
            "request_id": "log-1",
            "session_id": 5,
            "trace_id": null,
        }])
    );

    // The host logs the same record for the same request.
    let output = natsplug_async([
        "call",
        "access-logger",
        "logging",
        "--request",
        request,
        "--json",
        "--nats",
        &server.url(),
    ])
    .await;
    assert_eq!(json_of(&output), local["reply"]);
    // The host emits a call's records after it replies.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let records = loop {
        let records: Vec<_> = host
            .records
            .records()
            .into_iter()
            .filter(|r| r.request_id.as_deref() == Some("log-1"))
            .collect();
        if !records.is_empty() || std::time::Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    assert_eq!(record.message, "PUT /items/7 503");
    assert_eq!(record.level.as_str(), "warn");
    assert_eq!(record.request_id.as_deref(), Some("log-1"));
    assert_eq!(record.session_id, Some(5));
    let fields: Vec<(String, String)> = record
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    assert_eq!(
        fields,
        [
            ("method", "PUT"),
            ("path", "/items/7"),
            ("status", "503"),
            ("duration_ms", "42"),
            ("client_ip", "10.1.2.3"),
            ("user_agent", "curl/8"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );
    host.host.shutdown().await.unwrap();

    // As text, after the reply.
    let output = natsplug([
        "invoke",
        guests::ACCESS_LOGGER,
        "logging",
        "--path",
        "/x",
        "--status",
        "200",
        "--cache-dir",
        cache,
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "action: next\nlogs (1):\n  info  GET /x 200 method=GET path=/x status=200 duration_ms=0 client_ip= user_agent=\n"
    );

    // A flood is capped as in the host, and the drop is reported.
    let output = natsplug([
        "invoke",
        guests::MISBEHAVE,
        "--path",
        "/flood",
        "--cache-dir",
        cache,
        "--json",
    ]);
    let flood = json_of(&output);
    assert_eq!(flood["reply"]["action"], "next");
    let logs = flood["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 1000);
    assert_eq!(logs[999]["message"], "flood");
    assert_eq!(logs[999]["fields"], json!({"index": 999}));
    assert_eq!(flood["dropped_logs"], 4000);

    // A plugin failure is the host's error reply, and a non-zero exit.
    let output = natsplug([
        "invoke",
        guests::MISBEHAVE,
        "--path",
        "/panic",
        "--cache-dir",
        cache,
    ]);
    assert!(!output.status.success());
    assert!(
        stdout(&output)
            .starts_with("action: error\nerror: plugin `misbehave` trapped in request_filter"),
        "{}",
        stdout(&output)
    );
    assert!(
        stderr(&output)
            .contains("error: the plugin answered with an error: plugin `misbehave` trapped"),
        "{}",
        stderr(&output)
    );

    // A phase the plugin does not implement is refused before the call.
    let output = natsplug([
        "invoke",
        guests::ACCESS_LOGGER,
        "request_filter",
        "--cache-dir",
        cache,
    ]);
    assert!(!output.status.success());
    assert_eq!(
        stderr(&output).trim_end(),
        "error: plugin `access_logger` does not implement request_filter (it implements logging): the host would not serve that subject"
    );
}

#[test]
fn inspect_reports_each_example() {
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap();
    // (path, name, phase, exported interface, the contract interfaces it
    // imports): header-injector reads its config in `init`, so it calls no
    // host function and its component does not import `host`.
    let types = "natsplug:plugin/types@0.2.0";
    let host = "natsplug:plugin/host@0.2.0";
    let examples = [
        (
            guests::HEADER_INJECTOR,
            "header_injector",
            "request_filter",
            "natsplug:plugin/request-filter@0.2.0",
            vec![types],
        ),
        (
            guests::AUTHZ,
            "authz",
            "request_filter",
            "natsplug:plugin/request-filter@0.2.0",
            vec![host, types],
        ),
        (
            guests::BODY_REDACTOR,
            "body_redactor",
            "response_body_filter",
            "natsplug:plugin/response-body-filter@0.2.0",
            vec![host, types],
        ),
        (
            guests::ACCESS_LOGGER,
            "access_logger",
            "logging",
            "natsplug:plugin/logging@0.2.0",
            vec![host, types],
        ),
    ];
    for (path, name, phase, interface, contract_imports) in examples {
        let report = json_of(&natsplug([
            "inspect",
            path,
            "--cache-dir",
            cache_dir,
            "--json",
        ]));
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(report["name"], name);
        assert_eq!(report["phases"], json!([phase]), "{name}");
        assert_eq!(report["version"], "1.0.0");
        assert_eq!(report["wit"]["matches"], true);
        assert_eq!(report["wit"]["plugin"], "natsplug:plugin@0.2.0");
        assert_eq!(
            report["wit"]["host"],
            json!(["natsplug:plugin@0.2.0", "natsplug:plugin@0.1.0"])
        );
        assert_eq!(
            report["wit"]["summary"],
            "natsplug:plugin@0.2.0 (this host serves 0.2.0 and 0.1.0)"
        );
        assert_eq!(report["size"], bytes.len());
        assert_eq!(
            report["content_hash"],
            natsplug::plugin::content_hash(&bytes)
        );
        assert_eq!(
            report["exports"],
            json!(["natsplug:plugin/init@0.2.0", interface]),
            "{name}"
        );
        let imports: Vec<&str> = report["imports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_str().unwrap())
            .filter(|i| i.starts_with("natsplug:"))
            .collect();
        assert_eq!(imports, contract_imports, "{name}");
        assert_eq!(report["cache"]["cached"], false);
        assert_eq!(report["loads"], true);
        assert_eq!(report["error"], Value::Null);
    }

    // Loading through the host's cache makes inspect report it as cached.
    let output = natsplug([
        "invoke",
        guests::AUTHZ,
        "--set",
        "token=t",
        "--cache-dir",
        cache_dir,
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let output = natsplug(["inspect", guests::AUTHZ, "--cache-dir", cache_dir]);
    assert!(output.status.success());
    let text = stdout(&output);
    let bytes = std::fs::read(guests::AUTHZ).unwrap();
    let expected_head = format!(
        "file:     {}\nplugin:   authz\nversion:  1.0.0\nphases:   request_filter\n\
         wit:      natsplug:plugin@0.2.0 (this host serves 0.2.0 and 0.1.0)\nsize:     {} bytes\nsha256:   {}\ncached:   yes, in {}/",
        guests::AUTHZ,
        bytes.len(),
        natsplug::plugin::content_hash(&bytes),
        cache_dir
    );
    assert!(text.starts_with(&expected_head), "{text}");
    assert!(
        text.contains(
            "\nexports:\n  natsplug:plugin/init@0.2.0\n  natsplug:plugin/request-filter@0.2.0\n\
             imports:\n  natsplug:plugin/host@0.2.0\n  natsplug:plugin/types@0.2.0\n"
        ),
        "{text}"
    );
}

#[test]
fn inspect_rejects_what_is_not_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let text = write(dir.path(), "notes.wasm", "just some text\n");
    let output = natsplug(["inspect", text.to_str().unwrap()]);
    assert!(!output.status.success());
    assert_eq!(
        stderr(&output).trim_end(),
        format!(
            "error: {} is not a WebAssembly file (it does not start with the `\\0asm` magic bytes): \
             give a plugin component built with `cargo build --target wasm32-wasip2 --release`",
            text.display()
        )
    );
    assert_eq!(stdout(&output), "");

    let core = dir.path().join("core.wasm");
    std::fs::write(
        &core,
        wat::parse_str("(module (func (export \"f\")))").unwrap(),
    )
    .unwrap();
    let output = natsplug(["inspect", core.to_str().unwrap()]);
    assert!(!output.status.success());
    assert_eq!(
        stderr(&output).trim_end(),
        format!(
            "error: {} is a core WebAssembly module, not a component: build the plugin for the \
             wasm32-wasip2 target (not wasm32-wasip1 or wasm32-unknown-unknown), or wrap the \
             module with `wasm-tools component new`",
            core.display()
        )
    );

    // A component built against a version of the contract this host does
    // not serve (a future one).
    let other = dir.path().join("future.wasm");
    let component = wat::parse_str(
        r#"(component
            (core module $m (func (export "f")))
            (core instance $i (instantiate $m))
            (func $filter (canon lift (core func $i "f")))
            (instance $phase (export "request-filter" (func $filter)))
            (export "natsplug:plugin/request-filter@0.3.0" (instance $phase)))"#,
    )
    .unwrap();
    std::fs::write(&other, component).unwrap();
    let output = natsplug([
        "inspect",
        other.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let text = stdout(&output);
    assert!(
        text.contains(
            "\nphases:   (unknown: the plugin does not load)\n\
             wit:      mismatch: the plugin targets no contract this host serves (0.2.0 and 0.1.0)\n"
        ),
        "{text}"
    );
    assert!(
        text.ends_with("\nexports:\n  natsplug:plugin/request-filter@0.3.0\nimports:\n"),
        "{text}"
    );
    let error = "plugin `future` exports `natsplug:plugin/request-filter@0.3.0`, a version of the \
                 contract this host does not serve (it serves natsplug:plugin@0.2.0 and @0.1.0): \
                 rebuild the plugin against natsplug:plugin@0.2.0";
    assert_eq!(stderr(&output).trim_end(), format!("error: {error}"));
    let output = natsplug([
        "inspect",
        other.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--json",
    ]);
    assert!(!output.status.success());
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["wit"]["matches"], false);
    assert_eq!(report["wit"]["plugin"], Value::Null);
    assert_eq!(report["wit"]["error"], error);
    assert_eq!(report["loads"], false);
    assert_eq!(report["error"], error);
    assert_eq!(report["phases"], json!([]));
    assert_eq!(
        report["exports"],
        json!(["natsplug:plugin/request-filter@0.3.0"])
    );
}

/// Slow: builds the scaffolded project for wasm32-wasip2 (its dependencies
/// are kept in `target/new-plugin-test` across runs).
#[test]
fn new_scaffolds_a_plugin_that_builds_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("hello-plugin");
    let output = natsplug(["new", "hello-plugin", "--path", project.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).starts_with(&format!(
            "created plugin `hello-plugin` in {}\n",
            project.display()
        )),
        "{}",
        stdout(&output)
    );
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("guest-sdk")
        .canonicalize()
        .unwrap();
    assert!(
        manifest.contains(&format!(
            "natsplug-sdk = {{ path = {:?} }}",
            sdk.display().to_string()
        )),
        "{manifest}"
    );
    assert!(manifest.contains("name = \"hello-plugin\""), "{manifest}");
    assert!(manifest.contains("\n[workspace]\n"), "{manifest}");
    let lib = std::fs::read_to_string(project.join("src/lib.rs")).unwrap();
    assert!(
        lib.contains("#[natsplug_sdk::plugin]\nimpl Plugin for HelloPlugin {"),
        "{lib}"
    );
    assert!(
        lib.contains("    fn init(config: Vec<(String, String)>) -> Result<(), String> {\n"),
        "{lib}"
    );
    assert!(
        lib.contains(
            "    fn request_filter(ctx: Context, request: Request) -> RequestDecision {\n"
        ),
        "{lib}"
    );
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    assert!(
        readme.contains("cargo build --target wasm32-wasip2 --release"),
        "{readme}"
    );
    assert_eq!(
        std::fs::read_to_string(project.join(".gitignore")).unwrap(),
        "/target\n"
    );

    // It refuses to write over a project, and names bad names.
    let output = natsplug(["new", "hello-plugin", "--path", project.to_str().unwrap()]);
    assert!(!output.status.success());
    assert_eq!(
        stderr(&output).trim_end(),
        format!(
            "error: {} already exists and is not empty: choose another --path, or remove it",
            project.display()
        )
    );
    let output = natsplug(["new", "9lives"]);
    assert!(!output.status.success());
    assert_eq!(
        stderr(&output).trim_end(),
        "error: plugin name `9lives` must start with a letter (it is also the crate name)"
    );

    // It builds, standalone, for wasm32-wasip2.
    let target = target_dir().join("new-plugin-test");
    let mut build = cargo_command();
    build
        .current_dir(&project)
        .args(["build", "--quiet", "--target", "wasm32-wasip2", "--release"])
        .env("CARGO_TARGET_DIR", &target);
    // Flags of the host build are not for wasm.
    for variable in ["RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS", "CARGO_BUILD_TARGET"] {
        build.env_remove(variable);
    }
    let status = build.status().expect("running cargo build");
    assert!(status.success(), "the scaffolded plugin did not build");
    let wasm = target.join("wasm32-wasip2/release/hello_plugin.wasm");
    assert!(wasm.is_file(), "no {}", wasm.display());

    // inspect accepts the component, and invoke runs it.
    let cache = dir.path().join("cache");
    let report = json_of(&natsplug([
        "inspect",
        wasm.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(report["name"], "hello_plugin");
    assert_eq!(report["phases"], json!(["request_filter"]));
    assert_eq!(report["version"], "0.1.0");
    assert_eq!(report["wit"]["matches"], true);
    assert_eq!(report["wit"]["plugin"], "natsplug:plugin@0.2.0");
    assert_eq!(
        report["exports"],
        json!([
            "natsplug:plugin/init@0.2.0",
            "natsplug:plugin/request-filter@0.2.0"
        ])
    );
    assert_eq!(report["loads"], true);

    let output = natsplug([
        "invoke",
        wasm.to_str().unwrap(),
        "--path",
        "/blocked/x",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "action: end\nstatus: 403\nresponse header set: content-type: text/plain\n\
         body: blocked by hello-plugin\n\nlogs (1):\n  info  blocked a request path=/blocked/x\n"
    );
    let output = natsplug([
        "invoke",
        wasm.to_str().unwrap(),
        "--request-id",
        "r-9",
        "--set",
        "header=x-trace",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "action: next\nrequest header set: x-trace: r-9\nlogs: none in request_filter\n"
    );
}

#[tokio::test]
async fn bench_reports_its_figures() {
    let server = NatsServer::start();
    let host = TestHost::start(
        &server.url(),
        &[
            ("header-injector", guests::HEADER_INJECTOR),
            ("misbehave", guests::MISBEHAVE),
        ],
        |_| {},
    )
    .await;
    let url = server.url();

    let output = natsplug_async([
        "bench",
        "header-injector",
        "request_filter",
        "--count",
        "300",
        "--concurrency",
        "4",
        "--json",
        "--nats",
        &url,
    ])
    .await;
    let figures = json_of(&output);
    assert_eq!(
        figures["subject"],
        "nylon.plugin.header-injector.request_filter"
    );
    assert_eq!(figures["concurrency"], 4);
    assert_eq!(figures["count"], 300);
    assert_eq!(figures["ok"], 300);
    assert_eq!(figures["error_replies"], 0);
    assert_eq!(figures["failed"], 0);
    assert!(figures["elapsed_s"].as_f64().unwrap() > 0.0);
    assert!(figures["throughput_per_s"].as_f64().unwrap() > 0.0);
    let latency = &figures["latency_ms"];
    let at = |key: &str| latency[key].as_f64().unwrap();
    assert!(at("min") > 0.0, "{latency}");
    assert!(at("min") <= at("p50"), "{latency}");
    assert!(at("p50") <= at("p90"), "{latency}");
    assert!(at("p90") <= at("p99"), "{latency}");
    assert!(at("p99") <= at("max"), "{latency}");
    assert!(
        at("mean") >= at("min") && at("mean") <= at("max"),
        "{latency}"
    );
    // The host served exactly those, plus the one warm-up request.
    let status = host.host.status().await;
    let injector = status.iter().find(|p| p.name == "header-injector").unwrap();
    assert_eq!(injector.endpoints[0].stats.requests, 301);

    // Error replies are counted apart.
    let output = natsplug_async([
        "bench",
        "misbehave",
        "request_filter",
        "--path",
        "/panic",
        "-n",
        "10",
        "-c",
        "2",
        "--json",
        "--nats",
        &url,
    ])
    .await;
    let figures = json_of(&output);
    assert_eq!(figures["count"], 10);
    assert_eq!(figures["ok"], 0);
    assert_eq!(figures["error_replies"], 10);
    assert_eq!(figures["failed"], 0);

    // As text.
    let output = natsplug_async([
        "bench",
        "header-injector",
        "request_filter",
        "-n",
        "20",
        "--nats",
        &url,
    ])
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[0].starts_with(
            "nylon.plugin.header-injector.request_filter: 20 requests, concurrency 8, "
        ),
        "{text}"
    );
    assert!(lines[1].starts_with("  throughput: "), "{text}");
    assert_eq!(lines[2], "  replies:    20 ok, 0 error replies; 0 failed");
    assert!(lines[3].starts_with("  latency:    p50 "), "{text}");
    assert!(
        lines[3].contains(" ms, p90 ")
            && lines[3].contains(" ms, p99 ")
            && lines[3].contains(" ms, max "),
        "{text}"
    );

    // Nothing serves the subject: it says so before it starts.
    let output = natsplug_async(["bench", "nope", "logging", "-n", "5", "--nats", &url]).await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("error: no host serves nylon.plugin.nope.logging"),
        "{}",
        stderr(&output)
    );
    host.host.shutdown().await.unwrap();
}
