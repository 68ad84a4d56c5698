//! What the tests and benchmarks do with the processes they start: signal
//! them, wait for them with a bound, read their CPU time.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Send SIGTERM to `child`.
pub fn terminate(child: &Child) {
    let pid = child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
}

/// Wait up to 20 s for `child` to exit; `log` says what it printed when it
/// does not.
pub fn wait_exit(child: &mut Child, name: &str, log: impl Fn() -> String) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not exit within 20 s; its log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// CPU time, user plus system, process `pid` has used so far.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime, fields 14 and 15 of the line, in clock ticks.
    let total = ticks(11) + ticks(12);
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_secs_f64(total as f64 / per_second as f64)
}
