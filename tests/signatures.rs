//! What edgehook sends is accepted by independent implementations: the Standard Webhooks
//! reference library (Python) and Mender-style HMAC computed by `openssl`.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

/// Fails in CI when a tool is missing; elsewhere says why the test cannot run.
fn tool_available(what: &str, check: &mut Command) -> bool {
    let ok = check
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let why = format!("{what} is not installed (the README's test command installs it)");
        if std::env::var_os("CI").is_some() {
            panic!("{why}");
        }
        eprintln!("cannot run this test here: {why}");
    }
    ok
}

#[test]
fn the_standard_webhooks_reference_library_accepts_what_edgehook_sends_including_rotation() {
    if !tool_available(
        "python3 with standardwebhooks",
        Command::new("python3").args(["-c", "import standardwebhooks"]),
    ) {
        return;
    }
    let old = edgehook::sinks::signing::generate_secret(edgehook::sinks::signing::Scheme::Standard);
    // The receiver knows only the previous secret: rotation must still verify.
    let mut py = ReferenceReceiver::start(&old);
    let sink = http_sink("ref", &py.url(), SECRET, "").replace(
        "[sink.retry]",
        &format!("previous_secrets = [\"{old}\"]\n[sink.retry]"),
    );
    let setup = Setup::new(&sink);
    let _daemon = setup.start();
    let ids: Vec<String> = (0..20)
        .map(|n| {
            emit_one(
                &setup.socket(),
                "sensor.reading",
                json!({"n": n, "s": "ünïcødé \"q\""}),
            )
        })
        .collect();
    let mut got = Vec::new();
    while got.len() < ids.len() {
        let line = py.next_line();
        assert!(
            line.starts_with("ok "),
            "the reference library refused: {line}"
        );
        got.push(line[3..].to_string());
    }
    assert_eq!(got, ids);
}

#[test]
fn openssl_computes_the_same_mender_signature_for_every_body() {
    if !tool_available("openssl", Command::new("openssl").arg("version")) {
        return;
    }
    let receiver = Receiver::ok();
    let secret = "6d656e6465722d7765626863f06b2d736563726574";
    let sink = format!(
        "[[sink]]\nname = \"mender\"\nurl = \"{}\"\n[sink.signing]\nscheme = \"mender\"\nsecret = \"{secret}\"\n",
        receiver.url()
    );
    let setup = Setup::new(&sink);
    let _daemon = setup.start();
    for n in 0..5 {
        emit_one(&setup.socket(), "sensor.reading", json!({"n": n}));
    }
    wait_until(Duration::from_secs(10), "5 deliveries", || {
        receiver.delivered_count() == 5
    });
    for req in receiver.delivered() {
        let expected = openssl_hmac_sha256(secret, &req.body);
        assert_eq!(req.header("X-Men-Signature"), Some(expected.as_str()));
        assert!(req.header("webhook-signature").is_none());
    }
}

#[test]
fn scheme_none_sends_no_signature_headers() {
    let receiver = Receiver::ok();
    let setup = Setup::new(&format!(
        "[[sink]]\nname = \"plain\"\nurl = \"{}\"\nheaders = {{ \"X-Api-Key\" = \"k1\" }}\n[sink.signing]\nscheme = \"none\"\n",
        receiver.url()
    ));
    let _daemon = setup.start();
    emit_one(&setup.socket(), "sensor.reading", json!({}));
    wait_until(Duration::from_secs(10), "the delivery", || {
        receiver.delivered_count() == 1
    });
    let req = &receiver.delivered()[0];
    assert!(req.header("webhook-signature").is_none() && req.header("X-Men-Signature").is_none());
    assert_eq!(req.header("X-Api-Key"), Some("k1"));
}
