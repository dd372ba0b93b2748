use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/edgehook/edgehook.toml"), text)
}

fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Err(ConfigError::Invalid(p)) => p.iter().map(ToString::to_string).collect(),
        other => panic!("expected problems, got {other:?}"),
    }
}

const SINK: &str = r#"
[[sink]]
name = "cloud"
url = "https://hooks.example.com/edge"
[sink.signing]
scheme = "standard"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
"#;

#[test]
fn an_empty_file_gives_the_documented_defaults() {
    let c = parse("").unwrap();
    assert_eq!(
        c.storage.path,
        PathBuf::from("/var/lib/edgehook/edgehook.db")
    );
    assert_eq!(c.storage.durability, Durability::Full);
    assert_eq!(c.storage.max_events, 1_000_000);
    assert_eq!(c.storage.max_bytes, 256 * 1024 * 1024);
    assert_eq!(c.storage.when_full, WhenFull::DropOldest);
    assert_eq!(c.storage.max_age, Duration::from_secs(7 * 86400));
    assert_eq!(c.ingest.socket, PathBuf::from("/run/edgehook/ingest.sock"));
    assert_eq!(c.ingest.max_event_bytes, 65536);
    assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
    assert!(c.sinks.is_empty());
}

#[test]
fn a_sink_gets_its_defaults() {
    let c = parse(SINK).unwrap();
    let s = c.sink("cloud").unwrap();
    assert!(s.enabled);
    assert!(s.wants("device-status-changed"));
    assert_eq!(s.max_in_flight, 1);
    assert_eq!(s.timeout, Duration::from_secs(30));
    assert_eq!(s.retry_initial, Duration::from_secs(1));
    assert_eq!(s.retry_max, Duration::from_secs(300));
    assert_eq!(s.max_attempts, 8);
}

#[test]
fn an_unknown_key_is_named_with_line_and_column() {
    let p = problems("[storage]\npath = \"/tmp/x.db\"\ncolour = \"blue\"\n");
    assert_eq!(p.len(), 1);
    assert!(
        p[0].starts_with("/etc/edgehook/edgehook.toml:3:1: "),
        "{}",
        p[0]
    );
    assert!(p[0].contains("colour"), "{}", p[0]);
}

#[test]
fn a_bad_duration_points_at_its_value() {
    let p = problems("[storage]\nmax_age = \"seven days\"\n");
    assert!(
        p[0].starts_with("/etc/edgehook/edgehook.toml:2:11: "),
        "{}",
        p[0]
    );
    assert!(p[0].contains("invalid duration"), "{}", p[0]);
}

#[test]
fn every_problem_in_the_sinks_is_reported_not_only_the_first() {
    let text = format!(
        "{SINK}\n[[sink]]\nname = \"b\"\nurl = \"ftp://x\"\n[sink.signing]\nscheme = \"none\"\n\n[[sink]]\nname = \"m\"\nurl = \"mqtt://broker:1883\"\nqos = 0\n[sink.signing]\nscheme = \"none\"\n"
    );
    let p = problems(&text);
    assert_eq!(p.len(), 2, "{p:#?}");
    assert!(p[0].contains(":11:7: ") && p[0].contains("url"), "{}", p[0]);
    assert!(
        p[1].contains(":18:7: ") && p[1].contains("QoS 0"),
        "{}",
        p[1]
    );
}

#[test]
fn a_missing_secret_file_is_named() {
    let text = "[[sink]]\nname = \"a\"\nurl = \"https://x/\"\n[sink.signing]\nsecret_file = \"/nonexistent/secret\"\n";
    let p = problems(text);
    assert!(
        p[0].contains(":5:15: ") && p[0].contains("/nonexistent/secret"),
        "{}",
        p[0]
    );
}

#[test]
fn a_secret_never_appears_in_an_error() {
    let text = "[[sink]]\nname = \"a\"\nurl = \"https://x/\"\n[sink.signing]\nsecret = \"whsec_tooshortsecretvalue\"\n";
    let p = problems(text);
    assert!(!p[0].contains("tooshortsecretvalue"), "{}", p[0]);
}

#[test]
fn a_sink_name_defined_twice_is_an_error() {
    let p = problems(&format!("{SINK}{SINK}"));
    assert!(p[0].contains("defined twice"), "{}", p[0]);
}

#[test]
fn urls_are_shown_without_credentials_query_or_path_tokens() {
    for (url, shown) in [
        (
            "https://user:pw@hooks.example.com:8443/a/b?token=x",
            "https://…@hooks.example.com:8443/a/…?…",
        ),
        (
            "https://hooks.slack.com/services/T0001/B0001/XXXXXXXXXXXXXXXXXXXXXXXX",
            "https://hooks.slack.com/services/…",
        ),
        (
            "https://hooks.zapier.com/hooks/catch/123456/abcdef/",
            "https://hooks.zapier.com/hooks/…",
        ),
        (
            "https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/send",
            "https://api.telegram.org/…",
        ),
        ("http://127.0.0.1:8080/hook", "http://127.0.0.1:8080/hook"),
        ("https://ingest.example.com/", "https://ingest.example.com"),
        (
            "mqtts://broker.example.com:8883",
            "mqtts://broker.example.com:8883",
        ),
        ("not a url", "<invalid url>"),
    ] {
        assert_eq!(display_url(url), shown, "{url}");
    }
}

#[test]
fn the_shipped_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/edgehook.toml");
    Config::load(&path).unwrap();
}

#[test]
fn event_patterns_with_a_bang_exclude_types_from_a_sink() {
    let c = parse(
        "[[sink]]\nname = \"a\"\nurl = \"http://h/\"\nevents = [\"*\", \"!device*\"]\n[sink.signing]\nscheme = \"none\"\n\
         [[sink]]\nname = \"b\"\nurl = \"http://h/\"\nevents = [\"!sensor.*\"]\n[sink.signing]\nscheme = \"none\"\n",
    )
    .unwrap();
    let (a, b) = (&c.sinks[0], &c.sinks[1]);
    assert!(
        a.wants("sensor.t")
            && !a.wants("device-provisioned")
            && !a.wants("devices-inventory-changed")
    );
    assert!(b.wants("device-provisioned") && !b.wants("sensor.t"));
}

/// A config directory: the main file with `main`, and `sinks.d` with `dropins`.
fn config_dir(main: &str, dropins: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edgehook.toml");
    let storage = format!("[storage]\npath = \"{}/outbox.db\"\n", dir.path().display());
    std::fs::write(&path, format!("{storage}{main}")).unwrap();
    std::fs::create_dir(dir.path().join("sinks.d")).unwrap();
    for (name, text) in dropins {
        std::fs::write(dir.path().join("sinks.d").join(name), text).unwrap();
    }
    (dir, path)
}

fn none_sink(name: &str) -> String {
    format!(
        "[[sink]]\nname = \"{name}\"\nurl = \"http://127.0.0.1/\"\n[sink.signing]\nscheme = \"none\"\n"
    )
}

#[test]
fn drop_in_sinks_follow_the_main_files_in_file_name_order() {
    let two = format!("{}{}", none_sink("a1"), none_sink("a2"));
    let (dir, path) = config_dir(
        &none_sink("main"),
        &[
            ("20-b.toml", &none_sink("b")),
            ("10-a.toml", &two),
            (".hidden.toml", &none_sink("hidden")),
            ("notes.txt", "not a config"),
            ("c.toml~", &none_sink("backup")),
        ],
    );
    let c = Config::load(&path).unwrap();
    let names: Vec<&str> = c.sinks.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["main", "a1", "a2", "b"]);
    assert_eq!(c.sink("main").unwrap().file, path);
    assert_eq!(
        c.sink("a2").unwrap().file,
        dir.path().join("sinks.d/10-a.toml")
    );
}

#[test]
fn a_sink_name_defined_in_two_files_is_an_error_naming_both() {
    let (dir, path) = config_dir(&none_sink("cloud"), &[("cloud.toml", &none_sink("cloud"))]);
    let Err(ConfigError::Invalid(p)) = Config::load(&path) else {
        panic!("a duplicate name must be refused");
    };
    assert_eq!(p.len(), 1, "{p:?}");
    let text = p[0].to_string();
    let dropin = dir.path().join("sinks.d/cloud.toml");
    assert!(
        text.starts_with(&format!("{}:2:8: ", dropin.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "sink `cloud` is defined twice; first at {}:4:8",
            path.display()
        )),
        "{text}"
    );
}

#[test]
fn a_drop_in_holds_only_sinks_and_its_problems_name_it() {
    let (dir, path) = config_dir(
        "",
        &[
            ("a.toml", "[storage]\npath = \"/tmp/x.db\"\n"),
            (
                "b.toml",
                "[[sink]]\nname = \"b\"\nurl = \"ftp://x\"\n[sink.signing]\nscheme = \"none\"\n",
            ),
        ],
    );
    let Err(ConfigError::Invalid(p)) = Config::load(&path) else {
        panic!("expected problems");
    };
    let p: Vec<String> = p.iter().map(ToString::to_string).collect();
    let file = |n: &str| dir.path().join("sinks.d").join(n).display().to_string();
    assert!(
        p.iter()
            .any(|x| x.starts_with(&format!("{}:1:2: ", file("a.toml"))) && x.contains("storage")),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|x| x.starts_with(&format!("{}:3:7: ", file("b.toml"))) && x.contains("url")),
        "{p:#?}"
    );
}

#[test]
fn load_with_checks_the_config_as_if_a_drop_in_were_written_or_removed() {
    let (dir, path) = config_dir(&none_sink("main"), &[("old.toml", &none_sink("old"))]);
    let d = dir.path().join("sinks.d");
    let c = Config::load_with(
        &path,
        &[
            (d.join("new.toml"), Some(none_sink("new"))),
            (d.join("old.toml"), None),
        ],
    )
    .unwrap();
    let names: Vec<&str> = c.sinks.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["main", "new"]);
    assert!(!d.join("new.toml").exists(), "nothing is written");
}

#[test]
fn slack_keys_belong_to_the_slack_format_and_format_to_http_sinks() {
    let c = parse(
        "[[sink]]\nname = \"chat\"\nurl = \"https://hooks.slack.com/services/x\"\nformat = \"slack\"\nchannel = \"#ops\"\nusername = \"edgehook\"\nicon_emoji = \":satellite:\"\n[sink.signing]\nscheme = \"none\"\n",
    )
    .unwrap();
    let Some(SinkKind::Http { format, .. }) = c.sinks.first().map(|s| &s.kind) else {
        panic!("an HTTP sink");
    };
    let crate::sinks::format::Format::Slack(slack) = format else {
        panic!("slack format");
    };
    assert_eq!(slack.channel.as_deref(), Some("#ops"));
    assert_eq!(slack.username.as_deref(), Some("edgehook"));
    let p = problems(
        "[[sink]]\nname = \"a\"\nurl = \"https://x/\"\nformat = \"data\"\nchannel = \"#ops\"\nusername = \"u\"\n[sink.signing]\nscheme = \"none\"\n\
         [[sink]]\nname = \"b\"\nurl = \"mqtt://x:1883\"\nformat = \"data\"\n[sink.signing]\nscheme = \"none\"\n\
         [[sink]]\nname = \"c\"\nurl = \"https://x/\"\nformat = \"slack\"\nicon_emoji = \":x:\"\nicon_url = \"ftp://i\"\n[sink.signing]\nscheme = \"none\"\n",
    );
    let all = p.join("\n");
    for expected in [
        ":5:11: sink `a`: `channel` is for `format = \"slack\"` only",
        ":6:12: sink `a`: `username` is for MQTT sinks and `format = \"slack\"` only",
        ":12:10: sink `b`: `format` is for HTTP sinks only",
        "sink `c`: give `icon_emoji` or `icon_url`, not both",
        "sink `c`: `icon_url` must be an http(s):// URL",
    ] {
        assert!(all.contains(expected), "{expected} not in:\n{all}");
    }
    let p = problems(
        "[[sink]]\nname = \"d\"\nurl = \"https://x/\"\nformat = \"xml\"\n[sink.signing]\nscheme = \"none\"\n",
    );
    assert!(
        p[0].contains(":4:10: unknown variant `xml`, expected one of `envelope`, `data`, `slack`"),
        "{p:?}"
    );
}

#[test]
fn metadata_fills_topic_templates_and_an_unknown_key_is_an_error() {
    let c = parse(
        "[[sink]]\nname = \"m\"\nurl = \"mqtt://b:1883\"\ndescription = \"Plant floor\"\nmetadata = { site = \"berlin\", line = \"4\" }\ntopic = \"plants/{metadata.site}/{metadata.line}/{type}\"\n[sink.signing]\nscheme = \"none\"\n",
    )
    .unwrap();
    let s = &c.sinks[0];
    assert_eq!(s.description.as_deref(), Some("Plant floor"));
    let SinkKind::Mqtt(m) = &s.kind else {
        panic!("an MQTT sink")
    };
    assert_eq!(
        fill(&m.topic, "dev", "sensor.t", &s.name, &s.metadata),
        "plants/berlin/4/sensor.t"
    );
    let p = problems(
        "[[sink]]\nname = \"m\"\nurl = \"mqtt://b:1883\"\nmetadata = { site = \"a+b\", \"bad key\" = \"x\" }\ntopic = \"p/{metadata.site}/{metadata.nope}\"\n[sink.signing]\nscheme = \"none\"\n",
    );
    let all = p.join("\n");
    assert!(all.contains("metadata key `bad key`"), "{all}");
    assert!(all.contains("`metadata.site` is used in"), "{all}");
    let p = problems(
        "[[sink]]\nname = \"m\"\nurl = \"mqtt://b:1883\"\nmetadata = { site = 4 }\n[sink.signing]\nscheme = \"none\"\n",
    );
    assert!(p[0].contains(":4:"), "{p:?}");
}

#[test]
fn a_signing_sink_without_a_secret_awaits_one_generated_into_the_state_directory() {
    let sink =
        "[[sink]]\nname = \"cloud\"\nurl = \"https://x/\"\n[sink.signing]\nscheme = \"mender\"\n";
    let (dir, path) = config_dir(sink, &[]);
    let mut c = Config::load(&path).unwrap();
    let expected = dir.path().join("secrets/cloud.mender.secret");
    assert_eq!(c.sinks[0].secret, SecretSource::Generated(expected.clone()));
    assert!(!c.sinks[0].signer.is_ready());
    let made = generated::provide(&mut c).unwrap();
    assert_eq!(made, [("cloud".to_string(), expected.clone())]);
    assert!(c.sinks[0].signer.is_ready());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&expected).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let dir_mode = std::fs::metadata(expected.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    // Read back at the next load, the same secret; nothing new is generated.
    let mut again = Config::load(&path).unwrap();
    assert!(again.sinks[0].signer.is_ready());
    assert_eq!(again.sinks[0].signer.reveal(), c.sinks[0].signer.reveal());
    assert!(generated::provide(&mut again).unwrap().is_empty());
}

#[test]
fn headers_file_adds_its_headers_and_a_bad_line_is_named_without_its_value() {
    use std::os::unix::fs::PermissionsExt;
    let headers = "\n# the cloud's key\nX-Api-Key: k-secret-123\n\nX-Tenant:  berlin \n";
    let sink = |file: &str| {
        format!(
            "[[sink]]\nname = \"cloud\"\nurl = \"https://x/h\"\nheaders = {{ \"X-Site\" = \"a\" }}\nheaders_file = \"{file}\"\n[sink.signing]\nscheme = \"none\"\n"
        )
    };
    let (dir, path) = config_dir(&sink("cloud.headers"), &[]);
    let file = dir.path().join("cloud.headers");
    std::fs::write(&file, headers).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = Config::load(&path).unwrap();
    let SinkKind::Http { headers, .. } = &c.sinks[0].kind else {
        panic!("an HTTP sink")
    };
    let want = [
        ("X-Site", "a"),
        ("X-Api-Key", "k-secret-123"),
        ("X-Tenant", "berlin"),
    ];
    let got: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(got, want);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    std::fs::write(
        &file,
        "X-Api-Key: k-secret-123\nx-site: b\n\nbad line k-secret-456\n",
    )
    .unwrap();
    let Err(ConfigError::Invalid(p)) = Config::load(&path) else {
        panic!("problems expected")
    };
    let p: Vec<String> = p.iter().map(ToString::to_string).collect();
    assert_eq!(p.len(), 2, "{p:?}");
    let said = |what: &str| p.iter().any(|l| l.contains(what));
    assert!(
        said("header `x-site` is set in `headers` and in `headers_file`"),
        "{p:?}"
    );
    assert!(said("line 4 of the headers file"), "{p:?}");
    assert!(!p.iter().any(|l| l.contains("k-secret")), "{p:?}");
}

#[test]
fn headers_file_is_refused_on_an_mqtt_sink() {
    let p = problems(
        "[[sink]]\nname = \"m\"\nurl = \"mqtt://127.0.0.1:1883\"\nheaders_file = \"h\"\n[sink.signing]\nscheme = \"none\"\n",
    );
    assert!(p.iter().any(|l| l.contains("headers_file")), "{p:?}");
}

#[test]
fn inline_secrets_in_a_config_others_can_read_are_warned_about_by_key() {
    use std::os::unix::fs::PermissionsExt;
    let main = format!(
        "{SINK}\n[[sink]]\nname = \"chat\"\nurl = \"https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX\"\nheaders = {{ \"X-Api-Key\" = \"k\", \"X-Site\" = \"a\" }}\n[sink.signing]\nscheme = \"none\"\n"
    );
    let (dir, path) = config_dir(&main, &[("plain.toml", &none_sink("plain"))]);
    let dropin = dir.path().join("sinks.d/plain.toml");
    std::fs::set_permissions(&dropin, std::fs::Permissions::from_mode(0o644)).unwrap();
    for mode in [0o644, 0o640, 0o604, 0o620] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.warnings.len(), 1, "{mode:o}: {:?}", c.warnings);
        let w = &c.warnings[0];
        for said in [
            path.display().to_string(),
            format!("mode {mode:04o}"),
            "sink `cloud`: `secret`".into(),
            "sink `chat`: `url`".into(),
            "sink `chat`: header `X-Api-Key`".into(),
        ] {
            assert!(w.contains(&said), "{said} not in {w}");
        }
        assert!(!w.contains("X-Site") && !w.contains("MfKQ9r8"), "{w}");
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = Config::load(&path).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn headers_that_carry_credentials_are_known_by_name() {
    for name in [
        "Authorization",
        "X-Api-Key",
        "X-Auth-Token",
        "Cookie",
        "x-webhook-secret",
    ] {
        assert!(sensitive_header(name), "{name}");
    }
    for name in ["X-Site", "Content-Language", "X-Device-Group"] {
        assert!(!sensitive_header(name), "{name}");
    }
}

#[test]
fn only_urls_that_look_like_credentials_are_warned_about() {
    use super::url_holds_secret;
    for plain in [
        "https://api.example.com/v1/events",
        "https://hooks.example.com/edge",
        "mqtts://broker.example.com:8883",
    ] {
        assert!(!url_holds_secret(plain), "{plain}");
    }
    for secret in [
        "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
        "https://hooks.zapier.com/hooks/catch/123456/abc12de/",
        "https://user:pass@example.com/in",
        "https://example.com/in?code=abc",
    ] {
        assert!(url_holds_secret(secret), "{secret}");
    }
}

/// Each duration and size with the text before its key, a value just under its range, its
/// bounds, and a value just over.
const RANGES: &[(&str, &str, [&str; 4])] = &[
    (
        "[storage]",
        "max_age",
        ["\"999ms\"", "\"1s\"", "\"3650d\"", "\"3651d\""],
    ),
    (
        "[storage]",
        "max_bytes",
        ["\"4095\"", "\"4KiB\"", "\"1TiB\"", "1099511627777"],
    ),
    (
        "[storage]",
        "max_events",
        ["0", "1", "100000000", "100000001"],
    ),
    (
        "[storage]",
        "max_dead_letters",
        ["0", "1", "100000000", "100000001"],
    ),
    (
        "[ingest]",
        "max_event_bytes",
        ["255", "256", "\"1MiB\"", "1048577"],
    ),
    ("[ingest]", "max_connections", ["1", "2", "65536", "65537"]),
    (
        "[ingest]",
        "idle_timeout",
        ["\"999ms\"", "\"1s\"", "\"1d\"", "\"25h\""],
    ),
    (
        "[inventory]",
        "interval",
        ["\"999ms\"", "\"1s\"", "\"30d\"", "\"31d\""],
    ),
    (
        "[inventory]",
        "script_timeout",
        ["\"9ms\"", "\"10ms\"", "\"1d\"", "\"25h\""],
    ),
    (
        "[daemon]",
        "shutdown_timeout",
        ["\"99ms\"", "\"100ms\"", "\"1h\"", "\"61m\""],
    ),
    (
        MQTT_SINK,
        "timeout",
        ["\"99ms\"", "\"100ms\"", "\"1d\"", "\"25h\""],
    ),
    (
        MQTT_SINK,
        "keep_alive",
        ["\"4s\"", "\"5s\"", "\"65535s\"", "\"65536s\""],
    ),
    (
        RETRY,
        "initial",
        ["\"9ms\"", "\"10ms\"", "\"1d\"", "\"25h\""],
    ),
    (
        RETRY_FROM_10MS,
        "max",
        ["\"9ms\"", "\"10ms\"", "\"1d\"", "\"25h\""],
    ),
];
const MQTT_SINK: &str = "[[sink]]\nname = \"m\"\nurl = \"mqtt://broker:1883\"";
const RETRY: &str =
    "[[sink]]\nname = \"m\"\nurl = \"mqtt://broker:1883\"\n[sink.retry]\nmax = \"1d\"";
const RETRY_FROM_10MS: &str =
    "[[sink]]\nname = \"m\"\nurl = \"mqtt://broker:1883\"\n[sink.retry]\ninitial = \"10ms\"";

#[test]
fn every_duration_and_size_outside_its_range_is_refused_at_its_value() {
    for (before, key, [under, low, high, over]) in RANGES {
        let text = |value: &str| {
            let signing = if before.contains("[[sink]]") {
                "[sink.signing]\nscheme = \"none\"\n"
            } else {
                ""
            };
            format!("{before}\n{key} = {value}\n{signing}")
        };
        for ok in [low, high] {
            assert!(
                parse(&text(ok)).is_ok(),
                "{key} = {ok}: {:?}",
                parse(&text(ok))
            );
        }
        let at = format!(
            "/etc/edgehook/edgehook.toml:{}:{}: ",
            before.lines().count() + 1,
            key.len() + 4
        );
        for bad in [under, over] {
            let p = problems(&text(bad));
            let range = p
                .iter()
                .find(|p| p.contains("must be between"))
                .unwrap_or_else(|| panic!("{key} = {bad}: {p:?}"));
            assert!(
                range.starts_with(&at),
                "{key} = {bad}: {range} (expected {at})"
            );
            assert!(range.contains(&format!("{key}` must")), "{range}");
        }
    }
}

#[test]
fn the_durations_of_the_issue_are_refused_not_wrapped() {
    for text in [
        "[storage]\nmax_age = \"1000000000y\"\n",
        "[storage]\nmax_age = \"0s\"\n",
        "[[sink]]\nname = \"a\"\nurl = \"https://x/\"\ntimeout = \"300000000000y\"\n[sink.signing]\nscheme = \"none\"\n",
    ] {
        let p = problems(text);
        assert!(p[0].contains("must be between"), "{}", p[0]);
    }
}

/// An MQTT sink at `url` with `extra` keys.
fn mqtt_sink(url: &str, extra: &str) -> String {
    format!("[[sink]]\nname = \"m\"\nurl = \"{url}\"\n{extra}\n[sink.signing]\nscheme = \"none\"\n")
}

#[test]
fn url_schemes_are_classified_in_any_case() {
    let c = parse(&mqtt_sink("MQTTS://broker.example", "")).unwrap();
    let SinkKind::Mqtt(m) = &c.sink("m").unwrap().kind else {
        panic!("MQTTS:// is an MQTT sink");
    };
    assert!(m.tls, "MQTTS:// is TLS");
    assert_eq!(m.port, 8883);
    let c = parse(&mqtt_sink("Mqtt://broker.example:1884", "")).unwrap();
    assert!(matches!(&c.sink("m").unwrap().kind, SinkKind::Mqtt(m) if !m.tls && m.port == 1884));
    let c = parse(&SINK.replace("https://", "HTTPS://")).unwrap();
    assert_eq!(c.sink("cloud").unwrap().transport(), "http");
}

#[test]
fn an_ipv6_broker_address_is_connected_to_without_its_brackets() {
    let c = parse(&mqtt_sink("mqtt://[::1]:1883", "")).unwrap();
    let SinkKind::Mqtt(m) = &c.sink("m").unwrap().kind else {
        panic!("an MQTT sink");
    };
    assert_eq!((m.host.as_str(), m.port), ("::1", 1883));
}

#[test]
fn a_password_over_plain_mqtt_to_a_broker_not_on_loopback_is_warned_about() {
    let password = "username = \"u\"\npassword = \"p\"";
    let warned = |url: &str, extra: &str| {
        parse(&mqtt_sink(url, extra))
            .unwrap()
            .warnings
            .into_iter()
            .filter(|w| w.contains("plain mqtt://"))
            .collect::<Vec<_>>()
    };
    let w = warned("mqtt://broker.example:1883", password);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("broker.example") && w[0].contains("Sink m"),
        "{w:?}"
    );
    assert_eq!(warned("MQTT://broker.example:1883", password).len(), 1);
    assert_eq!(
        warned("mqtts://broker.example", password),
        Vec::<String>::new()
    );
    assert_eq!(
        warned("mqtt://broker.example:1883", ""),
        Vec::<String>::new()
    );
    assert_eq!(
        warned("mqtt://127.0.0.1:1883", password),
        Vec::<String>::new()
    );
    assert_eq!(warned("mqtt://[::1]:1883", password), Vec::<String>::new());
    assert_eq!(
        warned("mqtt://localhost:1883", password),
        Vec::<String>::new()
    );
}

#[test]
fn protocol_is_5_by_default_or_3_1_1_and_nothing_else() {
    let protocol = |extra: &str| match &parse(&mqtt_sink("mqtt://b:1883", extra))
        .unwrap()
        .sink("m")
        .unwrap()
        .kind
    {
        SinkKind::Mqtt(m) => m.protocol,
        SinkKind::Http { .. } => panic!("an MQTT sink"),
    };
    assert_eq!(protocol(""), crate::config::Protocol::V5);
    assert_eq!(protocol("protocol = \"5\""), crate::config::Protocol::V5);
    assert_eq!(
        protocol("protocol = \"3.1.1\""),
        crate::config::Protocol::V311
    );
    let p = problems(&mqtt_sink("mqtt://b:1883", "protocol = \"3\""));
    assert!(p[0].contains("`protocol` is \"5\" or \"3.1.1\""), "{p:?}");
    let p = problems(&SINK.replace("[sink.signing]", "protocol = \"5\"\n[sink.signing]"));
    assert!(p[0].contains("protocol"), "{p:?}");
}

#[test]
fn a_wss_url_is_an_mqtt_sink_over_websockets_and_tls_on_port_443_by_default() {
    let c = parse(&mqtt_sink("WSS://broker.example/mqtt", "")).unwrap();
    let SinkKind::Mqtt(m) = &c.sink("m").unwrap().kind else {
        panic!("wss:// is an MQTT sink");
    };
    assert!(m.tls);
    assert_eq!(m.port, 443);
    assert_eq!(
        m.websocket.as_deref(),
        Some("wss://broker.example:443/mqtt")
    );
    let c = parse(&mqtt_sink("wss://broker.example:8443", "")).unwrap();
    let SinkKind::Mqtt(m) = &c.sink("m").unwrap().kind else {
        panic!("wss:// is an MQTT sink");
    };
    assert_eq!(m.websocket.as_deref(), Some("wss://broker.example:8443/"));
    let c = parse(&mqtt_sink("mqtts://broker.example", "")).unwrap();
    assert!(matches!(&c.sink("m").unwrap().kind, SinkKind::Mqtt(m) if m.websocket.is_none()));
}
