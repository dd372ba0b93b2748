//! `edgehook inventory [--refresh] [--json]`: collect and print the inventory here, or make
//! the daemon collect it and emit it if it changed.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use serde_json::json;

use super::exit::{Code, Failure};
use super::table::Table;
use crate::sources::inventory;

/// Arguments of `inventory`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  edgehook inventory\n  edgehook inventory --json | jq '.inventory[] | select(.name == \"hostname\")'\n  edgehook inventory --refresh"
)]
pub struct Args {
    /// Make the running daemon collect the inventory now and emit it if it changed
    #[arg(long)]
    pub refresh: bool,
    /// One JSON document on standard output: the `data` of devices-inventory-changed
    #[arg(long)]
    pub json: bool,
}

pub(super) fn run(config_path: &Path, a: Args) -> Result<Code, Failure> {
    if a.refresh {
        return refresh(config_path, a.json);
    }
    let config = super::load(config_path)?;
    let collected = inventory::collect(&config.inventory, &config.device, &AtomicBool::new(false));
    for w in &collected.warnings {
        errln!("edgehook: warning: {w}");
    }
    if a.json {
        let device_id = super::device_id(&config)?;
        let data = collected
            .inventory
            .event_data(device_id.as_deref(), config.device.tenant_id.as_deref());
        outln!(
            "{}",
            serde_json::to_string(&data).expect("inventory data serialises")
        );
        return Ok(Code::Ok);
    }
    let mut table = Table::new(&["NAME", "VALUE"]);
    for (name, attr) in &collected.inventory.attributes {
        table.row(vec![name.clone(), attr.values.join(", ")]);
    }
    out!("{}", table.render());
    Ok(Code::Ok)
}

fn refresh(config_path: &Path, as_json: bool) -> Result<Code, Failure> {
    let reply = super::ask_daemon(config_path, crate::client::Control::InventoryRefresh)?;
    let changed = reply.changed == Some(true);
    if as_json {
        outln!("{}", json!({"changed": changed, "id": reply.id}));
    } else if let (true, Some(id)) = (changed, &reply.id) {
        outln!("Inventory changed: event {id}");
    } else {
        outln!("Inventory unchanged; nothing emitted");
    }
    Ok(Code::Ok)
}
