//! `edgehook reload`: the running daemon reads its files again; the command waits for the
//! outcome (the unit's `ExecReload`, so that `systemctl reload` fails when the new config is
//! refused).

use std::path::Path;

use super::exit::{Code, Failure};

/// The config is read here first, with the daemon's own checks, only to find the socket: a file
/// that does not load is refused as the daemon would refuse it, and the daemon is not asked.
pub(super) fn run(config_path: &Path) -> Result<Code, Failure> {
    let config = super::load(config_path)?;
    let mut client = crate::client::Client::connect(&config.ingest.socket)?;
    match client.call(&crate::client::Control::Reload)? {
        crate::client::Reply::Ok(v) => {
            outln!(
                "The daemon reloaded its config: {} sink(s) running",
                v.sinks.unwrap_or(0)
            );
            Ok(Code::Ok)
        }
        crate::client::Reply::Err { code, error } => {
            Err(super::exit::reload_refused(&code, &error))
        }
    }
}
