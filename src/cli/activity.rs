//! `edgehook activity`: the latest attempts, as Mender's webhook page lists them, read from
//! the outbox (works whether or not the daemon runs).

use std::path::Path;

use serde::Serialize;

use super::exit::{Code, Failure};
use super::table::{Table, ago, paint, rfc3339};
use crate::outbox::{ActivityRow, activity, now_ms, open_ro};

/// Arguments of `activity`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  edgehook activity\n  edgehook activity --sink cloud --limit 50\n  edgehook activity --json | jq '.attempts[] | select(.outcome != \"delivered\")'"
)]
pub struct Args {
    /// Only this sink's attempts
    #[arg(long, value_name = "SINK")]
    pub sink: Option<String>,
    /// How many attempts, newest first
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub limit: usize,
    /// One JSON document on standard output
    #[arg(long)]
    pub json: bool,
}

/// One attempt in `--json`.
#[derive(Debug, Serialize)]
struct Row<'a> {
    time: String,
    #[serde(flatten)]
    row: &'a ActivityRow,
}

pub(super) fn run(config_path: &Path, a: Args) -> Result<Code, Failure> {
    let config = super::load(config_path)?;
    let rows = match open_ro(&config.storage.path)? {
        Some(conn) => activity(&conn, a.sink.as_deref(), a.limit)?,
        None => Vec::new(),
    };
    if a.json {
        let attempts: Vec<Row<'_>> = rows
            .iter()
            .map(|row| Row {
                time: rfc3339(row.at_ms),
                row,
            })
            .collect();
        outln!("{}", serde_json::json!({ "attempts": attempts }));
        return Ok(Code::Ok);
    }
    if rows.is_empty() {
        outln!("No attempts yet.");
        return Ok(Code::Ok);
    }
    let now = now_ms();
    let mut t = Table::new(&[
        "TIME", "SINK", "EVENT", "TYPE", "OUTCOME", "CODE", "LATENCY", "ERROR",
    ]);
    for r in &rows {
        t.row(vec![
            ago(r.at_ms, now),
            r.sink.clone(),
            r.event_id.clone(),
            r.event_type.clone(),
            paint(&r.outcome),
            r.code.map_or("-".into(), |c| c.to_string()),
            r.latency_ms.map_or("-".into(), |l| format!("{l} ms")),
            r.error.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    out!("{}", t.render());
    Ok(Code::Ok)
}
