//! Sinks: each configured destination runs on threads of its own (blocking I/O never touches
//! the async runtime). A feeder thread reads the sink's queue from the outbox in order and hands
//! deliveries to `max_in_flight` workers through a read-ahead (`ReadAhead`); each worker sees
//! one delivery through to delivered, dead letter, or shutdown. With one worker the sink
//! delivers strictly in outbox order.

pub mod backoff;
pub mod format;
pub mod http;
pub mod lean_tcp;
pub mod mqtt;
pub mod mqtt_wire;
pub mod signing;
pub mod tls;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{SinkKind, SinkSpec};
use crate::outbox::{Delivery, Measured, Outbox, Report, SinkId, SinkState, clock, now_ms};
use crate::wake::Wake;

/// How many deliveries a sink reads from its queue at once (the HTTP feeder, the MQTT session).
const FETCH: usize = 256;
/// A sink reads its next deliveries once no more than this many wait to be sent (the HTTP
/// feeder) or published (the MQTT session).
const READ_AHEAD_LOW: usize = FETCH / 2;
/// How long an idle feeder sleeps before looking again on its own.
const IDLE: Duration = Duration::from_secs(3600);

/// Why a sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A TLS file could not be used.
    #[error("TLS file {path}: {message}")]
    Tls {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A signing sink's generated secret does not exist yet, or cannot be read here.
    #[error(
        "sink {0} has no signing secret here: its generated secret is made when the daemon first starts the sink, and only the daemon's user and root may read it"
    )]
    NoSecret(String),
}

/// Refuses a sink whose signer still awaits its generated secret.
fn check_ready(spec: &SinkSpec) -> Result<(), SinkError> {
    if spec.signer.is_ready() {
        Ok(())
    } else {
        Err(SinkError::NoSecret(spec.name.clone()))
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver took it.
    Delivered,
    /// Try again later (connection errors, timeouts, 408, 425, 429, 5xx).
    Transient {
        /// What went wrong.
        error: String,
        /// The receiver's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// The receiver refused it (3xx, other 4xx).
    Permanent {
        /// What went wrong.
        error: String,
    },
    /// 410: the endpoint is gone; the sink pauses.
    Gone,
}

/// One attempt with its measurements.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The result.
    pub outcome: Outcome,
    /// HTTP status, when there was a response.
    pub status: Option<u16>,
    /// Time taken.
    pub latency: Duration,
}

/// The transports.
pub enum Transport {
    /// HTTP(S).
    Http(http::HttpSink),
    /// MQTT 5.
    Mqtt(mqtt::MqttSink),
}

impl Transport {
    /// The transport for `spec`.
    pub fn new(spec: Arc<SinkSpec>, device_id: &str) -> Result<Self, SinkError> {
        match &spec.kind {
            SinkKind::Http { .. } => Ok(Transport::Http(http::HttpSink::new(spec, device_id)?)),
            SinkKind::Mqtt(_) => Ok(Transport::Mqtt(mqtt::MqttSink::new(spec, device_id)?)),
        }
    }
}

struct Shared {
    spec: Arc<SinkSpec>,
    id: SinkId,
    outbox: Outbox,
    transport: Transport,
    max_age_ms: i64,
    device_id: String,
    /// Raised by the outbox when deliveries are committed.
    work: Arc<Wake>,
    /// Raised on stop and on resume.
    control: Wake,
    stopping: AtomicBool,
    gone: AtomicBool,
    /// The HTTP feeder's deliveries, waiting for a worker.
    ahead: ReadAhead,
}

/// What a refused attempt leads to, the same for every transport.
enum Refusal {
    /// That was the last attempt `max_attempts` allows: the delivery is a dead letter.
    Dead(Report),
    /// The failed attempt, and the wait before the next one.
    Retry(Report, Duration),
}

impl Shared {
    /// The dead letter for `d` once it has outlived `max_age` (after `attempts` attempts).
    fn expired(&self, d: &Delivery, attempts: u32) -> Option<Report> {
        (self.max_age_ms > 0 && clock::age_now_ms() - d.created_ms > self.max_age_ms).then(|| {
            Report::Dead {
                sink: self.id,
                seq: d.seq,
                at_ms: now_ms(),
                reason: "expired".into(),
                attempts,
                measured: None,
            }
        })
    }

    /// The wait after one more failure in a row: full jitter up to `retry_max`.
    fn backoff(&self, failures_in_row: &mut u32, rng: &mut impl rand::Rng) -> Duration {
        *failures_in_row += 1;
        let spec = &self.spec;
        backoff::full_jitter(spec.retry_initial, spec.retry_max, *failures_in_row, rng)
    }

    /// Attempt number `attempts` of `d`, refused by the receiving end with `error`: a dead
    /// letter (`rejected: …`) once `max_attempts` are spent, else a failure and a backoff.
    fn refusal(
        &self,
        d: &Delivery,
        attempts: u32,
        error: &str,
        measured: Measured,
        failures_in_row: &mut u32,
        rng: &mut impl rand::Rng,
    ) -> Refusal {
        if attempts >= self.spec.max_attempts {
            return Refusal::Dead(Report::Dead {
                sink: self.id,
                seq: d.seq,
                at_ms: now_ms(),
                reason: format!("rejected: {error}"),
                attempts,
                measured: Some(measured),
            });
        }
        let wait = self.backoff(failures_in_row, rng);
        let failed = Report::Failed {
            sink: self.id,
            seq: d.seq,
            at_ms: now_ms(),
            error: error.to_string(),
            state: SinkState::BackingOff,
            measured,
        };
        Refusal::Retry(failed, wait)
    }
}

/// The deliveries an HTTP feeder has read ahead, in outbox order, for the sink's workers to
/// take one at a time. The feeder tops it up only once it runs low (`READ_AHEAD_LOW`), so it
/// wakes once a fetch rather than once a delivery (a channel bounded by the number of workers
/// woke it for every delivery a worker took: a thread switch a delivery on a 2-core device).
#[derive(Default)]
struct ReadAhead {
    state: Mutex<Ahead>,
    /// Raised for workers: deliveries arrived, or the sink stops.
    filled: Condvar,
    /// Raised for the feeder: the read-ahead ran low, or the sink stops.
    low: Condvar,
}

#[derive(Default)]
struct Ahead {
    queue: VecDeque<Delivery>,
    /// The feeder waits on `low`.
    feeder_waits: bool,
    /// Workers waiting on `filled`.
    workers_wait: usize,
    /// The sink stops: workers take nothing more, the feeder reads nothing more.
    closed: bool,
}

impl ReadAhead {
    fn lock(&self) -> MutexGuard<'_, Ahead> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the read-ahead is low; false once the sink stops.
    fn wait_low(&self) -> bool {
        let mut a = self.lock();
        while !a.closed && a.queue.len() > READ_AHEAD_LOW {
            a.feeder_waits = true;
            a = self.low.wait(a).unwrap_or_else(|p| p.into_inner());
        }
        a.feeder_waits = false;
        !a.closed
    }

    fn extend(&self, batch: Vec<Delivery>) {
        let mut a = self.lock();
        a.queue.extend(batch);
        if a.workers_wait > 0 {
            self.filled.notify_all();
        }
    }

    /// The next delivery, waiting for one; `None` once the sink stops.
    fn take(&self) -> Option<Delivery> {
        let mut a = self.lock();
        loop {
            if a.closed {
                return None;
            }
            if let Some(d) = a.queue.pop_front() {
                if a.feeder_waits && a.queue.len() <= READ_AHEAD_LOW {
                    a.feeder_waits = false;
                    self.low.notify_one();
                }
                return Some(d);
            }
            a.workers_wait += 1;
            a = self.filled.wait(a).unwrap_or_else(|p| p.into_inner());
            a.workers_wait -= 1;
        }
    }

    /// Wakes the feeder and every worker for good; what was read ahead is dropped (it stays in
    /// the outbox and is read again when the sink starts).
    fn close(&self) {
        let mut a = self.lock();
        a.closed = true;
        a.queue.clear();
        drop(a);
        self.filled.notify_all();
        self.low.notify_all();
    }
}

/// A running sink.
pub struct SinkRunner {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl SinkRunner {
    /// Starts the feeder and workers of one sink.
    pub fn start(
        spec: Arc<SinkSpec>,
        id: SinkId,
        outbox: Outbox,
        work: Arc<Wake>,
        device_id: &str,
        max_age: Duration,
    ) -> Result<Self, SinkError> {
        let transport = Transport::new(spec.clone(), device_id)?;
        let workers = spec.max_in_flight.max(1);
        let shared = Arc::new(Shared {
            spec,
            id,
            outbox,
            transport,
            max_age_ms: max_age.as_millis() as i64,
            device_id: device_id.to_string(),
            work,
            control: Wake::new(),
            stopping: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            ahead: ReadAhead::default(),
        });
        shared.outbox.report_blocking(Report::State {
            sink: id,
            state: SinkState::Active,
        });
        let mut threads = Vec::with_capacity(workers + 1);
        let name = shared.spec.name.clone();
        if let Transport::Mqtt(_) = &shared.transport {
            // One connection carries the whole window; see `mqtt`.
            let s = shared.clone();
            threads.push(spawn(&name, "mqtt", move || {
                if let Transport::Mqtt(m) = &s.transport {
                    mqtt::run(&s, m);
                }
            }));
            return Ok(SinkRunner { shared, threads });
        }
        let s = shared.clone();
        threads.push(spawn(&name, "feed", move || feed(&s)));
        for _ in 0..workers {
            let s = shared.clone();
            threads.push(spawn(&name, "send", move || send_loop(&s)));
        }
        Ok(SinkRunner { shared, threads })
    }

    /// The sink's name.
    pub fn name(&self) -> &str {
        &self.shared.spec.name
    }

    /// Asks every thread to stop after its current attempt.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.ahead.close();
        self.shared.control.raise();
        self.shared.work.raise();
    }

    /// Un-pauses a sink paused by 410; false when it was not paused.
    pub fn resume(&self) -> bool {
        let was = self.shared.gone.swap(false, Ordering::SeqCst);
        if was {
            self.shared.outbox.report_blocking(Report::State {
                sink: self.shared.id,
                state: SinkState::Active,
            });
        }
        self.shared.control.raise();
        was
    }

    /// Stops the sink (its attempts finish until `deadline`) and starts it again, reading its
    /// queue from the start: how deliveries put back behind its position are picked up.
    pub fn restart(self, deadline: Instant) -> Result<SinkRunner, SinkError> {
        let s = self.shared.clone();
        self.stop();
        if !self.join(deadline) {
            log::warn!(sink = s.spec.name.as_str(); "Sink {} did not finish its attempt in time; it will be retried", s.spec.name);
        }
        let max_age = Duration::from_millis(s.max_age_ms.max(0) as u64);
        SinkRunner::start(
            s.spec.clone(),
            s.id,
            s.outbox.clone(),
            s.work.clone(),
            &s.device_id,
            max_age,
        )
    }

    /// Waits until `deadline` for the threads to finish; returns false if some did not (their
    /// attempts are then abandoned and retried after the restart).
    pub fn join(self, deadline: Instant) -> bool {
        let mut all = true;
        for t in self.threads {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                all = false;
            }
        }
        all
    }
}

fn spawn(sink: &str, role: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    let mut name = format!("{role}:{sink}");
    name.truncate(15);
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .expect("the system cannot start a thread")
}

fn feed(s: &Shared) {
    let mut cursor = 0i64;
    // `stop` closes the read-ahead, which ends this loop.
    while s.ahead.wait_low() {
        let seen = s.work.generation();
        let control = s.control.generation();
        match s.outbox.fetch_blocking(s.id, cursor, FETCH) {
            Ok(batch) if batch.is_empty() => {
                s.work.wait(seen, IDLE);
            }
            Ok(batch) => {
                cursor = batch.last().map_or(cursor, |d| d.seq);
                s.ahead.extend(batch);
            }
            Err(e) => {
                log::warn!(sink = s.spec.name.as_str(); "Sink {} cannot read its queue: {e}", s.spec.name);
                s.control.wait(control, Duration::from_secs(1));
            }
        }
    }
}

fn send_loop(s: &Shared) {
    while let Some(d) = s.ahead.take() {
        deliver(s, d);
    }
}

/// Sees one delivery through to delivered, dead letter or shutdown.
fn deliver(s: &Shared, d: Delivery) {
    let spec = &s.spec;
    let mut attempts = d.attempts;
    let mut failures_in_row = 0u32;
    let mut rng = rand::rng();
    loop {
        // Read before the checks, so a stop or resume raised after them is not slept through.
        let seen = s.control.generation();
        if s.stopping.load(Ordering::SeqCst) {
            return;
        }
        if s.gone.load(Ordering::SeqCst) {
            s.control.wait(seen, IDLE);
            continue;
        }
        if let Some(dead) = s.expired(&d, attempts) {
            s.outbox.report_blocking(dead);
            return;
        }
        let Transport::Http(http) = &s.transport else {
            return;
        };
        let a = http.attempt(&d.id, &d.event_type, &d.body);
        attempts += 1;
        let status = a.status.map_or(0, u64::from);
        let latency_ms = a.latency.as_millis() as u64;
        let measured = Measured {
            code: a.status,
            latency_ms,
        };
        let wait = match a.outcome {
            Outcome::Delivered => {
                log::debug!(event_id = d.id.as_str(), event_type = d.event_type.as_str(), sink = spec.name.as_str(), attempt = attempts, http_status = status, latency_ms = latency_ms;
                    "Delivered event {} to sink {}", d.id, spec.name);
                s.outbox.report_blocking(Report::Delivered {
                    sink: s.id,
                    seq: d.seq,
                    at_ms: now_ms(),
                    measured,
                });
                return;
            }
            Outcome::Gone => {
                log::warn!(event_id = d.id.as_str(), event_type = d.event_type.as_str(), sink = spec.name.as_str(), attempt = attempts, http_status = status;
                    "Sink {} answered 410 Gone: pausing it until the config is reloaded or `edgehook resume {}`", spec.name, spec.name);
                s.gone.store(true, Ordering::SeqCst);
                s.outbox.report_blocking(Report::Failed {
                    sink: s.id,
                    seq: d.seq,
                    at_ms: now_ms(),
                    error: "HTTP 410 Gone".into(),
                    state: SinkState::Gone,
                    measured,
                });
                continue;
            }
            Outcome::Permanent { error } => {
                match s.refusal(
                    &d,
                    attempts,
                    &error,
                    measured,
                    &mut failures_in_row,
                    &mut rng,
                ) {
                    Refusal::Dead(dead) => {
                        log::error!(event_id = d.id.as_str(), event_type = d.event_type.as_str(), sink = spec.name.as_str(), attempt = attempts, http_status = status;
                            "Sink {} refused event {} {attempts} times ({error}); it is now a dead letter", spec.name, d.id);
                        s.outbox.report_blocking(dead);
                        return;
                    }
                    Refusal::Retry(failed, wait) => {
                        log::warn!(event_id = d.id.as_str(), event_type = d.event_type.as_str(), sink = spec.name.as_str(), attempt = attempts, http_status = status, retry_in_ms = wait.as_millis() as u64;
                            "Sink {} refused event {} ({error}); attempt {attempts} of {}", spec.name, d.id, spec.max_attempts);
                        s.outbox.report_blocking(failed);
                        wait
                    }
                }
            }
            Outcome::Transient { error, retry_after } => {
                let jitter = s.backoff(&mut failures_in_row, &mut rng);
                let wait = match retry_after {
                    Some(r) => jitter.max(r.min(spec.retry_max)),
                    None => jitter,
                };
                log::warn!(event_id = d.id.as_str(), event_type = d.event_type.as_str(), sink = spec.name.as_str(), attempt = attempts, http_status = status, retry_in_ms = wait.as_millis() as u64;
                    "Sink {} failed on event {} ({error}); retrying in {} ms", spec.name, d.id, wait.as_millis());
                s.outbox.report_blocking(Report::Failed {
                    sink: s.id,
                    seq: d.seq,
                    at_ms: now_ms(),
                    error,
                    state: SinkState::BackingOff,
                    measured,
                });
                wait
            }
        };
        s.control.wait(seen, wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(seq: i64) -> Delivery {
        Delivery {
            seq,
            id: seq.to_string(),
            event_type: "test".into(),
            body: Arc::from(&b"{}"[..]),
            created_ms: 0,
            attempts: 0,
        }
    }

    /// Polls `done` until it holds, failing after a minute.
    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_read_ahead_hands_out_in_order_and_wakes_the_feeder_only_once_it_runs_low() {
        let ahead = Arc::new(ReadAhead::default());
        ahead.extend((1..=FETCH as i64).map(delivery).collect());
        let woke = Arc::new(AtomicBool::new(false));
        let feeder = {
            let (ahead, woke) = (ahead.clone(), woke.clone());
            std::thread::spawn(move || {
                let open = ahead.wait_low();
                woke.store(true, Ordering::SeqCst);
                open
            })
        };
        wait_for("the feeder to wait", || ahead.lock().feeder_waits);
        let mut seqs = Vec::new();
        while ahead.lock().queue.len() > READ_AHEAD_LOW + 1 {
            seqs.push(ahead.take().unwrap().seq);
        }
        // One more than the low mark waits: the feeder is still asleep, and nobody woke it.
        assert!(ahead.lock().feeder_waits);
        assert!(!woke.load(Ordering::SeqCst));
        seqs.push(ahead.take().unwrap().seq);
        wait_for("the feeder to wake", || feeder.is_finished());
        assert!(feeder.join().unwrap(), "the feeder goes on reading");
        while let Some(d) = ahead.lock().queue.pop_front() {
            seqs.push(d.seq);
        }
        assert_eq!(seqs, (1..=FETCH as i64).collect::<Vec<_>>());
    }

    #[test]
    fn closing_the_read_ahead_wakes_the_workers_and_the_feeder_and_drops_what_it_held() {
        let ahead = Arc::new(ReadAhead::default());
        let worker = {
            let ahead = ahead.clone();
            std::thread::spawn(move || ahead.take().map(|d| d.seq))
        };
        wait_for("the worker to wait", || ahead.lock().workers_wait == 1);
        ahead.close();
        wait_for("the worker to wake", || worker.is_finished());
        assert_eq!(worker.join().unwrap(), None);

        let ahead = Arc::new(ReadAhead::default());
        ahead.extend((1..=FETCH as i64).map(delivery).collect());
        let feeder = {
            let ahead = ahead.clone();
            std::thread::spawn(move || ahead.wait_low())
        };
        wait_for("the feeder to wait", || ahead.lock().feeder_waits);
        ahead.close();
        wait_for("the feeder to wake", || feeder.is_finished());
        assert!(!feeder.join().unwrap(), "the feeder stops");
        assert!(ahead.lock().queue.is_empty());
        assert!(ahead.take().is_none());
    }
}
