//! Measuring: repeated runs summarised as median, min and max; what /proc says of a process;
//! the machine the figures come from.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

/// The median, min and max of several runs.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(mut values: Vec<f64>) -> Spread {
        assert!(!values.is_empty(), "no runs to summarise");
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        };
        Spread {
            median,
            min: values[0],
            max: values[n - 1],
        }
    }

    pub fn json(&self) -> Value {
        json!({"median": self.median, "min": self.min, "max": self.max})
    }
}

/// Runs `f` `runs` times after `warmup` unmeasured runs.
pub fn repeat(warmup: usize, runs: usize, mut f: impl FnMut() -> f64) -> Spread {
    for _ in 0..warmup {
        f();
    }
    Spread::of((0..runs).map(|_| f()).collect())
}

/// Events per second.
pub fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64().max(1e-9)
}

/// One field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: i32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("/proc/{pid}/status has no {field}"))
}

/// User plus system CPU time of a process so far, in clock ticks (10 ms here): what `ps` and
/// `top` show, too coarse for a daemon at rest.
pub fn cpu_time(pid: i32) -> Duration {
    let ticks = crate::common::memory::cpu_ticks(pid);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// The CPU time of one process and all its threads, to the microsecond, those that end
/// meanwhile included: the process is moved into a cgroup of its own (v2) and its `cpu.stat`
/// read. Threads' own `schedstat` would lose a thread that ends in between (the runtime's
/// blocking threads end after 10 s of nothing to do); the clock ticks of `/proc/PID/stat`
/// count whole 10 ms ticks.
pub struct CpuMeter {
    group: std::path::PathBuf,
    /// The cgroup the process came from (its `cgroup.procs`), to go back to when done.
    home: std::path::PathBuf,
    pid: i32,
}

impl CpuMeter {
    /// Moves `pid` into a new cgroup; why not when that cannot be done (no cgroup v2 mounted,
    /// or not allowed to make one).
    pub fn attach(pid: i32) -> Result<CpuMeter, String> {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
        // mountinfo: "... mount-point options ... - fstype source options"
        let root = mounts
            .lines()
            .find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                (right.split_whitespace().next()? == "cgroup2")
                    .then(|| left.split_whitespace().nth(4).map(std::path::PathBuf::from))?
            })
            .ok_or("no cgroup v2 hierarchy is mounted")?;
        let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map_err(|e| e.to_string())?
            .lines()
            .find_map(|l| {
                l.strip_prefix("0::")
                    .map(|p| p.trim_start_matches('/').to_string())
            })
            .ok_or("the process is in no cgroup v2")?;
        let home = root.join(own).join("cgroup.procs");
        let group = root.join(format!("edgehook-bench-{pid}"));
        std::fs::create_dir(&group).map_err(|e| format!("{}: {e}", group.display()))?;
        if let Err(e) = std::fs::write(group.join("cgroup.procs"), pid.to_string()) {
            let _ = std::fs::remove_dir(&group);
            return Err(format!("moving {pid} into {}: {e}", group.display()));
        }
        Ok(CpuMeter { group, home, pid })
    }

    /// User plus system time of the process since `attach`.
    pub fn used(&self) -> Duration {
        let stat = std::fs::read_to_string(self.group.join("cpu.stat")).expect("cpu.stat");
        let usec = stat
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
            .expect("usage_usec in cpu.stat");
        Duration::from_micros(usec)
    }
}

impl Drop for CpuMeter {
    fn drop(&mut self) {
        // A process that has ended has left the group already.
        let _ = std::fs::write(&self.home, self.pid.to_string());
        let _ = std::fs::remove_dir(&self.group);
    }
}

/// Bytes a process has caused to be sent to storage (`write_bytes` of /proc/PID/io).
pub fn write_bytes(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("/proc/PID/io");
    text.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("write_bytes in /proc/PID/io")
}

/// What the figures were measured on.
pub fn machine(dir: &Path) -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let fs = std::process::Command::new("df")
        .arg("--output=fstype")
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().nth(1).map(str::trim).map(String::from))
        .unwrap_or_default();
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "memory_mib": mem_kib / 1024,
        "kernel": kernel.trim(),
        "arch": std::env::consts::ARCH,
        "sqlite": rusqlite::version(),
        "edgehook": env!("CARGO_PKG_VERSION"),
        "outbox_filesystem": fs,
    })
}
