//! The NATS connection against real `nats-server` processes: logins (user
//! and password, token, NKey, JWT creds), TLS and mutual TLS, subject
//! permissions, a server restart, a server lost at shutdown and a slow
//! consumer. Faults under load, as the caller sees them, are in
//! tests/faults.rs.
//!
//! Every key, certificate and JWT is generated here, into temp dirs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use natsplug::HostConfig;
use natsplug::config::Secret;
use natsplug::nats::PermissionViolation;
use natsplug_protocol::{self as protocol, Action, PhaseReply};
use natsplug_suite::client::request;
use natsplug_suite::host::install_file;
use natsplug_suite::{NatsServer, PhaseClient, TestHost, guests, natsplug_binary};

const SUBJECT: &str = "nylon.plugin.header-injector.request_filter";

/// Send one request on `client` and expect the header injector's answer.
async fn assert_serves(client: &async_nats::Client) {
    let reply = PhaseClient::new(client.clone())
        .send(
            "header-injector",
            &request("request_filter", "probe", "GET", "/"),
        )
        .await;
    assert_eq!(reply.action, Action::Next);
}

/// A host serving the header injector on `url`, configured by `configure`.
async fn try_host(url: &str, configure: impl FnOnce(&mut HostConfig)) -> anyhow::Result<TestHost> {
    TestHost::try_start(
        url,
        &[("header-injector", guests::HEADER_INJECTOR)],
        configure,
    )
    .await
}

/// The message of a start-up that must fail.
async fn start_error(url: &str, configure: impl FnOnce(&mut HostConfig)) -> String {
    match try_host(url, configure).await {
        Ok(_) => panic!("the host started, but it should have failed"),
        Err(error) => {
            let message = format!("{error:#}");
            eprintln!("start-up error: {message}");
            message
        }
    }
}

// ---------------------------------------------------------------- logins

#[tokio::test]
async fn user_and_password_log_in_and_a_wrong_password_fails_clearly() {
    let server = NatsServer::start_with_config(
        "authorization {\n  users = [ { user: host, password: \"h0st-secret\" } ]\n}\n",
    );
    let client =
        async_nats::ConnectOptions::with_user_and_password("host".into(), "h0st-secret".into())
            .connect(server.url())
            .await
            .unwrap();

    let host = try_host(&server.url(), |c| {
        c.nats.user = Some("host".into());
        c.nats.password = Some(Secret::new("h0st-secret"));
    })
    .await
    .expect("the right password logs in");
    assert_serves(&client).await;
    host.host.shutdown().await.unwrap();

    // Credentials in the URL work the same.
    let url = format!("nats://host:h0st-secret@127.0.0.1:{}", server.port());
    let host = try_host(&url, |_| {})
        .await
        .expect("URL credentials log in");
    assert_serves(&client).await;
    host.host.shutdown().await.unwrap();

    let error = start_error(&server.url(), |c| {
        c.nats.user = Some("host".into());
        c.nats.password = Some(Secret::new("wrong-pass"));
    })
    .await;
    assert!(
        error.contains("refused the login (authorization violation) for user `host` with the password of nats.password")
            && error.contains("Check that the user name and password are right"),
        "{error}"
    );
    assert!(
        !error.contains("wrong-pass"),
        "the password leaked: {error}"
    );

    let error = start_error(&server.url(), |_| {}).await;
    assert!(
        error.contains("refused the login (authorization violation): the server requires credentials and none are configured"),
        "{error}"
    );

    let url = format!("nats://host:wrong-pass@127.0.0.1:{}", server.port());
    let error = start_error(&url, |_| {}).await;
    assert!(
        error.contains("for user `host` with the password from the URL"),
        "{error}"
    );
    assert!(
        !error.contains("wrong-pass"),
        "the password leaked: {error}"
    );
}

#[test]
fn up_with_a_wrong_password_from_the_environment_exits_with_the_reason() {
    let server = NatsServer::start_with_config(
        "authorization {\n  users = [ { user: host, password: \"h0st-secret\" } ]\n}\n",
    );
    let plugins = tempfile::tempdir().unwrap();
    install_file(plugins.path(), "header-injector", guests::HEADER_INJECTOR);
    let started = Instant::now();
    let output = run_bounded(
        Command::new(natsplug_binary())
            .args(["up", "--nats", &server.url(), "--nats-user", "host"])
            .arg("--plugins")
            .arg(plugins.path())
            .env("NATSPLUG_NATS_PASSWORD", "wrong-pass"),
    );
    assert!(!output.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a refused login must fail at once, not retry"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: NATS at nats://127.0.0.1:")
            && stderr.contains("refused the login (authorization violation) for user `host`"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("wrong-pass"),
        "the password leaked: {stderr}"
    );
}

#[tokio::test]
async fn token_logs_in_and_a_wrong_token_fails_clearly() {
    let server =
        NatsServer::start_with_config("authorization {\n  token: \"t0ken-of-the-host\"\n}\n");
    let client = async_nats::ConnectOptions::with_token("t0ken-of-the-host".into())
        .connect(server.url())
        .await
        .unwrap();

    let host = try_host(&server.url(), |c| {
        c.nats.token = Some(Secret::new("t0ken-of-the-host"));
    })
    .await
    .expect("the right token logs in");
    assert_serves(&client).await;
    host.host.shutdown().await.unwrap();

    let url = format!("nats://t0ken-of-the-host@127.0.0.1:{}", server.port());
    let host = try_host(&url, |_| {}).await.expect("a URL token logs in");
    host.host.shutdown().await.unwrap();

    let error = start_error(&server.url(), |c| {
        c.nats.token = Some(Secret::new("not-the-token"));
    })
    .await;
    assert!(
        error.contains("refused the login (authorization violation) for the token of nats.token")
            && error.contains(
                "Check that the token is the one the server's authorization config expects"
            ),
        "{error}"
    );
    assert!(
        !error.contains("not-the-token"),
        "the token leaked: {error}"
    );
}

#[tokio::test]
async fn nkey_logs_in_and_an_unknown_key_fails_clearly() {
    let user = nkeys::KeyPair::new_user();
    let server = NatsServer::start_with_config(&format!(
        "authorization {{\n  users = [ {{ nkey: {} }} ]\n}}\n",
        user.public_key()
    ));
    let keys = tempfile::tempdir().unwrap();
    let seed_file = keys.path().join("host.nk");
    std::fs::write(&seed_file, format!("{}\n", user.seed().unwrap())).unwrap();
    let client = async_nats::ConnectOptions::with_nkey(user.seed().unwrap())
        .connect(server.url())
        .await
        .unwrap();

    let host = try_host(&server.url(), |c| {
        c.nats.nkey_seed_file = Some(seed_file.clone());
    })
    .await
    .expect("the listed key logs in");
    assert_serves(&client).await;
    host.host.shutdown().await.unwrap();

    let stranger = keys.path().join("stranger.nk");
    std::fs::write(&stranger, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
    let error = start_error(&server.url(), |c| c.nats.nkey_seed_file = Some(stranger)).await;
    assert!(
        error.contains(
            "refused the login (authorization violation) for the NKey seed of nats.nkey_seed_file"
        ) && error.contains("lists the public key of this seed"),
        "{error}"
    );

    let garbage = keys.path().join("garbage.nk");
    std::fs::write(&garbage, "not a seed\n").unwrap();
    let error = start_error(&server.url(), |c| c.nats.nkey_seed_file = Some(garbage)).await;
    assert!(error.contains("holds no NKey user seed"), "{error}");

    let error = start_error(&server.url(), |c| {
        c.nats.nkey_seed_file = Some(PathBuf::from("/no/such/seed.nk"))
    })
    .await;
    assert!(
        error.contains("nats.nkey_seed_file /no/such/seed.nk: cannot read it"),
        "{error}"
    );
}

#[tokio::test]
async fn creds_log_in_in_operator_mode_and_untrusted_creds_fail_clearly() {
    let operator = nkeys::KeyPair::new_operator();
    let system = nkeys::KeyPair::new_account();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = operator_jwt(&operator, &system);
    let system_jwt = account_jwt(&operator, &system, "SYS");
    let account_jwt = account_jwt(&operator, &account, "APP");
    let server = NatsServer::start_with_config(&format!(
        "operator: \"{operator_jwt}\"\nsystem_account: {sys}\nresolver: MEMORY\nresolver_preload: {{\n  {sys}: \"{system_jwt}\"\n  {acc}: \"{account_jwt}\"\n}}\n",
        sys = system.public_key(),
        acc = account.public_key(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let creds = creds_file(&user_jwt(&account, &user, "host"), &user);
    let creds_path = dir.path().join("host.creds");
    std::fs::write(&creds_path, &creds).unwrap();
    let client = async_nats::ConnectOptions::with_credentials(&creds)
        .unwrap()
        .connect(server.url())
        .await
        .unwrap();

    let host = try_host(&server.url(), |c| {
        c.nats.creds_file = Some(creds_path.clone())
    })
    .await
    .expect("creds of a trusted account log in");
    assert_serves(&client).await;
    host.host.shutdown().await.unwrap();

    // A user of an account the server does not know.
    let rogue = nkeys::KeyPair::new_account();
    let intruder = nkeys::KeyPair::new_user();
    let rogue_path = dir.path().join("rogue.creds");
    std::fs::write(
        &rogue_path,
        creds_file(&user_jwt(&rogue, &intruder, "intruder"), &intruder),
    )
    .unwrap();
    let error = start_error(&server.url(), |c| c.nats.creds_file = Some(rogue_path)).await;
    assert!(
        error.contains(
            "refused the login (authorization violation) for the user JWT of nats.creds_file"
        ) && error.contains("trusts the account that signed this user"),
        "{error}"
    );

    let broken = dir.path().join("broken.creds");
    std::fs::write(&broken, "nothing here\n").unwrap();
    let error = start_error(&server.url(), |c| c.nats.creds_file = Some(broken)).await;
    assert!(error.contains("is not a usable .creds file"), "{error}");
}

// ---------------------------------------------------------------- TLS

#[tokio::test]
async fn tls_with_the_right_ca_serves_and_a_wrong_ca_fails_clearly() {
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("natsplug test CA");
    let other_ca = TestCa::new("some other CA");
    let ca_file = write(pki.path(), "ca.pem", &ca.cert_pem());
    let other_ca_file = write(pki.path(), "other-ca.pem", &other_ca.cert_pem());
    let server = NatsServer::start_with_files(|dir| {
        let (cert, key) = ca.leaf("nats-server", Purpose::Server);
        format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\n",
            write(dir, "server.pem", &cert).display(),
            write(dir, "server-key.pem", &key).display()
        )
    });
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(ca_file.clone())
        .connect(server.url())
        .await
        .unwrap();

    let host = try_host(&server.url(), |c| {
        c.nats.tls_ca_file = Some(ca_file.clone());
        c.nats.tls_required = true;
    })
    .await
    .expect("TLS with the right CA");
    assert_serves(&client).await;
    host.host.shutdown().await.unwrap();

    let error = start_error(&server.url(), |c| {
        c.nats.tls_ca_file = Some(other_ca_file.clone());
    })
    .await;
    assert!(
        error.contains("TLS with NATS at nats://127.0.0.1:")
            && error.contains("the server's certificate is not signed by a CA this host trusts")
            && error.contains(&format!(
                "it checked against nats.tls_ca_file ({})",
                other_ca_file.display()
            )),
        "{error}"
    );

    let error = start_error(&server.url(), |_| {}).await;
    assert!(
        error.contains(
            "not signed by a CA this host trusts: it checked against the system's trusted roots"
        ),
        "{error}"
    );

    let error = start_error(&server.url(), |c| {
        c.nats.tls_ca_file = Some(PathBuf::from("/no/such/ca.pem"));
    })
    .await;
    assert!(
        error.contains("nats.tls_ca_file /no/such/ca.pem: cannot read it"),
        "{error}"
    );
}

#[tokio::test]
async fn mutual_tls_serves_with_a_client_certificate_and_fails_clearly_without() {
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("natsplug test CA");
    let other_ca = TestCa::new("some other CA");
    let ca_file = write(pki.path(), "ca.pem", &ca.cert_pem());
    let (cert, key) = ca.leaf("natsplug host", Purpose::Client);
    let cert_file = write(pki.path(), "host.pem", &cert);
    let key_file = write(pki.path(), "host-key.pem", &key);
    let (stray_cert, stray_key) = other_ca.leaf("stray host", Purpose::Client);
    let stray_cert_file = write(pki.path(), "stray.pem", &stray_cert);
    let stray_key_file = write(pki.path(), "stray-key.pem", &stray_key);
    let server = NatsServer::start_with_files(|dir| {
        let (cert, key) = ca.leaf("nats-server", Purpose::Server);
        format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
            write(dir, "server.pem", &cert).display(),
            write(dir, "server-key.pem", &key).display(),
            ca_file.display()
        )
    });
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(ca_file.clone())
        .add_client_certificate(cert_file.clone(), key_file.clone())
        .connect(server.url())
        .await
        .unwrap();

    let host = try_host(&server.url(), |c| {
        c.nats.tls_ca_file = Some(ca_file.clone());
        c.nats.tls_cert_file = Some(cert_file.clone());
        c.nats.tls_key_file = Some(key_file.clone());
    })
    .await
    .expect("mutual TLS with a certificate of the server's CA");
    assert_serves(&client).await;
    host.host.shutdown().await.unwrap();

    let error = start_error(&server.url(), |c| {
        c.nats.tls_ca_file = Some(ca_file.clone());
    })
    .await;
    assert!(
        error.contains("TLS with NATS at nats://127.0.0.1:")
            && error.contains(
                "the server requires a client certificate (mutual TLS): set nats.tls_cert_file and nats.tls_key_file"
            ),
        "{error}"
    );

    let error = start_error(&server.url(), |c| {
        c.nats.tls_ca_file = Some(ca_file.clone());
        c.nats.tls_cert_file = Some(stray_cert_file.clone());
        c.nats.tls_key_file = Some(stray_key_file.clone());
    })
    .await;
    assert!(
        error.contains("the server rejected this host's client certificate"),
        "{error}"
    );
}

// ---------------------------------------------------------------- permissions

const RESTRICTED_SERVER: &str = r#"
authorization {
  users = [
    {
      user: host, password: pw
      permissions: {
        subscribe: { allow: ["_INBOX.>", "nylon.plugin.header-injector.>"] }
        publish: { allow: ["_INBOX.>", "nylon.plugin.*.served"] }
      }
    }
    { user: client, password: pw }
  ]
}
"#;

#[tokio::test]
async fn a_forbidden_phase_subject_fails_start_up_naming_the_subject() {
    let server = NatsServer::start_with_config(RESTRICTED_SERVER);
    let login = |c: &mut HostConfig| {
        c.nats.user = Some("host".into());
        c.nats.password = Some(Secret::new("pw"));
        // This user may not publish log records (tests/refusals.rs covers
        // that); here only the phase subjects count.
        c.logs.enabled = false;
    };

    // Allowed subjects are confirmed and served.
    let host = try_host(&server.url(), login)
        .await
        .expect("the allowed subject is served");
    let client = async_nats::ConnectOptions::with_user_and_password("client".into(), "pw".into())
        .connect(server.url())
        .await
        .unwrap();
    assert_serves(&client).await;
    assert_eq!(
        host.host
            .stats()
            .permission_violations
            .load(Ordering::Relaxed),
        0
    );
    host.host.shutdown().await.unwrap();

    // The authz plugin's subject is not.
    let started = Instant::now();
    let error = TestHost::try_start(
        &server.url(),
        &[
            ("header-injector", guests::HEADER_INJECTOR),
            ("authz", guests::AUTHZ),
        ],
        login,
    )
    .await
    .err()
    .expect("a forbidden subject fails the start");
    let violation = error
        .downcast_ref::<PermissionViolation>()
        .unwrap_or_else(|| panic!("not a permission violation: {error:#}"));
    assert_eq!(violation.subject, "nylon.plugin.authz.request_filter");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );

    // `up` exits with the subject named.
    let plugins = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    install_file(plugins.path(), "header-injector", guests::HEADER_INJECTOR);
    install_file(plugins.path(), "authz", guests::AUTHZ);
    let output = run_bounded(
        Command::new(natsplug_binary())
            .args(["up", "--nats", &server.url(), "--nats-user", "host"])
            .arg("--plugins")
            .arg(plugins.path())
            .arg("--cache-dir")
            .arg(cache.path())
            .env("NATSPLUG_NATS_PASSWORD", "pw"),
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "error: NATS refused to let this host subscribe to `nylon.plugin.authz.request_filter`"
        ) && stderr.contains("lacks subscribe permission there"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------- faults

#[tokio::test]
async fn a_restarted_server_is_reconnected_to_and_serving_resumes() {
    let mut server = NatsServer::start_with_config("server_name: solo\n");
    let host = TestHost::start(
        &server.url(),
        &[("header-injector", guests::HEADER_INJECTOR)],
        |c| {
            c.nats.reconnect_wait_ms = 50;
            c.nats.reconnect_max_wait_ms = 400;
        },
    )
    .await;
    let client = server.connect().await;
    assert_serves(&client).await;

    server.kill();
    let down = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    server.restart();

    // Requests are served again soon after the server is back.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(reply) = request_once(&client, SUBJECT, "after-restart").await {
            assert_eq!(reply.action, Action::Next);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not served again 15 s after the restart"
        );
    }
    // The lanes' connections serve; the host's own connection, which the
    // counters are about, reconnects on its own schedule.
    let stats = host.host.stats();
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats.reconnects.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "the host's connection did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stats.disconnects.load(Ordering::Relaxed) >= 1);
    let recovery = stats.last_recovery_ms.load(Ordering::Relaxed);
    assert!(
        recovery >= 900 && recovery <= down.elapsed().as_millis() as u64,
        "recovery took {recovery} ms"
    );
    host.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_with_nats_gone_gives_up_after_the_drain_timeout() {
    let mut server = NatsServer::start();
    let host = TestHost::start(
        &server.url(),
        &[("header-injector", guests::HEADER_INJECTOR)],
        |c| c.nats.drain_timeout_ms = 1000,
    )
    .await;
    assert_serves(&server.connect().await).await;
    server.kill();
    let started = Instant::now();
    let error = tokio::time::timeout(Duration::from_secs(10), host.host.shutdown())
        .await
        .expect("the shutdown is bounded")
        .unwrap_err()
        .to_string();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        error.starts_with("gave up draining after 1000 ms (nats.drain_timeout_ms)")
            && error.contains(SUBJECT),
        "{error}"
    );
}

#[test]
fn up_exits_with_the_reason_when_it_gives_up_reconnecting() {
    let mut server = NatsServer::start();
    let plugins = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    install_file(plugins.path(), "header-injector", guests::HEADER_INJECTOR);
    let mut child = Command::new(natsplug_binary())
        .args(["up", "--nats", &server.url(), "--nats-max-reconnects", "3"])
        .args(["--nats-reconnect-wait-ms", "50"])
        .arg("--plugins")
        .arg(plugins.path())
        .arg("--cache-dir")
        .arg(cache.path())
        .stdout(Stdio::piped())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.next().expect("a ready line").unwrap();
    assert!(ready.starts_with("natsplug ready:"), "{ready}");

    server.kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "up did not give up; its log:\n{}",
                std::fs::read_to_string(log.path()).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let stderr = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        stderr.contains("disconnected from NATS; reconnecting up to 3 attempts")
            && stderr.contains(
                "error: lost the connection to NATS: gave up after 3 reconnect attempts (nats.max_reconnects"
            ),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_slow_consumer_is_counted_and_logged_not_silently_dropped() {
    let server = NatsServer::start();
    let host = TestHost::start(&server.url(), &[("misbehave", guests::MISBEHAVE)], |c| {
        c.nats.subscription_capacity = 4;
        c.runtime.workers = 1;
        c.runtime.max_in_flight = 1;
    })
    .await;
    let client = server.connect().await;
    let payload = protocol::encode_request(&request("request_filter", "slow", "GET", "/sleep"));
    for _ in 0..200 {
        client
            .publish_with_reply(
                "nylon.plugin.misbehave.request_filter",
                client.new_inbox(),
                payload.clone().into(),
            )
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while host.host.stats().slow_consumers.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "no slow consumer counted after a flood"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    host.host.shutdown().await.unwrap();
}

// ---------------------------------------------------------------- helpers

/// One request with a 1 s deadline: the reply, or `None` when it is lost.
async fn request_once(client: &async_nats::Client, subject: &str, id: &str) -> Option<PhaseReply> {
    let payload = protocol::encode_request(&request("request_filter", id, "GET", "/"));
    match tokio::time::timeout(
        Duration::from_secs(1),
        client.request(subject.to_string(), payload.into()),
    )
    .await
    {
        Ok(Ok(message)) => Some(protocol::decode_reply(&message.payload).expect("a phase reply")),
        _ => None,
    }
}

/// Run `command` to completion, killing it after 30 s.
fn run_bounded(command: &mut Command) -> std::process::Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the command");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "the command did not finish within 30 s; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

// ---------------------------------------------------------------- PKI

enum Purpose {
    Server,
    Client,
}

/// A certificate authority made for one test.
struct TestCa {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        TestCa { params, key, cert }
    }

    fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for 127.0.0.1 and localhost and its key, both PEM.
    fn leaf(&self, name: &str, purpose: Purpose) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![match purpose {
            Purpose::Server => rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            Purpose::Client => rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        }];
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

// ---------------------------------------------------------------- JWTs

/// A NATS JWT (`alg: ed25519-nkey`) with `claims`, issued by `issuer` for
/// `subject`.
fn encode_jwt(
    issuer: &nkeys::KeyPair,
    subject: &str,
    name: &str,
    nats: serde_json::Value,
) -> String {
    use sha2::Digest as _;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = serde_json::json!({
        "jti": "",
        "iat": now,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let digest = sha2::Sha256::digest(claims.to_string().as_bytes());
    claims["jti"] = base32(&digest).into();
    let header = serde_json::json!({"typ": "JWT", "alg": "ed25519-nkey"});
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn operator_jwt(operator: &nkeys::KeyPair, system: &nkeys::KeyPair) -> String {
    encode_jwt(
        operator,
        &operator.public_key(),
        "test-operator",
        serde_json::json!({
            "system_account": system.public_key(),
            "type": "operator",
            "version": 2,
        }),
    )
}

fn account_jwt(operator: &nkeys::KeyPair, account: &nkeys::KeyPair, name: &str) -> String {
    encode_jwt(
        operator,
        &account.public_key(),
        name,
        serde_json::json!({
            "limits": {
                "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                "wildcards": true, "conn": -1, "leaf": -1,
            },
            "default_permissions": { "pub": {}, "sub": {} },
            "type": "account",
            "version": 2,
        }),
    )
}

fn user_jwt(account: &nkeys::KeyPair, user: &nkeys::KeyPair, name: &str) -> String {
    encode_jwt(
        account,
        &user.public_key(),
        name,
        serde_json::json!({
            "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
            "type": "user",
            "version": 2,
        }),
    )
}

/// A `.creds` file as `nsc` writes it.
fn creds_file(jwt: &str, user: &nkeys::KeyPair) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed().unwrap()
    )
}

/// RFC 4648 base32 without padding, as NATS JWT ids use.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

// ---------------------------------------------------------------- credentials that went bad

/// An operator-mode server trusting account `APP`, and that account's key.
fn operator_mode_server() -> (NatsServer, nkeys::KeyPair) {
    let operator = nkeys::KeyPair::new_operator();
    let system = nkeys::KeyPair::new_account();
    let account = nkeys::KeyPair::new_account();
    let server = NatsServer::start_with_config(&format!(
        "operator: \"{}\"\nsystem_account: {sys}\nresolver: MEMORY\nresolver_preload: {{\n  {sys}: \"{}\"\n  {acc}: \"{}\"\n}}\n",
        operator_jwt(&operator, &system),
        account_jwt(&operator, &system, "SYS"),
        account_jwt(&operator, &account, "APP"),
        sys = system.public_key(),
        acc = account.public_key(),
    ));
    (server, account)
}

/// `jwt` with `claim` set to `value`, signed again by `issuer`.
fn with_claim(jwt: &str, issuer: &nkeys::KeyPair, claim: &str, value: u64) -> String {
    let mut parts = jwt.split('.');
    let header = parts.next().unwrap();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap()).unwrap();
    claims[claim] = value.into();
    let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

#[tokio::test]
async fn an_expired_user_jwt_fails_start_up_naming_the_expiry_and_what_to_do() {
    let (server, account) = operator_mode_server();
    let user = nkeys::KeyPair::new_user();
    let jwt = user_jwt(&account, &user, "host");
    let dir = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();

    // The same user, expiring in an hour, logs in: only `exp` differs below.
    let valid = write(
        dir.path(),
        "valid.creds",
        &creds_file(&with_claim(&jwt, &account, "exp", now + 3600), &user),
    );
    let host = try_host(&server.url(), |c| c.nats.creds_file = Some(valid))
        .await
        .expect("creds expiring in an hour log in");
    host.host.shutdown().await.unwrap();

    // 2020-09-13T12:26:40Z.
    let expired = write(
        dir.path(),
        "expired.creds",
        &creds_file(&with_claim(&jwt, &account, "exp", 1_600_000_000), &user),
    );
    let error = start_error(&server.url(), |c| c.nats.creds_file = Some(expired.clone())).await;
    assert!(
        error.contains(&format!(
            "NATS at {} refused the login (authorization violation): the user JWT in nats.creds_file {} expired at 2020-09-13T12:26:40Z (",
            server.url(),
            expired.display()
        )) && error.contains(
            " ago). Get fresh credentials for this user (`nsc generate creds`, after `nsc edit user --expiry` if its expiry is set too short) and point nats.creds_file at them"
        ),
        "{error}"
    );
}

#[tokio::test]
async fn an_expired_server_certificate_fails_start_up_naming_the_expiry() {
    let (server, error) = tls_start_error(&["localhost", "127.0.0.1"], 2020, 2021).await;
    assert!(
        error.contains(&format!("TLS with NATS at {} failed (", server.url()))
            && error.contains(
                "): the server's certificate expired at 2021-01-01T00:00:00Z ("
            )
            && error.contains(
                " ago, by this machine's clock). Renew the server's certificate (the cert_file of its tls block) and reload the server; if it should still be valid, check this machine's clock"
            ),
        "{error}"
    );
}

#[tokio::test]
async fn a_server_certificate_for_other_names_fails_start_up_naming_them() {
    let (server, error) = tls_start_error(&["nats.example.com", "10.1.2.3"], 2020, 2100).await;
    assert!(
        error.contains(&format!("TLS with NATS at {} failed (", server.url()))
            && error.contains(
                "): the server's certificate is not valid for 127.0.0.1, the host of the URL: it names only nats.example.com, 10.1.2.3. Connect with a name the certificate lists, or reissue the certificate with 127.0.0.1 among its subject alternative names"
            ),
        "{error}"
    );
}

impl TestCa {
    /// A server certificate for `names`, valid from the first day of year
    /// `from` to the first day of year `until`, and its key, both PEM.
    fn leaf_with(&self, names: &[&str], from: i32, until: i32) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "nats-server");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The start-up error of a host that trusts a test CA, against a TLS
/// server whose certificate from that CA names `names` and is valid from
/// the start of year `from` to the start of year `until`.
async fn tls_start_error(names: &[&str], from: i32, until: i32) -> (NatsServer, String) {
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("natsplug test CA");
    let ca_file = write(pki.path(), "ca.pem", &ca.cert_pem());
    let server = NatsServer::start_with_files(|dir| {
        let (cert, key) = ca.leaf_with(names, from, until);
        format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\n",
            write(dir, "server.pem", &cert).display(),
            write(dir, "server-key.pem", &key).display()
        )
    });
    let error = start_error(&server.url(), |c| {
        c.nats.tls_ca_file = Some(ca_file.clone());
    })
    .await;
    (server, error)
}
