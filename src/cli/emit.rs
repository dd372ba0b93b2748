//! `edgehook emit TYPE [DATA]`: hand one event to the running daemon.

use std::io::{IsTerminal, Read};
use std::path::Path;

use serde_json::value::RawValue;

use super::exit::{Code, Failure};
use crate::client::{Client, Emit, Reply, Request};

/// Arguments of `emit`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  edgehook emit sensor.temperature '{\"celsius\":21.5}'\n  echo '{\"door\":\"open\"}' | edgehook emit door.opened --id door-42"
)]
pub struct Args {
    /// The event type: ^[a-z0-9][a-z0-9._-]{0,63}$
    pub event_type: String,
    /// The event's data as JSON; `-` or absent reads standard input
    pub data: Option<String>,
    /// Use this id instead of a generated one: sent again with the same type and data while
    /// the first is in the outbox, the event is stored once; with others it is refused (exit 65)
    #[arg(long)]
    pub id: Option<String>,
}

pub(super) fn run(config_path: &Path, a: Args) -> Result<Code, Failure> {
    let text = match a.data.as_deref() {
        Some("-") | None => {
            if a.data.is_none() && std::io::stdin().is_terminal() {
                return Err(Failure::new(
                    Code::Usage,
                    "give the event's DATA as an argument, or pipe it on standard input",
                ));
            }
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).map_err(|e| {
                Failure::new(Code::DataErr, format!("cannot read standard input: {e}"))
            })?;
            s
        }
        Some(d) => d.to_string(),
    };
    let data: Box<RawValue> = serde_json::from_str(text.trim())
        .map_err(|e| Failure::new(Code::DataErr, format!("DATA is not valid JSON: {e}")))?;
    crate::event::check_app_type(&a.event_type)
        .map_err(|e| Failure::new(Code::DataErr, e.to_string()))?;
    let config = super::load(config_path)?;
    let mut client = Client::connect(&config.ingest.socket)?;
    let request = Request::Emit(Emit {
        event_type: Some(a.event_type),
        data: Some(&data),
        id: a.id,
        ..Emit::default()
    });
    match client.call(&request)? {
        Reply::Ok(done) => {
            let id = done.id.unwrap_or_default();
            outln!("{id}");
            if done.duplicate == Some(true) {
                errln!(
                    "edgehook: event {id} was already in the outbox with the same type and data; it is stored once"
                );
            }
            Ok(Code::Ok)
        }
        Reply::Err { code, error } => Err(super::exit::refused(&code, &error)),
    }
}
