use std::path::Path;

use super::builtin::{self, Address};
use super::*;

fn pairs(output: &str) -> (Vec<(String, String)>, Vec<String>) {
    let mut warnings = Vec::new();
    let p = scripts::parse(
        Path::new("/x/mender-inventory-a"),
        output.as_bytes(),
        &mut warnings,
    );
    (p, warnings)
}

fn kv(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

#[test]
fn output_lines_split_at_the_first_equals_sign_and_keep_the_value_as_printed() {
    let (p, w) = pairs("a=b=c\nkey= spaced value \nempty=\n");
    assert_eq!(
        p,
        vec![kv("a", "b=c"), kv("key", " spaced value "), kv("empty", "")]
    );
    assert!(w.is_empty());
}

#[test]
fn a_trailing_carriage_return_is_dropped_and_blank_lines_are_skipped_silently() {
    let (p, w) = pairs("a=1\r\n\r\n   \n\nb=2\r");
    assert_eq!(p, vec![kv("a", "1"), kv("b", "2")]);
    assert!(w.is_empty(), "{w:?}");
}

#[test]
fn lines_without_equals_or_with_an_empty_key_are_skipped_with_a_warning_naming_script_and_line() {
    let (p, w) = pairs("a=1\nno equals here\n=value\nb=2\n");
    assert_eq!(p, vec![kv("a", "1"), kv("b", "2")]);
    assert_eq!(w.len(), 2);
    assert!(
        w[0].contains("/x/mender-inventory-a") && w[0].contains("line 2"),
        "{}",
        w[0]
    );
    assert!(
        w[1].contains("line 3") && w[1].contains("empty key"),
        "{}",
        w[1]
    );
}

#[test]
fn a_single_value_is_a_string_and_repeated_or_list_attributes_are_arrays() {
    assert_eq!(Attribute::one("x".into()).value(), serde_json::json!("x"));
    assert_eq!(
        Attribute::many(vec!["a".into(), "b".into()], false).value(),
        serde_json::json!(["a", "b"])
    );
    assert_eq!(
        Attribute::many(vec!["eth0".into()], true).value(),
        serde_json::json!(["eth0"])
    );
}

/// A fake host: the files the built-ins read, under a temporary root.
fn host() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let put = |rel: &str, text: &str| {
        let p = root.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    put("proc/sys/kernel/hostname", "raspberrypi\n");
    put("proc/version", "Linux version 6.1.21-v7l+ (gcc 10)\n");
    put(
        "proc/cpuinfo",
        "processor\t: 0\nmodel name\t: ARMv7 Processor rev 3 (v7l)\nBogoMIPS\t: 108.00\n\nHardware\t: BCM2711\n",
    );
    put(
        "proc/meminfo",
        "MemTotal:        3882280 kB\nMemFree:          100 kB\n",
    );
    put(
        "etc/os-release",
        "NAME=\"Raspbian GNU/Linux\"\nPRETTY_NAME=\"Raspbian GNU/Linux 11 (bullseye)\"\nID=raspbian\n",
    );
    put(
        "proc/mounts",
        "/dev/root / ext4 rw 0 0\nproc /proc proc rw 0 0\noverlay / overlay rw 0 0\n",
    );
    put("var/lib/mender/device_type", "device_type=raspberrypi4\n");
    put("etc/mender/artifact_info", "artifact_name=release-7\n");
    for (name, kind, index, mac) in [
        ("lo", "772", "1", "00:00:00:00:00:00"),
        ("wlan0", "1", "3", "dc:a6:32:00:00:02"),
        ("eth0", "1", "2", "dc:a6:32:00:00:01"),
        ("docker0", "1", "4", "02:42:00:00:00:01"),
        ("veth12", "1", "5", "02:42:00:00:00:02"),
        ("br-1a2b", "1", "6", "02:42:00:00:00:03"),
        ("tun0", "65534", "7", ""),
    ] {
        put(&format!("sys/class/net/{name}/type"), kind);
        put(&format!("sys/class/net/{name}/ifindex"), index);
        put(&format!("sys/class/net/{name}/address"), mac);
    }
    root
}

#[test]
fn built_in_attributes_come_from_the_hosts_files_with_mender_names() {
    let root = host();
    let addresses = [
        Address {
            interface: "eth0".into(),
            ip: "192.168.1.20".parse().unwrap(),
            prefix: 24,
        },
        Address {
            interface: "eth0".into(),
            ip: "fe80::dea6:32ff:fe00:1".parse().unwrap(),
            prefix: 64,
        },
        Address {
            interface: "wlan0".into(),
            ip: "10.0.0.1".parse().unwrap(),
            prefix: 24,
        },
        Address {
            interface: "wlan0".into(),
            ip: "10.0.0.2".parse().unwrap(),
            prefix: 16,
        },
        Address {
            interface: "docker0".into(),
            ip: "172.17.0.1".parse().unwrap(),
            prefix: 16,
        },
    ];
    let inv = Inventory {
        attributes: builtin::collect(root.path(), None, &addresses),
    };
    let got: serde_json::Value = serde_json::to_value(inv.to_list()).unwrap();
    let expected = serde_json::json!([
        {"name": "artifact_name", "value": "release-7", "scope": "inventory"},
        {"name": "cpu_model", "value": "ARMv7 Processor rev 3 (v7l)", "scope": "inventory"},
        {"name": "device_type", "value": "raspberrypi4", "scope": "inventory"},
        {"name": "edgehook_version", "value": env!("CARGO_PKG_VERSION"), "scope": "inventory"},
        {"name": "hostname", "value": "raspberrypi", "scope": "inventory"},
        {"name": "ipv4_eth0", "value": "192.168.1.20/24", "scope": "inventory"},
        {"name": "ipv4_wlan0", "value": ["10.0.0.1/24", "10.0.0.2/16"], "scope": "inventory"},
        {"name": "ipv6_eth0", "value": "fe80::dea6:32ff:fe00:1/64", "scope": "inventory"},
        {"name": "kernel", "value": "Linux version 6.1.21-v7l+ (gcc 10)", "scope": "inventory"},
        {"name": "mac_eth0", "value": "dc:a6:32:00:00:01", "scope": "inventory"},
        {"name": "mac_wlan0", "value": "dc:a6:32:00:00:02", "scope": "inventory"},
        {"name": "mem_total_kB", "value": "3882280", "scope": "inventory"},
        {"name": "network_interfaces", "value": ["eth0", "tun0", "wlan0"], "scope": "inventory"},
        {"name": "os", "value": "Raspbian GNU/Linux 11 (bullseye)", "scope": "inventory"},
        {"name": "rootfs_type", "value": "overlay", "scope": "inventory"},
    ]);
    assert_eq!(got, expected);
}

#[test]
fn the_configured_device_type_wins_over_menders_file() {
    let root = host();
    let attrs = builtin::collect(root.path(), Some("beaglebone"), &[]);
    assert_eq!(
        attrs["device_type"].value(),
        serde_json::json!("beaglebone")
    );
}

#[test]
fn the_primary_mac_is_the_ethernet_interface_with_the_lowest_index() {
    let root = host();
    assert_eq!(
        builtin::primary_mac(root.path()).as_deref(),
        Some("dc:a6:32:00:00:01")
    );
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(builtin::primary_mac(empty.path()), None);
}

#[test]
fn os_release_without_pretty_name_gives_name_and_version_unquoted() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    std::fs::write(
        root.path().join("etc/os-release"),
        "NAME='Poky'\nVERSION=\"4.0.\\\"kirkstone\\\"\"\n",
    )
    .unwrap();
    let attrs = builtin::collect(root.path(), None, &[]);
    assert_eq!(
        attrs["os"].value(),
        serde_json::json!("Poky 4.0.\"kirkstone\"")
    );
    assert!(!attrs.contains_key("artifact_name"));
    assert!(!attrs.contains_key("network_interfaces"));
}
