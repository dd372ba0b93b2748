//! One connection's deliveries: up to the window in flight, in outbox order, each tied to its
//! packet id and done only at its acknowledgement.
//!
//! rumqttc gives a publish its packet id when it writes it, and reports the ids in the order
//! the publishes were handed over, so the first publish without an id gets the next id
//! reported. An acknowledgement finds its publish by that id. When the connection ends,
//! whatever is unacknowledged is forgotten here and read again from the outbox on the next
//! connection: nothing is reported delivered without its PUBACK or PUBCOMP.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::link::{Event, Granted, Link};
use super::{End, MqttSink, classify, framing, takes_qos};
use crate::outbox::{Delivery, Measured, Report, SinkState, now_ms};
use crate::sinks::{FETCH, READ_AHEAD_LOW, Refusal, Shared, runs_low};

/// A publish handed to rumqttc and not yet acknowledged: an event, or the presence message.
struct InFlight {
    /// `None` for the presence message.
    delivery: Option<Delivery>,
    /// Known once the publish went out.
    pkid: Option<u16>,
    sent: Instant,
}

/// One connection's deliveries.
pub struct Session<'a> {
    s: &'a Shared,
    sink: &'a MqttSink,
    /// Read from the outbox, not yet published.
    queued: VecDeque<Delivery>,
    /// In the order handed to rumqttc.
    in_flight: VecDeque<InFlight>,
    /// Acknowledged, to be reported together.
    done: Vec<(i64, Measured)>,
    /// After a refusal: publish nothing before then.
    hold_until: Option<tokio::time::Instant>,
    failures_in_row: u32,
    rng: rand::rngs::ThreadRng,
}

impl<'a> Session<'a> {
    pub fn new(s: &'a Shared, sink: &'a MqttSink) -> Self {
        Session {
            s,
            sink,
            queued: VecDeque::new(),
            in_flight: VecDeque::new(),
            done: Vec::new(),
            hold_until: None,
            failures_in_row: 0,
            rng: rand::rng(),
        }
    }

    /// How long the broker may take to acknowledge.
    fn timeout(&self) -> Duration {
        self.s.spec.timeout.max(Duration::from_secs(1))
    }

    /// Publishes presence, then keeps up to `max_in_flight` events in flight in outbox order
    /// until the connection ends or the sink stops.
    pub async fn run(&mut self, link: &mut Link, granted: Granted) -> End {
        let s = self.s;
        let qos = self.sink.m().qos;
        if let Err(e) = takes_qos(&granted, qos) {
            return End::Lost(e);
        }
        let window = s.spec.max_in_flight.clamp(1, granted.receive_maximum);
        let mut cursor = 0i64;
        let mut exhausted = false;
        // The answer to a fetch asked ahead, and the queue's generation when it was asked (so
        // that work arriving after an empty answer is not missed).
        let mut asked = None;
        let mut work_seen = s.work.generation();
        let status_topic = self.sink.fill(&self.sink.m().status_topic, "");
        // A broker without retained messages takes it plain.
        let presence = link.publish(
            status_topic,
            1,
            granted.retain_available,
            None,
            Vec::new(),
            b"online".to_vec(),
        );
        if let Err(e) = presence {
            return End::Lost(format!("cannot publish presence: {e}"));
        }
        self.in_flight.push_back(InFlight {
            delivery: None,
            pkid: None,
            sent: Instant::now(),
        });
        s.outbox
            .report(Report::State {
                sink: s.id,
                state: SinkState::Active,
            })
            .await;
        loop {
            if s.stopping.load(Ordering::SeqCst) {
                return End::Stop;
            }
            let control_seen = s.control.generation();
            let held = self
                .hold_until
                .is_some_and(|t| t > tokio::time::Instant::now());
            // Read ahead while the window still has work, so it never waits for the outbox.
            if asked.is_none() && !exhausted && self.runs_low() {
                work_seen = s.work.generation();
                match s.outbox.ask_fetch(s.id, cursor, FETCH).await {
                    Ok(answer) => asked = Some(Box::pin(answer)),
                    Err(e) => return End::Lost(format!("cannot read the queue: {e}")),
                }
            }
            if !held {
                if let Err(e) = self.fill_window(link, window, &granted).await {
                    return End::Lost(e);
                }
            }
            let overdue = self
                .in_flight
                .front()
                .map(|f| crate::config::units::later(f.sent, self.timeout()));
            // Read after filling the window, which may have just held the queue (a delivery
            // refused before it was sent): its hold is then waited for too.
            let hold = self.hold_until;
            tokio::select! {
                event = link.next() => {
                    let mut handled = self.handle(event).await;
                    // Whatever else arrived is handled now too, and reported together.
                    while handled.is_ok() {
                        match link.try_next() {
                            Some(event) => handled = self.handle(event).await,
                            None => break,
                        }
                    }
                    self.report_done().await;
                    if let Err(e) = handled {
                        return End::Lost(e);
                    }
                }
                answer = async { asked.as_mut().expect("a fetch was asked").await }, if asked.is_some() => {
                    asked = None;
                    match answer {
                        Ok(batch) => {
                            exhausted = batch.is_empty();
                            if let Some(last) = batch.last() {
                                cursor = last.seq;
                            }
                            self.queued.extend(batch);
                        }
                        Err(e) => return End::Lost(format!("cannot read the queue: {e}")),
                    }
                }
                _ = s.work.changed(work_seen), if exhausted && asked.is_none() => {
                    exhausted = false;
                }
                _ = s.control.changed(control_seen) => {}
                _ = tokio::time::sleep_until(hold.unwrap_or_else(tokio::time::Instant::now)), if hold.is_some() => {
                    self.hold_until = None;
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(overdue.unwrap_or_else(Instant::now))), if overdue.is_some() => {
                    return End::Lost(format!(
                        "timed out: the broker answered no publish for {}",
                        humantime::format_duration(self.timeout())
                    ));
                }
            }
        }
    }

    /// Whether to read the queue again: few enough deliveries, and bytes, wait to be
    /// published (counted only when few enough deliveries wait, which is when it matters).
    fn runs_low(&self) -> bool {
        let queued = self.queued.len();
        queued <= READ_AHEAD_LOW
            && runs_low(queued, self.queued.iter().map(|d| d.body().len()).sum())
    }

    /// Publishes queued deliveries, in outbox order, while the window has room; what expired
    /// becomes a dead letter instead.
    async fn fill_window(
        &mut self,
        link: &Link,
        window: usize,
        granted: &Granted,
    ) -> Result<(), String> {
        let s = self.s;
        let qos = self.sink.m().qos;
        while self.in_flight.len() < window {
            let Some(d) = self.queued.pop_front() else {
                break;
            };
            if let Some(dead) = s.expired(&d, d.attempts) {
                s.outbox.report(dead).await;
                continue;
            }
            let user = self.sink.headers(d.id(), d.body());
            match self.sink.message(d.event_type(), user, d.body(), granted) {
                Ok(m) => {
                    m.publish(link, qos)?;
                    self.in_flight.push_back(InFlight {
                        delivery: Some(d),
                        pkid: None,
                        sent: Instant::now(),
                    });
                }
                // What the broker would refuse is refused here, as if it had answered.
                Err((code, name)) => {
                    self.refused(d, code, name, 0).await;
                    if self.hold_until.is_some() {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Handles one event of the connection: packet ids are tied to publishes, acknowledgements
    /// gathered in `done`, refusals reported.
    async fn handle(&mut self, event: Event) -> Result<(), String> {
        let (pkid, reason) = match event {
            Event::Published(pkid) => {
                if let Some(f) = self.in_flight.iter_mut().find(|f| f.pkid.is_none()) {
                    f.pkid = Some(pkid);
                }
                return Ok(());
            }
            Event::Acked { pkid, reason } => (pkid, reason),
            Event::Lost(e) => return Err(e),
            Event::Connected(_) | Event::RetainRefused => return Ok(()),
        };
        // The broker acknowledges mostly in order: look at the front first.
        let at = if self.in_flight.front().is_some_and(|f| f.pkid == Some(pkid)) {
            Some(0)
        } else {
            self.in_flight.iter().position(|f| f.pkid == Some(pkid))
        };
        let Some(f) = at.and_then(|i| self.in_flight.remove(i)) else {
            return Ok(()); // nothing of ours: a broker's mistake costs it nothing
        };
        // A refused presence message is not worth the connection.
        let Some(d) = f.delivery else { return Ok(()) };
        let latency_ms = f.sent.elapsed().as_millis() as u64;
        if reason < 0x80 {
            self.failures_in_row = 0;
            log::debug!(event_id = d.id(), event_type = d.event_type(), sink = self.s.spec.name.as_str(), latency_ms = latency_ms;
                "Delivered event {} to sink {}", d.id(), self.s.spec.name);
            let measured = Measured {
                code: Some(reason.into()),
                latency_ms,
            };
            self.done.push((d.seq, measured));
        } else {
            self.report_done().await;
            self.refused(d, reason, framing::reason_name(reason), latency_ms)
                .await;
        }
        Ok(())
    }

    /// Reports what was acknowledged since the last report, in one report: the outbox records
    /// a `DeliveredMany` in a few statements rather than a few for each delivery.
    async fn report_done(&mut self) {
        let report = match self.done.len() {
            0 => return,
            1 => {
                let (seq, measured) = self.done.pop().expect("one delivery");
                Report::Delivered {
                    sink: self.s.id,
                    seq,
                    at_ms: now_ms(),
                    measured,
                }
            }
            _ => Report::DeliveredMany {
                sink: self.s.id,
                at_ms: now_ms(),
                done: std::mem::take(&mut self.done),
            },
        };
        self.s.outbox.report(report).await;
    }

    /// A delivery the broker refused (reason `code`, named `name`): a dead letter after
    /// `max_attempts`, else back at the front of the queue after a backoff.
    async fn refused(&mut self, d: Delivery, code: u8, name: String, latency_ms: u64) {
        let s = self.s;
        let spec = &s.spec;
        let measured = Measured {
            code: Some(code.into()),
            latency_ms,
        };
        let attempts = d.attempts.saturating_add(1);
        let error = format!("MQTT reason {name}");
        if let crate::sinks::Outcome::Transient { .. } = classify(code, error.clone()) {
            let (failed, wait) = s.failure(
                &d,
                &error,
                measured,
                &mut self.failures_in_row,
                &mut self.rng,
            );
            log::warn!(event_id = d.id(), event_type = d.event_type(), sink = spec.name.as_str(), attempt = attempts, retry_in_ms = wait.as_millis() as u64;
                "The broker of sink {} turned event {} away for now ({error}); retrying in {} ms", spec.name, d.id(), wait.as_millis());
            s.outbox.report(failed).await;
            self.retry_later(d, attempts, wait);
            return;
        }
        let refusal = s.refusal(
            &d,
            attempts,
            &error,
            measured,
            &mut self.failures_in_row,
            &mut self.rng,
        );
        let (failed, wait) = match refusal {
            Refusal::Dead(dead) => {
                log::error!(event_id = d.id(), event_type = d.event_type(), sink = spec.name.as_str(), attempt = attempts;
                    "The broker of sink {} refused event {} {attempts} times ({error}); it is now a dead letter", spec.name, d.id());
                s.outbox.report(dead).await;
                return;
            }
            Refusal::Retry(failed, wait) => (failed, wait),
        };
        log::warn!(event_id = d.id(), event_type = d.event_type(), sink = spec.name.as_str(), attempt = attempts, retry_in_ms = crate::config::units::millis(wait);
            "The broker of sink {} refused event {} ({error}); attempt {attempts} of {}", spec.name, d.id(), spec.max_attempts);
        s.outbox.report(failed).await;
        self.retry_later(d, attempts, wait);
    }

    /// Puts `d`, tried `attempts` times, back at the front of the queue, and publishes nothing
    /// for `wait`.
    fn retry_later(&mut self, mut d: Delivery, attempts: u32, wait: Duration) {
        d.attempts = attempts;
        self.queued.push_front(d);
        self.hold_until = Some(crate::config::units::later_tokio(
            tokio::time::Instant::now(),
            wait,
        ));
    }
}
