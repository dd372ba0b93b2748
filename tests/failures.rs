//! The failure classes of HTTP sinks: a refused event becomes a dead letter and the queue moves
//! on, 410 pauses the sink, 429 with Retry-After is waited out.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn an_event_answered_400_becomes_a_dead_letter_after_max_attempts_and_later_events_flow() {
    let receiver = Receiver::start(Arc::new(|req, _| {
        if req.json()["data"]["n"] == 3 {
            Response::status(400)
        } else {
            Response::status(200)
        }
    }));
    let setup = Setup::new(&http_sink("cloud", &receiver.url(), SECRET, ""));
    let _daemon = setup.start();
    for n in 0..8 {
        emit_one(&setup.socket(), "sensor.reading", json!({ "n": n }));
    }
    wait_until(Duration::from_secs(20), "7 deliveries", || {
        receiver.delivered_count() == 7
    });
    let ns: Vec<i64> = receiver
        .delivered()
        .iter()
        .map(|r| r.json()["data"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, [0, 1, 2, 4, 5, 6, 7]);
    let tries = receiver
        .requests()
        .iter()
        .filter(|r| r.json()["data"]["n"] == 3)
        .count();
    assert_eq!(tries, 3, "max_attempts is 3");
    // The receiver has the last events a moment before their deliveries are recorded.
    wait_until(
        Duration::from_secs(20),
        "the dead letter, nothing pending",
        || {
            let s = setup.sink_status("cloud");
            s["dead_letters"] == 1 && s["pending"] == 0
        },
    );
    let s = setup.sink_status("cloud");
    assert!(s["last_error"].as_str().unwrap().contains("400"), "{s}");
    let conn = rusqlite::Connection::open(setup.db()).unwrap();
    let reason: String = conn
        .query_row("SELECT reason FROM dead_letters", [], |r| r.get(0))
        .unwrap();
    assert!(reason.starts_with("rejected: HTTP 400"), "{reason}");
}

#[test]
fn a_410_pauses_the_sink_until_the_config_is_reloaded() {
    let receiver = Receiver::start(Arc::new(|_, _| Response::status(410)));
    let setup = Setup::new(&http_sink("cloud", &receiver.url(), SECRET, ""));
    let daemon = setup.start();
    for n in 0..3 {
        emit_one(&setup.socket(), "sensor.reading", json!({ "n": n }));
    }
    wait_until(Duration::from_secs(10), "the sink to show gone", || {
        setup.sink_status("cloud")["state"] == "gone"
    });
    assert_eq!(setup.sink_status("cloud")["pending"], 3);
    // Proving that nothing more is sent needs a quiet period; with retry.initial at 20 ms an
    // unpaused sink would try dozens of times in it.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        receiver.requests().len(),
        1,
        "a gone sink sends nothing more"
    );

    receiver.set_behaviour(Arc::new(|_, _| Response::status(200)));
    daemon.hup();
    wait_until(Duration::from_secs(10), "the events after reload", || {
        receiver.delivered_count() == 3
    });
    wait_until(Duration::from_secs(5), "state active", || {
        setup.sink_status("cloud")["state"] == "active"
    });
}

#[test]
fn a_429_with_retry_after_is_waited_out() {
    let receiver = Receiver::start(Arc::new(|_, before| {
        if before.is_empty() {
            Response::status(429).with_header("Retry-After", "2")
        } else {
            Response::status(200)
        }
    }));
    let sink =
        http_sink("cloud", &receiver.url(), SECRET, "").replace("max = \"500ms\"", "max = \"10s\"");
    let setup = Setup::new(&sink);
    let _daemon = setup.start();
    emit_one(&setup.socket(), "sensor.reading", json!({}));
    wait_until(Duration::from_secs(15), "the retry", || {
        receiver.delivered_count() == 1
    });
    let r = receiver.requests();
    let gap = r[1].at - r[0].at;
    assert!(
        gap >= Duration::from_millis(1950),
        "retried after {gap:?}, before Retry-After"
    );
    assert!(gap < Duration::from_secs(5), "retried after {gap:?}");
    assert_eq!(r[0].header("webhook-id"), r[1].header("webhook-id"));
    assert_eq!(r[0].body, r[1].body, "a retry sends identical bytes");
}

#[test]
fn a_redirect_is_not_followed_and_counts_as_a_refusal() {
    let target = Receiver::ok();
    let location = target.url();
    let receiver = Receiver::start(Arc::new(move |_, _| {
        Response::status(307).with_header("Location", &location)
    }));
    let setup = Setup::new(&http_sink("cloud", &receiver.url(), SECRET, ""));
    let _daemon = setup.start();
    emit_one(&setup.socket(), "sensor.reading", json!({}));
    wait_until(Duration::from_secs(10), "the dead letter", || {
        setup.sink_status("cloud")["dead_letters"] == 1
    });
    assert_eq!(receiver.requests().len(), 3);
    assert_eq!(target.requests().len(), 0, "the redirect was followed");
}

#[test]
fn sigterm_exits_zero_and_keeps_what_was_not_delivered() {
    let mut receiver = Receiver::ok();
    let setup = Setup::new(&http_sink("cloud", &receiver.url(), SECRET, ""));
    receiver.stop();
    let mut daemon = setup.start();
    let ids = emit_pipelined(&setup.socket(), 0, 50, "sensor.reading", 16);
    assert_eq!(daemon.terminate(), Some(0), "{}", daemon.log());
    assert!(!setup.socket().exists(), "the socket file is removed");
    let s = setup.sink_status("cloud");
    assert_eq!(
        (s["pending"].as_i64(), s["state"].as_str()),
        (Some(50), Some("paused"))
    );
    receiver.restart();
    let _daemon = setup.start();
    wait_until(Duration::from_secs(20), "the kept events", || {
        receiver.delivered_count() >= 50
    });
    assert_eq!(receiver.delivered_ids(), ids);
}
