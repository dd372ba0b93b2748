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
fn urls_are_shown_without_credentials_or_query() {
    assert_eq!(
        check::display_url("https://user:pw@hooks.example.com:8443/a/b?token=x"),
        "https://hooks.example.com:8443/a/b"
    );
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
