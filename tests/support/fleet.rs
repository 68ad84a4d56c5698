//! A fleet of `natsplug up` hosts fed from the plugin bucket, as the
//! bucket, refusal and fault tests drive it: the `natsplug` command line
//! run to completion (`push`, `rm`, `rollback`, `status`), the bucket
//! filled straight through JetStream, and waiting until every host
//! reports a value in its `$SRV.INFO` metadata.

use std::process::Output;
use std::time::{Duration, Instant};

use async_nats::jetstream::object_store::ObjectStore;

use crate::up::fleet_metadata;
use crate::{UpProcess, natsplug_binary};

/// Run `natsplug ARGS` to completion, with the environment variables `env`
/// added (for instance [`crate::nats_server::DEPLOY_LOGIN`]).
pub fn natsplug(args: &[&str], env: &[(&str, &str)]) -> Output {
    std::process::Command::new(natsplug_binary())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("running natsplug")
}

/// The standard output of `output`, which must be a success: otherwise
/// the panic shows the exit status and both streams.
pub fn assert_success(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "natsplug failed: {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `natsplug push FILE --name NAME --nats URL EXTRA...` into bucket
/// `plugins` (`EXTRA` such as `--create`, `--replicas 3`), which must
/// succeed; its standard output (`pushed NAME ...`).
pub fn push(url: &str, file: &str, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["push", file, "--name", name, "--nats", url];
    args.extend_from_slice(extra);
    assert_success(&natsplug(&args, &[]))
}

/// Bucket `plugins` (one replica) created through `client`, holding
/// `component` as plugin `name`. The object is put with a plain object
/// store client, so none of the checks of `natsplug push` apply.
pub async fn bucket_holding(
    client: &async_nats::Client,
    name: &str,
    component: &[u8],
) -> ObjectStore {
    let jetstream = async_nats::jetstream::new(client.clone());
    let store = natsplug::bucket::create(&jetstream, "plugins", 1)
        .await
        .expect("creating bucket `plugins`");
    let mut reader = component;
    store
        .put(name, &mut reader)
        .await
        .expect("putting a plugin into bucket `plugins`");
    store
}

/// Wait until each of `hosts` hosts answering `$SRV.INFO` reports `value`
/// for metadata `key` (`None`: each answers without `key`), polling every
/// 20 ms for at most 30 s; how long it took. If they do not, the panic
/// shows what they reported and the logs of `fleet`.
pub async fn until_fleet_reports(
    client: &async_nats::Client,
    hosts: usize,
    key: &str,
    value: Option<&str>,
    fleet: &[&UpProcess],
) -> Duration {
    let started = Instant::now();
    let expected = vec![value.map(str::to_string); hosts];
    loop {
        let seen = fleet_metadata(client, hosts, key).await;
        if seen == expected {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the fleet did not converge on {key} = {value:?} within 30 s: {seen:?}; \
             the hosts' logs:\n{}",
            fleet
                .iter()
                .map(|host| host.log())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
