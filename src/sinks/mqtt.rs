//! The MQTT transport: MQTT 5 on the sink's own thread with its own single-threaded runtime,
//! over one TCP (or TLS) connection that carries the whole window. A delivery is done only
//! when the broker acknowledges it (PUBACK, or PUBCOMP for QoS 2).
//!
//! The session writes every publish the window has room for in one write, and handles every
//! acknowledgement that arrived together at once, reporting them to the outbox together
//! (`mqtt_wire` is the protocol). A general client (rumqttc, before) wrote and flushed each
//! publish on its own and handed acknowledgements over one at a time, which cost a system
//! call and a packet a publish here and a wake-up a packet at the broker.
//!
//! When the connection is lost, nothing is re-sent from memory: every unacknowledged event is
//! published again from the outbox on the next connection, so duplicates are only of events
//! in flight.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::mqtt_wire::{self as wire, Incoming};
use super::{FETCH, Refusal, Shared, SinkError, backoff, runs_low};
use crate::config::{MqttSpec, SinkKind, SinkSpec};
use crate::outbox::{Delivery, Measured, Report, SinkState, now_ms};

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

    /// The signing scheme's headers of an event sent at Unix second `timestamp`, which go out
    /// as user properties after `edgehook-device-id`.
    fn signature(&self, id: &str, timestamp: u64, body: &[u8]) -> Vec<(&'static str, String)> {
        self.spec.signer.headers(id, timestamp, body)
    }

    /// The user properties of a publish: `edgehook-device-id`, then the signature's.
    fn user_properties<'a>(
        &'a self,
        signature: &'a [(&'static str, String)],
    ) -> Vec<(&'a str, &'a str)> {
        let mut user = Vec::with_capacity(1 + signature.len());
        user.push(("edgehook-device-id", self.device_id.as_str()));
        user.extend(signature.iter().map(|(k, v)| (*k, v.as_str())));
        user
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
    /// the user properties sent.
    pub fn publish_once(
        &self,
        id: &str,
        event_type: &str,
        body: &[u8],
    ) -> (super::Attempt, Vec<(String, String)>) {
        let signature = self.signature(id, unix_now(), body);
        let user = self.user_properties(&signature);
        let sent = user
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let started = Instant::now();
        let (status, outcome) = match super::single_thread_runtime() {
            Ok(rt) => rt.block_on(async {
                tokio::time::timeout(
                    self.spec.timeout,
                    self.publish_and_wait(event_type, body, &user),
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
        user: &[(&str, &str)],
    ) -> (Option<u16>, super::Outcome) {
        // Its own client id, so the running daemon's connection is not taken over; no will,
        // so the device is not announced offline.
        let client_id = format!("{}-test", self.fill(&self.m().client_id, ""));
        let mut conn = match Conn::open(self, &client_id, &mut LastWill::None).await {
            Ok(c) => c,
            Err(e) => return lost(e),
        };
        if let Err(e) = conn.takes_qos(self.m().qos) {
            return lost(e);
        }
        let topic = self.fill(&self.m().topic, event_type);
        let publish = wire::Publish {
            topic: &topic,
            qos: self.m().qos,
            retain: false,
            pkid: 1,
            content_type: Some(CONTENT_TYPE),
            user,
            payload: body,
        };
        if let Err((code, name)) = conn.encode(&publish) {
            return (
                Some(code.into()),
                super::Outcome::Permanent {
                    error: format!("MQTT reason {name}"),
                },
            );
        }
        let result = loop {
            if let Err(e) = conn.send().await {
                break lost(e);
            }
            let packet = loop {
                match conn.next() {
                    Ok(Some(p)) => break Ok(p),
                    Ok(None) => {
                        if let Err(e) = conn.receive().await {
                            break Err(e);
                        }
                    }
                    Err(e) => break Err(e),
                }
            };
            let refused = |code: u8| {
                let error = format!("MQTT reason {}", wire::reason_name(code));
                (Some(u16::from(code)), classify(code, error))
            };
            match packet {
                Err(e) => break lost(e),
                Ok(Incoming::PubAck { pkid: 1, reason }) if reason < 0x80 => {
                    break (Some(reason.into()), super::Outcome::Delivered);
                }
                Ok(Incoming::PubRec { pkid: 1, reason }) if reason < 0x80 => {
                    wire::pubrel(&mut conn.out, 1);
                }
                Ok(Incoming::PubComp { pkid: 1, reason: 0 }) => {
                    break (Some(0), super::Outcome::Delivered);
                }
                Ok(
                    Incoming::PubAck { pkid: 1, reason }
                    | Incoming::PubRec { pkid: 1, reason }
                    | Incoming::PubComp { pkid: 1, reason },
                ) => break refused(reason),
                Ok(Incoming::Disconnect {
                    reason,
                    reason_string,
                }) => break lost(disconnected(reason, reason_string.as_deref())),
                Ok(_) => {}
            }
        };
        conn.close().await;
        result
    }
}

/// What a publish the broker refused with reason `code` comes to. 0x97 Quota exceeded says
/// the broker takes no more for now, as HTTP 429 does: it is retried with backoff and does not
/// count towards `max_attempts`. Every other refusal is about the publish itself.
fn classify(code: u8, error: String) -> super::Outcome {
    match code {
        QUOTA_EXCEEDED => super::Outcome::Transient {
            error,
            retry_after: None,
        },
        _ => super::Outcome::Permanent { error },
    }
}

/// PUBACK's reason code for a broker over its quota.
const QUOTA_EXCEEDED: u8 = 0x97;

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

/// A byte stream to the broker: TCP, or TLS over it.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One connection to the broker, with what its CONNACK allows.
struct Conn {
    io: Box<dyn Stream>,
    /// Bytes read; those before `used` are decoded.
    read: Vec<u8>,
    used: usize,
    /// Packets waiting to be written.
    out: Vec<u8>,
    /// How long a write, a ping's answer or an acknowledgement may take.
    timeout: Duration,
    /// A PINGREQ goes after this long without sending anything; zero for never.
    keep_alive: Duration,
    /// How many QoS 1 and 2 publishes the broker takes unacknowledged.
    receive_maximum: usize,
    maximum_qos: u8,
    retain_available: bool,
    maximum_packet_size: usize,
    last_sent: tokio::time::Instant,
    ping_sent: Option<tokio::time::Instant>,
}

impl Conn {
    /// Connects, sends CONNECT (with `will`) and waits for the broker's CONNACK, each try
    /// within the sink's timeout. A broker that keeps no retained messages refuses a retained
    /// will (Retain not supported): then `will` becomes a plain one, kept for later
    /// connections, and the sink connects again at once.
    async fn open(sink: &MqttSink, client_id: &str, will: &mut LastWill) -> Result<Conn, String> {
        let timeout = sink.spec.timeout.max(Duration::from_secs(1));
        loop {
            let opened = tokio::time::timeout(
                timeout,
                Self::open_now(sink, client_id, *will, timeout),
            )
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "timed out: the broker did not answer the connection within {} (no CONNACK)",
                    humantime::format_duration(timeout)
                ))
            })?;
            match opened {
                Some(conn) => return Ok(conn),
                None => {
                    log::info!(sink = sink.spec.name.as_str();
                        "The broker of sink {} keeps no retained messages: its status topic's `online` and `offline` are sent plain", sink.spec.name);
                    *will = LastWill::Plain;
                }
            }
        }
    }

    /// One try of `open`; `None` when the broker refused a retained will.
    async fn open_now(
        sink: &MqttSink,
        client_id: &str,
        will: LastWill,
        timeout: Duration,
    ) -> Result<Option<Conn>, String> {
        let m = sink.m();
        let tcp = TcpStream::connect((m.host.as_str(), m.port))
            .await
            .map_err(|e| format!("connection failed: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Stream> = match &sink.tls {
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(m.host.clone())
                    .map_err(|e| format!("TLS failed: {e}"))?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS failed: {e}"))?;
                Box::new(tls)
            }
            None => Box::new(tcp),
        };
        let keep_alive = m.keep_alive.max(Duration::from_secs(5));
        let mut conn = Conn {
            io,
            read: Vec::with_capacity(16 * 1024),
            used: 0,
            out: Vec::with_capacity(16 * 1024),
            timeout,
            keep_alive,
            receive_maximum: usize::from(u16::MAX),
            maximum_qos: 2,
            retain_available: true,
            maximum_packet_size: wire::MAX_PACKET,
            last_sent: tokio::time::Instant::now(),
            ping_sent: None,
        };
        let status = sink.fill(&m.status_topic, "");
        wire::connect(
            &mut conn.out,
            &wire::Connect {
                client_id,
                keep_alive: keep_alive.as_secs().min(u64::from(u16::MAX)) as u16,
                username: m.username.as_deref(),
                password: m.password.as_deref().map(str::as_bytes),
                will: (will != LastWill::None).then_some(wire::Will {
                    topic: &status,
                    payload: b"offline",
                    qos: 1,
                    retain: will == LastWill::Retained,
                }),
            },
        )
        .map_err(|e| format!("cannot connect: {e}"))?;
        conn.send().await?;
        let ack = loop {
            match conn.next()? {
                Some(Incoming::ConnAck(ack)) => break ack,
                Some(other) => {
                    return Err(format!(
                        "the broker answered the connection with {other:?}, not CONNACK"
                    ));
                }
                None => conn.receive().await?,
            }
        };
        if ack.reason == wire::RETAIN_NOT_SUPPORTED && will == LastWill::Retained {
            return Ok(None);
        }
        if ack.reason >= 0x80 {
            return Err(connection_refused(ack.reason, ack.reason_string.as_deref()));
        }
        if let Some(secs) = ack.server_keep_alive {
            conn.keep_alive = Duration::from_secs(secs.into());
        }
        conn.receive_maximum = ack.receive_maximum.into();
        conn.maximum_qos = ack.maximum_qos;
        conn.retain_available = ack.retain_available;
        if let Some(max) = ack.maximum_packet_size {
            conn.maximum_packet_size = max as usize;
        }
        Ok(Some(conn))
    }

    /// Refuses a QoS the broker does not take (publishing with it would be a protocol error).
    fn takes_qos(&self, qos: u8) -> Result<(), String> {
        if self.maximum_qos >= qos {
            Ok(())
        } else {
            Err(format!(
                "the broker takes QoS up to {} and this sink publishes with QoS {qos}",
                self.maximum_qos
            ))
        }
    }

    /// Appends a publish to what goes out next, or says why the broker cannot take it: the
    /// reason code the broker would answer and its name.
    fn encode(&mut self, p: &wire::Publish<'_>) -> Result<(), (u8, String)> {
        let len = wire::publish_len(p);
        if len > self.maximum_packet_size {
            return Err((
                0x95,
                format!(
                    "PacketTooLarge ({len} bytes; the broker takes up to {})",
                    self.maximum_packet_size
                ),
            ));
        }
        wire::publish(&mut self.out, p)
            .map_err(|e| (0x83, format!("ImplementationSpecificError ({e})")))
    }

    /// Writes what waits to go out, within the timeout.
    async fn send(&mut self) -> Result<(), String> {
        let write = async {
            self.io.write_all(&self.out).await?;
            self.io.flush().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("connection lost: {e}")),
            Err(_) => {
                return Err(format!(
                    "timed out: the broker took nothing for {}",
                    humantime::format_duration(self.timeout)
                ));
            }
        }
        self.out.clear();
        self.last_sent = tokio::time::Instant::now();
        Ok(())
    }

    /// Reads what the broker sent (cancel-safe: nothing is lost when another branch of a
    /// `select!` wins).
    async fn receive(&mut self) -> Result<(), String> {
        if self.used > 0 {
            self.read.drain(..self.used);
            self.used = 0;
        }
        self.read.reserve(8 * 1024);
        match self.io.read_buf(&mut self.read).await {
            Ok(0) => Err("the broker closed the connection".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("connection lost: {e}")),
        }
    }

    /// The next whole packet read, if any. Any packet shows the broker is there.
    fn next(&mut self) -> Result<Option<Incoming>, String> {
        match wire::decode(&self.read[self.used..]) {
            Ok(Some((packet, len))) => {
                self.used += len;
                self.ping_sent = None;
                Ok(Some(packet))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(format!("the broker broke the protocol: {e}")),
        }
    }

    /// When the connection next needs looking after: a ping to send, or an answer overdue.
    fn due(&self, oldest_unacknowledged: Option<Instant>) -> Option<tokio::time::Instant> {
        let ping = match self.ping_sent {
            Some(at) => Some(crate::config::units::later_tokio(at, self.timeout)),
            None if !self.keep_alive.is_zero() => Some(crate::config::units::later_tokio(
                self.last_sent,
                self.keep_alive,
            )),
            None => None,
        };
        let ack = oldest_unacknowledged.map(|at| {
            tokio::time::Instant::from_std(crate::config::units::later(at, self.timeout))
        });
        match (ping, ack) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Sends a ping when one is due; fails when the broker left a ping or a publish
    /// unanswered for the timeout.
    fn look_after(&mut self, oldest_unacknowledged: Option<Instant>) -> Result<(), String> {
        let now = tokio::time::Instant::now();
        let overdue = |what: &str| {
            format!(
                "timed out: the broker answered no {what} for {}",
                humantime::format_duration(self.timeout)
            )
        };
        if self
            .ping_sent
            .is_some_and(|at| now >= crate::config::units::later_tokio(at, self.timeout))
        {
            return Err(overdue("ping"));
        }
        if oldest_unacknowledged.is_some_and(|at| at.elapsed() >= self.timeout) {
            return Err(overdue("publish"));
        }
        if self.ping_sent.is_none()
            && !self.keep_alive.is_zero()
            && now >= crate::config::units::later_tokio(self.last_sent, self.keep_alive)
        {
            wire::pingreq(&mut self.out);
            self.ping_sent = Some(now);
        }
        Ok(())
    }

    /// Says goodbye (DISCONNECT, so the broker does not publish the will) and closes.
    async fn close(mut self) {
        wire::disconnect(&mut self.out);
        self.timeout = self.timeout.min(Duration::from_millis(500));
        if self.send().await.is_ok() {
            let _ = tokio::time::timeout(self.timeout, self.io.shutdown()).await;
        }
    }
}

/// Why the broker refused a connection, for logs and `status`.
fn connection_refused(code: u8, says: Option<&str>) -> String {
    let why = match code {
        0x86 => "bad user name or password",
        0x87 => "not authorized",
        0x85 => "client id refused",
        0x8A => "banned",
        0x88 | 0x89 => "the broker is unavailable or busy",
        _ => "",
    };
    let name = wire::reason_name(code);
    let mut s = if why.is_empty() {
        format!("the broker refused the connection ({name})")
    } else {
        format!("the broker refused the connection: {why} ({name})")
    };
    if let Some(says) = says {
        s.push_str(&format!("; it says {says:?}"));
    }
    s
}

/// Why the broker closed the connection.
fn disconnected(code: u8, says: Option<&str>) -> String {
    let mut s = format!("the broker disconnected ({})", wire::reason_name(code));
    if let Some(says) = says {
        s.push_str(&format!("; it says {says:?}"));
    }
    s
}

/// An event published and not yet acknowledged.
struct InFlight {
    delivery: Delivery,
    pkid: u16,
    sent: Instant,
}

/// Why a connection ended.
enum End {
    Stop,
    Lost(String),
}

/// The sink's thread: connect, publish, reconnect, until the daemon stops the sink.
pub(super) fn run(s: &Shared, sink: &MqttSink) {
    batch_work(&s.spec.name);
    super::run_on_own_runtime(s, connect_loop(s, sink));
}

/// Makes the calling thread batch work (`SCHED_BATCH`): woken while another task runs on its
/// CPU, it waits for that task's turn to end instead of taking the CPU from it.
///
/// Beside a broker on the same device, the broker's first acknowledgement of a window used to
/// wake the sink on the broker's CPU and hand it the CPU at once, so the two took turns an
/// acknowledgement or two at a time (1.5 a read), each turn paying for a read, a write and two
/// switches. Waiting, the sink finds the whole window acknowledged and answers it with the next
/// window in one write: the MQTT drain about 24 % faster (BENCHMARKS.md). With a broker across
/// a network it changes nothing but the sink's place behind the device's interactive work,
/// which is where delivery belongs. Any thread may choose it; if it fails, the thread runs as
/// it was.
fn batch_work(sink: &str) {
    let param = nix::libc::sched_param { sched_priority: 0 };
    // SAFETY: `pthread_self` is the calling thread, alive for the call, and `param` is a valid
    // `sched_param` that the call only reads (SCHED_BATCH takes priority 0).
    let r = unsafe {
        nix::libc::pthread_setschedparam(nix::libc::pthread_self(), nix::libc::SCHED_BATCH, &param)
    };
    if r != 0 {
        log::debug!(sink = sink; "Sink {sink}: its thread stays in the default scheduling class ({})", std::io::Error::from_raw_os_error(r));
    }
}

async fn connect_loop(s: &Shared, sink: &MqttSink) {
    let spec = &s.spec;
    let mut failures = 0u32;
    let mut rng = rand::rng();
    let client_id = sink.fill(&sink.m().client_id, "");
    let mut will = LastWill::Retained;
    while !s.stopping.load(Ordering::SeqCst) {
        let seen = s.control.generation();
        let end = match Conn::open(sink, &client_id, &mut will).await {
            Ok(mut conn) => {
                if failures > 0 {
                    log::info!(sink = spec.name.as_str(); "Sink {} connected to the broker again", spec.name);
                }
                failures = 0;
                let end = Session::new(s, sink).run(&mut conn).await;
                if let End::Stop = end {
                    conn.close().await;
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

/// One connection's deliveries: up to the window in flight, in outbox order.
struct Session<'a> {
    s: &'a Shared,
    sink: &'a MqttSink,
    /// Read from the outbox, not yet published.
    queued: VecDeque<Delivery>,
    in_flight: VecDeque<InFlight>,
    /// The presence message's packet id and when it was published, while it is
    /// unacknowledged: it is waited for as long as an event is, and holds a place in the window.
    presence: Option<(u16, Instant)>,
    next_pkid: u16,
    /// Acknowledged, to be reported together.
    done: Vec<(i64, Measured)>,
    /// After a refusal: publish nothing before then.
    hold_until: Option<tokio::time::Instant>,
    failures_in_row: u32,
    rng: rand::rngs::ThreadRng,
}

impl<'a> Session<'a> {
    fn new(s: &'a Shared, sink: &'a MqttSink) -> Self {
        Session {
            s,
            sink,
            queued: VecDeque::new(),
            in_flight: VecDeque::new(),
            presence: None,
            next_pkid: 1,
            done: Vec::new(),
            hold_until: None,
            failures_in_row: 0,
            rng: rand::rng(),
        }
    }

    /// Whether to read the queue again: few enough deliveries, and bytes, wait to be
    /// published (counted only when few enough deliveries wait, which is when it matters).
    fn runs_low(&self) -> bool {
        let queued = self.queued.len();
        queued <= super::READ_AHEAD_LOW
            && runs_low(queued, self.queued.iter().map(|d| d.body().len()).sum())
    }

    /// A packet identifier no unacknowledged publish holds.
    fn pkid(&mut self) -> u16 {
        loop {
            let id = self.next_pkid;
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if self.presence.is_none_or(|(p, _)| p != id)
                && !self.in_flight.iter().any(|f| f.pkid == id)
            {
                return id;
            }
        }
    }

    /// When the longest unacknowledged publish, an event or the presence message, was sent.
    fn oldest_unacknowledged(&self) -> Option<Instant> {
        let event = self.in_flight.front().map(|f| f.sent);
        let presence = self.presence.map(|(_, sent)| sent);
        match (event, presence) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Publishes presence, then keeps up to `max_in_flight` events in flight in outbox order
    /// until the connection ends or the sink stops.
    async fn run(&mut self, conn: &mut Conn) -> End {
        let s = self.s;
        let spec = &s.spec;
        let qos = self.sink.m().qos;
        if let Err(e) = conn.takes_qos(qos.max(1)) {
            return End::Lost(e);
        }
        let window = spec.max_in_flight.clamp(1, conn.receive_maximum);
        let mut cursor = 0i64;
        let mut exhausted = false;
        // The answer to a fetch asked ahead, and the queue's generation when it was asked (so
        // that work arriving after an empty answer is not missed).
        let mut asked = None;
        let mut work_seen = s.work.generation();
        let status_topic = self.sink.fill(&self.sink.m().status_topic, "");
        let pkid = self.pkid();
        let presence = wire::Publish {
            topic: &status_topic,
            qos: 1,
            // A broker without retained messages takes it plain.
            retain: conn.retain_available,
            pkid,
            content_type: None,
            user: &[],
            payload: b"online",
        };
        if let Err((_, why)) = conn.encode(&presence) {
            return End::Lost(format!("cannot publish presence: {why}"));
        }
        self.presence = Some((pkid, Instant::now()));
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
                self.fill_window(conn, window).await;
            }
            if !conn.out.is_empty() {
                if let Err(e) = conn.send().await {
                    return End::Lost(e);
                }
            }
            let oldest = self.oldest_unacknowledged();
            let due = conn.due(oldest);
            tokio::select! {
                read = conn.receive() => {
                    let handled = match read {
                        Ok(()) => self.handle_packets(conn).await,
                        Err(e) => Err(e),
                    };
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
                _ = tokio::time::sleep_until(self.hold_until.unwrap_or_else(tokio::time::Instant::now)), if held => {
                    self.hold_until = None;
                }
                _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                    if let Err(e) = conn.look_after(oldest) {
                        return End::Lost(e);
                    }
                }
            }
        }
    }

    /// Publishes queued deliveries, in outbox order, while the window has room; what expired
    /// becomes a dead letter instead.
    async fn fill_window(&mut self, conn: &mut Conn, window: usize) {
        let s = self.s;
        let m = self.sink.m();
        while self.in_flight.len() + usize::from(self.presence.is_some()) < window {
            let Some(d) = self.queued.pop_front() else {
                break;
            };
            if let Some(dead) = s.expired(&d, d.attempts) {
                s.outbox.report(dead).await;
                continue;
            }
            let topic = self.sink.fill(&m.topic, d.event_type());
            let signature = self.sink.signature(d.id(), unix_now(), d.body());
            let user = self.sink.user_properties(&signature);
            let pkid = self.pkid();
            let encoded = conn.encode(&wire::Publish {
                topic: &topic,
                qos: m.qos,
                retain: false,
                pkid,
                content_type: Some(CONTENT_TYPE),
                user: &user,
                payload: d.body(),
            });
            match encoded {
                Ok(()) => self.in_flight.push_back(InFlight {
                    delivery: d,
                    pkid,
                    sent: Instant::now(),
                }),
                // What the broker would refuse is refused here, as if it had answered.
                Err((code, name)) => {
                    self.refused(d, code, name, 0).await;
                    if self.hold_until.is_some() {
                        break;
                    }
                }
            }
        }
    }

    /// Handles every whole packet read: acknowledgements are gathered in `done`, QoS 2
    /// receipts answered with PUBREL, refusals reported.
    async fn handle_packets(&mut self, conn: &mut Conn) -> Result<(), String> {
        let qos = self.sink.m().qos;
        while let Some(packet) = conn.next()? {
            let (pkid, reason) = match packet {
                Incoming::PubAck { pkid, reason }
                    if self.presence.is_some_and(|(p, _)| p == pkid) =>
                {
                    let _ = reason; // a refused presence message is not worth the connection
                    self.presence = None;
                    continue;
                }
                Incoming::PubAck { pkid, reason } if qos == 1 => (pkid, reason),
                Incoming::PubRec { pkid, reason } if qos == 2 => {
                    if reason < 0x80 {
                        wire::pubrel(&mut conn.out, pkid);
                        continue;
                    }
                    (pkid, reason)
                }
                Incoming::PubComp { pkid, reason } if qos == 2 => (pkid, reason),
                Incoming::PingResp => continue,
                Incoming::Disconnect {
                    reason,
                    reason_string,
                } => return Err(disconnected(reason, reason_string.as_deref())),
                Incoming::Other(3) => continue, // a publish: edgehook subscribes to nothing
                Incoming::Other(15) => {
                    return Err("the broker asked for enhanced authentication (AUTH), which edgehook does not do".into());
                }
                other => return Err(format!("the broker sent an unexpected {other:?}")),
            };
            // The broker acknowledges mostly in order: look at the front first.
            let at = if self.in_flight.front().is_some_and(|f| f.pkid == pkid) {
                Some(0)
            } else {
                self.in_flight.iter().position(|f| f.pkid == pkid)
            };
            let Some(f) = at.and_then(|i| self.in_flight.remove(i)) else {
                continue; // nothing of ours: a broker's mistake costs it nothing
            };
            let latency_ms = f.sent.elapsed().as_millis() as u64;
            let d = f.delivery;
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
                self.refused(d, reason, wire::reason_name(reason), latency_ms)
                    .await;
            }
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
        if let super::Outcome::Transient { .. } = classify(code, error.clone()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_exceeded_is_retried_like_http_429_and_other_refusals_are_not() {
        let outcome = |code| classify(code, format!("MQTT reason {}", wire::reason_name(code)));
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
