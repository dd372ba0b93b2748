//! The wall clock jumping by hours or days (NTP stepping the clock of a device without a
//! real-time clock, or an operator setting it) neither stalls retries nor expires events
//! wrongly: the daemon runs under libfaketime, whose offset the test moves while it runs;
//! its monotonic clock stays real.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// What to preload: libfaketime for the architecture edgehook runs as (under qemu, the ARM
/// library that scripts/lib/cross.sh unpacks beside the ARM C library; on 32-bit ARM with the
/// shim it builds, since Rust calls `__clock_gettime64` there, which libfaketime does not
/// fake), or why there is none.
fn faketime_preload() -> Result<String, String> {
    let triple = if cfg!(target_arch = "x86_64") {
        "x86_64-linux-gnu"
    } else if cfg!(target_arch = "aarch64") {
        "aarch64-linux-gnu"
    } else if cfg!(target_arch = "arm") {
        "arm-linux-gnueabihf"
    } else {
        return Err("no libfaketime known for this architecture".into());
    };
    let dirs = [
        format!("/usr/lib/{triple}/faketime"),
        format!("/usr/{triple}/lib/faketime"),
    ];
    let find = |name: &str| {
        dirs.iter()
            .map(|d| PathBuf::from(d).join(name))
            .find(|p| p.exists())
            .ok_or_else(|| {
                format!("{name} is not installed (looked in {dirs:?}; scripts/test and scripts/lib/cross.sh install it)")
            })
    };
    let lib = find("libfaketime.so.1")?;
    if cfg!(target_arch = "arm") {
        let shim = find("libfaketime-time64.so")?;
        return Ok(format!("{} {}", shim.display(), lib.display()));
    }
    Ok(lib.display().to_string())
}

/// The preload, or `None` after saying why this test cannot run here (a failure under CI).
fn faketime_available() -> Option<String> {
    match faketime_preload() {
        Ok(p) => Some(p),
        Err(why) => {
            assert!(std::env::var_os("CI").is_none(), "{why}");
            eprintln!("cannot run this test here: {why}");
            None
        }
    }
}

/// The daemon under libfaketime; the offset of its wall clock is set with `set_offset`.
struct FakedDaemon {
    daemon: Daemon,
    rc: PathBuf,
}

impl FakedDaemon {
    fn start(setup: &Setup, preload: &str, offset_s: i64) -> FakedDaemon {
        let rc = setup.dir.path().join("faketime.rc");
        set_offset(&rc, offset_s);
        let daemon = setup.start_with_env(&[
            ("LD_PRELOAD", preload.as_ref()),
            ("FAKETIME_TIMESTAMP_FILE", rc.as_os_str()),
            ("FAKETIME_NO_CACHE", "1".as_ref()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".as_ref()),
        ]);
        FakedDaemon { daemon, rc }
    }

    /// Moves the daemon's wall clock to real time plus `offset_s` seconds.
    fn set_offset(&self, offset_s: i64) {
        set_offset(&self.rc, offset_s);
    }

    fn log(&self) -> String {
        self.daemon.log()
    }
}

/// Writes `offset_s` to libfaketime's file `rc` (whole, by a rename: the daemon reads it at
/// each call).
fn set_offset(rc: &Path, offset_s: i64) {
    let tmp = rc.with_extension("new");
    std::fs::write(&tmp, format!("{offset_s:+}\n")).unwrap();
    std::fs::rename(&tmp, rc).unwrap();
}

const HOUR: i64 = 3600;

fn refusing_setup(max_age: &str) -> (Receiver, Setup) {
    let receiver = Receiver::start(Arc::new(|_, _| Response::status(503)));
    let setup = Setup::new("");
    let sink = http_sink("cloud", &receiver.url(), SECRET, "");
    setup.write_config_with(&format!("max_age = \"{max_age}\"\n"), &sink);
    (receiver, setup)
}

/// Waits for `n` more attempts than now (retries go on), and checks by the last one's
/// `webhook-timestamp` that the daemon's wall clock is `offset_s` from real time, so a test
/// cannot pass because libfaketime did nothing.
fn more_attempts(receiver: &Receiver, n: usize, offset_s: i64, what: &str) {
    let before = receiver.requests().len();
    wait_until(Duration::from_secs(30), what, || {
        receiver.requests().len() >= before + n
    });
    let last = receiver.requests().last().cloned().unwrap();
    let sent: i64 = last.header("webhook-timestamp").unwrap().parse().unwrap();
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (sent - (real + offset_s)).abs() < 120,
        "the daemon's clock is {} s from real time, not {offset_s} s",
        sent - real
    );
}

fn dead_letters(setup: &Setup) -> i64 {
    setup.sink_status("cloud")["dead_letters"].as_i64().unwrap()
}

#[test]
fn clock_jumps_of_hours_either_way_neither_stall_retries_nor_expire_events() {
    let Some(lib) = faketime_available() else {
        return;
    };
    let (receiver, setup) = refusing_setup("1h");
    let daemon = FakedDaemon::start(&setup, &lib, 0);
    let ids: Vec<String> = (0..5)
        .map(|n| emit_one(&setup.socket(), "sensor.reading", json!({ "n": n })))
        .collect();
    more_attempts(&receiver, 3, 0, "the first attempts");
    // Forward by 3 hours: past max_age by the wall clock, not by the time really spent.
    daemon.set_offset(3 * HOUR);
    more_attempts(&receiver, 10, 3 * HOUR, "retries after the jump forward");
    assert_eq!(dead_letters(&setup), 0, "{}", daemon.log());
    // Back by 5 hours (2 hours behind real time): retries must not wait for the clock to
    // catch up.
    daemon.set_offset(-2 * HOUR);
    more_attempts(&receiver, 10, -2 * HOUR, "retries after the jump back");
    daemon.set_offset(24 * HOUR);
    more_attempts(&receiver, 10, 24 * HOUR, "retries after a jump of a day");
    assert_eq!(dead_letters(&setup), 0, "{}", daemon.log());
    receiver.set_behaviour(Arc::new(|_, _| Response::status(200)));
    wait_until(Duration::from_secs(30), "every event delivered", || {
        let got = receiver.delivered_ids();
        ids.iter().all(|id| got.contains(id))
    });
    assert_eq!(receiver.delivered_ids(), ids, "in order, once each");
    assert_eq!(dead_letters(&setup), 0);
}

#[test]
fn a_device_booting_with_an_old_clock_that_ntp_steps_forward_by_days_keeps_its_backlog() {
    let Some(lib) = faketime_available() else {
        return;
    };
    let (receiver, setup) = refusing_setup("1h");
    // Events stored while the clock was right; then a reboot with fake-hwclock's time from
    // two days earlier (the last time it was saved), more events, and NTP's step.
    let first = {
        let daemon = FakedDaemon::start(&setup, &lib, 0);
        let id = emit_one(&setup.socket(), "sensor.reading", json!({"n": 0}));
        drop(daemon);
        id
    };
    let daemon = FakedDaemon::start(&setup, &lib, -48 * HOUR);
    let second = emit_one(&setup.socket(), "sensor.reading", json!({"n": 1}));
    more_attempts(&receiver, 3, -48 * HOUR, "attempts with the old clock");
    daemon.set_offset(0);
    more_attempts(&receiver, 10, 0, "retries after NTP's step");
    assert_eq!(dead_letters(&setup), 0, "{}", daemon.log());
    receiver.set_behaviour(Arc::new(|_, _| Response::status(200)));
    wait_until(Duration::from_secs(30), "both events delivered", || {
        receiver.delivered_ids().len() >= 2
    });
    assert_eq!(receiver.delivered_ids(), [first, second]);
}

#[test]
fn events_still_expire_after_max_age_of_real_time_when_the_clock_jumps() {
    let Some(lib) = faketime_available() else {
        return;
    };
    let (receiver, setup) = refusing_setup("4s");
    let daemon = FakedDaemon::start(&setup, &lib, 0);
    let stored = Instant::now();
    for n in 0..3 {
        emit_one(&setup.socket(), "sensor.reading", json!({ "n": n }));
    }
    daemon.set_offset(6 * HOUR);
    more_attempts(&receiver, 5, 6 * HOUR, "retries after the jump");
    assert_eq!(
        dead_letters(&setup),
        0,
        "expired by the jump: {}",
        daemon.log()
    );
    wait_until(Duration::from_secs(60), "the events expired", || {
        dead_letters(&setup) == 3
    });
    let took = stored.elapsed();
    assert!(took >= Duration::from_secs(4), "expired after {took:?}");
    eprintln!("expired after {took:?} of real time (max_age 4s), with the clock 6 h ahead");
}
