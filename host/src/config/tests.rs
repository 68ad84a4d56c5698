//! Unit tests of reading and checking the configuration.

use super::*;
use natsplug_protocol::Phase;

#[test]
fn empty_config_is_the_defaults() {
    let config = HostConfig::from_toml("").unwrap();
    assert_eq!(config, HostConfig::default());
    assert_eq!(config.subjects.prefix, "nylon.plugin");
    assert_eq!(
        config.nats_urls(),
        vec!["nats://127.0.0.1:4222".to_string()]
    );
    config.validate().unwrap();
}

#[test]
fn full_config_parses() {
    let config = HostConfig::from_toml(
        r#"
        [nats]
        urls = ["nats://a:4222", "nats://b:4222"]
        [subjects]
        prefix = "edge.plugins"
        queue_group = "edge"
        [plugins]
        dir = "/srv/plugins"
        [runtime]
        workers = 3
        instance_mode = "fresh"
        call_timeout_ms = 250
        [plugin.auth]
        max_in_flight = 8
        [plugin.auth.failure_mode]
        request_filter = "open"
        [plugin.auth.config]
        token = "s3cret"
        retries = 3
        strict = true
        "#,
    )
    .unwrap();
    config.validate().unwrap();
    assert_eq!(config.runtime.instance_mode, InstanceMode::Fresh);
    assert_eq!(config.plugin_max_in_flight("auth"), 8);
    assert_eq!(config.plugin_max_in_flight("other"), 256);
    let auth = config.plugin_settings("auth");
    let runtime_modes = &config.runtime.failure_mode;
    assert_eq!(
        auth.failure_mode
            .resolve(runtime_modes, Phase::RequestFilter),
        FailureMode::Open
    );
    assert_eq!(
        auth.failure_mode
            .resolve(runtime_modes, Phase::ResponseFilter),
        FailureMode::Closed
    );
    assert_eq!(
        auth.failure_mode.resolve(runtime_modes, Phase::Logging),
        FailureMode::Open
    );
    assert_eq!(auth.config["retries"], "3");
    assert_eq!(auth.config["strict"], "true");
}

#[test]
fn mistakes_are_named() {
    let error = HostConfig::from_toml("[runtime]\nworkerz = 2").unwrap_err();
    assert!(
        format!("{error:#}").contains("unknown field `workerz`"),
        "{error:#}"
    );

    let mut config = HostConfig::default();
    config.subjects.prefix = "a.*".into();
    let error = config.validate().unwrap_err().to_string();
    assert!(
        error.starts_with("subjects.prefix `a.*` is not a valid subject prefix"),
        "{error}"
    );

    let mut config = HostConfig::default();
    config.runtime.call_timeout_ms = 0;
    assert_eq!(
        config.validate().unwrap_err().to_string(),
        "runtime.call_timeout_ms must be greater than 0"
    );
    assert!(validate_plugin_name("bad name").is_err());
    assert!(validate_plugin_name("auth-v2").is_ok());
}

#[test]
fn nats_connection_keys_parse_and_default() {
    let config = HostConfig::from_toml(
        r#"
        [nats]
        urls = ["tls://a:4222", "tls://b:4222"]
        creds_file = "/etc/natsplug/host.creds"
        tls_ca_file = "/etc/natsplug/ca.pem"
        tls_required = true
        max_reconnects = 60
        reconnect_wait_ms = 250
        "#,
    )
    .unwrap();
    config.validate().unwrap();
    assert_eq!(
        config.nats.auth().unwrap(),
        NatsAuth::CredsFile("/etc/natsplug/host.creds".into())
    );
    assert_eq!(config.nats.max_reconnects, 60);
    assert_eq!(config.nats.reconnect_max_wait_ms, 5000);
    assert_eq!(config.nats.drain_timeout_ms, 30_000);
    assert_eq!(HostConfig::default().nats.max_reconnects, 0, "forever");
}

#[test]
fn credentials_come_from_one_place() {
    let mut nats = NatsConfig {
        urls: vec!["nats://host:p%40ss@a:4222".into()],
        ..NatsConfig::default()
    };
    assert_eq!(
        nats.auth().unwrap(),
        NatsAuth::UserPassword {
            user: "host".into(),
            password: Secret::new("p@ss"),
            from_url: true
        }
    );
    nats.urls = vec!["nats://s3cret@a:4222".into()];
    assert_eq!(
        nats.auth().unwrap(),
        NatsAuth::Token {
            token: Secret::new("s3cret"),
            from_url: true
        }
    );
    nats.token = Some(Secret::new("other"));
    let error = nats.auth().unwrap_err().to_string();
    assert!(
        error.contains("more than one NATS authentication method is configured (nats.token, credentials in nats.urls)"),
        "{error}"
    );
    assert!(!error.contains("s3cret") && !error.contains("other"));

    let nats = NatsConfig {
        password: Some(Secret::new("x")),
        ..NatsConfig::default()
    };
    assert!(
        nats.auth()
            .unwrap_err()
            .to_string()
            .contains("without nats.user")
    );

    let mut config = HostConfig::default();
    config.nats.tls_cert_file = Some("cert.pem".into());
    assert!(
        config
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("nats.tls_cert_file is set without nats.tls_key_file")
    );
}

#[test]
fn secrets_stay_out_of_debug_output_and_urls_are_redacted() {
    let config = HostConfig::from_toml(
        "[nats]\nuser = \"host\"\npassword = \"hunter2\"\ntoken = \"tok3n\"\n",
    )
    .unwrap();
    let shown = format!("{config:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("tok3n"),
        "{shown}"
    );
    assert_eq!(config.nats.password.as_ref().unwrap().expose(), "hunter2");
    assert_eq!(
        redact_url("nats://user:hunter2@10.0.0.1:4222"),
        "nats://10.0.0.1:4222"
    );
    assert_eq!(redact_url("tok3n@host:4222"), "host:4222");
    assert_eq!(redact_url("nats://a:4222"), "nats://a:4222");
    let mut config = HostConfig::default();
    config.nats.urls = vec!["nats://user:hunter2@bad host:4222".into()];
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("is not a valid NATS URL"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
}
