//! What an HTTP sink sends as its body: the stored event (`envelope`), only the event's `data`
//! (`data`, as Magistrala forwards a device's message), or a Slack incoming-webhook message
//! (`slack`, as Device42's Slack endpoint). A body is derived from the stored bytes and the
//! sink's settings alone, so every retry sends the same bytes.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// The longest part of an application event's `data` quoted in a Slack message.
const QUOTE_CHARS: usize = 200;

/// The body format of an HTTP sink.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Format {
    /// The stored event, byte for byte.
    #[default]
    Envelope,
    /// Only the event's `data`, byte for byte as stored.
    Data,
    /// A Slack message summarising the event.
    Slack(Slack),
}

/// The optional fields of a Slack message, from the sink's config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Slack {
    /// `channel`: where the message goes instead of the webhook's default channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// `username`: who the message is from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// `icon_emoji`, such as `:satellite:`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icon_emoji: Option<String>,
    /// `icon_url`: an image instead of an emoji.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icon_url: Option<String>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    event_type: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Serialize)]
struct Message<'a> {
    text: String,
    #[serde(flatten)]
    slack: &'a Slack,
}

impl Format {
    /// The name used in the config file.
    pub fn name(&self) -> &'static str {
        match self {
            Format::Envelope => "envelope",
            Format::Data => "data",
            Format::Slack(_) => "slack",
        }
    }

    /// The body sent for the stored event `stored` of the device `device_id`.
    pub fn render<'a>(&self, stored: &'a [u8], device_id: &str) -> Cow<'a, [u8]> {
        if *self == Format::Envelope {
            return Cow::Borrowed(stored);
        }
        // Every stored event was built by `event::build`; should one not parse, it goes out
        // as stored rather than not at all.
        let Ok(event) = serde_json::from_slice::<Envelope<'a>>(stored) else {
            return Cow::Borrowed(stored);
        };
        match self {
            Format::Envelope => Cow::Borrowed(stored),
            Format::Data => Cow::Borrowed(event.data.get().as_bytes()),
            Format::Slack(slack) => {
                let summary = summary(&event.event_type, event.data, device_id);
                let message = Message {
                    text: escape(&format!("{summary} (event {})", event.id)),
                    slack,
                };
                Cow::Owned(serde_json::to_vec(&message).expect("a message serialises"))
            }
        }
    }
}

/// One readable line about an event.
pub fn summary(event_type: &str, data: &RawValue, device_id: &str) -> String {
    let value: Value = serde_json::from_str(data.get()).unwrap_or(Value::Null);
    let text = |key: &str| value.get(key).and_then(Value::as_str).unwrap_or("unknown");
    let what = match event_type {
        "device-provisioned" => format!("provisioned (status {})", text("status")),
        "device-status-changed" => format!("status changed to {}", text("status")),
        "device-decommissioned" => "decommissioned".to_string(),
        "devices-inventory-changed" => {
            let n = value
                .get("inventory")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            format!(
                "inventory changed: {n} attribute{}",
                if n == 1 { "" } else { "s" }
            )
        }
        "webhook-test" => format!("test webhook for sink {}", text("sink")),
        other if value.is_null() => other.to_string(),
        other => format!("{other} {}", quote(data.get())),
    };
    format!("{device_id}: {what}")
}

fn quote(json: &str) -> String {
    match json.char_indices().nth(QUOTE_CHARS) {
        Some((cut, _)) => format!("{}…", &json[..cut]),
        None => json.to_string(),
    }
}

/// Slack reads `&`, `<` and `>` as markup; these three are escaped in message text.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &[u8] = br#"{"id":"e57a","type":"device-status-changed","data":{"id":"769e","status":"accepted"},"time":"2022-09-13T10:03:47.746805235Z"}"#;

    fn slack() -> Format {
        Format::Slack(Slack {
            channel: Some("#edge".into()),
            username: Some("edgehook".into()),
            icon_emoji: Some(":satellite:".into()),
            icon_url: None,
        })
    }

    fn text_of(body: &[u8]) -> String {
        let v: Value = serde_json::from_slice(body).unwrap();
        v["text"].as_str().unwrap().to_string()
    }

    #[test]
    fn the_envelope_format_sends_the_stored_bytes_themselves() {
        let body = Format::Envelope.render(STATUS, "dev");
        assert!(matches!(body, Cow::Borrowed(b) if b.as_ptr() == STATUS.as_ptr()));
    }

    #[test]
    fn the_data_format_sends_the_data_exactly_as_stored() {
        let stored =
            br#"{"id":"x","type":"app.t","data":{"z":1.50,"a":[true,null,"x y"]},"time":"t"}"#;
        assert_eq!(
            &*Format::Data.render(stored, "dev"),
            br#"{"z":1.50,"a":[true,null,"x y"]}"#
        );
        let null = br#"{"id":"x","type":"app.t","data":null,"time":"t"}"#;
        assert_eq!(&*Format::Data.render(null, "dev"), b"null");
    }

    #[test]
    fn a_slack_message_carries_the_configured_fields_a_summary_and_the_event_id() {
        let body = slack().render(STATUS, "raspberrypi-17");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v["text"],
            "raspberrypi-17: status changed to accepted (event e57a)"
        );
        assert_eq!(v["channel"], "#edge");
        assert_eq!(v["username"], "edgehook");
        assert_eq!(v["icon_emoji"], ":satellite:");
        assert!(v.get("icon_url").is_none());
        assert_eq!(
            body,
            slack().render(STATUS, "raspberrypi-17"),
            "the same bytes"
        );
    }

    #[test]
    fn each_built_in_type_has_its_own_summary() {
        let cases = [
            (
                "device-provisioned",
                r#"{"id":"d","status":"accepted"}"#,
                "pi: provisioned (status accepted)",
            ),
            (
                "device-decommissioned",
                r#"{"id":"d"}"#,
                "pi: decommissioned",
            ),
            (
                "devices-inventory-changed",
                r#"{"device_id":"d","inventory":[{"name":"a"},{"name":"b"},{"name":"c"}]}"#,
                "pi: inventory changed: 3 attributes",
            ),
            (
                "devices-inventory-changed",
                r#"{"device_id":"d","inventory":[{"name":"a"}]}"#,
                "pi: inventory changed: 1 attribute",
            ),
            (
                "webhook-test",
                r#"{"device_id":"d","sink":"chat"}"#,
                "pi: test webhook for sink chat",
            ),
            ("door.opened", "null", "pi: door.opened"),
            (
                "sensor.temperature",
                r#"{"celsius":21.5}"#,
                r#"pi: sensor.temperature {"celsius":21.5}"#,
            ),
        ];
        for (t, data, expected) in cases {
            let data = RawValue::from_string(data.to_string()).unwrap();
            assert_eq!(summary(t, &data, "pi"), expected);
        }
    }

    #[test]
    fn long_application_data_is_cut_and_markup_characters_are_escaped() {
        let long = format!(r#"{{"note":"<b>&{}"}}"#, "x".repeat(500));
        let stored = format!(r#"{{"id":"i","type":"app.note","data":{long},"time":"t"}}"#);
        let text = text_of(&slack().render(stored.as_bytes(), "pi"));
        assert!(
            text.starts_with(r#"pi: app.note {"note":"&lt;b&gt;&amp;xxx"#),
            "{text}"
        );
        assert!(text.ends_with("… (event i)"), "{text}");
        assert!(text.chars().count() < 260, "{}", text.chars().count());
    }
}
