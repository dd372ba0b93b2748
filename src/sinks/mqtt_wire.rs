//! MQTT 5 on the wire, as much of it as a publisher needs (OASIS MQTT Version 5.0): CONNECT,
//! PUBLISH, PUBREL, PINGREQ and DISCONNECT out; CONNACK, PUBACK, PUBREC, PUBCOMP, PINGRESP and
//! DISCONNECT in. Encoding appends to a buffer, so a window of publishes goes to the broker in
//! one write; decoding takes whole packets off the front of what was read, so every
//! acknowledgement that arrived together is handled together.
//!
//! Everything the broker sends is untrusted: a malformed packet is an error (the connection is
//! then dropped), never a panic, and a packet over `MAX_INCOMING` is refused before it is read.

/// The largest packet taken from the broker; CONNECT tells it so (Maximum Packet Size), and a
/// publisher is sent nothing large.
pub const MAX_INCOMING: u32 = 64 * 1024;

/// MQTT's limit on a packet's remaining length (a four-byte variable byte integer).
const MAX_REMAINING: usize = 268_435_455;

/// The largest packet MQTT can encode, header included: the bound when the broker sets none.
pub const MAX_PACKET: usize = 5 + MAX_REMAINING;

/// The CONNACK reason of a broker that keeps no retained messages, refusing a retained will.
pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;

/// A broken rule of the protocol, in the broker's packets or in what would be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(pub String);

fn bad(what: impl Into<String>) -> WireError {
    WireError(what.into())
}

/// What CONNECT carries.
#[derive(Debug, Clone, Copy)]
pub struct Connect<'a> {
    /// The client identifier.
    pub client_id: &'a str,
    /// Seconds; 0 turns keep-alive off.
    pub keep_alive: u16,
    /// User name.
    pub username: Option<&'a str>,
    /// Password.
    pub password: Option<&'a [u8]>,
    /// The message the broker publishes when the connection is lost.
    pub will: Option<Will<'a>>,
}

/// A will message.
#[derive(Debug, Clone, Copy)]
pub struct Will<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Payload.
    pub payload: &'a [u8],
    /// 1 or 2.
    pub qos: u8,
    /// Retained.
    pub retain: bool,
}

/// One PUBLISH.
#[derive(Debug, Clone, Copy)]
pub struct Publish<'a> {
    /// Topic.
    pub topic: &'a str,
    /// 1 or 2.
    pub qos: u8,
    /// Retained.
    pub retain: bool,
    /// Packet identifier (not 0).
    pub pkid: u16,
    /// Content Type, with the payload format indicator set to UTF-8 when given.
    pub content_type: Option<&'a str>,
    /// User properties.
    pub user: &'a [(&'a str, &'a str)],
    /// Payload.
    pub payload: &'a [u8],
}

/// What the broker's CONNACK says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// The broker kept a session (never, with a clean start).
    pub session_present: bool,
    /// 0 when accepted; 0x80 and up refuses.
    pub reason: u8,
    /// How many QoS 1 and 2 publishes it takes unacknowledged (65,535 when not said).
    pub receive_maximum: u16,
    /// The highest QoS it takes (2 when not said).
    pub maximum_qos: u8,
    /// Whether it keeps retained messages (yes when not said).
    pub retain_available: bool,
    /// Its largest packet, when it has one.
    pub maximum_packet_size: Option<u32>,
    /// The keep-alive it wants instead of ours.
    pub server_keep_alive: Option<u16>,
    /// Its explanation, if any.
    pub reason_string: Option<String>,
}

/// A packet from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// The answer to CONNECT.
    ConnAck(ConnAck),
    /// A QoS 1 publish is done (reason under 0x80) or refused.
    PubAck {
        /// Packet identifier.
        pkid: u16,
        /// Reason code.
        reason: u8,
    },
    /// A QoS 2 publish is received (PUBREL follows) or refused.
    PubRec {
        /// Packet identifier.
        pkid: u16,
        /// Reason code.
        reason: u8,
    },
    /// A QoS 2 publish is done.
    PubComp {
        /// Packet identifier.
        pkid: u16,
        /// Reason code.
        reason: u8,
    },
    /// The answer to PINGREQ.
    PingResp,
    /// The broker closes the connection.
    Disconnect {
        /// Reason code.
        reason: u8,
        /// Its explanation, if any.
        reason_string: Option<String>,
    },
    /// Anything else a broker may send a client (PUBLISH, SUBACK, AUTH, …): nothing a
    /// publisher asked for. The packet type.
    Other(u8),
}

/// Appends a variable byte integer.
fn put_varint(buf: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        if n == 0 {
            buf.push(byte);
            return;
        }
        buf.push(byte | 0x80);
    }
}

fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn put_u16(buf: &mut Vec<u8>, n: u16) {
    buf.extend_from_slice(&n.to_be_bytes());
}

/// Appends a two-byte length and the bytes (a UTF-8 string or binary data).
fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) -> Result<(), WireError> {
    let len = u16::try_from(b.len()).map_err(|_| {
        bad(format!(
            "a field of {} bytes is over MQTT's 65,535",
            b.len()
        ))
    })?;
    put_u16(buf, len);
    buf.extend_from_slice(b);
    Ok(())
}

/// Appends a fixed header and a body made apart (CONNECT: rare, not worth measuring first).
fn put_packet(buf: &mut Vec<u8>, first: u8, body: &[u8]) -> Result<(), WireError> {
    if body.len() > MAX_REMAINING {
        return Err(bad("a packet over MQTT's 256 MiB"));
    }
    buf.push(first);
    put_varint(buf, body.len());
    buf.extend_from_slice(body);
    Ok(())
}

/// Appends CONNECT: MQTT 5, a clean start, the session ending with the connection, and our
/// Maximum Packet Size.
pub fn connect(buf: &mut Vec<u8>, c: &Connect<'_>) -> Result<(), WireError> {
    let mut body = Vec::with_capacity(64);
    put_bytes(&mut body, b"MQTT")?;
    body.push(5);
    let mut flags = 0x02; // clean start
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos << 3);
        if w.retain {
            flags |= 0x20;
        }
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    body.push(flags);
    put_u16(&mut body, c.keep_alive);
    // Properties: Maximum Packet Size.
    body.push(5);
    body.push(0x27);
    body.extend_from_slice(&MAX_INCOMING.to_be_bytes());
    put_bytes(&mut body, c.client_id.as_bytes())?;
    if let Some(w) = &c.will {
        body.push(0); // no will properties
        put_bytes(&mut body, w.topic.as_bytes())?;
        put_bytes(&mut body, w.payload)?;
    }
    if let Some(u) = c.username {
        put_bytes(&mut body, u.as_bytes())?;
    }
    if let Some(p) = c.password {
        put_bytes(&mut body, p)?;
    }
    put_packet(buf, 0x10, &body)
}

/// The size of `p` encoded, header included: what a broker's Maximum Packet Size bounds.
pub fn publish_len(p: &Publish<'_>) -> usize {
    let remaining = publish_remaining(p, properties_len(p));
    1 + varint_len(remaining) + remaining
}

fn properties_len(p: &Publish<'_>) -> usize {
    let content = p.content_type.map_or(0, |t| 2 + 3 + t.len());
    let user: usize = p.user.iter().map(|(k, v)| 5 + k.len() + v.len()).sum();
    content + user
}

fn publish_remaining(p: &Publish<'_>, props: usize) -> usize {
    2 + p.topic.len() + 2 + varint_len(props) + props + p.payload.len()
}

/// Appends PUBLISH; nothing is appended when it cannot be encoded.
pub fn publish(buf: &mut Vec<u8>, p: &Publish<'_>) -> Result<(), WireError> {
    if p.pkid == 0 || !(1..=2).contains(&p.qos) {
        return Err(bad("a publish needs QoS 1 or 2 and a packet identifier"));
    }
    let too_long = |what: &str, n: usize| bad(format!("{what} of {n} bytes is over MQTT's 65,535"));
    if p.topic.len() > usize::from(u16::MAX) {
        return Err(too_long("a topic", p.topic.len()));
    }
    for (k, v) in p.user {
        if k.len().max(v.len()) > usize::from(u16::MAX) {
            return Err(too_long("a user property", k.len().max(v.len())));
        }
    }
    let props = properties_len(p);
    let remaining = publish_remaining(p, props);
    if remaining > MAX_REMAINING {
        return Err(bad(format!(
            "a publish of {remaining} bytes is over MQTT's 256 MiB"
        )));
    }
    buf.reserve(5 + remaining);
    buf.push(0x30 | (p.qos << 1) | u8::from(p.retain));
    put_varint(buf, remaining);
    // The lengths were checked above, so none of these can fail.
    put_bytes(buf, p.topic.as_bytes())?;
    put_u16(buf, p.pkid);
    put_varint(buf, props);
    if let Some(t) = p.content_type {
        buf.extend_from_slice(&[0x01, 1, 0x03]);
        put_bytes(buf, t.as_bytes())?;
    }
    for (k, v) in p.user {
        buf.push(0x26);
        put_bytes(buf, k.as_bytes())?;
        put_bytes(buf, v.as_bytes())?;
    }
    buf.extend_from_slice(p.payload);
    Ok(())
}

/// Appends PUBREL for a QoS 2 publish the broker has received.
pub fn pubrel(buf: &mut Vec<u8>, pkid: u16) {
    buf.extend_from_slice(&[0x62, 2]);
    put_u16(buf, pkid);
}

/// Appends PINGREQ.
pub fn pingreq(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&[0xC0, 0]);
}

/// Appends DISCONNECT with reason 0 (normal: the broker does not publish the will).
pub fn disconnect(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&[0xE0, 0]);
}

/// Reads packets off the front of a buffer.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.b.len() - self.at
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.left() < n {
            return Err(bad("a packet shorter than its fields"));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn varint(&mut self) -> Result<usize, WireError> {
        let mut n = 0usize;
        for i in 0..4 {
            let byte = self.u8()?;
            n |= usize::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(bad("a variable byte integer longer than four bytes"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn string(&mut self) -> Result<String, WireError> {
        let b = self.bytes()?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| bad("a string that is not UTF-8"))
    }
}

/// What a packet's properties say that a publisher uses; the rest are read past.
#[derive(Default)]
struct Properties {
    receive_maximum: Option<u16>,
    maximum_qos: Option<u8>,
    retain_available: Option<u8>,
    maximum_packet_size: Option<u32>,
    server_keep_alive: Option<u16>,
    reason_string: Option<String>,
}

fn properties(r: &mut Reader<'_>) -> Result<Properties, WireError> {
    let len = r.varint()?;
    let mut p = Reader {
        b: r.take(len)?,
        at: 0,
    };
    let mut out = Properties::default();
    while p.left() > 0 {
        match p.varint()? {
            0x01 | 0x17 | 0x19 | 0x28 | 0x29 | 0x2A => {
                p.u8()?;
            }
            0x24 => out.maximum_qos = Some(p.u8()?),
            0x25 => out.retain_available = Some(p.u8()?),
            0x02 | 0x11 | 0x18 => {
                p.u32()?;
            }
            0x27 => out.maximum_packet_size = Some(p.u32()?),
            0x23 | 0x22 => {
                p.u16()?;
            }
            0x21 => out.receive_maximum = Some(p.u16()?),
            0x13 => out.server_keep_alive = Some(p.u16()?),
            0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C => {
                p.string()?;
            }
            0x1F => out.reason_string = Some(p.string()?),
            0x09 | 0x16 => {
                p.bytes()?;
            }
            0x0B => {
                p.varint()?;
            }
            0x26 => {
                p.string()?;
                p.string()?;
            }
            other => return Err(bad(format!("an unknown property {other:#04x}"))),
        }
    }
    Ok(out)
}

/// An acknowledgement's identifier and reason: a remaining length of 2 means success.
fn ack(r: &mut Reader<'_>) -> Result<(u16, u8), WireError> {
    let pkid = r.u16()?;
    let reason = if r.left() > 0 { r.u8()? } else { 0 };
    if r.left() > 0 {
        properties(r)?;
    }
    Ok((pkid, reason))
}

/// The first whole packet in `buf` and the bytes it took, or `None` when more must be read.
pub fn decode(buf: &[u8]) -> Result<Option<(Incoming, usize)>, WireError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    // The remaining length: up to four bytes, which may not all have arrived.
    let mut remaining = 0usize;
    let mut header = 1;
    loop {
        let Some(&byte) = buf.get(header) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7F) << (7 * (header - 1));
        header += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if header == 5 {
            return Err(bad("a remaining length longer than four bytes"));
        }
    }
    if remaining > MAX_INCOMING as usize {
        return Err(bad(format!(
            "a packet of {remaining} bytes, over the {MAX_INCOMING} this client takes"
        )));
    }
    let Some(body) = buf.get(header..header + remaining) else {
        return Ok(None);
    };
    let mut r = Reader { b: body, at: 0 };
    let kind = first >> 4;
    let flags = first & 0x0F;
    let expect_flags = |want: u8| {
        if flags == want {
            Ok(())
        } else {
            Err(bad(format!(
                "packet type {kind} with flags {flags:#x} (MQTT says {want:#x})"
            )))
        }
    };
    let packet = match kind {
        2 => {
            expect_flags(0)?;
            let ack_flags = r.u8()?;
            if ack_flags & 0xFE != 0 {
                return Err(bad("CONNACK with reserved flags set"));
            }
            let reason = r.u8()?;
            let p = if r.left() > 0 {
                properties(&mut r)?
            } else {
                Properties::default()
            };
            if p.receive_maximum == Some(0) {
                return Err(bad("CONNACK with a Receive Maximum of 0"));
            }
            Incoming::ConnAck(ConnAck {
                session_present: ack_flags & 1 == 1,
                reason,
                receive_maximum: p.receive_maximum.unwrap_or(u16::MAX),
                maximum_qos: p.maximum_qos.unwrap_or(2),
                retain_available: p.retain_available != Some(0),
                maximum_packet_size: p.maximum_packet_size,
                server_keep_alive: p.server_keep_alive,
                reason_string: p.reason_string,
            })
        }
        4 => {
            expect_flags(0)?;
            let (pkid, reason) = ack(&mut r)?;
            Incoming::PubAck { pkid, reason }
        }
        5 => {
            expect_flags(0)?;
            let (pkid, reason) = ack(&mut r)?;
            Incoming::PubRec { pkid, reason }
        }
        7 => {
            expect_flags(0)?;
            let (pkid, reason) = ack(&mut r)?;
            Incoming::PubComp { pkid, reason }
        }
        13 => {
            expect_flags(0)?;
            Incoming::PingResp
        }
        14 => {
            expect_flags(0)?;
            let reason = if r.left() > 0 { r.u8()? } else { 0 };
            let p = if r.left() > 0 {
                properties(&mut r)?
            } else {
                Properties::default()
            };
            Incoming::Disconnect {
                reason,
                reason_string: p.reason_string,
            }
        }
        0 => return Err(bad("packet type 0 (reserved)")),
        other => {
            // Read past: the body is whole and bounded; its content is not ours to check.
            r.at = r.b.len();
            Incoming::Other(other)
        }
    };
    if r.left() > 0 {
        return Err(bad(format!(
            "packet type {kind} with {} bytes after its fields",
            r.left()
        )));
    }
    Ok(Some((packet, header + remaining)))
}

/// The name of a v5 reason code (section 2.4), as logs and dead letters show it.
pub fn reason_name(code: u8) -> String {
    let name = match code {
        0x00 => "Success",
        0x10 => "NoMatchingSubscribers",
        0x80 => "UnspecifiedError",
        0x81 => "MalformedPacket",
        0x82 => "ProtocolError",
        0x83 => "ImplementationSpecificError",
        0x84 => "UnsupportedProtocolVersion",
        0x85 => "ClientIdentifierNotValid",
        0x86 => "BadUserNamePassword",
        0x87 => "NotAuthorized",
        0x88 => "ServerUnavailable",
        0x89 => "ServerBusy",
        0x8A => "Banned",
        0x8B => "ServerShuttingDown",
        0x8C => "BadAuthenticationMethod",
        0x8D => "KeepAliveTimeout",
        0x8E => "SessionTakenOver",
        0x90 => "TopicNameInvalid",
        0x91 => "PacketIdentifierInUse",
        0x92 => "PacketIdentifierNotFound",
        0x93 => "ReceiveMaximumExceeded",
        0x94 => "TopicAliasInvalid",
        0x95 => "PacketTooLarge",
        0x96 => "MessageRateTooHigh",
        0x97 => "QuotaExceeded",
        0x98 => "AdministrativeAction",
        0x99 => "PayloadFormatInvalid",
        RETAIN_NOT_SUPPORTED => "RetainNotSupported",
        0x9B => "QoSNotSupported",
        0x9C => "UseAnotherServer",
        0x9D => "ServerMoved",
        0x9F => "ConnectionRateExceeded",
        _ => return format!("Unknown({code:#04x})"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> Incoming {
        let (p, used) = decode(bytes).unwrap().expect("a whole packet");
        assert_eq!(used, bytes.len());
        p
    }

    #[test]
    fn varints_round_trip_at_every_width() {
        for n in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            MAX_REMAINING,
        ] {
            let mut b = Vec::new();
            put_varint(&mut b, n);
            assert_eq!(b.len(), varint_len(n), "{n}");
            assert_eq!(Reader { b: &b, at: 0 }.varint().unwrap(), n);
        }
    }

    #[test]
    fn connect_is_byte_for_byte_mqtt_5() {
        let mut b = Vec::new();
        connect(
            &mut b,
            &Connect {
                client_id: "dev",
                keep_alive: 30,
                username: Some("u"),
                password: Some(b"pw"),
                will: Some(Will {
                    topic: "s",
                    payload: b"offline",
                    qos: 1,
                    retain: true,
                }),
            },
        )
        .unwrap();
        let mut want = vec![0x10, 41];
        want.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 5]);
        want.push(0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02);
        want.extend_from_slice(&[0, 30]);
        want.extend_from_slice(&[5, 0x27, 0, 1, 0, 0]);
        want.extend_from_slice(&[0, 3, b'd', b'e', b'v']);
        want.extend_from_slice(&[0, 0, 1, b's', 0, 7]);
        want.extend_from_slice(b"offline");
        want.extend_from_slice(&[0, 1, b'u', 0, 2, b'p', b'w']);
        assert_eq!(b, want);
    }

    #[test]
    fn publish_carries_its_properties_and_its_length_is_known_beforehand() {
        let p = Publish {
            topic: "t/x",
            qos: 1,
            retain: false,
            pkid: 0x0102,
            content_type: Some("application/json"),
            user: &[("k", "v")],
            payload: b"{}",
        };
        let mut b = vec![0xAA];
        publish(&mut b, &p).unwrap();
        assert_eq!(b[0], 0xAA, "appended");
        let b = &b[1..];
        assert_eq!(b.len(), publish_len(&p));
        let mut want = vec![0x32, 0];
        want.extend_from_slice(&[0, 3, b't', b'/', b'x', 1, 2]);
        let props_len = 2 + 3 + 16 + 1 + 3 + 3;
        want.push(props_len);
        want.extend_from_slice(&[0x01, 1, 0x03, 0, 16]);
        want.extend_from_slice(b"application/json");
        want.extend_from_slice(&[0x26, 0, 1, b'k', 0, 1, b'v']);
        want.extend_from_slice(b"{}");
        want[1] = (want.len() - 2) as u8;
        assert_eq!(b, want);
        let mut retained = Vec::new();
        publish(
            &mut retained,
            &Publish {
                qos: 2,
                retain: true,
                ..p
            },
        )
        .unwrap();
        assert_eq!(retained[0], 0x35);
    }

    #[test]
    fn a_publish_that_cannot_be_encoded_appends_nothing() {
        let long = "x".repeat(70_000);
        let user = [("k", long.as_str())];
        let p = Publish {
            topic: "t",
            qos: 1,
            retain: false,
            pkid: 1,
            content_type: None,
            user: &[],
            payload: b"",
        };
        for bad in [
            Publish { pkid: 0, ..p },
            Publish { qos: 0, ..p },
            Publish { topic: &long, ..p },
            Publish { user: &user, ..p },
        ] {
            let mut b = vec![];
            assert!(publish(&mut b, &bad).is_err());
            assert!(b.is_empty());
        }
    }

    #[test]
    fn connack_properties_are_read_and_defaults_filled() {
        assert_eq!(
            one(&[0x20, 2, 0, 0]),
            Incoming::ConnAck(ConnAck {
                session_present: false,
                reason: 0,
                receive_maximum: u16::MAX,
                maximum_qos: 2,
                retain_available: true,
                maximum_packet_size: None,
                server_keep_alive: None,
                reason_string: None,
            })
        );
        let mut b = vec![0x20, 0, 1, 0x87];
        let props: Vec<u8> = [
            vec![0x21, 0, 20],
            vec![0x24, 1],
            vec![0x25, 0],
            vec![0x27, 0, 0, 4, 0],
            vec![0x13, 0, 60],
            vec![0x1F, 0, 2, b'n', b'o'],
            vec![0x26, 0, 1, b'a', 0, 1, b'b'],
            vec![0x12, 0, 1, b'c'],
            vec![0x22, 0, 10],
        ]
        .concat();
        b.push(props.len() as u8);
        b.extend_from_slice(&props);
        b[1] = (b.len() - 2) as u8;
        assert_eq!(
            one(&b),
            Incoming::ConnAck(ConnAck {
                session_present: true,
                reason: 0x87,
                receive_maximum: 20,
                maximum_qos: 1,
                retain_available: false,
                maximum_packet_size: Some(1024),
                server_keep_alive: Some(60),
                reason_string: Some("no".into()),
            })
        );
    }

    #[test]
    fn acknowledgements_with_and_without_reason_codes() {
        assert_eq!(
            one(&[0x40, 2, 0, 7]),
            Incoming::PubAck { pkid: 7, reason: 0 }
        );
        assert_eq!(
            one(&[0x40, 3, 0, 7, 0x10]),
            Incoming::PubAck {
                pkid: 7,
                reason: 0x10
            }
        );
        assert_eq!(
            one(&[0x50, 8, 1, 0, 0x87, 4, 0x1F, 0, 1, b'x']),
            Incoming::PubRec {
                pkid: 256,
                reason: 0x87
            }
        );
        assert_eq!(
            one(&[0x70, 4, 0, 1, 0x92, 0]),
            Incoming::PubComp {
                pkid: 1,
                reason: 0x92
            }
        );
        assert_eq!(one(&[0xD0, 0]), Incoming::PingResp);
        assert_eq!(
            one(&[0xE0, 7, 0x8B, 5, 0x1F, 0, 2, b'b', b'y']),
            Incoming::Disconnect {
                reason: 0x8B,
                reason_string: Some("by".into())
            }
        );
        assert_eq!(one(&[0x30, 3, 0, 1, b't']), Incoming::Other(3));
    }

    #[test]
    fn packets_that_arrive_in_pieces_wait_for_the_rest() {
        let mut b = vec![0x40, 2, 0, 1, 0x40, 3, 0, 2, 0x87];
        b.extend_from_slice(&[0x20, 0x83]); // a CONNACK whose length goes on
        let (p, used) = decode(&b).unwrap().unwrap();
        assert_eq!((p, used), (Incoming::PubAck { pkid: 1, reason: 0 }, 4));
        let (p, used2) = decode(&b[used..]).unwrap().unwrap();
        assert_eq!(
            (p, used2),
            (
                Incoming::PubAck {
                    pkid: 2,
                    reason: 0x87
                },
                5
            )
        );
        assert_eq!(decode(&b[used + used2..]).unwrap(), None);
        for cut in 0..4 {
            assert_eq!(decode(&[0x40, 2, 0, 1][..cut]).unwrap(), None);
        }
    }

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        for b in [
            &[0x40, 1, 0][..],                         // shorter than its packet id
            &[0x41, 2, 0, 1],                          // reserved flags
            &[0x00, 0],                                // reserved type
            &[0x20, 2, 2, 0],                          // CONNACK reserved flag
            &[0x20, 5, 0, 0, 2, 0x7F, 0],              // unknown property
            &[0x20, 6, 0, 0, 3, 0x21, 0, 0],           // receive maximum 0
            &[0x40, 5, 0, 1, 0, 9, 0],                 // properties longer than the packet
            &[0x40, 5, 0, 1, 0, 0, 9],                 // bytes after the fields
            &[0xD0, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],     // a five-byte length
            &[0x20, 0x81, 0x80, 0x04],                 // over MAX_INCOMING
            &[0xE0, 6, 0x80, 4, 0x1F, 0, 1, 0xFF][..], // a string that is not UTF-8
        ] {
            assert!(decode(b).is_err(), "{b:?}");
        }
    }

    #[test]
    fn reason_codes_have_names() {
        assert_eq!(reason_name(0x87), "NotAuthorized");
        assert_eq!(reason_name(0x10), "NoMatchingSubscribers");
        assert_eq!(reason_name(0xFE), "Unknown(0xfe)");
    }
}
