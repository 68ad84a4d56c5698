//! The deploy commands as real processes against a real JetStream server:
//! `push` checks before it sends, keeps a bounded history and refuses to
//! run without the right to deploy; `ls`, `rm` and `rollback`.

use std::process::Output;

use natsplug_suite::{NatsServer, guests, natsplug_binary};

fn natsplug(args: &[&str], env: &[(&str, &str)]) -> Output {
    std::process::Command::new(natsplug_binary())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("running natsplug")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "natsplug failed: {}\nstdout: {}\nstderr: {}",
        output.status,
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

fn short_hash(path: &str) -> String {
    natsplug::plugin::content_hash(&std::fs::read(path).unwrap())[..12].to_string()
}

#[test]
fn push_refuses_what_a_host_cannot_load_before_anything_reaches_nats() {
    let server = NatsServer::start_with_args(&["-js"]);
    let url = server.url();
    let files = tempfile::tempdir().unwrap();
    let text = files.path().join("notes.wasm");
    std::fs::write(&text, "hello").unwrap();
    let core = files.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();

    let refused = natsplug(
        &["push", text.to_str().unwrap(), "--create", "--nats", &url],
        &[],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("is not a WebAssembly file"),
        "{}",
        stderr(&refused)
    );
    let refused = natsplug(
        &["push", core.to_str().unwrap(), "--create", "--nats", &url],
        &[],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("is a core WebAssembly module, not a component"),
        "{}",
        stderr(&refused)
    );
    // Nothing was sent: not even the bucket was created.
    let listed = natsplug(&["ls", "--nats", &url], &[]);
    assert_eq!(listed.status.code(), Some(1));
    assert_eq!(
        stderr(&listed),
        "error: bucket `plugins` does not exist: create it with `natsplug push --create --bucket plugins FILE`\n"
    );
    // Without --create, a missing bucket is an error saying what to do.
    let missing = natsplug(&["push", guests::AUTHZ, "--nats", &url], &[]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("natsplug push --create"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn push_keeps_a_bounded_history_and_rm_and_rollback_use_it() {
    let server = NatsServer::start_with_args(&["-js"]);
    let url = server.url();
    let authz = short_hash(guests::AUTHZ);
    let injector = short_hash(guests::HEADER_INJECTOR);

    let pushed = ok(natsplug(
        &["push", guests::AUTHZ, "--create", "--nats", &url],
        &[],
    ));
    assert_eq!(
        pushed,
        format!("pushed authz 1.0.0 (hash {authz}, 0.1 MB) to bucket `plugins` as history #1\n")
    );
    let again = ok(natsplug(&["push", guests::AUTHZ, "--nats", &url], &[]));
    assert_eq!(
        again,
        format!(
            "authz 1.0.0 (hash {authz}) is already current in bucket `plugins`; nothing pushed\n"
        )
    );
    let listed = ok(natsplug(&["ls", "--nats", &url], &[]));
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(lines[0].starts_with("PLUGIN "), "{listed}");
    assert!(
        lines[1].starts_with(&format!("authz                1.0.0      {authz}")),
        "{listed}"
    );

    // Three pushes with --keep 2: the oldest copy goes.
    let as_authz = ["--name", "authz", "--keep", "2", "--nats", &url];
    ok(natsplug(
        &[&["push", guests::HEADER_INJECTOR][..], &as_authz].concat(),
        &[],
    ));
    ok(natsplug(
        &[&["push", guests::AUTHZ][..], &as_authz].concat(),
        &[],
    ));
    let history = |url: &str| -> serde_json::Value {
        let listed = ok(natsplug(&["ls", "--history", "--json", "--nats", url], &[]));
        serde_json::from_str(&listed).unwrap()
    };
    let listed = history(&url);
    let entries: Vec<(u64, String)> = listed["plugins"][0]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["sequence"].as_u64().unwrap(),
                e["content_hash"].as_str().unwrap()[..12].to_string(),
            )
        })
        .collect();
    assert_eq!(entries, vec![(2, injector.clone()), (3, authz.clone())]);

    // rollback: the version before the current one, then nothing further.
    let rolled = ok(natsplug(&["rollback", "authz", "--nats", &url], &[]));
    assert!(
        rolled.starts_with(&format!(
            "rolled back authz to 1.0.0 (hash {injector}, history #2"
        )),
        "{rolled}"
    );
    let listed = history(&url);
    assert_eq!(
        listed["plugins"][0]["current"]["rolled_back_from"]
            .as_str()
            .unwrap()[..12],
        authz
    );
    let none = natsplug(&["rollback", "authz", "--nats", &url], &[]);
    assert_eq!(none.status.code(), Some(1));
    assert!(
        stderr(&none).contains("no earlier version of `authz` to roll back to"),
        "{}",
        stderr(&none)
    );

    // rm keeps the history, so rollback brings the newest push back.
    let removed = ok(natsplug(&["rm", "authz", "--nats", &url], &[]));
    assert_eq!(
        removed,
        "removed authz from bucket `plugins` (its history is kept: `natsplug rollback` restores it)\n"
    );
    assert_eq!(
        ok(natsplug(&["ls", "--nats", &url], &[])),
        "bucket `plugins` holds no plugins (push one with `natsplug push FILE`)\n"
    );
    let restored = ok(natsplug(&["rollback", "authz", "--nats", &url], &[]));
    assert!(
        restored.contains(&format!("(hash {authz}, history #3")),
        "{restored}"
    );

    // rm --purge drops everything; an unknown name is an error.
    let purged = ok(natsplug(&["rm", "authz", "--purge", "--nats", &url], &[]));
    assert_eq!(
        purged,
        "removed authz from bucket `plugins` with its 2 history copies\n"
    );
    assert_eq!(history(&url)["plugins"], serde_json::json!([]));
    let unknown = natsplug(&["rm", "authz", "--nats", &url], &[]);
    assert_eq!(unknown.status.code(), Some(1));
    assert_eq!(
        stderr(&unknown),
        "error: bucket `plugins` has no plugin `authz` (see `natsplug ls`)\n"
    );
}

/// `host` may read the bucket but not write it; `deploy` may do anything.
const PERMISSIONS: &str = r#"
jetstream: enabled
authorization {
  users: [
    {
      user: host, password: host-secret
      permissions: {
        publish: {
          deny: ["$O.plugins.>", "$JS.API.STREAM.CREATE.OBJ_plugins", "$JS.API.STREAM.UPDATE.OBJ_plugins",
                 "$JS.API.STREAM.DELETE.OBJ_plugins", "$JS.API.STREAM.PURGE.OBJ_plugins",
                 "$JS.API.STREAM.MSG.DELETE.OBJ_plugins"]
        }
      }
    }
    { user: deploy, password: deploy-secret }
  ]
}
"#;

#[test]
fn only_the_deploy_user_may_push() {
    let server = NatsServer::start_with_config(PERMISSIONS);
    let url = server.url();
    let as_host = [
        ("NATSPLUG_NATS_USER", "host"),
        ("NATSPLUG_NATS_PASSWORD", "host-secret"),
    ];
    let as_deploy = [
        ("NATSPLUG_NATS_USER", "deploy"),
        ("NATSPLUG_NATS_PASSWORD", "deploy-secret"),
    ];
    ok(natsplug(
        &["push", guests::AUTHZ, "--create", "--nats", &url],
        &as_deploy,
    ));

    let refused = natsplug(
        &[
            "push",
            guests::HEADER_INJECTOR,
            "--name",
            "authz",
            "--nats",
            &url,
        ],
        &as_host,
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).starts_with(
            "error: not allowed to write to bucket `plugins`: the NATS user `host` lacks publish permission on `$O.plugins.>` (the server refused `$O.plugins.C."
        ),
        "{}",
        stderr(&refused)
    );
    assert!(stderr(&refused).contains("use the deploy user's credentials"));
    // Nothing changed, and the host user can still read.
    let listed = ok(natsplug(&["ls", "--json", "--nats", &url], &as_host));
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        listed["plugins"][0]["current"]["content_hash"]
            .as_str()
            .unwrap()[..12],
        short_hash(guests::AUTHZ)
    );
    let refused = natsplug(&["rm", "authz", "--nats", &url], &as_host);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("not allowed to write to bucket `plugins`"),
        "{}",
        stderr(&refused)
    );
}
