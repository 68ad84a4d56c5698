//! Faults of the compiled-artifact cache: a read-only cache directory, a
//! full disk, and entries truncated or altered between two starts. In each
//! case the host serves (compiling afresh), says why in one log line that
//! names the path, the cause and what to do, and never loads a damaged
//! entry.
//!
//! The read-only and full disks are small tmpfs file systems mounted for
//! the test (root can write through file modes, not through a read-only or
//! full mount), so these tests need root or CAP_SYS_ADMIN, as CI has.

use std::path::{Path, PathBuf};
use std::process::Command;

use natsplug_protocol::{Action, PhaseReply};
use natsplug_suite::client::request;
use natsplug_suite::host::install_file;
use natsplug_suite::up::path_arg;
use natsplug_suite::{NatsServer, PhaseClient, TestHost, UpProcess, guests};

/// A tmpfs mounted on a fresh temporary directory, unmounted on drop (also
/// when the test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mount a tmpfs with mount `options` (e.g. `size=64k`).
    fn mount(options: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("a mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(
            output.status.success(),
            "mounting a tmpfs ({options}) on {} failed: {}. These tests need root (CAP_SYS_ADMIN) to mount one",
            dir.path().display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy: detach it now, the kernel frees it when unused.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// `natsplug up` on `server`, serving `plugins`, caching in `cache_dir`,
/// with its log at the default level and without colours.
fn up(server: &NatsServer, plugins: &Path, cache_dir: &Path) -> UpProcess {
    UpProcess::start_with_env(
        &[
            "--nats",
            &server.url(),
            "--plugins",
            &path_arg(plugins),
            "--cache-dir",
            &path_arg(cache_dir),
        ],
        &[
            ("RUST_LOG", "info,wasmtime=warn,cranelift=warn"),
            ("NO_COLOR", "1"),
        ],
    )
}

/// Stop `up` with SIGTERM and expect a clean exit.
fn stop(mut up: UpProcess) -> String {
    up.terminate();
    let status = up.wait_exit();
    assert!(
        status.success(),
        "natsplug up exited with {status}:\n{}",
        up.log()
    );
    up.log()
}

/// The lines of `log` that contain `needle`.
fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|line| line.contains(needle)).collect()
}

/// The `plugin ... loaded` lines of `log`, which say `cached=true|false`.
fn loaded_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| line.contains("` loaded"))
        .collect()
}

/// The files in `dir` and its subdirectories.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// The header injector answers with its header.
async fn assert_injects(client: &PhaseClient, id: &str) {
    let reply: PhaseReply = client
        .send(
            "header-injector",
            &request("request_filter", id, "GET", "/"),
        )
        .await;
    assert_eq!(reply.action, Action::Next, "{reply:?}");
    let set = &reply.request_headers.as_ref().expect("header changes").set;
    assert!(
        set.contains(&("x-plugin".to_string(), "header-injector".to_string()))
            && set.contains(&("x-request-id".to_string(), id.to_string())),
        "{set:?}"
    );
}

/// The authorizer, with no token configured, forbids.
async fn assert_forbids(client: &PhaseClient) {
    let reply = client
        .send("authz", &request("request_filter", "authz", "GET", "/"))
        .await;
    assert_eq!((reply.action, reply.status), (Action::End, Some(403)));
}

/// A plugins directory with the header injector and the authorizer.
fn two_plugins() -> tempfile::TempDir {
    let plugins = tempfile::tempdir().unwrap();
    install_file(plugins.path(), "header-injector", guests::HEADER_INJECTOR);
    install_file(plugins.path(), "authz", guests::AUTHZ);
    plugins
}

#[tokio::test]
async fn a_read_only_cache_dir_is_named_once_and_every_plugin_is_compiled_and_served() {
    let server = NatsServer::start();
    let plugins = two_plugins();
    let cache = Tmpfs::mount("size=1m,ro");

    let up = up(&server, plugins.path(), cache.path());
    let client = PhaseClient::new(server.connect().await);
    assert_injects(&client, "ro-1").await;
    assert_forbids(&client).await;
    let log = stop(up);

    let shown = cache.path().display().to_string();
    let lines = lines_with(&log, &shown);
    assert_eq!(lines.len(), 1, "one line about the cache:\n{log}");
    let line = lines[0];
    assert!(
        line.contains(" WARN ")
            && line.contains(&format!(
                "cannot create the compiled-artifact cache directory {shown}/"
            ))
            && line.contains(": Read-only file system (os error 30). The file system of ")
            && line.contains(
                "is mounted read-only: point cache.dir (--cache-dir) at another directory, or turn the cache off (cache.enabled = false, --no-cache); compiling without a cache"
            ),
        "{line}"
    );
    let loaded = loaded_lines(&log);
    assert_eq!(loaded.len(), 2, "{log}");
    assert!(loaded.iter().all(|l| l.contains("cached=false")), "{log}");
    assert!(files_under(cache.path()).is_empty());
}

#[tokio::test]
async fn a_full_cache_disk_is_named_once_and_leaves_no_partial_entry() {
    let server = NatsServer::start();
    let plugins = two_plugins();
    // Smaller than either compiled plugin.
    let cache = Tmpfs::mount("size=64k");

    let up = up(&server, plugins.path(), cache.path());
    let client = PhaseClient::new(server.connect().await);
    assert_injects(&client, "full-1").await;
    assert_forbids(&client).await;
    let log = stop(up);

    let shown = cache.path().display().to_string();
    let lines = lines_with(&log, &shown);
    assert_eq!(
        lines.len(),
        1,
        "one line about the cache, though both plugins failed to be written:\n{log}"
    );
    let line = lines[0];
    assert!(
        line.contains(" WARN ")
            && line.contains(&format!(
                "cannot write the compiled-artifact cache entry {shown}/"
            ))
            && line.contains(
                ".cwasm: No space left on device (os error 28); serving on, but a plugin missing from the cache is compiled afresh at every start. Free space on the file system of "
            )
            && line.contains(
                "or point cache.dir (--cache-dir) at another directory, or turn the cache off (cache.enabled = false, --no-cache) (repeats of this failure are logged at debug level)"
            ),
        "{line}"
    );
    let loaded = loaded_lines(&log);
    assert_eq!(loaded.len(), 2, "{log}");
    assert!(loaded.iter().all(|l| l.contains("cached=false")), "{log}");
    // Neither an entry nor a partial temporary file holds the space.
    assert_eq!(files_under(cache.path()), Vec::<PathBuf>::new());
}

/// Start the host three times on one cache: cold (writes the entry), after
/// `damage` in-process (the entry is rejected, counted and rewritten),
/// after `damage` again as `natsplug up` (one log line naming the entry and
/// the cause `damage` returns), and warm (the rewritten entry is used).
async fn a_damaged_entry_is_rejected_and_recompiled(damage: fn(&mut Vec<u8>) -> String) {
    let server = NatsServer::start();
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_path_buf();
    let plugins = [("header-injector", guests::HEADER_INJECTOR)];
    let configure = |c: &mut natsplug::HostConfig| c.cache.dir = Some(cache_dir.clone());
    let client = PhaseClient::new(server.connect().await);
    let hash = natsplug::plugin::content_hash(&std::fs::read(guests::HEADER_INJECTOR).unwrap());
    let counters = |host: &TestHost| {
        let cache = host.host.loader().cache().expect("the cache is on");
        (cache.hits(), cache.misses(), cache.rejected())
    };
    let damage_entry = |path: &Path| {
        let mut bytes = std::fs::read(path).unwrap();
        let cause = damage(&mut bytes);
        std::fs::write(path, &bytes).unwrap();
        cause
    };

    let cold = TestHost::start(&server.url(), &plugins, configure).await;
    assert_eq!(counters(&cold), (0, 1, 0));
    let entry = cold.host.loader().cache().unwrap().entry_path(&hash);
    assert!(entry.is_file(), "the cold start wrote {}", entry.display());
    cold.host.shutdown().await.unwrap();

    damage_entry(&entry);
    let second = TestHost::start(&server.url(), &plugins, configure).await;
    assert_eq!(counters(&second), (0, 1, 1), "rejected, not loaded");
    assert_injects(&client, "in-process").await;
    second.host.shutdown().await.unwrap();
    assert!(entry.is_file(), "compiled afresh and written again");

    let cause = damage_entry(&entry);
    let plugins_dir = tempfile::tempdir().unwrap();
    install_file(
        plugins_dir.path(),
        "header-injector",
        guests::HEADER_INJECTOR,
    );
    let process = up(&server, plugins_dir.path(), &cache_dir);
    assert_injects(&client, "process").await;
    let log = stop(process);
    let lines = lines_with(&log, &cache_dir.display().to_string());
    assert_eq!(lines.len(), 1, "one line about the cache:\n{log}");
    let expected = format!(
        "compiled-artifact cache entry {} is unusable ({cause}); removed it and compiling the plugin afresh. If this recurs, check the disk under {}",
        entry.display(),
        entry.parent().unwrap().display()
    );
    assert!(
        lines[0].contains(" WARN ") && lines[0].contains(&expected),
        "expected `{expected}` in\n{}",
        lines[0]
    );
    let loaded = loaded_lines(&log);
    assert_eq!(loaded.len(), 1, "{log}");
    assert!(loaded[0].contains("cached=false"), "{log}");

    let warm = TestHost::start(&server.url(), &plugins, configure).await;
    assert_eq!(counters(&warm), (1, 0, 0), "the rewritten entry is sound");
    assert_injects(&client, "warm").await;
    warm.host.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_truncated_cache_entry_is_rejected_named_and_recompiled() {
    a_damaged_entry_is_rejected_and_recompiled(|bytes| {
        let whole = bytes.len();
        bytes.truncate(whole / 2);
        format!("truncated: it holds {} of its {whole} bytes", whole / 2)
    })
    .await;
}

#[tokio::test]
async fn a_cache_entry_with_one_flipped_bit_is_rejected_named_and_recompiled() {
    a_damaged_entry_is_rejected_and_recompiled(|bytes| {
        // In the middle: compiled code, which the engine itself does not check.
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x04;
        "checksum mismatch: its bytes changed after it was written".to_string()
    })
    .await;
}
