//! Checking a configuration at start-up, with errors that name the key and the fix.

use anyhow::{Context as _, bail};

use super::HostConfig;
use super::nats::redact_url;

impl HostConfig {
    /// Check every value; the error says which key is wrong and how to fix it.
    pub fn validate(&self) -> anyhow::Result<()> {
        validate_subject("subjects.prefix", &self.subjects.prefix)?;
        if !valid_token(&self.subjects.queue_group) {
            bail!(
                "subjects.queue_group `{}` is not a valid queue group: use letters, digits, `-`, `_` or `.`, no spaces or wildcards",
                self.subjects.queue_group
            );
        }
        self.validate_nats()?;
        if let Some(bucket) = &self.plugins.bucket {
            let ok = !bucket.is_empty()
                && bucket
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
            if !ok {
                bail!(
                    "plugins.bucket `{bucket}` is not a valid bucket name: use letters, digits, `-` and `_`"
                );
            }
        }
        let runtime = &self.runtime;
        let positive = [
            (
                "runtime.max_calls_per_instance",
                runtime.max_calls_per_instance,
            ),
            ("runtime.call_timeout_ms", runtime.call_timeout_ms),
            ("runtime.max_memory_mb", runtime.max_memory_mb),
            (
                "runtime.max_request_bytes",
                runtime.max_request_bytes as u64,
            ),
            ("runtime.max_in_flight", runtime.max_in_flight as u64),
            (
                "runtime.max_in_flight_per_plugin",
                runtime.max_in_flight_per_plugin as u64,
            ),
            ("runtime.pool_instances", u64::from(runtime.pool_instances)),
            ("runtime.max_queue_wait_ms", runtime.max_queue_wait_ms),
        ];
        for (key, value) in positive {
            if value == 0 {
                bail!("{key} must be greater than 0");
            }
        }
        if runtime.max_memory_mb > 4096 {
            bail!(
                "runtime.max_memory_mb is {}; a 32-bit wasm memory holds at most 4096 MiB",
                runtime.max_memory_mb
            );
        }
        let needed = runtime.worker_count() as u64;
        if u64::from(runtime.pool_instances) < needed {
            bail!(
                "runtime.pool_instances ({}) is below the worker count ({needed}): every worker needs at least one instance slot",
                runtime.pool_instances
            );
        }
        let logs = &self.logs;
        for (key, value) in [
            ("logs.buffer", logs.buffer as u64),
            ("logs.batch_size", logs.batch_size as u64),
            ("logs.flush_interval_ms", logs.flush_interval_ms),
        ] {
            if value == 0 {
                bail!("{key} must be greater than 0");
            }
        }
        let sample = logs
            .subject
            .replace("{plugin}", "p")
            .replace("{level}", "info");
        validate_subject("logs.subject", &sample).map_err(|_| {
            anyhow::anyhow!(
                "logs.subject `{}` is not a valid subject template: dot-separated tokens, with `{{plugin}}` and `{{level}}` as placeholders",
                logs.subject
            )
        })?;
        if logs.durable && !valid_token(&logs.stream) {
            bail!("logs.stream `{}` is not a valid stream name", logs.stream);
        }
        if let Some(listen) = &self.monitoring.listen
            && listen.parse::<std::net::SocketAddr>().is_err()
        {
            bail!(
                "monitoring.listen `{listen}` is not an address: use IP:PORT, e.g. 127.0.0.1:9464"
            );
        }
        if !self
            .monitoring
            .service_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
            || self.monitoring.service_name.is_empty()
        {
            bail!(
                "monitoring.service_name `{}` may hold only letters, digits, `-` and `_`",
                self.monitoring.service_name
            );
        }
        for (name, settings) in &self.plugin {
            validate_plugin_name(name).with_context(|| format!("in [plugin.{name}]"))?;
            for (key, value) in [
                ("max_in_flight", settings.max_in_flight.map(|v| v as u64)),
                (
                    "max_concurrency",
                    settings.max_concurrency.map(|v| v as u64),
                ),
                ("call_timeout_ms", settings.call_timeout_ms),
                ("max_memory_mb", settings.max_memory_mb),
            ] {
                if value == Some(0) {
                    bail!("plugin.{name}.{key} must be greater than 0");
                }
            }
            if let Some(memory) = settings.max_memory_mb
                && memory > runtime.max_memory_mb
            {
                bail!(
                    "plugin.{name}.max_memory_mb ({memory}) is above runtime.max_memory_mb ({}), the size of every instance slot; raise runtime.max_memory_mb",
                    runtime.max_memory_mb
                );
            }
        }
        Ok(())
    }
}

impl HostConfig {
    fn validate_nats(&self) -> anyhow::Result<()> {
        let nats = &self.nats;
        for url in &nats.urls {
            if url.trim().is_empty() {
                bail!("nats.urls contains an empty URL");
            }
            if let Err(error) = url.parse::<async_nats::ServerAddr>() {
                bail!(
                    "nats.urls: `{}` is not a valid NATS URL ({error}); write nats://HOST:PORT or tls://HOST:PORT",
                    redact_url(url)
                );
            }
        }
        nats.auth()?;
        match (&nats.tls_cert_file, &nats.tls_key_file) {
            (Some(_), None) => bail!(
                "nats.tls_cert_file is set without nats.tls_key_file; mutual TLS needs both the certificate and its private key"
            ),
            (None, Some(_)) => bail!(
                "nats.tls_key_file is set without nats.tls_cert_file; mutual TLS needs both the certificate and its private key"
            ),
            _ => {}
        }
        for (key, value) in [
            ("nats.connect_timeout_ms", nats.connect_timeout_ms),
            ("nats.reconnect_wait_ms", nats.reconnect_wait_ms),
            ("nats.reconnect_max_wait_ms", nats.reconnect_max_wait_ms),
            (
                "nats.subscription_capacity",
                nats.subscription_capacity as u64,
            ),
            ("nats.permission_check_ms", nats.permission_check_ms),
            ("nats.drain_timeout_ms", nats.drain_timeout_ms),
        ] {
            if value == 0 {
                bail!("{key} must be greater than 0");
            }
        }
        if nats.reconnect_max_wait_ms < nats.reconnect_wait_ms {
            bail!(
                "nats.reconnect_max_wait_ms ({}) is below nats.reconnect_wait_ms ({}); the longest wait cannot be shorter than the first",
                nats.reconnect_max_wait_ms,
                nats.reconnect_wait_ms
            );
        }
        Ok(())
    }
}

/// Whether `token` can be one token of a NATS subject or a queue group name.
fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn validate_subject(key: &str, subject: &str) -> anyhow::Result<()> {
    let ok = !subject.is_empty()
        && subject
            .split('.')
            .all(|token| !token.is_empty() && valid_token(token));
    if !ok {
        bail!(
            "{key} `{subject}` is not a valid subject prefix: use dot-separated tokens of letters, digits, `-` or `_` (no wildcards, spaces or empty tokens)"
        );
    }
    Ok(())
}

/// Check that `name` can be a plugin name: a single NATS subject token.
pub fn validate_plugin_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if !ok {
        bail!(
            "plugin name `{name}` is not a valid NATS subject token: use letters, digits, `-` or `_` (rename the file)"
        );
    }
    Ok(())
}
