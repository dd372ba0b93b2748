//! Interoperability with implementations edgehook shares no code with: every request and MQTT
//! message edgehook sends verifies with the Python `svix` and `standardwebhooks` packages, with
//! either secret of a rotation, and `openssl` computes the same Standard Webhooks signature;
//! `edgehook verify` accepts what those libraries sign, under `webhook-` or `svix-` header
//! names, and rejects every tampering. (tests/signatures.rs covers the standardwebhooks
//! receiver over HTTP and Mender's scheme with openssl; tests/operator.rs `verify` with
//! standardwebhooks' `webhook-` headers.)

mod common;

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::broker::{Broker, Subscriber, mosquitto_available};
use common::webhook_libs::{LIBS, WebhookLibs, webhook_libs_available};
use common::*;
use edgehook::sinks::signing::{Scheme, generate_secret};
use serde_json::json;

/// Bodies that stress a verifier: unicode, escapes, nesting, and one near the size limit.
fn awkward_data() -> Vec<serde_json::Value> {
    vec![
        json!({}),
        json!("ünïcødé ✓ \"quoted\" \\ back\nslash\u{0001}"),
        json!({"nested": {"list": [1, 2.5, -3e10, null, true], "empty": ""}}),
        json!({"big": "x".repeat(48 * 1024)}),
    ]
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Checks one signed request with both libraries and both secrets, and that a changed body,
/// id or signature is refused.
fn check_with_libs(
    libs: &mut WebhookLibs,
    secrets: [&str; 2],
    headers: &[(String, String)],
    body: &[u8],
) {
    for lib in LIBS {
        for secret in secrets {
            if let Err(e) = libs.verify(lib, secret, headers, body) {
                panic!("{lib} refused what edgehook sent: {e}\n{headers:?}");
            }
        }
        let mut changed = body.to_vec();
        changed.push(b' ');
        assert!(
            libs.verify(lib, secrets[0], headers, &changed).is_err(),
            "{lib}: a changed body"
        );
        let other_id: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| match k.as_str() {
                "webhook-id" => (k.clone(), format!("{v}x")),
                _ => (k.clone(), v.clone()),
            })
            .collect();
        assert!(
            libs.verify(lib, secrets[0], &other_id, body).is_err(),
            "{lib}: a changed id"
        );
        let stranger = generate_secret(Scheme::Standard);
        assert!(
            libs.verify(lib, &stranger, headers, body).is_err(),
            "{lib}: another secret"
        );
    }
}

/// The signature headers of a received HTTP request, by their lower-case names.
fn signature_headers(req: &Request) -> Vec<(String, String)> {
    ["webhook-id", "webhook-timestamp", "webhook-signature"]
        .iter()
        .map(|k| {
            (
                k.to_string(),
                req.header(k).expect("a signature header").to_string(),
            )
        })
        .collect()
}

#[test]
fn svix_and_standardwebhooks_accept_every_http_request_and_mqtt_message_with_either_rotated_secret()
{
    if !webhook_libs_available() || !mosquitto_available() {
        return;
    }
    let previous = generate_secret(Scheme::Standard);
    let rotation = format!("previous_secrets = [\"{previous}\"]\n[sink.retry]");
    let receiver = Receiver::ok();
    let setup = Setup::new("");
    let broker = Broker::start(setup.dir.path(), "allow_anonymous true");
    // rumqttc takes packets up to 10 KiB unless told otherwise; the big body is 48 KiB.
    let sub = Subscriber::connect_with(broker.port, "edgehook/+/events/#", |o| {
        o.set_max_packet_size(Some(1 << 20));
    });
    let http = http_sink("web", &receiver.url(), SECRET, "").replace("[sink.retry]", &rotation);
    // The `data` format signs the bytes it sends, not the stored envelope.
    let data = http_sink("data", &receiver.url(), SECRET, "format = \"data\"")
        .replace("[sink.retry]", &rotation);
    let mqtt = http_sink("mq", &broker.url(), SECRET, "").replace("[sink.retry]", &rotation);
    setup.write_config(&format!("{http}{data}{mqtt}"));
    let _daemon = setup.start();
    let bodies = awkward_data();
    for d in &bodies {
        emit_one(&setup.socket(), "app.reading", d.clone());
    }
    let n = bodies.len();
    wait_until(Duration::from_secs(60), "every delivery", || {
        receiver.delivered_count() == 2 * n && sub.distinct_event_ids().len() == n
    });
    let mut libs = WebhookLibs::start();
    let secrets = [SECRET, previous.as_str()];
    for req in receiver.delivered() {
        let headers = signature_headers(&req);
        assert_eq!(
            headers[2].1.split(' ').count(),
            2,
            "one signature per secret"
        );
        check_with_libs(&mut libs, secrets, &headers, &req.body);
    }
    for m in sub.events() {
        let headers: Vec<(String, String)> = m
            .user_properties
            .iter()
            .filter(|(k, _)| k.starts_with("webhook-"))
            .cloned()
            .collect();
        assert_eq!(headers.len(), 3, "{:?}", m.user_properties);
        check_with_libs(&mut libs, secrets, &headers, &m.payload);
    }
}

#[test]
fn openssl_computes_the_standard_signature_edgehook_sends() {
    if !openssl_available() {
        return;
    }
    let receiver = Receiver::ok();
    let setup = Setup::new(&http_sink("web", &receiver.url(), SECRET, ""));
    let _daemon = setup.start();
    for d in awkward_data() {
        emit_one(&setup.socket(), "app.reading", d);
    }
    wait_until(Duration::from_secs(30), "every delivery", || {
        receiver.delivered_count() == awkward_data().len()
    });
    let key = hex::encode(B64.decode(SECRET.strip_prefix("whsec_").unwrap()).unwrap());
    for req in receiver.delivered() {
        let h = signature_headers(&req);
        let mut signed = format!("{}.{}.", h[0].1, h[1].1).into_bytes();
        signed.extend_from_slice(&req.body);
        let mac = hex::decode(openssl_hmac_sha256(&key, &signed)).expect("hex from openssl");
        assert_eq!(h[2].1, format!("v1,{}", B64.encode(mac)));
    }
}

/// `edgehook verify` with `headers` over `body`: its exit code and first line.
fn edgehook_verify(
    secret: &str,
    headers: &[(String, String)],
    body: &str,
) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, body).unwrap();
    let mut cmd = edgehook();
    cmd.args(["verify", "--secret", secret]);
    for (k, v) in headers {
        cmd.arg("--header").arg(format!("{k}: {v}"));
    }
    let out = output_within(cmd.arg(&file), COMMAND_LIMIT);
    let said = String::from_utf8_lossy(&out.stdout);
    (
        out.status.code(),
        said.lines().next().unwrap_or_default().to_string(),
    )
}

fn named(prefix: &str, id: &str, ts: u64, sig: &str) -> Vec<(String, String)> {
    vec![
        (format!("{prefix}-id"), id.to_string()),
        (format!("{prefix}-timestamp"), ts.to_string()),
        (format!("{prefix}-signature"), sig.to_string()),
    ]
}

#[test]
fn edgehook_verify_accepts_what_svix_and_standardwebhooks_sign_and_rejects_tampering() {
    if !webhook_libs_available() {
        return;
    }
    let mut libs = WebhookLibs::start();
    let secret = generate_secret(Scheme::Standard);
    let ts = now();
    let valid = (Some(0), "valid".to_string());
    for lib in LIBS {
        for (n, data) in awkward_data().iter().enumerate() {
            let body = json!({"id": format!("msg_{n}"), "data": data}).to_string();
            let id = format!("msg_{lib}_{n}");
            let sig = libs.sign(lib, &secret, &id, ts, &body);
            // Svix delivers under `svix-` names, the standard under `webhook-` ones.
            for prefix in ["webhook", "svix"] {
                let h = named(prefix, &id, ts, &sig);
                assert_eq!(
                    edgehook_verify(&secret, &h, &body),
                    valid,
                    "{lib} {prefix} {n}"
                );
            }
        }
        let body = r#"{"type":"app.reading","data":{"n":1}}"#;
        let sig = libs.sign(lib, &secret, "msg_t", ts, body);
        // The secret given as its base64 body alone, as both libraries accept it.
        let bare = secret.strip_prefix("whsec_").unwrap();
        assert_eq!(
            edgehook_verify(bare, &named("svix", "msg_t", ts, &sig), body),
            valid
        );
        let refused = |h: Vec<(String, String)>, b: &str, what: &str| {
            let (code, said) = edgehook_verify(&secret, &h, b);
            assert_eq!(code, Some(1), "{lib}: {what}: {said}");
            assert!(said.starts_with("invalid:"), "{said}");
        };
        refused(
            named("webhook", "msg_t", ts, &sig),
            &body.replace('1', "2"),
            "a changed body",
        );
        refused(named("webhook", "msg_u", ts, &sig), body, "a changed id");
        refused(
            named("webhook", "msg_t", ts + 1, &sig),
            body,
            "a changed timestamp",
        );
        let stale = ts - 3600;
        let stale_sig = libs.sign(lib, &secret, "msg_t", stale, body);
        refused(
            named("svix", "msg_t", stale, &stale_sig),
            body,
            "an hour-old timestamp",
        );
        let mut flipped = sig.clone().into_bytes();
        let last = flipped.len() - 2;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        refused(
            named("svix", "msg_t", ts, &flipped),
            body,
            "a changed signature",
        );
    }
}
