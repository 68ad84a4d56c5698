//! `natsplug up` as a real child process, for tests that run hosts the way
//! users do; and what those tests ask every host over `$SRV.INFO`.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt as _;

use crate::natsplug_binary;

/// `path` as a command-line argument.
pub fn path_arg(path: &std::path::Path) -> String {
    path.to_str().expect("a UTF-8 path").to_string()
}

/// A running `natsplug up`, its ready lines, and its log file.
pub struct UpProcess {
    pub child: Child,
    /// The ready line and the subject lines after it.
    pub ready_lines: Vec<String>,
    log: tempfile::NamedTempFile,
}

impl UpProcess {
    /// Run `natsplug up ARGS` and wait for its ready line.
    pub fn start(args: &[&str]) -> UpProcess {
        UpProcess::start_with_env(args, &[])
    }

    /// [`UpProcess::start`] with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> UpProcess {
        let mut up = UpProcess::spawn(args, env, Stdio::piped());
        // The ready line says how many subject lines follow it.
        let mut lines = BufReader::new(up.child.stdout.take().unwrap()).lines();
        let Some(Ok(ready)) = lines.next() else {
            panic!("natsplug up exited before it was ready:\n{}", up.log());
        };
        let subjects: usize = ready
            .split(", ")
            .nth(1)
            .and_then(|part| part.split(' ').next())
            .and_then(|count| count.parse().ok())
            .unwrap_or_else(|| panic!("unexpected ready line `{ready}`"));
        let mut ready_lines = vec![ready];
        for _ in 0..subjects {
            ready_lines.push(lines.next().expect("a subject line").unwrap());
        }
        // Keep reading stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        up.ready_lines = ready_lines;
        up
    }

    /// Run `natsplug up ARGS` with its standard output going to `stdout`,
    /// without waiting for the ready line.
    pub fn spawn(args: &[&str], env: &[(&str, &str)], stdout: impl Into<Stdio>) -> UpProcess {
        let log = tempfile::NamedTempFile::new().expect("a log file");
        // Its own process group, like a command started from a shell, so
        // a test can signal the group as a terminal's Ctrl-C does.
        let child = Command::new(natsplug_binary())
            .arg("up")
            .args(args)
            .envs(env.iter().copied())
            .stdout(stdout)
            .stderr(log.reopen().expect("the log file"))
            .process_group(0)
            .spawn()
            .expect("starting natsplug up");
        UpProcess {
            child,
            ready_lines: Vec::new(),
            log,
        }
    }

    /// What the host logged so far (its standard error).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// The path of the log file.
    pub fn log_path(&self) -> PathBuf {
        self.log.path().to_path_buf()
    }

    /// Send SIGTERM.
    pub fn terminate(&mut self) {
        crate::process::terminate(&self.child);
    }

    /// Send SIGINT to the process group, as Ctrl-C in a terminal does
    /// (the host and anything it started in its group).
    pub fn interrupt_group(&mut self) {
        let group = format!("-{}", self.child.id());
        let status = Command::new("kill")
            .args(["-INT", "--", &group])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Wait up to 20 s for the process to exit.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let log = self.log.path().to_path_buf();
        crate::process::wait_exit(&mut self.child, "natsplug", || {
            std::fs::read_to_string(&log).unwrap_or_default()
        })
    }
}

impl Drop for UpProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `$SRV.INFO` replies (as JSON) of the hosts answering within
/// `window`; returns early once `hosts` replies are in.
pub async fn host_infos(
    client: &async_nats::Client,
    hosts: usize,
    window: Duration,
) -> Vec<serde_json::Value> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply("$SRV.INFO.natsplug", inbox, "".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let mut infos = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while infos.len() < hosts
        && let Ok(Some(message)) = tokio::time::timeout_at(deadline, replies.next()).await
    {
        // No host listening: the server answers "no responders" (empty).
        if message.payload.is_empty() {
            break;
        }
        infos.push(serde_json::from_slice(&message.payload).expect("an INFO reply in JSON"));
    }
    infos
}

/// The metadata value `key` of each of the `hosts` hosts answering
/// `$SRV.INFO`, sorted (`None` for a host without it). Fewer values mean
/// fewer hosts answered within a second.
pub async fn fleet_metadata(
    client: &async_nats::Client,
    hosts: usize,
    key: &str,
) -> Vec<Option<String>> {
    let mut values: Vec<Option<String>> = host_infos(client, hosts, Duration::from_secs(1))
        .await
        .iter()
        .map(|info| info["metadata"][key].as_str().map(str::to_string))
        .collect();
    values.sort();
    values
}

/// `component` with a custom section of `extra` bytes appended: a larger
/// component that behaves the same (hosts ignore custom sections).
pub fn padded_component(component: &[u8], extra: usize) -> Vec<u8> {
    fn leb128(mut value: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"natsplug-test-padding";
    let mut body = Vec::new();
    leb128(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend((0..extra).map(|i| (i % 251) as u8));
    let mut bytes = component.to_vec();
    bytes.push(0); // custom section id
    leb128(body.len(), &mut bytes);
    bytes.extend_from_slice(&body);
    bytes
}
