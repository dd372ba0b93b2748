//! `edgehook set-status STATUS`, `edgehook decommission` and `edgehook provision`: the device's
//! lifecycle, carried out by the running daemon.

use std::path::Path;

use super::exit::{Code, Failure};
use crate::client::{Control, Done};

/// Arguments of `set-status`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  edgehook set-status accepted\n  edgehook set-status pending")]
pub struct SetStatusArgs {
    /// The new status: ^[a-z][a-z0-9_-]{0,31}$; an event is emitted only when it changes
    pub status: String,
}

pub(super) fn set_status(config_path: &Path, a: SetStatusArgs) -> Result<Code, Failure> {
    crate::sources::device::check_status(&a.status)
        .map_err(|r| Failure::new(Code::DataErr, r.error))?;
    let reply = super::ask_daemon(
        config_path,
        Control::SetStatus {
            status: a.status.clone(),
        },
    )?;
    report(
        &reply,
        &format!("Status set to {}", a.status),
        &format!("Status already {}; nothing emitted", a.status),
    )
}

pub(super) fn decommission(config_path: &Path) -> Result<Code, Failure> {
    let reply = super::ask_daemon(config_path, Control::Decommission)?;
    report(
        &reply,
        "Decommissioned: sources stopped and local events refused; the backlog still drains",
        "Already decommissioned; nothing emitted",
    )
}

pub(super) fn provision(config_path: &Path) -> Result<Code, Failure> {
    let reply = super::ask_daemon(config_path, Control::Provision)?;
    report(
        &reply,
        "Provisioned",
        "Already provisioned; nothing emitted",
    )
}

fn report(reply: &Done, changed: &str, unchanged: &str) -> Result<Code, Failure> {
    match &reply.id {
        Some(id) if reply.changed == Some(true) => outln!("{changed}: event {id}"),
        _ => outln!("{unchanged}"),
    }
    Ok(Code::Ok)
}
