//! `edgehook sink list` and `edgehook sink show`: the sinks as configured, secrets, header
//! values and the URL's tokens never shown (the URL as [`crate::config::display_url`] masks
//! it); `show --reveal-secret` prints them, for root only.

use std::path::Path;

use serde_json::{Value, json};

use super::{find, listed, metadata_text, shown_file};
use crate::cli::exit::{Code, Failure};
use crate::cli::table::Table;
use crate::config::{Config, SecretSource, SinkKind, SinkSpec};
use crate::sinks::format::Format;

/// Arguments of `sink list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// One JSON document on standard output: {"sinks": [what `show --json` shows, …]}
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `sink show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The sink, by name
    pub name: String,
    /// One JSON document on standard output
    #[arg(long)]
    pub json: bool,
    /// Also print the current signing secret, the whole URL and the header values, to copy
    /// them to the receiver (root only)
    #[arg(long)]
    pub reveal_secret: bool,
}

pub(super) fn list(config_path: &Path, a: ListArgs) -> Result<Code, Failure> {
    let config = crate::cli::load(config_path)?;
    if a.json {
        let sinks: Vec<Value> = config.sinks.iter().map(describe).collect();
        outln!("{}", json!({ "sinks": sinks }));
        return Ok(Code::Ok);
    }
    if config.sinks.is_empty() {
        outln!("No sinks in {} or its sinks.d.", config.path.display());
        return Ok(Code::Ok);
    }
    let mut t = Table::new(&[
        "SINK",
        "TRANSPORT",
        "FORMAT",
        "SIGNING",
        "EVENTS",
        "FILE",
        "URL",
        "DESCRIPTION",
    ]);
    for s in &config.sinks {
        t.row(vec![
            if s.enabled {
                s.name.clone()
            } else {
                format!("{} (disabled)", s.name)
            },
            s.transport().into(),
            s.format().name().into(),
            s.signer.scheme().name().into(),
            s.patterns().join(","),
            shown_file(&config, &s.file).display().to_string(),
            s.display_url(),
            s.description.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    out!("{}", t.render());
    Ok(Code::Ok)
}

pub(super) fn show(config_path: &Path, a: ShowArgs) -> Result<Code, Failure> {
    // Before anything is read, so that whoever may not see the secret learns it at once.
    if a.reveal_secret && !nix::unistd::geteuid().is_root() {
        return Err(Failure::new(
            Code::Usage,
            "--reveal-secret is for root only (run it with sudo)",
        ));
    }
    let config = crate::cli::load(config_path)?;
    let spec = find(&config, &a.name)?;
    let secret = if a.reveal_secret { reveal(spec)? } else { None };
    let headers = match &spec.kind {
        SinkKind::Http { headers, .. } if a.reveal_secret => headers.as_slice(),
        _ => &[],
    };
    let mut doc = describe(spec);
    if a.json {
        if let Some(secret) = secret {
            doc["signing"]["revealed_secret"] = json!(secret);
        }
        if a.reveal_secret {
            doc["url"] = json!(spec.url);
            for (k, v) in headers {
                doc["headers"][k] = json!(v);
            }
        }
        outln!("{doc}");
        return Ok(Code::Ok);
    }
    for (label, mut value) in lines(&config, spec) {
        if a.reveal_secret && label == "url" {
            value.clone_from(&spec.url);
        }
        if a.reveal_secret && label == "headers" {
            value = listed(headers.iter().map(|(k, v)| format!("{k}: {v}")));
        }
        outln!("{label:<13}{value}");
    }
    if let Some(secret) = secret {
        outln!("{:<13}{secret}", "secret");
    }
    Ok(Code::Ok)
}

/// The sink's current signing secret; `None` for a sink that does not sign.
fn reveal(spec: &SinkSpec) -> Result<Option<String>, Failure> {
    if let Some(secret) = spec.signer.reveal() {
        return Ok(Some(secret));
    }
    if let SecretSource::Generated(path) = &spec.secret {
        return Err(Failure::new(
            Code::Unavailable,
            format!(
                "the secret of sink {} is not generated yet ({} does not exist): the daemon generates it when it starts the sink",
                spec.name,
                path.display()
            ),
        ));
    }
    Ok(None)
}

/// What `show --json` and `list --json` print for a sink.
fn describe(s: &SinkSpec) -> Value {
    let (secret, secret_file) = match &s.secret {
        SecretSource::None => ("none", None),
        SecretSource::Inline => ("inline", None),
        SecretSource::File(p) => ("file", Some(p.display().to_string())),
        SecretSource::Generated(p) => ("generated", Some(p.display().to_string())),
    };
    let (headers, slack, mqtt) = match &s.kind {
        SinkKind::Http { headers, format } => {
            let hidden: serde_json::Map<String, Value> = headers
                .iter()
                .map(|(k, _)| (k.clone(), json!("(hidden)")))
                .collect();
            let slack = match format {
                Format::Slack(slack) => json!(slack),
                _ => Value::Null,
            };
            (hidden, slack, Value::Null)
        }
        SinkKind::Mqtt(m) => (
            serde_json::Map::new(),
            Value::Null,
            json!({
                "topic": m.topic, "qos": m.qos, "client_id": m.client_id,
                "status_topic": m.status_topic, "username": m.username,
            }),
        ),
    };
    json!({
        "name": s.name,
        "description": s.description,
        "metadata": s.metadata,
        "file": s.file.display().to_string(),
        "url": s.display_url(),
        "transport": s.transport(),
        "format": s.format().name(),
        "enabled": s.enabled,
        "events": s.patterns(),
        "headers": headers,
        "signing": {
            "scheme": s.signer.scheme().name(),
            "secret": secret,
            "secret_file": secret_file,
            "ready": s.signer.is_ready(),
        },
        "slack": slack,
        "mqtt": mqtt,
        "timeout_ms": crate::config::units::millis(s.timeout),
        "max_in_flight": s.max_in_flight,
        "retry": {
            "initial_ms": crate::config::units::millis(s.retry_initial),
            "max_ms": crate::config::units::millis(s.retry_max),
            "max_attempts": s.max_attempts,
        },
    })
}

/// What `show` prints for people, line by line.
fn lines(config: &Config, s: &SinkSpec) -> Vec<(&'static str, String)> {
    let duration = |d| humantime::format_duration(d).to_string();
    let mut out = vec![
        ("name", s.name.clone()),
        (
            "description",
            s.description.clone().unwrap_or_else(|| "-".into()),
        ),
        ("metadata", metadata_text(&s.metadata)),
        ("file", shown_file(config, &s.file).display().to_string()),
        ("url", s.display_url()),
        (
            "transport",
            format!("{}, format {}", s.transport(), s.format().name()),
        ),
        ("enabled", if s.enabled { "yes" } else { "no" }.into()),
        ("events", s.patterns().join(", ")),
    ];
    let signing = match &s.secret {
        SecretSource::None => "none".to_string(),
        SecretSource::Inline => format!("{}, secret in the config", s.signer.scheme().name()),
        SecretSource::File(p) => {
            format!("{}, secret file {}", s.signer.scheme().name(), p.display())
        }
        SecretSource::Generated(p) => format!(
            "{}, generated secret {} ({})",
            s.signer.scheme().name(),
            p.display(),
            if s.signer.is_ready() {
                "reveal it with --reveal-secret"
            } else {
                "not generated yet, or not readable here"
            }
        ),
    };
    out.push(("signing", signing));
    match &s.kind {
        SinkKind::Http { headers, format } => {
            out.push((
                "headers",
                listed(headers.iter().map(|(k, _)| format!("{k}: (hidden)"))),
            ));
            if let Format::Slack(slack) = format {
                let fields = [
                    ("channel", &slack.channel),
                    ("username", &slack.username),
                    ("icon_emoji", &slack.icon_emoji),
                    ("icon_url", &slack.icon_url),
                ];
                out.push((
                    "slack",
                    listed(
                        fields
                            .iter()
                            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} {v}"))),
                    ),
                ));
            }
        }
        SinkKind::Mqtt(m) => {
            out.push(("topic", format!("{} (QoS {})", m.topic, m.qos)));
            out.push(("status_topic", m.status_topic.clone()));
        }
    }
    out.push((
        "retry",
        format!(
            "from {} doubling up to {}; {} attempts for refusals",
            duration(s.retry_initial),
            duration(s.retry_max),
            s.max_attempts
        ),
    ));
    out.push(("timeout", duration(s.timeout)));
    out.push(("in flight", s.max_in_flight.to_string()));
    out
}
