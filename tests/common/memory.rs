//! A process's memory as the kernel counts it (`/proc/PID/status`), for tests that bound the
//! daemon's memory under load. Under `EDGEHOOK_TEST_RUNNER` the pid is the emulator's, whose
//! own memory is included: bound growth (after minus before), not an absolute size.

/// Resident memory of a process, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the peak resident size so far.
    pub hwm_kib: u64,
    /// `RssFile`: of `rss_kib`, pages of mapped files (code).
    pub file_kib: u64,
}

/// The memory of process `pid`.
pub fn memory(pid: i32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    Memory {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        file_kib: field("RssFile:"),
    }
}

/// The memory of process `pid`, its peak (`VmHWM`) reset to its resident size first
/// (`/proc/PID/clear_refs`), so that the peak after a test's load is that load's alone: a peak
/// from before (a warm-up) could otherwise stand above a resident size that the daemon has
/// since brought down (at rest it gives memory back, `edgehook::memory`).
pub fn memory_from_now(pid: i32) -> Memory {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .unwrap_or_else(|e| panic!("cannot reset the peak of {pid} (/proc/{pid}/clear_refs): {e}"));
    memory(pid)
}

/// What `growth_kib` bounds allow on top under `EDGEHOOK_TEST_RUNNER`: the emulator
/// translates each code path the daemon takes for the first time and keeps the translation
/// (seen: 14 MiB under qemu-aarch64 where the daemon itself grew by 1.3 MiB).
pub fn emulator_allowance_kib() -> u64 {
    if super::emulated() { 48 * 1024 } else { 0 }
}

/// How much the peak since `before` (taken with `memory_from_now`) exceeds `before`'s resident
/// size, less the code mapped again meanwhile (`RssFile` grown: the daemon unmaps its code at
/// rest, and a load right after a rest maps it back; that is the page cache's, not the
/// daemon's memory), checked against
/// `bound_kib` (plus the emulator's allowance); returns the growth.
pub fn assert_growth_below(pid: i32, before: Memory, bound_kib: u64, what: &str) -> u64 {
    let after = memory(pid);
    let code = after.file_kib.saturating_sub(before.file_kib);
    let growth = after
        .hwm_kib
        .saturating_sub(before.rss_kib)
        .saturating_sub(code);
    eprintln!(
        "{what}: RSS before {} KiB, peak after {} KiB, code mapped again {code} KiB, growth {growth} KiB",
        before.rss_kib, after.hwm_kib
    );
    let limit = bound_kib + emulator_allowance_kib();
    assert!(
        growth < limit,
        "{what}: RSS grew by {growth} KiB (bound {limit} KiB)"
    );
    growth
}

/// CPU time (user + system) process `pid` has used, in clock ticks (usually 1/100 s).
pub fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/stat: {e}"));
    let (_, fields) = stat_fields(&stat);
    // utime and stime are fields 14 and 15 of the line.
    fields[14 - 3].parse::<u64>().unwrap() + fields[15 - 3].parse::<u64>().unwrap()
}

/// A `/proc/PID/stat` (or `/proc/PID/task/TID/stat`) line's command name, and its fields from
/// the third (the state) on: field N is at `N - 3`. The name, in parentheses, may hold spaces;
/// the fields after its closing parenthesis do not.
pub fn stat_fields(stat: &str) -> (&str, Vec<&str>) {
    let open = stat.find('(').expect("a stat line");
    let close = stat.rfind(')').expect("a stat line");
    (
        &stat[open + 1..close],
        stat[close + 2..].split_whitespace().collect(),
    )
}
