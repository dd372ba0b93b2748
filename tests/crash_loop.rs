//! The crash loop: 200 `kill -9` at random moments (some while the daemon is still starting)
//! while 8 producers emit and an HTTP sink and an MQTT sink drain. Producers behave as real
//! ones should: after a lost connection they reconnect and send every request that was not
//! acknowledged again, with the same id. Afterwards every acknowledged event has arrived at
//! both sinks, first arrivals are in outbox order (the same order at both sinks, each
//! producer's order kept, and never an event stored after another was acknowledged ahead of
//! it), repeats go back only over what can be in flight, and the file passes
//! `PRAGMA integrity_check`.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::broker::{Broker, Message, Subscriber, check_arrivals, mosquitto_available};
use common::*;
use edgehook::client::{Client, Reply};
use rand::Rng;
use serde_json::json;

/// Under an emulator a tenth of both (`scaled`).
const KILLS: usize = 200;
const PRODUCERS: usize = 8;
const PER_PRODUCER: usize = 2500;
/// Requests a producer keeps in flight.
const WINDOW: usize = 16;
/// How far back a repeat may go at a sink. A sink's read of its queue (512 deliveries) is
/// answered only once the reports it sent before asking are committed, and it asks for the
/// next read once 512 or fewer deliveries are left, delivering those while the outbox answers.
/// So at a kill, what was delivered but not yet recorded is at most what followed the last
/// read the outbox answered: the 512 left when it was asked, the 512 it brought, and what was
/// in flight; and what arrived without its acknowledgement (the in-flight attempts again)
/// stands beyond it. In flight: the one attempt and the one handed over (HTTP,
/// `max_in_flight = 1`), or the 16 publishes of the window (MQTT). (With a bound of the read
/// alone, an MQTT repeat went back further about one run in ten once publishes went out a
/// window at a time: the sink delivered what was left before a busy outbox, syncing the
/// producers' appends, answered the read.)
const HTTP_REPEAT_WINDOW: usize = 512 + 512 + 2 + 2;
const MQTT_REPEAT_WINDOW: usize = 512 + 512 + 16 + 16;

/// One acknowledged event as its producer saw it.
struct Acked {
    id: String,
    producer: usize,
    /// When it was first sent: it cannot have been stored before.
    first_sent: Instant,
    /// When its acknowledgement arrived: it was stored by then.
    acked: Instant,
    /// Sent again after a kill: it may have been stored, and even delivered, the first time.
    resent: bool,
}

#[test]
fn two_hundred_kills_while_eight_producers_emit_and_two_sinks_drain_lose_nothing_acknowledged() {
    if !mosquitto_available() {
        return;
    }
    let receiver = Receiver::ok();
    let setup = Setup::new("");
    let broker = Broker::start(setup.dir.path(), "allow_anonymous true");
    let subscriber = Subscriber::connect(broker.port, "edgehook/+/events/#");
    setup.write_config(&format!(
        "{}[[sink]]\nname = \"broker\"\nurl = \"{}\"\n[sink.signing]\nscheme = \"standard\"\nsecret = \"{SECRET}\"\n[sink.retry]\ninitial = \"20ms\"\nmax = \"200ms\"\nmax_attempts = 1000\n",
        http_sink("cloud", &receiver.url(), SECRET, ""),
        broker.url()
    ));
    let mut daemon = setup.start();

    let (kills, per_producer) = (scaled(KILLS), scaled(PER_PRODUCER));
    // Production is spread over the kills: each daemon's life lets every producer send a
    // little more, and the last lives only drain.
    let allowed = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let socket = setup.socket();
            let (allowed, done) = (allowed.clone(), done.clone());
            thread::spawn(move || {
                let acked = produce(&socket, p, per_producer, &allowed);
                done.fetch_add(1, Ordering::SeqCst);
                acked
            })
        })
        .collect();

    let mut rng = rand::rng();
    let (mut mid_stream, mut during_start_up) = (0, 0);
    for kill in 0..kills {
        let share = per_producer * (kill + 1) / (kills - kills / 10);
        allowed.store(share.min(per_producer), Ordering::SeqCst);
        if rng.random_bool(0.25) {
            // The process launched by the last kill, while it starts up and recovers.
            thread::sleep(Duration::from_millis(rng.random_range(0..20)));
            during_start_up += 1;
        } else {
            daemon.wait_ready();
            let (http, mqtt) = (receiver.delivered_count(), subscriber.event_count());
            wait_until(Duration::from_secs(60), "progress before a kill", || {
                (receiver.delivered_count() > http && subscriber.event_count() > mqtt)
                    || done.load(Ordering::SeqCst) == PRODUCERS
            });
            thread::sleep(Duration::from_millis(rng.random_range(0..25)));
            if done.load(Ordering::SeqCst) < PRODUCERS {
                mid_stream += 1;
            }
        }
        daemon.restart_unready();
    }
    daemon.wait_ready();
    let acked: Vec<Acked> = producers
        .into_iter()
        .flat_map(|p| p.join().expect("a producer"))
        .collect();
    assert_eq!(acked.len(), PRODUCERS * per_producer);
    let ids: HashSet<&str> = acked.iter().map(|a| a.id.as_str()).collect();
    wait_until(
        Duration::from_secs(300),
        "every acknowledged event at both sinks",
        || {
            let http: HashSet<String> = receiver.delivered_ids().into_iter().collect();
            let mqtt = subscriber.distinct_event_ids();
            ids.iter()
                .all(|id| http.contains(*id) && mqtt.contains(*id))
        },
    );

    // The outbox order, as the HTTP sink's first arrivals show it.
    let http_arrivals = receiver.delivered_ids();
    let mut first = HashSet::new();
    let order: Vec<String> = http_arrivals
        .iter()
        .filter(|id| ids.contains(id.as_str()) && first.insert(id.as_str()))
        .cloned()
        .collect();
    assert_in_outbox_order(&order, &acked);
    let resent: HashSet<&str> = acked
        .iter()
        .filter(|a| a.resent)
        .map(|a| a.id.as_str())
        .collect();
    let mqtt_arrivals: Vec<String> = subscriber.events().iter().map(Message::event_id).collect();
    let mut figures = String::new();
    for (sink, arrivals, window) in [
        ("HTTP", &http_arrivals, HTTP_REPEAT_WINDOW),
        ("MQTT", &mqtt_arrivals, MQTT_REPEAT_WINDOW),
    ] {
        // A producer's resend of an event stored before the kill lost its acknowledgement is
        // stored again if that event had already been delivered and deleted: a repeat that may
        // come any time later, counted apart. Every other repeat must be of an event that was
        // in flight to the sink at a kill. At both sinks the first arrivals are `order`.
        let (retried, arrivals) = without_repeats_of(arrivals, &resent);
        let repeats = check_arrivals(&arrivals, &order, window);
        assert!(repeats <= kills * window);
        figures += &format!("{sink}: {repeats} repeats, {retried} of producers' resends; ");
    }
    eprintln!(
        "{kills} kills ({mid_stream} while producers emitted, {during_start_up} during start-up); \
         {} events acknowledged ({} after a resend), lost 0; {figures}",
        acked.len(),
        resent.len()
    );

    assert_eq!(daemon.terminate(), Some(0));
    assert_eq!(integrity_check(&setup.db()), "ok");
}

/// Emits `n` events with ids `p{producer}-{i}` over the socket, no more than
/// `allowed` so far, keeping `WINDOW` in flight; after a lost connection reconnects and sends
/// everything unacknowledged again. Returns what was acknowledged, in order.
fn produce(socket: &Path, producer: usize, n: usize, allowed: &AtomicUsize) -> Vec<Acked> {
    let mut acked = Vec::with_capacity(n);
    let mut in_flight: VecDeque<(usize, Instant, bool)> = VecDeque::new();
    let mut next = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while acked.len() < n {
        assert!(Instant::now() < deadline, "producer {producer} made no end");
        let Some(mut client) = connect(socket) else {
            continue;
        };
        // Everything unacknowledged goes again, in order, with its id.
        for (_, _, resent) in in_flight.iter_mut() {
            *resent = true;
        }
        let resend: Vec<usize> = in_flight.iter().map(|(i, _, _)| *i).collect();
        if resend
            .iter()
            .any(|&i| send(&mut client, producer, i).is_err())
        {
            continue;
        }
        'connection: loop {
            while next < allowed.load(Ordering::SeqCst) && in_flight.len() < WINDOW {
                in_flight.push_back((next, Instant::now(), false));
                next += 1;
                if send(&mut client, producer, next - 1).is_err() {
                    break 'connection;
                }
            }
            if in_flight.is_empty() {
                if next == n {
                    break;
                }
                // Until the next daemon's life allows more.
                thread::sleep(Duration::from_millis(1));
                continue;
            }
            match client.recv() {
                Ok(Reply::Ok(v)) => {
                    let (i, first_sent, resent) =
                        in_flight.pop_front().expect("a request in flight");
                    let id = v.id.expect("an id");
                    assert_eq!(id, event_id(producer, i), "a reply out of order");
                    acked.push(Acked {
                        id,
                        producer,
                        first_sent,
                        acked: Instant::now(),
                        resent,
                    });
                }
                Ok(Reply::Err { code, error }) => panic!("emit refused: {code}: {error}"),
                // The daemon was killed: reconnect and send again.
                Err(_) => break 'connection,
            }
        }
    }
    acked
}

fn event_id(producer: usize, i: usize) -> String {
    format!("p{producer}-{i}")
}

fn send(client: &mut Client, producer: usize, i: usize) -> std::io::Result<()> {
    client
        .send(
            &json!({"op": "emit", "id": event_id(producer, i), "type": "sensor.reading",
            "data": {"producer": producer, "n": i}}),
        )
        .map_err(std::io::Error::other)
}

/// A connection once the daemon answers, or None after a short wait (the daemon is down).
fn connect(socket: &Path) -> Option<Client> {
    match Client::connect(socket) {
        Ok(c) => Some(c),
        Err(_) => {
            thread::sleep(Duration::from_millis(5));
            None
        }
    }
}

/// `order` (first arrivals) is an outbox order: each producer's events in the order it sent
/// them, and no event placed before one that was acknowledged before it was first sent.
fn assert_in_outbox_order(order: &[String], acked: &[Acked]) {
    let by_id: HashMap<&str, &Acked> = acked.iter().map(|a| (a.id.as_str(), a)).collect();
    let mut last_of: HashMap<usize, usize> = HashMap::new();
    for id in order {
        let a = by_id[id.as_str()];
        let i: usize = id.rsplit('-').next().unwrap().parse().unwrap();
        if let Some(&prev) = last_of.get(&a.producer) {
            assert!(i > prev, "{id} arrived after p{}-{prev}", a.producer);
        }
        last_of.insert(a.producer, i);
    }
    // Walking back from the end, the earliest acknowledgement among later events must not
    // precede this event's first send.
    let mut earliest_later_ack: Option<(Instant, &str)> = None;
    for id in order.iter().rev() {
        let a = by_id[id.as_str()];
        if let Some((ack, later)) = earliest_later_ack {
            assert!(
                a.first_sent <= ack,
                "{id} arrived before {later}, which was acknowledged before {id} was sent"
            );
        }
        if earliest_later_ack.is_none_or(|(ack, _)| a.acked < ack) {
            earliest_later_ack = Some((a.acked, id));
        }
    }
}

/// `arrivals` without the repeats of `resent` events (first arrivals kept), and how many went.
fn without_repeats_of(arrivals: &[String], resent: &HashSet<&str>) -> (usize, Vec<String>) {
    let mut seen = HashSet::new();
    let kept: Vec<String> = arrivals
        .iter()
        .filter(|id| seen.insert(id.as_str()) || !resent.contains(id.as_str()))
        .cloned()
        .collect();
    (arrivals.len() - kept.len(), kept)
}

fn integrity_check(db: &PathBuf) -> String {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}
