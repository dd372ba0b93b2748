use std::path::Path;
use std::time::{Duration, SystemTime};

use super::*;
use crate::config::{Config, WhenFull};

fn config(dir: &Path, extra_storage: &str, sinks: &[(&str, &str)]) -> Config {
    let mut text = format!(
        "[storage]\npath = \"{}/outbox.db\"\n{extra_storage}\n",
        dir.display()
    );
    for (name, events) in sinks {
        text.push_str(&format!(
            "[[sink]]\nname = \"{name}\"\nurl = \"http://127.0.0.1:9/\"\nevents = [{events}]\n[sink.signing]\nscheme = \"none\"\n"
        ));
    }
    Config::parse(&dir.join("edgehook.toml"), &text).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn open(cfg: &Config) -> (Outbox, Vec<SinkId>, std::thread::JoinHandle<()>) {
    let (outbox, _, thread) = Outbox::open(&cfg.storage, None).unwrap();
    let routes = cfg
        .sinks
        .iter()
        .map(|s| Route {
            spec: Arc::new(s.clone()),
            wake: Arc::new(Wake::new()),
        })
        .collect();
    let ids = outbox.set_routes_blocking(routes).unwrap();
    (outbox, ids, thread)
}

fn event(n: usize, t: &str) -> NewEvent {
    let data = serde_json::json!({ "n": n });
    crate::event::build_value(None, t, &data, SystemTime::now())
}

/// An event of type `x` stored two hours ago (older than a `max_age` of 1h).
fn stale_event(n: usize) -> NewEvent {
    let mut e = event(n, "x");
    e.created_ms = now_ms() - 2 * 3600 * 1000;
    e
}

fn close(outbox: Outbox, thread: std::thread::JoinHandle<()>) {
    drop(outbox);
    thread.join().unwrap();
}

fn report(dir: &Path) -> OutboxReport {
    let conn = open_ro(&dir.join("outbox.db")).unwrap().unwrap();
    read_report(&conn).unwrap()
}

#[test]
fn deliveries_come_back_in_outbox_order_and_vanish_once_every_sink_has_them() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", &[("a", "\"*\""), ("b", "\"sensor.*\"")]);
    let (outbox, ids, thread) = open(&cfg);
    for n in 0..10 {
        outbox
            .append_blocking(event(n, if n % 2 == 0 { "sensor.t" } else { "other" }))
            .unwrap();
    }
    let a = outbox.fetch_blocking(ids[0], 0, 100).unwrap();
    let b = outbox.fetch_blocking(ids[1], 0, 100).unwrap();
    assert_eq!(a.len(), 10);
    assert_eq!(b.len(), 5);
    assert!(a.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(b.iter().all(|d| d.event_type() == "sensor.t"));
    let later = outbox.fetch_blocking(ids[0], a[4].seq, 100).unwrap();
    assert_eq!(later.len(), 5);
    for d in a.iter().chain(b.iter()) {
        let sink = if b.iter().any(|x| std::ptr::eq(x, d)) {
            ids[1]
        } else {
            ids[0]
        };
        outbox.report_blocking(Report::Delivered {
            sink,
            seq: d.seq,
            at_ms: 1,
            measured: Measured::default(),
        });
    }
    close(outbox, thread);
    let r = report(dir.path());
    assert_eq!((r.events, r.event_bytes), (0, 0));
    assert!(r.sinks.iter().all(|s| s.pending == 0));
    assert_eq!(r.sinks.iter().map(|s| s.delivered).sum::<i64>(), 15);
}

#[test]
fn fetching_deliveries_does_not_plan_the_statement_again_each_time() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", &[("a", "\"*\"")]);
    let (outbox, ids, thread) = open(&cfg);
    for n in 0..5 {
        outbox.append_blocking(event(n, "t")).unwrap();
    }
    close(outbox, thread);
    let conn = rusqlite::Connection::open(dir.path().join("outbox.db")).unwrap();
    // How often SQLite prepared `sql` again over two fetches from different places.
    let reprepared = |sql: &str, limit: Option<i64>| {
        let mut stmt = conn.prepare(sql).unwrap();
        for after in [0, 2] {
            let n = match limit {
                Some(l) => stmt.query(rusqlite::params![ids[0], after, l]),
                None => stmt.query(rusqlite::params![ids[0], after]),
            }
            .unwrap()
            .mapped(|r| r.get::<_, i64>(0))
            .count();
            assert!(n > 0);
        }
        stmt.get_status(rusqlite::StatementStatus::RePrepare)
    };
    assert_eq!(reprepared(store::FETCH_DELIVERIES, None), 0);
    // What it avoids: with the limit bound, every fetch is planned again.
    let limited = format!("{} LIMIT ?3", store::FETCH_DELIVERIES);
    assert_eq!(reprepared(&limited, Some(256)), 2);
}

#[test]
fn an_event_no_sink_wants_is_acknowledged_and_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", &[("a", "\"sensor.*\"")]);
    let (outbox, _, thread) = open(&cfg);
    outbox.append_blocking(event(1, "other")).unwrap();
    close(outbox, thread);
    assert_eq!(report(dir.path()).events, 0);
}

#[test]
fn a_duplicate_id_is_acknowledged_and_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", &[("a", "\"*\"")]);
    let (outbox, ids, thread) = open(&cfg);
    let mut e = event(1, "x");
    e.id = "fixed".into();
    e.supplied = true;
    assert!(!outbox.append_blocking(e.clone()).unwrap().duplicate);
    assert!(outbox.append_blocking(e).unwrap().duplicate);
    let queue = outbox.fetch_blocking(ids[0], 0, 10).unwrap();
    assert_eq!(queue.len(), 1);
    // Delivered and deleted, the id is forgotten with its event.
    outbox.report_blocking(Report::Delivered {
        sink: ids[0],
        seq: queue[0].seq,
        at_ms: 1,
        measured: Measured::default(),
    });
    close(outbox, thread);
    let conn = rusqlite::Connection::open(&cfg.storage.path).unwrap();
    let kept: i64 = conn
        .query_row("SELECT count(*) FROM supplied_ids", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, 0);
}

/// An event with the producer-given id `id`, of type `t`, with `data` (JSON text), built at
/// `secs` past the epoch.
fn given(id: &str, t: &str, data: &str, secs: u64) -> NewEvent {
    let data: Box<serde_json::value::RawValue> = serde_json::from_str(data).unwrap();
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    crate::event::build(Some(id.into()), t, &data, at)
}

#[test]
fn an_id_sent_again_with_the_same_type_and_data_is_a_duplicate_and_with_others_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "max_events = 1", &[("a", "\"*\"")]);
    let (outbox, ids, thread) = open(&cfg);
    let first = given("42", "app-a.reading", r#"{"v":1,"u":"C"}"#, 1_700_000_000);
    assert!(!outbox.append_blocking(first).unwrap().duplicate);
    // Sent again later, with other white space: the same event. The outbox is at its bound,
    // and a duplicate drops nothing to make room.
    let again = given(
        "42",
        "app-a.reading",
        "{ \"v\": 1, \"u\": \"C\" }",
        1_700_000_100,
    );
    let a = outbox.append_blocking(again).unwrap();
    assert!(a.duplicate && a.stored);
    for other in [
        given("42", "app-b.alarm", r#"{"v":1,"u":"C"}"#, 1_700_000_000),
        given("42", "app-a.reading", r#"{"v":2,"u":"C"}"#, 1_700_000_000),
        // JSON-equal, but not the bytes stored: keys in another order, a number written
        // otherwise.
        given("42", "app-a.reading", r#"{"u":"C","v":1}"#, 1_700_000_000),
        given("42", "app-a.reading", r#"{"v":1.0,"u":"C"}"#, 1_700_000_000),
    ] {
        assert_eq!(outbox.append_blocking(other), Err(AppendError::Conflict));
    }
    let queue = outbox.fetch_blocking(ids[0], 0, 10).unwrap();
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0].event_type(), "app-a.reading");
    assert!(queue[0].body().starts_with(
        br#"{"id":"42","type":"app-a.reading","data":{"v":1,"u":"C"},"time":"2023-11-14T22:13:20"#
    ));
    close(outbox, thread);
    assert_eq!(report(dir.path()).dropped, 0);
}

#[test]
fn an_outbox_has_one_writer_at_a_time_and_the_refusal_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", &[("a", "\"*\"")]);
    let (outbox, _, thread) = open(&cfg);
    let lock = lock_path(&cfg.storage.path);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&lock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    match Outbox::open(&cfg.storage, None) {
        Err(StoreError::Held { path, pid }) => {
            assert_eq!(path, cfg.storage.path);
            assert_eq!(pid, Some(std::process::id()));
        }
        other => panic!(
            "a second writer must be refused, got {:?}",
            other.map(|o| o.1)
        ),
    }
    // Read-only openers do not take the lock.
    assert!(open_ro(&cfg.storage.path).unwrap().is_some());
    close(outbox, thread);
    let (outbox, _, thread) = open(&cfg);
    close(outbox, thread);
}

#[test]
fn a_lock_file_made_by_root_belongs_to_the_owner_of_the_outbox() {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", &[("a", "\"*\"")]);
    // An outbox of the daemon's user (any uid will do), opened by root while the daemon is
    // down, as `edgehook redeliver` run with sudo does.
    std::os::unix::fs::chown(dir.path(), Some(4242), Some(4243)).unwrap();
    let (outbox, _, thread) = open(&cfg);
    close(outbox, thread);
    let lock = std::fs::metadata(lock_path(&cfg.storage.path)).unwrap();
    assert_eq!((lock.uid(), lock.gid()), (4242, 4243));
}

#[test]
fn drop_oldest_keeps_the_newest_max_events_and_counts_the_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "max_events = 5", &[("a", "\"*\"")]);
    assert_eq!(cfg.storage.when_full, WhenFull::DropOldest);
    let (outbox, ids, thread) = open(&cfg);
    for n in 0..8 {
        outbox.append_blocking(event(n, "x")).unwrap();
    }
    let left = outbox.fetch_blocking(ids[0], 0, 100).unwrap();
    let ns: Vec<u64> = left
        .iter()
        .map(|d| {
            serde_json::from_slice::<serde_json::Value>(d.body()).unwrap()["data"]["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(ns, vec![3, 4, 5, 6, 7]);
    close(outbox, thread);
    let r = report(dir.path());
    assert_eq!((r.events, r.dropped, r.sinks[0].pending), (5, 3, 5));
}

#[test]
fn reject_new_refuses_with_full_and_keeps_what_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "max_events = 3\nwhen_full = \"reject-new\"",
        &[("a", "\"*\"")],
    );
    let (outbox, ids, thread) = open(&cfg);
    for n in 0..3 {
        outbox.append_blocking(event(n, "x")).unwrap();
    }
    assert_eq!(
        outbox.append_blocking(event(3, "x")),
        Err(AppendError::Full)
    );
    let first = outbox.fetch_blocking(ids[0], 0, 1).unwrap();
    outbox.report_blocking(Report::Delivered {
        sink: ids[0],
        seq: first[0].seq,
        at_ms: 1,
        measured: Measured::default(),
    });
    outbox.append_blocking(event(4, "x")).unwrap();
    close(outbox, thread);
    assert_eq!(report(dir.path()).events, 3);
}

#[test]
fn expiry_turns_old_deliveries_into_dead_letters_and_later_ages_them_out() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "max_age = \"1h\"", &[("a", "\"*\"")]);
    let (outbox, ids, thread) = open(&cfg);
    outbox.append_blocking(stale_event(1)).unwrap();
    outbox.append_blocking(event(2, "x")).unwrap();
    let rt = rt();
    rt.block_on(outbox.expire(now_ms()));
    assert_eq!(outbox.fetch_blocking(ids[0], 0, 10).unwrap().len(), 1);
    let conn = open_ro(&dir.path().join("outbox.db")).unwrap().unwrap();
    let reason: String = conn
        .query_row("SELECT reason FROM dead_letters", [], |r| r.get(0))
        .unwrap();
    assert_eq!(reason, "expired");
    let r = read_report(&conn).unwrap();
    assert_eq!(
        (r.sinks[0].pending, r.sinks[0].dead_letters, r.events),
        (1, 1, 2)
    );
    // Two hours on: the first dead letter ages out with its event, the newer event expires.
    rt.block_on(outbox.expire(now_ms() + 2 * 3600 * 1000));
    close(outbox, thread);
    let r = report(dir.path());
    assert_eq!(
        (r.sinks[0].pending, r.sinks[0].dead_letters, r.events),
        (0, 1, 1)
    );
    assert_eq!((r.expired, r.dead_letters_trimmed), (2, 1));
}

#[test]
fn the_idle_timers_of_an_empty_outbox_are_answered_without_a_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "max_age = \"1h\"", &[("a", "\"*\"")]);
    let (outbox, _, thread) = open(&cfg);
    let rt = rt();
    // Another connection holds the write lock: a transaction would wait the outbox's busy
    // timeout (5 s) for it and then fail, so an answer sooner came without one.
    let lock = rusqlite::Connection::open(dir.path().join("outbox.db")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let asked = std::time::Instant::now();
    let totals = rt.block_on(outbox.totals()).unwrap();
    rt.block_on(outbox.expire(now_ms()));
    let took = asked.elapsed();
    lock.execute_batch("ROLLBACK").unwrap();
    assert_eq!((totals.events, totals.pending), (0, 0));
    assert!(
        took < Duration::from_secs(5),
        "a status tick and an expiry of an empty outbox took {took:?}: they waited for the write lock"
    );
    // With an event stored, the expiry runs its query, in a transaction, and finds it.
    outbox.append_blocking(stale_event(1)).unwrap();
    rt.block_on(outbox.expire(now_ms()));
    let totals = rt.block_on(outbox.totals()).unwrap();
    assert_eq!((totals.events, totals.pending, totals.dead), (1, 0, 1));
    close(outbox, thread);
}

#[test]
fn dead_letters_are_bounded_per_sink() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "max_dead_letters = 2", &[("a", "\"*\"")]);
    let (outbox, ids, thread) = open(&cfg);
    for n in 0..4 {
        outbox.append_blocking(event(n, "x")).unwrap();
    }
    for d in outbox.fetch_blocking(ids[0], 0, 10).unwrap() {
        outbox.report_blocking(Report::Dead {
            sink: ids[0],
            seq: d.seq,
            at_ms: now_ms(),
            reason: "rejected: 400".into(),
            attempts: 8,
            measured: None,
        });
    }
    close(outbox, thread);
    let r = report(dir.path());
    assert_eq!((r.sinks[0].dead_letters, r.events), (2, 2));
    assert_eq!(r.dead_letters_trimmed, 2);
}

#[test]
fn drop_oldest_drops_local_events_before_the_devices_own_and_those_only_last() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "max_events = 3", &[("a", "\"*\"")]);
    let (outbox, ids, thread) = open(&cfg);
    let types = |outbox: &Outbox| -> Vec<String> {
        let left = outbox.fetch_blocking(ids[0], 0, 100).unwrap();
        left.iter().map(|d| d.event_type().to_string()).collect()
    };
    outbox
        .append_blocking(event(0, "device-provisioned"))
        .unwrap();
    outbox
        .append_blocking(event(1, "device-status-changed"))
        .unwrap();
    for n in 2..6 {
        outbox.append_blocking(event(n, "app.reading")).unwrap();
    }
    assert_eq!(
        types(&outbox),
        ["device-provisioned", "device-status-changed", "app.reading"]
    );
    // No local event left to drop: the oldest of the device's own goes.
    outbox
        .append_blocking(event(6, "devices-inventory-changed"))
        .unwrap();
    outbox
        .append_blocking(event(7, "devices-inventory-changed"))
        .unwrap();
    assert_eq!(
        types(&outbox),
        [
            "device-status-changed",
            "devices-inventory-changed",
            "devices-inventory-changed"
        ]
    );
    close(outbox, thread);
    assert_eq!(report(dir.path()).dropped, 5);
}

#[test]
fn the_device_id_and_counters_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", &[("a", "\"*\"")]);
    let (outbox, opened, thread) = Outbox::open(&cfg.storage, None).unwrap();
    assert!(opened.created);
    close(outbox, thread);
    let (outbox, again, thread) = Outbox::open(&cfg.storage, None).unwrap();
    assert!(!again.created);
    assert_eq!(opened.device_id, again.device_id);
    close(outbox, thread);
}

#[test]
fn a_file_that_is_not_a_database_is_moved_aside_and_a_fresh_outbox_starts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", &[]);
    std::fs::write(&cfg.storage.path, vec![0xA5u8; 8192]).unwrap();
    let (outbox, opened, thread) = Outbox::open(&cfg.storage, None).unwrap();
    let aside = opened.moved_aside.expect("moved aside");
    assert_eq!(std::fs::read(aside.to).unwrap(), vec![0xA5u8; 8192]);
    close(outbox, thread);
}

#[test]
fn a_database_from_a_newer_edgehook_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", &[]);
    let conn = rusqlite::Connection::open(&cfg.storage.path).unwrap();
    conn.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(conn);
    match Outbox::open(&cfg.storage, None) {
        Err(StoreError::TooNew { found: 99, .. }) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a newer schema was accepted"),
    }
    let _ = Duration::ZERO;
}

#[test]
fn a_version_2_outbox_is_migrated_keeping_its_events_their_order_and_their_ids() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", &[("a", "\"*\"")]);
    let (outbox, ids, thread) = open(&cfg);
    let mut given = event(1, "x");
    given.id = "given".into();
    given.supplied = true;
    outbox.append_blocking(given.clone()).unwrap();
    let generated = event(2, "x");
    outbox.append_blocking(generated.clone()).unwrap();
    close(outbox, thread);
    // Back to version 2's shape: a unique index over every id and no `supplied_ids`, with the
    // sequence further on than the events (later ones were delivered and deleted).
    let conn = rusqlite::Connection::open(&cfg.storage.path).unwrap();
    conn.execute_batch(
        "BEGIN;
         CREATE TABLE e2 (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
           type TEXT NOT NULL, body BLOB NOT NULL, created_ms INTEGER NOT NULL,
           refs INTEGER NOT NULL);
         INSERT INTO e2 SELECT * FROM events;
         DROP TABLE events;
         ALTER TABLE e2 RENAME TO events;
         CREATE INDEX events_by_age ON events (created_ms);
         DROP TABLE supplied_ids;
         UPDATE sqlite_sequence SET seq = 1000 WHERE name = 'events';
         PRAGMA user_version = 2;
         COMMIT;",
    )
    .unwrap();
    drop(conn);

    let (outbox, ids2, thread) = open(&cfg);
    assert_eq!(ids2, ids);
    // Any id stored before the migration is still a duplicate when given again.
    let mut again = generated.clone();
    again.supplied = true;
    assert!(outbox.append_blocking(given).unwrap().duplicate);
    assert!(outbox.append_blocking(again).unwrap().duplicate);
    outbox.append_blocking(event(3, "x")).unwrap();
    let queue = outbox.fetch_blocking(ids[0], 0, 10).unwrap();
    let got: Vec<(&str, i64)> = queue.iter().map(|d| (d.id(), d.seq)).collect();
    assert_eq!(got.len(), 3);
    assert_eq!(got[..2], [("given", 1), (generated.id.as_str(), 2)]);
    assert!(got[2].1 > 1000, "the sequence went back: {got:?}");
    close(outbox, thread);
    let conn = rusqlite::Connection::open(&cfg.storage.path).unwrap();
    let (version, check): (i64, String) = (
        conn.query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap(),
        conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap(),
    );
    assert_eq!((version, check.as_str()), (3, "ok"));
}

fn transition(fact: Fact, value: &str, only_if_unset: bool, t: &str) -> Transition {
    Transition {
        fact,
        value: value.into(),
        only_if_unset,
        only_if_stored: false,
        also: Vec::new(),
        event: event(0, t),
    }
}

#[test]
fn a_transition_stores_its_event_only_when_the_fact_changes_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", &[("a", "\"*\"")]);
    let (outbox, ids, thread) = open(&cfg);
    let rt = rt();
    let first = rt
        .block_on(outbox.transition(transition(
            Fact::Status,
            "pending",
            false,
            "device-status-changed",
        )))
        .unwrap();
    assert!(first.is_some());
    let same = rt
        .block_on(outbox.transition(transition(
            Fact::Status,
            "pending",
            false,
            "device-status-changed",
        )))
        .unwrap();
    assert_eq!(same, None);
    let other = rt
        .block_on(outbox.transition(transition(
            Fact::Status,
            "accepted",
            false,
            "device-status-changed",
        )))
        .unwrap();
    assert!(other.is_some());
    assert_eq!(outbox.fetch_blocking(ids[0], 0, 10).unwrap().len(), 2);
    close(outbox, thread);

    let (outbox, _, thread) = Outbox::open(&cfg.storage, None).unwrap();
    let again = rt
        .block_on(outbox.transition(transition(
            Fact::Status,
            "accepted",
            false,
            "device-status-changed",
        )))
        .unwrap();
    assert_eq!(again, None, "the last status is kept across a reopen");
    close(outbox, thread);
    assert_eq!(
        report(dir.path()).device_status.as_deref(),
        Some("accepted")
    );
}

#[test]
fn a_first_time_transition_happens_once_even_when_its_value_changes_later() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", &[("a", "\"*\"")]);
    let (outbox, _, thread) = open(&cfg);
    let rt = rt();
    let provision = |v: &str| transition(Fact::Lifecycle, v, true, "device-provisioned");
    assert!(
        rt.block_on(outbox.transition(provision("provisioned")))
            .unwrap()
            .is_some()
    );
    assert_eq!(
        rt.block_on(outbox.transition(provision("provisioned")))
            .unwrap(),
        None
    );
    assert_eq!(
        rt.block_on(outbox.transition(provision("other"))).unwrap(),
        None
    );
    close(outbox, thread);
}

#[test]
fn a_decommissioned_outbox_refuses_local_events_but_keeps_edgehooks_own() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", &[("a", "\"*\"")]);
    let (outbox, ids, thread) = open(&cfg);
    let rt = rt();
    outbox.append_blocking(event(1, "app.before")).unwrap();
    let mut t = transition(
        Fact::Lifecycle,
        DECOMMISSIONED,
        false,
        "device-decommissioned",
    );
    t.also = vec![(Fact::Status, DECOMMISSIONED.into())];
    rt.block_on(outbox.transition(t)).unwrap().unwrap();
    assert_eq!(
        outbox.append_blocking(event(2, "app.after")),
        Err(AppendError::Decommissioned)
    );
    close(outbox, thread);
    // Still refused after a restart; the backlog is still there to drain.
    let (outbox, _, thread) = Outbox::open(&cfg.storage, None).unwrap();
    assert_eq!(
        outbox.append_blocking(event(3, "app.after")),
        Err(AppendError::Decommissioned)
    );
    let types: Vec<String> = outbox
        .fetch_blocking(ids[0], 0, 10)
        .unwrap()
        .into_iter()
        .map(|d| d.event_type().to_owned())
        .collect();
    assert_eq!(types, ["app.before", "device-decommissioned"]);
    let back = transition(Fact::Lifecycle, "provisioned", false, "device-provisioned");
    rt.block_on(outbox.transition(back)).unwrap().unwrap();
    outbox.append_blocking(event(4, "app.later")).unwrap();
    close(outbox, thread);
    assert_eq!(
        report(dir.path()).device_status.as_deref(),
        Some(DECOMMISSIONED)
    );
}

#[test]
fn a_refused_transition_event_leaves_the_fact_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "max_events = 1\nwhen_full = \"reject-new\"",
        &[("a", "\"*\"")],
    );
    let (outbox, _, thread) = open(&cfg);
    let rt = rt();
    outbox.append_blocking(event(1, "app.fill")).unwrap();
    let t = transition(Fact::Status, "pending", false, "device-status-changed");
    assert_eq!(
        rt.block_on(outbox.transition(t.clone())),
        Err(AppendError::Full)
    );
    close(outbox, thread);
    assert_eq!(report(dir.path()).device_status, None);
}

#[test]
fn an_announcement_no_sink_takes_is_not_counted_as_made_when_it_must_be_stored() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", &[("a", "\"sensor.*\"")]);
    let (outbox, _, thread) = open(&cfg);
    let rt = rt();
    let mut t = transition(Fact::Inventory, "[1]", false, "devices-inventory-changed");
    t.only_if_stored = true;
    assert_eq!(rt.block_on(outbox.transition(t.clone())).unwrap(), None);
    close(outbox, thread);
    let cfg = config(dir.path(), "", &[("a", "\"*\"")]);
    let (outbox, _, thread) = open(&cfg);
    assert!(rt.block_on(outbox.transition(t)).unwrap().is_some());
    close(outbox, thread);
}

/// An event with a fixed id and time, so that two outboxes built alike hold the same bytes.
fn fixed_event(id: &str, t: &str, supplied: bool) -> NewEvent {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut e = crate::event::build_value(Some(id.into()), t, &serde_json::json!({ "id": id }), at);
    e.supplied = supplied;
    e
}

/// Every row of every table a delivery report touches, and what `status`, `activity` and
/// `dead-letters` read (without the device id, which is generated).
fn outbox_state(path: &Path) -> Vec<String> {
    let conn = open_ro(path).unwrap().unwrap();
    let mut state = Vec::new();
    for sql in [
        "SELECT * FROM deliveries ORDER BY sink, seq",
        "SELECT * FROM dead_letters ORDER BY sink, seq",
        "SELECT * FROM events ORDER BY seq",
        "SELECT * FROM supplied_ids ORDER BY id",
        "SELECT * FROM attempts ORDER BY id",
        "SELECT * FROM sinks ORDER BY id",
        "SELECT * FROM meta WHERE key IN ('event_count', 'event_bytes', 'dropped') ORDER BY key",
    ] {
        let mut stmt = conn.prepare(sql).unwrap();
        let width = stmt.column_count();
        let rows: Vec<Vec<rusqlite::types::Value>> = stmt
            .query_map([], |r| (0..width).map(|i| r.get(i)).collect())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        state.push(format!("{sql}: {rows:?}"));
    }
    let mut status = serde_json::to_value(read_report(&conn).unwrap()).unwrap();
    status["device_id"] = serde_json::Value::Null;
    state.push(format!("status: {status}"));
    let activity = serde_json::to_value(activity(&conn, None, 100).unwrap()).unwrap();
    state.push(format!("activity: {activity}"));
    let dead = serde_json::to_value(dead_letters(&conn, None).unwrap()).unwrap();
    state.push(format!("dead letters: {dead}"));
    state
}

/// Two sinks: `a` takes every event, `b` the `shared.*` ones.
fn mixed_config(dir: &Path) -> Config {
    config(dir, "", &[("a", "\"*\""), ("b", "\"shared.*\"")])
}

/// The mixed outbox: events for both sinks and for `a` alone, two with a producer's id; one
/// delivery of `a` dead-lettered while in flight, one dead letter that stays, one delivery of
/// `a` already recorded. Returns the seqs by event id.
fn build_mixed(outbox: &Outbox, ids: &[SinkId]) -> std::collections::HashMap<String, i64> {
    let events = [
        ("shared-0", "shared.x", false),
        ("shared-1", "shared.x", true),
        ("only-a-2", "only.a", false),
        ("only-a-3", "only.a", true),
        ("in-flight-dead", "only.a", false),
        ("stays-dead", "only.a", false),
        ("shared-6", "shared.x", false),
        ("done-before", "only.a", false),
        ("shared-8", "shared.x", false),
    ];
    for (id, t, supplied) in events {
        outbox
            .append_blocking(fixed_event(id, t, supplied))
            .unwrap();
    }
    let seqs: std::collections::HashMap<String, i64> = outbox
        .fetch_blocking(ids[0], 0, 100)
        .unwrap()
        .into_iter()
        .map(|d| (d.id().to_owned(), d.seq))
        .collect();
    for id in ["in-flight-dead", "stays-dead"] {
        outbox.report_blocking(Report::Dead {
            sink: ids[0],
            seq: seqs[id],
            at_ms: 1_700_000_000_500,
            reason: "expired".into(),
            attempts: 3,
            measured: None,
        });
    }
    outbox.report_blocking(Report::Delivered {
        sink: ids[0],
        seq: seqs["done-before"],
        at_ms: 1_700_000_000_600,
        measured: Measured::default(),
    });
    seqs
}

#[test]
fn delivered_many_leaves_the_same_outbox_as_one_delivered_each() {
    let (many_dir, one_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (many_cfg, one_cfg) = (mixed_config(many_dir.path()), mixed_config(one_dir.path()));
    let (many, ids, many_thread) = open(&many_cfg);
    let (one, one_ids, one_thread) = open(&one_cfg);
    assert_eq!(ids, one_ids);
    let seqs = build_mixed(&many, &ids);
    assert_eq!(build_mixed(&one, &ids), seqs);
    let (a, b) = (ids[0], ids[1]);
    let measured = |code, latency_ms| Measured { code, latency_ms };
    let steps: Vec<(SinkId, Vec<(i64, Measured)>)> = vec![
        // Shared events (one reference left), a producer's id, events of `a` alone (gone with
        // the delivery), and a delivery dead-lettered while in flight.
        (
            a,
            vec![
                (seqs["shared-0"], measured(Some(0), 12)),
                (seqs["only-a-3"], measured(None, 3)),
                (seqs["shared-1"], measured(Some(16), 40)),
                (seqs["in-flight-dead"], measured(Some(0), 900)),
                (seqs["only-a-2"], measured(Some(0), 0)),
            ],
        ),
        // `b`'s, out of seq order: the last references of two shared events, and one that `a`
        // still holds.
        (
            b,
            vec![
                (seqs["shared-1"], measured(Some(0), 5)),
                (seqs["shared-6"], measured(Some(0), 6)),
                (seqs["shared-0"], measured(Some(0), 7)),
            ],
        ),
        // A delivery already recorded, one never stored, and a seq twice (the first leaves
        // its event to `b`, so the second finds it and records an attempt).
        (
            a,
            vec![
                (seqs["shared-8"], measured(Some(0), 1)),
                (seqs["done-before"], measured(Some(0), 2)),
                (seqs["shared-6"], measured(Some(0), 3)),
                (seqs["shared-8"], measured(Some(0), 4)),
                (99_999, measured(Some(0), 5)),
            ],
        ),
    ];
    for (n, (sink, done)) in steps.into_iter().enumerate() {
        let at_ms = 1_700_000_001_000 + n as i64;
        for &(seq, measured) in &done {
            one.report_blocking(Report::Delivered {
                sink,
                seq,
                at_ms,
                measured,
            });
        }
        many.report_blocking(Report::DeliveredMany { sink, at_ms, done });
        // A fetch is answered after the reports sent before it are committed.
        many.fetch_blocking(a, 0, 1).unwrap();
        one.fetch_blocking(a, 0, 1).unwrap();
        let (got, want) = (
            outbox_state(&many_cfg.storage.path),
            outbox_state(&one_cfg.storage.path),
        );
        for (got, want) in got.iter().zip(&want) {
            assert_eq!(got, want, "after step {n}");
        }
    }
    close(many, many_thread);
    close(one, one_thread);
    let r = report(many_dir.path());
    // Left: the dead letter that stays, and `b`'s `shared-8`.
    assert_eq!((r.events, r.sinks[0].dead_letters), (2, 1));
    assert_eq!(
        (r.sinks[0].pending, r.sinks[0].delivered, r.sinks[1].pending),
        (0, 11, 1)
    );
}

#[test]
fn a_long_delivered_many_is_recorded_as_one_delivered_each() {
    let (many_dir, one_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (many_cfg, one_cfg) = (mixed_config(many_dir.path()), mixed_config(one_dir.path()));
    let build = |cfg: &Config| {
        let (outbox, ids, thread) = open(cfg);
        for n in 0..80 {
            let t = if n % 3 == 0 { "shared.x" } else { "only.a" };
            outbox
                .append_blocking(fixed_event(&format!("e-{n:02}"), t, n % 7 == 0))
                .unwrap();
        }
        let queue = outbox.fetch_blocking(ids[0], 0, 100).unwrap();
        close(outbox, thread);
        queue
            .iter()
            .map(|d| {
                (
                    d.seq,
                    Measured {
                        code: Some(0),
                        latency_ms: d.seq as u64,
                    },
                )
            })
            .collect::<Vec<_>>()
    };
    let mut done = build(&many_cfg);
    assert_eq!(build(&one_cfg), done);
    // Longer than a part, with a seq again in a later part.
    done.truncate(75);
    done.push(done[3]);
    let (many, ids, many_thread) = open(&many_cfg);
    many.report_blocking(Report::DeliveredMany {
        sink: ids[0],
        at_ms: 5,
        done: done.clone(),
    });
    close(many, many_thread);
    let (one, ids, one_thread) = open(&one_cfg);
    for (seq, measured) in done {
        one.report_blocking(Report::Delivered {
            sink: ids[0],
            seq,
            at_ms: 5,
            measured,
        });
    }
    close(one, one_thread);
    let (got, want) = (
        outbox_state(&many_cfg.storage.path),
        outbox_state(&one_cfg.storage.path),
    );
    for (got, want) in got.iter().zip(&want) {
        assert_eq!(got, want);
    }
    assert_eq!(report(many_dir.path()).sinks[0].delivered, 76);
}

#[test]
fn a_batch_of_deliveries_found_once_each_takes_the_set_based_path() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = mixed_config(dir.path());
    let (outbox, ids, thread) = open(&cfg);
    let seqs = build_mixed(&outbox, &ids);
    close(outbox, thread);
    let (store, _) = store::Store::open(&cfg.storage, None).unwrap();
    let shape = |sink, names: &[&str]| {
        let done: Vec<(i64, Measured)> = names
            .iter()
            .map(|n| (seqs.get(*n).copied().unwrap_or(99_999), Measured::default()))
            .collect();
        store.shape(sink, &done).unwrap()
    };
    let common = shape(ids[0], &["shared-0", "shared-1", "only-a-2", "only-a-3"]);
    assert!(common.set_based(), "{common:?}");
    let body_len = |id: &str| fixed_event(id, "only.a", false).body.len() as i64;
    assert_eq!(
        (
            common.pending,
            common.dead,
            common.last_refs,
            common.last_bytes
        ),
        (4, 0, 2, body_len("only-a-2") + body_len("only-a-3"))
    );
    let with_dead = shape(ids[0], &["only-a-2", "in-flight-dead"]);
    assert!(with_dead.set_based(), "{with_dead:?}");
    assert_eq!((with_dead.pending, with_dead.dead), (1, 1));
    for names in [
        &["only-a-2", "done-before"][..],
        &["only-a-2", "never-stored"],
        &["only-a-2", "shared-0", "only-a-2"],
    ] {
        assert!(!shape(ids[0], names).set_based(), "{names:?}");
    }
    // `b` never had the events of `a` alone.
    assert!(!shape(ids[1], &["shared-0", "only-a-2"]).set_based());
    assert!(shape(ids[1], &["shared-0", "shared-1"]).set_based());
}

#[test]
fn a_batch_of_deliveries_crossing_a_thousand_attempts_trims_the_activity_as_one_at_a_time_does() {
    let mut results = Vec::new();
    for together in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), "", &[("a", "\"*\"")]);
        let (outbox, ids, thread) = open(&cfg);
        close(outbox, thread);
        // Attempts up to id 10,990: the next thousand ends at 11,000, and trims up to 1,000.
        let conn = rusqlite::Connection::open(&cfg.storage.path).unwrap();
        conn.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10990)
             INSERT INTO attempts (id, at_ms, sink, event_id, event_type, outcome)
             SELECT i, 0, 1, 'old', 'x', 'delivered' FROM n",
        )
        .unwrap();
        drop(conn);
        let (outbox, _, thread) = open(&cfg);
        for n in 0..20 {
            outbox.append_blocking(event(n, "x")).unwrap();
        }
        let done: Vec<(i64, Measured)> = outbox
            .fetch_blocking(ids[0], 0, 100)
            .unwrap()
            .into_iter()
            .map(|d| (d.seq, Measured::default()))
            .collect();
        if together {
            outbox.report_blocking(Report::DeliveredMany {
                sink: ids[0],
                at_ms: 1,
                done,
            });
        } else {
            for (seq, measured) in done {
                outbox.report_blocking(Report::Delivered {
                    sink: ids[0],
                    seq,
                    at_ms: 1,
                    measured,
                });
            }
        }
        close(outbox, thread);
        let conn = open_ro(&cfg.storage.path).unwrap().unwrap();
        let kept: (i64, i64, i64) = conn
            .query_row("SELECT min(id), max(id), count(*) FROM attempts", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        results.push(kept);
    }
    assert_eq!(results[0], (1001, 11010, 10010));
    assert_eq!(results[0], results[1]);
}

#[test]
fn the_deliveries_of_one_fetch_share_two_buffers_and_each_reads_back_its_own_event() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", &[("a", "\"*\"")]);
    let (outbox, ids, thread) = open(&cfg);
    // Types and bodies of different lengths, one type not ASCII, so that a part taken from
    // the wrong place shows.
    let types = ["t", "sensor.temperature", "app.ünïcode", "x.y"];
    let mut stored = Vec::new();
    for (n, t) in types.iter().cycle().take(40).enumerate() {
        let mut e = event(n, t);
        e.body.extend(std::iter::repeat_n(b' ', n * 7));
        stored.push((e.id.clone(), e.event_type.clone(), e.body.clone()));
        outbox.append_blocking(e).unwrap();
    }
    let fetched = outbox.fetch_blocking(ids[0], 0, 100).unwrap();
    let read: Vec<_> = fetched
        .iter()
        .map(|d| {
            (
                d.id().to_owned(),
                d.event_type().to_owned(),
                d.body().to_vec(),
            )
        })
        .collect();
    assert_eq!(read, stored);
    assert!(
        fetched
            .iter()
            .all(|d| Arc::ptr_eq(&d.text, &fetched[0].text)
                && Arc::ptr_eq(&d.bodies, &fetched[0].bodies))
    );
    // A delivery kept alone (retried) still reads its own event.
    let kept = fetched[37].clone();
    drop(fetched);
    assert_eq!(kept.id(), stored[37].0);
    assert_eq!(kept.event_type(), stored[37].1);
    assert_eq!(kept.body(), &stored[37].2[..]);
    let own = Delivery::new(7, "id-7", "ünïcode.t", b"", 1, 2);
    assert_eq!(
        (
            own.seq,
            own.id(),
            own.event_type(),
            own.body(),
            own.created_ms,
            own.attempts
        ),
        (7, "id-7", "ünïcode.t", &b""[..], 1, 2)
    );
    assert!(outbox.fetch_blocking(ids[0], 0, 0).unwrap().is_empty());
    close(outbox, thread);
}

#[test]
fn the_outbox_publishes_its_commits_and_whether_anything_can_expire() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", &[("a", "\"*\"")]);
    let (outbox, ids, thread) = open(&cfg);
    let rt = rt();
    rt.block_on(outbox.totals()).unwrap();
    let (commits, rested) = (outbox.commits(), outbox.at_rest());
    assert!(!outbox.may_expire());
    assert!(!rested, "busy a moment ago, with its routes set");
    // A timer's question writes nothing.
    rt.block_on(outbox.totals()).unwrap();
    assert_eq!(outbox.commits(), commits);
    outbox.append_blocking(event(1, "x")).unwrap();
    assert!(outbox.commits() > commits);
    assert!(outbox.may_expire());
    let d = outbox.fetch_blocking(ids[0], 0, 10).unwrap();
    outbox.report_blocking(Report::Delivered {
        sink: ids[0],
        seq: d[0].seq,
        at_ms: now_ms(),
        measured: Measured::default(),
    });
    // Answered after the report's commit.
    outbox.fetch_blocking(ids[0], 0, 1).unwrap();
    assert!(!outbox.may_expire());
    close(outbox, thread);
}

/// An event of type `x` whose stored body is `len` bytes and a little more.
fn sized_event(len: usize) -> NewEvent {
    let data = serde_json::json!({ "pad": "x".repeat(len) });
    crate::event::build_value(None, "x", &data, SystemTime::now())
}

#[test]
fn a_fetch_stops_at_its_byte_bound_and_still_takes_an_event_larger_than_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", &[("a", "\"*\"")]);
    let (outbox, ids, thread) = open(&cfg);
    outbox
        .append_blocking(sized_event(FETCH_BYTES + FETCH_BYTES / 2))
        .unwrap();
    for _ in 0..4 {
        outbox
            .append_blocking(sized_event(FETCH_BYTES * 3 / 8))
            .unwrap();
    }
    let sizes = |after: i64| -> (Vec<usize>, i64) {
        let fetched = outbox.fetch_blocking(ids[0], after, 512).unwrap();
        let last = fetched.last().map_or(after, |d| d.seq);
        (fetched.iter().map(|d| d.body().len()).collect(), last)
    };
    // The large event alone, then small ones up to the one that reaches the bound.
    let (first, after) = sizes(0);
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0] > FETCH_BYTES);
    let (second, after) = sizes(after);
    assert_eq!(second.len(), 3, "{second:?}");
    assert!(second.iter().sum::<usize>() >= FETCH_BYTES);
    let (third, _) = sizes(after);
    assert_eq!(third.len(), 1, "{third:?}");
    close(outbox, thread);
}

#[test]
fn a_producer_waits_for_its_share_of_the_byte_budget() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", &[("a", "\"*\"")]);
    let (outbox, _, thread) = open(&cfg);
    rt().block_on(async {
        let taken = outbox
            .budget
            .clone()
            .acquire_many_owned(BUDGET as u32)
            .await
            .unwrap();
        let mut submit = Box::pin(outbox.submit(event(1, "x")));
        let queued = tokio::select! {
            biased;
            _ = &mut submit => true,
            _ = tokio::task::yield_now() => false,
        };
        assert!(!queued, "queued while the budget is taken");
        drop(taken);
        let answer = submit.await.await.unwrap();
        assert!(answer.unwrap().stored);
        // Given back once answered (just after the answer is sent, on the outbox thread).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while outbox.budget.available_permits() < BUDGET {
            assert!(
                std::time::Instant::now() < deadline,
                "the share is given back"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    close(outbox, thread);
}

#[test]
fn the_wal_is_truncated_once_every_queue_is_drained() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", &[("a", "\"*\"")]);
    let (outbox, ids, thread) = open(&cfg);
    let wal = dir.path().join("outbox.db-wal");
    let wal_size = || std::fs::metadata(&wal).map_or(0, |m| m.len());
    // A reader holding its snapshot keeps SQLite's own checkpoints from moving anything, so
    // the WAL grows past its limit and no commit starts it over.
    let reader = rusqlite::Connection::open(dir.path().join("outbox.db")).unwrap();
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM events;")
        .unwrap();
    for _ in 0..12 {
        outbox.append_blocking(sized_event(1024 * 1024)).unwrap();
    }
    assert!(wal_size() > 3 * schema::WAL_LIMIT, "{} bytes", wal_size());
    reader.execute_batch("COMMIT").unwrap();
    // Fetches end at `FETCH_BYTES`: the queue is read in several.
    let mut done = Vec::new();
    loop {
        let after = done.last().map_or(0, |(seq, _)| *seq);
        let fetched = outbox.fetch_blocking(ids[0], after, 100).unwrap();
        if fetched.is_empty() {
            break;
        }
        done.extend(fetched.iter().map(|d| (d.seq, Measured::default())));
    }
    assert_eq!(done.len(), 12);
    outbox.report_blocking(Report::DeliveredMany {
        sink: ids[0],
        at_ms: now_ms(),
        done,
    });
    assert!(outbox.fetch_blocking(ids[0], 0, 1).unwrap().is_empty());
    // The checkpoint follows the answers of the batch that drained the queue.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while wal_size() > schema::WAL_LIMIT {
        assert!(
            std::time::Instant::now() < deadline,
            "the WAL is {} bytes once drained",
            wal_size()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    close(outbox, thread);
}
