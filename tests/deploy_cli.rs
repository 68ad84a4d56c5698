//! The deploy commands as real processes against a real JetStream server:
//! `push` checks before it sends, keeps a bounded history and refuses to
//! run without the right to deploy; `ls`, `rm` and `rollback`; `status`
//! against real hosts and against hosts that report failed loads.

use std::process::Output;

use natsplug_suite::{NatsServer, UpProcess, guests, natsplug_binary};

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
    // A component that is not a plugin, and one cut short: the checks and
    // messages of a host loading them.
    let empty = files.path().join("empty.wasm");
    std::fs::write(&empty, wat::parse_str("(component)").unwrap()).unwrap();
    let refused = natsplug(
        &["push", empty.to_str().unwrap(), "--create", "--nats", &url],
        &[],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(
        stderr(&refused),
        format!(
            "error: {} is not a plugin a host can load; nothing was pushed: plugin `empty` exports no phase of natsplug:plugin@0.2.0 (it exports nothing): a plugin exports the interface of each phase it implements, e.g. `natsplug:plugin/request-filter@0.2.0`\n",
            empty.display()
        )
    );
    let truncated = files.path().join("authz.wasm");
    let whole = std::fs::read(guests::AUTHZ).unwrap();
    std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
    let refused = natsplug(
        &[
            "push",
            truncated.to_str().unwrap(),
            "--create",
            "--nats",
            &url,
        ],
        &[],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).starts_with(&format!(
            "error: {} is not a plugin a host can load; nothing was pushed: `authz` is not a valid WebAssembly component: ",
            truncated.display()
        )),
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

#[test]
fn only_the_deploy_user_may_push() {
    let server = NatsServer::start_with_config(natsplug_suite::nats_server::BUCKET_PERMISSIONS);
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

    // The header injector compiled once (into the compiled-artifact cache),
    // so the refused push below spends its time on NATS alone.
    ok(natsplug(
        &["push", guests::HEADER_INJECTOR, "--nats", &url],
        &as_deploy,
    ));

    let inventory = |env: &[(&str, &str)]| {
        ok(natsplug(
            &["ls", "--history", "--json", "--nats", &url],
            env,
        ))
    };
    let before = inventory(&as_deploy);

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
    // The permission message (not an acknowledgement timeout) shows the
    // refusal was seen at once.
    assert!(
        stderr(&refused).starts_with(
            "error: not allowed to write to bucket `plugins`: the NATS user `host` lacks publish permission on `$O.plugins.>` (the server refused `$O.plugins.C."
        ),
        "{}",
        stderr(&refused)
    );
    assert!(stderr(&refused).contains("use the deploy user's credentials"));
    // Nothing changed, and the host user can still read.
    assert_eq!(inventory(&as_host), before);
    let listed: serde_json::Value = serde_json::from_str(&before).unwrap();
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
    assert_eq!(inventory(&as_host), before);
}

fn content_hash(path: &str) -> String {
    natsplug::plugin::content_hash(&std::fs::read(path).unwrap())
}

/// The content hash of the bytes of object `name` in bucket `plugins`, read
/// with a plain object store client.
async fn object_hash(server: &NatsServer, name: &str) -> String {
    use tokio::io::AsyncReadExt as _;
    let js = async_nats::jetstream::new(server.connect().await);
    let store = js.get_object_store("plugins").await.unwrap();
    let mut object = store.get(name).await.unwrap();
    let mut bytes = Vec::new();
    object.read_to_end(&mut bytes).await.unwrap();
    natsplug::plugin::content_hash(&bytes)
}

#[test]
fn rollback_walks_back_and_recovers_from_a_foreign_put() {
    let server = NatsServer::start_with_args(&["-js"]);
    let url = server.url();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let authz = content_hash(guests::AUTHZ);
    let injector = content_hash(guests::HEADER_INJECTOR);
    let as_edge = ["--name", "edge", "--nats", &url];

    ok(natsplug(
        &[&["push", guests::AUTHZ, "--create"][..], &as_edge].concat(),
        &[],
    ));
    ok(natsplug(
        &[&["push", guests::HEADER_INJECTOR][..], &as_edge].concat(),
        &[],
    ));
    assert_eq!(runtime.block_on(object_hash(&server, "edge")), injector);

    // Two pushes, one rollback: the first push is back, byte for byte.
    let rolled = ok(natsplug(&["rollback", "edge", "--nats", &url], &[]));
    assert!(
        rolled.starts_with(&format!(
            "rolled back edge to 1.0.0 (hash {}, history #1, pushed 20",
            &authz[..12]
        )),
        "{rolled}"
    );
    assert_eq!(runtime.block_on(object_hash(&server, "edge")), authz);

    // Someone puts garbage with a plain object store client: rollback
    // restores the newest pushed version, and records what it replaced.
    let garbage = b"\0asm\x0d\0\x01\0 not a component at all".to_vec();
    let garbage_hash = natsplug::plugin::content_hash(&garbage);
    runtime.block_on(async {
        let js = async_nats::jetstream::new(server.connect().await);
        let store = js.get_object_store("plugins").await.unwrap();
        store.put("edge", &mut garbage.as_slice()).await.unwrap();
    });
    assert_eq!(runtime.block_on(object_hash(&server, "edge")), garbage_hash);
    let rolled = ok(natsplug(&["rollback", "edge", "--nats", &url], &[]));
    assert!(
        rolled.starts_with(&format!(
            "rolled back edge to 1.0.0 (hash {}, history #2, pushed 20",
            &injector[..12]
        )),
        "{rolled}"
    );
    assert_eq!(runtime.block_on(object_hash(&server, "edge")), injector);
    let listed: serde_json::Value =
        serde_json::from_str(&ok(natsplug(&["ls", "--json", "--nats", &url], &[]))).unwrap();
    assert_eq!(
        listed["plugins"][0]["current"]["rolled_back_from"],
        serde_json::json!(garbage_hash)
    );
    assert_eq!(
        listed["plugins"][0]["current"]["sequence"],
        serde_json::json!(2)
    );

    // Rollback did not add to the history: once more goes to #1, then no
    // further.
    ok(natsplug(&["rollback", "edge", "--nats", &url], &[]));
    assert_eq!(runtime.block_on(object_hash(&server, "edge")), authz);
    let none = natsplug(&["rollback", "edge", "--nats", &url], &[]);
    assert_eq!(none.status.code(), Some(1));
    assert_eq!(
        stderr(&none),
        "error: no earlier version of `edge` to roll back to: its history in bucket `plugins` holds 2 push(es) (push with a larger --keep to keep more)\n"
    );
    let unknown = natsplug(&["rollback", "nothing", "--nats", &url], &[]);
    assert_eq!(unknown.status.code(), Some(1));
    assert_eq!(
        stderr(&unknown),
        "error: bucket `plugins` has no plugin `nothing` (see `natsplug ls`)\n"
    );
}

/// A `status` plugin line: name, bucket version and hash, hosts.
fn status_line(name: &str, bucket: &str, hosts: &str) -> String {
    format!("{name:<20} {bucket:<24} {hosts}")
}

#[test]
fn status_counts_the_hosts_serving_the_buckets_version() {
    let server = NatsServer::start_with_args(&["-js"]);
    let url = server.url();
    let plugins = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    natsplug_suite::host::install_file(plugins.path(), "authz", guests::AUTHZ);
    let host_args = [
        "--nats",
        &url,
        "--plugins",
        plugins.path().to_str().unwrap(),
        "--cache-dir",
        cache.path().to_str().unwrap(),
    ];
    let _hosts = [UpProcess::start(&host_args), UpProcess::start(&host_args)];
    let authz = &content_hash(guests::AUTHZ)[..12];
    let injector = &content_hash(guests::HEADER_INJECTOR)[..12];

    // The bucket holds what both hosts serve.
    ok(natsplug(
        &["push", guests::AUTHZ, "--create", "--nats", &url],
        &[],
    ));
    let status = natsplug(&["status", "--nats", &url], &[]);
    assert_eq!(
        stdout(&status),
        format!(
            "2 host(s) answering as `natsplug`; bucket `plugins`\n{}\n{}\n",
            status_line("PLUGIN", "BUCKET", "HOSTS"),
            status_line(
                "authz",
                &format!("1.0.0 {authz}"),
                &format!("2/2 hosts on {authz}")
            )
        )
    );
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));

    // Another version in the bucket: these hosts serve their directory and
    // stay where they are, so the fleet has not converged.
    ok(natsplug(
        &[
            "push",
            guests::HEADER_INJECTOR,
            "--name",
            "authz",
            "--nats",
            &url,
        ],
        &[],
    ));
    let status = natsplug(&["status", "--nats", &url], &[]);
    assert_eq!(status.status.code(), Some(1), "{}", stderr(&status));
    assert_eq!(
        stdout(&status).lines().nth(2),
        Some(
            status_line(
                "authz",
                &format!("1.0.0 {injector}"),
                &format!("2 on {authz}  (not converged)")
            )
            .as_str()
        )
    );
    let status = natsplug(&["status", "--json", "--nats", &url], &[]);
    assert_eq!(status.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(report["hosts"], 2);
    assert_eq!(report["converged"], false);
    let hosts = report["plugins"][0]["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2);
    assert!(
        hosts.iter().all(|h| h["origin"] == "directory"
            && h["content_hash"] == content_hash(guests::AUTHZ).as_str())
    );
}

/// Answer `$SRV.INFO.natsplug` with `info` until aborted.
async fn answer_info(
    client: &async_nats::Client,
    info: serde_json::Value,
) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt as _;
    let mut requests = client.subscribe("$SRV.INFO.natsplug").await.unwrap();
    client.flush().await.unwrap();
    let client = client.clone();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                client
                    .publish(reply, info.to_string().into())
                    .await
                    .unwrap();
            }
        }
    })
}

/// An INFO reply of a host following bucket `plugins`, with `metadata`.
fn host_info(id: &str, hostname: &str, metadata: &[(&str, &str)]) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    map.insert("hostname".into(), hostname.into());
    map.insert("bucket".into(), "plugins".into());
    for (key, value) in metadata {
        map.insert(key.to_string(), (*value).into());
    }
    serde_json::json!({
        "type": "io.nats.micro.v1.info_response",
        "name": "natsplug",
        "id": id,
        "metadata": map,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_failed_loads_and_hosts_still_without_a_plugin() {
    let server = NatsServer::start_with_args(&["-js"]);
    let url = server.url();
    let status = |wait: &'static str| {
        let url = url.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                natsplug(&["status", "--wait", wait, "--nats", &url], &[])
            })
            .await
            .unwrap()
        }
    };

    // No host at all: nothing has converged.
    let alone = status("0.3").await;
    assert_eq!(alone.status.code(), Some(1));
    assert_eq!(
        stdout(&alone),
        "0 host(s) answering as `natsplug`; bucket `plugins` unavailable: bucket `plugins` does not exist: create it with `natsplug push --create --bucket plugins FILE`\nno host answered within 0.3 s\n"
    );

    let pushed = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            natsplug(&["push", guests::AUTHZ, "--create", "--nats", &url], &[])
        })
        .await
        .unwrap()
    };
    ok(pushed);
    let authz = content_hash(guests::AUTHZ);
    let injector = content_hash(guests::HEADER_INJECTOR);
    let local = "c0ffee00".repeat(8);
    let client = server.connect().await;
    // alpha serves the bucket's authz and a plugin of its own directory;
    // beta could not load the bucket's authz and still serves an older one;
    // gamma follows the bucket but has loaded nothing yet.
    let alpha = answer_info(
        &client,
        host_info(
            "AAAAAAAAAAAAAAAAAAAAAA",
            "alpha",
            &[
                ("plugin.authz.hash", &authz),
                ("plugin.authz.version", "1.0.0"),
                ("plugin.authz.origin", "bucket"),
                ("plugin.local.hash", &local),
                ("plugin.local.origin", "directory"),
            ],
        ),
    )
    .await;
    let beta = answer_info(
        &client,
        host_info(
            "BBBBBBBBBBBBBBBBBBBBBB",
            "beta",
            &[
                ("plugin.authz.hash", &injector),
                ("plugin.authz.origin", "bucket"),
                ("plugin.authz.failed_hash", &authz),
                ("plugin.authz.failed_error", "out of memory"),
            ],
        ),
    )
    .await;
    let gamma = answer_info(&client, host_info("CCCCCCCCCCCCCCCCCCCCCC", "gamma", &[])).await;

    let report = status("0.5").await;
    assert_eq!(report.status.code(), Some(1), "{}", stderr(&report));
    let mut served = [&authz[..12], &injector[..12]];
    served.sort();
    assert_eq!(
        stdout(&report),
        format!(
            "3 host(s) answering as `natsplug`; bucket `plugins`\n{}\n{}\n{}\n",
            status_line("PLUGIN", "BUCKET", "HOSTS"),
            status_line(
                "authz",
                &format!("1.0.0 {}", &authz[..12]),
                &format!(
                    "1 on {}; 1 on {}; 1 following the bucket without it; beta (BBBBBBBBBBBB) failed to load {}: out of memory  (not converged)",
                    served[0],
                    served[1],
                    &authz[..12]
                )
            ),
            status_line("local", "-", "1 on c0ffee00c0ff"),
        )
    );

    // beta loads it and gamma goes away: converged.
    for task in [beta, gamma] {
        task.abort();
        let _ = task.await;
    }
    client.flush().await.unwrap();
    let _beta = answer_info(
        &client,
        host_info(
            "BBBBBBBBBBBBBBBBBBBBBB",
            "beta",
            &[
                ("plugin.authz.hash", &authz),
                ("plugin.authz.origin", "bucket"),
            ],
        ),
    )
    .await;
    let report = status("0.5").await;
    assert_eq!(report.status.code(), Some(0), "{}", stdout(&report));
    assert_eq!(
        stdout(&report).lines().nth(2),
        Some(
            status_line(
                "authz",
                &format!("1.0.0 {}", &authz[..12]),
                &format!("2/2 hosts on {}", &authz[..12])
            )
            .as_str()
        )
    );
    drop(alpha);
}
