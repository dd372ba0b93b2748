//! The operator's commands, run as processes: `status`, `activity`, `dead-letters`,
//! `redeliver`, `resume`, `test`, `verify`, `secret generate`, and live reload.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn answering(status: u16) -> Receiver {
    Receiver::start(Arc::new(move |_, _| Response::status(status)))
}

fn json_of(setup: &Setup, args: &[&str]) -> Value {
    let out = run(&setup.config, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?} is not JSON: {e}"))
}

fn text_of(setup: &Setup, args: &[&str]) -> String {
    let out = run(&setup.config, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn every_operator_command_reads_a_database_with_deliveries_in_every_state() {
    let ok = Receiver::ok();
    let bad = answering(400);
    let flaky = answering(503);
    let gone = answering(410);
    let sinks = |with_old: bool| {
        let mut s = http_sink("ok", &ok.url(), SECRET, "")
            + &http_sink("bad", &bad.url(), SECRET, "")
            + &http_sink("flaky", &flaky.url(), SECRET, "")
            + &http_sink("gone", &gone.url(), SECRET, "")
            + &http_sink("off", &ok.url(), SECRET, "enabled = false");
        if with_old {
            s += &http_sink("old", &ok.url(), SECRET, "");
        }
        s.replace("max_attempts = 3", "max_attempts = 2")
    };
    let setup = Setup::new(&sinks(true));
    let mut daemon = setup.start();
    let ids: Vec<String> = (0..3)
        .map(|n| emit_one(&setup.socket(), "sensor.reading", json!({"n": n})))
        .collect();
    wait_until(
        Duration::from_secs(30),
        "every sink to reach its state",
        || {
            let s = setup.status();
            let sink = |n: &str| {
                s["sinks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|x| x["name"] == n)
                    .cloned()
                    .unwrap()
            };
            sink("ok")["delivered"] == 3
                && sink("old")["delivered"] == 3
                && sink("bad")["dead_letters"] == 3
                && sink("flaky")["failed_attempts"].as_i64() >= Some(2)
                && sink("gone")["state"] == "gone"
        },
    );
    // `old` goes from the config: its queue stays, orphaned.
    setup.write_config(&sinks(false));
    daemon.hup();
    wait_until(Duration::from_secs(10), "the reload", || {
        daemon.log().contains("Reloaded")
    });
    // A reload starts every sink afresh; wait until the failing ones have failed again.
    wait_until(
        Duration::from_secs(20),
        "the states after the reload",
        || {
            let s = setup.status();
            let state = |n: &str| {
                s["sinks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|x| x["name"] == n)
                    .map(|x| x["state"].clone())
            };
            state("flaky") == Some(json!("backing-off")) && state("gone") == Some(json!("gone"))
        },
    );

    let status = setup.status();
    let sink = |n: &str| -> Value {
        status["sinks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("no sink {n}"))
    };
    assert_eq!(status["daemon"]["running"], true);
    assert_eq!(sink("ok")["state"], "active");
    assert_eq!(sink("ok")["pending"], 0);
    assert_eq!(sink("ok")["oldest_pending_age_s"], Value::Null);
    assert!(sink("ok")["last_success"].is_string());
    assert_eq!(sink("bad")["dead_letters"], 3);
    assert_eq!(sink("bad")["pending"], 0);
    assert!(
        sink("bad")["last_error"]
            .as_str()
            .unwrap()
            .contains("HTTP 400")
    );
    assert_eq!(sink("flaky")["state"], "backing-off");
    assert_eq!(sink("flaky")["pending"], 3);
    assert!(sink("flaky")["oldest_pending_age_s"].as_i64().is_some());
    assert!(sink("flaky")["last_error_at"].is_string());
    assert_eq!(sink("gone")["state"], "gone");
    assert_eq!(sink("off")["state"], "disabled");
    assert_eq!(sink("old")["state"], "orphaned");
    let table = text_of(&setup, &["status"]);
    for word in [
        "SINK",
        "active",
        "backing-off",
        "gone",
        "disabled",
        "orphaned",
    ] {
        assert!(table.contains(word), "status table lacks {word}:\n{table}");
    }

    // activity: every outcome, with codes and latencies, newest first.
    let activity = json_of(&setup, &["activity", "--limit", "200", "--json"]);
    let attempts = activity["attempts"].as_array().unwrap();
    let of = |sink: &str, outcome: &str| {
        attempts
            .iter()
            .filter(|a| a["sink"] == sink && a["outcome"] == outcome)
            .count()
    };
    assert_eq!(of("ok", "delivered"), 3);
    assert_eq!(of("bad", "retry"), 3);
    assert_eq!(of("bad", "dead"), 3);
    assert!(of("flaky", "retry") >= 2);
    assert!(of("gone", "retry") >= 1);
    for a in attempts {
        for key in [
            "time",
            "at_ms",
            "sink",
            "event_id",
            "event_type",
            "outcome",
            "code",
            "latency_ms",
            "error",
        ] {
            assert!(a.get(key).is_some(), "{key} missing in {a}");
        }
        let expected_code = match a["sink"].as_str().unwrap() {
            "ok" | "old" => 200,
            "bad" => 400,
            "flaky" => 503,
            "gone" => 410,
            other => panic!("activity for {other}"),
        };
        assert_eq!(a["code"], expected_code, "{a}");
        assert!(a["latency_ms"].as_u64().is_some(), "{a}");
        assert!(ids.contains(&a["event_id"].as_str().unwrap().to_string()));
        assert_eq!(a["event_type"], "sensor.reading");
        humantime::parse_rfc3339(a["time"].as_str().unwrap()).unwrap();
    }
    let at: Vec<i64> = attempts
        .iter()
        .map(|a| a["at_ms"].as_i64().unwrap())
        .collect();
    assert!(at.windows(2).all(|w| w[0] >= w[1]), "newest first");
    let only_bad = json_of(
        &setup,
        &["activity", "--sink", "bad", "--limit", "2", "--json"],
    );
    let only_bad = only_bad["attempts"].as_array().unwrap();
    assert_eq!(only_bad.len(), 2);
    assert!(only_bad.iter().all(|a| a["sink"] == "bad"));
    let table = text_of(&setup, &["activity", "--sink", "bad"]);
    assert!(table.starts_with("TIME"), "{table}");
    assert!(table.contains("rejected: HTTP 400 Bad Request"), "{table}");

    // dead letters, with their reasons.
    let dead = json_of(&setup, &["dead-letters", "--json"]);
    let dead = dead["dead_letters"].as_array().unwrap();
    assert_eq!(dead.len(), 3);
    for (d, id) in dead.iter().zip(&ids) {
        assert_eq!(d["sink"], "bad");
        assert_eq!(&d["id"], id);
        assert_eq!(d["type"], "sensor.reading");
        assert_eq!(d["reason"], "rejected: HTTP 400 Bad Request");
        assert_eq!(d["attempts"], 2);
        humantime::parse_rfc3339(d["dead_at"].as_str().unwrap()).unwrap();
    }
    assert!(text_of(&setup, &["dead-letters", "--sink", "bad"]).contains("rejected"));
    assert_eq!(
        json_of(&setup, &["dead-letters", "--sink", "ok", "--json"]),
        json!({"dead_letters": []})
    );

    // redeliver: one while the daemon is stopped (straight into the file), the rest through
    // the daemon; an id that is not a dead letter is reported.
    bad.set_behaviour(Arc::new(|_, _| Response::status(200)));
    assert_eq!(daemon.terminate(), Some(0));
    let paused = setup.status();
    assert_eq!(paused["daemon"]["running"], false);
    assert!(
        paused["sinks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["name"] == "ok")
            .all(|s| s["state"] == "paused")
    );
    let out = run(&setup.config, &["redeliver", "--sink", "bad", &ids[0]]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1 dead letter(s) back in their queues"
    );
    let daemon = setup.start();
    wait_until(Duration::from_secs(20), "the offline redelivery", || {
        bad.delivered_ids().contains(&ids[0])
    });
    let out = run(&setup.config, &["redeliver", "no-such-id"]);
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-id"));
    let out = run(&setup.config, &["redeliver"]);
    assert_eq!(out.status.code(), Some(64), "--all or ids are required");
    assert_eq!(
        text_of(&setup, &["redeliver", "--all"]).trim(),
        "2 dead letter(s) back in their queues"
    );
    wait_until(Duration::from_secs(20), "the redeliveries", || {
        bad.delivered_count() == 3
    });
    assert_eq!(bad.delivered_ids(), ids, "redelivered in outbox order");
    assert_eq!(setup.sink_status("bad")["dead_letters"], 0);

    // resume: a sink paused by 410 goes on once its receiver is back.
    gone.set_behaviour(Arc::new(|_, _| Response::status(200)));
    assert_eq!(
        text_of(&setup, &["resume", "gone"]).trim(),
        "Sink gone resumed"
    );
    wait_until(
        Duration::from_secs(20),
        "the resumed sink to deliver",
        || {
            let s = setup.sink_status("gone");
            s["delivered"] == 3 && s["state"] == "active"
        },
    );
    assert_eq!(gone.delivered_count(), 3);
    assert_eq!(
        text_of(&setup, &["resume", "gone"]).trim(),
        "Sink gone was not paused"
    );
    let out = run(&setup.config, &["resume", "nope"]);
    assert_eq!(out.status.code(), Some(65));
    drop(daemon);
}

/// Signs like the reference Standard Webhooks library (Python).
fn python_sign(secret: &str, id: &str, ts: u64, body: &str) -> String {
    let script = "import sys, datetime\nfrom standardwebhooks.webhooks import Webhook\n\
        s, i, t, b = sys.argv[1:5]\n\
        print(Webhook(s).sign(i, datetime.datetime.fromtimestamp(int(t), tz=datetime.timezone.utc), b))";
    let out = std::process::Command::new("python3")
        .args(["-c", script, secret, id, &ts.to_string(), body])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the standardwebhooks package is needed (scripts/test installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn verify(args: &[&str], body: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, body).unwrap();
    let out = output_within(
        edgehook().arg("verify").args(args).arg(&file),
        COMMAND_LIMIT,
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn verify_accepts_independent_signatures_and_rejects_every_kind_of_tampering() {
    let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let body = r#"{"email":"test@example.com","username":"test_user"}"#;
    let ts = now();
    let sig = python_sign(secret, "msg_1", ts, body);
    let ts_text = ts.to_string();
    let args = |secret: &str, id: &str, ts: &str, sig: &str| -> Vec<String> {
        vec![
            "--secret".into(),
            secret.into(),
            "--header".into(),
            format!("webhook-id: {id}"),
            "--header".into(),
            format!("webhook-timestamp: {ts}"),
            "--header".into(),
            format!("webhook-signature: {sig}"),
        ]
    };
    let check = |a: Vec<String>, body: &str| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        verify(&a, body)
    };
    assert_eq!(
        check(args(secret, "msg_1", &ts_text, &sig), body),
        (Some(0), "valid".into())
    );
    // A rotated header: the first signature is of another secret.
    let other = python_sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_1", ts, body);
    assert_eq!(
        check(
            args(secret, "msg_1", &ts_text, &format!("{other} {sig}")),
            body
        )
        .0,
        Some(0)
    );
    let changed_body = body.replace("test_user", "test_usr");
    let (code, said) = check(args(secret, "msg_1", &ts_text, &sig), &changed_body);
    assert_eq!(
        (code, said.as_str()),
        (Some(1), "invalid: no signature matches the body")
    );
    let (code, _) = check(args(secret, "msg_2", &ts_text, &sig), body);
    assert_eq!(code, Some(1), "a changed id");
    let stale = ts - 600;
    let stale_sig = python_sign(secret, "msg_1", stale, body);
    let (code, said) = check(args(secret, "msg_1", &stale.to_string(), &stale_sig), body);
    assert_eq!(code, Some(1));
    assert!(said.contains("outside the tolerance"), "{said}");
    let mut wide = args(secret, "msg_1", &stale.to_string(), &stale_sig);
    wide.extend(["--tolerance".into(), "15m".into()]);
    assert_eq!(check(wide, body).0, Some(0), "within a wider tolerance");
    let (code, _) = check(
        args(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_1",
            &ts_text,
            &sig,
        ),
        body,
    );
    assert_eq!(code, Some(1), "a wrong secret");

    // The fixture's known answer, whatever today's date.
    let known = args(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265330",
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    );
    let mut k = known.clone();
    k.extend(["--tolerance".into(), "100000d".into()]);
    assert_eq!(check(k, r#"{"test": 2432232314}"#).0, Some(0));

    // Mender's scheme: HMAC-SHA256 with the hex-decoded secret, as openssl computes it.
    if !openssl_available() {
        return;
    }
    let key = "4e1243bd22c66e76c2ba9eddc1f91394e57f9f83";
    let mac = openssl_hmac_sha256(key, body.as_bytes());
    let mender = |b: &str, k: &str| {
        verify(
            &[
                "--scheme",
                "mender",
                "--secret",
                k,
                "--header",
                &format!("X-Men-Signature: {mac}"),
            ],
            b,
        )
        .0
    };
    assert_eq!(mender(body, key), Some(0));
    assert_eq!(mender(&changed_body, key), Some(1));
    assert_eq!(mender(body, &"ab".repeat(20)), Some(1));
}

#[test]
fn secret_generate_prints_secrets_that_sign_and_verify() {
    for (scheme, prefix, len) in [("standard", "whsec_", 50), ("mender", "", 64)] {
        let out = output_within(
            edgehook().args(["secret", "generate", "--scheme", scheme]),
            COMMAND_LIMIT,
        );
        assert!(out.status.success());
        let secret = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(secret.starts_with(prefix), "{secret}");
        assert_eq!(secret.len(), len, "{secret}");
        assert!(edgehook::sinks::signing::parse_secret(scheme.parse().unwrap(), &secret).is_ok());
    }
}

#[test]
fn test_reports_success_refusal_timeout_and_an_untrusted_certificate() {
    let ok = Receiver::ok();
    let failing = answering(500);
    let slow = Receiver::start(Arc::new(|_, _| {
        std::thread::sleep(Duration::from_secs(2));
        Response::status(200)
    }));
    let mut sinks = http_sink(
        "ok",
        &ok.url(),
        SECRET,
        "headers = { \"X-Api-Key\" = \"k-123\" }",
    ) + &http_sink("failing", &failing.url(), SECRET, "")
        + &http_sink("slow", &slow.url(), SECRET, "timeout = \"300ms\"");
    let setup = Setup::new("");
    let mut tls_broker = None;
    if openssl_available() && broker::mosquitto_available() {
        // A real TLS server whose certificate no system store trusts.
        let pki = setup.dir.path().join("pki");
        make_pki(&pki);
        let b = broker::Broker::start(
            setup.dir.path(),
            &format!(
                "cafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\nallow_anonymous true",
                pki.display()
            ),
        );
        sinks += &http_sink(
            "untrusted",
            &format!("https://127.0.0.1:{}/hook", b.port),
            SECRET,
            "",
        );
        tls_broker = Some(b);
    }
    setup.write_config(&sinks);

    let out = run(&setup.config, &["test", "ok"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("✓ delivered (HTTP 200"), "{text}");
    assert!(text.contains("webhook-signature: v1,"), "{text}");
    assert!(
        text.contains("x-api-key: (hidden)") || text.contains("X-Api-Key: (hidden)"),
        "{text}"
    );
    assert!(
        !text.contains("k-123") && !text.contains(SECRET),
        "no secret is shown: {text}"
    );
    let req = &ok.delivered()[0];
    verify_standard(req, SECRET).unwrap();
    assert_eq!(req.json()["type"], "webhook-test");
    assert_eq!(req.json()["data"]["sink"], "ok");
    assert_eq!(req.header("X-Api-Key"), Some("k-123"));
    let doc = json_of(&setup, &["test", "ok", "--json"]);
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["code"], 200);
    assert!(doc["latency_ms"].as_u64().is_some());

    let out = run(&setup.config, &["test", "failing"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("✗ failed: HTTP 500 Internal Server Error"),
        "{text}"
    );

    let out = run(&setup.config, &["test", "slow"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("timed out"), "{text}");

    if tls_broker.is_some() {
        let out = run(&setup.config, &["test", "untrusted"]);
        let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(
            text.contains("certificate") || text.contains("issuer") || text.contains("tls"),
            "{text}"
        );
    }
    let out = run(&setup.config, &["test", "missing"]);
    assert_eq!(out.status.code(), Some(64));
    // Nothing of this went through the outbox.
    assert_eq!(setup.status()["outbox"]["events"], 0);
}

#[test]
fn reloading_twenty_times_while_events_flow_loses_and_duplicates_nothing() {
    let a = Receiver::ok();
    let b = Receiver::ok();
    let extra = Receiver::ok();
    let secrets: Vec<String> = (0..=20)
        .map(|_| {
            let out = output_within(edgehook().args(["secret", "generate"]), COMMAND_LIMIT);
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .collect();
    let config = |round: usize| {
        let url = if round % 2 == 0 { a.url() } else { b.url() };
        let previous = if round == 0 {
            String::new()
        } else {
            format!("previous_secrets = [\"{}\"]\n", secrets[round - 1])
        };
        let main = format!(
            "[[sink]]\nname = \"main\"\nurl = \"{url}\"\n[sink.signing]\nscheme = \"standard\"\nsecret = \"{}\"\n{previous}[sink.retry]\ninitial = \"20ms\"\nmax = \"200ms\"\n",
            secrets[round]
        );
        // `extra` is removed for rounds 5 to 9 and comes back under the same name.
        if (5..10).contains(&round) {
            main
        } else {
            main + &http_sink("extra", &extra.url(), SECRET, "")
        }
    };
    let setup = Setup::new(&config(0));
    let daemon = setup.start();
    let total = 5000;
    let per_round = total / 20;
    let arrived = || a.delivered_count() + b.delivered_count();
    let mut acked = Vec::with_capacity(total);
    for round in 1..=20 {
        acked.extend(emit_pipelined(
            &setup.socket(),
            round,
            per_round,
            "sensor.reading",
            32,
        ));
        let before = arrived();
        wait_until(Duration::from_secs(60), "progress between reloads", || {
            arrived() > before || arrived() >= total
        });
        setup.write_config(&config(round));
        daemon.hup();
    }
    wait_until(Duration::from_secs(120), "every event at main", || {
        let got: HashSet<String> = a
            .delivered_ids()
            .into_iter()
            .chain(b.delivered_ids())
            .collect();
        acked.iter().all(|id| got.contains(id))
    });
    let distinct: HashSet<String> = a
        .delivered_ids()
        .into_iter()
        .chain(b.delivered_ids())
        .collect();
    assert_eq!(distinct.len(), total);
    assert_eq!(arrived(), total, "no event reached main twice");
    assert!(
        a.delivered_count() > 0 && b.delivered_count() > 0,
        "both URLs were used"
    );
    // Each request verifies with a secret that was in force, and at each receiver the newest
    // secret that signed never goes back once a newer one has.
    for receiver in [&a, &b] {
        let mut highest = 0;
        for r in receiver.delivered() {
            let newest = (0..=20)
                .rev()
                .find(|&k| verify_standard(&r, &secrets[k]).is_ok())
                .unwrap_or_else(|| panic!("{} verifies with no secret", r.event_id()));
            assert!(
                newest >= highest,
                "signed with secret {newest} after secret {highest}"
            );
            highest = newest;
        }
    }
    // `extra`: what was routed to it arrived once, in order, and nothing is left.
    wait_until(Duration::from_secs(60), "extra's queue to drain", || {
        setup.sink_status("extra")["pending"] == 0
    });
    let got = extra.delivered_ids();
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "no duplicates at extra");
    assert_eq!(setup.sink_status("extra")["delivered"], got.len());
    let position: std::collections::HashMap<&String, usize> =
        acked.iter().enumerate().map(|(i, id)| (id, i)).collect();
    let order: Vec<usize> = got.iter().map(|id| position[id]).collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "extra got them in order"
    );
    assert!(
        !got.is_empty() && got.len() < total,
        "events emitted while extra was removed were not routed to it ({} of {total})",
        got.len()
    );
}

#[test]
fn an_invalid_file_on_reload_keeps_the_running_config_and_says_why() {
    let receiver = Receiver::ok();
    let setup = Setup::new(&http_sink("cloud", &receiver.url(), SECRET, ""));
    let daemon = setup.start();
    std::fs::write(&setup.config, "[[sink]]\nname = \"cloud\"\nurl = 42\n").unwrap();
    daemon.hup();
    wait_until(Duration::from_secs(10), "the refusal in the log", || {
        daemon
            .log()
            .contains("Reload refused, the running config stays")
    });
    assert!(
        daemon.log().contains("edgehook.toml:3:7"),
        "{}",
        daemon.log()
    );
    let id = emit_one(&setup.socket(), "sensor.reading", json!(1));
    wait_until(
        Duration::from_secs(10),
        "delivery with the old config",
        || receiver.delivered_ids().contains(&id),
    );
}

/// `edgehook reload` is the unit's `ExecReload`: it returns once the daemon has the new config
/// (exit 0), exits 78 with the reason when the new config is refused, whether the command's own
/// check or the daemon refused it, while the daemon runs on with the old one, and 69 when no
/// daemon answers.
#[test]
fn reload_waits_for_the_outcome_and_exits_78_when_the_new_config_is_refused() {
    let receiver = Receiver::ok();
    let cloud = http_sink("cloud", &receiver.url(), SECRET, "");
    let setup = Setup::new(&cloud);
    let mut daemon = setup.start();

    // The new sink is routed by the time the command returns: an event emitted next is queued
    // for it (one emitted before its route is not).
    let extra = Receiver::ok();
    setup.write_config(&format!(
        "{cloud}{}",
        http_sink("extra", &extra.url(), SECRET, "")
    ));
    let out = run(&setup.config, &["reload"]);
    assert!(succeeded(&out).contains("2 sink(s) running"));
    let id = emit_one(&setup.socket(), "sensor.reading", json!(0));
    wait_until(Duration::from_secs(30), "delivery to the new sink", || {
        extra.delivered_ids().contains(&id)
    });

    std::fs::write(&setup.config, "[[sink]]\nname = \"cloud\"\nurl = 42\n").unwrap();
    refused_with_78(&run(&setup.config, &["reload"]), "edgehook.toml:3:7");

    // A file the command accepts but the daemon cannot apply: a signing sink without a secret,
    // whose generated secret cannot be kept because `secrets` is a plain file.
    std::fs::write(setup.dir.path().join("secrets"), "in the way").unwrap();
    setup.write_config(&format!(
        "{cloud}[[sink]]\nname = \"generated\"\nurl = \"{}\"\n[sink.signing]\nscheme = \"standard\"\n",
        receiver.url()
    ));
    refused_with_78(
        &run(&setup.config, &["reload"]),
        "invalid: cannot keep the generated secret of sink generated",
    );
    assert!(
        daemon
            .log()
            .contains("Reload refused, the running config stays"),
        "{}",
        daemon.log()
    );

    let id = emit_one(&setup.socket(), "sensor.reading", json!(1));
    wait_until(
        Duration::from_secs(30),
        "delivery with the config the daemon kept",
        || receiver.delivered_ids().contains(&id),
    );

    assert_eq!(daemon.terminate(), Some(0));
    let out = run(&setup.config, &["reload"]);
    assert_eq!(
        out.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
