//! `edgehook dead-letters`, `edgehook redeliver` and `edgehook resume`: what was given up on,
//! and how to try again.

use std::path::Path;

use serde_json::json;

use super::exit::{Code, Failure};
use super::table::{Table, ago, rfc3339};
use crate::client::{Control, daemon_running};
use crate::outbox::{Outbox, Redeliver, StoreError, dead_letters, now_ms, open_ro};

/// Arguments of `dead-letters`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  edgehook dead-letters\n  edgehook dead-letters --sink cloud --json"
)]
pub struct ListArgs {
    /// Only this sink's dead letters
    #[arg(long, value_name = "SINK")]
    pub sink: Option<String>,
    /// One JSON document on standard output
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `redeliver`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  edgehook redeliver --all\n  edgehook redeliver --sink cloud 1aaf5222-8f2c-4d48-9ae9-8862e78c3fdf"
)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["all", "ids"])))]
pub struct RedeliverArgs {
    /// Only this sink's dead letters
    #[arg(long, value_name = "SINK")]
    pub sink: Option<String>,
    /// Every dead letter (of --sink)
    #[arg(long)]
    pub all: bool,
    /// These events' dead letters
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
}

/// Arguments of `resume`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  edgehook resume cloud")]
pub struct ResumeArgs {
    /// The sink paused by 410 Gone
    pub sink: String,
}

pub(super) fn list(config_path: &Path, a: ListArgs) -> Result<Code, Failure> {
    let config = super::load(config_path)?;
    let rows = match open_ro(&config.storage.path)? {
        Some(conn) => dead_letters(&conn, a.sink.as_deref())?,
        None => Vec::new(),
    };
    if a.json {
        let rows: Vec<_> = rows
            .iter()
            .map(|d| {
                json!({
                    "sink": d.sink, "id": d.id, "type": d.event_type, "reason": d.reason,
                    "attempts": d.attempts, "dead_at": rfc3339(d.dead_ms), "dead_ms": d.dead_ms,
                })
            })
            .collect();
        outln!("{}", json!({ "dead_letters": rows }));
        return Ok(Code::Ok);
    }
    if rows.is_empty() {
        outln!("No dead letters.");
        return Ok(Code::Ok);
    }
    let now = now_ms();
    let mut t = Table::new(&["SINK", "EVENT", "TYPE", "ATTEMPTS", "SINCE", "REASON"]);
    for d in &rows {
        t.row(vec![
            d.sink.clone(),
            d.id.clone(),
            d.event_type.clone(),
            d.attempts.to_string(),
            ago(d.dead_ms, now),
            d.reason.clone(),
        ]);
    }
    out!("{}", t.render());
    Ok(Code::Ok)
}

/// Through the daemon when it runs (its sinks pick the events up at once), else directly in
/// the outbox file (they go out when it starts), holding the outbox's lock so that no daemon
/// writes it meanwhile.
pub(super) fn redeliver(config_path: &Path, a: RedeliverArgs) -> Result<Code, Failure> {
    let config = super::load(config_path)?;
    let which = Redeliver {
        sink: a.sink.clone(),
        ids: (!a.all).then_some(a.ids),
    };
    let (count, missing) = if daemon_running(&config.ingest.socket) {
        let request = Control::redeliver(which.sink, which.ids);
        let reply = super::ask_daemon(config_path, request)?;
        (
            reply.redelivered.unwrap_or(0),
            reply.missing.unwrap_or_default(),
        )
    } else {
        // The outbox's lock closes the race with a daemon starting since it did not answer.
        let (outbox, _, thread) = Outbox::open(&config.storage, config.device.id.as_deref())
            .map_err(|e| match e {
                e @ StoreError::Held { .. } => Failure::new(
                    Code::TempFail,
                    format!(
                        "{e}; if it is a daemon still starting, run this again once it answers on {} and the daemon redelivers",
                        config.ingest.socket.display()
                    ),
                ),
                e => e.into(),
            })?;
        let done = outbox
            .redeliver_blocking(which)
            .map_err(|e| Failure::new(Code::IoErr, format!("storage error: {e}")))?;
        drop(outbox);
        let _ = thread.join();
        (done.count as u64, done.missing)
    };
    outln!("{count} dead letter(s) back in their queues");
    if missing.is_empty() {
        return Ok(Code::Ok);
    }
    Err(Failure::new(
        Code::DataErr,
        format!(
            "not dead letters{}: {}",
            a.sink.map_or(String::new(), |s| format!(" of sink {s}")),
            missing.join(", ")
        ),
    ))
}

pub(super) fn resume(config_path: &Path, a: ResumeArgs) -> Result<Code, Failure> {
    let request = Control::Resume {
        sink: a.sink.clone(),
    };
    let reply = super::ask_daemon(config_path, request)?;
    if reply.changed == Some(true) {
        outln!("Sink {} resumed", a.sink);
    } else {
        outln!("Sink {} was not paused", a.sink);
    }
    Ok(Code::Ok)
}
