//! The MQTT transport: MQTT 5 through rumqttc, on the sink's own thread with its own
//! single-threaded runtime. A delivery is done only when the broker acknowledges it (PUBACK,
//! or PUBCOMP for QoS 2).
//!
//! rumqttc's `publish` does not return the packet id. The event loop reports each publish it
//! writes as `Outgoing::Publish(pkid)`, in the order the publishes were requested; this sink
//! requests them from one task, so the n-th notification belongs to the n-th request and the
//! packet id is tied to its event there. Presence messages go through the same sequence.
//!
//! When the connection is lost, the client and its event loop are dropped whole (nothing is
//! left to rumqttc's own re-sending) and every unacknowledged event is published again from the
//! outbox on the next connection, so duplicates are only of events in flight.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, LastWill, Packet, PubAckReason, PubCompReason, PubRecReason,
    PublishProperties,
};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{Outgoing, TlsConfiguration, Transport};

use super::{FETCH, READ_AHEAD_LOW, Shared, SinkError, backoff};
use crate::config::{MqttSpec, SinkKind, SinkSpec};
use crate::outbox::{Delivery, Measured, Report, SinkState, clock, now_ms};

/// A broker.
pub struct MqttSink {
    spec: Arc<SinkSpec>,
    tls: Option<Arc<rustls::ClientConfig>>,
    device_id: String,
}

impl MqttSink {
    /// Settings for `spec`, with its TLS material loaded.
    pub fn new(spec: Arc<SinkSpec>, device_id: &str) -> Result<Self, SinkError> {
        super::check_ready(&spec)?;
        let tls = match &spec.kind {
            SinkKind::Mqtt(m) if m.tls => Some(super::tls::client_config(&spec)?),
            _ => None,
        };
        Ok(MqttSink {
            spec,
            tls,
            device_id: device_id.to_string(),
        })
    }

    fn m(&self) -> &MqttSpec {
        match &self.spec.kind {
            SinkKind::Mqtt(m) => m,
            SinkKind::Http { .. } => unreachable!("an MqttSink is made only for MQTT sinks"),
        }
    }

    fn qos(&self) -> QoS {
        if self.m().qos == 2 {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        }
    }

    /// Fills a topic template.
    pub fn fill(&self, template: &str, event_type: &str) -> String {
        crate::config::fill(
            template,
            &self.device_id,
            event_type,
            &self.spec.name,
            &self.spec.metadata,
        )
    }

    /// The connection options: client id, credentials, keep-alive, will, TLS.
    pub fn options(&self) -> MqttOptions {
        let mut o = self.bare_options(self.fill(&self.m().client_id, ""));
        o.set_last_will(LastWill::new(
            self.fill(&self.m().status_topic, ""),
            "offline",
            QoS::AtLeastOnce,
            true,
            None,
        ));
        o
    }

    /// Options without a will, under `client_id`.
    fn bare_options(&self, client_id: String) -> MqttOptions {
        let m = self.m();
        let mut o = MqttOptions::new(client_id, m.host.clone(), m.port);
        o.set_keep_alive(m.keep_alive.max(Duration::from_secs(5)));
        o.set_clean_start(true);
        o.set_connection_timeout(self.spec.timeout.as_secs().max(1));
        let mut network = o.network_options();
        network.set_tcp_nodelay(true);
        o.set_network_options(network);
        if let Some(user) = &m.username {
            o.set_credentials(user.clone(), m.password.clone().unwrap_or_default());
        }
        if let Some(tls) = &self.tls {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        o
    }

    /// The publish properties of an event sent at Unix second `timestamp`: content type and the
    /// signing scheme's headers as user properties, beside `edgehook-device-id`.
    pub fn properties(&self, id: &str, timestamp: u64, body: &[u8]) -> PublishProperties {
        let mut user: Vec<(String, String)> =
            vec![("edgehook-device-id".into(), self.device_id.clone())];
        user.extend(
            self.spec
                .signer
                .headers(id, timestamp, body)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v)),
        );
        PublishProperties {
            content_type: Some("application/json".into()),
            payload_format_indicator: Some(1),
            user_properties: user,
            ..Default::default()
        }
    }
}

impl MqttSink {
    /// One publish outside the outbox (`edgehook test`): connect, publish `body` of type
    /// `event_type`, wait for the broker's acknowledgement, disconnect. Returns the attempt and
    /// the user properties sent.
    pub fn publish_once(
        &self,
        id: &str,
        event_type: &str,
        body: &[u8],
    ) -> (super::Attempt, Vec<(String, String)>) {
        let ts = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |t| t.as_secs());
        let props = self.properties(id, ts, body);
        let sent = props.user_properties.clone();
        let started = Instant::now();
        let outcome = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(async {
                tokio::time::timeout(
                    self.spec.timeout,
                    self.publish_and_wait(event_type, body, props),
                )
                .await
                .unwrap_or_else(|_| {
                    (
                        None,
                        super::Outcome::Transient {
                            error: format!(
                                "timed out after {}",
                                humantime::format_duration(self.spec.timeout)
                            ),
                            retry_after: None,
                        },
                    )
                })
            }),
            Err(e) => (
                None,
                super::Outcome::Transient {
                    error: format!("cannot start a runtime: {e}"),
                    retry_after: None,
                },
            ),
        };
        let attempt = super::Attempt {
            outcome: outcome.1,
            status: outcome.0,
            latency: started.elapsed(),
        };
        (attempt, sent)
    }

    async fn publish_and_wait(
        &self,
        event_type: &str,
        body: &[u8],
        props: PublishProperties,
    ) -> (Option<u16>, super::Outcome) {
        let lost = |error: String| {
            (
                None,
                super::Outcome::Transient {
                    error,
                    retry_after: None,
                },
            )
        };
        // Its own client id, so the running daemon's connection is not taken over; no will,
        // so the device is not announced offline.
        let id = format!("{}-test", self.fill(&self.m().client_id, ""));
        let (client, mut events) = AsyncClient::new(self.bare_options(id), 8);
        if let Err(e) = connected(&mut events, self.spec.timeout).await {
            return lost(e);
        }
        let topic = self.fill(&self.m().topic, event_type);
        if let Err(e) = client
            .publish_with_properties(topic, self.qos(), false, body.to_vec(), props)
            .await
        {
            return lost(format!("cannot publish: {e}"));
        }
        let refused = |code: u16, name: String| {
            (
                Some(code),
                super::Outcome::Permanent {
                    error: format!("MQTT reason {name}"),
                },
            )
        };
        let result = loop {
            match events.poll().await {
                Err(e) => break lost(describe(&e)),
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    break match ack.reason {
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {
                            (Some(ack_code(&ack.reason)), super::Outcome::Delivered)
                        }
                        r => refused(ack_code(&r), format!("{r:?}")),
                    };
                }
                Ok(Event::Incoming(Packet::PubRec(rec)))
                    if !matches!(
                        rec.reason,
                        PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                    ) =>
                {
                    break refused(rec_code(&rec.reason), format!("{:?}", rec.reason));
                }
                Ok(Event::Incoming(Packet::PubComp(comp))) => {
                    break if comp.reason == PubCompReason::Success {
                        (Some(0), super::Outcome::Delivered)
                    } else {
                        refused(146, format!("{:?}", comp.reason))
                    };
                }
                Ok(_) => {}
            }
        };
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_millis(500), events.poll()).await;
        result
    }
}

/// What the n-th `Outgoing::Publish` belongs to.
enum Expect {
    Presence,
    Event(i64),
}

struct InFlight {
    delivery: Delivery,
    pkid: Option<u16>,
    sent: Instant,
}

/// Why a connection ended.
enum End {
    Stop,
    Lost(String),
}

/// The sink's thread: connect, publish, reconnect, until the daemon stops the sink.
pub(super) fn run(s: &Shared, sink: &MqttSink) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            log::error!(sink = s.spec.name.as_str(); "Sink {} cannot start its runtime: {e}", s.spec.name);
            return;
        }
    };
    runtime.block_on(connect_loop(s, sink));
}

async fn connect_loop(s: &Shared, sink: &MqttSink) {
    let spec = &s.spec;
    let mut failures = 0u32;
    let mut rng = rand::rng();
    while !s.stopping.load(Ordering::SeqCst) {
        let seen = s.control.generation();
        let (client, mut events) = AsyncClient::new(sink.options(), spec.max_in_flight * 2 + 8);
        let end = match connected(&mut events, spec.timeout).await {
            Ok(()) => {
                if failures > 0 {
                    log::info!(sink = spec.name.as_str(); "Sink {} connected to the broker again", spec.name);
                }
                failures = 0;
                session(s, sink, &client, &mut events).await
            }
            Err(e) => End::Lost(e),
        };
        match end {
            End::Stop => {
                let _ = tokio::time::timeout(Duration::from_millis(500), async {
                    let _ = client.disconnect().await;
                    while let Ok(Event::Outgoing(o)) = events.poll().await {
                        if matches!(o, Outgoing::Disconnect) {
                            break;
                        }
                    }
                })
                .await;
                return;
            }
            End::Lost(error) => {
                failures += 1;
                let wait =
                    backoff::full_jitter(spec.retry_initial, spec.retry_max, failures, &mut rng);
                log::warn!(sink = spec.name.as_str(), retry_in_ms = wait.as_millis() as u64;
                    "Sink {}: {error}; reconnecting in {} ms", spec.name, wait.as_millis());
                s.outbox
                    .report(Report::Trouble {
                        sink: s.id,
                        at_ms: now_ms(),
                        error,
                    })
                    .await;
                drop(client);
                drop(events);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = s.control.changed(seen) => {}
                }
            }
        }
    }
}

/// Polls until the broker's CONNACK, or says why not.
async fn connected(events: &mut EventLoop, timeout: Duration) -> Result<(), String> {
    let wait = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(describe(&e)),
            }
        }
    };
    tokio::time::timeout(timeout + Duration::from_secs(1), wait)
        .await
        .unwrap_or_else(|_| Err("the broker did not answer the connection in time".into()))
}

fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            let why = match code {
                ConnectReturnCode::BadUserNamePassword => "bad user name or password",
                ConnectReturnCode::NotAuthorized => "not authorized",
                ConnectReturnCode::BadClientId | ConnectReturnCode::ClientIdentifierNotValid => {
                    "client id refused"
                }
                _ => "",
            };
            if why.is_empty() {
                format!("the broker refused the connection ({code:?})")
            } else {
                format!("the broker refused the connection: {why} ({code:?})")
            }
        }
        ConnectionError::Io(io) => format!("connection failed: {io}"),
        ConnectionError::Tls(t) => format!("TLS failed: {t}"),
        ConnectionError::Timeout(_) => "timed out".into(),
        other => format!("connection lost: {other}"),
    }
}

/// One connection: publish presence, then keep up to `max_in_flight` events in flight in
/// outbox order until the connection ends or the sink stops.
async fn session(s: &Shared, sink: &MqttSink, client: &AsyncClient, events: &mut EventLoop) -> End {
    let spec = &s.spec;
    let m = sink.m();
    let mut expect: VecDeque<Expect> = VecDeque::new();
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut queued: VecDeque<Delivery> = VecDeque::new();
    let mut cursor = 0i64;
    let mut exhausted = false;
    // The answer to a fetch asked ahead, and the queue's generation when it was asked (so
    // that work arriving after an empty answer is not missed).
    let mut asked = None;
    let mut work_seen = s.work.generation();
    let mut hold_until: Option<tokio::time::Instant> = None;
    let mut failures_in_row = 0u32;
    let mut rng = rand::rng();
    let presence = client.publish(
        sink.fill(&m.status_topic, ""),
        QoS::AtLeastOnce,
        true,
        "online",
    );
    if let Err(e) = presence.await {
        return End::Lost(format!("cannot publish presence: {e}"));
    }
    expect.push_back(Expect::Presence);
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
        let held = hold_until.is_some_and(|t| t > tokio::time::Instant::now());
        // Read ahead while the window still has work, so it never waits for the outbox.
        if asked.is_none() && !exhausted && queued.len() <= READ_AHEAD_LOW {
            work_seen = s.work.generation();
            match s.outbox.ask_fetch(s.id, cursor, FETCH).await {
                Ok(answer) => asked = Some(Box::pin(answer)),
                Err(e) => return End::Lost(format!("cannot read the queue: {e}")),
            }
        }
        // Fill the window, in outbox order.
        while !held && in_flight.len() < spec.max_in_flight {
            let Some(d) = queued.pop_front() else { break };
            if s.max_age_ms > 0 && clock::age_now_ms() - d.created_ms > s.max_age_ms {
                let report = Report::Dead {
                    sink: s.id,
                    seq: d.seq,
                    at_ms: now_ms(),
                    reason: "expired".into(),
                    attempts: d.attempts,
                    measured: None,
                };
                s.outbox.report(report).await;
                continue;
            }
            let ts = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |t| t.as_secs());
            let topic = sink.fill(&m.topic, &d.event_type);
            let props = sink.properties(&d.id, ts, &d.body);
            if let Err(e) = client
                .publish_with_properties(topic, sink.qos(), false, d.body.to_vec(), props)
                .await
            {
                return End::Lost(format!("cannot publish: {e}"));
            }
            expect.push_back(Expect::Event(d.seq));
            in_flight.push_back(InFlight {
                delivery: d,
                pkid: None,
                sent: Instant::now(),
            });
        }
        let event = tokio::select! {
            e = events.poll() => e,
            answer = async { asked.as_mut().expect("a fetch was asked").await }, if asked.is_some() => {
                asked = None;
                match answer {
                    Ok(batch) => {
                        exhausted = batch.is_empty();
                        if let Some(last) = batch.last() {
                            cursor = last.seq;
                        }
                        queued.extend(batch);
                    }
                    Err(e) => return End::Lost(format!("cannot read the queue: {e}")),
                }
                continue;
            }
            _ = s.work.changed(work_seen), if exhausted && asked.is_none() => {
                exhausted = false;
                continue;
            }
            _ = s.control.changed(control_seen) => continue,
            _ = tokio::time::sleep_until(hold_until.unwrap_or_else(tokio::time::Instant::now)), if held => {
                hold_until = None;
                continue;
            }
        };
        let (pkid, refused) = match event {
            Err(e) => return End::Lost(describe(&e)),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if let Some(Expect::Event(seq)) = expect.pop_front() {
                    if let Some(f) = in_flight.iter_mut().find(|f| f.delivery.seq == seq) {
                        f.pkid = Some(pkid);
                    }
                }
                continue;
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) if sink.qos() == QoS::AtLeastOnce => {
                let ok = matches!(
                    ack.reason,
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                );
                (
                    ack.pkid,
                    (!ok).then(|| (ack_code(&ack.reason), format!("{:?}", ack.reason))),
                )
            }
            Ok(Event::Incoming(Packet::PubRec(rec))) => {
                if matches!(
                    rec.reason,
                    PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                ) {
                    continue;
                }
                (
                    rec.pkid,
                    Some((rec_code(&rec.reason), format!("{:?}", rec.reason))),
                )
            }
            Ok(Event::Incoming(Packet::PubComp(comp))) => {
                let ok = comp.reason == PubCompReason::Success;
                (
                    comp.pkid,
                    (!ok).then(|| (146, format!("{:?}", comp.reason))),
                )
            }
            Ok(Event::Incoming(Packet::Disconnect(d))) => {
                return End::Lost(format!("the broker disconnected ({:?})", d.reason_code));
            }
            Ok(_) => continue,
        };
        let Some(i) = in_flight.iter().position(|f| f.pkid == Some(pkid)) else {
            continue; // the presence message
        };
        let f = in_flight.remove(i).expect("the position is valid");
        let d = f.delivery;
        let latency_ms = f.sent.elapsed().as_millis() as u64;
        let measured = Measured {
            code: Some(refused.as_ref().map_or(0, |(code, _)| *code)),
            latency_ms,
        };
        match refused.map(|(_, name)| name) {
            None => {
                failures_in_row = 0;
                log::debug!(event_id = d.id.as_str(), event_type = d.event_type.as_str(), sink = spec.name.as_str(), latency_ms = latency_ms;
                    "Delivered event {} to sink {}", d.id, spec.name);
                s.outbox
                    .report(Report::Delivered {
                        sink: s.id,
                        seq: d.seq,
                        at_ms: now_ms(),
                        measured,
                    })
                    .await;
            }
            Some(reason) => {
                let attempts = d.attempts + 1;
                let error = format!("MQTT reason {reason}");
                if attempts >= spec.max_attempts {
                    log::error!(event_id = d.id.as_str(), event_type = d.event_type.as_str(), sink = spec.name.as_str(), attempt = attempts;
                        "The broker of sink {} refused event {} {attempts} times ({error}); it is now a dead letter", spec.name, d.id);
                    let reason = format!("rejected: {error}");
                    s.outbox
                        .report(Report::Dead {
                            sink: s.id,
                            seq: d.seq,
                            at_ms: now_ms(),
                            reason,
                            attempts,
                            measured: Some(measured),
                        })
                        .await;
                } else {
                    failures_in_row += 1;
                    let wait = backoff::full_jitter(
                        spec.retry_initial,
                        spec.retry_max,
                        failures_in_row,
                        &mut rng,
                    );
                    log::warn!(event_id = d.id.as_str(), event_type = d.event_type.as_str(), sink = spec.name.as_str(), attempt = attempts, retry_in_ms = wait.as_millis() as u64;
                        "The broker of sink {} refused event {} ({error}); attempt {attempts} of {}", spec.name, d.id, spec.max_attempts);
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
                    queued.push_front(Delivery { attempts, ..d });
                    hold_until = Some(tokio::time::Instant::now() + wait);
                }
            }
        }
    }
}

/// The v5 reason code of a PUBACK reason (section 3.4.2.1 of MQTT 5).
fn ack_code(r: &PubAckReason) -> u16 {
    match r {
        PubAckReason::Success => 0,
        PubAckReason::NoMatchingSubscribers => 16,
        PubAckReason::UnspecifiedError => 128,
        PubAckReason::ImplementationSpecificError => 131,
        PubAckReason::NotAuthorized => 135,
        PubAckReason::TopicNameInvalid => 144,
        PubAckReason::PacketIdentifierInUse => 145,
        PubAckReason::QuotaExceeded => 151,
        PubAckReason::PayloadFormatInvalid => 153,
    }
}

/// The v5 reason code of a PUBREC reason (the same codes as PUBACK).
fn rec_code(r: &PubRecReason) -> u16 {
    match r {
        PubRecReason::Success => 0,
        PubRecReason::NoMatchingSubscribers => 16,
        PubRecReason::UnspecifiedError => 128,
        PubRecReason::ImplementationSpecificError => 131,
        PubRecReason::NotAuthorized => 135,
        PubRecReason::TopicNameInvalid => 144,
        PubRecReason::PacketIdentifierInUse => 145,
        PubRecReason::QuotaExceeded => 151,
        PubRecReason::PayloadFormatInvalid => 153,
    }
}
