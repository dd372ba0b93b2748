//! One connection to the broker through rumqttc, either protocol version. rumqttc's event loop
//! runs in a task of its own that hands the session only what it needs, in order: the
//! broker's grants, each publish's packet id as it is written, each acknowledgement, and the
//! end of the connection. A link is used for one connection only: a new one starts with a
//! fresh session and nothing pending, so what was unacknowledged is published again from the
//! outbox, never from rumqttc's memory.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5 as v5p;
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use tokio::sync::mpsc;

use super::{LastWill, MqttSink, framing};
use crate::config::Protocol;

/// What the broker's CONNACK allows.
#[derive(Debug, Clone, Copy)]
pub struct Granted {
    /// How many QoS 1 and 2 publishes the broker takes unacknowledged.
    pub receive_maximum: usize,
    pub maximum_qos: u8,
    pub retain_available: bool,
    pub maximum_packet_size: Option<u32>,
}

impl Granted {
    /// What a broker that says nothing (every 3.1.1 broker) allows.
    const ANYTHING: Granted = Granted {
        receive_maximum: u16::MAX as usize,
        maximum_qos: 2,
        retain_available: true,
        maximum_packet_size: None,
    };
}

/// What happened on the connection, in order.
#[derive(Debug)]
pub enum Event {
    /// The broker accepted the connection.
    Connected(Granted),
    /// The broker refused a retained will (v5 Retain not supported).
    RetainRefused,
    /// A publish went out with this packet id; publishes go out in the order they were handed
    /// over (a packet id still in use holds back the ones after it).
    Published(u16),
    /// The broker is done with packet `pkid`: PUBACK (QoS 1) or PUBCOMP (QoS 2), or a refusal
    /// (`reason` 0x80 and over) in PUBACK or PUBREC.
    Acked { pkid: u16, reason: u8 },
    /// The connection ended.
    Lost(String),
}

/// The handle to publish through.
enum Client {
    V5(rumqttc::v5::AsyncClient),
    V311(rumqttc::AsyncClient),
}

/// One connection.
pub struct Link {
    client: Client,
    events: mpsc::UnboundedReceiver<Event>,
    task: tokio::task::JoinHandle<()>,
}

/// Whole seconds, at least one: rumqttc counts its connection timeout so.
fn whole_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

impl Link {
    /// Connects as `client_id` with `will`, and starts the event loop; the first event is
    /// `Connected`, `RetainRefused` or `Lost`. `window` bounds the publishes in flight.
    pub fn open(sink: &MqttSink, client_id: &str, will: LastWill, window: u16) -> Link {
        let m = sink.m();
        // Over WebSockets rumqttc takes the whole URL as the host; an IPv6 literal is
        // bracketed again for the address rumqttc resolves.
        let host = match &m.websocket {
            Some(url) => url.clone(),
            None if m.host.contains(':') => format!("[{}]", m.host),
            None => m.host.clone(),
        };
        let transport = match (&sink.tls, &m.websocket) {
            (Some(config), Some(_)) => Transport::Wss(TlsConfiguration::Rustls(config.clone())),
            (Some(config), None) => Transport::Tls(TlsConfiguration::Rustls(config.clone())),
            (None, _) => Transport::Tcp,
        };
        let keep_alive = m.keep_alive.max(Duration::from_secs(5));
        let timeout = whole_secs(sink.spec.timeout);
        let status = sink.fill(&m.status_topic, "");
        let retain = will == LastWill::Retained;
        let (tx, events) = mpsc::unbounded_channel();
        // Room for the whole window and the presence message: publishing never waits.
        let cap = usize::from(window) + 2;
        let (client, task) = match m.protocol {
            Protocol::V5 => {
                let mut o = rumqttc::v5::MqttOptions::new(client_id, host, m.port);
                o.set_transport(transport)
                    .set_keep_alive(keep_alive)
                    .set_clean_start(true)
                    .set_connection_timeout(timeout)
                    .set_outgoing_inflight_upper_limit(window.max(1))
                    .set_max_packet_size(Some(framing::MAX_INCOMING));
                if let (Some(u), Some(p)) = (&m.username, &m.password) {
                    o.set_credentials(u, p);
                } else if let Some(u) = &m.username {
                    o.set_credentials(u, "");
                }
                if will != LastWill::None {
                    o.set_last_will(v5p::LastWill::new(
                        &status,
                        "offline",
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                        retain,
                        None,
                    ));
                }
                let (client, el) = rumqttc::v5::AsyncClient::new(o, cap);
                (Client::V5(client), tokio::spawn(drive_v5(el, tx, retain)))
            }
            Protocol::V311 => {
                let mut o = rumqttc::MqttOptions::new(client_id, host, m.port);
                o.set_transport(transport)
                    .set_keep_alive(keep_alive)
                    .set_clean_session(true)
                    .set_inflight(window.max(1))
                    .set_max_packet_size(framing::MAX_INCOMING as usize, framing::MAX_OUTGOING);
                if let Some(u) = &m.username {
                    o.set_credentials(u, m.password.as_deref().unwrap_or(""));
                }
                if will != LastWill::None {
                    o.set_last_will(rumqttc::LastWill::new(
                        &status,
                        "offline",
                        rumqttc::QoS::AtLeastOnce,
                        retain,
                    ));
                }
                let (client, el) = rumqttc::AsyncClient::new(o, cap);
                (
                    Client::V311(client),
                    tokio::spawn(drive_v311(el, tx, timeout)),
                )
            }
        };
        Link {
            client,
            events,
            task,
        }
    }

    /// The next event; `Lost` once the event loop is gone.
    pub async fn next(&mut self) -> Event {
        self.events
            .recv()
            .await
            .unwrap_or_else(|| Event::Lost("the connection ended".into()))
    }

    /// The next event if one is there already.
    pub fn try_next(&mut self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// Hands a publish to the event loop; its packet id comes as `Published`. `user` are v5
    /// user properties (3.1.1 carries them in the payload instead).
    pub fn publish(
        &self,
        topic: String,
        qos: u8,
        retain: bool,
        content_type: Option<&str>,
        user: Vec<(String, String)>,
        payload: Vec<u8>,
    ) -> Result<(), String> {
        let sent = match &self.client {
            Client::V5(c) => {
                let properties = v5p::PublishProperties {
                    content_type: content_type.map(str::to_string),
                    user_properties: user,
                    ..Default::default()
                };
                c.try_publish_with_properties(topic, v5_qos(qos), retain, payload, properties)
                    .map_err(|e| e.to_string())
            }
            Client::V311(c) => c
                .try_publish(topic, v311_qos(qos), retain, payload)
                .map_err(|e| e.to_string()),
        };
        sent.map_err(|e| format!("cannot publish: {e}"))
    }

    /// Says goodbye (DISCONNECT, so the broker does not publish the will) and closes, within
    /// half a second.
    pub async fn close(mut self) {
        let asked = match &self.client {
            Client::V5(c) => c.try_disconnect().is_ok(),
            Client::V311(c) => c.try_disconnect().is_ok(),
        };
        if asked {
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while !matches!(self.next().await, Event::Lost(_)) {}
            })
            .await;
        }
        self.task.abort();
    }
}

impl Drop for Link {
    /// A link dropped closes its connection without a DISCONNECT: the broker publishes the
    /// will, as for any connection lost.
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn v5_qos(qos: u8) -> rumqttc::v5::mqttbytes::QoS {
    match qos {
        2 => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
        _ => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
    }
}

fn v311_qos(qos: u8) -> rumqttc::QoS {
    match qos {
        2 => rumqttc::QoS::ExactlyOnce,
        _ => rumqttc::QoS::AtLeastOnce,
    }
}

/// Runs a v5 event loop until its connection ends, passing on what the session needs.
async fn drive_v5(
    mut el: rumqttc::v5::EventLoop,
    tx: mpsc::UnboundedSender<Event>,
    retained_will: bool,
) {
    use rumqttc::v5::{Event as E, Incoming as In};
    loop {
        let event = match el.poll().await {
            Ok(E::Incoming(In::ConnAck(ack))) => Event::Connected(granted_v5(&ack)),
            Ok(E::Outgoing(Outgoing::Publish(pkid))) => Event::Published(pkid),
            Ok(E::Outgoing(Outgoing::Disconnect)) => Event::Lost("disconnected".into()),
            Ok(E::Incoming(In::PubAck(a))) => Event::Acked {
                pkid: a.pkid,
                reason: framing::puback_code(a.reason),
            },
            Ok(E::Incoming(In::PubRec(r))) => match framing::pubrec_code(r.reason) {
                0 | 0x10 => continue,
                reason => Event::Acked {
                    pkid: r.pkid,
                    reason,
                },
            },
            Ok(E::Incoming(In::PubComp(c))) => Event::Acked {
                pkid: c.pkid,
                reason: framing::pubcomp_code(c.reason),
            },
            Ok(_) => continue,
            Err(rumqttc::v5::ConnectionError::ConnectionRefused(
                v5p::ConnectReturnCode::RetainNotSupported,
            )) if retained_will => Event::RetainRefused,
            Err(e) => Event::Lost(framing::describe_v5(e)),
        };
        let end = matches!(event, Event::Lost(_) | Event::RetainRefused);
        if tx.send(event).is_err() || end {
            return;
        }
    }
}

/// Runs a 3.1.1 event loop until its connection ends. 3.1.1 has no reason codes: every
/// acknowledgement is a success, every refusal a closed connection.
async fn drive_v311(mut el: rumqttc::EventLoop, tx: mpsc::UnboundedSender<Event>, timeout: u64) {
    use rumqttc::{Event as E, Incoming as In, Outgoing as Out};

    el.network_options.set_connection_timeout(timeout);
    loop {
        let event = match el.poll().await {
            Ok(E::Incoming(In::ConnAck(_))) => Event::Connected(Granted::ANYTHING),
            Ok(E::Outgoing(Out::Publish(pkid))) => Event::Published(pkid),
            Ok(E::Outgoing(Out::Disconnect)) => Event::Lost("disconnected".into()),
            Ok(E::Incoming(In::PubAck(a))) => Event::Acked {
                pkid: a.pkid,
                reason: 0,
            },
            Ok(E::Incoming(In::PubComp(c))) => Event::Acked {
                pkid: c.pkid,
                reason: 0,
            },
            Ok(_) => continue,
            Err(e) => Event::Lost(framing::describe_v311(e)),
        };
        let end = matches!(event, Event::Lost(_));
        if tx.send(event).is_err() || end {
            return;
        }
    }
}

/// What a v5 CONNACK allows.
fn granted_v5(ack: &v5p::ConnAck) -> Granted {
    let mut g = Granted::ANYTHING;
    if let Some(p) = &ack.properties {
        if let Some(n) = p.receive_max {
            g.receive_maximum = n.into();
        }
        if let Some(q) = p.max_qos {
            g.maximum_qos = q;
        }
        if let Some(r) = p.retain_available {
            g.retain_available = r != 0;
        }
        g.maximum_packet_size = p.max_packet_size;
    }
    g
}
