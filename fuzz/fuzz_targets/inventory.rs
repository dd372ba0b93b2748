//! The inventory-script output parser (Mender's `key=value` rules): any bytes give pairs with
//! non-empty, single-line keys, a warning per skipped line, and an inventory that serialises.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use edgehook::sources::inventory::{Attribute, Inventory, scripts};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut warnings = Vec::new();
    let pairs = scripts::parse(Path::new("mender-inventory-fuzz"), data, &mut warnings);
    let lines = data.split(|b| *b == b'\n').count();
    assert!(
        pairs.len() + warnings.len() <= lines,
        "at most one result per line"
    );
    let mut merged: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, value) in pairs {
        assert!(!key.is_empty(), "an empty key is skipped");
        assert!(
            !key.contains('\n') && !value.contains('\n'),
            "one line per pair"
        );
        assert!(!key.contains('='), "the key ends at the first `=`");
        merged.entry(key).or_default().push(value);
    }
    for w in &warnings {
        assert!(
            w.contains("mender-inventory-fuzz"),
            "a warning names the script: {w}"
        );
    }
    let mut inventory = Inventory::default();
    for (key, values) in merged {
        inventory
            .attributes
            .insert(key, Attribute::many(values, false));
    }
    let list = inventory.to_list();
    assert_eq!(list.len(), inventory.attributes.len());
    serde_json::to_vec(&list).expect("an inventory serialises");
});
