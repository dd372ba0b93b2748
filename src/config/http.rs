//! The HTTP keys of a sink: extra headers (`headers`, and `headers_file` for those that are
//! secrets), the body `format`, and the Slack message's fields
//! (`channel`, `username`, `icon_emoji`, `icon_url`) that only `format = "slack"` takes.

use super::check::Checker;
use super::file::{FormatName, SinkFile};
use super::sink::{SinkKind, refuse, span};
use crate::sinks::format::{Format, Slack};

/// The HTTP settings of sink `name`, refusing the MQTT keys.
pub(super) fn check_http(c: &mut Checker<'_>, s: &SinkFile, name: &str) -> SinkKind {
    refuse(
        c,
        name,
        &[
            ("topic", span(&s.topic)),
            ("qos", span(&s.qos)),
            ("password", span(&s.password)),
            ("password_file", span(&s.password_file)),
            ("client_id", span(&s.client_id)),
            ("keep_alive", span(&s.keep_alive)),
            ("status_topic", span(&s.status_topic)),
            ("protocol", span(&s.protocol)),
        ],
        "MQTT sinks",
    );
    let mut headers: Vec<(String, String)> = s
        .headers
        .as_ref()
        .map(|h| {
            h.get_ref()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    for (k, v) in &headers {
        let bad_name = http::HeaderName::from_bytes(k.as_bytes()).is_err();
        let bad_value = http::HeaderValue::from_str(v).is_err();
        if bad_name || bad_value {
            let h = s.headers.as_ref().expect("headers exist");
            c.at(
                h,
                format!("sink `{name}`: header `{k}` is not a valid HTTP header"),
            );
        }
    }
    if let Some(file) = &s.headers_file {
        for (k, v) in headers_from_file(c, file, name) {
            if headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(&k)) {
                c.at(
                    file,
                    format!(
                        "sink `{name}`: header `{k}` is set in `headers` and in `headers_file`"
                    ),
                );
            }
            headers.push((k, v));
        }
    }
    let format = match s.format.as_ref().map(|f| *f.get_ref()) {
        None | Some(FormatName::Envelope) => Format::Envelope,
        Some(FormatName::Data) => Format::Data,
        Some(FormatName::Slack) => Format::Slack(check_slack(c, s, name)),
    };
    if !matches!(format, Format::Slack(_)) {
        refuse(
            c,
            name,
            &[
                ("channel", span(&s.channel)),
                ("icon_emoji", span(&s.icon_emoji)),
                ("icon_url", span(&s.icon_url)),
            ],
            "`format = \"slack\"`",
        );
        refuse(
            c,
            name,
            &[("username", span(&s.username))],
            "MQTT sinks and `format = \"slack\"`",
        );
    }
    SinkKind::Http { headers, format }
}

/// The headers of `headers_file`: one `Name: value` a line, blank lines and lines starting
/// with `#` left out. Read like a secret file (a warning when others can read it); a problem
/// names the line, never its value.
fn headers_from_file(
    c: &mut Checker<'_>,
    file: &toml::Spanned<std::path::PathBuf>,
    name: &str,
) -> Vec<(String, String)> {
    let Some(text) = c.read_whole_file(file, "headers file") else {
        return Vec::new();
    };
    let mut headers = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = line.split_once(':').and_then(|(k, v)| {
            let (k, v) = (k.trim(), v.trim());
            let valid = http::HeaderName::from_bytes(k.as_bytes()).is_ok()
                && http::HeaderValue::from_str(v).is_ok();
            valid.then(|| (k.to_string(), v.to_string()))
        });
        match parsed {
            Some(header) => headers.push(header),
            None => c.at(
                file,
                format!(
                    "sink `{name}`: line {} of the headers file is not a valid `Name: value` HTTP header",
                    n + 1
                ),
            ),
        }
    }
    headers
}

fn check_slack(c: &mut Checker<'_>, s: &SinkFile, name: &str) -> Slack {
    let text = |c: &mut Checker<'_>, v: &Option<toml::Spanned<String>>, key: &str| {
        let v = v.as_ref()?;
        if v.get_ref().trim().is_empty() || v.get_ref().chars().any(char::is_control) {
            c.at(
                v,
                format!("sink `{name}`: `{key}` must be one line of text, not empty"),
            );
        }
        Some(v.get_ref().clone())
    };
    let slack = Slack {
        channel: text(c, &s.channel, "channel"),
        username: text(c, &s.username, "username"),
        icon_emoji: text(c, &s.icon_emoji, "icon_emoji"),
        icon_url: text(c, &s.icon_url, "icon_url"),
    };
    if let (Some(_), Some(url)) = (&s.icon_emoji, &s.icon_url) {
        c.at(
            url,
            format!("sink `{name}`: give `icon_emoji` or `icon_url`, not both"),
        );
    }
    if let Some(url) = &s.icon_url {
        let scheme = url
            .get_ref()
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.scheme_str().map(str::to_string));
        if !matches!(scheme.as_deref(), Some("http" | "https")) {
            c.at(
                url,
                format!("sink `{name}`: `icon_url` must be an http(s):// URL"),
            );
        }
    }
    slack
}

/// The keys an MQTT sink does not take.
pub(super) fn refuse_http_keys(c: &mut Checker<'_>, s: &SinkFile, name: &str) {
    refuse(
        c,
        name,
        &[
            ("headers", span(&s.headers)),
            ("headers_file", span(&s.headers_file)),
            ("format", span(&s.format)),
            ("channel", span(&s.channel)),
            ("icon_emoji", span(&s.icon_emoji)),
            ("icon_url", span(&s.icon_url)),
        ],
        "HTTP sinks",
    );
}
