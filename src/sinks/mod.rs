//! Sinks: each configured destination runs on threads of its own (blocking I/O never touches
//! the async runtime). A feeder thread reads the sink's queue from the outbox in order and hands
//! deliveries to `max_in_flight` workers through a read-ahead (`ReadAhead`); each worker sees
//! one delivery through to delivered, dead letter, or shutdown. With one worker the sink
//! delivers strictly in outbox order.

pub mod backoff;
pub mod format;
pub mod http;
pub mod mqtt;
pub mod signing;
pub mod tls;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::config::{SinkKind, SinkSpec};
use crate::outbox::{
    Delivery, FETCH_BYTES, Measured, Outbox, Report, SinkId, SinkState, clock, now_ms,
};
use crate::wake::Wake;

/// How many deliveries a sink reads from its queue at once (the HTTP feeder, the MQTT session).
const FETCH: usize = 512;
/// A sink reads its next deliveries once no more than this many wait to be sent (the HTTP
/// feeder) or published (the MQTT session), so it holds at most `READ_AHEAD_LOW + FETCH`.
/// The outbox answers a read only after committing the delivery reports sent before it, on
/// a thread that records every delivery (BENCHMARKS.md, "The read-ahead"): in a fast drain
/// that takes a few milliseconds, and a sink that asked with half a read left (128 of 256)
/// ran dry and waited for the answer about every other read, for a quarter to nearly half of
/// an MQTT drain.
const READ_AHEAD_LOW: usize = FETCH;
/// Nor does it read again while more than this many bytes of bodies wait: with large events a
/// read-ahead holds at most about twice `FETCH_BYTES` (and one event), not `READ_AHEAD_LOW +
/// FETCH` of them (SPEC §13).
const READ_AHEAD_LOW_BYTES: usize = FETCH_BYTES;
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
    /// The URL cannot be sent to.
    #[error("URL {0}: {1}")]
    Url(String, String),
    /// The proxy named in the environment cannot be used.
    #[error("proxy {0}")]
    Proxy(String),
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
        (self.max_age_ms > 0 && clock::age_now_ms().saturating_sub(d.created_ms) > self.max_age_ms)
            .then(|| Report::Dead {
                sink: self.id,
                seq: d.seq,
                at_ms: now_ms(),
                reason: "expired".into(),
                attempts,
                measured: None,
            })
    }

    /// The wait after one more failure in a row: full jitter up to `retry_max`.
    fn backoff(&self, failures_in_row: &mut u32, rng: &mut impl rand::Rng) -> Duration {
        *failures_in_row = failures_in_row.saturating_add(1);
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
        let (failed, wait) = self.failure(d, error, measured, failures_in_row, rng);
        Refusal::Retry(failed, wait)
    }

    /// A failed attempt of `d` to be tried again (`error`), and the backoff before it.
    fn failure(
        &self,
        d: &Delivery,
        error: &str,
        measured: Measured,
        failures_in_row: &mut u32,
        rng: &mut impl rand::Rng,
    ) -> (Report, Duration) {
        let wait = self.backoff(failures_in_row, rng);
        let failed = Report::Failed {
            sink: self.id,
            seq: d.seq,
            at_ms: now_ms(),
            error: error.to_string(),
            state: SinkState::BackingOff,
            measured,
        };
        (failed, wait)
    }
}

/// The deliveries an HTTP sink has read ahead, in outbox order, for its delivery tasks to take
/// one at a time. Its feeder tops it up only once it runs low (`READ_AHEAD_LOW`), so it wakes
/// once a fetch rather than once a delivery. Everything that touches it runs on the sink's one
/// thread (`run_http`), so a `RefCell` holds it and `Notify` wakes its tasks.
#[derive(Default)]
struct ReadAhead {
    queue: RefCell<VecDeque<Delivery>>,
    /// The bytes of the bodies in `queue`.
    bytes: Cell<usize>,
    /// The sink stops: tasks take nothing more, the feeder reads nothing more.
    closed: Cell<bool>,
    /// Raised for the tasks: deliveries arrived, or the sink stops.
    filled: tokio::sync::Notify,
    /// Raised for the feeder: the read-ahead ran low, or the sink stops.
    low: tokio::sync::Notify,
}

impl ReadAhead {
    /// Waits until the read-ahead is low; false once the sink stops.
    async fn wait_low(&self) -> bool {
        loop {
            if self.closed.get() {
                return false;
            }
            if self.is_low() {
                return true;
            }
            self.low.notified().await;
        }
    }

    /// Whether the feeder should read again: few enough deliveries, and bytes, wait.
    fn is_low(&self) -> bool {
        runs_low(self.queue.borrow().len(), self.bytes.get())
    }

    fn extend(&self, batch: Vec<Delivery>) {
        let bytes: usize = batch.iter().map(|d| d.body().len()).sum();
        self.bytes.set(self.bytes.get() + bytes);
        self.queue.borrow_mut().extend(batch);
        self.filled.notify_waiters();
    }

    /// The next delivery, waiting for one; `None` once the sink stops.
    async fn take(&self) -> Option<Delivery> {
        loop {
            if self.closed.get() {
                return None;
            }
            let was_low = self.is_low();
            let next = self.queue.borrow_mut().pop_front();
            if let Some(d) = &next {
                self.bytes.set(self.bytes.get() - d.body().len());
                // Once, as it runs low, so the feeder wakes once a read.
                if !was_low && self.is_low() {
                    self.low.notify_one();
                }
            }
            if next.is_some() {
                return next;
            }
            self.filled.notified().await;
        }
    }

    /// Wakes the feeder and every task for good; what was read ahead is dropped (it stays in
    /// the outbox and is read again when the sink starts).
    fn close(&self) {
        self.closed.set(true);
        self.queue.borrow_mut().clear();
        self.bytes.set(0);
        self.filled.notify_waiters();
        self.low.notify_one();
    }
}

/// Whether a sink holding `queued` deliveries of `bytes` bytes of bodies should read its queue
/// again (`READ_AHEAD_LOW`, `READ_AHEAD_LOW_BYTES`).
pub(crate) fn runs_low(queued: usize, bytes: usize) -> bool {
    queued <= READ_AHEAD_LOW && bytes <= READ_AHEAD_LOW_BYTES
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
        let shared = Arc::new(Shared {
            spec,
            id,
            outbox,
            transport,
            max_age_ms: crate::config::units::millis_i64(max_age),
            device_id: device_id.to_string(),
            work,
            control: Wake::new(),
            stopping: AtomicBool::new(false),
            gone: AtomicBool::new(false),
        });
        shared.outbox.report_blocking(Report::State {
            sink: id,
            state: SinkState::Active,
        });
        let name = shared.spec.name.clone();
        let s = shared.clone();
        // One thread a sink: MQTT's one connection carries the whole window (see `mqtt`);
        // HTTP's `max_in_flight` tasks share the sink's idle connections (`run_http`).
        let thread = match &shared.transport {
            Transport::Mqtt(_) => spawn(&name, "mqtt", move || {
                if let Transport::Mqtt(m) = &s.transport {
                    mqtt::run(&s, m);
                }
            }),
            Transport::Http(_) => spawn(&name, "http", move || {
                if let Transport::Http(h) = &s.transport {
                    run_http(&s, h);
                }
            }),
        };
        Ok(SinkRunner {
            shared,
            threads: vec![thread],
        })
    }

    /// The sink's name.
    pub fn name(&self) -> &str {
        &self.shared.spec.name
    }

    /// Asks every thread to stop after its current attempt.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
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

/// An HTTP sink's thread: a feeder reading its queue ahead and `max_in_flight` delivery tasks
/// on one single-threaded runtime, until the daemon stops the sink.
fn run_http(s: &Shared, http: &http::HttpSink) {
    let ahead = ReadAhead::default();
    let pool = http::Pool::default();
    let tasks = (0..s.spec.max_in_flight.max(1)).map(|_| send_loop(s, http, &pool, &ahead));
    run_on_own_runtime(
        s,
        futures_util::future::join3(
            feed(s, &ahead),
            futures_util::future::join_all(tasks),
            close_on_stop(s, &ahead),
        ),
    );
}

/// A single-threaded runtime: a sink's thread's own, or one attempt's outside it.
fn single_thread_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Runs a sink's thread's work on a runtime of its own; without one, says so and returns.
fn run_on_own_runtime(s: &Shared, work: impl Future) {
    match single_thread_runtime() {
        Ok(runtime) => {
            runtime.block_on(work);
        }
        Err(e) => {
            log::error!(sink = s.spec.name.as_str(); "Sink {} cannot start its runtime: {e}", s.spec.name);
        }
    }
}

/// Closes the read-ahead once the sink is asked to stop: the tasks finish the attempts they
/// have out and take nothing more.
async fn close_on_stop(s: &Shared, ahead: &ReadAhead) {
    loop {
        let seen = s.control.generation();
        if s.stopping.load(Ordering::SeqCst) {
            ahead.close();
            return;
        }
        s.control.changed(seen).await;
    }
}

/// Sleeps for `wait`, or until the sink's control flag moves past `seen` (stop, resume).
async fn pause(s: &Shared, seen: u64, wait: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = s.control.changed(seen) => {}
    }
}

async fn feed(s: &Shared, ahead: &ReadAhead) {
    let mut cursor = 0i64;
    // `close_on_stop` closes the read-ahead, which ends this loop.
    while ahead.wait_low().await {
        // Read before the check, so a stop raised after it is not slept through.
        let seen = s.work.generation();
        let control = s.control.generation();
        if s.stopping.load(Ordering::SeqCst) {
            return;
        }
        let fetched = match s.outbox.ask_fetch(s.id, cursor, FETCH).await {
            Ok(answer) => answer.await,
            Err(e) => Err(e),
        };
        match fetched {
            Ok(batch) if batch.is_empty() => {
                tokio::select! {
                    _ = s.work.changed(seen) => {}
                    _ = pause(s, control, IDLE) => {}
                }
            }
            Ok(batch) => {
                cursor = batch.last().map_or(cursor, |d| d.seq);
                ahead.extend(batch);
            }
            Err(e) => {
                log::warn!(sink = s.spec.name.as_str(); "Sink {} cannot read its queue: {e}", s.spec.name);
                pause(s, control, Duration::from_secs(1)).await;
            }
        }
    }
}

/// One delivery task: takes the next delivery and sees it through.
async fn send_loop(s: &Shared, http: &http::HttpSink, pool: &http::Pool, ahead: &ReadAhead) {
    while let Some(d) = ahead.take().await {
        deliver(s, http, pool, d).await;
    }
}

/// Sees one delivery through to delivered, dead letter or shutdown.
async fn deliver(s: &Shared, http: &http::HttpSink, pool: &http::Pool, d: Delivery) {
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
            pause(s, seen, IDLE).await;
            continue;
        }
        if let Some(dead) = s.expired(&d, attempts) {
            s.outbox.report(dead).await;
            return;
        }
        let mut conn = pool.take();
        let a = http
            .attempt(
                &mut conn,
                d.id(),
                d.event_type(),
                d.body(),
                SystemTime::now(),
            )
            .await;
        pool.put(conn);
        attempts = attempts.saturating_add(1);
        let status = a.status.map_or(0, u64::from);
        let latency_ms = a.latency.as_millis() as u64;
        let measured = Measured {
            code: a.status,
            latency_ms,
        };
        let wait = match a.outcome {
            Outcome::Delivered => {
                log::debug!(event_id = d.id(), event_type = d.event_type(), sink = spec.name.as_str(), attempt = attempts, http_status = status, latency_ms = latency_ms;
                    "Delivered event {} to sink {}", d.id(), spec.name);
                s.outbox
                    .report(Report::Delivered {
                        sink: s.id,
                        seq: d.seq,
                        at_ms: now_ms(),
                        measured,
                    })
                    .await;
                return;
            }
            Outcome::Gone => {
                log::warn!(event_id = d.id(), event_type = d.event_type(), sink = spec.name.as_str(), attempt = attempts, http_status = status;
                    "Sink {} answered 410 Gone: pausing it until the config is reloaded or `edgehook resume {}`", spec.name, spec.name);
                s.gone.store(true, Ordering::SeqCst);
                s.outbox
                    .report(Report::Failed {
                        sink: s.id,
                        seq: d.seq,
                        at_ms: now_ms(),
                        error: "HTTP 410 Gone".into(),
                        state: SinkState::Gone,
                        measured,
                    })
                    .await;
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
                        log::error!(event_id = d.id(), event_type = d.event_type(), sink = spec.name.as_str(), attempt = attempts, http_status = status;
                            "Sink {} refused event {} {attempts} times ({error}); it is now a dead letter", spec.name, d.id());
                        s.outbox.report(dead).await;
                        return;
                    }
                    Refusal::Retry(failed, wait) => {
                        log::warn!(event_id = d.id(), event_type = d.event_type(), sink = spec.name.as_str(), attempt = attempts, http_status = status, retry_in_ms = crate::config::units::millis(wait);
                            "Sink {} refused event {} ({error}); attempt {attempts} of {}", spec.name, d.id(), spec.max_attempts);
                        s.outbox.report(failed).await;
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
                log::warn!(event_id = d.id(), event_type = d.event_type(), sink = spec.name.as_str(), attempt = attempts, http_status = status, retry_in_ms = crate::config::units::millis(wait);
                    "Sink {} failed on event {} ({error}); retrying in {} ms", spec.name, d.id(), wait.as_millis());
                s.outbox
                    .report(Report::Failed {
                        sink: s.id,
                        seq: d.seq,
                        at_ms: now_ms(),
                        error,
                        state: SinkState::BackingOff,
                        measured,
                    })
                    .await;
                wait
            }
        };
        pause(s, seen, wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(seq: i64) -> Delivery {
        Delivery::new(seq, &seq.to_string(), "test", b"{}", 0, 0)
    }

    /// The most a read-ahead holds: what was left when the feeder asked, and the answer.
    const FULL: usize = READ_AHEAD_LOW + FETCH;

    /// Runs `f` on a single-threaded runtime, as a sink's thread does, failing after a minute.
    fn on_runtime<F: Future>(f: F) -> F::Output {
        let rt = single_thread_runtime().unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), f)
                .await
                .expect("timed out")
        })
    }

    /// Whether `f` is still waiting after everything ready to run has run.
    async fn waits<F: Future + Unpin>(f: &mut F) -> bool {
        tokio::select! {
            biased;
            _ = f => false,
            _ = tokio::task::yield_now() => true,
        }
    }

    #[test]
    fn the_read_ahead_hands_out_in_order_and_wakes_the_feeder_only_once_it_runs_low() {
        let ahead = ReadAhead::default();
        on_runtime(async {
            ahead.extend((1..=FULL as i64).map(delivery).collect());
            let mut feeder = Box::pin(ahead.wait_low());
            assert!(
                waits(&mut feeder).await,
                "the feeder waits while it is full"
            );
            let mut seqs = Vec::new();
            while ahead.queue.borrow().len() > READ_AHEAD_LOW + 1 {
                seqs.push(ahead.take().await.unwrap().seq);
            }
            // One more than the low mark waits: the feeder is still asleep.
            assert!(waits(&mut feeder).await);
            seqs.push(ahead.take().await.unwrap().seq);
            assert!(feeder.await, "the feeder goes on reading");
            while let Some(d) = ahead.queue.borrow_mut().pop_front() {
                seqs.push(d.seq);
            }
            assert_eq!(seqs, (1..=FULL as i64).collect::<Vec<_>>());
        });
    }

    #[test]
    fn the_read_ahead_runs_low_by_bytes_as_well_as_by_count() {
        let big = |seq: i64| {
            let body = vec![b'x'; READ_AHEAD_LOW_BYTES / 4];
            Delivery::new(seq, &seq.to_string(), "test", &body, 0, 0)
        };
        let ahead = ReadAhead::default();
        on_runtime(async {
            // Six deliveries of a quarter of the mark each: few, but too many bytes.
            ahead.extend((1..=6).map(big).collect());
            let mut feeder = Box::pin(ahead.wait_low());
            assert!(
                waits(&mut feeder).await,
                "the feeder waits while 1.5x the mark waits"
            );
            assert_eq!(ahead.take().await.unwrap().seq, 1);
            assert!(waits(&mut feeder).await, "1.25x the mark still waits");
            assert_eq!(ahead.take().await.unwrap().seq, 2);
            assert!(feeder.await, "the feeder reads again at the mark");
        });
    }

    #[test]
    fn a_waiting_task_is_woken_by_deliveries_and_closing_wakes_everyone_and_drops_them() {
        let ahead = ReadAhead::default();
        on_runtime(async {
            let mut task = Box::pin(ahead.take());
            assert!(waits(&mut task).await, "nothing to take yet");
            ahead.extend(vec![delivery(7)]);
            assert_eq!(task.await.map(|d| d.seq), Some(7));

            let mut task = Box::pin(ahead.take());
            assert!(waits(&mut task).await);
            ahead.close();
            assert!(task.await.is_none());
        });

        let ahead = ReadAhead::default();
        on_runtime(async {
            ahead.extend((1..=FULL as i64).map(delivery).collect());
            let mut feeder = Box::pin(ahead.wait_low());
            assert!(waits(&mut feeder).await);
            ahead.close();
            assert!(!feeder.await, "the feeder stops");
            assert!(ahead.queue.borrow().is_empty());
            assert!(ahead.take().await.is_none());
        });
    }
}
