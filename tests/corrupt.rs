//! A corrupt or foreign outbox file: garbage and a truncated file are moved aside (with their
//! -wal and -shm) with an ERROR in the log and a fresh outbox starts and delivers; corruption
//! found while running stops the daemon, and the next start checks the file and moves it aside;
//! a file from a newer edgehook is refused with exit 74 by `run` and by `status`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A setup whose receiver refuses everything (503), so events stay pending in the outbox.
fn holding_setup() -> (Receiver, Setup) {
    let receiver = Receiver::start(Arc::new(|_, _| Response::status(503)));
    let setup = Setup::new(&http_sink("cloud", &receiver.url(), SECRET, ""));
    (receiver, setup)
}

/// Fills the outbox with `n` pending events and stops the daemon cleanly (so everything is in
/// the main file, not the WAL).
fn fill_outbox(setup: &Setup, n: usize) {
    let mut daemon = setup.start();
    emit_pipelined(&setup.socket(), 0, n, "sensor.reading", 64);
    assert_eq!(daemon.terminate(), Some(0), "{}", daemon.log());
}

/// The files `<outbox>.corrupt-*` in the test's directory.
fn moved_aside(setup: &Setup) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(setup.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .contains(".corrupt-")
        })
        .collect();
    found.sort();
    found
}

/// Starts the daemon on a damaged outbox and checks the ERROR naming where the file went, the
/// file there, and a fresh outbox that delivers an event emitted now.
/// `damaged` is the file as it must have been kept, when the test knows it.
fn check_moved_aside_and_fresh(setup: &Setup, receiver: &Receiver, damaged: Option<&[u8]>) {
    let started = Instant::now();
    let daemon = setup.start();
    let took = started.elapsed();
    let aside = moved_aside(setup);
    let main: Vec<&PathBuf> = aside
        .iter()
        .filter(|p| {
            !p.to_string_lossy().ends_with("-wal") && !p.to_string_lossy().ends_with("-shm")
        })
        .collect();
    assert_eq!(main.len(), 1, "one file moved aside: {aside:?}");
    if let Some(damaged) = damaged {
        assert!(
            std::fs::read(main[0]).unwrap() == damaged,
            "not kept as it was"
        );
    }
    let log = daemon.log();
    let line = log
        .lines()
        .find(|l| l.starts_with("edgehook ERROR") && l.contains(&*main[0].to_string_lossy()))
        .unwrap_or_else(|| panic!("no ERROR naming {}: {log}", main[0].display()));
    assert!(line.contains("fresh outbox"), "{line}");
    eprintln!("moved aside and started in {took:?}: {line}");
    receiver.set_behaviour(Arc::new(|_, _| Response::status(200)));
    let id = emit_one(
        &setup.socket(),
        "sensor.reading",
        json!({"after": "corruption"}),
    );
    wait_until(Duration::from_secs(20), "the new event delivered", || {
        receiver.delivered_ids().contains(&id)
    });
    wait_until(Duration::from_secs(10), "nothing pending", || {
        setup.sink_status("cloud")["pending"] == 0
    });
}

#[test]
fn an_outbox_of_garbage_bytes_is_moved_aside_with_its_wal_and_a_fresh_one_delivers() {
    let (receiver, setup) = holding_setup();
    let garbage: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(setup.db(), &garbage).unwrap();
    std::fs::write(side(&setup.db(), "-wal"), b"not a wal either").unwrap();
    std::fs::write(side(&setup.db(), "-shm"), vec![7u8; 32 * 1024]).unwrap();
    check_moved_aside_and_fresh(&setup, &receiver, Some(&garbage));
    let aside = moved_aside(&setup);
    assert_eq!(
        aside.len(),
        3,
        "the file, its -wal and -shm moved together: {aside:?}"
    );
    let wal = aside.iter().find(|p| p.to_string_lossy().ends_with("-wal"));
    assert_eq!(std::fs::read(wal.unwrap()).unwrap(), b"not a wal either");
}

#[test]
fn a_truncated_outbox_with_thousands_of_events_is_moved_aside_and_a_fresh_one_delivers() {
    let (receiver, setup) = holding_setup();
    fill_outbox(&setup, 3000);
    let whole = std::fs::read(setup.db()).unwrap();
    assert!(
        whole.len() > 256 * 1024,
        "a real outbox: {} bytes",
        whole.len()
    );
    // Cut mid-page, past the schema, in the middle of the events.
    let cut = &whole[..whole.len() / 2 + 123];
    std::fs::write(setup.db(), cut).unwrap();
    check_moved_aside_and_fresh(&setup, &receiver, Some(cut));
}

#[test]
fn an_outbox_truncated_at_a_page_boundary_is_moved_aside() {
    let (receiver, setup) = holding_setup();
    fill_outbox(&setup, 3000);
    let whole = std::fs::read(setup.db()).unwrap();
    let cut = &whole[..(whole.len() / 2) & !4095];
    std::fs::write(setup.db(), cut).unwrap();
    check_moved_aside_and_fresh(&setup, &receiver, Some(cut));
}

#[test]
fn corruption_found_while_running_stops_the_daemon_and_the_next_start_moves_the_file_aside() {
    let (receiver, setup) = holding_setup();
    fill_outbox(&setup, 3000);
    // Scribble over pages in the middle of the file, keeping its size and header: the checks
    // at open pass, and SQLite meets the damage only when it reads those pages.
    let mut bytes = std::fs::read(setup.db()).unwrap();
    let page = 4096;
    let middle = (bytes.len() / 2) & !(page - 1);
    for (i, b) in bytes[middle..middle + 8 * page].iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1];
    }
    std::fs::write(setup.db(), &bytes).unwrap();
    // Draining the backlog makes the daemon read every page.
    receiver.set_behaviour(Arc::new(|_, _| Response::status(200)));
    let log = setup.dir.path().join("first-run.log");
    let mut first = edgehook()
        .arg("--config")
        .arg(&setup.config)
        .arg("run")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(s) = first.try_wait().unwrap() {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = first.kill();
            panic!("still running: {}", std::fs::read_to_string(&log).unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(74), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("edgehook ERROR") && l.contains("corrupt")),
        "{text}"
    );
    assert!(
        receiver.delivered_count() < 3000,
        "the damage was met before the end"
    );
    // The first run committed deliveries before it met the damage, so the file changed.
    check_moved_aside_and_fresh(&setup, &receiver, None);
    assert!(
        moved_aside(&setup)
            .iter()
            .all(|p| !p.to_string_lossy().ends_with("needs-check"))
    );
}

#[test]
fn an_outbox_from_a_newer_edgehook_is_refused_by_run_and_status_with_exit_74() {
    let (_receiver, setup) = holding_setup();
    fill_outbox(&setup, 10);
    {
        let conn = rusqlite::Connection::open(setup.db()).unwrap();
        conn.execute_batch("PRAGMA user_version = 99").unwrap();
    }
    let before = std::fs::read(setup.db()).unwrap();
    let out = run(&setup.config, &["run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(74), "{stderr}");
    let db = setup.db().display().to_string();
    let ours = format!("({})", edgehook::outbox::SCHEMA_VERSION);
    for needed in [db.as_str(), "schema version 99", &ours, "upgrade edgehook"] {
        assert!(stderr.contains(needed), "{needed:?} not in: {stderr}");
    }
    let out = run(&setup.config, &["status"]);
    let status_err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(74), "{status_err}");
    assert!(
        status_err.contains(&db) && status_err.contains("99"),
        "{status_err}"
    );
    assert_eq!(std::fs::read(setup.db()).unwrap(), before, "left untouched");
    assert!(moved_aside(&setup).is_empty());
}

/// `<path><suffix>`, for a database's -wal and -shm.
fn side(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}
