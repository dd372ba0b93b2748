//! The MQTT transport, MQTT 5 or 3.1.1 through rumqttc, on the sink's own thread with its own
//! single-threaded runtime. A delivery is done only when the broker acknowledges it (PUBACK,
//! or PUBCOMP for QoS 2).
//!
//! - `link`: one connection, rumqttc's event loop in a task of its own, reduced to what the
//!   session needs (grants, packet ids as publishes go out, acknowledgements, the end).
//! - `session`: one connection's deliveries, each tied to its packet id and reported delivered
//!   only at its acknowledgement.
//! - `framing`: what a publish carries in each version (the 3.1.1 payload with the signature
//!   headers), reason codes and errors in words.
//!
//! When the connection is lost, nothing is re-sent from memory: every unacknowledged event is
//! published again from the outbox on the next connection (a fresh session), so duplicates
//! are only of events in flight.

mod framing;
mod link;
mod session;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use self::link::{Event, Granted, Link};
use super::{Shared, SinkError, backoff};
use crate::config::{MqttSpec, Protocol, SinkKind, SinkSpec};
use crate::outbox::{Report, now_ms};

/// The content type of every event published.
const CONTENT_TYPE: &str = "application/json";

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

    /// The headers of event `id` sent now: `edgehook-device-id`, then the signing scheme's.
    /// MQTT 5 sends them as user properties, 3.1.1 in the payload.
    fn headers(&self, id: &str, body: &[u8]) -> Vec<(String, String)> {
        let signature = self.spec.signer.headers(id, unix_now(), body);
        let mut user = Vec::with_capacity(1 + signature.len());
        user.push(("edgehook-device-id".to_string(), self.device_id.clone()));
        user.extend(signature.into_iter().map(|(k, v)| (k.to_string(), v)));
        user
    }

    /// What is published for an event: topic, v5 user properties and content type, payload;
    /// or why the broker would refuse it (reason code and its name).
    fn message(
        &self,
        event_type: &str,
        user: Vec<(String, String)>,
        body: &[u8],
        granted: &Granted,
    ) -> Result<Message, (u8, String)> {
        let topic = self.fill(&self.m().topic, event_type);
        let m = match self.m().protocol {
            Protocol::V5 => Message {
                topic,
                content_type: Some(CONTENT_TYPE),
                user,
                payload: body.to_vec(),
            },
            Protocol::V311 => Message {
                topic,
                content_type: None,
                payload: framing::envelope(&user, body),
                user: Vec::new(),
            },
        };
        let size = framing::publish_size_v5(&m.topic, m.content_type, &m.user, m.payload.len());
        match granted.maximum_packet_size {
            Some(max) if size > max as usize => Err((
                framing::PACKET_TOO_LARGE,
                format!("PacketTooLarge ({size} bytes; the broker takes up to {max})"),
            )),
            _ => Ok(m),
        }
    }
}

/// One publish's parts.
struct Message {
    topic: String,
    content_type: Option<&'static str>,
    user: Vec<(String, String)>,
    payload: Vec<u8>,
}

impl Message {
    /// Hands it to `link` with `qos`, not retained.
    fn publish(self, link: &Link, qos: u8) -> Result<(), String> {
        link.publish(
            self.topic,
            qos,
            false,
            self.content_type,
            self.user,
            self.payload,
        )
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |t| t.as_secs())
}

impl MqttSink {
    /// One publish outside the outbox (`edgehook test`): connect, publish `body` of type
    /// `event_type`, wait for the broker's acknowledgement, disconnect. Returns the attempt and
    /// the headers sent (as user properties, or in the 3.1.1 payload).
    pub fn publish_once(
        &self,
        id: &str,
        event_type: &str,
        body: &[u8],
    ) -> (super::Attempt, Vec<(String, String)>) {
        let user = self.headers(id, body);
        let sent = user.clone();
        let started = Instant::now();
        let (status, outcome) = match super::single_thread_runtime() {
            Ok(rt) => rt.block_on(async {
                tokio::time::timeout(
                    self.spec.timeout.max(Duration::from_secs(1)),
                    self.publish_and_wait(event_type, body, user),
                )
                .await
                .unwrap_or_else(|_| {
                    lost(format!(
                        "timed out after {}",
                        humantime::format_duration(self.spec.timeout)
                    ))
                })
            }),
            Err(e) => lost(format!("cannot start a runtime: {e}")),
        };
        let attempt = super::Attempt {
            outcome,
            status,
            latency: started.elapsed(),
        };
        (attempt, sent)
    }

    async fn publish_and_wait(
        &self,
        event_type: &str,
        body: &[u8],
        user: Vec<(String, String)>,
    ) -> (Option<u16>, super::Outcome) {
        // Its own client id, so the running daemon's connection is not taken over; no will,
        // so the device is not announced offline.
        let client_id = format!("{}-test", self.fill(&self.m().client_id, ""));
        let (mut link, granted) = match connect(self, &client_id, &mut LastWill::None, 1).await {
            Ok(c) => c,
            Err(e) => return lost(e),
        };
        let qos = self.m().qos;
        if let Err(e) = takes_qos(&granted, qos) {
            return lost(e);
        }
        let message = match self.message(event_type, user, body, &granted) {
            Ok(m) => m,
            Err((code, name)) => {
                return (
                    Some(code.into()),
                    super::Outcome::Permanent {
                        error: format!("MQTT reason {name}"),
                    },
                );
            }
        };
        if let Err(e) = message.publish(&link, qos) {
            return lost(e);
        }
        let mut ours = None;
        let result = loop {
            match link.next().await {
                Event::Published(pkid) => ours = Some(pkid),
                Event::Acked { pkid, reason } if Some(pkid) == ours => {
                    let outcome = if reason < 0x80 {
                        super::Outcome::Delivered
                    } else {
                        classify(
                            reason,
                            format!("MQTT reason {}", framing::reason_name(reason)),
                        )
                    };
                    break (Some(reason.into()), outcome);
                }
                Event::Lost(e) => break lost(e),
                _ => {}
            }
        };
        link.close().await;
        result
    }
}

/// What a publish the broker refused with reason `code` comes to. 0x97 Quota exceeded says
/// the broker takes no more for now, as HTTP 429 does: it is retried with backoff and does not
/// count towards `max_attempts`. Every other refusal is about the publish itself.
fn classify(code: u8, error: String) -> super::Outcome {
    match code {
        framing::QUOTA_EXCEEDED => super::Outcome::Transient {
            error,
            retry_after: None,
        },
        _ => super::Outcome::Permanent { error },
    }
}

/// A transient outcome without an answer.
fn lost(error: String) -> (Option<u16>, super::Outcome) {
    (
        None,
        super::Outcome::Transient {
            error,
            retry_after: None,
        },
    )
}

/// Refuses a QoS the broker does not take (publishing with it would be a protocol error).
fn takes_qos(granted: &Granted, qos: u8) -> Result<(), String> {
    if granted.maximum_qos >= qos {
        Ok(())
    } else {
        Err(format!(
            "the broker takes QoS up to {} and this sink publishes with QoS {qos}",
            granted.maximum_qos
        ))
    }
}

/// Connects and waits for the broker's CONNACK, within the sink's timeout. A broker that
/// keeps no retained messages refuses a retained will (Retain not supported): then `will`
/// becomes a plain one, kept for later connections, and the sink connects again at once.
async fn connect(
    sink: &MqttSink,
    client_id: &str,
    will: &mut LastWill,
    window: u16,
) -> Result<(Link, Granted), String> {
    // rumqttc times the connection out in whole seconds; this is the guard above it.
    let timeout = sink.spec.timeout.max(Duration::from_secs(1)) + Duration::from_secs(1);
    loop {
        let mut link = Link::open(sink, client_id, *will, window);
        let first = tokio::time::timeout(timeout, link.next())
            .await
            .unwrap_or_else(|_| {
                Event::Lost(format!(
                    "timed out: the broker did not answer the connection within {} (no CONNACK)",
                    humantime::format_duration(timeout)
                ))
            });
        match first {
            Event::Connected(granted) => return Ok((link, granted)),
            Event::RetainRefused => {
                log::info!(sink = sink.spec.name.as_str();
                    "The broker of sink {} keeps no retained messages: its status topic's `online` and `offline` are sent plain", sink.spec.name);
                *will = LastWill::Plain;
            }
            Event::Lost(e) => return Err(e),
            other => return Err(format!("the connection began with {other:?}, not CONNACK")),
        }
    }
}

/// Why a connection ended.
enum End {
    Stop,
    Lost(String),
}

/// The sink's thread: connect, publish, reconnect, until the daemon stops the sink.
pub(super) fn run(s: &Shared, sink: &MqttSink) {
    super::run_on_own_runtime(s, connect_loop(s, sink));
}

async fn connect_loop(s: &Shared, sink: &MqttSink) {
    let spec = &s.spec;
    let mut failures = 0u32;
    let mut rng = rand::rng();
    let client_id = sink.fill(&sink.m().client_id, "");
    let mut will = LastWill::Retained;
    let window = u16::try_from(spec.max_in_flight.max(1)).unwrap_or(u16::MAX);
    while !s.stopping.load(Ordering::SeqCst) {
        let seen = s.control.generation();
        let end = match connect(sink, &client_id, &mut will, window).await {
            Ok((mut link, granted)) => {
                if failures > 0 {
                    log::info!(sink = spec.name.as_str(); "Sink {} connected to the broker again", spec.name);
                }
                failures = 0;
                let end = session::Session::new(s, sink).run(&mut link, granted).await;
                if let End::Stop = end {
                    link.close().await;
                }
                end
            }
            Err(e) => End::Lost(e),
        };
        let End::Lost(error) = end else { return };
        failures = failures.saturating_add(1);
        let wait = backoff::full_jitter(spec.retry_initial, spec.retry_max, failures, &mut rng);
        log::warn!(sink = spec.name.as_str(), retry_in_ms = crate::config::units::millis(wait);
            "Sink {}: {error}; reconnecting in {} ms", spec.name, wait.as_millis());
        s.outbox
            .report(Report::Trouble {
                sink: s.id,
                at_ms: now_ms(),
                error,
            })
            .await;
        super::pause(s, seen, wait).await;
    }
}

/// The last will a connection asks the broker for: the sink's `offline` on its status topic,
/// retained unless the broker keeps no retained messages; none for `edgehook test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LastWill {
    None,
    Retained,
    Plain,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_exceeded_is_retried_like_http_429_and_other_refusals_are_not() {
        let outcome = |code| classify(code, format!("MQTT reason {}", framing::reason_name(code)));
        assert_eq!(
            outcome(0x97),
            super::super::Outcome::Transient {
                error: "MQTT reason QuotaExceeded".into(),
                retry_after: None
            }
        );
        for code in [0x80, 0x83, 0x87, 0x90, 0x91, 0x95, 0x99] {
            assert!(
                matches!(outcome(code), super::super::Outcome::Permanent { .. }),
                "{code:#x}"
            );
        }
    }
}
