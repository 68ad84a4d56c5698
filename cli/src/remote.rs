//! Phase requests over NATS, shared by `call` and `bench`: the phase
//! subject, the `--timeout`, and sending one request with errors that say
//! what to check. (`status` reads its `--wait` with [`timeout`].)

use std::time::Duration;

use anyhow::anyhow;

use natsplug_protocol::Phase;

/// `{prefix}.{plugin}.{phase}`.
pub fn subject(prefix: &str, plugin: &str, phase: Phase) -> String {
    format!("{prefix}.{plugin}.{phase}")
}

/// A `--timeout` in seconds as a duration.
pub fn timeout(seconds: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow!("--timeout {seconds} is not a positive number of seconds"))
}

/// Send one request and wait for its reply; the errors say what to check.
pub async fn send(
    client: &async_nats::Client,
    subject: &str,
    phase: Phase,
    payload: Vec<u8>,
    timeout: Duration,
) -> anyhow::Result<async_nats::Message> {
    tokio::time::timeout(
        timeout,
        client.request(subject.to_string(), payload.into()),
    )
    .await
    .map_err(|_| {
        anyhow!(
            "no reply on {subject} within {} s: the host may be overloaded or the plugin slow; raise --timeout",
            timeout.as_secs_f64()
        )
    })?
    .map_err(|error| match error.kind() {
        async_nats::RequestErrorKind::NoResponders => anyhow!(
            "no host serves {subject}: is `natsplug up` running on this NATS server with the plugin loaded, and does the plugin implement {phase}?"
        ),
        _ => anyhow!("request on {subject} failed: {error}"),
    })
}
