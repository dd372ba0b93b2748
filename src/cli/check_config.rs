//! `edgehook check-config`: validate the file and print what it configures.

use std::path::Path;

use super::exit::{Code, Failure};
use crate::config::{Durability, WhenFull};

pub(super) fn run(config_path: &Path) -> Result<Code, Failure> {
    let c = super::load(config_path)?;
    for w in &c.warnings {
        errln!("warning: {w}");
    }
    outln!("{}: OK", c.path.display());
    outln!(
        "outbox   {} (durability {}, at most {} events / {} bytes, {} when full, max age {})",
        c.storage.path.display(),
        match c.storage.durability {
            Durability::Full => "full",
            Durability::Normal => "normal",
        },
        c.storage.max_events,
        c.storage.max_bytes,
        match c.storage.when_full {
            WhenFull::DropOldest => "drop-oldest",
            WhenFull::RejectNew => "reject-new",
        },
        humantime::format_duration(c.storage.max_age)
    );
    outln!(
        "socket   {} (group {})",
        c.ingest.socket.display(),
        c.ingest.group
    );
    let dirs: Vec<String> = c
        .inventory
        .scripts_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    outln!(
        "inventory {} built-ins, scripts from [{}], every {}, script timeout {}",
        if c.inventory.builtin {
            "with"
        } else {
            "without"
        },
        dirs.join(", "),
        humantime::format_duration(c.inventory.interval),
        humantime::format_duration(c.inventory.script_timeout)
    );
    if c.sinks.is_empty() {
        outln!("sinks    none: events are acknowledged and not kept");
    }
    for s in &c.sinks {
        let from = if s.file == c.path {
            String::new()
        } else {
            format!(", from {}", s.file.display())
        };
        outln!(
            "sink     {} {} {}: {} signing, format {}, events {}, max_in_flight {}{}{from}",
            s.name,
            s.transport(),
            s.display_url(),
            s.signer.scheme().name(),
            s.format().name(),
            s.patterns().join(","),
            s.max_in_flight,
            if s.enabled { "" } else { " (disabled)" }
        );
    }
    Ok(Code::Ok)
}
