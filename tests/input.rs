//! Bad input gets a clear error and disturbs nothing: broken config files exit 78 naming line
//! and column; garbage and oversized socket lines get error replies while other clients are
//! served.

mod common;

use std::time::Duration;

use common::*;
use edgehook::client::Reply;
use serde_json::json;

fn broken(config_text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edgehook.toml");
    std::fs::write(&path, config_text).unwrap();
    (dir, path)
}

fn assert_config_error(text: &str, line_col: &str, needle: &str) {
    let (_dir, path) = broken(text);
    for cmd in ["check-config", "run"] {
        let out = run(&path, &[cmd]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{cmd}: {err}");
        let at = format!("{}:{line_col}: ", path.display());
        assert!(err.contains(&at), "{cmd}: expected `{at}` in: {err}");
        assert!(err.contains(needle), "{cmd}: expected `{needle}` in: {err}");
    }
}

#[test]
fn a_toml_syntax_error_exits_78_with_line_and_column() {
    assert_config_error("[storage]\npath = \"/tmp/x.db\n", "2:18", "");
}

#[test]
fn an_unknown_key_exits_78_with_line_and_column() {
    assert_config_error("[storage]\nmax_event = 5\n", "2:1", "max_event");
}

#[test]
fn a_bad_duration_exits_78_with_line_and_column() {
    assert_config_error(
        "[storage]\nmax_age = \"a week\"\n",
        "2:11",
        "invalid duration",
    );
}

#[test]
fn a_missing_secret_file_exits_78_with_line_and_column() {
    assert_config_error(
        "[[sink]]\nname = \"cloud\"\nurl = \"https://example.com/\"\n[sink.signing]\nscheme = \"standard\"\nsecret_file = \"missing.secret\"\n",
        "6:15",
        "missing.secret",
    );
}

#[test]
fn qos_0_on_an_mqtt_sink_exits_78_with_line_and_column() {
    assert_config_error(
        "[[sink]]\nname = \"broker\"\nurl = \"mqtt://127.0.0.1:1883\"\nqos = 0\n[sink.signing]\nscheme = \"none\"\n",
        "4:7",
        "QoS 0",
    );
}

#[test]
fn durations_and_sizes_out_of_their_range_exit_78_with_line_and_column() {
    let sink = "[[sink]]\nname = \"cloud\"\nurl = \"https://example.com/\"\n";
    let cases = [
        (
            "[storage]\nmax_age = \"1000000000y\"\n".to_string(),
            "2:11",
            "`max_age` must be between 1s and 3650d",
        ),
        (
            "[storage]\nmax_age = \"0s\"\n".to_string(),
            "2:11",
            "`max_age` must be between",
        ),
        (
            format!("{sink}timeout = \"300000000000y\"\n[sink.signing]\nscheme = \"none\"\n"),
            "4:11",
            "`timeout` must be between 100ms and 1d",
        ),
        (
            "[ingest]\nmax_event_bytes = \"16MiB\"\n".to_string(),
            "2:19",
            "`max_event_bytes` must be between 256 and 1MiB",
        ),
        (
            "[daemon]\nshutdown_timeout = \"2d\"\n".to_string(),
            "2:20",
            "`shutdown_timeout` must be between",
        ),
        (
            "[storage]\nmax_dead_letters = 0\n".to_string(),
            "2:20",
            "`max_dead_letters` must be between",
        ),
        (
            format!("{sink}[sink.signing]\nscheme = \"none\"\n[sink.retry]\nmax = \"400d\"\n"),
            "7:7",
            "`retry.max` must be between",
        ),
    ];
    for (text, line_col, needle) in &cases {
        assert_config_error(text, line_col, needle);
    }
}

/// Every duration and size at the top of its range: the daemon runs, delivers and stops as
/// asked (no deadline or age computed from them overflows).
#[test]
fn a_daemon_configured_at_the_top_of_every_range_delivers_and_stops() {
    let receiver = Receiver::ok();
    let setup = Setup::new("");
    let sink = http_sink("cloud", &receiver.url(), SECRET, "timeout = \"1d\"")
        .replace("max = \"500ms\"", "max = \"1d\"");
    let storage = "max_age = \"3650d\"\nmax_bytes = \"1TiB\"\nmax_events = 100000000\nmax_dead_letters = 100000000\n";
    setup.write_config_sections(
        storage,
        "max_event_bytes = \"1MiB\"\n",
        &format!("[inventory]\nbuiltin = false\nscripts_dirs = []\ninterval = \"30d\"\nscript_timeout = \"1d\"\n{sink}"),
    );
    let text = std::fs::read_to_string(&setup.config)
        .unwrap()
        .replace("shutdown_timeout = \"2s\"", "shutdown_timeout = \"1h\"");
    std::fs::write(&setup.config, text).unwrap();
    let mut daemon = setup.start();
    emit_one(&setup.socket(), "sensor.reading", json!({"n": 1}));
    wait_until(Duration::from_secs(30), "the delivery", || {
        receiver.delivered_count() == 1
    });
    assert_eq!(daemon.terminate(), Some(0), "{}", daemon.log());
}

#[test]
fn a_missing_config_file_exits_78() {
    let out = run(
        std::path::Path::new("/nonexistent/edgehook.toml"),
        &["check-config"],
    );
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/edgehook.toml"));
}

#[test]
fn check_config_summarises_a_valid_file() {
    let setup = Setup::new(&http_sink(
        "cloud",
        "https://hooks.example.com/edge?token=abc",
        SECRET,
        "",
    ));
    let out = run(&setup.config, &["check-config"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("sink     cloud http https://hooks.example.com/edge?…: standard signing"),
        "{text}"
    );
    assert!(!text.contains("token=abc"), "query strings are not shown");
    assert!(!text.contains("MfKQ9r8"), "secrets are not shown");
}

#[test]
fn garbage_and_oversized_lines_get_error_replies_while_other_clients_are_served() {
    let receiver = Receiver::ok();
    let setup = Setup::new(&http_sink("cloud", &receiver.url(), SECRET, ""));
    let _daemon = setup.start();
    let socket = setup.socket();
    let good = std::thread::spawn({
        let socket = socket.clone();
        move || emit_pipelined(&socket, 1, 2000, "sensor.reading", 32)
    });
    let mut bad = setup.client();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"this is not json\n".to_vec(), "invalid"),
        (b"{\"type\": 5}\n".to_vec(), "invalid"),
        (b"[1,2,3]\n".to_vec(), "invalid"),
        (b"{\"data\": {}}\n".to_vec(), "invalid"),
        (b"{\"type\":\"Upper\",\"data\":1}\n".to_vec(), "invalid"),
        (
            b"{\"type\":\"device-provisioned\",\"data\":1}\n".to_vec(),
            "invalid",
        ),
        (b"{\"op\":\"fly\"}\n".to_vec(), "unknown_op"),
        (
            [
                b"{\"type\":\"x\",\"data\":\"".as_slice(),
                &vec![b'a'; 70_000],
                b"\"}\n",
            ]
            .concat(),
            "too_large",
        ),
        (vec![0xff, 0xfe, 0x00, b'\n'], "invalid"),
    ];
    for (line, code) in &cases {
        bad.send_raw(line).unwrap();
        match bad.recv().unwrap() {
            Reply::Err { code: got, error } => {
                assert_eq!(
                    got,
                    *code,
                    "for {:?}: {error}",
                    String::from_utf8_lossy(&line[..line.len().min(40)])
                )
            }
            Reply::Ok(v) => panic!(
                "accepted {:?}: {v:?}",
                String::from_utf8_lossy(&line[..line.len().min(40)])
            ),
        }
    }
    // The same connection still works after all that.
    assert!(matches!(
        bad.call(&json!({"op": "ping"})).unwrap(),
        Reply::Ok(_)
    ));
    assert!(matches!(
        bad.call(&json!({"type": "sensor.reading", "data": {"ok": true}}))
            .unwrap(),
        Reply::Ok(_)
    ));
    let ids = good.join().unwrap();
    assert_eq!(ids.len(), 2000);
    wait_until(Duration::from_secs(30), "all good events", || {
        receiver.delivered_count() == 2001
    });
}

#[test]
fn a_pipelining_client_gets_its_replies_in_request_order() {
    let receiver = Receiver::ok();
    let setup = Setup::new(&http_sink("cloud", &receiver.url(), SECRET, ""));
    let _daemon = setup.start();
    let mut c = setup.client();
    let mut lines = Vec::new();
    for n in 0..50 {
        if n % 10 == 3 {
            lines.extend_from_slice(b"garbage\n");
        } else {
            lines.extend_from_slice(
                format!("{{\"type\":\"t\",\"id\":\"id-{n}\",\"data\":{n}}}\n").as_bytes(),
            );
        }
    }
    c.send_raw(&lines).unwrap();
    for n in 0..50 {
        match c.recv().unwrap() {
            Reply::Ok(v) => assert_eq!(v.id, Some(format!("id-{n}"))),
            Reply::Err { code, .. } => {
                assert!(n % 10 == 3 && code == "invalid", "reply {n}: {code}")
            }
        }
    }
}
