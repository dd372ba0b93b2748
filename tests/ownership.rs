//! One owner of the outbox, and one event for one id: a second daemon on an outbox that a
//! daemon holds exits 75 naming it, having started nothing; an offline writer is refused
//! while a daemon holds the outbox; an id sent again is a duplicate with the same type and
//! data and a conflict with others.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::*;
use edgehook::client::{Client, Reply};
use edgehook::protocol::Done;
use serde_json::{Value, json};

/// How long a command that should exit at once may take (generous: qemu starts slowly).
const QUICK: Duration = Duration::from_secs(60);

/// A second config beside `setup`'s: the same outbox, the socket `socket` (in the same
/// directory).
fn second_config(setup: &Setup, socket: &str) -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(&setup.config).expect("config");
    let second_socket = setup.dir.path().join(socket);
    let text = text.replace(
        &setup.socket().display().to_string(),
        &second_socket.display().to_string(),
    );
    assert!(text.contains(socket), "the socket was replaced: {text}");
    let path = setup.dir.path().join("second.toml");
    std::fs::write(&path, text).expect("second config written");
    (path, second_socket)
}

/// `edgehook --config CONFIG ARGS…`, which should be over within `QUICK`.
fn quick(config: &Path, args: &[&str]) -> Output {
    output_within(edgehook().arg("--config").arg(config).args(args), QUICK)
}

/// The one line `out` printed on stderr, checked to be exactly one, and its exit code.
fn one_line(out: &Output) -> (Option<i32>, String) {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
    (out.status.code(), stderr.trim_end().to_string())
}

#[test]
fn a_second_daemon_on_a_held_outbox_exits_75_naming_the_holder_and_the_first_goes_on() {
    let receiver = Receiver::ok();
    let setup = Setup::new(&http_sink("cloud", &receiver.url(), SECRET, ""));
    let first = setup.start();
    let (second, second_socket) = second_config(&setup, "second.sock");

    let started = std::time::Instant::now();
    let out = quick(&second, &["run"]);
    eprintln!("the second daemon exited in {:?}", started.elapsed());
    let (code, line) = one_line(&out);
    assert_eq!(code, Some(75), "{line}");
    assert!(
        line.contains(&format!("pid {}", first.pid())) && line.contains("outbox.db"),
        "the holder and the outbox are named: {line}"
    );
    assert!(
        !second_socket.exists(),
        "the second daemon touched no socket"
    );

    // The first daemon goes on: it answers and delivers, once.
    let mut client = setup.client();
    assert!(matches!(
        client.call(&json!({"op": "ping"})).unwrap(),
        Reply::Ok(_)
    ));
    let id = emit_one(&setup.socket(), "sensor.reading", json!({"n": 1}));
    wait_until(Duration::from_secs(30), "the delivery", || {
        setup.sink_status("cloud")["pending"] == 0 && receiver.delivered_count() >= 1
    });
    assert_eq!(receiver.delivered_ids(), [id]);
    assert!(
        !first.log().contains("ERROR"),
        "the first daemon logged an error: {}",
        first.log()
    );
}

#[test]
fn an_offline_redeliver_is_refused_while_a_daemon_holds_the_outbox_unseen_on_its_socket() {
    let setup = Setup::new(&http_sink("cloud", "http://127.0.0.1:9/", SECRET, ""));
    let daemon = setup.start();
    // Through a config whose socket nobody answers, `redeliver` finds no daemon, as it would
    // when one starts just after it looked: it goes for the outbox file, and the daemon's
    // hold on it refuses it.
    let (second, _) = second_config(&setup, "nobody.sock");
    let out = quick(&second, &["redeliver", "--all"]);
    let (code, line) = one_line(&out);
    assert_eq!(code, Some(75), "{line}");
    assert!(
        line.contains(&format!("pid {}", daemon.pid())) && line.contains("the daemon redelivers"),
        "the holder is named and the way through the daemon given: {line}"
    );
    assert!(out.stdout.is_empty(), "nothing was redelivered");
}

#[test]
fn a_daemon_started_while_another_process_holds_the_outbox_exits_75_naming_it_and_starts_later() {
    use nix::fcntl::{Flock, FlockArg};
    use std::io::Write;
    let setup = Setup::new(&http_sink("cloud", "http://127.0.0.1:9/", SECRET, ""));
    // What an offline command holds while it writes: the lock beside the outbox, with its pid.
    let mut file = std::fs::File::create(edgehook::outbox::lock_path(&setup.db())).unwrap();
    writeln!(file, "{}", std::process::id()).unwrap();
    let held = Flock::lock(file, FlockArg::LockExclusiveNonblock).expect("the lock is free");

    let out = quick(&setup.config, &["run"]);
    let (code, line) = one_line(&out);
    assert_eq!(code, Some(75), "{line}");
    assert!(
        line.contains(&format!("pid {}", std::process::id())),
        "{line}"
    );
    assert!(!setup.socket().exists(), "no socket was made");
    assert!(!setup.db().exists(), "the outbox was not opened");

    drop(held);
    let _daemon = setup.start();
}

/// A daemon whose sink's receiver is down, so that events stay in the outbox until it is
/// restarted: a delivered id is forgotten with its event.
fn receiver_down() -> (Receiver, Setup, Daemon) {
    let mut receiver = Receiver::ok();
    let setup = Setup::new(&http_sink("cloud", &receiver.url(), SECRET, ""));
    receiver.stop();
    let daemon = setup.start();
    (receiver, setup, daemon)
}

/// `edgehook emit --id ID TYPE DATA`.
fn emit_with_id(setup: &Setup, id: &str, t: &str, data: &str) -> Output {
    quick(&setup.config, &["emit", "--id", id, t, data])
}

/// Waits until the outbox is empty and returns what the receiver took, as (id, type, data).
fn delivered_once_drained(setup: &Setup, receiver: &Receiver) -> Vec<(String, String, Value)> {
    wait_until(Duration::from_secs(30), "the outbox to drain", || {
        setup.sink_status("cloud")["pending"] == 0 && receiver.delivered_count() >= 1
    });
    receiver
        .delivered()
        .iter()
        .map(|r| {
            let v = r.json();
            (
                v["id"].as_str().unwrap().to_string(),
                v["type"].as_str().unwrap().to_string(),
                v["data"].clone(),
            )
        })
        .collect()
}

#[test]
fn an_id_sent_again_with_another_type_is_refused_as_a_conflict_and_only_the_first_is_delivered() {
    let (mut receiver, setup, _daemon) = receiver_down();

    let out = emit_with_id(&setup, "42", "app-a.reading", r#"{"celsius":21.5}"#);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    let out = emit_with_id(&setup, "42", "app-b.alarm", r#"{"celsius":21.5}"#);
    let (code, line) = one_line(&out);
    assert_eq!(code, Some(65), "{line}");
    assert!(line.contains("conflict"), "{line}");
    assert!(out.stdout.is_empty());
    // Other data under the same type, on the socket.
    let reply = setup
        .client()
        .call(&json!({"op": "emit", "id": "42", "type": "app-a.reading", "data": {"celsius": 30}}))
        .unwrap();
    match reply {
        Reply::Err { code, error } => {
            assert_eq!(code, "conflict");
            assert!(error.contains("another type or data"), "{error}");
        }
        other => panic!("a conflict, not {other:?}"),
    }

    receiver.restart();
    assert_eq!(
        delivered_once_drained(&setup, &receiver),
        [(
            "42".to_string(),
            "app-a.reading".to_string(),
            json!({"celsius": 21.5})
        )]
    );
}

#[test]
fn an_id_sent_again_with_the_same_type_and_data_is_a_duplicate_stored_and_delivered_once() {
    let (mut receiver, setup, _daemon) = receiver_down();

    let out = emit_with_id(&setup, "7", "app-a.reading", r#"{"celsius":21.5}"#);
    assert!(out.status.success(), "{out:?}");
    // The same event again, written with other white space.
    let out = emit_with_id(&setup, "7", "app-a.reading", r#"{ "celsius": 21.5 }"#);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7");
    assert!(String::from_utf8_lossy(&out.stderr).contains("stored once"));
    let mut client: Client = setup.client();
    let reply = client
        .call(&json!({"op": "emit", "id": "7", "type": "app-a.reading", "data": {"celsius": 21.5}}))
        .unwrap();
    assert_eq!(
        reply,
        Reply::Ok(Done {
            id: Some("7".into()),
            duplicate: Some(true),
            ..Done::default()
        })
    );
    // A new id is no duplicate, and says nothing of it.
    let reply = client
        .call(&json!({"op": "emit", "id": "8", "type": "app-a.reading", "data": 1}))
        .unwrap();
    assert_eq!(reply, Reply::Ok(Done::stored("8")));

    receiver.restart();
    wait_until(Duration::from_secs(30), "both deliveries", || {
        receiver.delivered_count() >= 2
    });
    let got = delivered_once_drained(&setup, &receiver);
    let ids: Vec<&str> = got.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids, ["7", "8"]);
}
