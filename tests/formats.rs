//! Body formats against real receivers: `data` sends the event's data byte for byte under a
//! signature that verifies, `slack` sends Slack incoming-webhook messages, and a retry sends
//! the same bytes as the first attempt.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use edgehook::client::Reply;
use serde_json::{Value, json};

const MENDER_SECRET: &str = "4e1243bd22c66e76c2ba9eddc1f91394e57f9f83";

/// Emits a raw request line; returns the acknowledged id.
fn emit_raw(setup: &Setup, line: &str) -> String {
    let mut c = setup.client();
    c.send_raw(format!("{line}\n").as_bytes()).unwrap();
    match c.recv().unwrap() {
        Reply::Ok(v) => v.id.unwrap(),
        Reply::Err { code, error } => panic!("refused: {code}: {error}"),
    }
}

#[test]
fn a_data_sink_sends_the_emitted_data_byte_for_byte_signed_over_the_bytes_sent() {
    let standard = Receiver::ok();
    let mender = Receiver::ok();
    let setup = Setup::new(&format!(
        "{}[[sink]]\nname = \"data-mender\"\nurl = \"{}\"\nformat = \"data\"\n[sink.signing]\nscheme = \"mender\"\nsecret = \"{MENDER_SECRET}\"\n",
        http_sink("data", &standard.url(), SECRET, "format = \"data\""),
        mender.url()
    ));
    let _daemon = setup.start();
    let data = [
        r#"{"z":1.50,"a":[true,null,"x y"],"u":"ünï\"cødé\"","e":1e3}"#,
        r#"[1,2,3]"#,
        r#""just a string""#,
        "42",
    ];
    let ids: Vec<String> = data
        .iter()
        .map(|d| emit_raw(&setup, &format!(r#"{{"type":"plant.reading","data":{d}}}"#)))
        .collect();
    wait_until(Duration::from_secs(10), "the deliveries", || {
        standard.delivered_count() == data.len() && mender.delivered_count() == data.len()
    });
    for (receiver, verify) in [(&standard, true), (&mender, false)] {
        for ((req, sent), id) in receiver.delivered().iter().zip(data).zip(&ids) {
            assert_eq!(
                String::from_utf8_lossy(&req.body),
                sent,
                "the body is the data"
            );
            assert_eq!(req.header("webhook-id"), Some(id.as_str()));
            assert_eq!(req.header("edgehook-event-type"), Some("plant.reading"));
            assert_eq!(req.header("content-type"), Some("application/json"));
            if verify {
                verify_standard(req, SECRET).unwrap();
            } else if openssl_available() {
                let expected = openssl_hmac_sha256(MENDER_SECRET, sent.as_bytes());
                assert_eq!(req.header("X-Men-Signature"), Some(expected.as_str()));
            } else {
                panic!("openssl is needed (scripts/test installs it)");
            }
        }
    }
}

#[test]
fn slack_sinks_send_slack_messages_with_their_channel_username_and_icon() {
    let emoji = Receiver::ok();
    let image = Receiver::ok();
    let setup = Setup::new(&format!(
        "[device]\nid = \"raspberrypi-17\"\n\
         [[sink]]\nname = \"chat\"\nurl = \"{}\"\nevents = [\"*\"]\nformat = \"slack\"\nchannel = \"#devices\"\nusername = \"edgehook\"\nicon_emoji = \":satellite:\"\n[sink.signing]\nscheme = \"none\"\n\
         [[sink]]\nname = \"chat-image\"\nurl = \"{}\"\nevents = [\"door.*\"]\nformat = \"slack\"\nicon_url = \"https://example.com/edge.png\"\n[sink.signing]\nscheme = \"none\"\n",
        emoji.url(),
        image.url()
    ));
    let _daemon = setup.start();
    let provisioned = wait_for_text(&emoji, 1)[0].clone();
    let status = run(&setup.config, &["set-status", "maintenance"]);
    assert!(status.status.success());
    let door = emit_one(&setup.socket(), "door.opened", json!({"door": "rear <&>"}));
    let messages = wait_for_text(&emoji, 3);
    let bodies: Vec<Value> = emoji.delivered().iter().map(Request::json).collect();
    assert!(
        provisioned.starts_with("raspberrypi-17: provisioned (status accepted) (event "),
        "{provisioned}"
    );
    assert!(
        messages[1].starts_with("raspberrypi-17: status changed to maintenance (event "),
        "{}",
        messages[1]
    );
    assert_eq!(
        messages[2],
        format!("raspberrypi-17: door.opened {{\"door\":\"rear &lt;&amp;&gt;\"}} (event {door})")
    );
    for (body, req) in bodies.iter().zip(emoji.delivered()) {
        let id = req.header("webhook-id").unwrap();
        assert!(
            body["text"]
                .as_str()
                .unwrap()
                .ends_with(&format!("(event {id})"))
        );
        assert_eq!(body["channel"], "#devices");
        assert_eq!(body["username"], "edgehook");
        assert_eq!(body["icon_emoji"], ":satellite:");
        assert!(body.get("icon_url").is_none(), "{body}");
        assert_eq!(
            body.as_object().unwrap().len(),
            4,
            "only Slack's own fields: {body}"
        );
    }
    wait_until(Duration::from_secs(10), "the image sink's message", || {
        image.delivered_count() == 1
    });
    let body = image.delivered()[0].json();
    assert_eq!(
        body,
        json!({
            "text": format!("raspberrypi-17: door.opened {{\"door\":\"rear &lt;&amp;&gt;\"}} (event {door})"),
            "icon_url": "https://example.com/edge.png",
        })
    );
}

/// Waits for `n` messages at `receiver`; returns their texts.
fn wait_for_text(receiver: &Receiver, n: usize) -> Vec<String> {
    wait_until(Duration::from_secs(10), "Slack messages", || {
        receiver.delivered_count() >= n
    });
    receiver
        .delivered()
        .iter()
        .map(|r| r.json()["text"].as_str().expect("a text").to_string())
        .collect()
}

#[test]
fn a_retry_sends_the_same_bytes_as_the_first_attempt_in_every_format() {
    // Each event is refused twice (503) by each sink's path, then taken.
    let receiver = Receiver::start(Arc::new(|req: &Request, before: &[Request]| {
        let id = req.header("webhook-id");
        let tries = before
            .iter()
            .filter(|r| r.path == req.path && r.header("webhook-id") == id)
            .count();
        Response::status(if tries < 2 { 503 } else { 200 })
    }));
    let url = receiver.url();
    let setup = Setup::new(&format!(
        "{}{}[[sink]]\nname = \"slack\"\nurl = \"{url}?f=slack\"\nformat = \"slack\"\nchannel = \"#c\"\n[sink.signing]\nscheme = \"none\"\n[sink.retry]\ninitial = \"20ms\"\nmax = \"100ms\"\n",
        http_sink("envelope", &format!("{url}?f=envelope"), SECRET, ""),
        http_sink(
            "data",
            &format!("{url}?f=data"),
            SECRET,
            "format = \"data\""
        ),
    ));
    let _daemon = setup.start();
    let ids: Vec<String> = (0..5)
        .map(|n| {
            emit_one(
                &setup.socket(),
                "sensor.reading",
                json!({"n": n, "t": 20.5}),
            )
        })
        .collect();
    wait_until(
        Duration::from_secs(30),
        "every event in every format",
        || receiver.delivered_count() == 15,
    );
    let mut attempts: HashMap<(String, String), Vec<Vec<u8>>> = HashMap::new();
    for req in receiver.requests() {
        let key = (
            req.path.clone(),
            req.header("webhook-id").unwrap().to_string(),
        );
        attempts.entry(key).or_default().push(req.body.clone());
    }
    assert_eq!(attempts.len(), 15);
    for ((path, id), bodies) in &attempts {
        assert!(ids.contains(id), "{id}");
        assert_eq!(
            bodies.len(),
            3,
            "{path} {id}: two refusals and the delivery"
        );
        assert!(
            bodies.iter().all(|b| b == &bodies[0]),
            "{path} {id}: a retry sent other bytes"
        );
    }
}
