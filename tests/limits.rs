//! The outbox's bounds: `drop-oldest` keeps the newest events, `reject-new` refuses with `full`
//! (exit 75 from `edgehook emit`).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn drop_oldest_keeps_the_newest_max_events_and_delivers_them_when_the_receiver_returns() {
    let mut receiver = Receiver::ok();
    let setup = Setup::new(&http_sink("cloud", &receiver.url(), SECRET, ""));
    let text = std::fs::read_to_string(&setup.config)
        .unwrap()
        .replace("[ingest]", "max_events = 5\n[ingest]");
    std::fs::write(&setup.config, text).unwrap();
    receiver.stop();
    let _daemon = setup.start();
    let ids: Vec<String> = (0..8)
        .map(|n| emit_one(&setup.socket(), "sensor.reading", json!({ "n": n })))
        .collect();
    let st = setup.status();
    assert_eq!(st["outbox"]["events"], 5);
    assert_eq!(st["outbox"]["dropped"], 3);
    receiver.restart();
    wait_until(Duration::from_secs(20), "the newest event", || {
        receiver.delivered_ids().contains(&ids[7])
    });
    // Events already handed to the sink's thread when they were dropped may still arrive; every
    // kept event arrives, in order.
    let got = receiver.delivered_ids();
    let kept: Vec<&String> = got.iter().filter(|id| ids[3..].contains(id)).collect();
    assert_eq!(kept, ids[3..].iter().collect::<Vec<_>>());
    assert!(got.iter().all(|id| ids.contains(id)), "{got:?}");
}

#[test]
fn reject_new_refuses_with_full_and_emit_exits_75() {
    let mut receiver = Receiver::ok();
    let setup = Setup::new(&http_sink("cloud", &receiver.url(), SECRET, ""));
    let text = std::fs::read_to_string(&setup.config).unwrap().replace(
        "[ingest]",
        "max_events = 3\nwhen_full = \"reject-new\"\n[ingest]",
    );
    std::fs::write(&setup.config, text).unwrap();
    receiver.stop();
    let _daemon = setup.start();
    for n in 0..3 {
        let out = run(
            &setup.config,
            &["emit", "sensor.reading", &json!({ "n": n }).to_string()],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            uuid::Uuid::parse_str(id.trim()).unwrap().get_version_num(),
            4
        );
    }
    let out = run(&setup.config, &["emit", "sensor.reading", "{\"n\":3}"]);
    assert_eq!(out.status.code(), Some(75));
    assert!(String::from_utf8_lossy(&out.stderr).contains("full"));
    let mut c = setup.client();
    let reply = c
        .call(&json!({"type": "sensor.reading", "data": 4}))
        .unwrap();
    assert!(
        matches!(reply, edgehook::client::Reply::Err { ref code, .. } if code == "full"),
        "{reply:?}"
    );
    assert_eq!(setup.status()["outbox"]["events"], 3);
    receiver.restart();
    wait_until(Duration::from_secs(20), "the three kept events", || {
        receiver.delivered_count() == 3
    });
    wait_until(Duration::from_secs(5), "room again", || {
        setup.status()["outbox"]["events"] == 0
    });
    let out = run(&setup.config, &["emit", "sensor.reading", "{\"n\":5}"]);
    assert!(out.status.success());
}

#[test]
fn emit_exits_69_when_the_daemon_is_not_running() {
    let setup = Setup::new("");
    let out = run(&setup.config, &["emit", "sensor.reading", "{}"]);
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
}

#[test]
fn emit_refuses_invalid_data_and_types_with_exit_65() {
    let setup = Setup::new("");
    let out = run(&setup.config, &["emit", "sensor.reading", "{not json"]);
    assert_eq!(out.status.code(), Some(65));
    let out = run(&setup.config, &["emit", "Bad Type", "{}"]);
    assert_eq!(out.status.code(), Some(65));
    let out = run(&setup.config, &["emit", "device-provisioned", "{}"]);
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reserved"));
}

/// The daemon's WARN lines about losses for `reason`: those naming an event, and the count
/// the summary lines give for the rest.
fn losses(log: &str, reason: &str) -> (Vec<String>, u64) {
    let field = format!(" reason={reason}");
    let lines = log.lines().filter(|l| {
        l.contains(" WARN ") && (l.ends_with(&field) || l.contains(&format!("{field} ")))
    });
    let (mut named, mut more) = (Vec::new(), 0);
    for line in lines {
        match line.split(" count=").nth(1) {
            Some(n) => more += n.split(' ').next().unwrap().parse::<u64>().unwrap(),
            None => named.push(line.to_string()),
        }
    }
    (named, more)
}

/// A sink that cannot deliver (its receiver is down), with `storage` keys and `events`.
fn undeliverable(storage: &str, events: &str) -> (Receiver, Setup) {
    let mut receiver = Receiver::ok();
    let setup = Setup::new("");
    let sink = http_sink(
        "cloud",
        &receiver.url(),
        SECRET,
        &format!("events = {events}"),
    );
    setup.write_config_with(storage, &sink);
    receiver.stop();
    (receiver, setup)
}

#[test]
fn events_expired_by_max_age_are_each_logged_with_id_and_type_and_counted() {
    let (_receiver, setup) = undeliverable("max_age = \"1s\"\n", "[\"*\", \"!device*\"]");
    let daemon = setup.start();
    let t0 = std::time::Instant::now();
    let ids: Vec<String> = (0..3)
        .map(|n| emit_one(&setup.socket(), "sensor.reading", json!({ "n": n })))
        .collect();
    // The line comes once the transaction that counted the loss has committed.
    wait_until(Duration::from_secs(30), "three expired events", || {
        losses(&daemon.log(), "expired").0.len() == 3
    });
    assert_eq!(setup.status()["outbox"]["expired"], 3);
    eprintln!("expired at {:?}", t0.elapsed());
    let log = daemon.log();
    let (named, more) = losses(&log, "expired");
    assert_eq!((named.len(), more), (3, 0), "{log}");
    for id in &ids {
        let line = named
            .iter()
            .find(|l| l.contains(&format!("event_id={id} ")))
            .unwrap_or_else(|| panic!("no WARN line for {id} in: {log}"));
        assert!(line.contains("event_type=sensor.reading"), "{line}");
        assert!(line.contains("sink=cloud"), "{line}");
    }
    // A dead letter older than `max_age` goes too, as loudly.
    wait_until(
        Duration::from_secs(30),
        "three trimmed dead letters",
        || losses(&daemon.log(), "dead-letter-expired").0.len() == 3,
    );
    assert_eq!(setup.status()["outbox"]["dead_letters_trimmed"], 3);
    eprintln!("trimmed at {:?}", t0.elapsed());
    let (named, more) = losses(&daemon.log(), "dead-letter-expired");
    assert_eq!((named.len(), more), (3, 0), "{}", daemon.log());
}

/// A thousand events expire within a second or two of each other, some in the outbox's sweep,
/// some one by one as the sink finds those it had read ahead: the daemon names at most 100
/// in 10 s and sums up the rest when the 10 s are over, so the lines stay bounded while every
/// loss is accounted for. The count is not scaled under an emulator, where the emission takes
/// a few seconds: the bound is the point.
#[test]
fn a_mass_expiry_logs_a_bounded_number_of_lines_and_accounts_for_every_event() {
    const N: u64 = 1000;
    let (_receiver, setup) = undeliverable("max_age = \"1s\"\n", "[\"*\", \"!device*\"]");
    let daemon = setup.start();
    let began = std::time::Instant::now();
    emit_pipelined(&setup.socket(), 0, N as usize, "sensor.reading", 64);
    wait_until_or(
        Duration::from_secs(60),
        || {
            let (named, more) = losses(&daemon.log(), "expired");
            named.len() as u64 + more == N
        },
        || format!("not every expiry was logged: {}", daemon.log()),
    );
    assert_eq!(setup.status()["outbox"]["expired"], N);
    let windows = began.elapsed().as_secs() / 10 + 1;
    let (named, more) = losses(&daemon.log(), "expired");
    eprintln!(
        "{} lines named an expired event, {more} summed up",
        named.len()
    );
    assert!(
        named.len() as u64 <= 100 * windows && more > 0,
        "{} lines named an expired event in {windows} windows of 10 s",
        named.len()
    );
}

#[test]
fn drop_oldest_keeps_the_devices_own_events_and_logs_each_local_event_it_drops() {
    let (_receiver, setup) = undeliverable("max_events = 3\n", "[\"*\"]");
    let daemon = setup.start();
    let stored_types = || -> Vec<String> {
        let conn = rusqlite::Connection::open_with_flags(
            setup.db(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let mut stmt = conn
            .prepare("SELECT type FROM events ORDER BY seq")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    wait_until(Duration::from_secs(20), "device-provisioned stored", || {
        stored_types().contains(&"device-provisioned".to_string())
    });
    let own = stored_types().len();
    assert!(own < 3, "{:?}", stored_types());
    let ids: Vec<String> = (0..6)
        .map(|n| emit_one(&setup.socket(), "sensor.reading", json!({ "n": n })))
        .collect();
    let kept = 3 - own;
    let types = stored_types();
    assert_eq!(types.len(), 3, "{types:?}");
    assert_eq!(types[0], "device-provisioned", "{types:?}");
    assert!(
        types[own..].iter().all(|t| t == "sensor.reading"),
        "{types:?}"
    );
    let dropped = &ids[..6 - kept];
    eprintln!("kept {types:?}; dropped {} local events", dropped.len());
    assert_eq!(setup.status()["outbox"]["dropped"], dropped.len());
    wait_until(
        Duration::from_secs(10),
        "a WARN line per dropped event",
        || losses(&daemon.log(), "outbox-full").0.len() == dropped.len(),
    );
    let (named, _) = losses(&daemon.log(), "outbox-full");
    for id in dropped {
        assert!(
            named.iter().any(|l| l.contains(&format!("event_id={id} "))
                && l.contains("event_type=sensor.reading")),
            "no WARN line for {id}: {named:?}"
        );
    }
}
