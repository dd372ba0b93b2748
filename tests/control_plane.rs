//! The control plane under load: a flood of `reload` requests, from several connections at once,
//! neither wedges the daemon nor multiplies its reloads, and no reload, asked by the socket or
//! by SIGHUP, holds up the daemon's signals and timers.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::raw_server::{self, RawServer};
use common::*;
use serde_json::{Value, json};

/// Connections of a flood, and the `reload` lines each sends without reading an answer.
const FLOOD_CONNECTIONS: usize = 4;
const FLOOD_RELOADS: usize = 256;

/// Resumes asked while a reload runs: twice as many as the supervisor queues.
const RESUMES: usize = 128;

/// `daemon.shutdown_timeout` as `Setup` writes it.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// How much longer than natively a step may take under an emulator.
fn leeway() -> u32 {
    if emulated() { 10 } else { 1 }
}

/// A connection whose reads give up at `deadline` instead of hanging the test.
struct Connection {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Connection {
    fn open(socket: &Path) -> Connection {
        let writer = UnixStream::connect(socket).expect("connect");
        Connection {
            reader: BufReader::new(writer.try_clone().expect("clone")),
            writer,
        }
    }

    fn send(&mut self, lines: &[u8]) {
        self.writer.write_all(lines).expect("send");
    }

    /// The next answer, or `None` when none came before `deadline`.
    fn answer_by(&mut self, deadline: Instant) -> Option<Value> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.reader
            .get_ref()
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(n) if n > 0 => Some(serde_json::from_str(&line).expect("a JSON answer")),
            _ => None,
        }
    }
}

/// Opens the flood's connections and sends every connection's reloads, reading nothing.
fn flood(socket: &Path) -> Vec<Connection> {
    let lines = "{\"op\":\"reload\"}\n".repeat(FLOOD_RELOADS);
    (0..FLOOD_CONNECTIONS)
        .map(|_| {
            let mut c = Connection::open(socket);
            c.send(lines.as_bytes());
            c
        })
        .collect()
}

#[test]
fn a_flood_of_reloads_leaves_ping_delivery_resume_and_sigterm_working() {
    let receiver = Receiver::ok();
    let setup = Setup::new(&http_sink("main", &receiver.url(), SECRET, ""));
    let mut daemon = setup.start();
    let socket = setup.socket();
    let mut flooded = flood(&socket);

    let started = Instant::now();
    let mut ping = Connection::open(&socket);
    ping.send(b"{\"op\":\"ping\"}\n");
    let answer = ping.answer_by(started + Duration::from_secs(30));
    let took = started.elapsed();
    eprintln!("ping answered in {took:?} during the flood");
    assert_eq!(answer, Some(json!({"ok": true})), "ping during the flood");
    assert!(
        took < Duration::from_secs(1) * leeway(),
        "ping answered after {took:?} during the flood"
    );

    let id = emit_one(&socket, "sensor.reading", json!({"during": "flood"}));
    wait_until(
        Duration::from_secs(10) * leeway(),
        "the event's delivery during the flood",
        || receiver.delivered_ids().contains(&id),
    );

    let mut resume = Connection::open(&socket);
    resume.send(b"{\"op\":\"resume\",\"sink\":\"main\"}\n");
    let answer = resume.answer_by(Instant::now() + Duration::from_secs(10) * leeway());
    assert_eq!(
        answer,
        Some(json!({"ok": true, "changed": false})),
        "resume during the flood"
    );

    // Every reload asked is answered, by one of far fewer reloads.
    let deadline = Instant::now() + Duration::from_secs(30) * leeway();
    for c in &mut flooded {
        for n in 0..FLOOD_RELOADS {
            let answer = c.answer_by(deadline);
            assert_eq!(
                answer,
                Some(json!({"ok": true, "sinks": 1})),
                "answer {n} to a flooded reload"
            );
        }
    }
    let asked = FLOOD_CONNECTIONS * FLOOD_RELOADS;
    let reloads = daemon.log().matches("Reloaded ").count();
    eprintln!("{asked} reloads asked, {reloads} run");
    assert!(
        (1..=asked / 8).contains(&reloads),
        "{reloads} reloads run for {asked} asked"
    );

    // SIGTERM in the middle of another flood.
    let _flooded_again = flood(&socket);
    let asked_to_stop = Instant::now();
    let pid = daemon.pid();
    let exited = std::thread::spawn(move || daemon.terminate());
    let limit = SHUTDOWN_TIMEOUT + Duration::from_secs(5) * leeway();
    wait_until_or(
        limit,
        || exited.is_finished(),
        || {
            // Dropping the handle would leave the daemon running: end it here.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            format!("the daemon still ran {limit:?} after SIGTERM")
        },
    );
    assert_eq!(exited.join().expect("terminate"), Some(0));
    eprintln!("exited {:?} after SIGTERM", asked_to_stop.elapsed());
}

/// Every `WATCHDOG=1` on `socket` until `done` holds, with when it came.
fn watchdog_pings_until(
    socket: &UnixDatagram,
    limit: Duration,
    done: impl Fn() -> bool,
) -> Vec<Instant> {
    let deadline = Instant::now() + limit;
    let mut pings = Vec::new();
    let mut buf = [0u8; 4096];
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    while !done() {
        assert!(Instant::now() < deadline, "not done within {limit:?}");
        if let Ok(n) = socket.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
                pings.push(Instant::now());
            }
        }
    }
    pings
}

#[test]
fn a_slow_reload_stalls_neither_watchdog_nor_sigterm_and_a_full_queue_answers_busy() {
    // The receiver holds every request: the sink's attempt is still in flight when the reload
    // stops the sink, which waits for it until the shutdown timeout.
    let silent = RawServer::start(Arc::new(|s: &mut dyn raw_server::Stream, _| {
        let mut buf = [0u8; 4096];
        while s.read(&mut buf).is_ok_and(|n| n > 0) {}
    }));
    let setup = Setup::new(&http_sink(
        "slow",
        &silent.url(),
        SECRET,
        "timeout = \"60s\"",
    ));
    let config = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(
        &setup.config,
        config.replace("shutdown_timeout = \"2s\"", "shutdown_timeout = \"4s\""),
    )
    .unwrap();
    let notify = setup.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify).unwrap();
    // A ping every 250 ms. systemd names the pid the watchdog is for: the shell's, which
    // becomes the daemon's with `exec`. Signals go to that pid (the `Daemon`'s own way, to a
    // wrapper's children, finds none).
    let script = format!(
        "NOTIFY_SOCKET={} WATCHDOG_USEC=500000 WATCHDOG_PID=$$ exec \"$@\"",
        notify.display()
    );
    let mut daemon = setup.start_under(&["sh", "-c", &script, "sh"]);
    let signal = |name: &str| {
        let sent = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(daemon.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{name}");
    };
    emit_one(&setup.socket(), "sensor.reading", json!({"slow": true}));
    wait_until(Duration::from_secs(10) * leeway(), "the attempt", || {
        silent.accepted() > 0
    });

    signal("HUP");
    let hup = Instant::now();
    wait_until(
        Duration::from_secs(10) * leeway(),
        "the reload to begin",
        || daemon.log().contains("SIGHUP: reloading"),
    );
    // More resumes than the supervisor queues while the reload runs.
    let mut resumes = Connection::open(&setup.socket());
    resumes.send(
        "{\"op\":\"resume\",\"sink\":\"slow\"}\n"
            .repeat(RESUMES)
            .as_bytes(),
    );
    let pings = watchdog_pings_until(&socket, Duration::from_secs(30) * leeway(), || {
        daemon.log().contains("Reloaded ")
    });
    let reload = hup.elapsed();
    let mut gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.push(pings.first().map_or(reload, |p| *p - hup));
    let longest = gaps.iter().max().copied().unwrap_or_default();
    eprintln!(
        "the reload took {reload:?}; {} watchdog pings meanwhile, at most {longest:?} apart",
        pings.len()
    );
    assert!(
        reload >= Duration::from_secs(3),
        "the reload did not wait for the attempt ({reload:?})"
    );
    assert!(
        longest < Duration::from_secs(2),
        "the watchdog stalled for {longest:?} during a reload of {reload:?}"
    );

    let deadline = Instant::now() + Duration::from_secs(10) * leeway();
    let (mut done, mut busy) = (0, 0);
    for n in 0..RESUMES {
        match resumes.answer_by(deadline) {
            Some(a) if a == json!({"ok": true, "changed": false}) => done += 1,
            Some(a) if a["code"] == "busy" => busy += 1,
            other => panic!("answer {n} to a resume: {other:?}"),
        }
    }
    eprintln!("{RESUMES} resumes asked during the reload: {done} done, {busy} answered busy");
    assert!(done > 0 && busy > 0, "{done} done, {busy} busy");

    // The reload's new sink is again held by the receiver; SIGTERM still ends the daemon in time.
    emit_one(&setup.socket(), "sensor.reading", json!({"slow": "again"}));
    signal("HUP");
    let asked_to_stop = Instant::now();
    signal("TERM");
    assert_eq!(daemon.terminate(), Some(0));
    let took = asked_to_stop.elapsed();
    eprintln!("exited {took:?} after SIGTERM during a reload");
    assert!(
        took < Duration::from_secs(4) + Duration::from_secs(5) * leeway(),
        "exited {took:?} after SIGTERM"
    );
}
