//! What a large backlog costs: start-up to READY=1, `status`, the drain rate with 1,000,000
//! pending against 1,000, memory while draining it and at rest, CPU at rest, and the bytes
//! written to storage per event.

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

use crate::common::{Setup, edgehook, emit_one, run, wait_until};
use crate::drain::{
    arrival_rate, configure, copy_of, limit, pending, start_draining, wait_drained,
};
use crate::ingest::{emit_concurrently, parked_sink, sink};
use crate::measure::{CpuMeter, cpu_time, status_kib, write_bytes};
use crate::receiver::Receiver;

/// Starts the daemon with `NOTIFY_SOCKET` and returns it with the time from exec to `READY=1`.
pub fn start_until_ready(setup: &Setup) -> (Child, Duration) {
    let notify = setup.dir.path().join("notify.sock");
    let _ = std::fs::remove_file(&notify);
    let socket = UnixDatagram::bind(&notify).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let started = Instant::now();
    let mut child = edgehook()
        .arg("--config")
        .arg(&setup.config)
        .arg("run")
        .env("NOTIFY_SOCKET", &notify)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the daemon starts");
    let mut buf = [0u8; 4096];
    loop {
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no READY=1 within a minute: {e}");
            }
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        if text.lines().any(|l| l == "READY=1") {
            return (child, started.elapsed());
        }
    }
}

fn stop(mut child: Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

/// Start-up (s) and `status --json` (s) with the backlog pending and its sink down.
pub fn startup_and_status(backlog: &Setup, runs: usize) -> (Vec<f64>, Vec<f64>) {
    let setup = copy_of(backlog);
    configure(&setup, "full", &parked_sink());
    let (mut starts, mut statuses) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (child, took) = start_until_ready(&setup);
        starts.push(took.as_secs_f64());
        let t = Instant::now();
        let out = run(&setup.config, &["status", "--json"]);
        statuses.push(t.elapsed().as_secs_f64());
        assert!(out.status.success(), "status failed");
        stop(child);
    }
    (starts, statuses)
}

/// Runs `f` with this thread, and the threads and processes it starts (a receiver's, the
/// daemon), on one CPU, then gives the thread its CPUs back.
///
/// For the backlog scaling figure: on this 2-core virtual machine an ordered drain runs in two
/// regimes, about 45,000 events/s while the sender and the receiver take turns on one CPU and
/// about 15,000 once they ping-pong between two CPUs that sleep in between (a sleeping virtual
/// CPU is slow to wake), and the scheduler moves between them on its own. Every drain starts in
/// the fast one, so a long window of the large backlog against the short one of the small
/// backlog measured the scheduler, not the backlog (0.82), and equal short windows swung from
/// 0.32 to 2.6 from run to run. On one CPU the rate holds steady (about 32,000 here, with the
/// outbox's thread on the same CPU) and the ratio says what the backlog costs.
pub fn on_one_cpu<T>(f: impl FnOnce() -> T) -> T {
    let this = Pid::from_raw(0);
    let all = sched_getaffinity(this).expect("this thread's CPUs");
    let first = (0..CpuSet::count())
        .find(|&cpu| all.is_set(cpu).unwrap_or(false))
        .expect("a CPU");
    let mut one = CpuSet::new();
    one.set(first).expect("a CPU of the set");
    sched_setaffinity(this, &one).expect("pinned to one CPU");
    let out = f();
    sched_setaffinity(this, &all).expect("this thread's CPUs back");
    out
}

/// The ordered drain rate over `window` deliveries after the first 1,000, with the whole
/// backlog pending when it starts.
pub fn scaling_rate(backlog: &Setup, receiver: &Receiver, window: usize) -> f64 {
    let setup = copy_of(backlog);
    receiver.reset();
    let _daemon = start_draining(&setup, &receiver.url(), "max_in_flight = 1");
    let skip = 1_000.min(window / 10);
    wait_until(limit(skip + window), "the window to arrive", || {
        receiver.count() as usize >= skip + window
    });
    arrival_rate(receiver, skip, window)
}

fn backlog_len(backlog: &Setup) -> usize {
    pending(&backlog.db()) as usize
}

/// Peak RSS (KiB) draining the backlog with 8 in flight, then RSS (KiB) and CPU time after
/// `idle` with nothing to do.
pub struct Rest {
    pub peak_kib: u64,
    pub idle_rss_kib: u64,
    /// Of `idle_rss_kib`: the process's own memory, and mapped files (its code and libraries').
    pub idle_anon_kib: u64,
    pub idle_file_kib: u64,
    pub idle_cpu: Duration,
    /// How `idle_cpu` was measured.
    pub idle_cpu_by: String,
    /// From 1 s after the drain until the daemon had given its drain's memory back (when
    /// `idle_cpu`'s window starts): how long, and the CPU time it took.
    pub to_rest: Duration,
    pub to_rest_cpu: Duration,
    /// From `emit` of one event to its arrival at the receiver: the first after the time at
    /// rest (the daemon maps the code it runs again), and the next one.
    pub first_after_rest: Duration,
    pub next: Duration,
}

pub fn memory_and_idle(backlog: &Setup, receiver: &Receiver, idle: Duration) -> Rest {
    let setup = copy_of(backlog);
    let daemon = start_draining(&setup, &receiver.url(), "max_in_flight = 8");
    wait_drained(&setup.db(), limit(backlog_len(backlog)));
    let pid = daemon.pid();
    let peak_kib = status_kib(pid, "VmHWM");
    // Let the last reports and the checkpoint settle.
    std::thread::sleep(Duration::from_secs(1));
    let meter = CpuMeter::attach(pid);
    let used = || match &meter {
        Ok(meter) => meter.used(),
        Err(_) => cpu_time(pid),
    };
    let settled = used();
    // The idle window starts once the daemon has given its drain's memory back (after 5 s
    // quiet, at its next 10 s timer): that is the end of the drain, done once, and its cost
    // (cold caches after the quiet, on a shared machine anything from 5 to 35 ms of CPU) would
    // hide what the window is for, the daemon's own wake-ups at rest. A daemon that does not
    // give it back is waited for 30 s and fails the memory figure.
    let drained_rss = status_kib(pid, "VmRSS");
    let to_rest = wait_for(Duration::from_secs(30), || {
        status_kib(pid, "VmRSS") * 3 < drained_rss * 2
    });
    let rested = used();
    std::thread::sleep(idle);
    let idle_cpu = used() - rested;
    let idle_cpu_by = match &meter {
        Ok(_) => "its cgroup's cpu.stat, to the microsecond".to_string(),
        Err(why) => format!("clock ticks of /proc/PID/stat ({why})"),
    };
    drop(meter);
    let (idle_rss_kib, idle_anon_kib, idle_file_kib) = (
        status_kib(pid, "VmRSS"),
        status_kib(pid, "RssAnon"),
        status_kib(pid, "RssFile"),
    );
    Rest {
        peak_kib,
        idle_rss_kib,
        idle_anon_kib,
        idle_file_kib,
        idle_cpu,
        idle_cpu_by,
        to_rest,
        to_rest_cpu: rested - settled,
        first_after_rest: emit_to_arrival(&setup, receiver),
        next: emit_to_arrival(&setup, receiver),
    }
}

/// Polls `done` every 20 ms until it holds or `limit` passes; how long that took.
fn wait_for(limit: Duration, done: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !done() && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

/// From `emit` of one event on the socket to its arrival at the receiver (which notes the time
/// each request arrives).
fn emit_to_arrival(setup: &Setup, receiver: &Receiver) -> Duration {
    receiver.reset();
    let started = Instant::now();
    emit_one(
        &setup.socket(),
        "bench.reading",
        serde_json::json!({"n": 1}),
    );
    wait_until(Duration::from_secs(10), "the event to arrive", || {
        receiver.count() > 0
    });
    receiver.arrivals()[0] - started
}

/// Bytes the daemon wrote to storage per event, from ingest (8 clients, full durability) to
/// the deletion of the delivered events.
pub fn flash_wear(receiver: &Receiver, n: usize) -> f64 {
    let setup = Setup::new("");
    configure(
        &setup,
        "full",
        &sink("cloud", &receiver.url(), "max_in_flight = 8"),
    );
    let daemon = setup.start();
    let pid = daemon.pid();
    let before = write_bytes(pid);
    emit_concurrently(&setup.socket(), n);
    wait_drained(&setup.db(), limit(n));
    (write_bytes(pid) - before) as f64 / n as f64
}
