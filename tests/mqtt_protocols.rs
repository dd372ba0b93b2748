//! Both MQTT versions against a real Mosquitto (SPEC §15): a `protocol = "3.1.1"` sink's
//! events arrive signed in their payload, `{"headers":{…},"body":"…"}`, verifiable over the
//! body's UTF-8 bytes, across a broker restart, and the daemon never counts delivered what the
//! subscriber did not get.

mod common;

use std::time::{Duration, SystemTime};

use common::broker::*;
use common::webhook_libs::{LIBS, WebhookLibs, webhook_libs_available};
use common::*;

fn sink(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[[sink]]\nname = \"{name}\"\nurl = \"{url}\"\n{extra}\n[sink.signing]\nscheme = \"standard\"\nsecret = \"{SECRET}\"\n[sink.retry]\ninitial = \"50ms\"\nmax = \"1s\"\n"
    )
}

/// A 3.1.1 message's headers and signed body.
fn unwrap_3_1_1(m: &Message) -> (Vec<(String, String)>, String) {
    let v = m.json();
    let headers = v["headers"]
        .as_object()
        .unwrap_or_else(|| panic!("no headers in {v}"))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("a string header").to_string()))
        .collect();
    let body = v["body"]
        .as_str()
        .expect("the body as a string")
        .to_string();
    (headers, body)
}

#[test]
fn a_3_1_1_sink_s_events_arrive_signed_in_their_payload_across_a_broker_restart() {
    if !mosquitto_available() {
        return;
    }
    let setup = Setup::new("");
    let mut broker = Broker::start(setup.dir.path(), "allow_anonymous true");
    let sub = Subscriber::connect(broker.port, "edgehook/+/events/#");
    setup.write_config(&sink("old", &broker.url(), "protocol = \"3.1.1\""));
    let _daemon = setup.start();
    let n = scaled(1000);
    let ids = emit_pipelined(&setup.socket(), 0, n, "sensor.reading", 64);
    // What the daemon counts delivered reaches the subscriber: the broker acknowledges before
    // it forwards, so the subscriber may trail by what is on its way, never for long.
    let ahead = || {
        let delivered = setup.sink_status("old")["delivered"].as_u64().unwrap_or(0) as usize;
        wait_until(
            Duration::from_secs(10),
            "what was counted delivered",
            || sub.events().len() >= delivered,
        );
        sub.events().len()
    };
    wait_until(Duration::from_secs(60), "progress", || ahead() >= n / 3);
    broker.restart();
    wait_until(Duration::from_secs(120), "every event", || {
        ahead();
        let got: std::collections::HashSet<String> = sub
            .events()
            .iter()
            .map(|m| {
                let body = unwrap_3_1_1(m).1;
                let v: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
                v["id"].as_str().expect("an id").to_string()
            })
            .collect();
        ids.iter().all(|id| got.contains(id))
    });
    let device = setup.status()["device"]["id"].as_str().unwrap().to_string();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut libs = webhook_libs_available().then(WebhookLibs::start);
    for m in sub.events() {
        assert_eq!(m.content_type, None, "3.1.1 has no properties");
        assert!(m.user_properties.is_empty());
        let (headers, body) = unwrap_3_1_1(&m);
        assert!(
            headers.contains(&("edgehook-device-id".to_string(), device.clone())),
            "{headers:?}"
        );
        edgehook::sinks::signing::verify(
            edgehook::sinks::signing::Scheme::Standard,
            SECRET,
            &headers,
            body.as_bytes(),
            now,
            Duration::from_secs(300),
        )
        .unwrap_or_else(|e| panic!("{e}: {headers:?} {body}"));
        if let Some(libs) = libs.as_mut() {
            for lib in LIBS {
                libs.verify(lib, SECRET, &headers, body.as_bytes())
                    .unwrap_or_else(|e| panic!("{lib}: {e}"));
            }
        }
    }
    // Mosquitto names the version each client connected with: p2 is 3.1.1.
    let log = broker.log();
    let connects: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("New client connected") && l.contains(" as edgehook-"))
        .collect();
    assert!(
        !connects.is_empty() && connects.iter().all(|l| l.contains("(p2,")),
        "{connects:?}"
    );
    wait_until(Duration::from_secs(10), "nothing pending", || {
        setup.sink_status("old")["pending"] == 0
    });
    // `edgehook test` publishes the same way, and says where the headers went.
    let out = run(&setup.config, &["test", "old"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("Headers sent (in the MQTT 3.1.1 payload):"),
        "{text}"
    );
    assert!(text.contains("✓ delivered"), "{text}");
}

#[test]
fn a_3_1_1_broker_refusing_the_credentials_is_named_in_the_sink_s_error() {
    if !mosquitto_available() {
        return;
    }
    let setup = Setup::new("");
    let broker = Broker::start(setup.dir.path(), "allow_anonymous false");
    setup.write_config(&sink(
        "old",
        &broker.url(),
        "protocol = \"3.1.1\"\nusername = \"u\"\npassword = \"wrong\"",
    ));
    let _daemon = setup.start();
    emit_one(&setup.socket(), "sensor.reading", serde_json::json!(1));
    wait_until(Duration::from_secs(20), "the refusal", || {
        setup.sink_status("old")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("the broker refused the connection"))
    });
    let s = setup.sink_status("old");
    assert_eq!(s["pending"], 1, "{s}");
}

/// A Mosquitto with a WebSockets-over-TLS listener beside its plain one, and the port of the
/// WebSockets one.
fn broker_with_wss(setup: &Setup, pki: &std::path::Path) -> (Broker, u16) {
    let ws = free_port();
    let broker = Broker::start(
        setup.dir.path(),
        &format!(
            "allow_anonymous true\nlistener {ws} 127.0.0.1\nprotocol websockets\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key",
            pki.display()
        ),
    );
    (broker, ws)
}

#[test]
fn wss_carries_both_versions_through_a_websockets_listener_and_its_tls() {
    if !mosquitto_available() || !openssl_available() {
        return;
    }
    let setup = Setup::new("");
    let pki = setup.dir.path().join("pki");
    make_pki(&pki);
    let (broker, ws) = broker_with_wss(&setup, &pki);
    let sub = Subscriber::connect(broker.port, "+/+/events/#");
    let url = format!("wss://127.0.0.1:{ws}/mqtt");
    let ca = format!("ca_file = \"{}/ca.pem\"", pki.display());
    setup.write_config(&format!(
        "{}{}{}",
        sink("v5", &url, &format!("{ca}\ntopic = \"v5/{{device_id}}/events/{{type}}\"\nclient_id = \"ws-v5\"")),
        sink(
            "v311",
            &url,
            &format!("{ca}\nprotocol = \"3.1.1\"\ntopic = \"v311/{{device_id}}/events/{{type}}\"\nclient_id = \"ws-v311\"\nstatus_topic = \"v311/status\"")
        ),
        sink("untrusted", &url, "client_id = \"ws-untrusted\"\nstatus_topic = \"untrusted/status\""),
    ));
    let _daemon = setup.start();
    let n = scaled(200);
    emit_pipelined(&setup.socket(), 0, n, "sensor.reading", 16);
    wait_until(
        Duration::from_secs(60),
        "every event over both versions",
        || sub.event_count() >= 2 * n,
    );
    let device = setup.status()["device"]["id"].as_str().unwrap().to_string();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let verify = |headers: &[(String, String)], body: &[u8]| {
        edgehook::sinks::signing::verify(
            edgehook::sinks::signing::Scheme::Standard,
            SECRET,
            headers,
            body,
            now,
            Duration::from_secs(300),
        )
    };
    for m in sub.events() {
        if m.topic.starts_with("v5/") {
            verify(&m.user_properties, &m.payload).expect("a v5 message verifies");
        } else {
            let (headers, body) = unwrap_3_1_1(&m);
            verify(&headers, body.as_bytes()).expect("a 3.1.1 message verifies");
        }
        assert!(
            m.topic
                .ends_with(&format!("{device}/events/sensor.reading"))
        );
    }
    for name in ["v5", "v311"] {
        wait_until(Duration::from_secs(10), "nothing pending", || {
            setup.sink_status(name)["delivered"] == n as u64
        });
    }
    // Without the test CA the broker's certificate is refused, over WebSockets as over TCP.
    wait_until(Duration::from_secs(20), "the refusal", || {
        setup.sink_status("untrusted")["last_error"].is_string()
    });
    let s = setup.sink_status("untrusted");
    assert_eq!(s["pending"], n as u64, "{s}");
    let error = s["last_error"].as_str().unwrap();
    assert!(
        error.contains("WebSocket") || error.contains("TLS"),
        "{error}"
    );
    let log = broker.log();
    for (client, p) in [("ws-v5", "(p5,"), ("ws-v311", "(p2,")] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!(" as {client} ")) && l.contains(p)),
            "{client} {p}: {log}"
        );
    }
}
