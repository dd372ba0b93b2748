//! The MQTT keys of a sink: broker, credentials, QoS and the topic templates, whose
//! placeholders are `{device_id}`, `{type}`, `{sink}` and `{metadata.KEY}`.

use std::collections::BTreeMap;
use std::time::Duration;

use toml::Spanned;

use super::check::Checker;
use super::file::SinkFile;

/// The MQTT settings of a sink.
#[derive(Debug, Clone)]
pub struct MqttSpec {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// `mqtts://` or `wss://`.
    pub tls: bool,
    /// `wss://`: the URL MQTT goes to over WebSockets.
    pub websocket: Option<String>,
    /// Topic template.
    pub topic: String,
    /// 1 or 2.
    pub qos: u8,
    /// User name.
    pub username: Option<String>,
    /// Password, read from `password` or `password_file`.
    pub password: Option<String>,
    /// Client id template.
    pub client_id: String,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Presence topic template.
    pub status_topic: String,
    /// The MQTT version spoken.
    pub protocol: Protocol,
}

/// The MQTT version a sink speaks (`protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 5: the signature headers go as user properties.
    V5,
    /// MQTT 3.1.1: no properties, so each payload is a JSON object carrying the headers and
    /// the body (SPEC §15).
    V311,
}

/// The MQTT settings of sink `name`; its templates may use its `metadata`.
pub(super) fn check_mqtt(
    c: &mut Checker<'_>,
    s: &SinkFile,
    name: &str,
    uri: Option<&http::Uri>,
    metadata: &BTreeMap<String, String>,
) -> MqttSpec {
    let scheme = uri.map(super::sink::scheme_of);
    let websocket = (scheme.as_deref() == Some("wss")).then(|| websocket_url(uri));
    let tls = scheme.as_deref() == Some("mqtts") || websocket.is_some();
    // An IPv6 literal is bracketed in the URL only: connecting takes the bare address.
    let host = uri
        .and_then(http::Uri::host)
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let qos = match &s.qos {
        Some(q) if *q.get_ref() == 0 => {
            c.at(
                q,
                format!("sink `{name}`: QoS 0 cannot confirm delivery; use `qos = 1` or `qos = 2`"),
            );
            1
        }
        Some(q) if *q.get_ref() > 2 => {
            c.at(q, format!("sink `{name}`: `qos` is 1 or 2"));
            1
        }
        Some(q) => *q.get_ref(),
        None => 1,
    };
    let password = match (&s.password, &s.password_file) {
        (Some(p), Some(_)) => {
            c.at(
                p,
                format!("sink `{name}`: give `password` or `password_file`, not both"),
            );
            None
        }
        (Some(p), None) => Some(p.get_ref().clone()),
        (None, Some(f)) => c.read_file(f, "password file"),
        (None, None) => None,
    };
    if password.is_some() && s.username.is_none() {
        c.at(
            &s.name,
            format!("sink `{name}`: a password needs a `username`"),
        );
    }
    if password.is_some() && !tls {
        warn_plain_password(c, name, &host);
    }
    let protocol = match s.protocol.as_ref().map(|p| (p, p.get_ref().as_str())) {
        None | Some((_, "5")) => Protocol::V5,
        Some((_, "3.1.1")) => Protocol::V311,
        Some((p, other)) => {
            c.at(
                p,
                format!("sink `{name}`: `protocol` is \"5\" or \"3.1.1\", not {other:?}"),
            );
            Protocol::V5
        }
    };
    let template = |t: &Option<Spanned<String>>, default: &str, c: &mut Checker<'_>| {
        let text = t
            .as_ref()
            .map_or(default.to_string(), |t| t.get_ref().clone());
        if let Some(t) = t {
            if let Err(e) = check_template(&text, metadata) {
                c.at(t, format!("sink `{name}`: {e}"));
            }
        }
        text
    };
    MqttSpec {
        host,
        port: uri
            .and_then(http::Uri::port_u16)
            .unwrap_or(match (&websocket, tls) {
                (Some(_), _) => 443,
                (None, true) => 8883,
                (None, false) => 1883,
            }),
        tls,
        websocket,
        topic: template(&s.topic, "edgehook/{device_id}/events/{type}", c),
        qos,
        username: s.username.as_ref().map(|u| u.get_ref().clone()),
        password,
        client_id: template(&s.client_id, "edgehook-{device_id}", c),
        keep_alive: s
            .keep_alive
            .as_ref()
            .map_or(Duration::from_secs(30), |k| k.get_ref().0),
        status_topic: template(&s.status_topic, "edgehook/{device_id}/status", c),
        protocol,
    }
}

/// The URL of a `wss://` sink as the WebSocket request takes it: scheme in lower case, the
/// port written out (443 by default), the path (`/` by default).
fn websocket_url(uri: Option<&http::Uri>) -> String {
    let Some(u) = uri else {
        return String::new();
    };
    let host = u.host().unwrap_or("");
    let port = u.port_u16().unwrap_or(443);
    let path = u.path_and_query().map_or("/", |p| p.as_str());
    format!("wss://{host}:{port}{path}")
}

/// Warns about a password sent over plain `mqtt://` to a broker that is not loopback: the
/// CONNECT packet carries it in the clear.
fn warn_plain_password(c: &mut Checker<'_>, name: &str, host: &str) {
    if !super::sink::is_loopback_host(host) {
        c.warnings.push(format!(
            "Sink {name} sends its MQTT password over plain mqtt:// to {host}: anyone on the way can read it and the events; use mqtts://"
        ));
    }
}

/// Checks a topic template's placeholders against the sink's `metadata`: each
/// `{metadata.KEY}` must name one of its keys, and what it puts in the topic must not be an
/// MQTT wildcard.
pub fn check_template(t: &str, metadata: &BTreeMap<String, String>) -> Result<(), String> {
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed `{{` in `{t}`"))?;
        let key = &after[..close];
        match key.strip_prefix("metadata.") {
            Some(k) => match metadata.get(k) {
                None => {
                    return Err(format!(
                        "`{{{key}}}` in `{t}` names no key of this sink's `metadata`"
                    ));
                }
                Some(v) if v.contains(['+', '#']) => {
                    return Err(format!(
                        "`metadata.{k}` is used in `{t}` and contains an MQTT wildcard"
                    ));
                }
                Some(_) => {}
            },
            None if matches!(key, "device_id" | "type" | "sink") => {}
            None => {
                return Err(format!(
                    "unknown placeholder `{{{key}}}` in `{t}` (expected {{device_id}}, {{type}}, {{sink}} or {{metadata.KEY}})"
                ));
            }
        }
        rest = &after[close + 1..];
    }
    if t.contains('+') || t.contains('#') {
        return Err(format!("`{t}` contains an MQTT wildcard"));
    }
    Ok(())
}

/// Fills a template's placeholders.
pub fn fill(
    template: &str,
    device_id: &str,
    event_type: &str,
    sink: &str,
    metadata: &BTreeMap<String, String>,
) -> String {
    let mut out = template
        .replace("{device_id}", device_id)
        .replace("{type}", event_type)
        .replace("{sink}", sink);
    for (k, v) in metadata {
        out = out.replace(&format!("{{metadata.{k}}}"), v);
    }
    out
}
