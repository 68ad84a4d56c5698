//! Rollout latency through the plugins bucket: time from `natsplug push`
//! returning to every one of three hosts (separate processes, each with its
//! own compiled cache, as on separate machines) serving the new version,
//! for a small Rust plugin and, when built, the large Python and JavaScript
//! ones; cold (never compiled on the hosts) and with their caches warm.
//!
//! `cargo bench -p natsplug-suite --bench rollout` (build the polyglot examples first with
//! `examples/build-polyglot.sh` to include the large plugins)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use natsplug_suite::up::fleet_metadata;
use natsplug_suite::{NatsServer, UpProcess, guests, natsplug_binary};

const HOSTS: usize = 3;

/// Push `file` as plugin `probe` and return how long after `push` returned
/// every host served it.
async fn time_rollout(server: &NatsServer, client: &async_nats::Client, file: &Path) -> Duration {
    push(server, file);
    let pushed = Instant::now();
    let hash = natsplug::plugin::content_hash(&std::fs::read(file).unwrap());
    let expected = vec![Some(hash); HOSTS];
    loop {
        if fleet_metadata(client, HOSTS, "plugin.probe.hash").await == expected {
            return pushed.elapsed();
        }
        assert!(
            pushed.elapsed() < Duration::from_secs(300),
            "the fleet never served the new version"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `natsplug push FILE --name probe`, creating the bucket.
fn push(server: &NatsServer, file: &Path) {
    let status = std::process::Command::new(natsplug_binary())
        .args([
            "push",
            "--name",
            "probe",
            "--create",
            "--nats",
            &server.url(),
        ])
        .arg(file)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("running natsplug push");
    assert!(status.success(), "natsplug push failed");
}

fn polyglot(name: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/guests/polyglot")
        .join(format!("{name}.wasm"));
    path.exists().then_some(path)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let server = NatsServer::start_with_args(&["-js"]);
    let client = server.connect().await;
    let baseline = PathBuf::from(guests::HEADER_INJECTOR);
    push(&server, &baseline);

    let dirs: Vec<_> = (0..HOSTS * 2)
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let _hosts: Vec<UpProcess> = (0..HOSTS)
        .map(|i| {
            UpProcess::start(&[
                "--nats",
                &server.url(),
                "--bucket",
                "plugins",
                "--plugins",
                dirs[2 * i].path().to_str().unwrap(),
                "--cache-dir",
                dirs[2 * i + 1].path().to_str().unwrap(),
            ])
        })
        .collect();

    let mut candidates = vec![("authz (Rust, small)", PathBuf::from(guests::AUTHZ))];
    for name in ["python-validator", "js-rewriter"] {
        match polyglot(name) {
            Some(path) => candidates.push((name, path)),
            None => eprintln!("{name} is not built; run examples/build-polyglot.sh to include it"),
        }
    }
    println!(
        "{:<22} {:>8} {:>6} {:>18}",
        "plugin", "size", "cache", "push→3 hosts serve"
    );
    for (name, file) in &candidates {
        let size = std::fs::metadata(file).unwrap().len();
        for cache in ["cold", "warm"] {
            let elapsed = time_rollout(&server, &client, file).await;
            println!(
                "{name:<22} {:>6.1}MB {cache:>6} {:>16.0}ms",
                size as f64 / 1e6,
                elapsed.as_secs_f64() * 1000.0
            );
            // Back to the baseline (cached everywhere) before the next one.
            time_rollout(&server, &client, &baseline).await;
        }
    }
}
