//! Secrets kept out of output and away from other users: a URL's path token, a header from
//! `headers_file` and a proxy's credentials appear in no command's output and no log line;
//! a config holding inline secrets that others can read is warned about; the files edgehook
//! writes holding a secret (drop-ins, `secret generate --output`, the outbox) are its user's
//! alone; `verify` and `receive` read their secret from a file.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use base64::Engine;
use common::*;
use edgehook::sinks::signing::{Scheme, generate_secret};
use serde_json::json;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// A random token of letters and digits, `tag` first.
fn token(tag: &str) -> String {
    format!("{tag}{}", &generate_secret(Scheme::Mender)[..20])
}

/// A proxy on 127.0.0.1 that answers every `CONNECT` with 407.
fn refusing_proxy() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut client in listener.incoming().flatten() {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && client.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = client.write_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n",
            );
        }
    });
    port
}

/// The mode a drop-in holding a secret gets from root: 0640 with group edgehook where that
/// group exists, else 0600.
fn assert_secret_mode(path: &Path) {
    let meta = std::fs::metadata(path).unwrap();
    let group = nix::unistd::Group::from_name("edgehook").ok().flatten();
    match group {
        Some(g) if nix::unistd::geteuid().is_root() => {
            assert_eq!(mode(path), 0o640, "{}", path.display());
            assert_eq!(meta.gid(), g.gid.as_raw(), "{}", path.display());
        }
        _ => assert_eq!(mode(path), 0o600, "{}", path.display()),
    }
}

#[test]
fn a_url_path_token_a_headers_file_value_and_proxy_credentials_appear_in_no_output_or_log() {
    let path_token = token("pathtok");
    let zap_token = token("zaptok");
    let api_key = token("apikey");
    let proxy_pw = token("proxypw");
    let web = Receiver::ok();
    let proxy = refusing_proxy();
    let setup = Setup::new("");
    let dir = setup.dir.path();
    let headers = dir.join("chat.headers");
    std::fs::write(&headers, format!("X-Api-Key: {api_key}\nX-Site: berlin\n")).unwrap();
    std::fs::set_permissions(&headers, std::fs::Permissions::from_mode(0o600)).unwrap();
    // `chat` by the name the no-proxy list holds, so it is reached directly; `zap` through
    // the proxy, which refuses it.
    let chat_url = format!(
        "http://localhost:{}/services/T0001/B0001/{path_token}",
        web.port()
    );
    let zap_url = format!(
        "http://127.0.0.1:{}/hooks/catch/123456/{zap_token}/",
        web.port()
    );
    setup.write_config(&format!(
        "[log]\nlevel = \"trace\"\n{}{}",
        http_sink("chat", &chat_url, SECRET, "headers_file = \"chat.headers\""),
        http_sink("zap", &zap_url, SECRET, ""),
    ));
    let proxy_url = format!("http://edge:{proxy_pw}@127.0.0.1:{proxy}");
    let env: [(&str, &std::ffi::OsStr); 3] = [
        ("ALL_PROXY", proxy_url.as_ref()),
        ("NO_PROXY", "localhost".as_ref()),
        ("no_proxy", "localhost".as_ref()),
    ];
    let mut daemon = setup.start_with_env(&env);
    emit_one(&setup.socket(), "app.reading", json!({"t": 21}));
    wait_until(Duration::from_secs(60), "the delivery to chat", || {
        web.delivered_count() >= 1
    });
    wait_until(Duration::from_secs(60), "zap's refused attempts", || {
        setup.sink_status("zap")["failed_attempts"].as_i64() >= Some(2)
    });
    // The secrets really travelled, so their absence below means something.
    let got = &web.delivered()[0];
    assert!(got.path.contains(&path_token), "{}", got.path);
    assert_eq!(got.header("x-api-key"), Some(api_key.as_str()));
    assert_eq!(got.header("x-site"), Some("berlin"));

    let commands: &[&[&str]] = &[
        &["check-config"],
        &["sink", "list"],
        &["sink", "list", "--json"],
        &["sink", "show", "chat"],
        &["sink", "show", "chat", "--json"],
        &["sink", "show", "zap"],
        &["status"],
        &["status", "--json"],
        &["activity"],
        &["test", "chat"],
        &["test", "chat", "--json"],
        &["test", "zap"],
        &["test", "zap", "--json"],
    ];
    let mut outputs = Vec::new();
    for args in commands {
        let mut cmd = edgehook();
        cmd.arg("--config").arg(&setup.config).args(*args);
        cmd.envs(env);
        outputs.push((
            args.join(" "),
            text(&output_within(&mut cmd, COMMAND_LIMIT)),
        ));
    }
    assert_eq!(daemon.terminate(), Some(0));
    outputs.push(("the daemon's log".into(), daemon.log()));
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("edge:{proxy_pw}"));
    for (what, out) in &outputs {
        for secret in [&path_token, &zap_token, &api_key, &proxy_pw, &basic] {
            assert!(!out.contains(secret.as_str()), "{secret} in {what}:\n{out}");
        }
    }
    let lines: usize = outputs.iter().map(|(_, t)| t.lines().count()).sum();
    eprintln!(
        "figures: 5 secret forms, {} outputs (the log among them) with {lines} lines: none found",
        outputs.len()
    );
    let shown = |what: &str| &outputs.iter().find(|(w, _)| w == what).unwrap().1;
    // What is shown instead: the first path segment, and the headers by name.
    let chat_shown = format!("http://localhost:{}/services/…", web.port());
    let zap_shown = format!("http://127.0.0.1:{}/hooks/…", web.port());
    for what in [
        "check-config",
        "sink list",
        "status --json",
        "sink show zap",
    ] {
        if what != "sink show zap" {
            assert!(shown(what).contains(&chat_shown), "{what}: {}", shown(what));
        }
        assert!(shown(what).contains(&zap_shown), "{what}: {}", shown(what));
    }
    assert!(
        shown("test chat").contains("X-Api-Key: (hidden)"),
        "{}",
        shown("test chat")
    );
    assert!(
        shown("test zap").contains("refused the tunnel") && shown("test zap").contains("407"),
        "{}",
        shown("test zap")
    );
    assert!(
        shown("the daemon's log").contains(" TRACE ")
            || shown("the daemon's log").contains(" DEBUG "),
        "the level lets detail through"
    );

    // Root may see them all, to copy them to the receiver.
    if nix::unistd::geteuid().is_root() {
        let revealed = succeeded(&sink_cmd(&setup, &["show", "chat", "--reveal-secret"]));
        assert!(revealed.contains(&chat_url), "{revealed}");
        assert!(
            revealed.contains(&format!("X-Api-Key: {api_key}")),
            "{revealed}"
        );
        let out = sink_cmd(&setup, &["show", "chat", "--reveal-secret", "--json"]);
        let doc: serde_json::Value = serde_json::from_str(&succeeded(&out)).unwrap();
        assert_eq!(doc["url"], chat_url.as_str());
        assert_eq!(doc["headers"]["X-Api-Key"], api_key.as_str());
        assert_eq!(doc["signing"]["revealed_secret"], SECRET);
    }
}

#[test]
fn inline_secrets_in_a_config_others_can_read_are_warned_about_naming_the_file_and_keys() {
    let setup = Setup::new(&http_sink(
        "cloud",
        "https://hooks.example.com/edge",
        SECRET,
        "headers = { \"Authorization\" = \"Bearer abc\", \"X-Site\" = \"berlin\" }",
    ));
    let dropin_dir = setup.dir.path().join("sinks.d");
    std::fs::create_dir(&dropin_dir).unwrap();
    let dropin = dropin_dir.join("chat.toml");
    std::fs::write(
        &dropin,
        "[[sink]]\nname = \"chat\"\nurl = \"https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX\"\nformat = \"slack\"\n[sink.signing]\nscheme = \"none\"\n",
    )
    .unwrap();
    let warnings = |out: &Output| -> Vec<String> {
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.starts_with("warning:"))
            .map(str::to_string)
            .collect()
    };
    for file in [&setup.config, &dropin] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let out = run(&setup.config, &["check-config"]);
    assert!(out.status.success(), "{}", text(&out));
    let w = warnings(&out);
    assert_eq!(w.len(), 2, "{w:?}");
    let config = setup.config.display().to_string();
    assert!(
        w[0].contains(&config)
            && w[0].contains("mode 0644")
            && w[0].contains("sink `cloud`: `secret`")
            && w[0].contains("header `Authorization`")
            && !w[0].contains("X-Site")
            && !w[0].contains("abc"),
        "{}",
        w[0]
    );
    assert!(
        w[1].contains(&dropin.display().to_string()) && w[1].contains("sink `chat`: `url`"),
        "{}",
        w[1]
    );
    // The daemon says it too, once at start.
    let mut daemon = setup.start();
    let log = daemon.log();
    let named = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(&config) && l.contains("holds secrets"))
        .count();
    assert_eq!(named, 1, "{log}");
    assert_eq!(daemon.terminate(), Some(0));

    for file in [&setup.config, &dropin] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let out = run(&setup.config, &["check-config"]);
    assert!(warnings(&out).is_empty(), "{}", text(&out));
}

#[test]
fn a_drop_in_holding_a_credential_header_is_kept_from_other_users() {
    let setup = Setup::new("");
    std::fs::set_permissions(&setup.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let dir = setup.dir.path().join("sinks.d");
    succeeded(&sink_cmd(
        &setup,
        &[
            "add",
            "pipeline",
            "--url",
            "https://ingest.example.com/mainflux",
            "--header",
            "X-Api-Key: k-123",
        ],
    ));
    assert_secret_mode(&dir.join("pipeline.toml"));
    // A drop-in holding nothing secret keeps the main file's mode, until it holds one.
    succeeded(&sink_cmd(
        &setup,
        &["add", "plain", "--url", "https://ingest.example.com/plain"],
    ));
    assert_eq!(mode(&dir.join("plain.toml")), 0o644);
    succeeded(&sink_cmd(
        &setup,
        &["update", "plain", "--header", "Authorization: Bearer t"],
    ));
    assert_secret_mode(&dir.join("plain.toml"));
    // Slack's URL is its credential.
    succeeded(&sink_cmd(
        &setup,
        &[
            "add",
            "chat",
            "--url",
            "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
            "--format",
            "slack",
        ],
    ));
    assert_secret_mode(&dir.join("chat.toml"));
    let list = succeeded(&sink_cmd(&setup, &["list"]));
    assert!(
        !list.contains("k-123") && !list.contains("T0/B0/X"),
        "{list}"
    );
    // Header values kept in a file of their own leave the drop-in nothing to hide.
    let headers = setup.dir.path().join("filed.headers");
    std::fs::write(&headers, "X-Api-Key: k-in-a-file-789\n").unwrap();
    std::fs::set_permissions(&headers, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut args = vec!["add", "filed", "--url", "https://ingest.example.com/filed"];
    let headers_arg = headers.display().to_string();
    args.extend(["--headers-file", &headers_arg]);
    succeeded(&sink_cmd(&setup, &args));
    assert_eq!(mode(&dir.join("filed.toml")), 0o644);
    let shown = succeeded(&sink_cmd(&setup, &["show", "filed"]));
    assert!(shown.contains("X-Api-Key: (hidden)"), "{shown}");
    assert!(!shown.contains("k-in-a-file-789"), "{shown}");
    // A mistyped header is refused without echoing its value.
    let out = sink_cmd(
        &setup,
        &["update", "plain", "--header", "X-Api-Key=k-mistyped-456"],
    );
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(!text(&out).contains("k-mistyped-456"), "{}", text(&out));
}

#[test]
fn secret_generate_output_writes_a_0600_file_and_replaces_one_only_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cloud.secret");
    let generate = |extra: &[&str]| {
        output_within(
            edgehook()
                .args(["secret", "generate", "--output"])
                .arg(&file)
                .args(extra),
            COMMAND_LIMIT,
        )
    };
    let out = generate(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        out.stdout.is_empty(),
        "the secret is not printed: {}",
        text(&out)
    );
    assert_eq!(mode(&file), 0o600);
    let first = std::fs::read_to_string(&file).unwrap();
    assert!(
        first.starts_with("whsec_") && first.ends_with('\n'),
        "{first}"
    );
    edgehook::sinks::signing::parse_secret(Scheme::Standard, first.trim()).unwrap();

    let out = generate(&["--scheme", "mender"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(text(&out).contains("--force"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), first, "kept");

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = generate(&["--scheme", "mender", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    let second = std::fs::read_to_string(&file).unwrap();
    assert_ne!(second, first);
    edgehook::sinks::signing::parse_secret(Scheme::Mender, second.trim()).unwrap();
    assert_eq!(mode(&file), 0o600);
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "no temporary file is left: {left:?}");
}

#[test]
fn the_outbox_and_its_wal_and_shm_are_0600_when_created_and_made_so_at_start() {
    let web = Receiver::ok();
    let setup = Setup::new(&http_sink("web", &web.url(), SECRET, ""));
    let files = |setup: &Setup| {
        ["", "-wal", "-shm"].map(|suffix| {
            let mut p = setup.db().into_os_string();
            p.push(suffix);
            std::path::PathBuf::from(p)
        })
    };
    let deliver = |n: usize| {
        emit_one(&setup.socket(), "app.reading", json!({"n": n}));
        wait_until(Duration::from_secs(60), "the delivery", || {
            web.delivered_count() >= n
        });
    };
    let mut daemon = setup.start();
    deliver(1);
    for f in files(&setup) {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    // An outbox an older edgehook left open to its group and others is closed at start.
    daemon.kill9();
    for f in files(&setup) {
        if f.exists() {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    daemon.restart();
    deliver(2);
    for f in files(&setup) {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn verify_and_receive_read_their_secret_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("cloud.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let other_file = dir.path().join("other.secret");
    std::fs::write(&other_file, generate_secret(Scheme::Standard)).unwrap();

    // `receive` verifies what the daemon sends it, the file taking the environment's place.
    let mut receive = edgehook()
        .env("EDGEHOOK_SECRET", generate_secret(Scheme::Standard))
        .args([
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--count",
            "1",
            "--secret-file",
        ])
        .arg(&secret_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    BufReader::new(receive.stderr.take().unwrap())
        .read_line(&mut said)
        .unwrap();
    let addr = said
        .split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {said:?}"));
    assert!(said.contains("standard signatures"), "{said}");
    let web = Receiver::ok();
    let setup = Setup::new(
        &(http_sink("receive", &format!("http://{addr}/hook"), SECRET, "")
            + &http_sink("web", &web.url(), SECRET, "")),
    );
    let mut daemon = setup.start();
    let id = emit_one(&setup.socket(), "app.reading", json!({"t": 1}));
    let (tx, rx) = std::sync::mpsc::channel();
    let mut stdout = receive.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        let _ = tx.send(out);
    });
    let printed = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("receive prints the event and exits");
    assert!(printed.contains(&id), "{printed}");
    assert!(receive.wait().unwrap().success());

    // `verify` checks the same request.
    wait_until(Duration::from_secs(60), "the delivery to web", || {
        web.delivered_count() >= 1
    });
    assert_eq!(daemon.terminate(), Some(0));
    let got = &web.delivered()[0];
    let body = dir.path().join("body.json");
    std::fs::write(&body, &got.body).unwrap();
    let verify = |secret: &Path| {
        let mut cmd = edgehook();
        cmd.arg("verify").arg("--secret-file").arg(secret);
        for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            cmd.arg("--header")
                .arg(format!("{name}: {}", got.header(name).unwrap()));
        }
        output_within(cmd.arg(&body), COMMAND_LIMIT)
    };
    let out = verify(&secret_file);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "valid");
    let out = verify(&other_file);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = verify(&dir.path().join("missing.secret"));
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(text(&out).contains("--secret-file"), "{}", text(&out));
}
