//! Durable ingest: eight clients pipelining `emit` over the socket with `durability = full`,
//! against a rusqlite program inserting the same rows (the envelope edgehook stores, a delivery
//! row for its one sink, the counters) into the same schema with the same durability, at the
//! best of several batch sizes.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use edgehook::config::Durability;
use rusqlite::params;
use serde_json::value::RawValue;

use crate::common::Setup;
use crate::measure::rate;

pub const CLIENTS: usize = 8;
/// Requests a client keeps in flight: as many as the daemon reads ahead on a connection, as the
/// anchor is given its best batch size. With 64 the figure was 0.42-0.51 of the anchor on
/// 2026-11-30, with 256 0.64-0.65: with `durability = full` a client waits for the commit of
/// everything it has in flight, so the depth of the pipelines is what one commit can gather.
pub const WINDOW: usize = edgehook::sources::ingest::PIPELINE;

/// A 256-byte JSON payload, different for each `i`.
pub fn payload(i: usize) -> String {
    let head = format!("{{\"seq\":{i},\"sensor\":\"temperature\",\"celsius\":21.5,\"pad\":\"");
    let pad = 256 - head.len() - 2;
    format!("{head}{}\"}}", "x".repeat(pad))
}

/// One `emit` request line per payload.
fn lines(from: usize, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 300);
    for i in from..from + n {
        out.extend_from_slice(b"{\"type\":\"bench.reading\",\"data\":");
        out.extend_from_slice(payload(i).as_bytes());
        out.extend_from_slice(b"}\n");
    }
    out
}

/// Sends `n` events over one connection with `WINDOW` in flight; panics on any refusal.
fn client(socket: &Path, from: usize, n: usize) {
    let requests = lines(from, n);
    let mut writer = UnixStream::connect(socket).expect("connect to the socket");
    let mut reader = BufReader::new(writer.try_clone().unwrap());
    let mut at = 0; // byte offset of the next unsent line
    let (mut sent, mut acked) = (0, 0);
    let mut reply = String::new();
    while acked < n {
        let start = at;
        while sent < n && sent - acked < WINDOW {
            at += requests[at..].iter().position(|&b| b == b'\n').unwrap() + 1;
            sent += 1;
        }
        if at > start {
            writer.write_all(&requests[start..at]).expect("send");
        }
        reply.clear();
        reader.read_line(&mut reply).expect("a reply");
        assert!(reply.contains("\"ok\":true"), "emit refused: {reply}");
        acked += 1;
    }
}

/// `n` events from `CLIENTS` clients at once, each pipelining; returns when all are acknowledged.
pub fn emit_concurrently(socket: &Path, n: usize) -> Duration {
    let per = n / CLIENTS;
    let barrier = std::sync::Barrier::new(CLIENTS + 1);
    std::thread::scope(|s| {
        for c in 0..CLIENTS {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                client(socket, c * per, per);
            });
        }
        barrier.wait();
        let started = Instant::now();
        // The scope joins the clients before returning.
        started
    })
    .elapsed()
}

/// A sink section for the benchmark's events, signing with Standard Webhooks.
pub fn sink(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[[sink]]\nname = \"{name}\"\nurl = \"{url}\"\nevents = [\"bench.*\"]\n{extra}\n[sink.signing]\nscheme = \"standard\"\nsecret = \"{}\"\n",
        crate::common::SECRET
    )
}

/// A sink whose receiver is down: events wait in its queue.
pub fn parked_sink() -> String {
    sink(
        "cloud",
        "http://127.0.0.1:1/hook",
        "[sink.retry]\ninitial = \"1h\"\nmax = \"1h\"",
    )
}

/// edgehook's durable ingest rate (events/s) for `n` events into a fresh outbox.
pub fn edgehook(n: usize) -> f64 {
    let setup = Setup::new(&format!("{}\n", parked_sink()));
    let _daemon = setup.start();
    rate(n / CLIENTS * CLIENTS, emit_concurrently(&setup.socket(), n))
}

/// The anchor: the same rows into the same schema with synchronous = FULL, at the best batch
/// size. Returns (events/s, batch size).
pub fn anchor(dir: &Path, n: usize) -> (f64, usize) {
    let now = SystemTime::now();
    let events: Vec<_> = (0..n)
        .map(|i| {
            let data = RawValue::from_string(payload(i)).unwrap();
            edgehook::event::build(None, "bench.reading", &data, now)
        })
        .collect();
    let mut best = (0.0, 0);
    for batch in [1usize, 8, 64, 512, 4096] {
        // Small batches are slow enough that fewer rows tell their rate.
        let rows = n.min(500 * batch);
        let path = dir.join(format!("anchor-{batch}.db"));
        let _ = std::fs::remove_file(&path);
        let (conn, _) = edgehook::outbox::open_rw(&path, Durability::Full).expect("anchor db");
        conn.execute("INSERT INTO sinks (id, name) VALUES (1, 'cloud')", [])
            .unwrap();
        let started = Instant::now();
        let (mut count, mut bytes) = (0i64, 0i64);
        for chunk in events[..rows].chunks(batch) {
            conn.execute_batch("BEGIN").unwrap();
            {
                let mut insert = conn
                    .prepare_cached(
                        "INSERT INTO events (id, type, body, created_ms, refs) VALUES (?1, ?2, ?3, ?4, 1)",
                    )
                    .unwrap();
                let mut delivery = conn
                    .prepare_cached("INSERT INTO deliveries (sink, seq) VALUES (1, ?1)")
                    .unwrap();
                for e in chunk {
                    insert
                        .execute(params![e.id, e.event_type, e.body, e.created_ms])
                        .unwrap();
                    delivery.execute(params![conn.last_insert_rowid()]).unwrap();
                    count += 1;
                    bytes += e.body.len() as i64;
                }
            }
            conn.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")
                .unwrap()
                .execute(params!["event_count", count])
                .unwrap();
            conn.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")
                .unwrap()
                .execute(params!["event_bytes", bytes])
                .unwrap();
            conn.prepare_cached("UPDATE sinks SET pending = ?1 WHERE id = 1")
                .unwrap()
                .execute(params![count])
                .unwrap();
            conn.execute_batch("COMMIT").unwrap();
        }
        let r = rate(rows, started.elapsed());
        if r > best.0 {
            best = (r, batch);
        }
        drop(conn);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    best
}
