//! Events flow from producers through the outbox to HTTP receivers: all of them, once each,
//! signed, in order, across receiver outages and beside a sink that is down.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn ten_thousand_events_from_eight_concurrent_clients_arrive_once_each_verified_and_in_order() {
    let receiver = Receiver::ok();
    let setup = Setup::new(&http_sink("cloud", &receiver.url(), SECRET, ""));
    let _daemon = setup.start();
    let socket = setup.socket();
    let per_client: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|c| {
                let socket = socket.clone();
                s.spawn(move || emit_pipelined(&socket, c, 1250, "sensor.reading", 64))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let acked: HashSet<&String> = per_client.iter().flatten().collect();
    assert_eq!(acked.len(), 10_000, "every acknowledged id is distinct");
    wait_until(Duration::from_secs(120), "10,000 deliveries", || {
        receiver.delivered_count() >= 10_000
    });

    let delivered = receiver.delivered();
    assert_eq!(delivered.len(), 10_000, "no event arrived twice");
    let mut position = HashMap::new();
    for (i, req) in delivered.iter().enumerate() {
        verify_standard(req, SECRET).unwrap_or_else(|e| panic!("request {i} does not verify: {e}"));
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert!(req.header("user-agent").unwrap().starts_with("edgehook/"));
        assert_eq!(req.header("webhook-id").unwrap(), req.event_id());
        assert!(
            position.insert(req.event_id(), i).is_none(),
            "{} arrived twice",
            req.event_id()
        );
    }
    // Each client's events entered the outbox in the order it sent them, so they must arrive
    // in that order.
    for ids in &per_client {
        let positions: Vec<usize> = ids.iter().map(|id| position[id]).collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "a client's events arrived out of outbox order"
        );
    }
    let device = setup.status()["device"]["id"].as_str().unwrap().to_string();
    assert!(
        delivered
            .iter()
            .all(|r| r.header("edgehook-device-id") == Some(device.as_str()))
    );
}

#[test]
fn a_backlog_built_while_the_receiver_is_down_arrives_in_order_once_it_returns() {
    let mut receiver = Receiver::ok();
    let setup = Setup::new(&http_sink("cloud", &receiver.url(), SECRET, ""));
    receiver.stop();
    let _daemon = setup.start();
    let ids = emit_pipelined(&setup.socket(), 0, 300, "sensor.reading", 32);
    wait_until(
        Duration::from_secs(10),
        "failed attempts while down",
        || {
            setup.sink_status("cloud")["failed_attempts"]
                .as_i64()
                .unwrap()
                >= 3
        },
    );
    let s = setup.sink_status("cloud");
    assert_eq!(s["pending"], 300);
    assert_eq!(s["state"], "backing-off");
    assert!(
        s["last_error"].as_str().unwrap().contains("connection"),
        "{s}"
    );

    receiver.restart();
    let back = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "the first delivery after the return",
        || receiver.delivered_count() > 0,
    );
    let resumed_after = back.elapsed();
    // retry.max is 500ms in http_sink; allow for scheduling on a loaded machine.
    assert!(
        resumed_after < Duration::from_millis(500) + Duration::from_secs(1),
        "resumed after {resumed_after:?}"
    );
    wait_until(Duration::from_secs(30), "the whole backlog", || {
        receiver.delivered_count() >= 300
    });
    assert_eq!(receiver.delivered_ids(), ids);
    wait_until(Duration::from_secs(10), "status to settle", || {
        setup.sink_status("cloud")["pending"] == 0
    });
    assert_eq!(setup.sink_status("cloud")["state"], "active");
}

#[test]
fn with_two_sinks_one_down_the_other_receives_everything_without_delay() {
    let up = Receiver::ok();
    let mut down = Receiver::ok();
    let down_url = down.url();
    down.stop();
    let setup = Setup::new(&format!(
        "{}{}",
        http_sink("up", &up.url(), SECRET, ""),
        http_sink("down", &down_url, SECRET, "")
    ));
    let _daemon = setup.start();
    let started = Instant::now();
    let ids = emit_pipelined(&setup.socket(), 0, 500, "sensor.reading", 32);
    wait_until(
        Duration::from_secs(20),
        "500 deliveries to the live sink",
        || up.delivered_count() >= 500,
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "the live sink took {took:?}"
    );
    assert_eq!(up.delivered_ids(), ids);
    let d = setup.sink_status("down");
    assert_eq!(d["pending"], 500);
    assert!(d["failed_attempts"].as_i64().unwrap() > 0);
    // The receiver has them a moment before their deliveries are recorded.
    wait_until(
        Duration::from_secs(20),
        "the live sink's queue empty",
        || setup.sink_status("up")["pending"] == 0,
    );
}

#[test]
fn an_event_not_matching_a_sinks_filter_is_not_sent_there_and_a_disabled_sink_gets_nothing() {
    let sensors = Receiver::ok();
    let all = Receiver::ok();
    let off = Receiver::ok();
    let setup = Setup::new(&format!(
        "{}{}{}",
        http_sink("sensors", &sensors.url(), SECRET, "events = [\"sensor.*\"]"),
        http_sink("all", &all.url(), SECRET, ""),
        http_sink("off", &off.url(), SECRET, "enabled = false"),
    ));
    let _daemon = setup.start();
    emit_one(&setup.socket(), "sensor.temp", serde_json::json!({"c": 20}));
    emit_one(&setup.socket(), "door.opened", serde_json::json!({}));
    emit_one(
        &setup.socket(),
        "sensor.humidity",
        serde_json::json!({"rh": 40}),
    );
    wait_until(Duration::from_secs(10), "deliveries", || {
        all.delivered_count() == 3 && sensors.delivered_count() == 2
    });
    let types: Vec<String> = sensors
        .delivered()
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, ["sensor.temp", "sensor.humidity"]);
    assert_eq!(off.requests().len(), 0);
    assert_eq!(setup.sink_status("off")["state"], "disabled");
}

#[test]
fn the_body_sent_is_the_stored_envelope_byte_for_byte() {
    let receiver = Receiver::ok();
    let setup = Setup::new(&http_sink("cloud", &receiver.url(), SECRET, ""));
    let _daemon = setup.start();
    let mut c = setup.client();
    c.send_raw(b"{\"type\":\"app.sample\",\"id\":\"given-1\",\"data\":{ \"z\": 1.50, \"a\" : [true, null, \"x y\"] }}\n").unwrap();
    let reply = c.recv().unwrap();
    assert!(
        matches!(reply, edgehook::client::Reply::Ok(ref v) if v.id.as_deref() == Some("given-1")),
        "{reply:?}"
    );
    wait_until(Duration::from_secs(10), "the delivery", || {
        receiver.delivered_count() == 1
    });
    let body = String::from_utf8(receiver.delivered()[0].body.clone()).unwrap();
    let (head, time) = body.split_at(body.find(",\"time\":\"").unwrap());
    assert_eq!(
        head,
        "{\"id\":\"given-1\",\"type\":\"app.sample\",\"data\":{\"z\":1.50,\"a\":[true,null,\"x y\"]}"
    );
    let time = time
        .trim_start_matches(",\"time\":\"")
        .trim_end_matches("\"}");
    assert!(
        time.ends_with('Z') && humantime::parse_rfc3339(time).is_ok(),
        "{time}"
    );
}

/// A `CONNECT` proxy on loopback: it notes each tunnel's request head, refuses tunnels to
/// `refused_port` with 407, and joins the others to their target byte for byte.
struct Proxy {
    port: u16,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Proxy {
    fn start(refused_port: u16) -> Proxy {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let noted = heads.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let noted = noted.clone();
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if client.read(&mut byte).unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    noted.lock().unwrap().push(head.clone());
                    let target = head.split(' ').nth(1).unwrap_or("").to_string();
                    if target.ends_with(&format!(":{refused_port}")) {
                        let _ = client.write_all(
                            b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n",
                        );
                        return;
                    }
                    let Ok(upstream) = std::net::TcpStream::connect(&target) else {
                        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
                        return;
                    };
                    let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
                    let (mut up_r, mut up_w) = (upstream.try_clone().unwrap(), upstream);
                    let (mut cl_r, mut cl_w) = (client.try_clone().unwrap(), client);
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut up_r, &mut cl_w);
                        let _ = cl_w.shutdown(std::net::Shutdown::Write);
                    });
                    let _ = std::io::copy(&mut cl_r, &mut up_w);
                    let _ = up_w.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Proxy { port, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

#[test]
fn a_proxy_from_the_environment_carries_the_requests_and_no_proxy_and_refusals_are_honoured() {
    let proxied = Receiver::ok();
    let direct = Receiver::ok();
    let refused = Receiver::ok();
    let port_of = |r: &Receiver| {
        r.url()
            .rsplit(':')
            .next()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse::<u16>()
            .unwrap()
    };
    let proxy = Proxy::start(port_of(&refused));
    // `direct` by the name the no-proxy list holds, the others by address.
    let direct_url = direct.url().replace("127.0.0.1", "localhost");
    let setup = Setup::new(
        &(http_sink("proxied", &proxied.url(), SECRET, "max_in_flight = 4")
            + &http_sink("direct", &direct_url, SECRET, "")
            + &http_sink("refused", &refused.url(), SECRET, "")),
    );
    let proxy_url = format!("http://edge:s3cret@127.0.0.1:{}", proxy.port);
    let no_proxy = std::ffi::OsStr::new("localhost");
    let _daemon = setup.start_with_env(&[
        ("ALL_PROXY", std::ffi::OsStr::new(&proxy_url)),
        ("NO_PROXY", no_proxy),
        ("no_proxy", no_proxy),
    ]);
    let ids = emit_pipelined(&setup.socket(), 0, 200, "sensor.reading", 16);
    wait_until(
        Duration::from_secs(60),
        "every event through the proxy and direct",
        || proxied.delivered_count() >= 200 && direct.delivered_count() >= 200,
    );
    for r in [&proxied, &direct] {
        let got: Vec<String> = r.delivered().iter().map(|q| q.event_id()).collect();
        assert_eq!(got.len(), 200, "each event once");
        let mut sorted = got.clone();
        sorted.sort();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(sorted, want);
        for q in r.delivered() {
            verify_standard(&q, SECRET).unwrap();
        }
    }
    let heads = proxy.heads();
    let proxied_target = format!("CONNECT 127.0.0.1:{} HTTP/1.1", port_of(&proxied));
    let tunnels = heads
        .iter()
        .filter(|h| h.starts_with(&proxied_target))
        .count();
    // Connections are kept: a tunnel a task, not one a request.
    assert!((1..=4).contains(&tunnels), "{tunnels} tunnels: {heads:?}");
    // Basic credentials from the proxy's URL ("edge:s3cret").
    assert!(
        heads
            .iter()
            .all(|h| h.contains("Proxy-Authorization: Basic ZWRnZTpzM2NyZXQ=")),
        "{heads:?}"
    );
    assert!(
        !heads.iter().any(|h| h.contains("localhost")),
        "the no-proxy host went through the proxy: {heads:?}"
    );
    // A refused tunnel is a failed attempt with the proxy's answer; nothing is lost.
    wait_until(Duration::from_secs(30), "refused tunnels", || {
        setup.sink_status("refused")["failed_attempts"]
            .as_i64()
            .unwrap()
            >= 2
    });
    let s = setup.sink_status("refused");
    let error = s["last_error"].as_str().unwrap();
    assert!(
        error.contains("refused the tunnel") && error.contains("407"),
        "{error}"
    );
    assert_eq!(refused.delivered_count(), 0);
    assert_eq!(
        s["pending"].as_i64().unwrap() + s["dead_letters"].as_i64().unwrap(),
        200,
        "{s}"
    );
}

#[test]
fn a_trickle_of_events_keeps_to_one_connection_and_a_burst_to_at_most_max_in_flight() {
    let (server, bodies) = raw_server::ok_server();
    let setup = Setup::new(&http_sink(
        "cloud",
        &server.url(),
        SECRET,
        "max_in_flight = 8",
    ));
    let _daemon = setup.start();
    let drained = || setup.sink_status("cloud")["pending"] == 0;
    wait_until(
        Duration::from_secs(30),
        "edgehook's own first events",
        drained,
    );
    let before = server.accepted();
    // One event at a time, each delivered before the next: the most recent connection serves.
    for i in 0..10 {
        emit_one(
            &setup.socket(),
            "sensor.reading",
            serde_json::json!({ "i": i }),
        );
        wait_until(Duration::from_secs(30), "the event's delivery", drained);
    }
    assert!(
        server.accepted() <= before.max(1),
        "{} connections for a trickle, {before} before it",
        server.accepted()
    );
    // A burst: every task busy, each on a connection of its own, none opened twice.
    emit_pipelined(&setup.socket(), 0, scaled(2000), "sensor.reading", 64);
    wait_until(Duration::from_secs(120), "the burst's delivery", drained);
    assert!(server.accepted() <= 8, "{} connections", server.accepted());
    assert!(bodies.lock().unwrap().len() >= 10 + scaled(2000));
}

#[test]
fn a_connection_idle_for_over_15_s_is_not_trusted_again() {
    // The server keeps every connection open for as long as the client does, so only the
    // sink's own idle limit can make it open another.
    let (server, _bodies) = raw_server::ok_server();
    let setup = Setup::new(&http_sink("cloud", &server.url(), SECRET, ""));
    let _daemon = setup.start();
    let drained = || setup.sink_status("cloud")["pending"] == 0;
    let deliver_one = |i: usize| {
        emit_one(
            &setup.socket(),
            "sensor.reading",
            serde_json::json!({ "i": i }),
        );
        wait_until(Duration::from_secs(30), "the event's delivery", drained);
    };
    wait_until(
        Duration::from_secs(30),
        "edgehook's own first events",
        drained,
    );
    deliver_one(0);
    let before = server.accepted();
    deliver_one(1);
    assert_eq!(
        server.accepted(),
        before,
        "a fresh connection is used again"
    );
    // What is waited for here is the idle time itself: over the sink's limit of 15 s (a
    // cellular NAT may have forgotten the connection by then).
    std::thread::sleep(Duration::from_secs(16));
    deliver_one(2);
    assert_eq!(
        server.accepted(),
        before + 1,
        "one new connection after 16 s idle"
    );
    deliver_one(3);
    assert_eq!(server.accepted(), before + 1, "and that one is used again");
}
