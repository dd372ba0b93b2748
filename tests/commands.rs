//! The commands people run by hand: `demo`, `receive`, `status` as a table.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn demo_shows_every_sample_event_verified_and_exits_by_itself() {
    let out = output_within(
        edgehook().args(["demo", "--events", "4", "--every", "50ms"]),
        COMMAND_LIMIT,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("✓ received").count(), 6, "{text}");
    assert!(text.contains("4 of 4 events delivered"), "{text}");
    assert!(text.contains("✓ received  device-provisioned"), "{text}");
    assert!(
        text.contains("✓ received  devices-inventory-changed"),
        "{text}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("WARN"),
        "the demo runs without warnings"
    );
}

#[test]
fn receive_prints_each_verified_event_as_one_json_line_and_refuses_bad_signatures() {
    let mut recv = edgehook()
        .args([
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--secret",
            SECRET,
            "--count",
            "4",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(recv.stderr.take().unwrap()).lines();
    let first = err.next().unwrap().unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("the address")
        .to_string();
    let setup = Setup::new(&format!(
        "{}{}",
        http_sink("good", &url, SECRET, ""),
        http_sink(
            "bad",
            &url,
            &edgehook::sinks::signing::generate_secret(edgehook::sinks::signing::Scheme::Standard),
            "events = [\"other\"]"
        ),
    ));
    let _daemon = setup.start();
    emit_one(&setup.socket(), "other", json!({"x": 1}));
    let ids: Vec<String> = (0..3)
        .map(|n| emit_one(&setup.socket(), "sensor.reading", json!({ "n": n })))
        .collect();
    let refused = err.next().unwrap().unwrap();
    assert!(
        refused.contains("rejected") && refused.contains("no signature matches"),
        "{refused}"
    );
    let out = recv.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<&str> = lines
        .iter()
        .filter(|v| v["type"] == "sensor.reading")
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids);
}

#[test]
fn status_works_without_the_daemon_and_shows_a_table_for_people() {
    let mut receiver = Receiver::ok();
    let setup = Setup::new(&http_sink("cloud", &receiver.url(), SECRET, ""));
    let out = run(&setup.config, &["status"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("not yet started"));
    receiver.stop();
    let mut daemon = setup.start();
    emit_one(&setup.socket(), "sensor.reading", json!({}));
    wait_until(Duration::from_secs(10), "a failed attempt", || {
        setup.sink_status("cloud")["failed_attempts"].as_i64() > Some(0)
    });
    daemon.terminate();
    let out = run(&setup.config, &["status"]);
    let text = String::from_utf8(out.stdout).unwrap();
    let header = text
        .lines()
        .find(|l| l.starts_with("SINK"))
        .expect("a table header");
    for col in [
        "STATE",
        "PENDING",
        "OLDEST",
        "DELIVERED",
        "FAILED",
        "DEAD",
        "LAST SUCCESS",
        "LAST ERROR",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let row = text
        .lines()
        .find(|l| l.starts_with("cloud"))
        .expect("a row for the sink");
    assert!(
        row.contains("paused") && row.contains("connection"),
        "{row}"
    );
    assert!(text.contains("not running"), "{text}");
    let v = setup.status();
    assert_eq!(v["daemon"]["running"], false);
    assert_eq!(v["outbox"]["events"], 1);
    assert_eq!(v["sinks"][0]["pending"], 1);
    assert!(v["sinks"][0]["oldest_pending_age_s"].as_i64().is_some());
    assert!(
        v["sinks"][0]["url"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );
}

#[test]
fn a_renamed_sink_leaves_its_queue_orphaned() {
    let mut receiver = Receiver::ok();
    let setup = Setup::new(&http_sink("old-name", &receiver.url(), SECRET, ""));
    receiver.stop();
    let mut daemon = setup.start();
    emit_one(&setup.socket(), "sensor.reading", json!({}));
    daemon.terminate();
    setup.write_config(&http_sink("new-name", &receiver.url(), SECRET, ""));
    let v = setup.status();
    let names: Vec<(&str, &str)> = v["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("new-name", "paused"), ("old-name", "orphaned")]);
    assert_eq!(v["sinks"][1]["pending"], 1);
}

#[test]
fn every_command_has_help_with_an_example() {
    let commands: &[&[&str]] = &[
        &["run"],
        &["check-config"],
        &["emit"],
        &["status"],
        &["activity"],
        &["dead-letters"],
        &["redeliver"],
        &["resume"],
        &["reload"],
        &["test"],
        &["verify"],
        &["secret", "generate"],
        &["sink", "list"],
        &["sink", "show"],
        &["sink", "add"],
        &["sink", "update"],
        &["sink", "remove"],
        &["inventory"],
        &["set-status"],
        &["decommission"],
        &["provision"],
        &["receive"],
        &["demo"],
    ];
    for c in commands {
        let out = output_within(edgehook().args(*c).arg("--help"), COMMAND_LIMIT);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{c:?}");
        assert!(
            text.contains("Example"),
            "{c:?} --help has no example:\n{text}"
        );
    }
}
