//! Secrets and access: at trace level no secret, password or token appears in any log line or
//! command output; secret files others can read are warned about; the socket is 0660 with the
//! configured group; plain http:// to a host that is not loopback is warned about once.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::broker::{Broker, Subscriber, mosquitto_available};
use common::*;
use edgehook::sinks::signing::{Scheme, generate_secret};
use serde_json::json;

/// Every secret of one config, and the forms in which each could leak.
struct Secrets {
    standard: String,
    previous: String,
    mender: String,
    mqtt_inline: String,
    mqtt_file: String,
    bearer: String,
    url_password: String,
    url_token: String,
}

impl Secrets {
    fn new() -> Secrets {
        let token = |tag: &str| format!("{tag}{}", &generate_secret(Scheme::Mender)[..24]);
        Secrets {
            standard: generate_secret(Scheme::Standard),
            previous: generate_secret(Scheme::Standard),
            mender: generate_secret(Scheme::Mender),
            mqtt_inline: token("mqttpw"),
            mqtt_file: token("mqttfilepw"),
            bearer: token("bearer"),
            url_password: token("urlpw"),
            url_token: token("qtoken"),
        }
    }

    /// Each secret as written, the base64 body of the `whsec_` ones, the hex ones in capitals,
    /// and the Basic credentials of the URL's user:password.
    fn forms(&self) -> Vec<(String, &'static str)> {
        let mut forms = vec![
            (self.standard.clone(), "standard secret"),
            (self.previous.clone(), "previous secret"),
            (self.mender.clone(), "mender secret"),
            (self.mender.to_uppercase(), "mender secret in capitals"),
            (self.mqtt_inline.clone(), "MQTT password"),
            (self.mqtt_file.clone(), "MQTT password file's password"),
            (self.bearer.clone(), "Authorization header value"),
            (self.url_password.clone(), "URL password"),
            (self.url_token.clone(), "URL query token"),
            (
                B64.encode(format!("alice:{}", self.url_password)),
                "Basic credentials",
            ),
        ];
        for s in [&self.standard, &self.previous] {
            let body = s.strip_prefix("whsec_").expect("a whsec_ secret");
            forms.push((body.to_string(), "base64 body of a secret"));
            // A decoded key logged as base64 without its padding, or as hex.
            forms.push((
                body.trim_end_matches('=').to_string(),
                "unpadded base64 body",
            ));
            forms.push((hex::encode(B64.decode(body).unwrap()), "hex of a key"));
        }
        forms
    }
}

/// Panics naming each secret found in `text` and the lines it is on.
fn assert_no_secret(what: &str, text: &str, secrets: &Secrets) {
    let mut leaks = Vec::new();
    for (form, name) in secrets.forms() {
        for line in text.lines().filter(|l| l.contains(&form)).take(3) {
            leaks.push(format!("{name}: {line}"));
        }
    }
    assert!(leaks.is_empty(), "secrets in {what}:\n{}", leaks.join("\n"));
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes `text` to `dir/name` with `mode`.
fn secret_file(dir: &Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{text}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// A mosquitto that accepts only `device` with `password` and `watcher` with `watch-pw`.
fn broker_with_password(dir: &Path, password: &str) -> Broker {
    let passwords = dir.join("passwords");
    std::fs::write(&passwords, "").unwrap();
    for (user, pw) in [("watcher", "watch-pw"), ("device", password)] {
        let st = std::process::Command::new("mosquitto_passwd")
            .arg("-b")
            .arg(&passwords)
            .args([user, pw])
            .status()
            .expect("mosquitto_passwd runs");
        assert!(st.success());
    }
    let extra = format!(
        "allow_anonymous false\npassword_file {}",
        passwords.display()
    );
    Broker::start(dir, &extra)
}

fn config_text(
    s: &Secrets,
    web: &Receiver,
    mender: &Receiver,
    mq1: &Broker,
    mq2: &Broker,
) -> String {
    let port = web.port();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    format!(
        r#"[log]
level = "trace"

[[sink]]
name = "web"
url = "http://alice:{urlpw}@127.0.0.1:{port}/hook?token={qtoken}"
headers = {{ "Authorization" = "Bearer {bearer}" }}
[sink.signing]
scheme = "standard"
secret = "{standard}"
previous_secrets = ["{previous}"]
[sink.retry]
initial = "20ms"
max = "200ms"

[[sink]]
name = "menderweb"
url = "{mender_url}?token={qtoken}"
[sink.signing]
scheme = "mender"
secret_file = "mender.secret"
[sink.retry]
initial = "20ms"
max = "200ms"

[[sink]]
name = "down"
url = "http://127.0.0.1:{dead_port}/hook?token={qtoken}"
headers = {{ "Authorization" = "Bearer {bearer}" }}
[sink.signing]
scheme = "standard"
secret = "{previous}"
[sink.retry]
initial = "50ms"
max = "200ms"

[[sink]]
name = "mq"
url = "{mq1}"
username = "device"
password = "{mqtt_inline}"
[sink.signing]
scheme = "standard"
secret = "{standard}"

[[sink]]
name = "mqfile"
url = "{mq2}"
username = "device"
password_file = "mqtt.password"
[sink.signing]
scheme = "mender"
secret_file = "mender.secret"
"#,
        urlpw = s.url_password,
        qtoken = s.url_token,
        bearer = s.bearer,
        standard = s.standard,
        previous = s.previous,
        mender_url = mender.url(),
        mqtt_inline = s.mqtt_inline,
        mq1 = mq1.url(),
        mq2 = mq2.url(),
    )
}

/// The commands an operator runs against this config, with their outputs.
fn operator_outputs(setup: &Setup) -> Vec<(String, String)> {
    let commands: &[&[&str]] = &[
        &["status"],
        &["status", "--json"],
        &["check-config"],
        &["sink", "list"],
        &["sink", "list", "--json"],
        &["sink", "show", "web"],
        &["sink", "show", "menderweb"],
        &["sink", "show", "mq"],
        &["sink", "show", "mqfile", "--json"],
        &["activity", "--limit", "200"],
        &["activity", "--json", "--limit", "200"],
        &["dead-letters"],
        &["test", "web"],
        &["test", "web", "--json"],
        &["test", "down"],
        &["test", "menderweb"],
        &["test", "mq"],
        &["test", "mqfile", "--json"],
    ];
    commands
        .iter()
        .map(|args| (args.join(" "), output_text(&run(&setup.config, args))))
        .collect()
}

#[test]
fn no_secret_appears_in_any_log_line_or_command_output_at_trace_level() {
    if !mosquitto_available() {
        return;
    }
    let secrets = Secrets::new();
    let setup = Setup::new("");
    let dir = setup.dir.path();
    // The mender sink fails three times first, so failures and retries are logged too.
    let mender = Receiver::start(Arc::new(|_, before| {
        Response::status(if before.len() < 3 { 503 } else { 200 })
    }));
    let web = Receiver::ok();
    secret_file(dir, "mender.secret", &secrets.mender, 0o600);
    secret_file(dir, "mqtt.password", &secrets.mqtt_file, 0o600);
    let mq1 = broker_with_password(dir, &secrets.mqtt_inline);
    let mq2 = broker_with_password(dir, &secrets.mqtt_file);
    let sub1 = Subscriber::connect_with(mq1.port, "edgehook/+/events/#", |o| {
        o.set_credentials("watcher", "watch-pw");
    });
    let sub2 = Subscriber::connect_with(mq2.port, "edgehook/+/events/#", |o| {
        o.set_credentials("watcher", "watch-pw");
    });
    setup.write_config(&config_text(&secrets, &web, &mender, &mq1, &mq2));
    let mut daemon = setup.start();

    let ids = emit_pipelined(&setup.socket(), 0, 20, "app.reading", 8);
    wait_until(
        Duration::from_secs(60),
        "every sink but `down` to deliver",
        || {
            of_type(&web, "app.reading").len() == ids.len()
                && of_type(&mender, "app.reading").len() == ids.len()
                && sub1.distinct_event_ids().len() == ids.len()
                && sub2.distinct_event_ids().len() == ids.len()
        },
    );
    // The secrets really travelled: the test would be empty if they had not.
    let got = &web.delivered()[0];
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {}", secrets.bearer).as_str())
    );
    assert!(got.path.contains(&secrets.url_token), "{}", got.path);
    wait_until(Duration::from_secs(30), "failed attempts of `down`", || {
        setup.sink_status("down")["failed_attempts"].as_i64() >= Some(3)
    });

    daemon.hup();
    wait_until(Duration::from_secs(30), "the reload", || {
        daemon.log().contains("Reloaded")
    });
    emit_one(&setup.socket(), "app.reading", json!({"after": "reload"}));
    wait_until(Duration::from_secs(30), "delivery after the reload", || {
        of_type(&web, "app.reading").len() == ids.len() + 1
    });

    let outputs = operator_outputs(&setup);
    assert_eq!(daemon.terminate(), Some(0));
    let log = daemon.log();
    assert!(log.contains(" DEBUG "), "the level lets detail through");
    assert_no_secret("the daemon's log", &log, &secrets);
    for (command, text) in &outputs {
        assert_no_secret(&format!("`edgehook {command}`"), text, &secrets);
    }
    let output_lines: usize = outputs.iter().map(|(_, t)| t.lines().count()).sum();
    eprintln!(
        "figures: {} secret forms, {} log lines, {} commands with {output_lines} output lines: no secret",
        secrets.forms().len(),
        log.lines().count(),
        outputs.len()
    );
    // `test web` really sent the header, by name only.
    let (_, test_web) = &outputs[12];
    assert!(test_web.contains("Authorization: (hidden)"), "{test_web}");
}

#[test]
fn secret_and_password_files_others_can_read_are_warned_about_by_name() {
    let setup = Setup::new("");
    let dir = setup.dir.path();
    let secret = secret_file(dir, "web.secret", &generate_secret(Scheme::Standard), 0o644);
    let password = secret_file(dir, "mqtt.password", "pw-in-a-file", 0o640);
    let private = secret_file(
        dir,
        "private.secret",
        &generate_secret(Scheme::Mender),
        0o600,
    );
    setup.write_config(&format!(
        r#"[[sink]]
name = "web"
url = "http://127.0.0.1:9/hook"
enabled = false
[sink.signing]
scheme = "standard"
secret_file = "{}"

[[sink]]
name = "mender"
url = "http://127.0.0.1:9/hook"
enabled = false
[sink.signing]
scheme = "mender"
secret_file = "{}"

[[sink]]
name = "mq"
url = "mqtt://127.0.0.1:9"
enabled = false
username = "device"
password_file = "{}"
[sink.signing]
scheme = "none"
"#,
        secret.display(),
        private.display(),
        password.display()
    ));
    let out = run(&setup.config, &["check-config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let warned = |path: &Path, mode: &str| {
        stderr.lines().any(|l| {
            l.starts_with("warning:") && l.contains(&path.display().to_string()) && l.contains(mode)
        })
    };
    assert!(
        warned(&secret, "0644"),
        "no warning naming the secret file: {stderr}"
    );
    assert!(
        warned(&password, "0640"),
        "no warning naming the password file: {stderr}"
    );
    assert!(
        !stderr.contains("private.secret"),
        "a 0600 file is fine: {stderr}"
    );

    let mut daemon = setup.start();
    let log = daemon.log();
    for path in [&secret, &password] {
        let named = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains(&path.display().to_string()))
            .count();
        assert_eq!(
            named,
            1,
            "one warning naming {} at start: {log}",
            path.display()
        );
    }
    assert!(!log.contains("private.secret"), "{log}");
    assert_eq!(daemon.terminate(), Some(0));
}

/// The root group's test needs a group other than the daemon's own that exists here.
fn other_group() -> Option<nix::unistd::Group> {
    let why = if !nix::unistd::geteuid().is_root() {
        "giving the socket to another group needs root"
    } else {
        match nix::unistd::Group::from_name("daemon") {
            Ok(Some(g)) => return Some(g),
            _ => "the group `daemon` does not exist here",
        }
    };
    assert!(std::env::var_os("CI").is_none(), "{why}");
    eprintln!("cannot run this test here: {why}");
    None
}

#[test]
fn the_socket_is_0660_with_the_configured_group_and_a_missing_group_is_warned_about() {
    let Some(group) = other_group() else {
        return;
    };
    let setup = Setup::new("");
    // `Setup` writes its own [ingest] section; the group goes in it.
    let text = std::fs::read_to_string(&setup.config).unwrap().replacen(
        "[ingest]\n",
        &format!("[ingest]\ngroup = \"{}\"\n", group.name),
        1,
    );
    std::fs::write(&setup.config, &text).unwrap();
    let mut daemon = setup.start();
    let meta = std::fs::metadata(setup.socket()).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o660, "mode {:o}", meta.mode());
    assert_eq!(meta.gid(), group.gid.as_raw());
    assert_eq!(daemon.terminate(), Some(0));

    let missing = "edgehook-no-such-group";
    let in_group = format!("group = \"{}\"", group.name);
    std::fs::write(
        &setup.config,
        text.replace(&in_group, &format!("group = \"{missing}\"")),
    )
    .unwrap();
    let mut daemon = setup.start();
    let meta = std::fs::metadata(setup.socket()).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o660, "mode {:o}", meta.mode());
    assert_eq!(
        meta.gid(),
        nix::unistd::getegid().as_raw(),
        "the daemon's own group"
    );
    let log = daemon.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains(&format!("Group {missing} does not exist"))
            && l.contains("keeps the daemon's own group")),
        "{log}"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

/// A name from /etc/hosts that resolves to an IPv4 loopback address only and is not
/// `localhost`: a host edgehook cannot tell is loopback from the URL alone, which the test can
/// still reach without leaving the machine (Debian maps the host name to 127.0.1.1).
fn loopback_alias() -> Option<String> {
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let found = hosts.lines().find_map(|line| {
        let mut words = line.split('#').next()?.split_whitespace();
        let addr: std::net::Ipv4Addr = words.next()?.parse().ok()?;
        if !addr.is_loopback() {
            return None;
        }
        words
            .find(|name| {
                let n = name.to_ascii_lowercase();
                n != "localhost" && !n.ends_with(".localhost") && resolves_to_loopback_only(name)
            })
            .map(str::to_string)
    });
    if found.is_none() {
        let why = "/etc/hosts maps no name but localhost to 127.x";
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("cannot run this test here: {why}");
    }
    found
}

fn resolves_to_loopback_only(name: &str) -> bool {
    use std::net::ToSocketAddrs;
    (name, 80)
        .to_socket_addrs()
        .map(|addrs| {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback() && a.is_ipv4())
        })
        .unwrap_or(false)
}

#[test]
fn plain_http_to_a_host_not_loopback_is_warned_about_once_not_per_attempt_or_reload() {
    let Some(alias) = loopback_alias() else {
        return;
    };
    let failing = Receiver::start(Arc::new(|_, _| Response::status(503)));
    let local = Receiver::start(Arc::new(|_, _| Response::status(503)));
    let aliased = format!("http://{alias}:{}/hook", failing.port());
    let setup = Setup::new(&format!(
        "{}{}",
        http_sink("plain", &aliased, SECRET, ""),
        http_sink("local", &local.url(), SECRET, "")
    ));
    let daemon = setup.start();
    emit_one(&setup.socket(), "app.reading", json!({}));
    wait_until(Duration::from_secs(30), "attempts on both sinks", || {
        failing.requests().len() >= 5 && local.requests().len() >= 5
    });
    daemon.hup();
    wait_until(Duration::from_secs(30), "the reload", || {
        daemon.log().contains("Reloaded")
    });
    let before = failing.requests().len();
    wait_until(Duration::from_secs(30), "attempts after the reload", || {
        failing.requests().len() >= before + 5
    });
    let log = daemon.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("plain http://"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains("plain") && warnings[0].contains(&alias),
        "{}",
        warnings[0]
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("plain http://") && l.contains("local")),
        "{log}"
    );
}
