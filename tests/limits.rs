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
