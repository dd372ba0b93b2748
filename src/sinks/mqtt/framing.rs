//! What goes into a publish and what comes back, for both protocol versions: the size of a v5
//! publish (to refuse one the broker would refuse), the 3.1.1 payload that carries the
//! signature headers (SPEC §15), reason codes and their names, and rumqttc's errors in words.

use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, PubAckReason, PubCompReason, PubRecReason};
use serde::Serialize;

/// The largest packet edgehook takes from a broker: it expects acknowledgements only.
pub const MAX_INCOMING: u32 = 64 * 1024;

/// The largest packet MQTT can carry (a remaining length of 268,435,455 bytes and its header):
/// a 3.1.1 broker states no maximum, so the sink holds itself to none smaller.
pub const MAX_OUTGOING: usize = 268_435_455 + 5;

/// PUBACK's reason code for a broker over its quota.
pub const QUOTA_EXCEEDED: u8 = 0x97;

/// The reason code a broker answers a packet over its maximum with.
pub const PACKET_TOO_LARGE: u8 = 0x95;

/// The bytes a number takes as an MQTT variable byte integer.
fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// The size on the wire of a v5 QoS 1 or 2 publish with these parts.
pub fn publish_size_v5(
    topic: &str,
    content_type: Option<&str>,
    user: &[(String, String)],
    payload: usize,
) -> usize {
    let props: usize = content_type.map_or(0, |c| 3 + c.len())
        + user
            .iter()
            .map(|(k, v)| 5 + k.len() + v.len())
            .sum::<usize>();
    let remaining = 2 + topic.len() + 2 + varint_len(props) + props + payload;
    1 + varint_len(remaining) + remaining
}

/// The 3.1.1 payload: the headers a v5 publish carries as user properties, and the signed
/// body as a JSON string, which a receiver verifies over its UTF-8 bytes.
pub fn envelope(user: &[(String, String)], body: &[u8]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Envelope<'a> {
        headers: serde_json::Map<String, serde_json::Value>,
        body: std::borrow::Cow<'a, str>,
    }
    let headers = user
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let e = Envelope {
        headers,
        body: String::from_utf8_lossy(body),
    };
    serde_json::to_vec(&e).unwrap_or_default()
}

/// PUBACK's reason code.
pub fn puback_code(r: PubAckReason) -> u8 {
    match r {
        PubAckReason::Success => 0x00,
        PubAckReason::NoMatchingSubscribers => 0x10,
        PubAckReason::UnspecifiedError => 0x80,
        PubAckReason::ImplementationSpecificError => 0x83,
        PubAckReason::NotAuthorized => 0x87,
        PubAckReason::TopicNameInvalid => 0x90,
        PubAckReason::PacketIdentifierInUse => 0x91,
        PubAckReason::QuotaExceeded => QUOTA_EXCEEDED,
        PubAckReason::PayloadFormatInvalid => 0x99,
    }
}

/// PUBREC's reason code.
pub fn pubrec_code(r: PubRecReason) -> u8 {
    match r {
        PubRecReason::Success => 0x00,
        PubRecReason::NoMatchingSubscribers => 0x10,
        PubRecReason::UnspecifiedError => 0x80,
        PubRecReason::ImplementationSpecificError => 0x83,
        PubRecReason::NotAuthorized => 0x87,
        PubRecReason::TopicNameInvalid => 0x90,
        PubRecReason::PacketIdentifierInUse => 0x91,
        PubRecReason::QuotaExceeded => QUOTA_EXCEEDED,
        PubRecReason::PayloadFormatInvalid => 0x99,
    }
}

/// PUBCOMP's reason code.
pub fn pubcomp_code(r: PubCompReason) -> u8 {
    match r {
        PubCompReason::Success => 0x00,
        PubCompReason::PacketIdentifierNotFound => 0x92,
    }
}

/// The name of a v5 reason code (section 2.4), as logs and dead letters show it.
pub fn reason_name(code: u8) -> String {
    let name = match code {
        0x00 => "Success",
        0x10 => "NoMatchingSubscribers",
        0x80 => "UnspecifiedError",
        0x83 => "ImplementationSpecificError",
        0x87 => "NotAuthorized",
        0x90 => "TopicNameInvalid",
        0x91 => "PacketIdentifierInUse",
        0x92 => "PacketIdentifierNotFound",
        PACKET_TOO_LARGE => "PacketTooLarge",
        QUOTA_EXCEEDED => "QuotaExceeded",
        0x99 => "PayloadFormatInvalid",
        _ => return format!("Unknown({code:#04x})"),
    };
    name.to_string()
}

/// Why the broker refused a connection, from the name of its reason (v5) or return code
/// (3.1.1).
pub fn connection_refused(name: &str) -> String {
    let why = match name {
        "BadUserNamePassword" => "bad user name or password",
        "NotAuthorized" => "not authorized",
        "ClientIdentifierNotValid" | "BadClientId" => "client id refused",
        "Banned" => "banned",
        "ServerUnavailable" | "ServerBusy" | "ServiceUnavailable" => {
            "the broker is unavailable or busy"
        }
        "RefusedProtocolVersion" | "UnsupportedProtocolVersion" => {
            "it does not speak this MQTT version (see `protocol`)"
        }
        _ => "",
    };
    if why.is_empty() {
        format!("the broker refused the connection ({name})")
    } else {
        format!("the broker refused the connection: {why} ({name})")
    }
}

/// A v5 connection's end in words.
pub fn describe_v5(e: rumqttc::v5::ConnectionError) -> String {
    use rumqttc::v5::{ConnectionError as C, StateError as S};
    match e {
        C::ConnectionRefused(code) => connection_refused(&connect_name(code)),
        C::MqttState(S::ServerDisconnect {
            reason_code,
            reason_string,
        }) => {
            let mut s = format!("the broker disconnected ({reason_code:?})");
            if let Some(says) = reason_string {
                s.push_str(&format!("; it says {says:?}"));
            }
            s
        }
        C::MqttState(S::Io(e)) => format!("connection lost: {e}"),
        C::MqttState(S::ConnectionAborted) => "the broker closed the connection".into(),
        C::MqttState(S::AwaitPingResp) => "timed out: the broker answered no ping".into(),
        C::MqttState(e) => format!("the broker broke the protocol: {e}"),
        C::Timeout(_) => {
            "timed out: the broker did not answer the connection in time (no CONNACK)".into()
        }
        C::Tls(e) => format!("TLS failed: {e}"),
        C::Io(e) => format!("connection failed: {e}"),
        C::NotConnAck(p) => format!("the broker answered the connection with {p:?}, not CONNACK"),
        C::Websocket(e) => format!("WebSocket failed: {e}"),
        C::ResponseValidation(e) => format!("WebSocket failed: {e}"),
        other => other.to_string(),
    }
}

/// A 3.1.1 connection's end in words.
pub fn describe_v311(e: rumqttc::ConnectionError) -> String {
    use rumqttc::{ConnectionError as C, StateError as S};
    match e {
        C::ConnectionRefused(code) => connection_refused(&format!("{code:?}")),
        C::MqttState(S::Io(e)) => format!("connection lost: {e}"),
        C::MqttState(S::ConnectionAborted) => "the broker closed the connection".into(),
        C::MqttState(S::AwaitPingResp) => "timed out: the broker answered no ping".into(),
        C::MqttState(e) => format!("the broker broke the protocol: {e}"),
        C::NetworkTimeout | C::FlushTimeout => {
            "timed out: the broker did not answer the connection in time (no CONNACK)".into()
        }
        C::Tls(e) => format!("TLS failed: {e}"),
        C::Io(e) => format!("connection failed: {e}"),
        C::NotConnAck(p) => format!("the broker answered the connection with {p:?}, not CONNACK"),
        C::Websocket(e) => format!("WebSocket failed: {e}"),
        C::ResponseValidation(e) => format!("WebSocket failed: {e}"),
        other => other.to_string(),
    }
}

/// The name of a v5 CONNACK reason.
fn connect_name(code: ConnectReturnCode) -> String {
    format!("{code:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};

    #[test]
    fn a_v5_publish_s_size_is_known_before_it_is_built() {
        let user = vec![
            ("edgehook-device-id".to_string(), "d".repeat(40)),
            (
                "webhook-signature".to_string(),
                "v1,".to_string() + &"s".repeat(44),
            ),
        ];
        for payload in [0, 10, 200, 20_000, 3_000_000] {
            let props = PublishProperties {
                content_type: Some("application/json".into()),
                user_properties: user.clone(),
                ..Default::default()
            };
            let mut p = Publish::new(
                "edgehook/dev/events/x",
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                vec![b'x'; payload],
                Some(props),
            );
            p.pkid = 1;
            assert_eq!(
                publish_size_v5(
                    "edgehook/dev/events/x",
                    Some("application/json"),
                    &user,
                    payload
                ),
                p.size(),
                "{payload}"
            );
        }
    }

    #[test]
    fn the_3_1_1_payload_carries_the_headers_and_the_body_as_a_string() {
        let user = vec![
            ("edgehook-device-id".to_string(), "dev".to_string()),
            ("webhook-id".to_string(), "msg_1".to_string()),
        ];
        let body = br#"{"a":"\u00e9 \"q\""}"#;
        let v: serde_json::Value = serde_json::from_slice(&envelope(&user, body)).unwrap();
        assert_eq!(v["headers"]["edgehook-device-id"], "dev");
        assert_eq!(v["headers"]["webhook-id"], "msg_1");
        assert_eq!(v["body"].as_str().unwrap().as_bytes(), body);
    }

    #[test]
    fn reason_codes_have_names() {
        assert_eq!(reason_name(0x97), "QuotaExceeded");
        assert_eq!(reason_name(0x87), "NotAuthorized");
        assert_eq!(reason_name(0x42), "Unknown(0x42)");
        for r in [PubAckReason::QuotaExceeded, PubAckReason::NotAuthorized] {
            assert_eq!(reason_name(puback_code(r)), format!("{r:?}"));
        }
    }
}
