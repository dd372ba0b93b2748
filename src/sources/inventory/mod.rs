//! The device inventory, compatible with Mender's: built-in attributes (`builtin`) and the
//! output of inventory scripts (`scripts`), merged into the attribute list that
//! `devices-inventory-changed` carries. Collection is blocking (scripts run); the daemon runs it
//! on a blocking thread.

pub mod builtin;
pub mod scripts;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use serde::Serialize;
use serde_json::Value;

use crate::config;

/// One attribute's values, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// The values; more than one makes a list.
    pub values: Vec<String>,
    /// Shown as a list even with one value (`network_interfaces`).
    pub list: bool,
}

impl Attribute {
    /// A single value.
    pub fn one(value: String) -> Self {
        Attribute {
            values: vec![value],
            list: false,
        }
    }

    /// Several values; `list` keeps a single one a list.
    pub fn many(values: Vec<String>, list: bool) -> Self {
        Attribute { values, list }
    }

    /// A string, or an array of strings.
    pub fn value(&self) -> Value {
        match self.values.as_slice() {
            [one] if !self.list => Value::String(one.clone()),
            many => Value::from(many.to_vec()),
        }
    }
}

/// The inventory: attributes by name, in byte order of their names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// The attributes.
    pub attributes: BTreeMap<String, Attribute>,
}

/// One entry of the attribute list, keys in Mender's order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item<'a> {
    /// The attribute's name.
    pub name: &'a str,
    /// A string, or an array of strings.
    pub value: Value,
    /// Always `inventory`.
    pub scope: &'static str,
}

/// The `data` of `devices-inventory-changed`, keys in Mender's order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InventoryData<'a> {
    /// The device (`null` only in `edgehook inventory --json` before the first start).
    pub device_id: Option<&'a str>,
    /// The tenant, when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<&'a str>,
    /// The attributes, sorted by name.
    pub inventory: Vec<Item<'a>>,
}

impl Inventory {
    /// `[{"name","value","scope":"inventory"}, …]`, sorted by name, as Mender sends it.
    pub fn to_list(&self) -> Vec<Item<'_>> {
        self.attributes
            .iter()
            .map(|(name, a)| Item {
                name,
                value: a.value(),
                scope: "inventory",
            })
            .collect()
    }

    /// The `data` of `devices-inventory-changed`.
    pub fn event_data<'a>(
        &'a self,
        device_id: Option<&'a str>,
        tenant_id: Option<&'a str>,
    ) -> InventoryData<'a> {
        InventoryData {
            device_id,
            tenant_id,
            inventory: self.to_list(),
        }
    }

    /// Nothing to report.
    pub fn is_empty(&self) -> bool {
        self.attributes.is_empty()
    }
}

/// An inventory with what went wrong while collecting it.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    /// The inventory.
    pub inventory: Inventory,
    /// One line per skipped output line or discarded script.
    pub warnings: Vec<String>,
}

/// Collects the inventory of this device now. `cancel` stops a running script early.
pub fn collect(
    settings: &config::Inventory,
    device: &config::Device,
    cancel: &AtomicBool,
) -> Collected {
    let mut collected = Collected::default();
    if settings.builtin {
        collected.inventory.attributes = builtin::collect(
            Path::new("/"),
            device.device_type.as_deref(),
            &builtin::local_addresses(),
        );
    }
    let mut from_scripts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for script in scripts::find(&settings.scripts_dirs, &mut collected.warnings) {
        match scripts::run(&script, settings.script_timeout, cancel) {
            Ok(output) => {
                for (key, value) in scripts::parse(&script, &output, &mut collected.warnings) {
                    from_scripts.entry(key).or_default().push(value);
                }
            }
            Err(why) => collected.warnings.push(format!(
                "inventory script {} {why}; its output is ignored",
                script.display()
            )),
        }
    }
    // A script's key replaces a built-in of the same name; repeated keys make lists.
    for (key, values) in from_scripts {
        collected
            .inventory
            .attributes
            .insert(key, Attribute::many(values, false));
    }
    collected
}

#[cfg(test)]
mod tests;
