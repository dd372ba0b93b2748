//! The inventory: Mender's script rules, the shape of `devices-inventory-changed`, change
//! detection across restarts, the interval and `--refresh`, and the built-ins against the
//! machine the tests run on.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// `edgehook inventory --json` with this `[inventory]` section; returns the document and the
/// warnings printed on stderr.
fn inventory_json(setup: &Setup, section: &str) -> (Value, String) {
    setup.write_config(section);
    // The fixture script that hangs writes its child's pid here.
    let out = output_within(
        edgehook()
            .arg("--config")
            .arg(&setup.config)
            .args(["inventory", "--json"])
            .env(
                "EDGEHOOK_TEST_PIDFILE",
                setup.dir.path().join("hung-child.pid"),
            ),
        COMMAND_LIMIT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "inventory failed: {stderr}");
    (
        serde_json::from_slice(&out.stdout).expect("inventory --json is JSON"),
        stderr,
    )
}

fn item(name: &str, value: Value) -> Value {
    json!({"name": name, "value": value, "scope": "inventory"})
}

fn by_name(inventory: &Value) -> Vec<(String, Value)> {
    inventory["inventory"]
        .as_array()
        .expect("an inventory list")
        .iter()
        .map(|i| (i["name"].as_str().unwrap().to_string(), i.clone()))
        .collect()
}

/// Gone, or a zombie waiting for a parent that is not ours to reap it.
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn scripts_follow_every_parsing_rule_of_menders_client() {
    let first = fixtures().join("inventory/first");
    let second = fixtures().join("inventory/second");
    let not_exec = first.join("mender-inventory-not-executable");
    assert_eq!(
        std::fs::metadata(&not_exec).unwrap().permissions().mode() & 0o111,
        0,
        "the fixture {} must not be executable (check the checkout kept file modes)",
        not_exec.display()
    );
    let setup = Setup::new("");
    // A directory with a script-like name is not a regular file, and a missing directory
    // holds no scripts.
    let third = setup.dir.path().join("third");
    std::fs::create_dir_all(third.join("mender-inventory-a-directory")).unwrap();
    let pidfile = setup.dir.path().join("hung-child.pid");

    let (builtins, _) = inventory_json(&setup, "[inventory]\nbuiltin = true\nscripts_dirs = []\n");
    let (got, warnings) = inventory_json(
        &setup,
        &format!(
            "[inventory]\nbuiltin = true\nscripts_dirs = [\"{}\", \"{}\", \"{}\", \"{}/missing\"]\nscript_timeout = \"1s\"\n",
            first.display(),
            second.display(),
            third.display(),
            setup.dir.path().display()
        ),
    );

    let mut expected: std::collections::BTreeMap<String, Value> =
        by_name(&builtins).into_iter().collect();
    assert!(
        expected.contains_key("hostname"),
        "built-ins include hostname"
    );
    for (name, value) in [
        // A script's key replaces the built-in.
        ("hostname", json!("from-a-script")),
        // Split at the first `=` only.
        ("url", json!("https://example.com/?a=b&c=d")),
        // Repeated across scripts, in path order: edgehook-inventory-b, mender-inventory-a,
        // then the second directory.
        ("list", json!(["two", "one", "three"])),
        // Repeated within and across scripts.
        ("dup", json!(["3", "1", "2"])),
        // A trailing \r is dropped.
        ("crlf", json!("yes")),
        // Values are kept as printed.
        ("spaced", json!(" kept as printed ")),
    ] {
        expected.insert(name.to_string(), item(name, value));
    }
    let expected: Vec<Value> = expected.into_values().collect();
    assert_eq!(got["inventory"], Value::Array(expected), "{warnings}");

    let a = first.join("mender-inventory-a").display().to_string();
    let warning_lines: Vec<&str> = warnings.lines().collect();
    let has = |needles: &[&str]| {
        warning_lines
            .iter()
            .any(|l| needles.iter().all(|n| l.contains(n)))
    };
    assert!(has(&[&a, "line 7", "no `=`"]), "{warnings}");
    assert!(has(&[&a, "line 8", "empty key"]), "{warnings}");
    assert!(
        has(&[
            "mender-inventory-fails",
            "exited with status 1",
            "cannot finish"
        ]),
        "{warnings}"
    );
    assert!(
        has(&["mender-inventory-hangs", "timed out after 1s"]),
        "{warnings}"
    );
    assert_eq!(
        warning_lines.len(),
        4,
        "only those four lines are warned about: {warnings}"
    );
    for never in ["never", "hang", "noexec", "other"] {
        assert!(
            !got["inventory"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["name"] == never),
            "`{never}` must not be in the inventory"
        );
    }

    let pid: u32 = std::fs::read_to_string(&pidfile)
        .expect("the hanging script wrote its child's pid")
        .trim()
        .parse()
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the hung script's child to be killed",
        || process_gone(pid),
    );
}

/// The JSON type of a value as the structure comparison sees it.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::Array(a) if a.iter().all(Value::is_string) => "array of strings",
        Value::Array(_) => "array of other things",
        Value::Object(_) => "object",
        Value::Number(_) => "number",
        Value::Bool(_) => "bool",
        Value::Null => "null",
    }
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect()
}

/// Keys in the order they appear in the text, which `serde_json::Value` does not keep.
fn key_order(text: &str, keys: &[&str]) -> Vec<usize> {
    keys.iter()
        .map(|k| text.find(&format!("\"{k}\":")).expect("key present"))
        .collect()
}

#[test]
fn the_inventory_event_has_the_structure_of_menders_webhook_example() {
    let example_text =
        std::fs::read_to_string(fixtures().join("mender-devices-inventory-changed.json")).unwrap();
    let example: Value = serde_json::from_str(&example_text).unwrap();
    let receiver = Receiver::ok();
    let setup = Setup::new("");
    // What a Mender device's own scripts add (the client's version, the update modules …).
    let scripts = setup.dir.path().join("inventory.d");
    std::fs::create_dir_all(&scripts).unwrap();
    let mut lines = String::from("#!/bin/sh\n");
    for (name, value) in by_name(&example["data"])
        .iter()
        .map(|(n, i)| (n.clone(), i["value"].clone()))
        .filter(|(n, _)| {
            n.starts_with("mender_")
                || n.starts_with("rootfs-image")
                || n == "update_modules"
                || n == "artifact_name"
        })
    {
        for v in value
            .as_array()
            .cloned()
            .unwrap_or_else(|| vec![value.clone()])
        {
            lines.push_str(&format!("echo '{name}={}'\n", v.as_str().unwrap()));
        }
    }
    let script = scripts.join("mender-inventory-client");
    std::fs::write(&script, lines).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let device_id = example["data"]["device_id"].as_str().unwrap();
    let tenant_id = example["data"]["tenant_id"].as_str().unwrap();
    setup.write_config(&format!(
        "[device]\nid = \"{device_id}\"\ntenant_id = \"{tenant_id}\"\ndevice_type = \"raspberrypi4\"\n[inventory]\nscripts_dirs = [\"{}\"]\n{}",
        scripts.display(),
        http_sink("cloud", &receiver.url(), SECRET, "events = [\"devices-*\"]")
    ));
    let _daemon = setup.start();
    wait_until(Duration::from_secs(30), "the inventory event", || {
        receiver.delivered_count() >= 1
    });
    let req = &receiver.delivered()[0];
    verify_standard(req, SECRET).unwrap();
    let text = String::from_utf8(req.body.clone()).unwrap();
    let got: Value = serde_json::from_str(&text).unwrap();

    // The envelope: the same keys in the same order, the same kinds of values.
    assert_eq!(keys(&got), keys(&example));
    let order = key_order(&text, &["id", "type", "data", "time"]);
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    assert_eq!(got["type"], example["type"]);
    uuid::Uuid::parse_str(got["id"].as_str().unwrap()).expect("the id is a UUID");
    humantime::parse_rfc3339(got["time"].as_str().unwrap()).expect("time is RFC 3339");
    assert!(got["time"].as_str().unwrap().ends_with('Z'));

    // `data`: device, tenant and the list, in that order.
    let (data, example_data) = (&got["data"], &example["data"]);
    assert_eq!(keys(data), keys(example_data));
    let order = key_order(&text, &["device_id", "tenant_id", "inventory"]);
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    assert_eq!(data["device_id"], example_data["device_id"]);
    assert_eq!(data["tenant_id"], example_data["tenant_id"]);

    // Every attribute: `name`, `value`, `scope` in that order, scope `inventory`, a string or
    // a list of strings, sorted by name.
    let items = data["inventory"].as_array().unwrap();
    for i in items
        .iter()
        .chain(example_data["inventory"].as_array().unwrap())
    {
        assert_eq!(keys(i), ["name", "scope", "value"], "{i}"); // sorted by serde_json
        assert_eq!(i["scope"], "inventory");
        assert!(
            matches!(kind(&i["value"]), "string" | "array of strings"),
            "{i}"
        );
    }
    let first_item = &text[text.find("\"inventory\":[").unwrap()..];
    let order = key_order(first_item, &["name", "value", "scope"]);
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{first_item}");
    let names: Vec<&str> = items.iter().map(|i| i["name"].as_str().unwrap()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "attributes are sorted by name");

    // The attributes both have are of the same kind. The example's `os` is a list only
    // because that device's os script printed two lines; edgehook's built-in is one string.
    let ours: std::collections::BTreeMap<String, Value> = by_name(data).into_iter().collect();
    let mut shared = 0;
    for (name, theirs) in by_name(example_data) {
        let Some(mine) = ours.get(&name) else {
            continue;
        };
        shared += 1;
        if name == "os" {
            assert_eq!(kind(&mine["value"]), "string");
            continue;
        }
        assert_eq!(
            kind(&mine["value"]),
            kind(&theirs["value"]),
            "attribute {name}: ours {mine}, Mender's {theirs}"
        );
        if name.starts_with("mender_")
            || name.starts_with("rootfs-image")
            || name == "update_modules"
            || name == "artifact_name"
            || name == "device_type"
        {
            assert_eq!(mine["value"], theirs["value"], "attribute {name}");
        }
    }
    for name in [
        "hostname",
        "kernel",
        "cpu_model",
        "os",
        "network_interfaces",
        "rootfs_type",
        "device_type",
        "artifact_name",
        "update_modules",
    ] {
        assert!(ours.contains_key(name), "edgehook reports {name}");
    }
    assert!(shared >= 12, "only {shared} attributes in common");
}

fn color(event: &Value) -> String {
    event["data"]["inventory"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "color")
        .map(|i| i["value"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

#[test]
fn only_a_changed_inventory_is_emitted_at_start_on_refresh_and_every_interval() {
    let receiver = Receiver::ok();
    let setup = Setup::new("");
    let d = setup.dir.path();
    let scripts = d.join("inventory.d");
    std::fs::create_dir_all(&scripts).unwrap();
    let script = scripts.join("edgehook-inventory-color");
    std::fs::write(&script, format!("#!/bin/sh\ncat '{}/color'\n", d.display())).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(d.join("color"), "color=red\n").unwrap();
    let config = |interval: &str| {
        format!(
            "[log]\nlevel = \"debug\"\n[inventory]\nbuiltin = false\nscripts_dirs = [\"{}\"]\ninterval = \"{interval}\"\n{}",
            scripts.display(),
            http_sink("cloud", &receiver.url(), SECRET, "events = [\"*\"]")
        )
    };
    setup.write_config(&config("30m"));
    let mut daemon = setup.start();
    wait_until(Duration::from_secs(20), "the first inventory", || {
        of_type(&receiver, "devices-inventory-changed").len() == 1
    });

    // A restart with the same inventory emits nothing: the refresh answers after the start-up
    // collection, and a marker emitted after it arrives after anything that collection sent.
    daemon.restart();
    let out = run(&setup.config, &["inventory", "--refresh"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Inventory unchanged; nothing emitted"
    );
    let marker = emit_one(&setup.socket(), "test.marker", json!(1));
    wait_until(Duration::from_secs(20), "the marker", || {
        receiver.delivered_ids().contains(&marker)
    });
    assert_eq!(of_type(&receiver, "devices-inventory-changed").len(), 1);

    // One changed line: exactly one event, from --refresh.
    std::fs::write(d.join("color"), "color=blue\n").unwrap();
    let out = run(&setup.config, &["inventory", "--refresh", "--json"]);
    assert!(out.status.success());
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["changed"], true);
    let out = run(&setup.config, &["inventory", "--refresh", "--json"]);
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again, json!({"changed": false, "id": null}));
    wait_until(Duration::from_secs(20), "the second inventory", || {
        of_type(&receiver, "devices-inventory-changed").len() == 2
    });
    let events = of_type(&receiver, "devices-inventory-changed");
    assert_eq!(events[1]["id"], answer["id"]);
    assert_eq!(color(&events[1]), "blue");

    // The interval, set by a reload: a change is picked up without being asked, and ticks
    // that find nothing new emit nothing.
    setup.write_config(&config("1s"));
    daemon.hup();
    std::fs::write(d.join("color"), "color=green\n").unwrap();
    wait_until(
        Duration::from_secs(20),
        "the interval to find green",
        || of_type(&receiver, "devices-inventory-changed").len() == 3,
    );
    let unchanged_before = daemon.log().matches("Inventory unchanged").count();
    wait_until(Duration::from_secs(20), "two more ticks", || {
        daemon.log().matches("Inventory unchanged").count() >= unchanged_before + 2
    });
    let colors: Vec<String> = of_type(&receiver, "devices-inventory-changed")
        .iter()
        .map(color)
        .collect();
    assert_eq!(colors, ["red", "blue", "green"]);
}

#[test]
fn built_in_attributes_agree_with_this_machine() {
    let setup = Setup::new("");
    let (got, warnings) =
        inventory_json(&setup, "[inventory]\nbuiltin = true\nscripts_dirs = []\n");
    assert!(warnings.is_empty(), "{warnings}");
    let attrs: std::collections::BTreeMap<String, Value> = by_name(&got)
        .into_iter()
        .map(|(n, i)| (n, i["value"].clone()))
        .collect();

    let hostname = std::process::Command::new("hostname").output().unwrap();
    assert_eq!(
        attrs["hostname"],
        String::from_utf8_lossy(&hostname.stdout).trim()
    );
    let os = std::process::Command::new("sh")
        .args(["-c", ". /etc/os-release; echo \"$PRETTY_NAME\""])
        .output()
        .unwrap();
    assert_eq!(attrs["os"], String::from_utf8_lossy(&os.stdout).trim());
    assert_eq!(
        attrs["kernel"],
        std::fs::read_to_string("/proc/version").unwrap().trim()
    );
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let mem = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap();
    assert_eq!(attrs["mem_total_kB"], mem);
    assert_eq!(attrs["edgehook_version"], env!("CARGO_PKG_VERSION"));

    let mut interfaces: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| {
            n != "lo" && !n.starts_with("docker") && !n.starts_with("veth") && !n.starts_with("br-")
        })
        .collect();
    interfaces.sort();
    if interfaces.is_empty() {
        assert!(!attrs.contains_key("network_interfaces"));
    } else {
        assert_eq!(attrs["network_interfaces"], json!(interfaces));
    }
    for name in &interfaces {
        let mac =
            std::fs::read_to_string(format!("/sys/class/net/{name}/address")).unwrap_or_default();
        let mac = mac.trim();
        if mac.bytes().any(|b| b != b'0' && b != b':') {
            assert_eq!(attrs[&format!("mac_{name}")], mac);
        }
    }
    for name in attrs.keys() {
        if let Some(iface) = name
            .strip_prefix("mac_")
            .or_else(|| name.strip_prefix("ipv4_"))
            .or_else(|| name.strip_prefix("ipv6_"))
        {
            assert!(
                interfaces.iter().any(|i| i == iface),
                "{name} names a listed interface"
            );
        }
    }
}
