//! The socket's wire format (SPEC §7, docs/socket.md): one JSON request a line, one JSON reply
//! a line. The client ([`crate::client`]) writes these types and the socket server
//! ([`crate::sources::ingest`]) reads them, so both sides agree by construction.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A request line.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Request<'a> {
    /// An event to store.
    Emit(Emit<'a>),
    /// Any other op.
    Control(Control),
}

/// An event: `{"type":T,"data":D,"id":ID}`, with `"op":"emit"` or no `op` at all.
///
/// The server reads every line as this first (one pass, `data` borrowed from the line): an
/// `op` other than `emit` then reads the line again as a [`Control`]. Control ops are rare;
/// events are the load.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Emit<'a> {
    /// `emit`, or absent; read to route the line, left out by a client.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub op: Option<&'a str>,
    /// The event type (required; `None` is answered `invalid`).
    #[serde(rename = "type", default)]
    pub event_type: Option<String>,
    /// The data, as given; `null` when absent.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
    /// The event id; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// Every op but `emit`, tagged by `op`. Fields other than an op's own are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Control {
    /// Liveness; open to every client.
    Ping,
    /// Announce a new device status.
    SetStatus {
        /// The new status.
        status: String,
    },
    /// Decommission the device.
    Decommission,
    /// Undo `decommission`.
    Provision,
    /// Collect the inventory now.
    InventoryRefresh,
    /// Dead letters back to their queues: either `ids` (not empty) or `all: true`.
    Redeliver {
        /// Only this sink's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sink: Option<String>,
        /// These event ids.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ids: Option<Vec<String>>,
        /// Every dead letter.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        all: Option<bool>,
    },
    /// Un-pause a sink paused by 410.
    Resume {
        /// The sink's name.
        sink: String,
    },
    /// Read the config files again, as SIGHUP.
    Reload,
    /// An op this edgehook does not know (never sent).
    #[serde(other, skip_serializing)]
    Unknown,
}

impl Control {
    /// `redeliver` of `ids`, or of every dead letter when `None`.
    pub fn redeliver(sink: Option<String>, ids: Option<Vec<String>>) -> Control {
        let all = ids.is_none().then_some(true);
        Control::Redeliver { sink, ids, all }
    }

    /// The op's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Control::Ping => "ping",
            Control::SetStatus { .. } => "set-status",
            Control::Decommission => "decommission",
            Control::Provision => "provision",
            Control::InventoryRefresh => "inventory-refresh",
            Control::Redeliver { .. } => "redeliver",
            Control::Resume { .. } => "resume",
            Control::Reload => "reload",
            Control::Unknown => "unknown",
        }
    }

    /// Whether the op changes the device or its deliveries, so only an administrator may ask
    /// it (SPEC §7, "Who may do what").
    pub fn is_admin(&self) -> bool {
        !matches!(self, Control::Ping | Control::Unknown)
    }
}

impl<'a> From<Emit<'a>> for Request<'a> {
    fn from(e: Emit<'a>) -> Self {
        Request::Emit(e)
    }
}

impl From<Control> for Request<'_> {
    fn from(c: Control) -> Self {
        Request::Control(c)
    }
}

/// A reply line: `{"ok":true,…}` or `{"ok":false,"code":C,"error":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Done; the fields the op answers with.
    Ok(Done),
    /// Refused.
    Err {
        /// The code: `invalid`, `too_large`, `full`, `decommissioned`, `unknown_op`,
        /// `forbidden`, `conflict`, `busy` or `internal`.
        code: String,
        /// What to tell the user.
        error: String,
    },
}

/// The fields of an `{"ok":true,…}` reply; each op sets its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// Whether a lifecycle op or `resume` changed anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
    /// The id of the event stored (an event, or a lifecycle op's event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// An event whose id was already in the outbox with the same type and data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
    /// `redeliver`: dead letters put back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redelivered: Option<u64>,
    /// `redeliver`: ids asked for that are not dead letters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<Vec<String>>,
    /// `reload`: the sinks running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sinks: Option<u64>,
}

impl Done {
    /// The reply to a stored event.
    pub fn stored(id: impl Into<String>) -> Done {
        Done {
            id: Some(id.into()),
            ..Done::default()
        }
    }
}

/// How a reply is written and read: one flat object.
#[derive(Serialize, Deserialize)]
struct Wire<D> {
    ok: bool,
    #[serde(flatten)]
    done: D,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Serialize for Reply {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Reply::Ok(done) => Wire {
                ok: true,
                done,
                code: None,
                error: None,
            }
            .serialize(s),
            Reply::Err { code, error } => Wire {
                ok: false,
                done: Option::<&Done>::None,
                code: Some(code.clone()),
                error: Some(error.clone()),
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Reply {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = Wire::<Done>::deserialize(d)?;
        Ok(if w.ok {
            Reply::Ok(w.done)
        } else {
            Reply::Err {
                code: w.code.unwrap_or_else(|| "internal".into()),
                error: w.error.unwrap_or_default(),
            }
        })
    }
}

impl Reply {
    /// A refusal.
    pub fn err(code: &str, error: impl Into<String>) -> Reply {
        Reply::Err {
            code: code.into(),
            error: error.into(),
        }
    }

    /// The reply as one line, with its newline.
    pub fn line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("a reply serialises");
        line.push(b'\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_written_as_the_spec_shows_them() {
        let data = RawValue::from_string("{\"a\":1}".into()).unwrap();
        let emit = Request::Emit(Emit {
            event_type: Some("door.opened".into()),
            data: Some(&data),
            ..Emit::default()
        });
        assert_eq!(
            serde_json::to_string(&emit).unwrap(),
            r#"{"type":"door.opened","data":{"a":1}}"#
        );
        let cases = [
            (Control::Ping, r#"{"op":"ping"}"#),
            (
                Control::SetStatus {
                    status: "accepted".into(),
                },
                r#"{"op":"set-status","status":"accepted"}"#,
            ),
            (Control::InventoryRefresh, r#"{"op":"inventory-refresh"}"#),
            (
                Control::redeliver(Some("cloud".into()), None),
                r#"{"op":"redeliver","sink":"cloud","all":true}"#,
            ),
            (
                Control::redeliver(None, Some(vec!["e1".into()])),
                r#"{"op":"redeliver","ids":["e1"]}"#,
            ),
            (
                Control::Resume {
                    sink: "cloud".into(),
                },
                r#"{"op":"resume","sink":"cloud"}"#,
            ),
            (Control::Reload, r#"{"op":"reload"}"#),
        ];
        for (control, line) in cases {
            let text = serde_json::to_string(&Request::Control(control.clone())).unwrap();
            assert_eq!(text, line);
            let back: Control = serde_json::from_str(&text).unwrap();
            assert_eq!(back, control);
            assert_eq!(control.name(), back.name());
        }
        let unknown: Control = serde_json::from_str(r#"{"op":"launch","x":1}"#).unwrap();
        assert_eq!(unknown, Control::Unknown);
    }

    #[test]
    fn replies_are_one_flat_object_and_read_back() {
        let cases = [
            (Reply::Ok(Done::default()), r#"{"ok":true}"#),
            (Reply::Ok(Done::stored("e1")), r#"{"ok":true,"id":"e1"}"#),
            (
                Reply::Ok(Done {
                    redelivered: Some(2),
                    missing: Some(vec!["x".into()]),
                    ..Done::default()
                }),
                r#"{"ok":true,"redelivered":2,"missing":["x"]}"#,
            ),
            (
                Reply::err("forbidden", "no"),
                r#"{"ok":false,"code":"forbidden","error":"no"}"#,
            ),
        ];
        for (reply, line) in cases {
            assert_eq!(reply.line(), format!("{line}\n").into_bytes());
            assert_eq!(serde_json::from_str::<Reply>(line).unwrap(), reply);
        }
    }
}
