//! Hostile receivers: one that never answers, one that sends a 100 MB body (fast, or a byte at
//! a time) or endless headers, one that closes mid-request or answers garbage, certificates that are untrusted or
//! for another name. Each attempt ends within the sink's timeout and is judged; the daemon
//! stays responsive, its memory stays bounded, a healthy sink beside it keeps receiving, and
//! every event arrives once the receiver behaves.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::memory::{assert_growth_below, memory_from_now};
use common::raw_server::{RawServer, Stream, answer_ok, hold, read_request, serve_mqtt};
use common::*;
use edgehook::client::Reply;
use serde_json::json;

/// The size the hostile receivers announce and would send.
const HUGE: u64 = 100 * 1024 * 1024;

/// A daemon with a healthy HTTP sink `healthy` beside the hostile sinks in `hostile`.
struct Scene {
    setup: Setup,
    daemon: Daemon,
    healthy: Receiver,
}

fn scene(hostile: &str) -> Scene {
    let healthy = Receiver::ok();
    let setup = Setup::new(&(http_sink("healthy", &healthy.url(), SECRET, "") + hostile));
    let daemon = setup.start();
    Scene {
        setup,
        daemon,
        healthy,
    }
}

impl Scene {
    /// Emits `n` events and returns their ids in order.
    fn emit(&self, n: usize) -> Vec<String> {
        emit_pipelined(&self.setup.socket(), 0, n, "sensor.reading", 16)
    }

    /// The daemon answers `ping` quickly and `status` works, and the healthy sink has every
    /// event in `ids`, in order.
    fn assert_healthy(&self, ids: &[String]) {
        let started = Instant::now();
        let mut c = self.setup.client();
        assert!(matches!(c.call(&json!({"op": "ping"})), Ok(Reply::Ok(_))));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "ping took {took:?}");
        assert!(self.setup.status()["sinks"].is_array());
        wait_until(Duration::from_secs(20), "the healthy sink's events", || {
            self.healthy.delivered_count() >= ids.len()
        });
        assert_eq!(self.healthy.delivered_ids(), ids);
    }

    /// The last error `status` shows for `sink`.
    fn last_error(&self, sink: &str) -> String {
        self.setup.sink_status(sink)["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// An HTTP sink with quick retries and a short timeout.
fn sink(name: &str, url: &str, extra: &str) -> String {
    http_sink(name, url, SECRET, &format!("timeout = \"1s\"\n{extra}"))
}

/// The ids of the events in `bodies`, in order.
fn ids_of(bodies: &Mutex<Vec<Vec<u8>>>) -> Vec<String> {
    bodies
        .lock()
        .unwrap()
        .iter()
        .map(|b| {
            let v: serde_json::Value = serde_json::from_slice(b).expect("a JSON body");
            v["id"].as_str().expect("an id").to_string()
        })
        .collect()
}

/// A handler that answers every request 200 and keeps its bodies in `bodies`.
fn answering(bodies: &Arc<Mutex<Vec<Vec<u8>>>>) -> raw_server::Handler {
    let bodies = bodies.clone();
    Arc::new(move |s: &mut dyn Stream, _| answer_ok(s, &bodies))
}

#[test]
fn a_receiver_that_never_answers_times_out_is_retried_and_later_events_flow() {
    let silent = RawServer::start(Arc::new(|s: &mut dyn Stream, _| {
        read_request(s);
        hold(s);
    }));
    let scene = scene(&sink("silent", &silent.url(), ""));
    let ids = scene.emit(5);
    wait_until(Duration::from_secs(30), "three timed-out attempts", || {
        silent.accepted() >= 3
    });
    scene.assert_healthy(&ids);
    let error = scene.last_error("silent");
    assert!(error.contains("timed out"), "{error}");
    assert_eq!(scene.setup.sink_status("silent")["pending"], 5);
    let log = scene.daemon.log();
    assert!(
        log.contains("Sink silent failed on event") && log.contains("timed out"),
        "{log}"
    );
    // Each attempt lasted about the sink's timeout: not less (it waited), not much more.
    let out = run(
        &scene.setup.config,
        &["activity", "--sink", "silent", "--json"],
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let took: Vec<u64> = doc["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["latency_ms"].as_u64().unwrap())
        .collect();
    eprintln!("attempts at a silent receiver took {took:?} ms");
    assert!(took.iter().all(|ms| (900..5_000).contains(ms)), "{took:?}");

    let bodies = Arc::new(Mutex::new(Vec::new()));
    silent.set_handler(answering(&bodies));
    wait_until(
        Duration::from_secs(30),
        "the events once it answers",
        || bodies.lock().unwrap().len() >= 5,
    );
    assert_eq!(ids_of(&bodies), ids, "each event once, in order");
}

/// A handler that answers 200 with a body announced as `HUGE` bytes and sends `chunk` bytes
/// every `pause` until the peer goes away; the most bytes one connection took go to `sent`.
fn trickling(chunk: usize, pause: Duration, sent: &Arc<AtomicU64>) -> raw_server::Handler {
    let sent = sent.clone();
    Arc::new(move |s: &mut dyn Stream, _| {
        while read_request(s).is_some() {
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {HUGE}\r\n\r\n");
            if s.write_all(head.as_bytes()).is_err() {
                return;
            }
            let data = vec![b'x'; chunk];
            let mut total = 0u64;
            while total < HUGE && s.write_all(&data).and_then(|_| s.flush()).is_ok() {
                total += chunk as u64;
                sent.fetch_max(total, Ordering::SeqCst);
                std::thread::sleep(pause);
            }
        }
    })
}

/// A handler that starts a 200 answer and sends header lines without end until the peer goes
/// away; the most bytes one connection took go to `sent`.
fn endless_headers(sent: &Arc<AtomicU64>) -> raw_server::Handler {
    let sent = sent.clone();
    Arc::new(move |s: &mut dyn Stream, _| {
        if read_request(s).is_none() || s.write_all(b"HTTP/1.1 200 OK\r\n").is_err() {
            return;
        }
        let line = format!("x-padding: {}\r\n", "p".repeat(1000));
        let mut total = 0u64;
        while total < HUGE && s.write_all(line.as_bytes()).is_ok() {
            total += line.len() as u64;
            sent.fetch_max(total, Ordering::SeqCst);
        }
    })
}

#[test]
fn a_100_mb_response_is_read_only_up_to_a_bound_and_memory_stays_bounded() {
    let fast_sent = Arc::new(AtomicU64::new(0));
    let slow_sent = Arc::new(AtomicU64::new(0));
    let head_sent = Arc::new(AtomicU64::new(0));
    let fast = RawServer::start(trickling(64 * 1024, Duration::ZERO, &fast_sent));
    let slow = RawServer::start(trickling(1, Duration::from_millis(20), &slow_sent));
    let head = RawServer::start(endless_headers(&head_sent));
    let scene = scene(
        &(sink("fast", &fast.url(), "")
            + &sink("slow", &slow.url(), "")
            + &sink("head", &head.url(), "")),
    );
    let pid = scene.daemon.pid();
    // Warm up every path once, so the figures below are growth under the hostile answers.
    let mut ids = scene.emit(1);
    wait_until(
        Duration::from_secs(30),
        "the first event everywhere",
        || {
            [&fast, &slow, &head].iter().all(|s| s.accepted() >= 1)
                && scene.healthy.delivered_count() >= 1
        },
    );
    let before = memory_from_now(pid);
    ids.extend(scene.emit(9));
    for (name, server) in [("fast", &fast), ("slow", &slow)] {
        wait_until(
            Duration::from_secs(60),
            &format!("{name}: all delivered"),
            || scene.setup.sink_status(name)["delivered"] == 10,
        );
        assert!(server.accepted() >= 1, "{name}");
    }
    // Endless headers are no answer: each attempt fails, and is retried.
    wait_until(
        Duration::from_secs(30),
        "retries of the endless headers",
        || head.accepted() >= 3,
    );
    let error = scene.last_error("head");
    eprintln!("endless headers: {error}");
    assert!(error.contains("header"), "{error}");
    assert_eq!(scene.setup.sink_status("head")["pending"], 10);
    scene.assert_healthy(&ids);
    eprintln!(
        "most bytes sent on one connection: fast {}, slow {}, headers {}",
        fast_sent.load(Ordering::SeqCst),
        slow_sent.load(Ordering::SeqCst),
        head_sent.load(Ordering::SeqCst)
    );
    // 100 MB buffered would show as 100,000 KiB; the kernel's socket buffers hold the rest.
    assert_growth_below(pid, before, 16 * 1024, "100 MB answers");
    for sent in [&fast_sent, &head_sent] {
        let most = sent.load(Ordering::SeqCst);
        assert!(most < 32 * 1024 * 1024, "the daemon read {most} bytes");
    }
    // A byte every 20 ms: each attempt ended at the sink's timeout (1 s, about 50 bytes), not
    // after the 64 KiB read limit (22 minutes at that pace).
    let most = slow_sent.load(Ordering::SeqCst);
    assert!(most < 4096, "a trickled answer was read for {most} bytes");
}

#[test]
fn a_receiver_that_closes_mid_request_or_answers_garbage_is_retried_and_nothing_is_lost() {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let ok = answering(&bodies);
    let rude = RawServer::start(Arc::new(move |s: &mut dyn Stream, n| {
        let mut ten = [0u8; 10];
        match n {
            0 => drop(std::io::Read::read_exact(s, &mut ten)),
            1 => drop(read_request(s)),
            2 => {
                read_request(s);
                let _ = s.write_all(b"NOT HTTP AT ALL\r\n\r\n");
            }
            3 => {
                read_request(s);
                let _ = s.write_all(b"HTTP/1.1 20");
            }
            _ => ok(s, n),
        }
    }));
    let scene = scene(&sink("rude", &rude.url(), ""));
    let ids = scene.emit(5);
    scene.assert_healthy(&ids);
    wait_until(
        Duration::from_secs(30),
        "the events after the rudeness",
        || scene.setup.sink_status("rude")["pending"] == 0,
    );
    assert!(rude.accepted() >= 5, "{} connections", rude.accepted());
    // Every event arrived; the one in flight through the rudeness may have come more than
    // once only if a receiver took it (none of the rude ones answered 2xx before closing).
    assert_eq!(ids_of(&bodies), ids, "each event once, in order");
    let log = scene.daemon.log();
    assert!(log.contains("Sink rude failed on event"), "{log}");
    assert_eq!(scene.setup.sink_status("rude")["dead_letters"], 0);
}

#[test]
fn an_untrusted_certificate_and_a_name_mismatch_are_refused_logged_and_retried_calmly() {
    if !openssl_available() {
        return;
    }
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = pki_dir.path();
    make_pki(pki);
    pki::make_self_signed(pki);
    let good_bodies = Arc::new(Mutex::new(Vec::new()));
    let bad_bodies = Arc::new(Mutex::new(Vec::new()));
    let tls = |name: &str, bodies| {
        RawServer::start_tls(
            &pki.join(format!("{name}.pem")),
            &pki.join(format!("{name}.key")),
            answering(bodies),
        )
    };
    let good = tls("server", &good_bodies);
    let untrusted = tls("self", &bad_bodies);
    let mismatch = tls("elsewhere", &bad_bodies);
    let ca = format!("ca_file = \"{}\"", pki.join("ca.pem").display());
    let scene = scene(
        &(sink("good", &good.url(), &ca)
            + &sink("untrusted", &untrusted.url(), &ca)
            + &sink("mismatch", &mismatch.url(), &ca)),
    );
    let ids = scene.emit(5);
    scene.assert_healthy(&ids);
    // The TLS server works: the sink that trusts its CA gets every event.
    wait_until(
        Duration::from_secs(30),
        "the good TLS sink's events",
        || good_bodies.lock().unwrap().len() >= 5,
    );
    assert_eq!(ids_of(&good_bodies), ids);
    wait_until(Duration::from_secs(30), "refused handshakes", || {
        untrusted.accepted() >= 3 && mismatch.accepted() >= 3
    });
    let untrusted_error = scene.last_error("untrusted");
    let mismatch_error = scene.last_error("mismatch");
    assert!(
        untrusted_error.contains("UnknownIssuer"),
        "{untrusted_error}"
    );
    assert!(
        mismatch_error.contains("not valid for name"),
        "{mismatch_error}"
    );
    let log = scene.daemon.log();
    for e in [&untrusted_error, &mismatch_error] {
        assert!(log.contains(e.as_str()), "{e} is not logged: {log}");
    }
    // Calmly: backing off (retry.max is 500 ms here), not a handshake loop.
    let (u, m) = (untrusted.accepted(), mismatch.accepted());
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let secs = window.elapsed().as_secs_f64();
    let rate = |now: usize, then: usize| (now - then) as f64 / secs;
    let (ur, mr) = (rate(untrusted.accepted(), u), rate(mismatch.accepted(), m));
    eprintln!("handshakes a second: untrusted {ur:.1}, mismatch {mr:.1}");
    assert!(ur < 10.0 && mr < 10.0, "{ur} and {mr} handshakes a second");
    assert!(bad_bodies.lock().unwrap().is_empty(), "nothing was sent");
    for name in ["untrusted", "mismatch"] {
        let s = scene.setup.sink_status(name);
        assert_eq!(s["pending"], 5, "{s}");
        assert_eq!(s["dead_letters"], 0, "{s}");
    }
}

#[test]
fn a_broker_that_accepts_and_never_answers_is_timed_out_and_retried() {
    let silent = RawServer::start(Arc::new(|s: &mut dyn Stream, _| hold(s)));
    let broker = format!(
        "[[sink]]\nname = \"silent-broker\"\nurl = \"mqtt://127.0.0.1:{}\"\ntimeout = \"1s\"\n[sink.signing]\nscheme = \"none\"\n[sink.retry]\ninitial = \"20ms\"\nmax = \"500ms\"\n",
        silent.port()
    );
    let scene = scene(&broker);
    let ids = scene.emit(5);
    wait_until(Duration::from_secs(30), "three connection attempts", || {
        silent.accepted() >= 3
    });
    scene.assert_healthy(&ids);
    let s = scene.setup.sink_status("silent-broker");
    assert_eq!(s["pending"], 5, "{s}");
    let error = s["last_error"].as_str().unwrap_or_default();
    eprintln!("a silent broker: {error}");
    assert!(
        error.contains("timed out") || error.contains("CONNACK"),
        "{s}"
    );
}

/// What the stingy broker saw: event publishes, and the most it ever held unacknowledged.
#[derive(Default)]
struct Stingy {
    events: usize,
    most_unacknowledged: usize,
}

/// A broker that takes 3 publishes unacknowledged (CONNACK's Receive Maximum) and answers
/// all it holds only after each read, so a client sending beyond the 3 would be seen doing it.
fn stingy_broker(s: &mut dyn Stream, seen: &Mutex<Stingy>) {
    serve_mqtt(s, |packets| {
        let mut unacknowledged = Vec::new();
        let mut answer = Vec::new();
        for (first, body) in packets {
            match first >> 4 {
                1 => answer.extend_from_slice(&[0x20, 6, 0, 0, 3, 0x21, 0, 3]),
                3 if (first >> 1) & 3 == 1 => {
                    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                    let topic = &body[2..2 + topic_len];
                    unacknowledged.push([body[2 + topic_len], body[3 + topic_len]]);
                    if topic.windows(8).any(|w| w == b"/events/") {
                        seen.lock().unwrap().events += 1;
                    }
                }
                12 => answer.extend_from_slice(&[0xD0, 0]),
                14 => return None,
                _ => {}
            }
        }
        let mut st = seen.lock().unwrap();
        st.most_unacknowledged = st.most_unacknowledged.max(unacknowledged.len());
        drop(st);
        for pkid in unacknowledged {
            answer.extend_from_slice(&[0x40, 2, pkid[0], pkid[1]]);
        }
        Some(answer)
    });
}

#[test]
fn a_broker_taking_three_unacknowledged_publishes_is_never_sent_a_fourth() {
    let seen = Arc::new(Mutex::new(Stingy::default()));
    let broker = {
        let seen = seen.clone();
        RawServer::start(Arc::new(move |s: &mut dyn Stream, _| {
            stingy_broker(s, &seen)
        }))
    };
    let sink = format!(
        "[[sink]]\nname = \"stingy\"\nurl = \"mqtt://127.0.0.1:{}\"\nmax_in_flight = 16\n[sink.signing]\nscheme = \"none\"\n",
        broker.port()
    );
    let scene = scene(&sink);
    let ids = scene.emit(300);
    wait_until(Duration::from_secs(20), "every event at the broker", || {
        scene.setup.sink_status("stingy")["pending"] == 0
    });
    scene.assert_healthy(&ids);
    let st = seen.lock().unwrap();
    assert!(st.events >= ids.len(), "{} events published", st.events);
    assert!(
        (1..=3).contains(&st.most_unacknowledged),
        "{} publishes unacknowledged at once",
        st.most_unacknowledged
    );
    assert_eq!(
        broker.accepted(),
        1,
        "one connection: {}",
        scene.daemon.log()
    );
}
