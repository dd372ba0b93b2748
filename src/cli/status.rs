//! `edgehook status`: each sink's queue, the outbox and the device, read from the outbox file,
//! so it works whether or not the daemon runs.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::exit::{Code, Failure};
use super::table::{Table, ago, rfc3339};
use crate::config::Config;
use crate::outbox::{OutboxReport, SinkReport, now_ms, open_ro, read_report};

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  edgehook status\n  edgehook status --json | jq '.sinks[] | {name, state, pending}'"
)]
pub struct Args {
    /// One JSON document on standard output (documented in docs/status-json.md)
    #[arg(long)]
    pub json: bool,
}

/// The `--json` document.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The device.
    pub device: DeviceStatus,
    /// Whether the daemon answered on its socket.
    pub daemon: DaemonStatus,
    /// The outbox file.
    pub outbox: OutboxStatus,
    /// One entry per sink: configured ones in file order, then orphaned ones.
    pub sinks: Vec<SinkStatus>,
}

/// `device`.
#[derive(Debug, Serialize)]
pub struct DeviceStatus {
    /// The device id (`null` before the first start).
    pub id: Option<String>,
    /// The lifecycle status, when one was set.
    pub status: Option<String>,
}

/// `daemon`.
#[derive(Debug, Serialize)]
pub struct DaemonStatus {
    /// The daemon answered `ping`.
    pub running: bool,
    /// The socket asked.
    pub socket: String,
}

/// `outbox`.
#[derive(Debug, Serialize)]
pub struct OutboxStatus {
    /// The file.
    pub path: String,
    /// Whether it exists yet.
    pub exists: bool,
    /// Events stored.
    pub events: i64,
    /// Bytes of stored events.
    pub event_bytes: i64,
    /// Size of the file with its WAL.
    pub file_bytes: u64,
    /// Events dropped to make room.
    pub dropped: i64,
    /// Events expired by `max_age`.
    pub expired: i64,
    /// Dead letters removed (past `max_age` or over `max_dead_letters`).
    pub dead_letters_trimmed: i64,
}

/// One sink.
#[derive(Debug, Serialize)]
pub struct SinkStatus {
    /// Name.
    pub name: String,
    /// The sink's `description` (`null` when it has none, and for an orphaned queue).
    pub description: Option<String>,
    /// The sink's `metadata` (empty when it has none, and for an orphaned queue).
    pub metadata: BTreeMap<String, String>,
    /// `active`, `backing-off`, `paused`, `gone`, `disabled` or `orphaned`.
    pub state: String,
    /// URL without credentials (`null` for an orphaned queue).
    pub url: Option<String>,
    /// Deliveries waiting.
    pub pending: i64,
    /// Age of the oldest pending event in seconds.
    pub oldest_pending_age_s: Option<i64>,
    /// Deliveries done.
    pub delivered: i64,
    /// Failed attempts.
    pub failed_attempts: i64,
    /// Dead letters kept.
    pub dead_letters: i64,
    /// Last delivery (RFC 3339).
    pub last_success: Option<String>,
    /// Last error text.
    pub last_error: Option<String>,
    /// When it happened (RFC 3339).
    pub last_error_at: Option<String>,
}

/// Builds the status from a config and what the outbox holds.
pub fn collect(config: &Config) -> Result<Status, Failure> {
    let running = crate::client::daemon_running(&config.ingest.socket);
    let path = &config.storage.path;
    let report = match open_ro(path)? {
        Some(conn) => Some(read_report(&conn)?),
        None => None,
    };
    let empty = OutboxReport {
        device_id: None,
        device_status: None,
        events: 0,
        event_bytes: 0,
        dropped: 0,
        expired: 0,
        dead_letters_trimmed: 0,
        sinks: Vec::new(),
    };
    let exists = report.is_some();
    let report = report.unwrap_or(empty);
    let now = now_ms();
    let mut sinks = Vec::new();
    for spec in &config.sinks {
        let row = report.sinks.iter().find(|r| r.name == spec.name);
        let state = if !spec.enabled {
            "disabled".to_string()
        } else if !running {
            "paused".to_string()
        } else {
            row.map_or("active".to_string(), |r| r.state.clone())
        };
        let mut status = sink_status(&spec.name, state, Some(spec.display_url()), row, now);
        status.description = spec.description.clone();
        status.metadata = spec.metadata.clone();
        sinks.push(status);
    }
    for row in &report.sinks {
        if config.sink(&row.name).is_none() {
            sinks.push(sink_status(
                &row.name,
                "orphaned".into(),
                None,
                Some(row),
                now,
            ));
        }
    }
    let file_bytes = [path.as_os_str().to_owned(), {
        let mut w = path.as_os_str().to_owned();
        w.push("-wal");
        w
    }]
    .iter()
    .filter_map(|p| std::fs::metadata(p).ok())
    .map(|m| m.len())
    .sum();
    Ok(Status {
        device: DeviceStatus {
            id: config.device.id.clone().or(report.device_id),
            status: report.device_status,
        },
        daemon: DaemonStatus {
            running,
            socket: config.ingest.socket.display().to_string(),
        },
        outbox: OutboxStatus {
            path: path.display().to_string(),
            exists,
            events: report.events,
            event_bytes: report.event_bytes,
            file_bytes,
            dropped: report.dropped,
            expired: report.expired,
            dead_letters_trimmed: report.dead_letters_trimmed,
        },
        sinks,
    })
}

fn sink_status(
    name: &str,
    state: String,
    url: Option<String>,
    row: Option<&SinkReport>,
    now: i64,
) -> SinkStatus {
    SinkStatus {
        name: name.to_string(),
        description: None,
        metadata: BTreeMap::new(),
        state,
        url,
        pending: row.map_or(0, |r| r.pending),
        oldest_pending_age_s: row
            .and_then(|r| r.oldest_pending_ms)
            .map(|t| now.saturating_sub(t).max(0) / 1000),
        delivered: row.map_or(0, |r| r.delivered),
        failed_attempts: row.map_or(0, |r| r.failed_attempts),
        dead_letters: row.map_or(0, |r| r.dead_letters),
        last_success: row.and_then(|r| r.last_success_ms).map(rfc3339),
        last_error: row.and_then(|r| r.last_error.clone()),
        last_error_at: row.and_then(|r| r.last_error_ms).map(rfc3339),
    }
}

pub(super) fn run(config_path: &Path, a: Args) -> Result<Code, Failure> {
    let config = super::load(config_path)?;
    let s = collect(&config)?;
    if a.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&s).expect("status serialises")
        );
        return Ok(Code::Ok);
    }
    let now = now_ms();
    outln!(
        "device   {} ({})",
        s.device.id.as_deref().unwrap_or("not yet started"),
        s.device.status.as_deref().unwrap_or("no status set")
    );
    outln!(
        "daemon   {}",
        if s.daemon.running {
            "running"
        } else {
            "not running: nothing is being delivered"
        }
    );
    outln!(
        "outbox   {}: {} events, {} bytes of events, {} bytes on disk, {} dropped, {} expired, {} dead letters trimmed",
        s.outbox.path,
        s.outbox.events,
        s.outbox.event_bytes,
        s.outbox.file_bytes,
        s.outbox.dropped,
        s.outbox.expired,
        s.outbox.dead_letters_trimmed
    );
    outln!();
    let mut t = Table::new(&[
        "SINK",
        "STATE",
        "PENDING",
        "OLDEST",
        "DELIVERED",
        "FAILED",
        "DEAD",
        "LAST SUCCESS",
        "LAST ERROR",
    ]);
    for sink in &s.sinks {
        let since = |at: &Option<String>| {
            at.as_deref()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or("-".to_string(), |d| ago(d.as_millis() as i64, now))
        };
        t.row(vec![
            sink.name.clone(),
            super::table::paint(&sink.state),
            sink.pending.to_string(),
            sink.oldest_pending_age_s
                .map_or("-".into(), |s| ago(now - s * 1000, now).replace(" ago", "")),
            sink.delivered.to_string(),
            sink.failed_attempts.to_string(),
            sink.dead_letters.to_string(),
            since(&sink.last_success),
            sink.last_error.as_ref().map_or("-".into(), |e| {
                format!("{e} ({})", since(&sink.last_error_at))
            }),
        ]);
    }
    out!("{}", t.render());
    let described: Vec<&SinkStatus> = s
        .sinks
        .iter()
        .filter(|x| x.description.is_some() || !x.metadata.is_empty())
        .collect();
    if !described.is_empty() {
        outln!();
        let mut t = Table::new(&["SINK", "DESCRIPTION", "METADATA"]);
        for sink in described {
            t.row(vec![
                sink.name.clone(),
                sink.description.clone().unwrap_or_else(|| "-".into()),
                super::sink::metadata_text(&sink.metadata),
            ]);
        }
        out!("{}", t.render());
    }
    Ok(Code::Ok)
}
