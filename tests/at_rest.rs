//! A daemon at rest: once it has given the memory of its last busy spell back, its timers stop
//! asking the outbox thread for totals they already have, and what changes afterwards still
//! reaches systemd's `STATUS=` line.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Every datagram on `socket` until `limit` passes or one holds `want`; panics with what came
/// when none does.
fn notifications_until(socket: &UnixDatagram, want: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no notification with {want:?} within {limit:?}; got {seen:?}"
        );
        socket.set_read_timeout(Some(left)).unwrap();
        if let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = text.contains(want);
            seen.push(text);
            if done {
                return seen;
            }
        }
    }
}

#[test]
fn a_daemon_at_rest_still_reports_new_totals_to_systemd() {
    let setup = Setup::new(
        "[log]\nlevel = \"debug\"\n[[sink]]\nname = \"down\"\nurl = \"http://127.0.0.1:9/\"\n[sink.signing]\nscheme = \"none\"\n[sink.retry]\ninitial = \"1h\"\nmax = \"1h\"\n",
    );
    let notify = setup.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify).unwrap();
    let daemon = setup.start_with_env(&[("NOTIFY_SOCKET", notify.as_os_str())]);
    notifications_until(
        &socket,
        "STATUS=0 pending, 0 dead letters, 0 dropped",
        COMMAND_LIMIT,
    );
    // At rest: the memory of start-up given back (after 5 s quiet, at a 10 s status tick),
    // and at the tick after, the status timer stopped.
    wait_until_or(
        Duration::from_secs(60),
        || {
            let log = daemon.log();
            log.contains("At rest: gave back") && log.contains("At rest: the status timer waits")
        },
        || format!("the daemon never came to rest; its log:\n{}", daemon.log()),
    );
    // An event for a sink that cannot deliver it: the outbox, busy again, restarts the status
    // timer, whose next tick finds the commit and reports it.
    emit_one(&setup.socket(), "sensor.reading", json!({ "t": 21.5 }));
    notifications_until(
        &socket,
        "STATUS=1 pending, 0 dead letters, 0 dropped",
        Duration::from_secs(30),
    );
    drop(daemon);
}
