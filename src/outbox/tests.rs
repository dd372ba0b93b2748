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
    assert!(b.iter().all(|d| d.event_type == "sensor.t"));
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
            serde_json::from_slice::<serde_json::Value>(&d.body).unwrap()["data"]["n"]
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
    let mut old = event(1, "x");
    old.created_ms = now_ms() - 2 * 3600 * 1000;
    outbox.append_blocking(old).unwrap();
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
    let got: Vec<(&str, i64)> = queue.iter().map(|d| (d.id.as_str(), d.seq)).collect();
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
        .map(|d| d.event_type)
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
