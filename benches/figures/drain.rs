//! Draining a backlog: over HTTP to the minimal receiver (against oha on the same receiver)
//! and through Mosquitto with QoS 1 (against mosquitto_pub publishing the same payloads).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::broker::Broker;
use crate::common::{Daemon, Setup, wait_until};
use crate::ingest::{CLIENTS, emit_concurrently, parked_sink, payload, sink};
use crate::measure::rate;
use crate::receiver::Receiver;

/// Writes the config: the outbox with `durability` and room for the largest backlog (the
/// default limits, 256 MiB and 1,000,000 events, would drop the oldest of a million), and
/// `sinks`.
pub fn configure(setup: &Setup, durability: &str, sinks: &str) {
    setup.write_config_with(
        &format!("durability = \"{durability}\"\nmax_bytes = \"2GiB\"\nmax_events = 10000000\n"),
        sinks,
    );
}

/// A stopped outbox with `n` events waiting for the sink `cloud`.
pub fn backlog(n: usize) -> Setup {
    let setup = Setup::new("");
    configure(&setup, "normal", &parked_sink());
    let mut daemon = setup.start();
    emit_concurrently(&setup.socket(), n);
    assert_eq!(daemon.terminate(), Some(0), "the daemon stops cleanly");
    assert_eq!(pending(&setup.db()), (n / CLIENTS * CLIENTS) as i64);
    setup
}

/// A copy of `from`'s outbox in a new directory, on the disk before it is used: a backlog
/// built up while a device was offline has long been written back, and a copy still in the
/// page cache would make the daemon's first checkpoint (which syncs the file) write the whole
/// copy (350 MB for a million events) in the middle of a measurement.
pub fn copy_of(from: &Setup) -> Setup {
    let to = Setup::new("");
    for suffix in ["", "-wal"] {
        let src = PathBuf::from(format!("{}{suffix}", from.db().display()));
        if src.exists() {
            let dst = PathBuf::from(format!("{}{suffix}", to.db().display()));
            std::fs::copy(&src, &dst).expect("outbox copied");
            std::fs::File::open(&dst)
                .and_then(|f| f.sync_all())
                .expect("the copy synced");
        }
    }
    to
}

/// Events waiting in the outbox, over all sinks.
pub fn pending(db: &Path) -> i64 {
    pending_in(&open(db))
}

fn open(db: &Path) -> rusqlite::Connection {
    edgehook::outbox::open_ro(db)
        .expect("the outbox opens")
        .expect("the outbox exists")
}

/// Events waiting in the outbox open on `conn`, over all sinks.
fn pending_in(conn: &rusqlite::Connection) -> i64 {
    let report = edgehook::outbox::read_report(conn).expect("a report");
    report.sinks.iter().map(|s| s.pending).sum()
}

/// How long moving `n` events may take before the run counts as stuck: a minute, plus 2 ms an
/// event (ten times slower than any target allows).
pub fn limit(n: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(2 * n as u64)
}

/// Waits until the outbox holds nothing for any sink.
pub fn wait_drained(db: &Path, limit: Duration) {
    wait_until(limit, "the outbox to drain", || pending(db) == 0);
}

/// The rate (events/s) at which the receiver got `n` events, between the first and the last.
pub fn arrival_rate(receiver: &Receiver, from: usize, n: usize) -> f64 {
    let arrivals = receiver.arrivals();
    assert!(
        arrivals.len() >= from + n,
        "only {} arrivals",
        arrivals.len()
    );
    rate(n - 1, arrivals[from + n - 1] - arrivals[from])
}

/// Starts a daemon on `setup` with its sink `cloud` pointed at `url`.
pub fn start_draining(setup: &Setup, url: &str, extra: &str) -> Daemon {
    configure(setup, "full", &sink("cloud", url, extra));
    setup.start()
}

/// edgehook draining `n` events to the receiver with `max_in_flight`; events/s.
pub fn http(backlog: &Setup, receiver: &Receiver, n: usize, max_in_flight: usize) -> f64 {
    let setup = copy_of(backlog);
    receiver.reset();
    let _daemon = start_draining(
        &setup,
        &receiver.url(),
        &format!("max_in_flight = {max_in_flight}"),
    );
    wait_until(limit(n), "the receiver to get them all", || {
        receiver.count() as usize >= n
    });
    wait_drained(&setup.db(), Duration::from_secs(60));
    arrival_rate(receiver, 0, n)
}

/// The oha binary: next to cargo's, or on PATH.
pub fn oha() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    home.map(|h| h.join("bin/oha"))
        .filter(|p| p.exists())
        .or_else(|| {
            Command::new("oha")
                .arg("--version")
                .output()
                .ok()
                .map(|_| PathBuf::from("oha"))
        })
}

/// oha sending `n` POSTs of the 256-byte payload over `connections`; requests/s.
pub fn oha_rate(dir: &Path, receiver: &Receiver, n: usize, connections: usize) -> f64 {
    let body = dir.join("payload.json");
    std::fs::write(&body, payload(0)).unwrap();
    let out = Command::new(oha().expect("oha is installed (cargo install oha)"))
        .args(["--no-tui", "--output-format", "json", "-m", "POST"])
        .args(["-T", "application/json", "-D"])
        .arg(&body)
        .args(["-n", &n.to_string(), "-c", &connections.to_string()])
        .arg(receiver.url())
        .stdin(Stdio::null())
        .output()
        .expect("oha runs");
    assert!(
        out.status.success(),
        "oha failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("oha prints JSON");
    let ok = v["statusCodeDistribution"]["200"].as_u64().unwrap_or(0);
    assert_eq!(ok as usize, n, "oha got {ok} answers 200 of {n}: {v}");
    v["summary"]["requestsPerSec"]
        .as_f64()
        .expect("oha's requestsPerSec")
}

/// How many QoS 1 messages mosquitto_pub keeps in flight: libmosquitto's default (and
/// Mosquitto's default receive maximum). edgehook's sink is given the same window.
pub const MQTT_WINDOW: usize = 20;

/// edgehook draining `n` events through the broker with QoS 1 and `MQTT_WINDOW` in flight;
/// events/s from the daemon's start to an empty outbox.
pub fn mqtt(backlog: &Setup, broker: &Broker, n: usize) -> f64 {
    let setup = copy_of(backlog);
    let started = Instant::now();
    let _daemon = start_draining(
        &setup,
        &broker.url(),
        &format!("qos = 1\ntopic = \"bench/{{type}}\"\nmax_in_flight = {MQTT_WINDOW}"),
    );
    // Looked at every 5 ms (`wait_drained` backs off to 50 ms, a tenth of a small run),
    // through one connection: opening the outbox each time would take a tenth of a core
    // from the daemon and the broker.
    let deadline = started + limit(n);
    let conn = open(&setup.db());
    while pending_in(&conn) > 0 {
        assert!(Instant::now() < deadline, "the MQTT drain is stuck");
        std::thread::sleep(Duration::from_millis(5));
    }
    rate(n, started.elapsed())
}

/// What mosquitto_pub publishes: a message a line, each with the same properties.
pub struct Messages {
    lines: Vec<Vec<u8>>,
    properties: Vec<[String; 3]>,
}

impl Messages {
    /// The bare payloads (the 256-byte JSON documents the events carry), no properties.
    pub fn payloads(n: usize) -> Messages {
        Messages {
            lines: (0..n).map(|i| payload(i).into_bytes()).collect(),
            properties: Vec::new(),
        }
    }

    /// What edgehook publishes for the backlog's events: each stored envelope as it is, with
    /// the properties edgehook sends beside it at their lengths (content type, the UTF-8
    /// payload format, `edgehook-device-id` and the three Standard Webhooks headers; one
    /// signature for all, as mosquitto_pub cannot sign each).
    pub fn as_edgehook_publishes(backlog: &Setup) -> Messages {
        let conn = open(&backlog.db());
        let mut stmt = conn
            .prepare("SELECT id, body FROM events ORDER BY seq")
            .unwrap();
        let rows: Vec<(String, Vec<u8>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let device: String = conn
            .query_row("SELECT value FROM meta WHERE key = 'device_id'", [], |r| {
                r.get(0)
            })
            .unwrap();
        let (id, _) = &rows[0];
        let user = |k: &str, v: &str| {
            [
                "-D PUBLISH user-property".to_string(),
                k.to_string(),
                v.to_string(),
            ]
        };
        let properties = vec![
            [
                "-D PUBLISH content-type".into(),
                "application/json".into(),
                String::new(),
            ],
            [
                "-D PUBLISH payload-format-indicator".into(),
                "1".into(),
                String::new(),
            ],
            user("edgehook-device-id", &device),
            user("webhook-id", id),
            user("webhook-timestamp", "1796290000"),
            user(
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ];
        let lines: Vec<Vec<u8>> = rows.into_iter().map(|(_, body)| body).collect();
        assert!(
            lines.iter().all(|l| !l.contains(&b'\n')),
            "an envelope holds no line break"
        );
        Messages { lines, properties }
    }
}

/// Lines of the anchor's long run. mosquitto_pub 2.0 reads all of its input ahead into its
/// queue, notes the packet id of the last message and disconnects when that id is
/// acknowledged; packet ids wrap at 65,535, so with more lines than that it stops (with
/// success) once the first message with that id is acknowledged, leaving the rest unsent: of
/// 100,000 lines it publishes 34,465. The long run stays below that.
pub const MOSQUITTO_PUB_RUN: usize = 60_000;
/// Lines of the anchor's short run.
const MOSQUITTO_PUB_SHORT: usize = MOSQUITTO_PUB_RUN / 2;

/// The anchor's two runs of mosquitto_pub for one set of messages, written once (and synced,
/// so that no writeback of them runs beside a measurement): the first `MOSQUITTO_PUB_RUN` of
/// the messages, taken again from the start when there are fewer (a guard's 20,000), and the
/// first half of those.
pub struct AnchorRuns {
    long: PathBuf,
    short: PathBuf,
    properties: Vec<[String; 3]>,
}

impl AnchorRuns {
    pub fn write(dir: &Path, name: &str, messages: &Messages) -> AnchorRuns {
        let lines = || messages.lines.iter().cycle().take(MOSQUITTO_PUB_RUN);
        let long = dir.join(format!("{name}-long.txt"));
        let short = dir.join(format!("{name}-short.txt"));
        write_lines(&long, lines());
        write_lines(&short, lines().take(MOSQUITTO_PUB_SHORT));
        AnchorRuns {
            long,
            short,
            properties: messages.properties.clone(),
        }
    }

    /// Messages/s at which mosquitto_pub publishes (QoS 1): the lines the long run has more
    /// than the short one, over the time it takes longer.
    ///
    /// A run's time is its publishing and a fixed part that is not, which the difference takes
    /// off whole. `pub_stdin_line_loop` (client/pub_client.c) sleeps 100 ms when it finds
    /// itself still connecting, and 100 ms once it reaches the end of its input; it reaches
    /// that at once, having queued every line before most are sent, so the second sleep
    /// overlaps the publishing and only the first is fixed. Taking a one-message run's time
    /// (both sleeps) off each run instead, as the benchmark did until 2026-12-07, took 100 ms
    /// too much off every run and credited the anchor with more speed than it has: 192,000
    /// messages/s for 50,000 bare payloads in 0.46 s less 0.20 s, where runs of 30,000 and
    /// 60,000 took 0.32 and 0.48-0.50 s, 167,000-187,000/s (2026-12-07, an Intel Xeon).
    pub fn rate(&self, broker: &Broker) -> f64 {
        let (long, _) = mosquitto_pub(broker, &self.long, &self.properties, false);
        let (short, _) = mosquitto_pub(broker, &self.short, &self.properties, false);
        rate(
            MOSQUITTO_PUB_RUN - MOSQUITTO_PUB_SHORT,
            long.saturating_sub(short),
        )
    }

    /// Checks that mosquitto_pub, given the long run, has every message acknowledged by the
    /// broker (its debug output counts the PUBACKs), so the anchor is not credited with
    /// messages it never sent.
    pub fn check_sends_all(&self, broker: &Broker) {
        let (_, debug) = mosquitto_pub(broker, &self.long, &self.properties, true);
        let acknowledged = debug
            .lines()
            .filter(|l| l.contains("received PUBACK"))
            .count();
        assert_eq!(
            acknowledged, MOSQUITTO_PUB_RUN,
            "mosquitto_pub had {acknowledged} of {MOSQUITTO_PUB_RUN} messages acknowledged"
        );
    }
}

/// Writes `lines`, one a line, to `path`, and syncs it.
fn write_lines<'a>(path: &Path, lines: impl Iterator<Item = &'a Vec<u8>>) {
    let mut text = Vec::with_capacity(MOSQUITTO_PUB_RUN * 600);
    for line in lines {
        text.extend_from_slice(line);
        text.push(b'\n');
    }
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(&text).unwrap();
    file.sync_all().unwrap();
}

/// One mosquitto_pub process publishing the lines of `file` with `properties` (QoS 1, MQTT 5),
/// from its standard input: how long it ran, and its debug output when `debug`.
fn mosquitto_pub(
    broker: &Broker,
    file: &Path,
    properties: &[[String; 3]],
    debug: bool,
) -> (Duration, String) {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-V", "mqttv5", "-q", "1", "-l", "-t", "bench/anchor"]);
    if debug {
        cmd.arg("-d");
    }
    for [option, a, b] in properties {
        cmd.args(option.split(' '));
        cmd.arg(a);
        if !b.is_empty() {
            cmd.arg(b);
        }
    }
    let started = Instant::now();
    let out = cmd
        .stdin(std::fs::File::open(file).unwrap())
        .stdout(if debug { Stdio::piped() } else { Stdio::null() })
        .output()
        .expect("mosquitto_pub runs (package mosquitto-clients)");
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (took, String::from_utf8_lossy(&out.stdout).into_owned())
}
