//! Hostile local clients on the ingest socket: a thousand connections at once, a hundred
//! thousand garbage lines, lines far over the size limit, a half line that stalls, a client
//! that never reads its replies, connections beyond `ingest.max_connections`. Throughout,
//! another client's events are acknowledged within a deadline, the daemon's memory stays
//! bounded, and every acknowledged event is delivered.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::memory::{
    assert_growth_below, cpu_ticks, emulator_allowance_kib, memory, memory_from_now,
};
use common::*;
use edgehook::client::Reply;
use serde_json::json;

/// How long an acknowledgement may take while the socket is under attack (qemu included).
const ACK_WITHIN: Duration = Duration::from_secs(5);

/// A daemon with one healthy HTTP sink and `ingest` keys added to its `[ingest]` section.
fn daemon(ingest: &str) -> (Setup, Daemon, Receiver) {
    let receiver = Receiver::ok();
    let setup = Setup::new("");
    let sink = http_sink("cloud", &receiver.url(), SECRET, "");
    setup.write_config_sections("", ingest, &sink);
    let daemon = setup.start();
    (setup, daemon, receiver)
}

/// A client that emits events one at a time and checks each is acknowledged within
/// `ACK_WITHIN`, until `stop` is raised (at least `min` events); returns the ids.
fn producer(
    setup: &Setup,
    min: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<String>> {
    let mut c = setup.client();
    std::thread::spawn(move || {
        let mut ids = Vec::new();
        while ids.len() < min || !stop.load(Ordering::SeqCst) {
            let started = Instant::now();
            let data = json!({"n": ids.len()});
            match c.call(&json!({"type": "sensor.reading", "data": data})) {
                Ok(Reply::Ok(v)) => ids.push(v.id.unwrap()),
                other => panic!("emit {} failed: {other:?}", ids.len()),
            }
            let took = started.elapsed();
            assert!(
                took < ACK_WITHIN,
                "event {} acknowledged after {took:?}",
                ids.len()
            );
            assert!(ids.len() < 1_000_000, "the producer was never stopped");
        }
        ids
    })
}

/// Every acknowledged event in `ids` reaches the receiver.
fn all_delivered(receiver: &Receiver, ids: &[String]) {
    wait_until(Duration::from_secs(60), "every acknowledged event", || {
        receiver.delivered_count() >= ids.len()
    });
    let got: std::collections::HashSet<String> = receiver.delivered_ids().into_iter().collect();
    let lost = ids.iter().filter(|id| !got.contains(*id)).count();
    assert_eq!(lost, 0, "{lost} acknowledged events were not delivered");
}

/// A raw connection with a read timeout, for clients the `Client` type would not write.
fn raw(setup: &Setup) -> UnixStream {
    let s = UnixStream::connect(setup.socket()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Reads one reply line from `r` as JSON.
fn reply(r: &mut impl BufRead) -> serde_json::Value {
    let mut line = String::new();
    r.read_line(&mut line).expect("a reply");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// Raises this process's open-file limit to its hard limit (a thousand sockets need it where
/// the soft limit is 1024).
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(soft >= 1_200, "only {soft} files may be open here");
}

/// The daemon's soft and hard open-file limits, from `/proc/PID/limits`.
fn nofile_of(pid: i32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let v: Vec<&str> = line.split_whitespace().collect();
    (v[3].to_string(), v[4].to_string())
}

#[test]
fn a_thousand_connections_at_once_are_served_and_one_more_is_refused_cleanly() {
    raise_nofile();
    // Every connection here is root's, and no uid gets more than half the slots: 1,000 and
    // the producer's fill root's share exactly.
    let (setup, daemon, receiver) = daemon("max_connections = 2002");
    let pid = daemon.pid();
    let (soft, hard) = nofile_of(pid);
    assert_eq!(soft, hard, "the daemon raises its open-file limit");
    let stop = Arc::new(AtomicBool::new(false));
    let producing = producer(&setup, 20, stop.clone());
    let before = memory_from_now(pid);
    let mut peaks = Vec::new();
    // The allocator keeps and reuses what the first waves took: growth levels off (figures in
    // RELIABILITY-PART-hostile.md); a leak would add about the same again with every wave.
    for wave in 0..8 {
        thousand_at_once(&setup, wave == 0);
        wait_until(
            Duration::from_secs(20),
            "a slot after the thousand close",
            || edgehook::client::daemon_running(&setup.socket()),
        );
        peaks.push(memory(pid).hwm_kib);
    }
    stop.store(true, Ordering::SeqCst);
    let ids = producing.join().unwrap();
    eprintln!(
        "1000 connections, 8 times: RSS before {} KiB, peaks after each {peaks:?} KiB; {} events meanwhile",
        before.rss_kib,
        ids.len()
    );
    let growth = peaks[0].saturating_sub(before.rss_kib);
    let bound = 48 * 1024 + emulator_allowance_kib();
    assert!(growth < bound, "RSS grew by {growth} KiB");
    // Natively the last three waves add 0.3-0.7 MiB. Under qemu-arm the peaks level off at the
    // same size (73.5-73.9 MiB in fifteen runs) but sometimes later: one wave as late as the
    // seventh added 2.2 MiB, the last three up to 2.9 MiB. The bound still catches a leak of
    // 2.1 KiB a connection.
    let settling = if emulated() { 6 * 1024 } else { 2 * 1024 };
    let last = peaks[7].saturating_sub(peaks[4]);
    assert!(
        last < settling,
        "the last three thousand added {last} KiB (bound {settling} KiB)"
    );
    all_delivered(&receiver, &ids);
}

/// Opens a thousand connections before any asks, then has each ping; with `refusals`, checks
/// that further connections are refused cleanly meanwhile. Closes them all.
fn thousand_at_once(setup: &Setup, refusals: bool) {
    let mut conns: Vec<UnixStream> = (0..1000).map(|_| raw(setup)).collect();
    for c in &mut conns {
        c.write_all(b"{\"op\":\"ping\"}\n").unwrap();
    }
    for c in &conns {
        assert_eq!(reply(&mut BufReader::new(c))["ok"], true);
    }
    if !refusals {
        return;
    }
    // One more: a clear error line, then the connection is closed, even when the client
    // has already sent its request (closing with it unread would reset the connection before
    // the client read the line: a race, so it is tried twenty times).
    let request = b"{\"type\":\"t\",\"data\":1}\n";
    for request in std::iter::once(&b""[..]).chain(std::iter::repeat_n(&request[..], 20)) {
        let mut extra = raw(setup);
        extra.write_all(request).unwrap();
        extra.shutdown(std::net::Shutdown::Write).unwrap();
        let mut text = String::new();
        extra
            .read_to_string(&mut text)
            .expect("the refusal, then end of file");
        let v: serde_json::Value = serde_json::from_str(&text).expect("one JSON line");
        assert_eq!(v["ok"], false, "{text}");
        assert_eq!(v["code"], "busy", "{text}");
        let error = v["error"].as_str().unwrap();
        assert!(
            error.contains("too many connections from uid 0 (at most 1001 of 2002)"),
            "{text}"
        );
    }
    // `edgehook emit` says so and exits 75, "try again later", as for a full outbox.
    let out = run(&setup.config, &["emit", "sensor.reading", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("too many connections"), "{stderr}");
}

/// One garbage line of each kind, in turn: not JSON, not UTF-8, JSON of the wrong shape,
/// nesting deeper than any parser should recurse, and an unknown op.
fn garbage(n: usize) -> Vec<u8> {
    match n % 6 {
        0 => format!("garbage line {n}\n").into_bytes(),
        1 => vec![0xff, 0xfe, b'{', 0x00, b'\n'],
        2 => b"[1,2,3]\n".to_vec(),
        3 => b"{\"type\":\"Bad Type\",\"data\":{}}\n".to_vec(),
        4 if n % 1000 == 4 => {
            let depth = 20_000;
            let mut line = b"{\"type\":\"t\",\"data\":".to_vec();
            line.extend(std::iter::repeat_n(b'[', depth));
            line.extend(std::iter::repeat_n(b']', depth));
            line.extend_from_slice(b"}\n");
            line
        }
        _ => b"{\"op\":\"launch\"}\n".to_vec(),
    }
}

#[test]
fn a_hundred_thousand_garbage_lines_are_answered_while_other_clients_are_served() {
    let (setup, daemon, receiver) = daemon("");
    let pid = daemon.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let producing = producer(&setup, 20, stop.clone());
    let before = memory_from_now(pid);
    let conn = raw(&setup);
    let mut writer = conn.try_clone().unwrap();
    let lines = scaled(100_000);
    let sending = std::thread::spawn(move || {
        for n in 0..lines {
            writer.write_all(&garbage(n)).unwrap();
        }
    });
    let mut r = BufReader::new(conn);
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..lines {
        let v = reply(&mut r);
        assert_eq!(v["ok"], false, "garbage accepted: {v}");
        *codes
            .entry(v["code"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    sending.join().unwrap();
    stop.store(true, Ordering::SeqCst);
    let ids = producing.join().unwrap();
    eprintln!(
        "{lines} garbage lines: replies {codes:?}; {} events meanwhile",
        ids.len()
    );
    assert_eq!(codes.values().sum::<usize>(), lines);
    assert!(
        codes.keys().all(|c| c == "invalid" || c == "unknown_op"),
        "{codes:?}"
    );
    assert_growth_below(pid, before, 16 * 1024, "100,000 garbage lines");
    all_delivered(&receiver, &ids);
}

#[test]
fn lines_over_the_size_limit_are_refused_without_being_held_in_memory() {
    let (setup, daemon, receiver) = daemon("max_event_bytes = \"1KiB\"");
    let pid = daemon.pid();
    let mut c = setup.client();
    // At the limit is accepted, one byte over is not.
    let line = |len: usize| {
        let head = "{\"type\":\"t\",\"data\":\"";
        let pad = len - head.len() - 2;
        format!("{head}{}\"}}\n", "a".repeat(pad)).into_bytes()
    };
    c.send_raw(&line(1024)).unwrap();
    let Reply::Ok(v) = c.recv().unwrap() else {
        panic!("a line of exactly the limit was refused")
    };
    let mut ids = vec![v.id.unwrap()];
    c.send_raw(&line(1025)).unwrap();
    assert!(matches!(c.recv().unwrap(), Reply::Err { code, .. } if code == "too_large"));
    let before = memory_from_now(pid);
    // 16 lines of 4 MiB, then a single line of 64 MiB: 128 MiB the daemon must not hold.
    let (count, last) = (scaled(160) / 10, scaled(640) / 10);
    let conn = raw(&setup);
    let mut writer = conn.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        let mib = vec![b'x'; 1 << 20];
        for size in std::iter::repeat_n(4, count).chain([last]) {
            for _ in 0..size {
                writer.write_all(&mib).unwrap();
            }
            writer.write_all(b"\n").unwrap();
        }
    });
    let mut r = BufReader::new(conn);
    for _ in 0..=count {
        assert_eq!(reply(&mut r)["code"], "too_large");
    }
    sending.join().unwrap();
    assert_growth_below(pid, before, 8 * 1024, "128 MiB in over-long lines");
    // The connection is still usable.
    let mut w = r.into_inner();
    w.write_all(b"{\"type\":\"t\",\"data\":2}\n").unwrap();
    let v = reply(&mut BufReader::new(w));
    ids.push(v["id"].as_str().expect("acknowledged").to_string());
    all_delivered(&receiver, &ids);
}

#[test]
fn a_half_line_that_stalls_blocks_nobody_and_is_dropped_after_a_while() {
    let (setup, _daemon, receiver) = daemon("");
    let mut stalled = raw(&setup);
    stalled
        .write_all(b"{\"op\":\"ping\"}\n{\"type\":\"t\",\"da")
        .unwrap();
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let producing = producer(&setup, 20, stop.clone());
    let mut r = BufReader::new(stalled);
    assert_eq!(
        reply(&mut r)["ok"],
        true,
        "the whole line before is answered"
    );
    // The half line is answered `invalid` and the connection closed once it has sat
    // unfinished for 10 to 20 s; an idle connection without a half line stays open.
    let idle = raw(&setup);
    let v = reply(&mut r);
    let waited = started.elapsed();
    assert_eq!(v["code"], "invalid", "{v}");
    assert!(v["error"].as_str().unwrap().contains("not finished"), "{v}");
    assert!(waited >= Duration::from_secs(9), "dropped after {waited:?}");
    assert!(waited < Duration::from_secs(30), "dropped after {waited:?}");
    let mut rest = String::new();
    assert_eq!(r.read_to_string(&mut rest).unwrap(), 0, "closed: {rest}");
    stop.store(true, Ordering::SeqCst);
    let ids = producing.join().unwrap();
    let mut idle = BufReader::new(idle);
    idle.get_mut().write_all(b"{\"op\":\"ping\"}\n").unwrap();
    assert_eq!(
        reply(&mut idle)["ok"],
        true,
        "an idle connection stays open"
    );
    all_delivered(&receiver, &ids);
}

#[test]
fn a_client_that_never_reads_its_replies_is_stopped_not_buffered() {
    let (setup, mut daemon, receiver) = daemon("");
    let pid = daemon.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let producing = producer(&setup, 20, stop.clone());
    let before = memory_from_now(pid);
    let deaf = raw(&setup);
    deaf.set_write_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let ping = b"{\"op\":\"ping\"}\n";
    let mut written = 0usize;
    // Bounded: 64 MiB of requests answered by nobody would mean replies piling up somewhere.
    while written < 64 << 20 {
        match (&deaf).write(ping) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        written < 16 << 20,
        "the daemon kept reading: {written} bytes"
    );
    let events = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        s.spawn(|| *events.lock().unwrap() = emit_pipelined(&setup.socket(), 1, 500, "t", 16));
    });
    stop.store(true, Ordering::SeqCst);
    let mut ids = producing.join().unwrap();
    ids.extend(events.into_inner().unwrap());
    eprintln!("a deaf client wrote {written} bytes before the daemon stopped reading");
    assert_growth_below(pid, before, 16 * 1024, "a deaf client");
    all_delivered(&receiver, &ids);
    // Stopping does not wait forever on a client that reads nothing.
    let cpu = cpu_ticks(pid);
    let started = Instant::now();
    assert_eq!(daemon.terminate(), Some(0));
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "SIGTERM took {took:?} (cpu {cpu})"
    );
    drop(deaf);
}

/// Files process `pid` has open.
fn open_files(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn out_of_file_descriptors_the_daemon_pauses_accepting_and_serves_again() {
    let (setup, daemon, receiver) = daemon("");
    let pid = daemon.pid();
    let mut ids = vec![emit_one(&setup.socket(), "t", json!(0))];
    // Room for ten more files: the hundred connections below exhaust it.
    let limit = open_files(pid) + 10;
    let out = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .output()
        .expect("prlimit (util-linux) runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conns: Vec<UnixStream> = (0..100).map(|_| raw(&setup)).collect();
    wait_until(Duration::from_secs(20), "accept to fail", || {
        daemon.log().contains("Cannot accept a connection")
    });
    // Measured over a few seconds: a retry loop would burn a whole core.
    let (ticks, started) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let used = (cpu_ticks(pid) - ticks) as f64 / 100.0 / started.elapsed().as_secs_f64();
    let warnings = daemon.log().matches("Cannot accept a connection").count();
    eprintln!(
        "out of files: {:.0} % of a core, {warnings} warnings",
        used * 100.0
    );
    assert!(
        used < 0.3,
        "the daemon used {:.0} % of a core",
        used * 100.0
    );
    assert!(warnings < 30, "{warnings} warnings");
    drop(conns);
    wait_until(
        Duration::from_secs(20),
        "the daemon to answer again",
        || edgehook::client::daemon_running(&setup.socket()),
    );
    ids.push(emit_one(&setup.socket(), "t", json!(1)));
    all_delivered(&receiver, &ids);
}
