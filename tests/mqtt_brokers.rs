//! MQTT sinks against brokers a test scripts packet by packet, for answers Mosquitto does not
//! give on demand: a broker over its quota (PUBACK 0x97), one that takes the connection and
//! never acknowledges the presence message, and one that answers events with a DISCONNECT or
//! not at all before it acknowledges them.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::raw_server::{RawServer, Stream, serve_mqtt};
use common::*;
use serde_json::json;

/// How the scripted broker answers a QoS 1 publish, given its connection's number (from 0).
type Answer = Arc<dyn Fn(usize, Publish) -> Reply + Send + Sync>;

/// The scripted broker's answer to a publish.
enum Reply {
    /// PUBACK with this reason code.
    PubAck(u8),
    Nothing,
    /// DISCONNECT, Unspecified error.
    Disconnect,
}

impl From<Option<u8>> for Reply {
    fn from(reason: Option<u8>) -> Reply {
        reason.map_or(Reply::Nothing, Reply::PubAck)
    }
}

/// A publish as the scripted broker saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Publish {
    /// On the sink's status topic.
    Presence,
    /// An event.
    Event,
}

/// A broker that accepts every connection (CONNACK, success), answers pings, and answers each
/// publish as `answer` says.
fn scripted_broker(answer: Answer) -> RawServer {
    RawServer::start(Arc::new(move |s: &mut dyn Stream, connection| {
        serve(s, connection, &answer)
    }))
}

fn serve(s: &mut dyn Stream, connection: usize, answer: &Answer) {
    serve_mqtt(s, |packets| {
        let mut out = Vec::new();
        for (first, body) in packets {
            match first >> 4 {
                1 => out.extend_from_slice(&[0x20, 3, 0, 0, 0]),
                3 => {
                    let (kind, pkid) = read_publish(&body);
                    match answer(connection, kind) {
                        Reply::PubAck(reason) => {
                            out.extend_from_slice(&[0x40, 3, pkid[0], pkid[1], reason]);
                        }
                        Reply::Nothing => {}
                        Reply::Disconnect => {
                            out.extend_from_slice(&[0xE0, 2, 0x80, 0]);
                            return Some(out);
                        }
                    }
                }
                12 => out.extend_from_slice(&[0xD0, 0]),
                14 => return None,
                _ => {}
            }
        }
        Some(out)
    });
}

/// What a QoS 1 publish's body is for, and its packet id.
fn read_publish(body: &[u8]) -> (Publish, [u8; 2]) {
    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let topic = &body[2..2 + topic_len];
    let kind = if topic.ends_with(b"/status") {
        Publish::Presence
    } else {
        Publish::Event
    };
    (kind, [body[2 + topic_len], body[3 + topic_len]])
}

/// A setup whose one sink, `broker`, publishes to the scripted broker on `port`.
fn setup_for(port: u16, extra: &str) -> Setup {
    Setup::new(&format!(
        "[[sink]]\nname = \"broker\"\nurl = \"mqtt://127.0.0.1:{port}\"\n{extra}\n[sink.signing]\nscheme = \"none\"\n[sink.retry]\ninitial = \"20ms\"\nmax = \"200ms\"\nmax_attempts = 1\n"
    ))
}

#[test]
fn a_broker_over_its_quota_is_retried_like_http_429_and_nothing_becomes_a_dead_letter() {
    let refusals_left = Arc::new(AtomicUsize::new(5));
    let events_seen = Arc::new(AtomicUsize::new(0));
    let broker = {
        let (left, seen) = (refusals_left.clone(), events_seen.clone());
        scripted_broker(Arc::new(move |_, p| {
            Reply::from(match p {
                Publish::Presence => Some(0),
                Publish::Event => {
                    seen.fetch_add(1, Ordering::SeqCst);
                    let over = left
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    Some(if over { 0x97 } else { 0 })
                }
            })
        }))
    };
    // One attempt: a refusal that counted towards max_attempts would make a dead letter at once.
    let setup = setup_for(broker.port(), "max_in_flight = 1");
    let daemon = setup.start();
    for n in 0..3 {
        emit_one(&setup.socket(), "sensor.reading", json!({ "n": n }));
    }
    wait_until_or(
        Duration::from_secs(30),
        || setup.sink_status("broker")["delivered"] == 3,
        || format!("{}\n{}", setup.sink_status("broker"), daemon.log()),
    );
    let s = setup.sink_status("broker");
    assert_eq!(s["dead_letters"], 0, "{s}");
    assert_eq!(
        refusals_left.load(Ordering::SeqCst),
        0,
        "all five refusals were met"
    );
    assert_eq!(events_seen.load(Ordering::SeqCst), 3 + 5);
    assert!(
        daemon.log().contains("QuotaExceeded"),
        "the refusal is logged: {}",
        daemon.log()
    );
}

#[test]
fn a_presence_message_never_acknowledged_is_timed_out_and_the_sink_reconnects() {
    // The presence message waits forever; events are acknowledged.
    let broker = scripted_broker(Arc::new(|_, p| {
        Reply::from((p == Publish::Event).then_some(0))
    }));
    // With one publish in flight, the unacknowledged presence message holds the whole window.
    let setup = setup_for(broker.port(), "max_in_flight = 1\ntimeout = \"1s\"");
    let daemon = setup.start();
    wait_until(Duration::from_secs(10), "the first connection", || {
        broker.accepted() >= 1
    });
    let first = Instant::now();
    // Within the timeout (1 s) and a backoff (200 ms at most), with room for a slow machine.
    wait_until_or(
        Duration::from_secs(15),
        || broker.accepted() >= 2,
        || {
            format!(
                "no new connection {:?} after the first; the sink says {}",
                first.elapsed(),
                setup.sink_status("broker")
            )
        },
    );
    eprintln!(
        "the sink reconnected {} ms after its first connection",
        first.elapsed().as_millis()
    );
    let error = setup.sink_status("broker")["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("timed out") && error.contains("publish"),
        "{error}\n{}",
        daemon.log()
    );
}

/// A broker whose first connection answers the sink's events with a DISCONNECT and whose
/// second never answers them (the sink times the connection out); from the third on it
/// acknowledges everything. It counts the event publishes it saw and those it acknowledged.
fn broker_that_fails_twice_before_acknowledging(
    seen: Arc<AtomicUsize>,
    acknowledged: Arc<AtomicUsize>,
) -> RawServer {
    scripted_broker(Arc::new(move |connection, p| {
        if p == Publish::Presence {
            return Reply::PubAck(0);
        }
        seen.fetch_add(1, Ordering::SeqCst);
        match connection {
            0 => Reply::Disconnect,
            1 => Reply::Nothing,
            _ => {
                acknowledged.fetch_add(1, Ordering::SeqCst);
                Reply::PubAck(0)
            }
        }
    }))
}

#[test]
fn publishes_met_by_a_disconnect_or_left_unacknowledged_are_not_counted_delivered() {
    let seen = Arc::new(AtomicUsize::new(0));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let broker = broker_that_fails_twice_before_acknowledging(seen.clone(), acknowledged.clone());
    let setup = setup_for(broker.port(), "max_in_flight = 4\ntimeout = \"1s\"");
    let daemon = setup.start();
    let n = 10;
    for i in 0..n {
        emit_one(&setup.socket(), "sensor.reading", json!({ "n": i }));
    }
    wait_until_or(
        Duration::from_secs(30),
        || broker.accepted() >= 3,
        || format!("{}\n{}", setup.sink_status("broker"), daemon.log()),
    );
    // Nothing the first two connections took was acknowledged, so nothing they took counts:
    // every event is published again on the third and counted delivered only there.
    wait_until_or(
        Duration::from_secs(30),
        || setup.sink_status("broker")["delivered"] == n,
        || format!("{}\n{}", setup.sink_status("broker"), daemon.log()),
    );
    let s = setup.sink_status("broker");
    assert_eq!(
        (s["pending"].as_u64(), s["dead_letters"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    assert_eq!(broker.accepted(), 3, "{}", daemon.log());
    assert!(
        seen.load(Ordering::SeqCst) >= n + 2,
        "{} event publishes: each connection that failed took one at least",
        seen.load(Ordering::SeqCst)
    );
    // Every event went out again on the third connection: none was taken as done before.
    assert_eq!(acknowledged.load(Ordering::SeqCst), n);
    let log = daemon.log();
    assert!(log.contains("the broker disconnected"), "{log}");
    assert!(log.contains("answered no publish"), "{log}");
    // The outbox counted exactly the acknowledged ones: one delivery per event.
    let out = run(&setup.config, &["activity", "--sink", "broker", "--json"]);
    let activity: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let delivered = activity["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["outcome"] == "delivered")
        .count();
    assert_eq!(delivered, n, "{activity}");
}
