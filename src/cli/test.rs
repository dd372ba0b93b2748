//! `edgehook test SINK`: one `webhook-test` event sent now, outside the outbox, with the
//! sink's URL, headers, TLS and signing; shows what was sent and what came back.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use super::exit::{Code, Failure};
use crate::config::SinkKind;
use crate::sinks::{Outcome, http::HttpSink, mqtt::MqttSink};

/// Arguments of `test`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  edgehook test cloud\n  edgehook test broker --json")]
pub struct Args {
    /// The sink, by name
    pub sink: String,
    /// One JSON document on standard output
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct WebhookTest<'a> {
    device_id: &'a str,
    sink: &'a str,
}

#[derive(Serialize)]
struct Report<'a> {
    sink: &'a str,
    url: String,
    event_id: &'a str,
    ok: bool,
    code: Option<u16>,
    latency_ms: u64,
    error: Option<String>,
    headers: Vec<(String, String)>,
}

pub(super) fn run(config_path: &Path, a: Args) -> Result<Code, Failure> {
    let config = super::load(config_path)?;
    let spec = config.sink(&a.sink).cloned().ok_or_else(|| {
        Failure::new(
            Code::Usage,
            format!(
                "no sink is called `{}` in {}",
                a.sink,
                config.path.display()
            ),
        )
    })?;
    let device_id =
        super::device_id(&config)?.unwrap_or_else(|| "00000000-0000-0000-0000-000000000000".into());
    let data = WebhookTest {
        device_id: &device_id,
        sink: &spec.name,
    };
    let event = crate::event::build_value(None, "webhook-test", &data, SystemTime::now());
    let spec = Arc::new(spec);
    let start_error = |e: crate::sinks::SinkError| Failure::new(Code::Config, e.to_string());
    let (attempt, mut headers) = match &spec.kind {
        SinkKind::Http { headers: extra, .. } => {
            let sink = HttpSink::new(spec.clone(), &device_id).map_err(start_error)?;
            let now = SystemTime::now();
            let ts = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let attempt = sink.attempt_at(&event.id, "webhook-test", &event.body, now);
            let body = sink.body(&event.body);
            let mut sent = sink.headers(&event.id, "webhook-test", ts, &body);
            // Configured headers often carry credentials: shown by name only.
            for (k, v) in &mut sent {
                if extra.iter().any(|(name, _)| name == k) {
                    *v = "(hidden)".into();
                }
            }
            (attempt, sent)
        }
        SinkKind::Mqtt(_) => {
            let sink = MqttSink::new(spec.clone(), &device_id).map_err(start_error)?;
            sink.publish_once(&event.id, "webhook-test", &event.body)
        }
    };
    headers.sort_by(|x, y| x.0.cmp(&y.0));
    let (ok, error) = match &attempt.outcome {
        Outcome::Delivered => (true, None),
        Outcome::Gone => (false, Some("HTTP 410 Gone".to_string())),
        Outcome::Transient { error, .. } | Outcome::Permanent { error } => {
            (false, Some(error.clone()))
        }
    };
    let report = Report {
        sink: &spec.name,
        url: spec.display_url(),
        event_id: &event.id,
        ok,
        code: attempt.status,
        latency_ms: attempt.latency.as_millis() as u64,
        error,
        headers,
    };
    if a.json {
        outln!(
            "{}",
            serde_json::to_string(&report).expect("a report serialises")
        );
    } else {
        let headers = match &spec.kind {
            SinkKind::Mqtt(m) if m.protocol == crate::config::Protocol::V311 => {
                "Headers sent (in the MQTT 3.1.1 payload):"
            }
            SinkKind::Mqtt(_) => "User properties sent:",
            SinkKind::Http { .. } => "Headers sent:",
        };
        print_report(&report, matches!(spec.kind, SinkKind::Mqtt(_)), headers);
    }
    Ok(if ok { Code::Ok } else { Code::CheckFailed })
}

fn print_report(r: &Report<'_>, mqtt: bool, headers: &str) {
    outln!(
        "Sent webhook-test {} to sink {} ({})",
        r.event_id,
        r.sink,
        r.url
    );
    outln!("{headers}");
    for (k, v) in &r.headers {
        outln!("  {k}: {v}");
    }
    let code = r.code.map_or(String::new(), |c| {
        if mqtt {
            format!("reason code {c}, ")
        } else {
            format!("HTTP {c}, ")
        }
    });
    match &r.error {
        None => outln!("✓ delivered ({code}{} ms)", r.latency_ms),
        Some(e) => outln!("✗ failed: {e} ({code}{} ms)", r.latency_ms),
    }
}
