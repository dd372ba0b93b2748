//! What the commands print when the odd thing happens: the reader of their output goes away
//! (`edgehook status | head -1`), the outbox holds a time past year 9999, the config file does
//! not exist, the config sends a password in the clear. No command panics; each ends with one
//! clear line or quietly.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;

/// The commands that print what the outbox holds, and the others worth piping.
const PRINTING: &[&[&str]] = &[
    &["status"],
    &["status", "--json"],
    &["activity"],
    &["dead-letters"],
    &["sink", "list"],
    &["inventory"],
    &["check-config"],
];

/// An outbox with history, the daemon stopped: sink `refused` (400, one attempt) has dead
/// letters, sink `held` (503) pending events and failed attempts. The receivers are returned
/// so they outlive the setup.
fn outbox_with_history() -> (Setup, Receiver, Receiver) {
    let refusing = Receiver::start(Arc::new(|_, _| Response::status(400)));
    let holding = Receiver::start(Arc::new(|_, _| Response::status(503)));
    let setup = Setup::new(&format!(
        "{}{}",
        http_sink("refused", &refusing.url(), SECRET, "")
            .replace("max_attempts = 3", "max_attempts = 1"),
        http_sink("held", &holding.url(), SECRET, "")
    ));
    let mut daemon = setup.start();
    for n in 0..3 {
        emit_one(&setup.socket(), "sensor.reading", json!({ "n": n }));
    }
    wait_until(
        Duration::from_secs(30),
        "dead letters and failed attempts",
        || {
            setup.sink_status("refused")["dead_letters"] == 3
                && setup.sink_status("held")["failed_attempts"].as_i64() > Some(1)
        },
    );
    assert_eq!(daemon.terminate(), Some(0), "{}", daemon.log());
    (setup, refusing, holding)
}

/// Runs `edgehook --config … ARGS` with its output read by `reader`, which is handed the
/// output and drops it when done; returns the exit code and what went to stderr.
fn run_read_by(
    setup: &Setup,
    args: &[&str],
    reader: impl FnOnce(std::process::ChildStdout),
) -> (Option<i32>, String) {
    let mut child = edgehook()
        .arg("--config")
        .arg(&setup.config)
        .args(args)
        .spawn_piped();
    let mut stderr = child.stderr.take().expect("stderr");
    reader(child.stdout.take().expect("stdout"));
    let mut err = String::new();
    stderr.read_to_string(&mut err).expect("stderr read");
    let code = wait_within(&mut child, COMMAND_LIMIT);
    (code, err)
}

/// Spawns a command with no input and its output and errors piped to the test.
trait SpawnPiped {
    fn spawn_piped(&mut self) -> std::process::Child;
}

impl SpawnPiped for std::process::Command {
    fn spawn_piped(&mut self) -> std::process::Child {
        self.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("edgehook starts")
    }
}

/// Waits for `child` to exit, killing it and failing after `limit`.
fn wait_within(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("edgehook did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Asserts a command whose reader went away ended quietly: exit 0, no panic, nothing on
/// stderr but warnings.
fn ended_quietly(args: &[&str], run: usize, (code, err): (Option<i32>, String)) {
    assert!(!err.contains("panicked"), "{args:?}, run {run}: {err}");
    assert_eq!(code, Some(0), "{args:?}, run {run}: {err}");
    assert!(
        err.lines().all(|l| l.contains("warning")),
        "{args:?}, run {run}: {err}"
    );
}

#[test]
fn status_piped_into_a_reader_that_takes_one_line_ends_quietly_every_time() {
    let (setup, _r, _h) = outbox_with_history();
    for run in 0..50 {
        let ended = run_read_by(&setup, &["status"], |out| {
            let mut first = String::new();
            BufReader::new(out).read_line(&mut first).expect("a line");
            assert!(first.starts_with("device"), "{first}");
        });
        ended_quietly(&["status"], run, ended);
    }
}

#[test]
fn every_printing_command_ends_quietly_when_its_reader_has_gone() {
    let (setup, _r, _h) = outbox_with_history();
    for args in PRINTING {
        for run in 0..scaled(5) {
            // Closed before the command writes anything: its first write meets EPIPE.
            let ended = run_read_by(&setup, args, drop);
            ended_quietly(args, run, ended);
            let ended = run_read_by(&setup, args, |out| {
                let mut first = String::new();
                BufReader::new(out).read_line(&mut first).expect("a line");
            });
            ended_quietly(args, run, ended);
        }
    }
}

#[test]
fn times_past_year_9999_in_the_outbox_are_printed_not_aborted_on() {
    let (setup, _r, _h) = outbox_with_history();
    const YEAR_10000: i64 = 253_402_300_800_000;
    {
        let conn = rusqlite::Connection::open(setup.db()).unwrap();
        conn.execute_batch(&format!(
            "UPDATE attempts SET at_ms = {YEAR_10000};
             UPDATE dead_letters SET dead_ms = {YEAR_10000};
             UPDATE sinks SET last_success_ms = {YEAR_10000}, last_error_ms = {};
             UPDATE events SET created_ms = {};",
            i64::MAX,
            i64::MIN
        ))
        .unwrap();
    }
    let shown = "+10000-01-01T00:00:00.000Z";
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["activity"],
        &["activity", "--json"],
        &["dead-letters"],
        &["dead-letters", "--json"],
    ] {
        let out = run(&setup.config, args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        if args.contains(&"--json") {
            assert!(stdout.contains(shown), "{args:?}: {stdout}");
        }
    }
    let status = setup.sink_status("held");
    assert_eq!(status["last_error_at"], "+292278994-08-17T07:12:55.807Z");
}

#[test]
fn a_missing_config_file_is_named_once_with_its_cause_and_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere").join("edgehook.toml");
    for args in [&["status"][..], &["check-config"], &["dead-letters"]] {
        let out = run(&missing, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 2, "{args:?}: {stderr}");
        assert!(
            lines[0].contains(&missing.display().to_string()),
            "{stderr}"
        );
        assert_eq!(
            stderr.matches("No such file or directory").count(),
            1,
            "{stderr}"
        );
        assert!(
            lines[1].contains("hint")
                && lines[1].contains("--config")
                && lines[1].contains("edgehook demo"),
            "{stderr}"
        );
    }
}

#[test]
fn receive_stops_quietly_once_its_reader_has_gone() {
    let mut recv = edgehook()
        .args(["receive", "--listen", "127.0.0.1:0", "--secret", SECRET])
        .spawn_piped();
    let mut err = BufReader::new(recv.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("the address")
        .to_string();
    let setup = Setup::new(&http_sink("receive", &url, SECRET, ""));
    let _daemon = setup.start();
    let mut out = BufReader::new(recv.stdout.take().unwrap());
    emit_one(&setup.socket(), "sensor.reading", json!({ "n": 0 }));
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.contains("sensor.reading"), "{line}");
    drop(out);
    for n in 1..3 {
        emit_one(&setup.socket(), "sensor.reading", json!({ "n": n }));
    }
    let code = wait_within(&mut recv, COMMAND_LIMIT);
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert_eq!(code, Some(0), "{rest}");
    assert!(!rest.contains("panicked"), "{rest}");
}

#[test]
fn demo_stops_cleanly_once_its_reader_has_gone_and_leaves_no_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let mut demo = edgehook()
        .args(["demo", "--events", "50", "--every", "20ms"])
        .env("TMPDIR", tmp.path())
        .spawn_piped();
    let mut out = BufReader::new(demo.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first.trim(), "edgehook demo");
    drop(out);
    let mut err = String::new();
    demo.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let code = wait_within(&mut demo, COMMAND_LIMIT);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "the demo left {left:?}");
}

#[test]
fn a_password_over_plain_mqtt_is_warned_about_by_check_config_and_at_start() {
    // Disabled: the warning is the config's, and nothing is sent anywhere.
    let sink = |name: &str, url: &str| {
        format!(
            "[[sink]]\nname = \"{name}\"\nurl = \"{url}\"\nenabled = false\nusername = \"u\"\npassword = \"p\"\n[sink.signing]\nscheme = \"none\"\n"
        )
    };
    let setup = Setup::new(&format!(
        "{}{}{}",
        sink("plain", "MQTT://broker.example.com:1883"),
        sink("tls", "mqtts://broker.example.com"),
        sink("local", "mqtt://127.0.0.1:1883")
    ));
    let warning = "Sink plain sends its MQTT password over plain mqtt:// to broker.example.com";
    let out = run(&setup.config, &["check-config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let warned: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("plain mqtt://"))
        .collect();
    assert_eq!(warned.len(), 1, "{stderr}");
    assert!(
        warned[0].starts_with("warning: ") && warned[0].contains(warning),
        "{stderr}"
    );
    let daemon = setup.start();
    let log = daemon.log();
    let logged: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("plain mqtt://"))
        .collect();
    assert_eq!(logged.len(), 1, "{log}");
    assert!(logged[0].contains(warning), "{log}");
}

#[test]
fn warnings_to_a_standard_error_that_has_gone_end_nothing_in_a_panic() {
    let sink = |name: &str| {
        format!(
            "[[sink]]\nname = \"{name}\"\nurl = \"mqtt://broker.example.com:1883\"\nenabled = false\nusername = \"u\"\npassword = \"p\"\n[sink.signing]\nscheme = \"none\"\n"
        )
    };
    // Two warnings, then the summary: stderr and stdout both into one pipe nobody reads.
    let setup = Setup::new(&format!("{}{}", sink("a"), sink("b")));
    for run in 0..scaled(5) {
        let (read, write) = nix::unistd::pipe().expect("a pipe");
        drop(read);
        let status = edgehook()
            .arg("--config")
            .arg(&setup.config)
            .arg("check-config")
            .stdin(Stdio::null())
            .stdout(Stdio::from(write.try_clone().expect("a second descriptor")))
            .stderr(Stdio::from(write))
            .status()
            .expect("edgehook runs");
        assert_eq!(status.code(), Some(0), "run {run}: {status:?}");
    }
}

#[test]
fn a_device_created_past_year_9999_is_announced_not_aborted_on() {
    let receiver = Receiver::ok();
    // The device's own events go to the receiver, so its announcement can be read there.
    let setup = Setup::new(&http_sink(
        "cloud",
        &receiver.url(),
        SECRET,
        "events = [\"*\"]",
    ));
    let mut daemon = setup.start();
    wait_until(Duration::from_secs(30), "device-provisioned", || {
        !of_type(&receiver, "device-provisioned").is_empty()
    });
    assert_eq!(daemon.terminate(), Some(0), "{}", daemon.log());
    {
        let conn = rusqlite::Connection::open(setup.db()).unwrap();
        conn.execute_batch(
            "UPDATE meta SET value = 253402300800000 WHERE key = 'created_ms';
             DELETE FROM meta WHERE key = 'lifecycle';",
        )
        .unwrap();
    }
    let daemon = setup.start();
    wait_until_or(
        Duration::from_secs(30),
        || of_type(&receiver, "device-provisioned").len() >= 2,
        || daemon.log(),
    );
    let announced = of_type(&receiver, "device-provisioned").pop().unwrap();
    assert_eq!(
        announced["data"]["created_ts"], "+10000-01-01T00:00:00.000Z",
        "{announced}"
    );
    assert!(!daemon.log().contains("panicked"), "{}", daemon.log());
}
